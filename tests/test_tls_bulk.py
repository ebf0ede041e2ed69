"""
Tests for L{bpctunnel.transport.tls_bulk}: the tunnel's TLS (Twisted's own
protocol on tuned sockets) against Twisted's TLS as it comes, in memory
(iosim), with real handshakes and real records; directly and behind the
PROXY protocol.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.errors import ConfigError
from bpctunnel.transport import tls_bulk
from bpctunnel.transport.fast_paths import ENVIRONMENT_VARIABLE
from bpctunnel.transport.sockets import SEND_SIZE
from bpctunnel.transport.tls_bulk import TunedTLSFactory, wrap_client_tls, wrap_server_tls
from tests.test_tls import client_options, shared_ca, shared_client_cert, shared_server_options

MIB = 1024 * 1024

#: Write sizes around Twisted's small-write aggregation, a TLS record, and 1 MiB.
SIZES = (0, 1, 4095, 4096, 16383, 16384, 16385, 64_000, 65536, MIB)

#: Each end's TLS factory: the tunnel's, and Twisted's as it comes.
PATHS = {"tuned": TunedTLSFactory, "twisted": TLSMemoryBIOFactory}


class Recorder(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost = None

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        self.lost = reason


class Recording:
    """A server and client endpoint that records the factories it is given."""

    def __init__(self):
        self.factories = []

    def listen(self, factory) -> Deferred:
        self.factories.append(factory)
        return Deferred()

    def connect(self, factory) -> Deferred:
        self.factories.append(factory)
        return Deferred()


class ProxyHeaderWrapper(ProtocolWrapper):
    """What a proxy in front of the server sends: a PROXY v1 header, then the client's bytes."""

    def makeConnection(self, transport):
        transport.write(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 8443\r\n")
        super().makeConnection(transport)


def connect(server_factory_class=TunedTLSFactory, client_factory_class=TunedTLSFactory,
            proxy=False):
    """
    A server and a client over TLS in memory (the server behind the PROXY
    protocol if C{proxy}); returns both app protocols, the pump and the clock.
    """
    server, client, clock = Recorder(), Recorder(), Clock()
    server_tls = server_factory_class(
        shared_server_options(), False, Factory.forProtocol(lambda: server), clock)
    client_tls = client_factory_class(
        client_options(shared_ca(), shared_client_cert()), True,
        Factory.forProtocol(lambda: client), clock)
    if proxy:
        # As the server's listener does with --proxy-protocol (haproxy:).
        recording = Recording()
        proxyEndpoint(recording).listen(server_tls)
        [server_tls] = recording.factories
        client_tls = WrappingFactory(client_tls)
        client_tls.protocol = ProxyHeaderWrapper
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    _, _, pump = connectedServerAndClient(
        lambda: server_tls.buildProtocol(address), lambda: client_tls.buildProtocol(address),
        clock=clock)
    pump.flush()
    assert server.transport is not None and client.transport is not None
    return server, client, pump, clock


def payload_of(size: int, seed: int = 0) -> bytes:
    return bytes((i * 13 + seed) % 251 for i in range(256)) * (size // 256) + b"y" * (size % 256)


def send_in_pieces(pump, clock, points) -> None:
    """Move what the client wrote to the server, cut at C{points}; then pump as usual."""
    clock.advance(0)  # the small-write aggregator's flush
    wire = pump.clientIO.getOutBuffer() or b""
    edges = [0, *sorted(p % (len(wire) + 1) for p in points), len(wire)]
    for start, end in zip(edges, edges[1:]):
        if end > start:  # a socket never reads nothing
            pump.serverIO.bufferReceived(wire[start:end])
    pump.flush()


def write_all(transport, operations) -> bytes:
    """Do C{operations} (sizes: a write; lists of sizes: a writeSequence); the bytes sent."""
    sent = []
    for seed, operation in enumerate(operations):
        if isinstance(operation, int):
            data = payload_of(operation, seed)
            transport.write(data)
            sent.append(data)
        else:
            pieces = [payload_of(size, seed + i) for i, size in enumerate(operation)]
            transport.writeSequence(pieces)
            sent.extend(pieces)
    return b"".join(sent)


class DifferentialTests(SynchronousTestCase):
    """
    The same writes through the tunnel's TLS and Twisted's: the same bytes,
    the same end (the harness for any future TLS fast path).
    """

    OPERATIONS = [*SIZES, [10, MIB], [2, 8, 70_000], [1, 1, 1], [], 5, MIB, 0]

    def transfer(self, path: str, client_path: str, points=(), proxy=False,
                 operations=OPERATIONS, close=True):
        server, client, pump, clock = connect(PATHS[path], PATHS[client_path], proxy)
        sent = write_all(client.transport, operations)
        if close:
            client.transport.loseConnection()
        send_in_pieces(pump, clock, points)
        return server, client, sent

    def assertSameEnd(self, server, client, sent, close=True) -> None:
        self.assertEqual(server.received, sent)
        if close:
            self.assertIsNotNone(server.lost)
            server.lost.trap(ConnectionDone)
            client.lost.trap(ConnectionDone)

    def test_every_pairing(self):
        """Either end either way: every byte arrives, in order, and the close is clean."""
        for server_path in PATHS:
            for client_path in PATHS:
                server, client, sent = self.transfer(server_path, client_path)
                self.assertSameEnd(server, client, sent)

    def test_split_at_record_edges(self):
        """The encrypted stream cut inside headers and records."""
        points = [1, 4, 5, 6, 16_000, 16_405, 16_406, 16_407, 40_000, 500_000, 1_000_000]
        for path in PATHS:
            server, client, sent = self.transfer(path, path, points)
            self.assertSameEnd(server, client, sent)

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.one_of(st.sampled_from(SIZES),
                              st.lists(st.sampled_from(SIZES[:-1]), max_size=4)),
                    min_size=1, max_size=5),
           st.lists(st.integers(min_value=0, max_value=4 * MIB), max_size=10),
           st.booleans())
    def test_random(self, operations, points, close):
        """Random writes, cut at random points: both deliver the same bytes."""
        received = {}
        for path in PATHS:
            server, client, sent = self.transfer(path, path, points, operations=operations,
                                                 close=close)
            self.assertSameEnd(server, client, sent, close)
            received[path] = server.received
        self.assertEqual(received["tuned"], received["twisted"])

    def test_both_ways_at_once(self):
        """Each side writes 1 MiB while reading the other's."""
        server, client, pump, clock = connect()
        up, down = payload_of(MIB, 1), payload_of(MIB, 2)
        client.transport.writeSequence([b"\x82\x7f", up])
        server.transport.write(down)
        clock.advance(0)
        pump.flush()
        self.assertEqual(server.received, b"\x82\x7f" + up)
        self.assertEqual(client.received, down)

    def test_write_after_connection_lost_is_dropped(self) -> None:
        """A large write on a lost connection is silently dropped."""
        server, client, pump, clock = connect()
        client.transport.loseConnection()
        pump.flush()
        self.assertIsNotNone(client.lost)
        client.transport.write(b"x" * 20_000)
        client.transport.writeSequence([b"h", b"x" * 20_000])
        pump.flush()
        self.assertEqual(server.received, b"")

    def test_behind_proxy_protocol(self):
        """
        Behind Twisted's PROXY protocol wrapper (the server's --proxy-protocol)
        the same bytes arrive, the proxied peer is reported, and the socket
        under the wrapper is tuned, not the wrapper.
        """
        for path in PATHS:
            server, client, sent = self.transfer(path, path, points=[3, 20, 45, 46, 47, 9000],
                                                 proxy=True)
            self.assertSameEnd(server, client, sent)
        server, client, pump, clock = connect(proxy=True)
        self.assertEqual(server.transport.getPeer(), IPv4Address("TCP", "203.0.113.7", 51000))
        wrapper = server.transport.transport
        self.assertIsInstance(wrapper, ProtocolWrapper)
        self.assertEqual(wrapper.transport.bufferSize, tls_bulk.SOCKET_READ_SIZE)
        self.assertEqual(wrapper.transport.SEND_LIMIT, SEND_SIZE)
        self.assertNotIn("bufferSize", vars(wrapper))


