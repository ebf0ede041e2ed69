"""
Answers a peer does not read are bounded (issue 16, class 2): a laptop (or a
hostile server) that floods pings -- WebSocket pings or the multiplexer's
PINGs -- and never reads the answers is cut off once UNREAD_ANSWERS bytes of
answers wait for it, with a logged reason; a peer that reads its answers may
ping as it likes.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.errors import ProtocolError
from bpctunnel.wire import framing
from bpctunnel.wire.mux import UNREAD_ANSWERS
from tests import test_server_session as sessions
from tests.test_hostile import upgrade_request
from tests.test_violations import ServerMux

PING = framing.encode(framing.Ping(b"12345678"))
PONG_SIZE = len(framing.encode(framing.Pong(b"12345678")))


class MultiplexerPingTests(SynchronousTestCase):
    def test_a_reading_peer_may_ping_as_it_likes(self):
        server = ServerMux()
        for _ in range(2 * UNREAD_ANSWERS // PONG_SIZE):
            server.mux.message_received(PING)
        self.assertEqual(len(server.sent), 2 * UNREAD_ANSWERS // PONG_SIZE)
        self.assertIsNone(server.mux.failed)

    def test_unread_answers_bounded(self):
        server = ServerMux()
        server.mux.pauseProducing()  # the transport holds what we write: no one reads
        allowed = UNREAD_ANSWERS // PONG_SIZE
        for _ in range(allowed):
            server.mux.message_received(PING)
        with self.assertRaises(ProtocolError) as raised:
            server.mux.message_received(PING)
        self.assertIn("it sends pings faster than it reads the answers", str(raised.exception))
        self.assertEqual(len(server.sent), allowed)
        server.mux.message_received(PING)  # dropped: the tunnel is closing
        self.assertEqual(len(server.sent), allowed)

    def test_reading_again_starts_afresh(self):
        server = ServerMux()
        for _ in range(3):
            server.mux.pauseProducing()
            for _ in range(UNREAD_ANSWERS // PONG_SIZE):
                server.mux.message_received(PING)
            server.mux.resumeProducing()
        self.assertIsNone(server.mux.failed)


def ws_ping(payload: bytes) -> bytes:
    """A client's WebSocket ping frame (unmasked, as our clients send frames)."""
    return bytes((0x89, len(payload))) + payload


class ServerWebSocketPingTests(sessions.SessionTestCase):
    def open(self):
        factory, protocol, transport = sessions.AdapterTests.make(self, self.cert)
        protocol.dataReceived(upgrade_request("/tunnel"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        transport.clear()
        return protocol, transport

    def test_pings_answered_while_read(self):
        protocol, transport = self.open()
        for _ in range(20_000):
            protocol.dataReceived(ws_ping(b"p" * 100))
            transport.clear()  # the client reads
        self.assertFalse(transport.disconnected)
        self.assertIsNone(protocol.mux.failed)

    def test_flood_never_read_closes_the_tunnel(self):
        protocol, transport = self.open()
        protocol.mux.pauseProducing()  # as the transport does when nobody reads
        for _ in range(20_000):
            protocol.dataReceived(ws_ping(b"p" * 100))
        written = transport.value()
        # At most the budget of pongs, then one close frame.
        self.assertLessEqual(len(written), UNREAD_ANSWERS + 200)
        self.assertGreater(len(written), UNREAD_ANSWERS - 200)
        self.assertIn(b"it sends pings faster than it reads the answers", written[-200:])
        self.assertEqual(
            len(self.logs.matching("closing the tunnel of laptop1: protocol error: it sends "
                                   "pings faster than it reads the answers")), 1)
        self.assertTrue(self.ports[0].stopped)
        self.assertIsNone(self.state.tunnels.get("laptop1"))

    def test_multiplexer_ping_flood_closes_the_tunnel(self):
        protocol, transport = self.open()
        protocol.mux.pauseProducing()
        frame = bytes((0x82, len(PING))) + PING
        for _ in range(UNREAD_ANSWERS // PONG_SIZE + 10):
            protocol.dataReceived(frame)
        self.assertIn(b"it sends pings faster than it reads the answers",
                      transport.value()[-200:])
        self.assertTrue(self.ports[0].stopped)


class ClientWebSocketPingTests(SynchronousTestCase):
    """A hostile server's ping flood costs the laptop at most the budget."""

    def open(self):
        from twisted.internet.testing import MemoryReactorClock

        from bpctunnel.client.retry import TunnelService
        from tests import test_retry

        clock = MemoryReactorClock()
        factory, endpoint = test_retry.memory_tunnels(clock)
        service = TunnelService(endpoint, factory, clock)
        service.startService()
        self.addCleanup(service.stopService)
        endpoint.accept()
        transport = endpoint.connections[-1][1]
        transport.clear()
        return factory.current, transport

    def test_pings_answered_while_read(self):
        protocol, transport = self.open()
        for _ in range(20_000):
            protocol.dataReceived(ws_ping(b"p" * 100))
            transport.clear()
        self.assertIsNone(protocol.mux.failed)
        self.assertFalse(transport.disconnecting)

    def test_flood_never_read_closes_the_tunnel(self):
        protocol, transport = self.open()
        protocol.mux.pauseProducing()
        for _ in range(20_000):
            protocol.dataReceived(ws_ping(b"p" * 100))
        written = transport.value()
        self.assertLessEqual(len(written), UNREAD_ANSWERS + 200)
        self.assertIn(b"it sends pings faster than it reads the answers", written[-200:])
        self.assertIsNotNone(protocol.mux.failed)
