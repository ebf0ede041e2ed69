"""
Channel multiplexing over one tunnel, with per-channel flow control.

A L{Multiplexer} turns tunnel messages (see L{bpctunnel.wire.framing}) into calls
on L{Channel} objects and back.  It knows nothing of sockets or processes:
each channel drives an L{ILocalEnd} (a TCP connection from BackupPC on the
server, an rsync process on the client), and the multiplexer sends encoded
messages through a callable.  That keeps all of the protocol logic testable
without a reactor.

Flow control works like SSH channels and HTTP/2 streams.  Each side announces
a receive window when the channel opens; the sender may have at most that many
bytes unacknowledged, and the receiver grants more (CREDIT) only once its
local sink has taken the bytes.  One slow channel therefore never stalls the
shared WebSocket, and memory per channel is bounded by design.  The
multiplexer is also an C{IPushProducer} for the WebSocket's transport: when
the TLS buffers fill it pauses every local source.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Sequence

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from bpctunnel.wire import framing
from bpctunnel.wire.peer_text import peer_text
from bpctunnel.wire.violations import ViolationCounter
from bpctunnel.wire.windows import (
    DEFAULT_MAX_WINDOW, DEFAULT_TUNNEL_BUDGET, WindowBudget, WindowSizer,
)
from bpctunnel.errors import ProtocolError

#: Bytes a receiver lets the sender have in flight on one channel when it
#: opens; the window grows while the sender is held back by it and the
#: reader keeps up (see L{bpctunnel.wire.windows}).
DEFAULT_WINDOW = 1024 * 1024
#: Largest DATA payload we send.  Peers accept WebSocket messages of up to
#: 1 MiB (and never more than the credit they gave), so this may grow without
#: a protocol change; a quarter of the window keeps data flowing while
#: credit comes back.
MAX_DATA = 256 * 1024
#: How much a local end (rsync's socket, BackupPC's connection) reads at a
#: time: one read fills one DATA message.  Per read the tunnel does a fixed
#: amount of Python work, so fewer, bigger reads cost less CPU per byte
#: (issue 8: 64 -> 256 KiB took about 15% off both ends).
LOCAL_READ_SIZE = MAX_DATA
#: Channels one tunnel may carry at once, unless its owner says otherwise:
#: the server passes its C{--max-channels} (default 16, the connections
#: BackupPC may carry through one laptop's tunnel); a laptop keeps this
#: bound on what a server may open.
DEFAULT_MAX_CHANNELS = 64
#: Channel ids this side forgot (closed, or refused) that it remembers, so
#: that what the peer sent before it heard of the CLOSE is dropped quietly.
RECENTLY_CLOSED = 256
#: Of a remembered channel, the messages other than DATA (CREDIT, EOF,
#: ACCEPT) that are dropped quietly; its DATA may add up to the credit the
#: peer still had, at most one window.
LATE_MESSAGES = 16
#: Channel ids answered "unknown channel" that this side remembers, so that a
#: flood on one id gets one answer, not one per message.
ANSWERED_UNKNOWN = 1024

#: Bytes of answers (PONGs, WebSocket pongs) this side may write while the
#: peer is not reading -- the transport has paused the multiplexer -- before
#: the tunnel is closed: a peer that pings and never reads the answers costs
#: at most this much memory (plus what the socket holds).
UNREAD_ANSWERS = 1024 * 1024

#: Kinds of protocol violation (see L{ViolationCounter}).
UNKNOWN_TYPES = "messages of unknown types"
UNKNOWN_CHANNELS = "messages for unknown channels"
LATE_FOR_CLOSED = "messages for closed channels beyond what was in flight"
CHANNEL_ERRORS = "messages that broke a channel's rules"
UNWANTED_OPENS = "channels opened on a side that accepts none"


class ILocalEnd(Interface):
    """
    What a channel drives on this side of the tunnel.

    The local end feeds the channel through L{Channel.local_data},
    L{Channel.local_eof} and L{Channel.local_closed}, and registers the
    channel as the push producer of its write side so that a full sink
    withholds credit.
    """

    def write(data):
        """Deliver bytes that arrived through the tunnel."""

    def write_eof():
        """The peer will send no more: half-close our write side."""

    def close():
        """The channel is finished: flush what was written, then close."""

    def abort(reason):
        """The channel failed: drop everything at once, visibly."""

    def pause_reading():
        """Stop reading from the local source."""

    def resume_reading():
        """Start reading from the local source again."""


@implementer(IPushProducer)
class Channel:
    """
    One carried connection.

    It is the C{IPushProducer} registered on its local end's write side:
    while that sink is paused it grants no credit, so the peer stops sending.
    """

    log = Logger()

    def __init__(self, mux: Multiplexer, channel_id: int, window: int, metadata: dict):
        self.mux = mux
        self.channel_id = channel_id
        self.metadata = metadata
        self.local: ILocalEnd | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.opened_at = self.last_activity = mux.seconds()
        self.accepted = False
        self.close_reason = ""
        # Receiving side.
        self._sizer = WindowSizer(window, mux.max_window, mux.window_budgets, mux.seconds,
                                  mux._window_peak)
        self._peer_may_send = window
        self._unacknowledged = 0
        self._sink_paused = False
        self._eof_received = False
        self._close_received = False
        # Sending side.
        self._credit = 0
        self._pending: deque[bytes] = deque()
        self._source_paused = False
        self._eof_wanted = False
        self._eof_sent = False
        self._close_wanted: tuple[int, str] | None = None
        self._close_sent = False

    def __repr__(self) -> str:
        return f"<Channel {self.channel_id} in={self.bytes_in} out={self.bytes_out}>"

    @property
    def _window(self) -> int:
        return self._sizer.window

    @property
    def window(self) -> int:
        """This side's receive window now."""
        return self._sizer.window

    @property
    def finished(self) -> bool:
        """Both sides have sent CLOSE: the channel id is free again."""
        return self._close_sent and self._close_received

    def attach(self, local: ILocalEnd) -> None:
        """Connect the channel to the local end it drives."""
        self.local = local
        self._update_source()

    # -- called by the local end ------------------------------------------

    def local_data(self, data: bytes) -> None:
        """The local source produced bytes: send them as credit allows."""
        if self._close_sent or self._eof_wanted or not data:
            return
        self.last_activity = self.mux.seconds()
        self._pending.append(data)
        self._flush()

    def local_eof(self) -> None:
        """The local source ended: the peer gets EOF once pending data is sent."""
        self._eof_wanted = True
        self._flush()

    def local_closed(self, error: str | None = None) -> None:
        """
        The local end is gone.  Without C{error}, pending data is still sent
        (as credit allows), then EOF and CLOSE; with one, the channel fails.
        """
        self.local = None
        if error is not None:
            self._pending.clear()
            self._close_wanted = (framing.CLOSE_ERROR, error)
        else:
            self._eof_wanted = True
            if self._close_wanted is None:
                self._close_wanted = (framing.CLOSE_DONE, "")
        self._flush()

    def accept(self) -> None:
        """Tell the opener that our local end is ready (see L{Multiplexer})."""
        if not self.accepted and not self._close_sent:
            self.accepted = True
            self.mux.send(framing.Accept(self.channel_id, self._window))
            self._flush()

    def reset(self, reason: str) -> None:
        """Fail the channel from this side: abort the local end, tell the peer."""
        local, self.local = self.local, None
        if local is not None:
            local.abort(reason)
        self.local_closed(error=reason)

    # -- IPushProducer for the local sink ----------------------------------

    def pauseProducing(self) -> None:
        self._sink_paused = True
        self._sizer.reader_paused()

    def resumeProducing(self) -> None:
        self._sink_paused = False
        self._sizer.reader_resumed()
        self._grant()

    def stopProducing(self) -> None:
        self._sink_paused = True
        self._sizer.reader_paused()

    # -- called by the multiplexer -----------------------------------------

    def _on_accept(self, window: int) -> None:
        self.accepted = True
        self._credit += window
        self._flush()

    def _on_credit(self, increment: int) -> None:
        self._credit += increment
        self._flush()

    def _on_data(self, payload: bytes) -> None:
        if self._close_received or self._eof_received:
            raise ProtocolError(f"DATA after EOF on channel {self.channel_id}")
        if len(payload) > self._peer_may_send:
            raise ProtocolError(
                f"peer sent {len(payload)} bytes on channel {self.channel_id} "
                f"with only {self._peer_may_send} bytes of credit"
            )
        self._peer_may_send -= len(payload)
        self.bytes_in += len(payload)
        self.mux.bytes_in += len(payload)
        self.last_activity = self.mux.seconds()
        if self.local is None:
            return
        self._unacknowledged += len(payload)
        self.local.write(payload)
        if not self._sink_paused:
            # The reader took it at once: does the sender wait on the window?
            growth = self._sizer.received(self.bytes_in)
            if growth:
                self._peer_may_send += growth
                self.mux.send(framing.Credit(self.channel_id, growth))
        self._grant()

    def _on_eof(self) -> None:
        if self._eof_received:
            raise ProtocolError(f"second EOF on channel {self.channel_id}")
        self._eof_received = True
        if self.local is not None:
            self.local.write_eof()

    def _on_close(self, code: int, reason: str) -> None:
        self._close_received = True
        self.close_reason = reason
        local, self.local = self.local, None
        if local is not None:
            if code == framing.CLOSE_DONE:
                local.close()
            else:
                local.abort(reason or "the peer reset the channel")
        # Our local end can no longer deliver anything to a closed peer.
        self._pending.clear()
        if not self._close_sent:
            if code == framing.CLOSE_DONE:
                self._close_wanted = (framing.CLOSE_DONE, "")
            else:
                self._close_wanted = (framing.CLOSE_ERROR, reason)
            self._eof_wanted = self._eof_wanted or code == framing.CLOSE_DONE
            self._flush()

    def _tunnel_lost(self, reason: str) -> None:
        self._sizer.release()
        self._close_received = self._close_sent = True
        self._pending.clear()
        local, self.local = self.local, None
        if local is not None:
            local.abort(reason)

    # -- internals ---------------------------------------------------------

    def _grant(self) -> None:
        # Credit in batches of a quarter window: the peer still has at least
        # three quarters in hand, so it never waits on a small grant.
        if self._sink_paused or self._close_sent or self._close_received:
            return
        if self._unacknowledged and (
            self._unacknowledged >= self._window // 4 or self._peer_may_send == 0
        ):
            increment, self._unacknowledged = self._unacknowledged, 0
            limit_before = self.bytes_in + self._peer_may_send
            # A window bigger than a slow reader deserves shrinks here.
            increment -= self._sizer.withhold(increment)
            if increment:
                self._peer_may_send += increment
                self.mux.send(framing.Credit(self.channel_id, increment))
                self._sizer.granted(self.bytes_in, limit_before)

    def _flush(self) -> None:
        if self._close_sent:
            return
        send = self.mux.send
        while self._pending and self._credit > 0 and self.accepted:
            chunk = self._pending.popleft()
            size = min(len(chunk), self._credit, MAX_DATA)
            if size < len(chunk):
                self._pending.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._credit -= size
            self.bytes_out += size
            self.mux.bytes_out += size
            self.mux.send_data(self.channel_id, chunk)
        if not self._pending and self._close_wanted is not None and (
            self._close_wanted[0] == framing.CLOSE_ERROR or not self.accepted
        ):
            # A failure (or a channel that never got going) needs no EOF.
            self._send_close()
            return
        if not self._pending and self._eof_wanted and not self._eof_sent:
            if self.accepted or self._close_received:
                self._eof_sent = True
                send(framing.Eof(self.channel_id))
        if not self._pending and self._eof_sent and self._close_wanted is not None:
            self._send_close()
            return
        self._update_source()

    def _send_close(self) -> None:
        code, reason = self._close_wanted
        self._close_sent = True
        self._pending.clear()
        if not self.close_reason:
            self.close_reason = reason
        self.mux.send(framing.Close(self.channel_id, code, reason))
        if code != framing.CLOSE_DONE and self.local is not None:
            local, self.local = self.local, None
            local.abort(reason)
        self.mux._channel_maybe_finished(self)

    def _update_source(self) -> None:
        if self.local is None:
            return
        should_pause = (
            self.mux.paused or bool(self._pending) or self._credit <= 0 or not self.accepted
        )
        if should_pause and not self._source_paused:
            self._source_paused = True
            self.local.pause_reading()
        elif not should_pause and self._source_paused:
            self._source_paused = False
            self.local.resume_reading()