class TunedTests(SynchronousTestCase):
    def test_socket_reads_and_sends_are_bigger(self) -> None:
        """The socket under the tunnel's TLS reads 256 KiB and sends 1 MiB at a time."""
        server, client, pump, clock = connect()
        for protocol in (server, client):
            self.assertEqual(protocol.transport.transport.bufferSize, tls_bulk.SOCKET_READ_SIZE)
            self.assertEqual(protocol.transport.transport.SEND_LIMIT, SEND_SIZE)

    def test_stock_is_twisted(self):
        """Twisted's protocol and factory: only makeConnection (the tuning) is ours."""
        protocol = TunedTLSFactory.protocol
        self.assertTrue(issubclass(protocol, BufferingTLSTransport))
        self.assertEqual([name for name in vars(protocol) if not name.startswith("__")],
                         ["makeConnection"])
        self.assertIs(TunedTLSFactory.buildProtocol, TLSMemoryBIOFactory.buildProtocol)


class WrapTests(SynchronousTestCase):
    """wrap_server_tls and wrap_client_tls."""

    def factory_of(self, wrap, environment=None):
        """The TLS factory C{wrap} gives its endpoint, with C{environment} set."""
        old = os.environ.pop(ENVIRONMENT_VARIABLE, None)
        if environment is not None:
            os.environ[ENVIRONMENT_VARIABLE] = environment
        recording = Recording()
        try:
            endpoint = wrap(shared_server_options(), recording, MemoryReactorClock())
        finally:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
            if old is not None:
                os.environ[ENVIRONMENT_VARIABLE] = old
        if wrap is wrap_server_tls:
            endpoint.listen(Factory())
        else:
            endpoint.connect(Factory())
        [factory] = recording.factories
        return factory

    def test_tuned_factories(self):
        for wrap in (wrap_server_tls, wrap_client_tls):
            for environment in (None, "none", "websocket"):
                factory = self.factory_of(wrap, environment)
                self.assertIs(type(factory), TunedTLSFactory)

    def test_malformed_fast_paths_fail_at_start(self):
        """A malformed BPCTUNNEL_FAST_PATHS stops the server or client as it starts."""
        for wrap in (wrap_server_tls, wrap_client_tls):
            error = self.assertRaises(ConfigError, self.factory_of, wrap, "tls,fastest")
            self.assertIn("no fast path named fastest, tls", str(error))
