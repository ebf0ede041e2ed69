"""
Twisted's memory-BIO TLS, with less work per byte for bulk data (issue 8).

L{twisted.protocols.tls.BufferingTLSTransport} hands OpenSSL each write in
16 KiB slices, each a fresh copy, reads the encrypted bytes back after every
slice, joins every C{writeSequence} into one string first, and reads its
socket 64 KiB at a time.  For a tunnel that moves 256 KiB messages that is
three extra copies of every byte and a round trip through pyOpenSSL per
record.  L{BulkTLSProtocol} keeps small writes aggregated as Twisted does,
but gives OpenSSL a large write as a memoryview (no copies: OpenSSL cuts the
records), reads all the encrypted bytes back at once, and encrypts a small
header together with the start of the payload that follows it instead of
joining the two.  It reads 256 KiB from its socket at a time and passes up
all the plaintext of one read in one call instead of one call per record.

Everything else -- the handshake, shutdown, producers, errors -- is
Twisted's own.  L{wrap_client_tls} and L{wrap_server_tls} are
C{wrapClientTLS} and C{wrapServerTLS} with this protocol.
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from bpctunnel.transport.sockets import tune_for_bulk

#: A write at least this big skips the small-write aggregator (which joins what it holds).
BULK_WRITE = 4096

#: How much is read from the TCP socket at a time (Twisted reads 64 KiB).
SOCKET_READ_SIZE = 2**18

#: The largest TLS record's plaintext (RFC 8446 5.1).
_RECORD = 2**14

#: How much is read out of OpenSSL per call: a 64 KiB message and its records' overhead.
_READ = 2**17


class BulkTLSProtocol(BufferingTLSTransport):
    """
    L{BufferingTLSTransport} with large writes encrypted without copies and
    received plaintext delivered per socket read, not per TLS record.
    """

    def __init__(self, factory, wrappedProtocol, _connectWrapped=True):
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        # BufferingTLSTransport sends every write() through its aggregator.
        self.write = self._write_some

    def makeConnection(self, transport):
        # Bigger reads from the socket: fewer passes through every layer.
        tune_for_bulk(transport, SOCKET_READ_SIZE)
        super().makeConnection(transport)

    def _write_some(self, data: bytes) -> None:
        if len(data) < BULK_WRITE:
            self._aggregator.write(data)
        else:
            self._write_bulk((data,))

    def writeSequence(self, sequence) -> None:
        pieces = list(sequence)
        if sum(map(len, pieces)) < BULK_WRITE:
            self._aggregator.write(b"".join(pieces))
        else:
            self._write_bulk(_coalesce_head(pieces))

    def _write_bulk(self, pieces) -> None:
        self._aggregator.flush()  # what was written before goes first
        # As TLSMemoryBIOProtocol.write: nothing after loseConnection,
        # unless a producer is still registered.
        if not (self.disconnecting and self._producer is None):
            self._write_pieces(pieces)

    def _write(self, bytes) -> None:
        # Twisted's own path: the aggregator's flushes and buffered writes.
        self._write_pieces((bytes,))

    def _write_pieces(self, pieces) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        for index, piece in enumerate(pieces):
            view, sent = memoryview(piece), 0
            while sent < len(view):
                try:
                    # pyOpenSSL turns on partial writes: each call
                    # encrypts one record.
                    sent += connection.send(view[sent:])
                except WantReadError:
                    # Only during a renegotiation-like exchange; Twisted
                    # retries buffered writes once the peer has answered.
                    self._bufferedWrite(b"".join([view[sent:], *pieces[index + 1:]]))
                    self._flushSendBIO()
                    return
                except Error:
                    self._tlsShutdownFinished(Failure())
                    return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        # All of it, not Twisted's 32 KiB per call.
        connection, chunks = self._tlsConnection, []
        while True:
            try:
                chunk = connection.bio_read(_READ)
            except WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _READ:
                break
        if chunks:
            self.transport.writeSequence(chunks)

    def _flushReceiveBIO(self) -> None:
        # As Twisted's, but the plaintext of all the records that are in
        # goes up in one dataReceived instead of one per record.
        received = []
        while not self._lostTLSConnection:
            try:
                received.append(self._tlsConnection.recv(_READ))
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(received)
                received = []
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                failure = Failure()
                self._deliver(received)
                received = []
                self._tlsShutdownFinished(failure)
        self._deliver(received)
        self._flushSendBIO()

    def _deliver(self, received: list[bytes]) -> None:
        if received and not self._aborted:
            data = received[0] if len(received) == 1 else b"".join(received)
            self.wrappedProtocol.dataReceived(data)


def _coalesce_head(pieces: list) -> list:
    """
    C{pieces}, with small leading pieces (a frame header) merged with the
    start of the first large one, so that they share its first TLS record
    rather than going in a record of their own; only that first record's
    bytes are copied.
    """
    head, rest = [], pieces
    while rest and len(rest[0]) < _RECORD:
        head.append(rest[0])
        rest = rest[1:]
    if not head or not rest:
        return [b"".join(pieces)]
    room = _RECORD - sum(map(len, head))
    if room <= 0:
        return [b"".join(head), *rest]
    first = memoryview(rest[0])
    return [b"".join([*head, first[:room]]), first[room:], *rest[1:]]


class BulkTLSFactory(TLSMemoryBIOFactory):
    """L{TLSMemoryBIOFactory} whose connections are L{BulkTLSProtocol}s."""

    protocol = BulkTLSProtocol


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    def __init__(self, creator, wrapped, clock):
        self._creator, self._wrapped, self._clock = creator, wrapped, clock

    def connect(self, factory) -> Deferred:
        tls = BulkTLSFactory(self._creator, True, factory, clock=self._clock)
        return self._wrapped.connect(tls).addCallback(lambda protocol: protocol.wrappedProtocol)


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    def __init__(self, creator, wrapped, clock):
        self._creator, self._wrapped, self._clock = creator, wrapped, clock

    def listen(self, factory) -> Deferred:
        return self._wrapped.listen(BulkTLSFactory(self._creator, False, factory, clock=self._clock))


def wrap_client_tls(creator, wrapped: IStreamClientEndpoint, clock) -> IStreamClientEndpoint:
    """As C{wrapClientTLS}, with L{BulkTLSProtocol} connections."""
    return _TLSClientEndpoint(creator, wrapped, clock)


def wrap_server_tls(creator, wrapped: IStreamServerEndpoint, clock) -> IStreamServerEndpoint:
    """As C{wrapServerTLS}, with L{BulkTLSProtocol} connections."""
    return _TLSServerEndpoint(creator, wrapped, clock)
