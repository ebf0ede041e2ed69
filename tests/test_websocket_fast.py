"""
Tests for bpctunnel.transport.websocket_fast: the same bytes and the same
events as Autobahn's stock path, with the fast path on and off (issue 15).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

from autobahn.exception import Disconnected, PayloadExceededError
from autobahn.twisted.websocket import (
    WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
    WebSocketServerProtocol)
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from bpctunnel.transport.autobahn_timers import ReactorTimer
from bpctunnel.errors import ConfigError
from bpctunnel.transport.fast_paths import (
    ENVIRONMENT_VARIABLE, FastPaths, fast_paths_from_environment, parse_fast_paths)
from bpctunnel.transport.websocket_fast import FastBinaryMixin, binary_frame_header

MIB = 1024 * 1024

#: The options the tunnel's server and client set (server/protocol.py, client/protocol.py).
SERVER_OPTIONS = {"maxFramePayloadSize": MIB, "maxMessagePayloadSize": MIB,
                  "requireMaskedClientFrames": False, "webStatus": False}
CLIENT_OPTIONS = {"maxFramePayloadSize": MIB, "maxMessagePayloadSize": MIB,
                  "maskClientFrames": False}

#: Payload sizes around each length encoding's edges, and the largest message allowed.
SIZES = (0, 1, 2, 125, 126, 127, 65535, 65536, 65537, 200_000, MIB)


class Server(FastBinaryMixin, WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.factory.received.append((bytes(payload), isBinary))

    def onClose(self, wasClean, code, reason):
        self.factory.closed.append((wasClean, code, reason))


class Client(FastBinaryMixin, WebSocketClientProtocol):
    def onMessage(self, payload, isBinary):
        self.factory.received.append((bytes(payload), isBinary))

    def onClose(self, wasClean, code, reason):
        self.factory.closed.append((wasClean, code, reason))


def make_factory(factory_class, protocol_class, clock, **options):
    factory = factory_class("ws://localhost/", reactor=clock)
    factory._batched_timer = ReactorTimer(clock)
    factory.protocol = protocol_class
    factory.received = []
    factory.closed = []
    factory.setProtocolOptions(openHandshakeTimeout=0, **options)
    return factory


def open_protocol(factory_class, protocol_class, fast=True, **options):
    """A protocol on a StringTransport, its opening handshake skipped."""
    clock = MemoryReactorClock()
    protocol = make_factory(factory_class, protocol_class, clock, **options).buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.fast_binary = fast
    # What Autobahn sets once the opening handshake succeeds.
    protocol.state = protocol.STATE_OPEN
    protocol.inside_message = False
    protocol.current_frame = None
    protocol.websocket_extensions_in_use = []
    protocol.transport.clear()
    return protocol


def frame(payload: bytes, opcode: int = 2, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One WebSocket frame (RFC 6455 5.2), masked if C{mask} is given."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    bit = 0x80 if mask is not None else 0
    if size <= 125:
        header = bytes((first, bit | size))
    elif size <= 0xFFFF:
        header = bytes((first, bit | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, bit | 127)) + size.to_bytes(8, "big")
    if mask is None:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_frame(code: int = 1000, reason: bytes = b"", mask: bytes | None = None) -> bytes:
    return frame(code.to_bytes(2, "big") + reason, opcode=8, mask=mask)


def payload_of(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(256)) * (size // 256) + b"x" * (size % 256)


# -- both paths over the same bytes ----------------------------------------------------------

HANDSHAKE_REQUEST = (
    b"GET /tunnel HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n")


class Transport(StringTransport):
    """A StringTransport that, as sockets do, lets go of a producer it never had."""

    def unregisterProducer(self):
        self.producer = self.streaming = None


class Side:
    """
    One end of a WebSocket after a real opening handshake on a StringTransport,
    with the fast path on or off; what it delivers, closes with and writes.
    """

    def __init__(self, server: bool, fast: bool, **options):
        self.clock = MemoryReactorClock()
        if server:
            factory = make_factory(WebSocketServerFactory, Server, self.clock,
                                   **{**SERVER_OPTIONS, **options})
        else:
            factory = make_factory(WebSocketClientFactory, Client, self.clock,
                                   **{**CLIENT_OPTIONS, **options})
        self.factory = factory
        self.transport = Transport()
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.protocol.fast_binary = fast
        if server:
            self.protocol.dataReceived(HANDSHAKE_REQUEST)
        else:
            key = re.search(rb"Sec-WebSocket-Key: (\S+)", self.transport.value()).group(1)
            accept = base64.b64encode(hashlib.sha1(
                key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            self.protocol.dataReceived(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        assert self.protocol.state == self.protocol.STATE_OPEN, self.transport.value()
        self.transport.clear()

    def feed(self, pieces) -> None:
        for piece in pieces:
            self.protocol.dataReceived(piece)

    def outcome(self) -> tuple:
        """
        Everything the application and the peer can tell of the two paths,
        once the timers ran and a connection that was being closed is gone
        (Autobahn calls onClose then).
        """
        self.clock.advance(60)
        if self.transport.disconnecting or self.protocol.state == self.protocol.STATE_CLOSING:
            # This side dropped the connection, or waits for the peer to.
            self.protocol.connectionLost(Failure(ConnectionDone()))
        protocol = self.protocol
        return (self.factory.received, self.factory.closed, self.transport.value(),
                (protocol.state, protocol.wasNotCleanReason, protocol.localCloseCode,
                 protocol.localCloseReason, protocol.remoteCloseCode, protocol.remoteCloseReason))


def cut(data: bytes, points) -> list[bytes]:
    """C{data} split at C{points} (offsets, any order, duplicates allowed)."""
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def both(testcase, wire_pieces, server=True, before=None, **options) -> tuple:
    """
    Feed the same pieces to a fast and a stock side; assert the outcomes are
    equal and return it.  C{before(side, index)} runs before piece C{index}.
    """
    outcomes = []
    for fast in (True, False):
        side = Side(server, fast, **options)
        for index, piece in enumerate(wire_pieces):
            if before is not None:
                before(side, index)
            side.feed([piece])
        outcomes.append(side.outcome())
    fast_outcome, stock_outcome = outcomes
    testcase.assertEqual(fast_outcome[1:], stock_outcome[1:])
    testcase.assertEqual(len(fast_outcome[0]), len(stock_outcome[0]))
    for fast_message, stock_message in zip(fast_outcome[0], stock_outcome[0]):
        testcase.assertTrue(fast_message == stock_message, "a message differs")
    return stock_outcome


class DifferentialReceiveTests(unittest.TestCase):
    """The fast path delivers, closes and answers exactly as Autobahn does."""

    def test_sizes_then_close(self):
        """Every length encoding's edges and a 1 MiB message, then a clean close."""
        payloads = [payload_of(size, seed) for seed, size in enumerate(SIZES)]
        wire = b"".join(map(frame, payloads)) + close_frame(1000, b"done")
        for pieces in ([wire], cut(wire, range(0, len(wire), 16384)),
                       cut(wire, [1, 2, 3, 4, 9, 10, 11, 130, 131, 132, 133, 134, 135])):
            received, closed, written, _ = both(self, pieces)
            self.assertEqual(received, [(p, True) for p in payloads])
            self.assertEqual(closed, [(True, 1000, "done")])
            self.assertEqual(written, close_frame(1000))  # Autobahn echoes the code only

    def test_every_byte_split(self):
        """Small frames of each encoding, fed one byte at a time."""
        payloads = [b"", b"a", payload_of(126), payload_of(65536, 3)]
        wire = b"".join(map(frame, payloads[:3])) + frame(payloads[3])
        received, _, _, _ = both(self, [wire[i:i + 1] for i in range(len(wire) - 65000)]
                                    + [wire[len(wire) - 65000:]])
        self.assertEqual(received, [(p, True) for p in payloads])

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.sampled_from(SIZES[:-1]), min_size=1, max_size=6),
           st.lists(st.integers(min_value=0, max_value=2 * MIB), max_size=12),
           st.booleans())
    def test_random_splits(self, sizes, points, close):
        """Messages of random sizes, cut at random points, with or without a close."""
        payloads = [payload_of(size, seed) for seed, size in enumerate(sizes)]
        wire = b"".join(map(frame, payloads)) + (close_frame(1001, b"away") if close else b"")
        received, closed, _, _ = both(self, cut(wire, points))
        self.assertEqual(received, [(p, True) for p in payloads])
        self.assertEqual(closed, [(True, 1001, "away")] if close else [])

    def test_close_sent_while_frame_half_received(self):
        """
        This side starts the closing handshake while a binary frame is half
        in: the rest of the frame and the peer's close reply are parsed as
        such by both paths (the frame's first half is not lost, the rest is
        not read as a frame header), and the close is clean.
        """
        big = payload_of(200_000, 5)
        wire = frame(b"before") + frame(big) + close_frame(1000, b"bye")
        half = len(frame(b"before")) + 100_000
        for pieces in ([wire[:half], wire[half:]],
                       [wire[:half], wire[half:-5], wire[-5:]],
                       [wire[:len(frame(b"before")) + 5], wire[len(frame(b"before")) + 5:]]):
            def close_before_second(side, index):
                if index == 1:
                    side.protocol.sendClose(1000, "bye")
            received, closed, written, _ = both(self, pieces, before=close_before_second)
            self.assertEqual(received, [(b"before", True), (big, True)])
            self.assertEqual(closed, [(True, 1000, "bye")])
            self.assertEqual(written, close_frame(1000, b"bye", mask=None))

    def test_close_frame_right_after_a_split_frame(self):
        """A close frame in the same read as the end of a split binary frame."""
        big = payload_of(70_000)
        wire = frame(big) + close_frame(1000)
        received, closed, _, _ = both(self, [wire[:3], wire[3:40_000], wire[40_000:]])
        self.assertEqual(received, [(big, True)])
        self.assertEqual(closed, [(True, 1000, None)])

    def test_close_from_the_application_on_a_message(self):
        """onMessage that closes the tunnel: the frames after it go to Autobahn, as they would."""
        wire = frame(b"one") + frame(b"two") + close_frame(1000)

        def closer(side, index):
            side.factory.received = ClosingList(side.protocol)

        outcome = both(self, [wire], before=closer)
        self.assertEqual(list(outcome[0]), [(b"one", True), (b"two", True)])

    def test_control_and_other_frames_between(self):
        """Pings, text, masked, fragmented and empty frames among plain binary ones."""
        mask = b"\x01\x02\x03\x04"
        wire = b"".join([
            frame(b"a"), frame(b"ping", opcode=9), frame(b"b"),
            frame("text é".encode(), opcode=1), frame(b"masked", mask=mask),
            frame(b"frag", fin=False), frame(b"ping2", opcode=9), frame(b"ment", opcode=0),
            frame(b""), frame(b"pong", opcode=10), frame(payload_of(70_000)),
        ])
        for pieces in ([wire], cut(wire, range(0, len(wire), 7))):
            received, _, written, _ = both(self, pieces)
            self.assertEqual([p for p, _ in received],
                             [b"a", b"b", "text é".encode(), b"masked", b"fragment", b"",
                              payload_of(70_000)])
            self.assertEqual(written, frame(b"ping", opcode=10) + frame(b"ping2", opcode=10))

    def test_protocol_violations_close_alike(self):
        """Bad frames fail the connection with the same code and reason on both paths."""
        cases = [
            (frame(b"x" * (MIB + 1)), 1009),              # over maxFramePayloadSize
            (b"\x82\x7e\x00\x05hello", 1002),             # 16-bit length for 5 bytes
            (b"\x82\x7f" + (5).to_bytes(8, "big") + b"hello", 1002),
            (bytes((0xC2, 3)) + b"abc", 1002),            # RSV1 without an extension
            (frame(b"cont", opcode=0), 1002),             # continuation outside a message
            (close_frame()[:1] + b"\x01" + b"x", 1002),   # close with 1-byte body
        ]
        for bad, code in cases:
            wire = frame(b"fine") + bad + frame(b"never")
            for pieces in ([wire], cut(wire, [3, 9, 12])):
                # As the tunnel runs: Autobahn drops the connection (failByDrop),
                # the application sees 1006.
                received, closed, written, state = both(self, pieces)
                self.assertEqual(received, [(b"fine", True)], bad[:12])
                self.assertEqual([c[:2] for c in closed], [(False, 1006)], bad[:12])
                self.assertEqual(written, b"")
                self.assertIn("I dropped the WebSocket TCP connection", state[1])
                # With a closing handshake instead, the close frame carries the code.
                received, closed, written, state = both(self, pieces, failByDrop=False)
                self.assertEqual(received, [(b"fine", True)], bad[:12])
                self.assertEqual(written[:4], b"\x88" + bytes((written[1],))
                                 + code.to_bytes(2, "big"), bad[:12])

    def test_smaller_message_limit(self):
        """maxMessagePayloadSize below maxFramePayloadSize is enforced on both paths."""
        wire = frame(b"x" * 100) + frame(b"y" * 101)
        received, closed, written, _ = both(self, [wire], maxMessagePayloadSize=100,
                                            failByDrop=False)
        self.assertEqual(received, [(b"x" * 100, True)])
        self.assertEqual(written[2:4], (1009).to_bytes(2, "big"))

    def test_masked_frames_required(self):
        """A server that requires masked frames refuses plain ones on both paths."""
        wire = frame(b"plain")
        received, closed, written, _ = both(self, [wire], requireMaskedClientFrames=True,
                                            failByDrop=False)
        self.assertEqual(received, [])
        self.assertEqual(written[2:4], (1002).to_bytes(2, "big"))

    def test_client_side(self):
        """The client receives the server's frames as Autobahn would, close included."""
        payloads = [payload_of(size, seed) for seed, size in enumerate(SIZES)]
        wire = b"".join(map(frame, payloads)) + close_frame(4001, b"revoked")
        received, closed, written, _ = both(
            self, cut(wire, [5, 300, 70_000, 70_003, 900_000]), server=False)
        self.assertEqual(received, [(p, True) for p in payloads])
        self.assertEqual(closed[0][1:], (4001, "revoked"))
        self.assertTrue(written.startswith(b"\x88"), written[:10])

    def test_client_refuses_masked_server_frames(self):
        wire = frame(b"ok") + frame(b"masked", mask=b"abcd")
        received, closed, _, state = both(self, [wire], server=False)
        self.assertEqual(received, [(b"ok", True)])
        self.assertIn("masked server-to-client frame", state[1])


