"""
The client's reconnection: the policy (how long to wait after the Nth failed
attempt) and ClientService counting a tunnel that closed before it opened as
a failed attempt (prepareConnection), with the real tunnel protocol on
in-memory transports and a clock.
"""

import base64
import hashlib
from pathlib import Path

from automat import NoTransition
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bpctunnel.client.config import ClientConfig
from bpctunnel.client.protocol import TunnelClientFactory, duration
from bpctunnel.client.retry import RetryPolicy, TunnelNotOpened, TunnelService, needs_admin
from bpctunnel.refusals import Refusal
from bpctunnel.wire import framing

#: What a server adds to the key to accept a WebSocket (RFC 6455, 4.2.2).
RFC6455_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ADMIN_REFUSAL = "fingerprint mismatch for laptop1: the certificate does not match"
OTHER_REFUSAL = "already connected for laptop1: another client is connected"


class RetryPolicyTests(SynchronousTestCase):
    """Exponential backoff with jitter, a cap, and the cap at once for admin refusals."""

    def policy(self, jitter=1.0):
        return RetryPolicy(initial=1.0, maximum=300.0, random=lambda: jitter)

    def test_exponential_to_cap(self):
        """1, 2, 4, ... seconds after 1, 2, 3, ... failures, never above the cap."""
        policy = self.policy()
        self.assertEqual([policy(n) for n in (1, 2, 3, 4, 9, 10, 50, 5000)],
                         [1.0, 2.0, 4.0, 8.0, 256.0, 300.0, 300.0, 300.0])

    def test_jitter_spreads(self):
        """Jitter scales the delay by 0.5 to 1, so a fleet doesn't retry in step."""
        self.assertEqual(self.policy(jitter=0.0)(3), 2.0)
        self.assertEqual(self.policy(jitter=0.5)(3), 3.0)

    def test_never_past_the_cap(self):
        """The README promises at most retry_max between tries, jitter included."""
        for jitter in (0.0, 0.5, 0.999999):
            policy = self.policy(jitter)
            policy.tunnel_closed(ADMIN_REFUSAL)
            self.assertLessEqual(policy(1), 300.0)
            self.assertLessEqual(self.policy(jitter)(40), 300.0)

    def test_admin_refusal_goes_to_cap(self):
        """A refusal only the admin can fix backs off to the cap at once, until another close."""
        policy = self.policy()
        policy.tunnel_closed(ADMIN_REFUSAL)
        self.assertEqual(policy(1), 300.0)
        policy.tunnel_closed(None)  # e.g. TLS failed
        self.assertEqual(policy(2), 2.0)
        policy.tunnel_closed(ADMIN_REFUSAL)
        policy.tunnel_opened()
        self.assertEqual(policy(1), 1.0)

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
                policy.tunnel_closed(text)
                self.assertEqual(policy(1), 300.0 if refusal.needs_admin else 1.0)
                self.assertEqual(policy.admin_refusal, text if refusal.needs_admin else None)
        self.assertEqual({r for r in Refusal if r.needs_admin},
                         {Refusal.UNKNOWN_HOST, Refusal.FINGERPRINT_MISMATCH,
                          Refusal.HOST_CONFIG_ERROR, Refusal.UNSUPPORTED_PROTOCOL,
                          Refusal.WRONG_PATH, Refusal.BAD_CERTIFICATE,
                          Refusal.PORT_SHARED})

    def test_unknown_text_is_retried(self):
        """Words no server version sends are not taken for an admin refusal."""
        self.assertFalse(needs_admin("unknown"))
        self.assertFalse(needs_admin("something new for x: unknown host"))
        self.assertFalse(needs_admin(""))

    def test_duration_words(self):
        self.assertEqual([duration(s) for s in (1, 30, 300)], ["1 second", "30 seconds", "5 minutes"])


class MemoryTransport(StringTransport):
    """A StringTransport that takes Autobahn's producer and abort calls."""

    aborted = False

    def unregisterProducer(self):
        self.producer = None

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    Connects at once to an in-memory transport, or fails with
    C{ConnectionRefusedError} while C{refusing}; keeps (protocol, transport)
    and plays the server's side of the latest connection's opening handshake.
    """

    def __init__(self):
        self.connections = []
        self.refusing = False

    def connect(self, factory):
        if self.refusing:
            return fail(ConnectionRefusedError("nobody listens"))
        protocol = factory.buildProtocol(None)
        transport = MemoryTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)

    def refuse(self, phrase: str = OTHER_REFUSAL, status: int = 403) -> None:
        """The server refuses the handshake; the connection closes."""
        protocol, transport = self.connections[-1]
        protocol.dataReceived(f"HTTP/1.1 {status} {phrase}\r\nServer: bpctunnel\r\n\r\n".encode())
        assert transport.disconnecting
        protocol.connectionLost(Failure(ConnectionDone()))

    def accept(self):
        """The server accepts the handshake; returns the connection's protocol."""
        protocol, transport = self.connections[-1]
        headers = dict(line.split(b": ", 1) for line in transport.value().split(b"\r\n")[1:]
                       if b": " in line)
        transport.clear()
        accept = base64.b64encode(hashlib.sha1(headers[b"Sec-WebSocket-Key"] + RFC6455_GUID)
                                  .digest())
        protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Protocol: " + framing.SUBPROTOCOL.encode() + b"\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        return protocol


