"""
What a tunnel's peer does that the protocol does not allow, counted per
tunnel, so that neither the log nor the tunnel's life is the peer's to spend.

Some bad messages do not break a tunnel by themselves: a message type from a
newer version, a message for a channel that does not exist, a CONTROL message
of an unknown type.  Each is worth a log line, but a peer that sends 10,000 a
second must not write 10,000 lines a second.  A L{ViolationCounter} logs the
first few of each kind at once, then at most one line per kind per
L{WINDOW} seconds, saying how many more there were; and once a tunnel has
more than L{BUDGET} of them within a window it raises L{ProtocolError}, so
that the caller closes the tunnel with a reason a person understands.

It is sans-IO but for its clock: an C{IReactorTime} (a C{Clock} in tests).
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from bpctunnel.errors import ProtocolError

#: Seconds over which violations are counted, and between two summary lines.
WINDOW = 10.0
#: Violations of one kind logged one by one before the counter only sums
#: them up (once per L{WINDOW}).
LOG_BURST = 5
#: Violations one tunnel may have within a L{WINDOW}; one more closes it.
BUDGET = 1000


@attrs.define
class _Kind:
    """The log's state for one kind of violation."""

    #: When the current summary period began.
    since: float
    logged: int = 0
    suppressed: int = 0
    timer: IDelayedCall | None = None


class ViolationCounter:
    """
    The protocol violations of one tunnel.

    @param clock: an C{IReactorTime}, or C{None}: then time stands still, so
        after the first L{LOG_BURST} lines of a kind there are no more, and
        there is no budget (it would count the tunnel's whole life: a
        long-lived tunnel would lose to a trickle).
    @param name: the peer, as the log names it (C{client_name}).

    A kind is a plural noun phrase (C{"messages for unknown channels"}): the
    summary line and the budget's error say "... and 9,123 more I{kind} ...".
    """

    log = Logger()
    # One per tunnel: 10,000 idle laptops should cost little.
    __slots__ = ("_clock", "name", "window", "log_burst", "budget", "_kinds", "_window_start",
                 "_counts", "_total", "_stopped")

    def __init__(self, clock, name: str, *, window: float = WINDOW,
                 log_burst: int = LOG_BURST, budget: int = BUDGET):
        self._clock = clock
        self.name = name
        self.window = window
        self.log_burst = log_burst
        self.budget = budget
        self._kinds: dict[str, _Kind] = {}
        #: The budget's window: when it began and the count of each kind in it.
        self._window_start: float | None = None
        self._counts: dict[str, int] = {}
        self._total = 0
        self._stopped = False

    def _seconds(self) -> float:
        return self._clock.seconds() if self._clock is not None else 0.0

    @property
    def total(self) -> int:
        """Violations in the current window."""
        return self._total

    def count(self, kind: str, format: str, **fields) -> None:
        """
        One violation of C{kind}.  Logs it with C{format} (and C{fields}, plus
        C{client_name}) if it is among the first L{LOG_BURST} of its kind,
        else counts it for the next summary line.

        @raise ProtocolError: the tunnel now has more than L{BUDGET}
            violations within L{WINDOW} seconds.
        """
        if self._stopped:
            return
        now = self._seconds()
        if self._window_start is None or now - self._window_start >= self.window:
            self._window_start, self._counts, self._total = now, {}, 0
        self._counts[kind] = self._counts.get(kind, 0) + 1
        self._total += 1
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = _Kind(now)
            if self._clock is not None:
                state.timer = self._clock.callLater(self.window, self._summarize, kind)
        if state.logged < self.log_burst:
            state.logged += 1
            self.log.warn(format, **{"client_name": self.name, "violation": kind, **fields})
        else:
            state.suppressed += 1
        if self._total > self.budget and self._clock is not None:
            raise ProtocolError(self._too_many())

    def _too_many(self) -> str:
        counts = sorted(self._counts.items(), key=lambda item: -item[1])
        return (f"{self._total:,} bad messages within {self.window:g} s, more than the "
                f"{self.budget:,} allowed: "
                + ", ".join(f"{count:,} {kind}" for kind, count in counts))

    def _summarize(self, kind: str) -> None:
        state = self._kinds[kind]
        state.timer = None
        if not state.suppressed:
            # A quiet period: the next one of this kind is logged at once.
            del self._kinds[kind]
            return
        now = self._seconds()
        self._summary_line(kind, state, now)
        # Still busy: the next period sums up again, without single lines.
        state.since, state.suppressed = now, 0
        state.timer = self._clock.callLater(self.window, self._summarize, kind)

    def _summary_line(self, kind: str, state: _Kind, now: float) -> None:
        source = " from {client_name}" if self.name else ""
        self.log.warn("... and {suppressed:,} more {violation}" + source + " in the last "
                      "{seconds:g} s", suppressed=state.suppressed, violation=kind,
                      client_name=self.name, seconds=round(now - state.since, 1))

    def stop(self) -> None:
        """The tunnel is gone: log what is still unsaid, cancel the timers."""
        if self._stopped:
            return
        self._stopped = True
        self.flush()

    def flush(self) -> None:
        """Log what is still unsaid and cancel the timers; counting goes on afresh."""
        now = self._seconds()
        kinds, self._kinds = self._kinds, {}
        for kind, state in kinds.items():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            if state.suppressed:
                self._summary_line(kind, state, now)
