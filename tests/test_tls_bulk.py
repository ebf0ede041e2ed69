"""
Tests for L{bpctunnel.transport.tls_bulk}: our TLS protocol against Twisted's own, in
memory (iosim), with real handshakes and real records.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.transport import tls_bulk
from bpctunnel.transport.sockets import SEND_SIZE
from bpctunnel.transport.tls_bulk import BULK_WRITE, BulkTLSFactory, _coalesce_head
from tests.test_tls import client_options, shared_ca, shared_client_cert, shared_server_options


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


def connect(server_factory_class=BulkTLSFactory, client_factory_class=BulkTLSFactory):
    """A server and a client over TLS in memory; returns both app protocols and the pump."""
    server, client, clock = Recorder(), Recorder(), Clock()
    server_tls = server_factory_class(
        shared_server_options(), False, Factory.forProtocol(lambda: server), clock)
    client_tls = client_factory_class(
        client_options(shared_ca(), shared_client_cert()), True,
        Factory.forProtocol(lambda: client), clock)
    _, _, pump = connectedServerAndClient(
        lambda: server_tls.buildProtocol(None), lambda: client_tls.buildProtocol(None),
        clock=clock)
    pump.flush()
    return server, client, pump, clock


class BulkWriteTests(SynchronousTestCase):
    def test_large_and_small_writes_arrive_in_order(self) -> None:
        """Small writes (aggregated) and large ones (direct) keep their order."""
        server, client, pump, clock = connect()
        big = os.urandom(300_000)
        client.transport.write(b"first,")
        client.transport.write(big)
        client.transport.write(b",small")
        client.transport.writeSequence([b"head", big[:70_000]])
        clock.advance(0)
        pump.flush()
        self.assertEqual(server.received, b"first," + big + b",small" + b"head" + big[:70_000])

    def test_interoperates_with_twisted_tls(self) -> None:
        """Either end may be Twisted's own TLS protocol."""
        for server_class, client_class in [(TLSMemoryBIOFactory, BulkTLSFactory),
                                           (BulkTLSFactory, TLSMemoryBIOFactory)]:
            server, client, pump, clock = connect(server_class, client_class)
            payload = os.urandom(200_000)
            client.transport.writeSequence([b"\x82\x7f", payload])
            server.transport.write(payload[::-1])
            clock.advance(0)
            pump.flush()
            self.assertEqual(server.received, b"\x82\x7f" + payload)
            self.assertEqual(client.received, payload[::-1])

    def test_received_records_delivered_together(self) -> None:
        """The records of one read from the socket go up in one dataReceived."""
        server, client, pump, clock = connect(BulkTLSFactory, TLSMemoryBIOFactory)
        payload = os.urandom(16384 * 5)  # five full records from Twisted's TLS
        client.transport.write(payload)
        pump.flush()
        self.assertEqual(server.received, payload)
        self.assertEqual(len(server.chunks), 1)

    def test_write_after_connection_lost_is_dropped(self) -> None:
        """A large write on a lost connection is silently dropped, as Twisted's are."""
        server, client, pump, clock = connect()
        client.transport.loseConnection()
        pump.flush()
        self.assertIsNotNone(client.lost)
        client.transport.write(b"x" * (BULK_WRITE * 4))
        client.transport.writeSequence([b"h", b"x" * (BULK_WRITE * 4)])
        pump.flush()
        self.assertEqual(server.received, b"")

    def test_socket_reads_and_sends_are_bigger(self) -> None:
        """The socket under a bulk TLS connection reads 256 KiB and sends 1 MiB at a time."""
        server, client, pump, clock = connect()
        for protocol in (server, client):
            self.assertEqual(protocol.transport.transport.bufferSize, tls_bulk.SOCKET_READ_SIZE)
            self.assertEqual(protocol.transport.transport.SEND_LIMIT, SEND_SIZE)


class CoalesceTests(SynchronousTestCase):
    def test_header_shares_first_record(self) -> None:
        payload = bytes(range(256)) * 300
        pieces = _coalesce_head([b"\x82\x7f12345678", b"\x01abcd", payload])
        self.assertEqual(len(pieces[0]), 16384)
        self.assertEqual(b"".join(pieces), b"\x82\x7f12345678\x01abcd" + payload)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=40_000), min_size=1, max_size=5))
    def test_same_bytes_in_same_order(self, sizes) -> None:
        pieces = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
        coalesced = _coalesce_head(pieces)
        self.assertEqual(b"".join(coalesced), b"".join(pieces))
