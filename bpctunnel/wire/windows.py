"""
Receive windows that size themselves (issue 17).

A channel's receive window bounds what its sender may have in flight: one
window per round trip is the most a channel can move.  A fixed 1 MiB moves
10 MiB/s at 100 ms; a window big enough for every line would make every
slow reader cost that much memory.  So each channel's window starts at the
base (what the channel announces when it opens) and grows, as TCP's
receive-buffer autotuning and HTTP/2's bandwidth-delay estimates do, only
while the sender is held back by it:

- the receiver times its grants: data beyond the credit it had before a
  grant can only have been sent once that grant arrived, so its arrival
  measures a round trip (the shortest seen is the link's own, C{min_rtt});
- if, over such a round trip, the sender delivered at least half a window,
  and the round trip was not stretched by queueing (at most 1.5 x
  C{min_rtt}: a sender with credit in hand that is slowed by the line makes
  the grant's round trip long), and the local reader kept up (it held the
  channel paused for less than a quarter of that round trip: a burst that
  fills a socket buffer for a moment is no slow reader), the window
  doubles, up to the channel's cap and within what its budgets (the
  tunnel's, the server's) have left;
- a local reader that holds the channel paused for longer than two round
  trips halves the window's target, down to the base: the next grants give
  back less than was consumed until the window is there.  A slow BackupPC
  or rsync therefore keeps memory at the base window.

The window is the receiver's to announce: growing it is a larger CREDIT,
which every peer accepts, so old peers with fixed windows keep working.
Sans-IO: the time comes from a callable.
"""

from __future__ import annotations

from typing import Callable, Sequence

#: The most one channel's window may grow to, unless its owner says otherwise.
DEFAULT_MAX_WINDOW = 32 * 1024 * 1024
#: Window growth (above the base windows) one tunnel may hand out in all.
DEFAULT_TUNNEL_BUDGET = 64 * 1024 * 1024
#: A round trip at most this many times the shortest counts as unqueued.
QUEUED_RTT_FACTOR = 1.5
#: Delivered within a round trip, as a share of the window, that shows the
#: sender was held back by the window.
WINDOW_LIMITED_SHARE = 0.5
#: A pause shorter than this (seconds) is never "slow", whatever the round trip.
MIN_SLOW_PAUSE = 0.02
#: The share of a timed round trip the reader may hold the channel paused
#: for the round trip still to count as one the reader kept up with.
MAX_PAUSED_SHARE = 0.25


class WindowBudget:
    """
    Bytes of window growth that may be handed out, shared by the channels
    of a tunnel (or by every tunnel of a server).
    """

    __slots__ = ("total", "used")

    def __init__(self, total: int):
        self.total = total
        self.used = 0

    def available(self) -> int:
        return max(0, self.total - self.used)

    def take(self, size: int) -> None:
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


class WindowSizer:
    """
    One channel's receive window.

    @param base: the window the channel announced; it never goes below.
    @param maximum: the most it may grow to.
    @param budgets: what growth draws on (all of them at once).
    @param seconds: the current time.
    @param on_peak: called with the window each time it reaches a new peak.
    """

    def __init__(self, base: int, maximum: int, budgets: Sequence[WindowBudget],
                 seconds: Callable[[], float],
                 on_peak: Callable[[int], None] | None = None):
        self.base = base
        self.maximum = max(base, maximum)
        self.budgets = tuple(budgets)
        self.seconds = seconds
        self.on_peak = on_peak
        self.window = base
        self.target = self.maximum
        self.peak = base
        #: The shortest round trip measured.
        self.min_rtt: float | None = None
        #: The grant being timed: (when, the credit limit before it, bytes received then).
        self._probe: tuple[float, int, int] | None = None
        self._paused_at: float | None = None
        #: Seconds the reader held the channel paused since the probe began.
        self._paused_for = 0.0

    @property
    def growth(self) -> int:
        """Bytes above the base, drawn from the budgets."""
        return self.window - self.base

    def granted(self, received: int, limit_before: int) -> None:
        """
        A grant went out: C{received} bytes had arrived, and the sender
        could send up to C{limit_before} in all without it.
        """
        if self._probe is None:
            self._probe = (self.seconds(), limit_before, received)
            self._paused_for = 0.0

    def received(self, received: int) -> int:
        """
        Data arrived (C{received} in all, the reader took it): how many
        bytes to add to the window now, as extra credit (0: none).
        """
        probe = self._probe
        if probe is None or received <= probe[1]:
            return 0
        self._probe = None
        granted_at, _, received_then = probe
        rtt = self.seconds() - granted_at
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        delivered = received - received_then
        if (delivered < self.window * WINDOW_LIMITED_SHARE
                or rtt > self.min_rtt * QUEUED_RTT_FACTOR + 0.001
                or self._paused_for > rtt * MAX_PAUSED_SHARE):
            return 0
        # Held back by the window, with a reader that keeps up (again).
        self.target = self.maximum
        return self._grow(min(self.window, self.maximum - self.window))

    def _grow(self, wanted: int) -> int:
        size = min([wanted] + [budget.available() for budget in self.budgets])
        if size <= 0:
            return 0
        for budget in self.budgets:
            budget.take(size)
        self.window += size
        if self.window > self.peak:
            self.peak = self.window
            if self.on_peak is not None:
                self.on_peak(self.window)
        return size

    def reader_paused(self) -> None:
        """The local reader stopped taking data."""
        if self._paused_at is None:
            self._paused_at = self.seconds()

    def reader_resumed(self) -> None:
        """The local reader takes data again; if it was slow, aim lower."""
        if self._paused_at is None:
            return
        paused = self.seconds() - self._paused_at
        self._paused_at = None
        self._paused_for += paused
        if paused > max(MIN_SLOW_PAUSE, 2 * (self.min_rtt or 0.0)):
            self.target = max(self.base, min(self.target, self.window) // 2)

    def withhold(self, increment: int) -> int:
        """
        Of a grant of C{increment}, how much to keep back to bring the
        window down to its target (given back to the budgets).
        """
        size = min(increment, max(0, self.window - max(self.target, self.base)))
        if size > 0:
            self.window -= size
            for budget in self.budgets:
                budget.give_back(size)
        return size

    def release(self) -> None:
        """The channel is done: its growth goes back to the budgets."""
        for budget in self.budgets:
            budget.give_back(self.growth)
        self.window = self.base
