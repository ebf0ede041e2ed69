"""
A faster path through Autobahn for the tunnel's binary messages: the
C{websocket} fast path of L{bpctunnel.transport.fast_paths}.

Autobahn's Twisted protocol formats a debug log line (with terminal colours)
for every read and every write even when debug logging is off, and fires a
Deferred-based "message" event for every message received.  In a bulk
transfer those cost a third of the server's CPU (issue 8).  L{FastBinaryMixin}
skips them, sends unmasked binary messages as one frame written straight to
the transport, and parses such frames itself when they arrive; anything else
(masked or compressed frames, control frames, the handshakes, closing, a
frame over a size limit, the frame that answers a keepalive ping) still
goes through Autobahn.  With the fast path off, every byte does.

It uses only Autobahn's public names: the protocol options, the parser's
state (C{state}, C{data}, C{current_frame}, C{inside_message},
C{consumeData}), C{autoPingTimeoutCall}, C{websocket_extensions_in_use} and
C{sendMessage}; tests/test_private_names.py checks that the pinned Autobahn
still has each.  L{forget_handshake} frees what Autobahn keeps of the
opening handshake once the tunnel is open.
"""

from __future__ import annotations

import copy
import struct

from bpctunnel.transport.fast_paths import fast_paths_from_environment

_FIN_BINARY = 0x82
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")

#: The attributes of an Autobahn C{WebSocketProtocol} that L{FastBinaryMixin}
#: reads or sets (C{websocket_extensions_in_use} once the handshake is done).
AUTOBAHN_NAMES: tuple[str, ...] = (
    "state", "STATE_OPEN", "data", "current_frame", "inside_message", "consumeData",
    "maxFramePayloadSize", "maxMessagePayloadSize", "requireMaskedClientFrames",
    "maskServerFrames", "maskClientFrames", "autoFragmentSize", "autoPingTimeoutCall",
    "autoPingRestartOnAnyTraffic", "logFrames", "logOctets", "trackedTimings",
    "websocket_extensions_in_use", "sendMessage", "onMessage")


def binary_frame_header(length: int) -> bytes:
    """The header of one unmasked, final, binary WebSocket frame (RFC 6455 5.2)."""
    if length <= 125:
        return bytes((_FIN_BINARY, length))
    if length <= 0xFFFF:
        return _HEADER_16.pack(_FIN_BINARY, 126, length)
    return _HEADER_64.pack(_FIN_BINARY, 127, length)


def _limit(value: int) -> int:
    # Autobahn's size options: 0 is no limit.
    return value if value > 0 else 1 << 63


