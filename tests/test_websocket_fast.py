"""Tests for bpctunnel.transport.websocket_fast: the same bytes as Autobahn, less work."""

from __future__ import annotations

from autobahn.twisted.websocket import (
    WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
    WebSocketServerProtocol)
from autobahn.exception import Disconnected
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from bpctunnel.transport.autobahn_timers import ReactorTimer
from bpctunnel.transport.websocket_fast import FastBinaryMixin, binary_frame_header


class Server(FastBinaryMixin, WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.factory.received.append((payload, isBinary))


class Client(FastBinaryMixin, WebSocketClientProtocol):
    def onMessage(self, payload, isBinary):
        self.factory.received.append((payload, isBinary))


def open_protocol(factory_class, protocol_class, **options):
    """A protocol on a StringTransport, its opening handshake skipped."""
    clock = MemoryReactorClock()
    factory = factory_class("ws://localhost/", reactor=clock)
    factory._batched_timer = ReactorTimer(clock)
    factory.protocol = protocol_class
    factory.received = []
    factory.setProtocolOptions(openHandshakeTimeout=0, **options)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    # What Autobahn sets once the opening handshake succeeds.
    protocol.state = protocol.STATE_OPEN
    protocol.inside_message = False
    protocol.current_frame = None
    protocol.transport.clear()
    return protocol


class FrameHeaderTests(unittest.TestCase):
    def test_lengths(self):
        """Each length takes the shortest encoding RFC 6455 allows."""
        self.assertEqual(binary_frame_header(0), b"\x82\x00")
        self.assertEqual(binary_frame_header(125), b"\x82\x7d")
        self.assertEqual(binary_frame_header(126), b"\x82\x7e\x00\x7e")
        self.assertEqual(binary_frame_header(65535), b"\x82\x7e\xff\xff")
        self.assertEqual(binary_frame_header(65536), b"\x82\x7f" + (65536).to_bytes(8, "big"))


class FastBinaryMixinTests(unittest.TestCase):
    def test_send_binary_as_autobahn(self):
        """An unmasked binary message is the same bytes Autobahn's sendMessage writes."""
        for size in (0, 5, 200, 70000):
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            fast = open_protocol(WebSocketServerFactory, Server)
            slow = open_protocol(WebSocketServerFactory, Server)
            fast.send_binary(payload)
            slow.sendMessage(payload, isBinary=True)
            self.assertEqual(fast.transport.value(), slow.transport.value())

    def test_send_pieces_as_one_message(self):
        """Pieces go out as one message, as sendMessage writes their join."""
        pieces = (b"\x01head", bytes(range(256)) * 300, b"tail")
        for protocol_class, factory_class, options in (
                (Server, WebSocketServerFactory, {}),
                (Client, WebSocketClientFactory, {"maskClientFrames": False})):
            fast = open_protocol(factory_class, protocol_class, **options)
            slow = open_protocol(factory_class, protocol_class, **options)
            fast.send_binary_pieces(pieces)
            slow.sendMessage(b"".join(pieces), isBinary=True)
            self.assertEqual(fast.transport.value(), slow.transport.value())

    def test_masked_pieces(self):
        """A masking client joins the pieces and masks them, as Autobahn does."""
        client = open_protocol(WebSocketClientFactory, Client, maskClientFrames=True)
        client.send_binary_pieces((b"ab", b"c"))
        self.assertEqual(client.transport.value()[:2], b"\x82\x83")

    def test_nothing_sent_once_closing(self):
        """send_while_open sends nothing once the closing handshake has begun."""
        server = open_protocol(WebSocketServerFactory, Server)
        server.send_while_open(b"one")
        server.state = server.STATE_CLOSING
        server.send_while_open(b"two")
        server.send_pieces_while_open((b"thr", b"ee"))
        self.assertEqual(server.transport.value(), b"\x82\x03one")

    def test_masked_client_uses_autobahn(self):
        """A client that masks its frames still does: the frame carries a mask."""
        client = open_protocol(WebSocketClientFactory, Client, maskClientFrames=True)
        client.send_binary(b"abc")
        frame = client.transport.value()
        self.assertEqual(frame[:2], b"\x82\x83")
        self.assertEqual(len(frame), 2 + 4 + 3)

    def test_unmasked_client(self):
        """A client with masking off writes the plain frame."""
        client = open_protocol(WebSocketClientFactory, Client, maskClientFrames=False)
        client.send_binary(b"abc")
        self.assertEqual(client.transport.value(), b"\x82\x03abc")

    def test_not_open(self):
        """Before the handshake is done it refuses to send, as sendMessage does."""
        server = open_protocol(WebSocketServerFactory, Server)
        server.state = server.STATE_CONNECTING
        self.assertRaises(Disconnected, server.send_binary, b"abc")
        self.assertEqual(server.transport.value(), b"")

    def test_receive(self):
        """Over a real handshake, masked and unmasked messages both ways arrive whole."""
        client, server, pump = handshaken({"requireMaskedClientFrames": False},
                                          {"maskClientFrames": True})
        client.send_binary(b"masked")
        client.maskClientFrames = False
        client.send_binary(b"y" * 70000)
        server.send_binary(b"z" * 300)
        pump.flush()
        self.assertEqual(server.factory.received, [(b"masked", True), (b"y" * 70000, True)])
        self.assertEqual(client.factory.received, [(b"z" * 300, True)])


def handshaken(server_options: dict, client_options: dict):
    """A server and a client after a real opening handshake, and their iosim pump."""
    clock = MemoryReactorClock()
    factories = []
    for factory_class, protocol_class, options in (
            (WebSocketServerFactory, Server, server_options),
            (WebSocketClientFactory, Client, client_options)):
        factory = factory_class("ws://localhost/", reactor=clock)
        factory._batched_timer = ReactorTimer(clock)
        factory.protocol = protocol_class
        factory.received = []
        factory.setProtocolOptions(openHandshakeTimeout=0, **options)
        factories.append(factory)
    server_factory, client_factory = factories
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None))
    pump.flush()
    assert (server.state, client.state) == (server.STATE_OPEN, client.STATE_OPEN)
    return client, server, pump


