"""
A stopping server says so (issue 16, section 6): twistd's stop closes every
open tunnel with L{Notice.SERVER_RESTARTING}, waiting a bounded time for the
closes to go out, and a laptop that hears it logs news, not an error, and
comes back about a second after the server does.

In memory: the server's sessions over fake links on a Clock
(L{tests.test_server_session}); the client's real tunnel protocol and
ClientService on in-memory connections (L{tests.test_retry}).  The real
processes: L{RestartSmokeTests}.
"""

from __future__ import annotations

import json
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bpctunnel.client.config import find_rsync
from bpctunnel.client.retry import RESTART_ATTEMPTS, RetryPolicy, TunnelService
from bpctunnel.refusals import Notice, Refusal
from bpctunnel.server.server_state import STOP_GRACE
from bpctunnel.server.service import RestartNoticeService
from bpctunnel.testing.sandbox import Sandbox, free_port, make_sample_tree
from tests.helpers import TIMEOUT, temp_dir, twistd
from tests.test_retry import ADMIN_REFUSAL, memory_tunnels
from tests.test_server_session import SessionTestCase

RESTARTING = Notice.SERVER_RESTARTING.text("the bpctunnel server is stopping")


class NoticeTests(SynchronousTestCase):
    """The notice is part of the refusal module's vocabulary, apart from the refusals."""

    def test_words_and_code(self):
        notice = Notice.SERVER_RESTARTING
        self.assertEqual((notice.code, notice.close_code, notice.words),
                         ("server_restarting", 4004, "server restarting"))
        self.assertIs(Notice.from_text(RESTARTING), notice)
        self.assertIsNone(Notice.from_text("peer dropped the TCP connection"))
        self.assertIsNone(Notice.from_text(None))

    def test_no_refusal_reads_as_the_notice(self):
        self.assertIsNone(Refusal.from_text(RESTARTING))
        for refusal in Refusal:
            if refusal.words is not None:
                self.assertIsNone(Notice.from_text(refusal.text("laptop1", "x")))


class ServerStopTests(SessionTestCase):
    """The server's stop (RestartNoticeService) closes each open tunnel with the notice."""

    def open_two(self):
        files = self.sandbox.issue_client("laptop2")
        self.sandbox.register("laptop2", 40002, files.fingerprint)
        first = self.open()
        second, link, _ = self.connect(source_port=50001)
        self.successResultOf(self.handshake(second, cert=files.cert.read_bytes()))
        second.opened()
        return [first, (second, link)]

    def test_stop_closes_each_tunnel_with_the_notice(self):
        tunnels = self.open_two()
        stopped = RestartNoticeService(self.state).stopService()
        for session, link in tunnels:
            [(code, reason)] = link.closes
            self.assertEqual(code, Notice.SERVER_RESTARTING.close_code)
            self.assertTrue(reason.startswith("server restarting: "), reason)
            self.assertTrue(session.mux.lost)
        self.assertEqual([port.stopped for port in self.ports], [True, True])
        self.assertEqual(len(self.state.tunnels), 0)
        self.assertNoResult(stopped)  # until the closing handshakes end
        tunnels[0][0].connection_lost()
        self.assertNoResult(stopped)
        tunnels[1][0].connection_lost()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.logs.matching("closing 2 tunnel(s) (server restarting)")), 1)
        self.assertEqual(self.logs.matching("did not close"), [])

    def test_stop_waits_at_most_the_grace(self):
        """A client that never answers the close holds up the stop L{STOP_GRACE} seconds."""
        session, link = self.open()
        stopped = RestartNoticeService(self.state).stopService()
        self.clock.advance(STOP_GRACE - 0.01)
        self.assertNoResult(stopped)
        self.clock.advance(0.01)
        self.successResultOf(stopped)
        [line] = self.logs.matching("did not close within")
        self.assertIn("1 tunnel(s) did not close within 2 seconds (laptop1)", line)
        session.connection_lost()  # the reactor drops it: nothing more happens
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_without_tunnels(self):
        self.successResultOf(RestartNoticeService(self.state).stopService())

    def test_closed_tunnels_are_not_waited_for(self):
        session, _ = self.open()
        session.closed(1000, "bye")
        session.connection_lost()
        self.successResultOf(RestartNoticeService(self.state).stopService())

    def test_connection_in_its_handshake_is_left_alone(self):
        """Only open tunnels hear the notice; a handshake under way just ends with the reactor."""
        session, link, _ = self.connect()
        self.successResultOf(RestartNoticeService(self.state).stopService())
        self.assertEqual(link.closes, [])


