"""The client's reconnection policy."""

from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.client.protocol import duration
from bpctunnel.refusals import Refusal
from bpctunnel.client.retry import RetryPolicy, needs_admin


class RetryPolicyTests(SynchronousTestCase):
    """Exponential backoff with jitter, a cap, and the cap at once for admin refusals."""

    def policy(self, jitter=1.0):
        return RetryPolicy(initial=1.0, maximum=300.0, random=lambda: jitter)

    def test_exponential_to_cap(self):
        """1, 2, 4, ... seconds, never above the cap (jitter 1.0 is the whole delay)."""
        policy = self.policy()
        self.assertEqual([policy(n) for n in (1, 2, 3, 4, 9, 10, 50)],
                         [1.0, 2.0, 4.0, 8.0, 256.0, 300.0, 300.0])

    def test_jitter_spreads(self):
        """Jitter scales the delay by 0.5 to 1, so a fleet doesn't retry in step."""
        self.assertEqual(self.policy(jitter=0.0)(3), 2.0)
        self.assertEqual(self.policy(jitter=0.5)(3), 3.0)

    def test_never_past_the_cap(self):
        """The README promises at most retry_max between tries, jitter included."""
        for jitter in (0.0, 0.5, 0.999999):
            policy = self.policy(jitter)
            policy.tunnel_failed("fingerprint mismatch for laptop1: ...")
            self.assertLessEqual(policy(1), 300.0)
            self.assertLessEqual(self.policy(jitter)(40), 300.0)

    def test_refused_tunnels_count(self):
        """Tunnels that closed before opening grow the delay though TCP connected."""
        policy = self.policy()
        for _ in range(4):
            policy.tunnel_failed("already connected for laptop1: ...")
        self.assertEqual(policy(1), 8.0)
        policy.tunnel_opened()
        self.assertEqual(policy(1), 1.0)

    def test_admin_refusal_goes_to_cap(self):
        """A refusal only the admin can fix backs off to the cap at once."""
        policy = self.policy()
        policy.tunnel_failed("fingerprint mismatch for laptop1: the certificate does not match")
        self.assertEqual(policy(1), 300.0)
        policy.tunnel_failed(None)  # e.g. the server was unreachable
        self.assertEqual(policy(1), 2.0)

    def test_which_refusals_need_admin(self):
        self.assertTrue(needs_admin("unknown host for x: y"))
        self.assertTrue(needs_admin("fingerprint mismatch for x: y"))
        self.assertTrue(needs_admin("host config error for x: y"))
        self.assertFalse(needs_admin("already connected for x: y"))
        self.assertFalse(needs_admin("port unavailable for x: y"))
        self.assertFalse(needs_admin(None))

    def test_policy_follows_the_enum(self):
        """Each refusal's text backs off to the cap at once exactly if its member needs_admin."""
        for refusal in Refusal:
            if refusal.words is None:
                continue
            with self.subTest(refusal=refusal):
                policy = self.policy()
                text = refusal.text("laptop1", "some detail")
                self.assertEqual(needs_admin(text), refusal.needs_admin)
                policy.tunnel_failed(text)
                self.assertEqual(policy(1), 300.0 if refusal.needs_admin else 1.0)
                self.assertEqual(policy.admin_refusal, text if refusal.needs_admin else None)
        self.assertEqual({r for r in Refusal if r.needs_admin},
                         {Refusal.UNKNOWN_HOST, Refusal.FINGERPRINT_MISMATCH,
                          Refusal.HOST_CONFIG_ERROR, Refusal.UNSUPPORTED_PROTOCOL,
                          Refusal.WRONG_PATH})

    def test_unknown_text_is_retried(self):
        """Words no server version sends are not taken for an admin refusal."""
        self.assertFalse(needs_admin("unknown"))
        self.assertFalse(needs_admin("something new for x: unknown host"))
        self.assertFalse(needs_admin(""))

    def test_duration_words(self):
        self.assertEqual([duration(s) for s in (1, 30, 300)], ["1 second", "30 seconds", "5 minutes"])