@implementer(IPushProducer)
class Multiplexer:
    """
    The channel table of one tunnel.

    @param send_bytes: sends one encoded message as a binary WebSocket message.
    @param is_server: the server opens even channel ids, the client odd ones.
    @param accept_channel: called with each L{Channel} the peer opens; it
        attaches a local end and calls L{Channel.accept}, or L{Channel.reset}.
        C{None} refuses every channel the peer opens.
    @param on_control: called with the body of each CONTROL message.
    @param on_pong: called with the payload of each PONG.
    @param clock: an C{IReactorTime} for the channels' activity times and
        the L{ViolationCounter} (see L{violation}); without one, violations
        are logged within bounds but never close the tunnel.

    What the peer does wrong without breaking the tunnel (an unknown message
    type, a message for a channel that does not exist) is logged within
    bounds, and too much of it raises L{ProtocolError}: see
    L{bpctunnel.wire.violations}.
    """

    log = Logger()

    def __init__(
        self,
        send_bytes: Callable[[bytes], None],
        *,
        is_server: bool,
        send_pieces: Callable[[Sequence[bytes]], None] | None = None,
        accept_channel: Callable[[Channel], None] | None = None,
        on_control: Callable[[dict], None] | None = None,
        on_pong: Callable[[bytes], None] | None = None,
        window: int = DEFAULT_WINDOW,
        max_window: int = DEFAULT_MAX_WINDOW,
        window_budget: WindowBudget | None = None,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        name: str = "",
        clock=None,
    ):
        self.seconds = clock.seconds if clock is not None else (lambda: 0.0)
        #: The peer's protocol violations (see L{violation}).
        self.violations = ViolationCounter(clock, name)
        #: Channel id -> L{_Late}, oldest first, at most L{RECENTLY_CLOSED}.
        self._recently_closed: dict[int, _Late] = {}
        #: Channel ids answered "unknown channel", oldest first.
        self._answered_unknown: dict[int, None] = {}
        #: Why the peer's messages broke the tunnel (a L{ProtocolError} went
        #: to the caller, who closes it); later messages are dropped.
        self.failed: str | None = None
        self._send_bytes = send_bytes
        self._send_pieces = send_pieces
        self._accept_channel = accept_channel
        self._on_control = on_control
        self._on_pong = on_pong
        self.window = window
        #: Each channel's window may grow to C{max_window}, drawing on the
        #: tunnel's own budget and, if given, C{window_budget} (a server's,
        #: shared by all its tunnels).
        self.max_window = max_window
        self.window_budgets = (WindowBudget(DEFAULT_TUNNEL_BUDGET),) + (
            (window_budget,) if window_budget is not None else ())
        #: The largest receive window any channel of this tunnel reached.
        self.window_peak = window
        self.max_channels = max_channels
        self.name = name
        self.channels: dict[int, Channel] = {}
        self._next_id = 2 if is_server else 1
        self._own_parity = self._next_id % 2
        self.paused = False
        #: Bytes of answers written since the transport paused us.
        self._unread_answers = 0
        self.lost = False
        self.channels_opened = 0
        #: Payload bytes carried, over all channels.
        self.bytes_in = 0
        self.bytes_out = 0

    def send(self, message: framing.Message) -> None:
        """Encode and send one message, unless the tunnel is gone."""
        if not self.lost:
            self._send_bytes(framing.encode(message))

    def send_data(self, channel_id: int, payload: bytes) -> None:
        """
        Send one DATA message; with C{send_pieces}, its header and payload go
        down as they are, without being joined first.
        """
        if self.lost:
            return
        if self._send_pieces is None:
            self._send_bytes(framing.data_header(channel_id) + payload)
        else:
            self._send_pieces((framing.data_header(channel_id), payload))

    def open_channel(self, metadata: dict | None = None) -> Channel:
        """Open a channel to the peer; it carries data once the peer accepts."""
        if self.lost:
            raise ProtocolError("the tunnel is closed")
        channel_id = self._next_id
        self._next_id += 2
        channel = Channel(self, channel_id, self.window, metadata or {})
        self.channels[channel_id] = channel
        self.channels_opened += 1
        self.send(framing.Open(channel_id, self.window, metadata or {}))
        return channel

    def message_received(self, payload: bytes) -> None:
        """
        Handle one binary WebSocket message.

        Problems confined to one channel reset that channel and are logged
        (within bounds, see L{violation}); a message that cannot be decoded
        at all, or one violation too many, raises L{ProtocolError}, and the
        caller closes the tunnel.  Messages after that, or after
        L{tunnel_lost}, are dropped.
        """
        if self.failed is not None or self.lost:
            return
        try:
            self._message_received(payload)
        except ProtocolError as e:
            self.failed = str(e)
            raise

    def violation(self, kind: str, detail: str) -> None:
        """
        The peer did something the protocol does not allow that costs it no
        more than a log line by itself (a CONTROL message of an unknown type,
        say): log C{detail} within bounds, and count it against the
        tunnel's budget.

        @param kind: what it is, as a plural noun phrase ("unknown control
            messages"): the log sums them up by kind.
        @param detail: this one, in words (made one bounded line here).
        @raise ProtocolError: the peer has now done too much of it; the
            caller closes the tunnel (inside L{message_received}'s callbacks,
            let it propagate: L{message_received}'s caller does).
        """
        self.violations.count(kind, "{detail} from {client_name}", detail=peer_text(detail, 200))

    def _message_received(self, payload: bytes) -> None:
        try:
            message = framing.decode(payload)
        except framing.UnknownMessageType as e:
            # A newer peer may send messages we don't know; they are optional.
            self.violations.count(UNKNOWN_TYPES, "ignoring {error} from {client_name}",
                                  error=str(e))
            return
        if isinstance(message, framing.Ping):
            answer = framing.encode(framing.Pong(message.payload))
            self.answering(len(answer))
            if not self.lost:
                self._send_bytes(answer)
        elif isinstance(message, framing.Pong):
            if self._on_pong is not None:
                self._on_pong(message.payload)
        elif isinstance(message, framing.Control):
            if self._on_control is not None:
                self._on_control(message.body)
        elif isinstance(message, framing.Open):
            self._peer_opened(message)
        else:
            self._channel_message(message)

    def _peer_opened(self, message: framing.Open) -> None:
        cid = message.channel_id
        if cid % 2 == self._own_parity or cid in self.channels:
            raise ProtocolError(f"peer opened channel {cid}, which is not its to open")
        self.channels_opened += 1
        self._recently_closed.pop(cid, None)
        self._answered_unknown.pop(cid, None)
        if self._accept_channel is None:
            refusal = "this side accepts no channels"
            self.violations.count(UNWANTED_OPENS, "refusing channel {channel_id} opened by "
                                  "{client_name}: this side accepts no channels", channel_id=cid)
        elif len(self.channels) >= self.max_channels:
            refusal = f"too many channels: at most {self.max_channels} at once"
        else:
            refusal = None
        if refusal is not None:
            # A refused channel is not kept: a peer that never answers this
            # CLOSE must not fill the table (memory, and the channel limit).
            self.send(framing.Close(cid, framing.CLOSE_ERROR, refusal))
            self._forgotten(cid, 0)
            return
        channel = Channel(self, cid, self.window, message.metadata)
        channel._credit = message.window
        self.channels[cid] = channel
        try:
            self._accept_channel(channel)
        except Exception as e:
            self.log.failure("could not accept channel {channel_id}", channel_id=cid)
            channel.reset(f"could not open the channel: {e}")

    def _channel_message(self, message: framing.Message) -> None:
        channel = self.channels.get(message.channel_id)
        if channel is None:
            self._stray(message)
            return
        try:
            match message:
                case framing.Data(_, payload):
                    channel._on_data(payload)
                case framing.Credit(_, increment):
                    channel._on_credit(increment)
                case framing.Accept(_, window):
                    channel._on_accept(window)
                case framing.Eof():
                    channel._on_eof()
                case framing.Close(_, code, reason):
                    channel._on_close(code, reason)
                    self._channel_maybe_finished(channel)
        except ProtocolError as e:
            # Counted first: the budget may end the tunnel instead.
            self.violations.count(CHANNEL_ERRORS, "resetting channel {channel_id} of "
                                  "{client_name}: {error}", channel_id=channel.channel_id,
                                  error=str(e))
            channel.reset(str(e))

    def _stray(self, message: framing.Message) -> None:
        """A message for a channel not in the table."""
        cid = message.channel_id
        if isinstance(message, framing.Close):
            return  # the answer to our CLOSE, or to our "unknown channel"
        late = self._recently_closed.get(cid)
        if late is not None:
            if late.take(message):
                return  # sent before the peer heard that we closed it
            self.violations.count(LATE_FOR_CLOSED, "message for closed channel {channel_id} "
                                  "from {client_name}: {message_type}", channel_id=cid,
                                  message_type=type(message).__name__)
            return
        self.violations.count(UNKNOWN_CHANNELS, "message for unknown channel {channel_id} "
                              "from {client_name}: {message_type}", channel_id=cid,
                              message_type=type(message).__name__)
        if cid not in self._answered_unknown:
            # One answer per channel id: a flood on one id is not echoed.
            _remember(self._answered_unknown, cid, None, ANSWERED_UNKNOWN)
            self.send(framing.Close(cid, framing.CLOSE_ERROR, "unknown channel"))

    def _window_peak(self, size: int) -> None:
        self.window_peak = max(self.window_peak, size)

    def _channel_maybe_finished(self, channel: Channel) -> None:
        if channel.finished and self.channels.get(channel.channel_id) is channel:
            channel._sizer.release()
            del self.channels[channel.channel_id]
            self._forgotten(channel.channel_id, channel._peer_may_send)

    def _forgotten(self, channel_id: int, in_flight: int) -> None:
        """
        This side forgot C{channel_id}: until it is among the
        L{RECENTLY_CLOSED} last ones forgotten, up to C{in_flight} bytes of
        DATA and L{LATE_MESSAGES} other messages for it are dropped quietly.
        """
        _remember(self._recently_closed, channel_id, _Late(in_flight, LATE_MESSAGES),
                  RECENTLY_CLOSED)

    def tunnel_lost(self, reason: str) -> None:
        """The WebSocket is gone: every channel fails."""
        self.lost = True
        self.violations.stop()
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            channel._tunnel_lost(reason)

    def answering(self, size: int) -> None:
        """
        This side is about to write C{size} bytes that answer the peer (a
        PONG here, a WebSocket pong in the protocol above).  While the
        transport holds what we write (it paused us: the peer is not
        reading), answers add up; past L{UNREAD_ANSWERS} the peer is
        asking faster than it reads.

        @raise ProtocolError: too many answers wait for the peer to read
            them; the caller closes the tunnel.
        """
        if not self.paused:
            return
        self._unread_answers += size
        if self._unread_answers > UNREAD_ANSWERS:
            self.failed = (f"it sends pings faster than it reads the answers: more than "
                           f"{UNREAD_ANSWERS // 1024:,} KiB of answers wait for it to read them")
            raise ProtocolError(self.failed)

    # -- IPushProducer for the WebSocket transport --------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        for channel in list(self.channels.values()):
            channel._update_source()

    def resumeProducing(self) -> None:
        self.paused = False
        self._unread_answers = 0
        for channel in list(self.channels.values()):
            channel._update_source()

    def stopProducing(self) -> None:
        self.pauseProducing()


class _Late:
    """What the peer may still send for a channel this side forgot."""

    __slots__ = ("data_bytes", "messages")

    def __init__(self, data_bytes: int, messages: int):
        self.data_bytes = data_bytes
        self.messages = messages

    def take(self, message: framing.Message) -> bool:
        """Whether C{message} fits what may have been in flight (and take it off)."""
        if isinstance(message, framing.Data):
            # An empty DATA still counts: a flood of them is not in flight.
            size = max(1, len(message.payload))
            if size > self.data_bytes:
                return False
            self.data_bytes -= size
            return True
        if self.messages <= 0:
            return False
        self.messages -= 1
        return True


def _remember(memory: dict, key, value, limit: int) -> None:
    """Put C{key} last in C{memory}, dropping the oldest beyond C{limit}."""
    memory.pop(key, None)
    memory[key] = value
    while len(memory) > limit:
        del memory[next(iter(memory))]