class ClosingList(list):
    """Records a message, and closes the protocol on the first one."""

    def __init__(self, protocol):
        super().__init__()
        self.protocol = protocol

    def append(self, item):
        super().append(item)
        if len(self) == 1:
            self.protocol.sendClose(1000)


class KeepaliveTests(unittest.TestCase):
    """A data frame answers a keepalive ping, on both paths."""

    def run_side(self, fast: bool):
        side = Side(True, fast, autoPingInterval=5, autoPingTimeout=5)
        side.clock.advance(5)  # the server pings
        self.assertIsNotNone(side.protocol.autoPingTimeoutCall)
        ping = side.transport.value()
        self.assertEqual(ping[:2], b"\x89\x0c")
        side.feed([frame(b"alive") + frame(b"still")])
        self.assertIsNone(side.protocol.autoPingTimeoutCall)
        side.clock.advance(4)
        self.assertEqual(side.protocol.state, side.protocol.STATE_OPEN)
        side.feed([frame(b"again")])
        return side.factory.received, side.protocol.state, len(side.transport.value())

    def test_data_counts_as_pong(self):
        fast, stock = self.run_side(True), self.run_side(False)
        self.assertEqual(fast, stock)
        self.assertEqual(fast[0], [(b"alive", True), (b"still", True), (b"again", True)])

    def test_no_data_times_out(self):
        """Without the pong or any data both paths drop the connection."""
        for fast in (True, False):
            side = Side(True, fast, autoPingInterval=5, autoPingTimeout=5)
            side.clock.advance(5)
            side.clock.advance(5)
            self.assertTrue(side.transport.disconnecting, fast)