def frame(payload: bytes) -> bytes:
    return binary_frame_header(len(payload)) + payload


class FastReceiveTests(unittest.TestCase):
    """Binary frames parsed by the mixin arrive as Autobahn would deliver them."""

    def server(self, **options):
        """A server protocol after a real opening handshake; feed it raw frames."""
        self.client, server, self.pump = handshaken(
            {"requireMaskedClientFrames": False, **options}, {})
        return server

    def test_any_split(self):
        """Frames of every length encoding, cut at every byte or all in one read."""
        payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536,
                    bytes(range(256)) * 300]
        wire = b"".join(frame(p) for p in payloads)
        for size in (1, 7, 16384, len(wire)):
            server = self.server()
            server.processData = lambda: self.fail("Autobahn parsed a plain binary frame")
            for start in range(0, len(wire), size):
                server.dataReceived(wire[start:start + size])
            self.assertEqual(server.factory.received, [(p, True) for p in payloads], size)

    def test_control_frame_between(self):
        """A ping between binary frames goes to Autobahn (which answers it); order is kept."""
        server = self.server()
        pongs = []
        self.client.onPong = pongs.append
        ping = bytes((0x89, 0x80 | 4)) + b"\0\0\0\0" + b"ping"  # masked, as clients send
        server.dataReceived(frame(b"one") + ping + frame(b"two"))
        server.dataReceived(frame(b"three"))
        self.assertEqual([p for p, _ in server.factory.received], [b"one", b"two", b"three"])
        self.pump.flush()
        self.assertEqual(pongs, [b"ping"])

    def test_masked_frame(self):
        """A masked frame (an older client) is unmasked by Autobahn."""
        server = self.server()
        mask = b"\x01\x02\x03\x04"
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(b"secret"))
        server.dataReceived(bytes((0x82, 0x80 | 6)) + mask + body + frame(b"plain"))
        self.assertEqual(server.factory.received, [(b"secret", True), (b"plain", True)])

    def test_oversized_frame_fails(self):
        """A frame over maxFramePayloadSize fails the connection, as Autobahn does."""
        server = self.server(maxFramePayloadSize=1000)
        server.dataReceived(frame(b"x" * 1001))
        self.assertEqual(server.factory.received, [])
        self.assertNotEqual(server.state, server.STATE_OPEN)

    def test_non_minimal_length_fails(self):
        """A 16-bit length that fits in 7 bits is a protocol violation."""
        server = self.server()
        server.dataReceived(b"\x82\x7e\x00\x05hello")
        self.assertEqual(server.factory.received, [])
        self.assertNotEqual(server.state, server.STATE_OPEN)
