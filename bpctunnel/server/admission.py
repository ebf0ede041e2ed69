"""
The handshake limit: how many connections may be in their TLS and WebSocket
handshakes (not authenticated yet) at once, from one address and in all.

Past either limit, a new connection does not simply lose to the ones already
waiting: the oldest connection that has not even sent its opening handshake
(an HTTP upgrade request: a laptop sends it one round trip after TLS) is
dropped to make room -- from the same address at the per-address limit, from
the address holding the most places at the total.  Stalled handshakes, which
cost an attacker nothing to hold, so lose against laptops that complete
theirs within a round trip or two; to keep a laptop out, an attacker behind
the same address must open more than C{--max-unauthenticated} connections
in the time the laptop needs for its handshakes, and keep doing so.  Only
when every place is held by a connection whose request is being answered is
the newcomer dropped (as soon as it is accepted, before TLS); its client
retries with backoff.  A fleet reconnecting after a server restart gets
through at the server's full speed instead of every handshake slowing down
until they all time out.
"""

from __future__ import annotations

import math
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bpctunnel.refusals import Refusal
from bpctunnel.wire.violations import ViolationCounter

#: Seconds between log lines about connections dropped at a limit.
DROP_LOG_INTERVAL = 10.0


class HandshakeSlot:
    """
    One admitted connection's place in its handshakes; L{release} gives it
    back.  Until L{requested}, it may be evicted for a newcomer (see the
    module's docstring).
    """

    def __init__(self, limit: HandshakeLimit, ip: str, peer: str, since: float,
                 evict: Callable[[], None] | None):
        self._limit = limit
        self.ip = ip
        self.peer = peer
        self.since = since
        self._evict = evict
        self.held = True

    @property
    def evictable(self) -> bool:
        """Whether the connection may still lose its place to a newcomer."""
        return self.held and self._evict is not None

    def requested(self) -> None:
        """The client's opening handshake arrived: its place is its own now."""
        self._evict = None

    def release(self) -> None:
        """The connection authenticated, or went away (only the first call counts)."""
        if self.held:
            self.held = False
            self._limit._released(self)

    def evict(self) -> None:
        """Give the place to a newcomer: release it and drop the connection."""
        evict, self._evict = self._evict, None
        self.release()
        if evict is not None:
            evict()


class HandshakeLimit:
    """
    Counts the connections in their handshakes.

    @param clock: an C{IReactorTime}, for spacing the log lines.
    @param per_address: at most this many from one IP address
        (C{--max-unauthenticated}).
    @param total: at most this many in all (C{--max-handshakes}).
    @param refused: called with the L{Refusal} of each dropped connection
        (the metrics count it).
    @param log: where failed and evicted handshakes are logged within
        bounds (the server's, shared with its other outsiders), or a new one.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, per_address: int, total: int,
                 refused: Callable[[Refusal], None], log: ViolationCounter | None = None):
        self.clock = clock
        self.per_address = per_address
        self.total = total
        self._refused = refused
        #: Each address's slots, oldest first.
        self._by_address: dict[str, list[HandshakeSlot]] = {}
        #: Connections admitted and not yet released.
        self.in_handshake = 0
        self._drops = 0
        self._last_drop_log: float | None = None
        #: What unauthenticated clients did wrong, logged per kind: the
        #: first few lines at once, then a sum every few seconds (a client
        #: may open connections as fast as it likes).
        self._failures = log if log is not None else ViolationCounter(clock, "",
                                                                      budget=math.inf)

    def failed(self, kind: str, format: str, **fields) -> None:
        """
        Log a connection's failed handshake, within bounds: C{kind} is what
        went wrong as a plural noun phrase ("failed TLS handshakes"),
        C{format} and C{fields} the line for one of them.
        """
        self._failures.count(kind, format, **fields)

    def from_address(self, ip: str) -> int:
        """How many of C{ip}'s connections are in their handshakes."""
        return len(self._by_address.get(ip, ()))

    def admit(self, ip: str, peer: str,
              evict: Callable[[], None] | None = None) -> HandshakeSlot | None:
        """
        A slot for a new connection from C{ip} (C{peer} is its address and
        port, for the log), or C{None} if it is over a limit and no stalled
        connection can make room: then it is counted as refused and logged
        (at most every L{DROP_LOG_INTERVAL} seconds).

        @param evict: called if the connection loses its place to a
            newcomer before it sent its opening handshake (L{HandshakeSlot.requested});
            it drops the connection.  Without it, the slot is never evicted.
        """
        if self.from_address(ip) >= self.per_address:
            why = f"more than {self.per_address} connections from {ip} have not authenticated yet"
            if not self._make_room([ip], peer, why):
                self._dropped(peer, why, Refusal.TOO_MANY_FROM_ONE_ADDRESS)
                return None
        elif self.in_handshake >= self.total:
            why = f"{self.total} connections are in their handshakes already (--max-handshakes)"
            crowded = sorted(self._by_address, key=lambda a: -len(self._by_address[a]))
            if not self._make_room(crowded, peer, why):
                self._dropped(peer, why + "; the client retries later", Refusal.BUSY)
                return None
        slot = HandshakeSlot(self, ip, peer, self.clock.seconds(), evict)
        self._by_address.setdefault(ip, []).append(slot)
        self.in_handshake += 1
        return slot

    def _make_room(self, addresses, newcomer: str, why: str) -> bool:
        """
        Evict the oldest stalled connection of the first of C{addresses}
        that has one; whether one was.
        """
        for address in addresses:
            victim = next((slot for slot in self._by_address.get(address, ())
                           if slot.evictable), None)
            if victim is not None:
                self.failed(
                    "stalled handshakes dropped for newcomers",
                    "dropping the connection from {peer} (no opening handshake after "
                    "{age:.1f} s) to admit {newcomer}: {why}", peer=victim.peer,
                    age=self.clock.seconds() - victim.since, newcomer=newcomer, why=why)
                victim.evict()
                return True
        return False

    def _released(self, slot: HandshakeSlot) -> None:
        self.in_handshake -= 1
        slots = self._by_address.get(slot.ip, [])
        if slot in slots:
            slots.remove(slot)
        if not slots:
            self._by_address.pop(slot.ip, None)

    def _dropped(self, peer: str, why: str, refusal: Refusal) -> None:
        self._refused(refusal)
        self._drops += 1
        now = self.clock.seconds()
        if self._last_drop_log is None or now - self._last_drop_log >= DROP_LOG_INTERVAL:
            more = f" ({self._drops - 1} more dropped since the last such line)" \
                if self._drops > 1 else ""
            self.log.warn("dropping a connection from {peer}: {why}{more}", peer=peer, why=why,
                          more=more)
            self._last_drop_log, self._drops = now, 0