class SwitchTests(unittest.TestCase):
    """BPCTUNNEL_FAST_PATHS, parsed, and read when a connection is made."""

    def with_environment(self, value):
        """BPCTUNNEL_FAST_PATHS set to C{value} (unset if None) for this test."""
        self.addCleanup(self.restore_environment, os.environ.pop(ENVIRONMENT_VARIABLE, None))
        if value is not None:
            os.environ[ENVIRONMENT_VARIABLE] = value

    @staticmethod
    def restore_environment(old):
        os.environ.pop(ENVIRONMENT_VARIABLE, None)
        if old is not None:
            os.environ[ENVIRONMENT_VARIABLE] = old

    def connected(self):
        clock = MemoryReactorClock()
        protocol = make_factory(WebSocketServerFactory, Server, clock).buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return protocol

    def test_default_on(self):
        self.with_environment(None)
        self.assertTrue(self.connected().fast_binary)

    def test_none(self):
        self.with_environment("none")
        self.assertFalse(self.connected().fast_binary)

    def test_named(self):
        self.with_environment("websocket")
        self.assertTrue(self.connected().fast_binary)

    def test_parse(self):
        """Unset: all on; "none": all off; a list: those on; anything else: an error."""
        self.assertEqual(parse_fast_paths(None), FastPaths(websocket=True))
        self.assertEqual(parse_fast_paths("none"), FastPaths(websocket=False))
        self.assertEqual(parse_fast_paths(" WebSocket, "), FastPaths(websocket=True))
        # "tls" named a fast path that was removed: an error, not silently nothing.
        for bad in ("", " , ", "fast", "websocket,none", "tls", "websocket;tls"):
            error = self.assertRaises(ConfigError, parse_fast_paths, bad)
            self.assertIn(ENVIRONMENT_VARIABLE, str(error))
            self.assertIn("'none' or a comma-separated list of websocket", str(error))

    def test_read_from_the_given_environment(self):
        self.assertEqual(fast_paths_from_environment({ENVIRONMENT_VARIABLE: "none"}),
                         FastPaths(websocket=False))
        self.assertEqual(fast_paths_from_environment({}), FastPaths())

    def test_stock_path_is_autobahn(self):
        """Off, nothing of the mixin's parser runs: Autobahn's processData takes every frame."""
        side = Side(True, False)
        calls = []
        original = side.protocol.processData
        side.protocol.processData = lambda: calls.append(1) or original()
        side.feed([frame(b"one") + frame(b"two")])
        self.assertTrue(calls)
        self.assertEqual(side.factory.received, [(b"one", True), (b"two", True)])


