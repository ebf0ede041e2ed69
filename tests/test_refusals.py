"""
The refusal vocabulary (issue 15): one enum, its words on the wire exactly as
every server version wrote them, its codes the only metric labels, and the
client's advice and retry policy read from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import generate_latest
from twisted.trial.unittest import SynchronousTestCase

import bpctunnel
from bpctunnel import errors
from bpctunnel.client.protocol import advice_for
from bpctunnel.server.metrics import ServerMetrics
from bpctunnel.refusals import UNKNOWN_ADVICE, Refusal, needs_admin

#: Refusal texts as servers wrote them (this one and every earlier one: the
#: words never changed), each with the member it must read back as.
SERVER_TEXTS = [
    ("too many backup-now connections for laptop1: 7 are following its tunnel already "
     "(at most 7)", Refusal.TOO_MANY_WATCHERS),
    ("unknown host for stranger: it is not listed in /etc/backuppc/hosts; add it there "
     "(or run `bpctunnel register-client stranger --add-host`)", Refusal.UNKNOWN_HOST),
    ("unknown host for (no certificate): no client certificate was presented",
     Refusal.UNKNOWN_HOST),
    ("unknown host for '../x': '../x' is not a valid BackupPC host name (it contains '/')",
     Refusal.UNKNOWN_HOST),
    ("fingerprint mismatch for laptop1: the certificate does not match TunnelCert in "
     "laptop1.pl", Refusal.FINGERPRINT_MISMATCH),
    ("fingerprint mismatch for laptop1: no host config laptop1.pl found in /etc/backuppc",
     Refusal.FINGERPRINT_MISMATCH),
    ("host config error for laptop1: $Conf{RsyncdClientPort} is missing in laptop1.pl; ...",
     Refusal.HOST_CONFIG_ERROR),
    ("bad certificate for (no host name): certificate 'O=x' has no common name; issue it with "
     "CN=<BackupPC host name>", Refusal.BAD_CERTIFICATE),
    ("port shared for laptop1: RsyncdClientPort 64701 of laptop1 is also that of laptop2 in "
     "BackupPC's config: a backup of either would read the other's laptop", Refusal.PORT_SHARED),
    ("already connected for laptop1: a tunnel for this host is up and answering; the newer "
     "connection was refused", Refusal.ALREADY_CONNECTED),
    ("port unavailable for laptop1: the server cannot listen on 127.0.0.1:64701 (Couldn't "
     "listen on 127.0.0.1:64701: [Errno 98] Address already in use.)",
     Refusal.PORT_UNAVAILABLE),
    ("unsupported protocol version: the client offers bpctunnel.v99, this server speaks "
     "bpctunnel.v1; install the same bpctunnel version on both", Refusal.UNSUPPORTED_PROTOCOL),
    ("unsupported protocol version: the client offers none, this server speaks bpctunnel.v1; "
     "install the same bpctunnel version on both", Refusal.UNSUPPORTED_PROTOCOL),
    ("no tunnel at /other; the path is /tunnel", Refusal.WRONG_PATH),
    ("no tunnel at /; the path is /tunnel", Refusal.WRONG_PATH),
    ("server configuration error; the BackupPC admin must check the server log",
     Refusal.SERVER_CONFIG_ERROR),
    ("internal server error; see the server log", Refusal.INTERNAL_ERROR),
]

#: Texts that are no refusal, or a refusal's words somewhere other than the start.
OTHER_TEXTS = [None, "", "refused", "unknown", "something new for x: y",
               "the tunnel closed: unknown host", "RsyncdClientPort of laptop1 changed from 1 "
               "to 2; reconnect to use it", "protocol error: a text message",
               "peer dropped the TCP connection"]

#: The advice each member gives, as the client gave it before the enum.
ADVICE_BEFORE = {
    Refusal.UNKNOWN_HOST: "ask the BackupPC admin to add this host to BackupPC's hosts file",
    Refusal.FINGERPRINT_MISMATCH: (
        "this certificate is not (or no longer) registered; ask the BackupPC admin "
        "for a new bundle (bpctunnel renew HOST)"),
    Refusal.HOST_CONFIG_ERROR: "ask the BackupPC admin to fix the host's config on the server",
    Refusal.ALREADY_CONNECTED: (
        "another client with this certificate is connected; retrying in case it is "
        "this laptop's old connection"),
    Refusal.PORT_UNAVAILABLE: "the server cannot open this host's port; retrying",
    Refusal.UNSUPPORTED_PROTOCOL: "install the bpctunnel version the server runs",
    Refusal.WRONG_PATH: "see the server's log",
    Refusal.SERVER_CONFIG_ERROR: "see the server's log",
    Refusal.INTERNAL_ERROR: "see the server's log",
}


class VocabularyTests(SynchronousTestCase):
    """The members: codes, words, statuses."""

    def test_codes_are_unique_label_values(self):
        codes = [member.code for member in Refusal]
        self.assertEqual(len(codes), len(set(codes)))
        for code in codes:
            self.assertRegex(code, r"^[a-z][a-z_]*$")
            self.assertIs(Refusal.from_code(code).code, code)
        self.assertIsNone(Refusal.from_code("no tunnel at /x"))

    def test_words_are_unique_and_no_prefix_of_another(self):
        words = [member.words for member in Refusal if member.words is not None]
        self.assertEqual(len(words), len(set(words)))
        for a in words:
            for b in words:
                if a != b:
                    self.assertFalse(b.startswith(a), (a, b))

    def test_members(self):
        """The whole table, so that a change to it is a visible one."""
        self.assertEqual(
            [(m.name, m.code, m.words, m.http_status, m.needs_admin) for m in Refusal],
            [("UNKNOWN_HOST", "unknown_host", "unknown host", 403, True),
             ("FINGERPRINT_MISMATCH", "fingerprint_mismatch", "fingerprint mismatch", 403, True),
             ("HOST_CONFIG_ERROR", "host_config_error", "host config error", 403, True),
             ("BAD_CERTIFICATE", "bad_certificate", "bad certificate", 403, True),
             ("PORT_SHARED", "port_shared", "port shared", 403, True),
             ("TOO_MANY_WATCHERS", "too_many_watchers", "too many backup-now connections",
              429, False),
             ("ALREADY_CONNECTED", "already_connected", "already connected", 409, False),
             ("PORT_UNAVAILABLE", "port_unavailable", "port unavailable", 503, False),
             ("UNSUPPORTED_PROTOCOL", "unsupported_protocol", "unsupported protocol version",
              426, True),
             ("WRONG_PATH", "wrong_path", "no tunnel at", 404, True),
             ("SERVER_CONFIG_ERROR", "server_config_error", "server configuration error", 503,
              False),
             ("INTERNAL_ERROR", "internal_error", "internal server error", 500, False),
             ("TOO_MANY_FROM_ONE_ADDRESS", "too_many_from_one_address", None, 503, False),
             ("BUSY", "busy", None, 503, False)])


class TextMappingTests(SynchronousTestCase):
    """Text from a server (old or new) <-> member."""

    def test_every_member_round_trips(self):
        for member in Refusal:
            if member.words is None:
                continue
            with self.subTest(member=member):
                text = member.text("laptop1", "some detail")
                self.assertEqual(text, f"{member.words} for laptop1: some detail")
                self.assertIs(Refusal.from_text(text), member)
                # As the client receives it: one line, maybe cut to a close
                # reason's 123 bytes.
                self.assertIs(Refusal.from_text(text.encode()[:123].decode()), member)

    def test_server_texts(self):
        """Texts exactly as servers (this one and older ones) send them."""
        for text, member in SERVER_TEXTS:
            with self.subTest(text=text):
                self.assertIs(Refusal.from_text(text), member)
        # Every member a client can be told about has a sample here.
        told = {member for member in Refusal if member.words is not None}
        self.assertEqual({member for _, member in SERVER_TEXTS}, told)

    def test_other_texts(self):
        for text in OTHER_TEXTS:
            with self.subTest(text=text):
                self.assertIsNone(Refusal.from_text(text))
                self.assertFalse(needs_admin(text))
                self.assertEqual(advice_for(text), UNKNOWN_ADVICE)

    def test_dropped_connections_have_no_words(self):
        """Connections dropped before TLS are counted, never told; no text maps to them."""
        for member in (Refusal.BUSY, Refusal.TOO_MANY_FROM_ONE_ADDRESS):
            self.assertIsNone(member.words)
            self.assertIsNone(Refusal.from_text(member.code))


class AdviceTests(SynchronousTestCase):
    """The client's advice comes from the enum, unchanged in its words."""

    def test_advice_for_every_member(self):
        for member, advice in ADVICE_BEFORE.items():
            with self.subTest(member=member):
                self.assertEqual(member.advice, advice)
                self.assertEqual(advice_for(member.text("x", "y")), advice)
        for text, member in SERVER_TEXTS:
            self.assertEqual(advice_for(text), member.advice)


