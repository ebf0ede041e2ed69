"""
The sockets that carry bulk data: their read and write sizes (issue 8), and
closing them while a producer is registered.

Every read Twisted makes from a socket passes through all the layers of the
tunnel (TLS, WebSocket, multiplexer, channel) once, and every write goes
through the reactor's write cycle once; that fixed work is most of the
tunnel's CPU per byte.  Twisted reads 64 KiB and sends 128 KiB at a time;
the tunnel's sockets read and send more per call.
"""

from __future__ import annotations

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
