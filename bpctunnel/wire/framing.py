"""
The bpctunnel wire protocol: one binary WebSocket message per tunnel message.

The WebSocket subprotocol name carries the version (L{SUBPROTOCOL}); a server
that does not speak a version the client offers refuses the upgrade with an
HTTP error saying so, so versions never have to be negotiated in-band.

Every message starts with one type byte.  Channel messages follow it with a
32-bit big-endian channel id.  Channels are opened by either side: the server
allocates even ids, the client odd ones, so both may open channels without
colliding.

    OPEN    type, channel, window u32, metadata (JSON object, may be empty)
    ACCEPT  type, channel, window u32
    DATA    type, channel, payload
    EOF     type, channel                  (this direction ends; half-close)
    CLOSE   type, channel, code u8, reason (UTF-8)
    CREDIT  type, channel, increment u32   (flow control: more may be sent)
    PING    type, opaque payload (<= 64 bytes); answered by PONG with it
    PONG    type, opaque payload
    CONTROL type, JSON object with a "type" key (refusals, backup status...)

A CLOSE with code L{CLOSE_DONE} ends a channel whose streams finished; any
other code means the channel failed and what it carried must be discarded
(the local socket is aborted, not closed), so a failure never looks like a
complete transfer.

This module is pure: bytes in, attrs values out.
"""

from __future__ import annotations

import json
import struct

from attrs import field, frozen
from attrs.validators import ge, instance_of, le, max_len

from bpctunnel.errors import BadFrame

SUBPROTOCOL = "bpctunnel.v1"
#: The opening handshake's header that says what a connection is for:
#: absent for a laptop's tunnel, C{backup-now} for C{bpctunnel backup-now}.
ROLE_HEADER = "X-Bpctunnel-Role"

OPEN = 0x01
ACCEPT = 0x02
DATA = 0x03
EOF = 0x04
CLOSE = 0x05
CREDIT = 0x06
PING = 0x07
PONG = 0x08
CONTROL = 0x09

CLOSE_DONE = 0
CLOSE_ERROR = 1

#: WebSocket close codes of the tunnel itself (Autobahn allows 1000 and 3000-4999).
WS_CLOSE_NORMAL = 1000
WS_CLOSE_PROTOCOL_ERROR = 4002
#: The server dropped the tunnel because the client is no longer authorized;
#: the close reason is the refusal, in the same words as a refused handshake.
WS_CLOSE_REVOKED = 4003

MAX_CHANNEL_ID = 2**32 - 1
MAX_PING_PAYLOAD = 64
MAX_REASON_BYTES = 1024

_u32 = [instance_of(int), ge(0), le(MAX_CHANNEL_ID)]
_CHANNEL = struct.Struct(">BI")
_CHANNEL_U32 = struct.Struct(">BII")
_CHANNEL_U8 = struct.Struct(">BIB")


@frozen
class Open:
    """Ask the peer to open a channel; C{window} is how much we accept."""

    channel_id: int = field(validator=_u32)
    window: int = field(validator=_u32)
    metadata: dict = field(factory=dict, validator=instance_of(dict))


@frozen
class Accept:
    """The peer's channel is open on our side; C{window} is our credit."""

    channel_id: int = field(validator=_u32)
    window: int = field(validator=_u32)


@frozen
class Data:
    """Bytes for a channel."""

    channel_id: int = field(validator=_u32)
    payload: bytes = field(validator=instance_of(bytes))


@frozen
class Eof:
    """The sender will send no more data on this channel (half-close)."""

    channel_id: int = field(validator=_u32)


@frozen
class Close:
    """The sender is finished with the channel; see L{CLOSE_DONE}."""

    channel_id: int = field(validator=_u32)
    code: int = field(default=CLOSE_DONE, validator=[instance_of(int), ge(0), le(255)])
    reason: str = field(default="", validator=instance_of(str))


@frozen
class Credit:
    """The sender may receive C{increment} more bytes on this channel."""

    channel_id: int = field(validator=_u32)
    increment: int = field(validator=_u32)


@frozen
class Ping:
    """A latency probe; the peer answers with a L{Pong} of the same payload."""

    payload: bytes = field(default=b"", validator=[instance_of(bytes), max_len(MAX_PING_PAYLOAD)])


@frozen
class Pong:
    """The answer to a L{Ping}."""

    payload: bytes = field(default=b"", validator=[instance_of(bytes), max_len(MAX_PING_PAYLOAD)])


@frozen
class Control:
    """A control message: a JSON object whose C{"type"} says what it is."""

    body: dict = field(validator=instance_of(dict))

    @property
    def type(self) -> str:
        return self.body.get("type", "")


