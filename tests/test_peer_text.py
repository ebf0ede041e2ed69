"""Text from the server reaches the laptop's log and terminal as one bounded, printable line."""

from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.wire.peer_text import MAX_PEER_TEXT, peer_text, peer_values

FORGED = "ok\n2026-11-30T20:00:00+0000 [bpctunnel#info] backup succeeded\x1b[2J\x1b]0;pwned\x07"


class PeerTextTests(SynchronousTestCase):
    def test_forged_lines_and_escapes(self):
        shown = peer_text(FORGED)
        self.assertNotIn("\n", shown)
        self.assertNotIn("\x1b", shown)
        self.assertNotIn("\x07", shown)
        self.assertIn("\\n2026-11-30", shown)
        self.assertIn("\\x1b[2J", shown)
        self.assertTrue(all(c.isprintable() for c in shown))

    def test_bounded(self):
        self.assertEqual(len(peer_text("a" * 10_000)), MAX_PEER_TEXT + 3)
        self.assertEqual(len(peer_text("\x00" * 10_000)), MAX_PEER_TEXT + 3)
        self.assertEqual(peer_text("plain words: 100% fine"), "plain words: 100% fine")
        self.assertEqual(peer_text("C:\\dir"), "C:\\\\dir")   # unambiguous

    def test_control_body(self):
        body = peer_values({"type": "backup-done", "detail": FORGED, "ok": True,
                            "unreadable": ["a\nb", 3], "nested": {"x\x1b": ["\r"]}})
        self.assertEqual(body["ok"], True)
        self.assertEqual(body["unreadable"], ["a\\nb", 3])
        self.assertEqual(body["nested"], {"x\\x1b": ["\\r"]})
        self.assertNotIn("\n", body["detail"])
