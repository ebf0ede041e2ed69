"""
The tunnel's TLS: Twisted's own memory-BIO TLS on sockets tuned for bulk
data (issue 8).

L{wrap_client_tls} and L{wrap_server_tls} are C{wrapClientTLS} and
C{wrapServerTLS} whose connections are L{TunedTLSProtocol}s: Twisted's
C{BufferingTLSTransport}, unchanged but for the socket under it, which reads
256 KiB and sends 1 MiB at a time (L{tune_for_bulk}), behind the PROXY
protocol too.

Issue 15 removed the C{tls} fast path that lived here: a subclass that
overrode private names of Twisted's TLS protocol to encrypt large writes
without copies (and, at first, to deliver a whole socket read's plaintext
at once).  In same-run A/Bs against this stock protocol with the WebSocket
fast path on (bench/fast_paths_ab.py, 1 GiB streams, 6-10 interleaved
rounds) its throughput gain stayed within the rounds' spread in every run,
and so did the CPU per GiB of the two processes together in the backup
direction; only the sending process used 4-14% less CPU.  The last runs:
laptop to server 0.96x MiB/s and 0.98x CPU, server to laptop 1.05x and
0.94x.  That did not pay for tracking Twisted's internals release by release.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from bpctunnel.transport.fast_paths import fast_paths_from_environment
from bpctunnel.transport.sockets import tune_for_bulk

#: How much is read from the TCP socket at a time (Twisted reads 64 KiB).
SOCKET_READ_SIZE = 2**18


class TunedTLSProtocol(BufferingTLSTransport):
    """Twisted's own TLS protocol over a socket tuned for bulk data."""

    def makeConnection(self, transport):
        # Bigger reads from the socket: fewer passes through every layer.
        tune_for_bulk(transport, SOCKET_READ_SIZE)
        super().makeConnection(transport)


class TunedTLSFactory(TLSMemoryBIOFactory):
    """L{TLSMemoryBIOFactory} whose connections are L{TunedTLSProtocol}s."""

    protocol = TunedTLSProtocol


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    def __init__(self, creator, wrapped, clock):
        self._creator, self._wrapped, self._clock = creator, wrapped, clock

    def connect(self, factory) -> Deferred:
        tls = TunedTLSFactory(self._creator, True, factory, clock=self._clock)
        return self._wrapped.connect(tls).addCallback(lambda protocol: protocol.wrappedProtocol)


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    def __init__(self, creator, wrapped, clock):
        self._creator, self._wrapped, self._clock = creator, wrapped, clock

    def listen(self, factory) -> Deferred:
        return self._wrapped.listen(TunedTLSFactory(self._creator, False, factory,
                                                    clock=self._clock))


def wrap_client_tls(creator, wrapped: IStreamClientEndpoint, clock) -> IStreamClientEndpoint:
    """
    As C{wrapClientTLS}, with L{TunedTLSProtocol} connections.  Raises
    L{bpctunnel.errors.ConfigError} if C{BPCTUNNEL_FAST_PATHS} is malformed.
    """
    # Server and client both start here: a malformed value stops them at
    # start-up, not each connection later (websocket_fast reads it per
    # connection).
    fast_paths_from_environment()
    return _TLSClientEndpoint(creator, wrapped, clock)


def wrap_server_tls(creator, wrapped: IStreamServerEndpoint, clock) -> IStreamServerEndpoint:
    """As C{wrapServerTLS}, with L{TunedTLSProtocol} connections; as L{wrap_client_tls}."""
    fast_paths_from_environment()
    return _TLSServerEndpoint(creator, wrapped, clock)