class RestartRetryPolicyTests(SynchronousTestCase):
    """After the notice, the first L{RESTART_ATTEMPTS} waits are the first delay."""

    def policy(self):
        return RetryPolicy(initial=1.0, maximum=300.0, random=lambda: 1.0)

    def test_quick_attempts_then_backoff(self):
        policy = self.policy()
        policy.tunnel_closed(None)
        policy.server_restarting()
        quick = [policy(n) for n in range(1, RESTART_ATTEMPTS + 1)]
        self.assertEqual(quick, [1.0] * RESTART_ATTEMPTS)
        self.assertEqual([policy(RESTART_ATTEMPTS + n) for n in (1, 2, 3)], [1.0, 2.0, 4.0])

    def test_jitter(self):
        policy = RetryPolicy(initial=1.0, maximum=300.0, random=lambda: 0.0)
        policy.server_restarting()
        self.assertEqual(policy(3), 0.5)

    def test_open_tunnel_or_refusal_ends_it(self):
        policy = self.policy()
        policy.server_restarting()
        policy.tunnel_opened()
        self.assertEqual(policy(3), 4.0)
        policy.server_restarting()
        policy.tunnel_closed(ADMIN_REFUSAL)
        self.assertEqual(policy(1), 300.0)
        policy.server_restarting()
        policy.tunnel_closed(None)  # the server not up yet: TLS or the handshake failed
        self.assertEqual(policy(3), 1.0)


def close_frame(code: int, reason: str) -> bytes:
    """A server's WebSocket close frame (unmasked)."""
    body = code.to_bytes(2, "big") + reason.encode()
    return bytes((0x88, len(body))) + body


class ClientHearsRestartTests(SynchronousTestCase):
    """The laptop's client, told the server is restarting: news, and back in a second."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.factory, self.endpoint = memory_tunnels(self.clock)
        self.service = TunnelService(self.endpoint, self.factory, self.clock)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def retries(self):
        return [(e["attempt"], e["delay"]) for e in self.events
                if e.get("log_format", "").startswith("Scheduling retry")]

    def server_closes(self, code: int, reason: str) -> None:
        protocol, transport = self.endpoint.connections[-1]
        transport.clear()
        protocol.dataReceived(close_frame(code, reason))
        self.assertEqual(transport.value()[:1], b"\x88")  # the client answered the close
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_restart_is_news_and_the_retries_stay_short(self):
        self.service.startService()
        self.endpoint.accept()
        self.server_closes(Notice.SERVER_RESTARTING.close_code, RESTARTING)
        lines = [(e["log_level"], formatEvent(e)) for e in self.events]
        # One line says it, with what happens next.
        self.assertEqual([line for _, line in lines if "restart" in line],
                         ["tunnel to wss://backup.example.org:8443/tunnel closed: the server is "
                          "restarting; reconnecting"])
        self.assertIn(LogLevel.info, [level for level, line in lines if "restart" in line])
        self.assertEqual([line for level, line in lines if level >= LogLevel.warn], [])
        self.endpoint.refusing = True  # the server is not back yet
        for _ in range(3):
            self.clock.advance(1.0)
        self.assertEqual(self.retries(), [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)])
        self.endpoint.refusing = False
        self.clock.advance(1.0)
        self.endpoint.accept()
        self.assertIsNotNone(self.factory.current)
        self.assertFalse(self.factory.retry_policy.restarting)

    def test_other_closes_back_off_as_before(self):
        self.service.startService()
        self.endpoint.accept()
        self.server_closes(1000, "the tunnel of laptop1 was dropped by the admin")
        self.endpoint.refusing = True
        for delay in (1.0, 2.0, 4.0):
            self.clock.advance(delay)
        self.assertEqual(self.retries(), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)])
        self.assertEqual([e for e in self.events
                          if "restarting" in e.get("log_format", "")], [])


def nth_line(process, words: str, count: int) -> Deferred:
    """Fires with C{process}'s output once C{words} appeared in it C{count} times."""
    d = Deferred()
    received = process.childDataReceived

    def watch(fd, data):
        received(fd, data)
        if not d.called and process.text.count(words) >= count:
            d.callback(process.text)

    process.childDataReceived = watch
    if process.text.count(words) >= count:
        d.callback(process.text)
    return d.addTimeout(TIMEOUT, reactor)


