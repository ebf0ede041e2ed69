"""
In-memory tests of L{bpctunnel.server.tunnels.TunnelRegistry}: no sockets, no real
time.  The tunnels are fakes whose probes are Deferreds fired by hand (or by
a L{Clock} for the probe timeout), so each branch of C{claim}'s race is
reached on purpose.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from bpctunnel.errors import AlreadyConnected
from bpctunnel.server.tunnels import TunnelRegistry


class FakeTunnel:
    """
    What C{claim} asks of a registered tunnel: C{probe(timeout)} and
    C{replace(reason)}, both returning Deferreds the test fires.
    """

    def __init__(self, name: str):
        self.name = name
        self.probes: list[tuple[float, Deferred]] = []
        self.replaced: list[tuple[str, Deferred]] = []

    def probe(self, timeout: float) -> Deferred:
        d = Deferred()
        self.probes.append((timeout, d))
        return d

    def replace(self, reason: str) -> Deferred:
        d = Deferred()
        self.replaced.append((reason, d))
        return d

    def answer(self, alive: bool) -> None:
        """Fire the one pending probe with C{alive}."""
        (_, d), = self.probes
        d.callback(alive)

    def __repr__(self) -> str:
        return f"<FakeTunnel {self.name}>"


class ClockedTunnel(FakeTunnel):
    """A probe that, like the server's, says C{False} once C{timeout} passes unanswered."""

    def __init__(self, name: str, clock: Clock):
        super().__init__(name)
        self.clock = clock

    def probe(self, timeout: float) -> Deferred:
        d = super().probe(timeout)
        call = self.clock.callLater(timeout, d.callback, False)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d


class RegistryTestCase(unittest.TestCase):
    def setUp(self):
        self.tunnels = TunnelRegistry(probe_timeout=5.0)
        self.old = FakeTunnel("old")
        self.new = FakeTunnel("new")
        self.successResultOf(self.tunnels.claim("laptop", self.old))

    def refusal(self, d: Deferred) -> str:
        """The detail of the L{AlreadyConnected} that C{d} failed with."""
        return str(self.failureResultOf(d, AlreadyConnected).value)


class FreeHostTests(RegistryTestCase):
    def test_first_claim_wins_at_once(self):
        """A host nobody holds is given to the claimant without a probe."""
        self.assertIs(self.tunnels.get("laptop"), self.old)
        self.assertEqual((len(self.tunnels), list(self.tunnels)), (1, [self.old]))
        other = FakeTunnel("other")
        self.successResultOf(self.tunnels.claim("desktop", other))
        self.assertEqual(sorted(t.name for t in self.tunnels), ["old", "other"])
        self.assertEqual((self.old.probes, other.probes), ([], []))

    def test_get_unknown(self):
        self.assertIsNone(self.tunnels.get("nobody"))


class ProbeAnsweredTests(RegistryTestCase):
    """The old tunnel answers the probe: it keeps the host."""

    def test_newcomer_refused(self):
        d = self.tunnels.claim("laptop", self.new)
        self.assertNoResult(d)
        self.assertEqual([t for t, _ in self.old.probes], [5.0])
        self.old.answer(True)
        self.assertIn("is up and answering; the newer connection was refused", self.refusal(d))
        self.assertIs(self.tunnels.get("laptop"), self.old)
        self.assertEqual(self.old.replaced, [])

    def test_probe_again_after_refusal(self):
        """The refusal ends the probe: the next claimant gets a probe of its own."""
        d = self.tunnels.claim("laptop", self.new)
        self.old.answer(True)
        self.failureResultOf(d, AlreadyConnected)
        third = FakeTunnel("third")
        d = self.tunnels.claim("laptop", third)
        self.assertNoResult(d)
        self.assertEqual(len(self.old.probes), 2)


class ProbeUnansweredTests(RegistryTestCase):
    """The old tunnel does not answer: the newcomer takes over."""

    def test_newcomer_takes_over(self):
        d = self.tunnels.claim("laptop", self.new)
        with capturedLogs() as events:
            self.old.answer(False)
        # The newcomer is registered at once, but its claim fires only once
        # the old tunnel is down (its port closed, so the newcomer can listen).
        self.assertIs(self.tunnels.get("laptop"), self.new)
        self.assertEqual([r for r, _ in self.old.replaced],
                         ["a new connection from the same host replaced it"])
        self.assertNoResult(d)
        self.old.replaced[0][1].callback(None)
        self.successResultOf(d)
        self.assertEqual(list(self.tunnels), [self.new])
        [warning] = [e for e in events if e["log_format"].startswith("replacing the tunnel")]
        self.assertEqual((warning["client_name"], warning["timeout"]), ("laptop", 5.0))

    def claim_over_clocked_tunnel(self):
        """A registry (probe timeout 2.5 s) whose host has a tunnel probed on a
        clock, and the newcomer's pending claim: (clock, registry, old, claim)."""
        clock = Clock()
        registry = TunnelRegistry(probe_timeout=2.5)
        old = ClockedTunnel("old", clock)
        self.successResultOf(registry.claim("laptop", old))
        return clock, registry, old, registry.claim("laptop", self.new)

    def test_takeover_after_timeout(self):
        """With a probe that times out on a clock, the newcomer wins after probe_timeout."""
        clock, registry, old, d = self.claim_over_clocked_tunnel()
        clock.advance(2.4)
        self.assertIs(registry.get("laptop"), old)
        self.assertEqual(old.replaced, [])
        clock.advance(0.1)
        self.assertIs(registry.get("laptop"), self.new)
        old.replaced[0][1].callback(None)
        self.successResultOf(d)

    def test_answer_before_timeout(self):
        clock, registry, old, d = self.claim_over_clocked_tunnel()
        clock.advance(1)
        old.answer(True)
        self.failureResultOf(d, AlreadyConnected)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIs(registry.get("laptop"), old)

    def test_replace_fails(self):
        """If dropping the old tunnel fails, so does the claim (the newcomer stays registered)."""
        d = self.tunnels.claim("laptop", self.new)
        self.old.answer(False)
        self.old.replaced[0][1].errback(RuntimeError("port would not close"))
        self.failureResultOf(d, RuntimeError)
        self.assertIs(self.tunnels.get("laptop"), self.new)


