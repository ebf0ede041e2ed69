"""
A faster path through Autobahn for the tunnel's binary messages.

Autobahn's Twisted protocol formats a debug log line (with terminal colours)
for every read and every write even when debug logging is off, and fires a
Deferred-based "message" event for every message received.  In a bulk
transfer those cost a third of the server's CPU (issue 8).  L{FastBinaryMixin}
skips them, and sends unmasked binary messages as one frame written straight
to the transport; anything else (masked or compressed frames, control frames,
the handshakes) still goes through Autobahn.  L{forget_handshake} frees
what Autobahn keeps of the opening handshake once the tunnel is open.
"""

from __future__ import annotations

import struct

_FIN_BINARY = 0x82
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def binary_frame_header(length: int) -> bytes:
    """The header of one unmasked, final, binary WebSocket frame (RFC 6455 5.2)."""
    if length <= 125:
        return bytes((_FIN_BINARY, length))
    if length <= 0xFFFF:
        return _HEADER_16.pack(_FIN_BINARY, 126, length)
    return _HEADER_64.pack(_FIN_BINARY, 127, length)


class FastBinaryMixin:
    """
    Mixed into a C{WebSocketServerProtocol} or C{WebSocketClientProtocol}
    subclass (before it): the same behaviour, less work per message.
    """

    def dataReceived(self, data: bytes) -> None:
        # As Autobahn's, without its per-read debug line.
        self._dataReceived(data)

    def onMessageEnd(self) -> None:
        # As Autobahn's, without firing its "message" event (nothing of ours
        # listens) through a Deferred for every message.
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def send_binary(self, payload: bytes) -> None:
        """Send one binary message, as C{sendMessage(payload, isBinary=True)}."""
        masked = self.maskServerFrames if self.factory.isServer else self.maskClientFrames
        if masked or self._perMessageCompress is not None or self.state != self.STATE_OPEN:
            self.sendMessage(payload, isBinary=True)
            return
        self.transport.write(binary_frame_header(len(payload)) + payload)


def forget_handshake(protocol) -> None:
    """
    Drop what Autobahn keeps of a finished opening handshake: the raw HTTP
    request and response, the parsed headers, and the peer certificate as a
    dict (about 5 KiB per connection, for nothing once the tunnel is open:
    the server keeps the few facts it needs itself).
    """
    protocol.http_request_data = b""
    protocol.http_response_data = b""
    protocol.http_headers = {}
    details = getattr(protocol, "_transport_details", None)
    if details is not None and getattr(details, "_peer_cert", None) is not None:
        details._peer_cert = None