Message = Open | Accept | Data | Eof | Close | Credit | Ping | Pong | Control


def _json_bytes(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def data_header(channel_id: int) -> bytes:
    """The bytes that come before the payload in a DATA message (see L{encode})."""
    return _CHANNEL.pack(DATA, channel_id)


def encode(message: Message) -> bytes:
    """Encode one message as the payload of one binary WebSocket message."""
    match message:
        case Data(channel_id, payload):
            return _CHANNEL.pack(DATA, channel_id) + payload
        case Credit(channel_id, increment):
            return _CHANNEL_U32.pack(CREDIT, channel_id, increment)
        case Open(channel_id, window, metadata):
            body = _json_bytes(metadata) if metadata else b""
            return _CHANNEL_U32.pack(OPEN, channel_id, window) + body
        case Accept(channel_id, window):
            return _CHANNEL_U32.pack(ACCEPT, channel_id, window)
        case Eof(channel_id):
            return _CHANNEL.pack(EOF, channel_id)
        case Close(channel_id, code, reason):
            text = reason.encode("utf-8")[:MAX_REASON_BYTES]
            return _CHANNEL_U8.pack(CLOSE, channel_id, code) + text
        case Ping(payload):
            return bytes([PING]) + payload
        case Pong(payload):
            return bytes([PONG]) + payload
        case Control(body):
            if not isinstance(body.get("type"), str):
                raise ValueError("a control message needs a string 'type'")
            return bytes([CONTROL]) + _json_bytes(body)
    raise TypeError(f"not a tunnel message: {message!r}")


def _json_object(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # RecursionError: JSON nested deeper than the decoder can follow.
        raise BadFrame(f"{what} carries invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadFrame(f"{what} carries JSON that is not an object")
    return value


def _need(data: bytes, size: int, name: str) -> None:
    if len(data) < size:
        raise BadFrame(f"{name} message too short: {len(data)} bytes, need at least {size}")


def _exactly(data: bytes, size: int, name: str) -> None:
    if len(data) != size:
        raise BadFrame(f"{name} message must be {size} bytes, got {len(data)}")


def decode(data: bytes) -> Message:
    """
    Decode the payload of one binary WebSocket message (C{bytes}, or a
    C{memoryview} of them: a DATA payload is copied out of it once).

    @raise UnknownMessageType: for a type byte this version does not know
        (a newer peer's message, which the caller may ignore).
    @raise BadFrame: for anything malformed.
    """
    if not data:
        raise BadFrame("empty message")
    kind = data[0]
    if kind == DATA:
        _need(data, 5, "DATA")
        return Data(_CHANNEL.unpack_from(data)[1], bytes(data[5:]))
    data = bytes(data)
    if kind == CREDIT:
        _exactly(data, 9, "CREDIT")
        _, cid, inc = _CHANNEL_U32.unpack(data)
        return Credit(cid, inc)
    if kind == OPEN:
        _need(data, 9, "OPEN")
        _, cid, window = _CHANNEL_U32.unpack_from(data)
        meta = _json_object(data[9:], "OPEN") if len(data) > 9 else {}
        return Open(cid, window, meta)
    if kind == ACCEPT:
        _exactly(data, 9, "ACCEPT")
        _, cid, window = _CHANNEL_U32.unpack(data)
        return Accept(cid, window)
    if kind == EOF:
        _exactly(data, 5, "EOF")
        return Eof(_CHANNEL.unpack(data)[1])
    if kind == CLOSE:
        _need(data, 6, "CLOSE")
        _, cid, code = _CHANNEL_U8.unpack_from(data)
        try:
            reason = data[6:].decode("utf-8")
        except UnicodeDecodeError:
            raise BadFrame("CLOSE reason is not UTF-8") from None
        return Close(cid, code, reason)
    if kind in (PING, PONG):
        payload = bytes(data[1:])
        if len(payload) > MAX_PING_PAYLOAD:
            raise BadFrame(f"PING/PONG payload of {len(payload)} bytes exceeds {MAX_PING_PAYLOAD}")
        return Ping(payload) if kind == PING else Pong(payload)
    if kind == CONTROL:
        body = _json_object(data[1:], "CONTROL")
        if not isinstance(body.get("type"), str):
            raise BadFrame("CONTROL message has no string 'type'")
        return Control(body)
    raise UnknownMessageType(kind)


class UnknownMessageType(BadFrame):
    """A message type this version of the protocol does not know."""

    def __init__(self, kind: int):
        super().__init__(f"unknown message type 0x{kind:02x}")
        self.kind = kind