# -- sending ------------------------------------------------------------------------------


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
        for size in SIZES:
            payload = payload_of(size)
            for fast in (True, False):
                ours = open_protocol(WebSocketServerFactory, Server, fast)
                stock = open_protocol(WebSocketServerFactory, Server, fast)
                ours.send_binary(payload)
                stock.sendMessage(payload, isBinary=True)
                self.assertEqual(ours.transport.value(), stock.transport.value())

    def test_send_pieces_as_one_message(self):
        """Pieces go out as one message, as sendMessage writes their join."""
        pieces = (b"\x01head", payload_of(300 * 256), b"tail")
        for protocol_class, factory_class, options in (
                (Server, WebSocketServerFactory, {}),
                (Client, WebSocketClientFactory, {"maskClientFrames": False})):
            for fast in (True, False):
                ours = open_protocol(factory_class, protocol_class, fast, **options)
                stock = open_protocol(factory_class, protocol_class, fast, **options)
                ours.send_binary_pieces(pieces)
                stock.sendMessage(b"".join(pieces), isBinary=True)
                self.assertEqual(ours.transport.value(), stock.transport.value())

    def test_fragmenting_as_autobahn(self):
        """With autoFragmentSize set, a long message is fragmented as Autobahn does it."""
        ours = open_protocol(WebSocketServerFactory, Server, autoFragmentSize=1000)
        stock = open_protocol(WebSocketServerFactory, Server, fast=False, autoFragmentSize=1000)
        ours.send_binary_pieces((b"h", payload_of(2500)))
        stock.send_binary_pieces((b"h", payload_of(2500)))
        self.assertEqual(ours.transport.value(), stock.transport.value())
        self.assertEqual(ours.transport.value()[:2], b"\x02\x7e")  # not final

    def test_too_large_refused_as_autobahn(self):
        """A message over maxMessagePayloadSize raises as sendMessage does, on both paths."""
        for fast in (True, False):
            protocol = open_protocol(WebSocketServerFactory, Server, fast,
                                     maxMessagePayloadSize=100)
            self.assertRaises(PayloadExceededError, protocol.send_binary_pieces,
                              (b"x" * 60, b"y" * 41))
            self.assertEqual(protocol.transport.value(), b"")

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
        frame_sent = client.transport.value()
        self.assertEqual(frame_sent[:2], b"\x82\x83")
        self.assertEqual(len(frame_sent), 2 + 4 + 3)

    def test_unmasked_client(self):
        """A client with masking off writes the plain frame."""
        client = open_protocol(WebSocketClientFactory, Client, maskClientFrames=False)
        client.send_binary(b"abc")
        self.assertEqual(client.transport.value(), b"\x82\x03abc")

    def test_not_open(self):
        """Before the handshake is done it refuses to send, as sendMessage does."""
        for fast in (True, False):
            server = open_protocol(WebSocketServerFactory, Server, fast)
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
    server_factory = make_factory(WebSocketServerFactory, Server, clock, **server_options)
    client_factory = make_factory(WebSocketClientFactory, Client, clock, **client_options)
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None))
    pump.flush()
    assert (server.state, client.state) == (server.STATE_OPEN, client.STATE_OPEN)
    return client, server, pump


class FastReceiveTests(unittest.TestCase):
    """Binary frames parsed by the mixin arrive as Autobahn would deliver them."""

    def test_any_split(self):
        """Frames of every length encoding, cut at every byte or all in one read."""
        payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536,
                    bytes(range(256)) * 300]
        wire = b"".join(frame(p) for p in payloads)
        for size in (1, 7, 16384, len(wire)):
            server = Side(True, True).protocol
            server.processData = lambda: self.fail("Autobahn parsed a plain binary frame")
            for start in range(0, len(wire), size):
                server.dataReceived(wire[start:start + size])
            self.assertEqual(server.factory.received, [(p, True) for p in payloads], size)
