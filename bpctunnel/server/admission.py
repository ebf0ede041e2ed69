"""
The handshake limit: how many connections may be in their TLS and WebSocket
handshakes (not authenticated yet) at once, from one address and in all.

A connection past either limit is dropped as soon as it is accepted, before
TLS: its client retries with backoff.  One address cannot then hold every
place, and a fleet reconnecting after a server restart gets through at the
server's full speed instead of every handshake slowing down until they all
time out.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bpctunnel.refusals import Refusal

#: Seconds between log lines about connections dropped at a limit.
DROP_LOG_INTERVAL = 10.0


class HandshakeSlot:
    """One admitted connection's place in its handshake; L{release} gives it back."""

    def __init__(self, limit: HandshakeLimit, ip: str):
        self._limit = limit
        self.ip = ip
        self.held = True

    def release(self) -> None:
        """The connection authenticated, or went away (only the first call counts)."""
        if self.held:
            self.held = False
            self._limit._released(self.ip)


class HandshakeLimit:
    """
    Counts the connections in their handshakes.

    @param clock: an C{IReactorTime}, for spacing the log lines.
    @param per_address: at most this many from one IP address
        (C{--max-unauthenticated}).
    @param total: at most this many in all (C{--max-handshakes}).
    @param refused: called with the L{Refusal} of each dropped connection
        (the metrics count it).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, per_address: int, total: int,
                 refused: Callable[[Refusal], None]):
        self.clock = clock
        self.per_address = per_address
        self.total = total
        self._refused = refused
        self._by_address: dict[str, int] = {}
        #: Connections admitted and not yet released.
        self.in_handshake = 0
        self._drops = 0
        self._last_drop_log: float | None = None

    def from_address(self, ip: str) -> int:
        """How many of C{ip}'s connections are in their handshakes."""
        return self._by_address.get(ip, 0)

    def admit(self, ip: str, peer: str) -> HandshakeSlot | None:
        """
        A slot for a new connection from C{ip} (C{peer} is its address and
        port, for the log), or C{None} if it is over a limit: then it is
        counted as refused and logged (at most every L{DROP_LOG_INTERVAL}
        seconds).
        """
        if self.from_address(ip) >= self.per_address:
            self._dropped(peer, f"more than {self.per_address} connections from {ip} have not "
                                f"authenticated yet", Refusal.TOO_MANY_FROM_ONE_ADDRESS)
            return None
        if self.in_handshake >= self.total:
            self._dropped(peer, f"{self.total} connections are in their handshakes already "
                                f"(--max-handshakes); the client retries later", Refusal.BUSY)
            return None
        self._by_address[ip] = self.from_address(ip) + 1
        self.in_handshake += 1
        return HandshakeSlot(self, ip)

    def _released(self, ip: str) -> None:
        self.in_handshake -= 1
        count = self.from_address(ip) - 1
        if count <= 0:
            self._by_address.pop(ip, None)
        else:
            self._by_address[ip] = count

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
