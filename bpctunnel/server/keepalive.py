"""
Pings to a client: timed round trips, and the keepalive that declares a
silent client dead.

L{RoundTrips} sends a nonce by whatever means it is given (a PING message
through the tunnel for the status API's ping and the takeover probe, a
WebSocket ping frame for the keepalive) and matches the answers.
L{Keepalive} pings every C{interval} seconds and gives up on a client whose
answer does not come within C{timeout} seconds, as Autobahn's auto-ping did:
any message from the client while a ping is out counts as its answer.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Bytes of a ping's nonce.
NONCE_BYTES = 8


class RoundTrips:
    """
    Pings over one link, each answered with the time it took or C{None}.

    @param clock: an C{IReactorTime}.
    @param send: sends one ping carrying the given nonce.
    """

    def __init__(self, clock: IReactorTime, send: Callable[[bytes], None]):
        self.clock = clock
        self._send = send
        self._out: dict[bytes, tuple[Deferred, float, IDelayedCall]] = {}

    @property
    def outstanding(self) -> int:
        """Pings sent and not yet answered or timed out."""
        return len(self._out)

    def ping(self, timeout: float) -> Deferred:
        """
        Send one ping: fires with the round trip in seconds, or C{None} if no
        answer came within C{timeout} seconds.
        """
        nonce = os.urandom(NONCE_BYTES)
        d = Deferred()
        self._out[nonce] = (d, self.clock.seconds(),
                            self.clock.callLater(timeout, self._end, nonce, None))
        self._send(nonce)
        return d

    def answered(self, nonce: bytes) -> None:
        """A pong carrying C{nonce} came (one that matches no ping is ignored)."""
        entry = self._out.get(nonce)
        if entry is not None:
            self._end(nonce, self.clock.seconds() - entry[1])

    def answer_all(self) -> None:
        """The peer showed it is alive: every ping out counts as answered now."""
        for nonce in list(self._out):
            self.answered(nonce)

    def stop(self) -> None:
        """The link is gone: every ping out fires with C{None}."""
        for nonce in list(self._out):
            self._end(nonce, None)

    def _end(self, nonce: bytes, rtt: float | None) -> None:
        entry = self._out.pop(nonce, None)
        if entry is None:
            return
        d, _, call = entry
        if call.active():
            call.cancel()
        d.callback(rtt)


class Keepalive:
    """
    Pings a client every C{interval} seconds; calls C{on_dead} once if a
    ping goes unanswered for C{timeout} seconds.

    The next ping is due C{interval} seconds after the last answer.  Any
    message from the client (L{heard_from_peer}) answers the ping that is
    out, so bulk traffic that delays a pong cannot make a live client look
    dead.

    @param send_ping: sends a WebSocket ping frame with the given payload.
    @param on_round_trip: told each answered ping's round trip, in seconds.
    """

    def __init__(self, clock: IReactorTime, interval: float, timeout: float,
                 send_ping: Callable[[bytes], None], on_dead: Callable[[], None],
                 on_round_trip: Callable[[float], None] | None = None):
        self.clock = clock
        self._on_round_trip = on_round_trip
        self.interval = interval
        self.timeout = timeout
        self._on_dead = on_dead
        self._pings = RoundTrips(clock, send_ping)
        self._next: IDelayedCall | None = None
        self.running = False

    def start(self) -> None:
        """The tunnel is open: the first ping goes out in C{interval} seconds."""
        if not self.running:
            self.running = True
            self._schedule()

    def pong(self, payload: bytes) -> None:
        """A WebSocket pong came."""
        self._pings.answered(payload)

    def heard_from_peer(self) -> None:
        """A message came from the client."""
        if self._pings.outstanding:
            self._pings.answer_all()

    def stop(self) -> None:
        """No more pings (the tunnel is closing)."""
        self.running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        self._pings.stop()

    def _schedule(self) -> None:
        self._next = self.clock.callLater(self.interval, self._ping)

    def _ping(self) -> None:
        self._next = None
        self._pings.ping(self.timeout).addCallback(self._answered)

    def _answered(self, rtt: float | None) -> None:
        if not self.running:
            return
        if rtt is None:
            self.running = False
            self._on_dead()
        else:
            if self._on_round_trip is not None:
                self._on_round_trip(rtt)
            self._schedule()