class RestartSmokeTests(TestCase):
    """
    Real processes: twistd's server stopped with SIGTERM, and started again
    on the same port; the laptop's client (twistd too) logs the restart
    and its tunnel is up again within a few seconds of the server.
    """

    timeout = 120

    def server(self, sandbox, port: int):
        process = twistd(self, "bpctunnel-server", "--listen", f"127.0.0.1:{port}",
                         "--certs", str(sandbox.certs_dir),
                         "--backuppc-conf", str(sandbox.conf_dir),
                         "--state-dir", str(sandbox.root / "state"),
                         "--api-socket", "none", "--local-users", "any")
        return process, process.wait_for("bpctunnel server listening on")

    @inlineCallbacks
    def test_sigterm_tells_the_laptop_and_it_comes_back(self):
        root = temp_dir(self)
        sandbox = Sandbox.create(root, "127.0.0.1")
        files = sandbox.issue_client("laptop1")
        sandbox.register("laptop1", free_port(), files.fingerprint)
        number = free_port()
        server, listening = self.server(sandbox, number)
        yield listening
        config = sandbox.write_client_config(
            files, f"wss://127.0.0.1:{number}/tunnel", {"docs": make_sample_tree(root / "src")},
            find_rsync("rsync"))
        client = twistd(self, "bpctunnel-client", "--config", str(config))
        yield client.wait_for("tunnel up to")
        yield server.wait_for("tunnel up for laptop1")

        stopping = reactor.seconds()
        yield server.stop("TERM")  # twistd ends by its signal, as it was stopped
        self.assertLess(reactor.seconds() - stopping, STOP_GRACE + 3)
        self.assertIn("Server Shut Down.", server.text)
        self.assertIn("closing 1 tunnel(s) (server restarting)", server.text)
        text = yield client.wait_for("the server is restarting; reconnecting")
        # One line says it (no second "closed: server restarting" line).
        self.assertEqual(len(re.findall(r"restart", text)), 1, text)
        self.assertRegex(text, r"tunnel to \S+ closed: the server is restarting; reconnecting")
        self.assertNotIn("#error", text)
        # Issue 18, acceptance 3: the history is on disk for the next server.
        state = json.loads((root / "state" / "state.json").read_text())
        laptop = state["hosts"]["laptop1"]
        self.assertLess(laptop["connected_at"], laptop["disconnected_at"])
        self.assertRegex(laptop["address"], r"^127\.0\.0\.1:\d+$")

        server, listening = self.server(sandbox, number)
        yield listening
        started = reactor.seconds()
        yield server.wait_for("tunnel up for laptop1")
        self.assertLess(reactor.seconds() - started, 5)  # a quick retry, not a backoff
        yield nth_line(client, "tunnel up to", 2)

    @inlineCallbacks
    def test_truncated_state_file_set_aside(self):
        """Issue 18, acceptance 3: a truncated state file is set aside, logged, and the server starts."""
        root = temp_dir(self)
        sandbox = Sandbox.create(root, "127.0.0.1")
        (root / "state").mkdir()
        (root / "state" / "state.json").write_text('{"version": 1, "hosts": {"laptop1": {"conn')
        server, listening = self.server(sandbox, free_port())
        yield listening
        self.assertRegex(server.text, r"the state file \S+/state\.json is corrupt \(.*\); moved "
                                      r"it to \S+/state\.json\.corrupt-\d{8}T\d{6} and starting "
                                      r"with no history")
        [aside] = (root / "state").iterdir()
        self.assertRegex(aside.name, r"^state\.json\.corrupt-")