class FastBinaryMixin:
    """
    Mixed into a C{WebSocketServerProtocol} or C{WebSocketClientProtocol}
    subclass (before it): the same behaviour, less work per message.

    Whether the fast path is on is read from the environment (see
    L{bpctunnel.transport.fast_paths}) when the connection is made.
    """

    #: Whether this connection takes the fast path.
    fast_binary = False
    #: Received bytes of an incomplete binary frame, and how many the frame needs.
    _rx_chunks: list | None = None
    _rx_length = 0
    _rx_needed = 0

    def connectionMade(self) -> None:
        self.fast_binary = fast_paths_from_environment().websocket
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        # Final, unmasked binary frames -- all the tunnel sends -- are parsed
        # here, without Autobahn's per-read debug line; anything else is
        # Autobahn's to handle, from the first byte of such a frame on,
        # until it is done with it.
        if not self.fast_binary:
            super().dataReceived(data)
            return
        if self._rx_chunks is not None:
            self._rx_chunks.append(data)
            self._rx_length += len(data)
            if self._rx_length < self._rx_needed and self.state == self.STATE_OPEN:
                return
            # Complete, or the closing handshake began (we sent a close)
            # while the frame was half in: either way the frame's first
            # bytes go first, to whichever parser takes it from here.
            data = b"".join(self._rx_chunks)
            self._rx_chunks, self._rx_length = None, 0
        if (self.state != self.STATE_OPEN or self.current_frame is not None
                or self.inside_message or self.data
                or self.logFrames or self.logOctets or self.trackedTimings
                or (self.factory.isServer and self.requireMaskedClientFrames)):
            super().dataReceived(data)
            return
        rest = self._binary_frames(data)
        if rest is not None:
            self.data = rest
            self.consumeData()

    def _binary_frames(self, data: bytes) -> bytes | None:
        """
        Deliver the complete binary frames at the start of C{data}; keep an
        incomplete one for later; return what Autobahn must parse, if any.
        """
        view, pos, end = memoryview(data), 0, len(data)
        limit = min(_limit(self.maxFramePayloadSize), _limit(self.maxMessagePayloadSize))
        while pos < end:
            if end - pos < 2:
                return self._keep(data, pos, 2)
            first, second = data[pos], data[pos + 1]
            if first != _FIN_BINARY or second & 0x80:
                return data[pos:]
            length, header = second, 2
            if length == 126:
                if end - pos < 4:
                    return self._keep(data, pos, 4)
                length, header = _HEADER_16.unpack_from(data, pos)[2], 4
                if length < 126:
                    return data[pos:]
            elif length == 127:
                if end - pos < 10:
                    return self._keep(data, pos, 10)
                length, header = _HEADER_64.unpack_from(data, pos)[2], 10
                if length < 0x10000:
                    return data[pos:]
            if length > limit:
                return data[pos:]  # Autobahn fails the connection (1009)
            if self.autoPingTimeoutCall is not None and self.autoPingRestartOnAnyTraffic:
                # A keepalive ping awaits its pong: Autobahn's parser takes
                # this frame, so that it counts as the peer's sign of life
                # (once per keepalive interval).
                return data[pos:]
            if end - pos < header + length:
                return self._keep(data, pos, header + length)
            # A view: the multiplexer copies a DATA payload out of it once.
            payload = view[pos + header:pos + header + length]
            pos += header + length
            self.onMessage(payload, True)
            if self.state != self.STATE_OPEN:
                return data[pos:] or None
        return None

    def _keep(self, data: bytes, pos: int, needed: int) -> None:
        self._rx_chunks = [data[pos:]]
        self._rx_length = len(data) - pos
        self._rx_needed = needed
        return None

    def send_binary(self, payload: bytes) -> None:
        """Send one binary message, as C{sendMessage(payload, isBinary=True)}."""
        self.send_binary_pieces((payload,))

    def send_binary_pieces(self, pieces) -> None:
        """
        Send one binary message made of C{pieces} (byte strings): unmasked,
        they go to the transport as they are, after the frame header,
        without being joined.
        """
        length = sum(map(len, pieces))
        if (not self.fast_binary or self.state != self.STATE_OPEN
                or (self.maskServerFrames if self.factory.isServer else self.maskClientFrames)
                or self.websocket_extensions_in_use or self.trackedTimings or self.logFrames
                or length > _limit(self.maxMessagePayloadSize)
                or length > _limit(self.autoFragmentSize)):
            self.sendMessage(b"".join(pieces), isBinary=True)
            return
        self.transport.writeSequence((binary_frame_header(length), *pieces))

    def send_while_open(self, payload: bytes) -> None:
        """
        L{send_binary}, unless the closing handshake has begun: then nothing
        more may be sent (a multiplexer learns of the loss when the
        connection ends).
        """
        if self.state == self.STATE_OPEN:
            self.send_binary_pieces((payload,))

    def send_pieces_while_open(self, pieces) -> None:
        """L{send_binary_pieces}, unless the closing handshake has begun."""
        if self.state == self.STATE_OPEN:
            self.send_binary_pieces(pieces)


#: What L{forget_handshake} clears, and the empty value it leaves: dotted
#: attribute paths from an open Autobahn C{WebSocketProtocol}, none of them
#: private (C{transport_details} is Autobahn's
#: C{ITransport.transport_details}, C{peer_cert} a settable property of its
#: C{TransportDetails}).  The tests check that Autobahn fills each of them
#: in a real opening handshake, so that a rename fails them loudly rather
#: than leaving the memory kept.
FORGOTTEN_HANDSHAKE_FIELDS: tuple[tuple[str, object], ...] = (
    ("http_request_data", b""),
    ("http_response_data", b""),
    ("http_headers", {}),
    ("transport_details.peer_cert", None),
)


def forget_handshake(protocol) -> None:
    """
    Drop what Autobahn keeps of a finished opening handshake: the raw HTTP
    request and response, the parsed headers, and the peer certificate as a
    dict (about 5 KiB per connection, for nothing once the tunnel is open:
    the server keeps the few facts it needs itself).

    Each field in L{FORGOTTEN_HANDSHAKE_FIELDS} must exist: a missing one
    raises C{AttributeError} (Autobahn renamed it) instead of being skipped.
    """
    for path, empty in FORGOTTEN_HANDSHAKE_FIELDS:
        *parents, name = path.split(".")
        owner = protocol
        for parent in parents:
            owner = getattr(owner, parent)
        if owner is None:
            continue  # no transport details (a protocol never connected)
        getattr(owner, name)  # AttributeError if Autobahn no longer has it
        setattr(owner, name, copy.copy(empty))  # a dict of its own for each protocol