def memory_tunnels(clock, role=None):
    """A tunnel factory for laptop1 (no jitter) and a L{MemoryEndpoint}."""
    config = ClientConfig(
        server="wss://backup.example.org:8443/tunnel", server_host="backup.example.org",
        server_port=8443, ca=Path("ca.crt"), cert=Path("c.crt"), key=Path("c.key"),
        rsyncd_conf=Path("rsyncd.conf"), rsync="rsync", host="laptop1")
    factory = TunnelClientFactory(clock, config, accept_channel=lambda ch: None, role=role)
    factory.retry_policy.random = lambda: 1.0
    return factory, MemoryEndpoint()


class TunnelServiceTests(SynchronousTestCase):
    """
    ClientService counts a tunnel that closed before it opened as a failed
    attempt: the delays grow though every TCP connection succeeded.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.factory, self.endpoint = memory_tunnels(self.clock)
        self.service = TunnelService(self.endpoint, self.factory, self.clock)
        self.retries = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_format", "").startswith("Scheduling retry"):
            self.retries.append((event["attempt"], event["delay"]))

    def refuse(self, phrase=OTHER_REFUSAL):
        self.endpoint.refuse(phrase)

    def open(self):
        return self.endpoint.accept()

    def test_refused_tunnels_count(self):
        """Four refusals in a row: waits of 1, 2, 4, 8 seconds, as for an unreachable server."""
        self.service.startService()
        for expected in (1.0, 2.0, 4.0, 8.0):
            self.refuse()
            self.clock.advance(expected)
        self.assertEqual(self.retries, [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)])
        self.assertEqual(len(self.endpoint.connections), 5)

    def test_refusals_and_unreachable_server_count_together(self):
        """Failed attempts in a row are counted whatever failed: TCP or the handshake."""
        self.service.startService()
        self.refuse()
        self.endpoint.refusing = True
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        self.endpoint.refusing = False
        self.clock.advance(4.0)
        self.refuse()
        self.assertEqual(self.retries, [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)])

    def test_open_tunnel_starts_again(self):
        """After a tunnel opened and closed, the next wait is the first delay again."""
        self.service.startService()
        self.refuse()
        self.clock.advance(1.0)
        self.refuse()
        self.clock.advance(2.0)
        connected = self.service.whenConnected()
        connection = self.open()
        self.assertIs(self.successResultOf(connected), self.factory.current)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.retries, [(1, 1.0), (2, 2.0), (1, 1.0)])

    def test_server_silent_for_two_intervals_is_gone(self):
        """
        The client's keepalive: a ping goes out every keepalive interval, and
        the connection is dropped only when one stays unanswered for two
        intervals, so an outage that begins just before a ping and is shorter
        than the documented dead-peer time costs nothing (issue 16).
        """
        self.service.startService()
        connection = self.open()
        transport = self.endpoint.connections[-1][1]
        transport.clear()
        keepalive = self.factory.config.keepalive
        self.clock.advance(keepalive)
        self.assertEqual(transport.value()[:1], b"\x89")  # the ping, right as the link fails
        self.clock.advance(2 * keepalive - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting or transport.aborted)
        self.assertIsNotNone(connection)

    def test_admin_refusal_waits_the_cap(self):
        """A refusal only the admin can fix: the next try is retry_max away, and said so."""
        self.service.startService()
        self.refuse(ADMIN_REFUSAL)
        self.assertEqual(self.retries, [(1, 300.0)])

    def test_first_failure_fails_when_connected(self):
        """whenConnected(failAfterFailures=1) fails with the refusal, as backup-now needs."""
        connected = self.service.whenConnected(failAfterFailures=1)
        self.service.startService()
        self.refuse(ADMIN_REFUSAL)
        failure = self.failureResultOf(connected, TunnelNotOpened)
        self.assertEqual((failure.value.refusal, failure.value.reason),
                         (ADMIN_REFUSAL, ADMIN_REFUSAL))

    def test_connection_error_fails_when_connected(self):
        self.endpoint.refusing = True
        connected = self.service.whenConnected(failAfterFailures=1)
        self.service.startService()
        self.failureResultOf(connected, ConnectionRefusedError)

    def test_stop_during_handshake(self):
        """Stopping while the handshake runs aborts the connection; the stop completes."""
        connected = self.service.whenConnected()
        self.service.startService()
        protocol, transport = self.endpoint.connections[-1]
        stopped = self.service.stopService()
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.failureResultOf(connected, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_when_open(self):
        self.service.startService()
        connection = self.open()
        _, transport = self.endpoint.connections[-1]
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.assertTrue(transport.disconnecting)
        connection.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(self.retries, [])


class ClientServiceLimitTests(SynchronousTestCase):
    """
    Why L{bpctunnel.client.retry} puts a gate in front of ClientService's
    protocol: ClientService has no transition for the loss of a connection
    that prepareConnection rejected.  If Twisted learns it, this test fails
    and the gate (_UntilOpen) can go.
    """

    def test_loss_after_rejection(self):
        connections = []

        @implementer(IStreamClientEndpoint)
        class Endpoint:
            def connect(self, factory):
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(StringTransport())
                connections.append(protocol)
                return succeed(protocol)

        rejected = Deferred()
        service = ClientService(Endpoint(), Factory.forProtocol(Protocol), clock=MemoryReactorClock(),
                                prepareConnection=lambda protocol: rejected)
        service.startService()
        rejected.errback(TunnelNotOpened(None, "refused"))
        self.assertRaises(NoTransition, connections[0].connectionLost, Failure(ConnectionDone()))