class ProbeFailsTests(RegistryTestCase):
    """
    A probe that fails (rather than saying C{False}) fails the claim with
    its error: the old tunnel stays, and the host can be probed again.  (The
    server's own C{probe} never fails: an unanswered ping is C{False}.)
    """

    def test_error_passes_to_newcomer(self):
        d = self.tunnels.claim("laptop", self.new)
        self.old.probes[0][1].errback(ValueError("probe broke"))
        self.failureResultOf(d, ValueError)
        self.assertIs(self.tunnels.get("laptop"), self.old)
        self.assertEqual(self.old.replaced, [])
        d = self.tunnels.claim("laptop", self.new)
        self.assertNoResult(d)  # probing again, not "being checked right now"
        self.old.probes[1][1].callback(False)
        self.assertIs(self.tunnels.get("laptop"), self.new)


class WhileProbingTests(RegistryTestCase):
    """Things that happen while the old tunnel is being probed."""

    def test_third_claimant_refused_at_once(self):
        d = self.tunnels.claim("laptop", self.new)
        third = FakeTunnel("third")
        d3 = self.tunnels.claim("laptop", third)
        self.assertIn("being checked right now", self.refusal(d3))
        self.assertEqual(len(self.old.probes), 1)
        self.old.answer(False)
        self.assertIs(self.tunnels.get("laptop"), self.new)
        self.old.replaced[0][1].callback(None)
        self.successResultOf(d)

    def test_other_host_not_blocked(self):
        """A probe of one host does not hold up claims for another."""
        self.tunnels.claim("laptop", self.new)
        other = FakeTunnel("other")
        self.successResultOf(self.tunnels.claim("desktop", other))
        self.assertIs(self.tunnels.get("desktop"), other)

    def test_old_goes_away_then_answers_nothing(self):
        """The old tunnel closes during the probe: the newcomer gets the host, nothing is replaced."""
        d = self.tunnels.claim("laptop", self.new)
        self.tunnels.release("laptop", self.old)
        self.assertIsNone(self.tunnels.get("laptop"))
        self.old.answer(False)
        self.successResultOf(d)
        self.assertIs(self.tunnels.get("laptop"), self.new)
        self.assertEqual(self.old.replaced, [])

    def test_old_goes_away_though_it_answered(self):
        """An answer from a tunnel already released does not keep the host."""
        d = self.tunnels.claim("laptop", self.new)
        self.tunnels.release("laptop", self.old)
        self.old.answer(True)
        self.successResultOf(d)
        self.assertIs(self.tunnels.get("laptop"), self.new)
        self.assertEqual(self.old.replaced, [])

    def test_third_takes_the_place_freed_meanwhile(self):
        """
        The old tunnel goes away and a third claimant gets the free host
        before the probe ends: the one that waited for the probe is refused,
        whatever the probe says.
        """
        for alive in (True, False):
            registry = TunnelRegistry()
            old, new, third = FakeTunnel("old"), FakeTunnel("new"), FakeTunnel("third")
            self.successResultOf(registry.claim("laptop", old))
            d = registry.claim("laptop", new)
            registry.release("laptop", old)
            self.successResultOf(registry.claim("laptop", third))
            old.answer(alive)
            self.assertIn("another connection took this host's place", self.refusal(d))
            self.assertIs(registry.get("laptop"), third)
            self.assertEqual(old.replaced, [])
            self.assertEqual(third.probes, [])


class ReleaseTests(RegistryTestCase):
    def test_release_registered(self):
        self.tunnels.release("laptop", self.old)
        self.assertIsNone(self.tunnels.get("laptop"))
        self.assertEqual(len(self.tunnels), 0)

    def test_release_of_a_replaced_tunnel_keeps_its_successor(self):
        """The old tunnel's own cleanup, after a takeover, leaves the newcomer registered."""
        d = self.tunnels.claim("laptop", self.new)
        self.old.answer(False)
        self.old.replaced[0][1].callback(None)
        self.successResultOf(d)
        self.tunnels.release("laptop", self.old)
        self.assertIs(self.tunnels.get("laptop"), self.new)

    def test_release_of_a_refused_newcomer_keeps_the_old(self):
        d = self.tunnels.claim("laptop", self.new)
        self.old.answer(True)
        self.failureResultOf(d, AlreadyConnected)
        self.tunnels.release("laptop", self.new)
        self.assertIs(self.tunnels.get("laptop"), self.old)

    def test_release_unknown_host_or_twice(self):
        self.tunnels.release("nobody", self.old)
        self.tunnels.release("laptop", self.old)
        self.tunnels.release("laptop", self.old)
        self.assertEqual(len(self.tunnels), 0)
