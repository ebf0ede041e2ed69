"""
The sockets that carry bulk data: their read and write sizes (issue 8),
how the tunnel's TCP connection rides out an outage (issue 16), and closing
them while a producer is registered.

Every read Twisted makes from a socket passes through all the layers of the
tunnel (TLS, WebSocket, multiplexer, channel) once, and every write goes
through the reactor's write cycle once; that fixed work is most of the
tunnel's CPU per byte.  Twisted reads 64 KiB and sends 128 KiB at a time;
the tunnel's sockets read and send more per call.
"""

from __future__ import annotations

import socket

from twisted.protocols.policies import ProtocolWrapper

#: How much one send() may carry (Twisted's default is 128 KiB).
SEND_SIZE = 1 << 20


def tune_for_bulk(transport, read_size: int) -> None:
    """
    Make a Twisted socket transport read up to C{read_size} bytes at a time
    and send up to L{SEND_SIZE}.  C{read_size} is also how much the
    transport buffers before it pauses its producer.  Transports that are
    not sockets (test doubles) take the attributes and ignore them.

    Under protocol wrappers (the PROXY protocol's, before TLS) it is the
    socket transport beneath them that is tuned: attributes set on a
    wrapper stay on the wrapper.
    """
    transport = socket_under(transport)
    transport.bufferSize = read_size
    transport.SEND_LIMIT = SEND_SIZE


#: The longest TCP waits between two retransmissions on a tunnel's socket.
#: Linux doubles the wait after each unanswered one, up to two minutes: after
#: a 20 s outage the next try came 37 s after the packet it repeated, past the
#: keepalive's deadline although the link had been back for 17 s.  With this
#: cap a link that comes back carries the tunnel again within 3 s (within
#: the server's 5 s --probe-timeout, too).
RETRANSMIT_CAP = 3.0
#: Linux's TCP_RTO_MAX_MS (since 6.15; the socket module does not name it).
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)


def ride_out_outages(transport, dead_after: float) -> bool:
    """
    Tune the TCP connection under C{transport} (through TLS and PROXY
    wrappers) for a tunnel whose keepalive gives up after C{dead_after}
    seconds of silence: retransmissions at most L{RETRANSMIT_CAP} apart, and
    TCP itself giving up on unacknowledged data only after the keepalive
    would have (its own limit, fifteen retransmissions, would otherwise
    shrink with the cap to about a minute).

    An outage that ends C{RETRANSMIT_CAP} plus a round trip before the
    keepalive's deadline then costs nothing.  Returns whether the cap
    applied: kernels before Linux 6.15 (and other systems) keep their
    backoff, and transports that are not sockets are left alone.
    """
    transport = socket_under(transport)
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return False
    sock = get_handle()
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
        return False
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    try:
        if user_timeout is not None:
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout,
                            int((dead_after + 2 * RETRANSMIT_CAP) * 1000))
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, int(RETRANSMIT_CAP * 1000))
    except OSError:
        return False
    return True


def socket_under(transport):
    """C{transport}, or the transport under it if it is a protocol wrapper (in turn)."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


def release_and_close(transport, half: bool = False) -> None:
    """
    Close C{transport} (only its writing side if C{half}) once what it holds
    is written, whatever state its producer is in.

    Once its buffer drains, a Twisted transport resumes a paused producer
    I{instead of} closing: with the channel still registered, and paused
    because the reader was slow, the close would wait for a write that
    never comes.  Nothing more is written after a close, so the producer
    goes first.
    """
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()
    if half:
        transport.loseWriteConnection()
    else:
        transport.loseConnection()