class ErrorClassTests(SynchronousTestCase):
    """The exceptions the server raises carry their member."""

    def test_classes_carry_members(self):
        for cls, member in [(errors.UnknownHost, Refusal.UNKNOWN_HOST),
                            (errors.FingerprintMismatch, Refusal.FINGERPRINT_MISMATCH),
                            (errors.HostConfigInvalid, Refusal.HOST_CONFIG_ERROR),
                            (errors.AlreadyConnected, Refusal.ALREADY_CONNECTED),
                            (errors.PortUnavailable, Refusal.PORT_UNAVAILABLE)]:
            e = cls("laptop1", "detail")
            self.assertIs(e.refusal, member)
            self.assertEqual((e.reason, e.http_status), (member.words, member.http_status))
            self.assertEqual(str(e), member.text("laptop1", "detail"))
            self.assertIs(Refusal.from_text(str(e)), member)


class MetricsLabelTests(SynchronousTestCase):
    """Refusals are counted by member; nothing else is accepted as a label."""

    def test_counted_by_code(self):
        metrics = ServerMetrics([])
        metrics.refused(Refusal.WRONG_PATH)
        metrics.refused(Refusal.WRONG_PATH)
        metrics.refused(Refusal.BUSY)
        self.assertEqual(metrics.registry.get_sample_value(
            "bpctunnel_refusals_total", {"reason": "wrong_path"}), 2)
        self.assertEqual(metrics.registry.get_sample_value(
            "bpctunnel_refusals_total", {"reason": "busy"}), 1)
        self.assertRaises(TypeError, metrics.refused, "no tunnel at /x")
        self.assertNotIn("/x", generate_latest(metrics.registry).decode())


class OnePlaceTests(SynchronousTestCase):
    """No module but refusals.py spells a refusal's words in a string literal."""

    def test_words_only_in_refusals_module(self):
        words = {member.words for member in Refusal if member.words is not None}
        package = Path(bpctunnel.__file__).parent
        found = []
        for path in sorted(package.rglob("*.py")):
            if path.name == "refusals.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if any(node.value.startswith(w) for w in words):
                        found.append(f"{path.relative_to(package)}:{node.lineno}: {node.value[:60]!r}")
        self.assertEqual(found, [])
