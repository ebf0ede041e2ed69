"""
What the server remembers of each tunnel host across restarts: when it was
last connected and from where, when it left, its last backup request and
result, the bytes it moved per day, its last round trip, and the bytes per
minute of the last hour (the dashboard's graph).

L{HostHistory} keeps the records; it is told of tunnels opening and closing
(an observer of L{bpctunnel.server.server_state.ServerState}), of backups and
round trips, and samples the live tunnels' byte counters on its clock.
L{StateFile} keeps them in one small JSON file, written atomically (a
temporary file, fsync, rename) at most every L{SAVE_INTERVAL} seconds and
when the server stops; a file that cannot be read back is set aside and the
server starts with no history: a lost history is never worth a server that
does not start.  The records are turned into bytes on the reactor thread (a
snapshot) and written to disk in a thread, one write at a time: an fsync can
take seconds on a busy disk, and the reactor carries every tunnel meanwhile.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bpctunnel.server.state_file import (
    MAX_ADDRESS,
    MAX_DETAIL,
    MAX_HOSTS,
    MAX_MINUTES,
    BackupResult,
    HostRecord,
    StateFile,
    iso,
)
from bpctunnel.server.threads import in_thread

#: Seconds between samples of the live tunnels' byte counters.
SAMPLE_INTERVAL = 5.0
#: The most seconds between a change and its write to disk.
SAVE_INTERVAL = 30.0


class HostHistory:
    """
    The records of every host, kept up to date from the server's events.

    @param clock: an C{IReactorTime}; its C{seconds()} are wall-clock times.
    @param state_file: where the records last (None: in memory only).
    @param run_in_thread: C{(f, *args) -> Deferred} running C{f(*args)} off
        the reactor thread, for the file's writes; by default the reactor's
        thread pool if C{clock} is an C{IReactorThreads}, else at once (a
        test's C{Clock}).

    The byte counters of the tunnels it was told of (L{tunnel_event}) are
    sampled every L{SAMPLE_INTERVAL} seconds once L{start}ed.
    """

    log = Logger()

    def __init__(self, clock, state_file: StateFile | None,
                 run_in_thread: Callable[..., Deferred] | None = None):
        self.clock = clock
        self.state_file = state_file
        self.records: dict[str, HostRecord] = state_file.load(clock.seconds()) if state_file else {}
        #: Whether the records changed since the last write took its bytes
        #: (or that write failed).
        self.dirty = False
        self._saved_at = clock.seconds()
        self._run_in_thread = run_in_thread or in_thread(clock)
        #: (minute, its hour's minutes and labels), for L{last_hour}.
        self._minute_labels: tuple[int, list[tuple[int, str]]] | None = None
        #: The write under way, if any: one at a time, or two threads would
        #: share the temporary file and an older snapshot could land last.
        self._writing: Deferred | None = None
        #: A save was asked for during that write: it is done once that ends.
        self._save_after = False
        #: Fired once no write is under way (L{save}'s and L{stop}'s answers).
        self._idle_waiters: list[Deferred] = []
        #: Per live tunnel: C{(time, total bytes)} samples of the last minute or so.
        self._samples: dict[object, deque] = {}
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock

    # -- records -------------------------------------------------------------

    def record(self, host: str) -> HostRecord:
        """C{host}'s record, made if new (the longest-silent host goes beyond L{MAX_HOSTS})."""
        record = self.records.get(host)
        if record is None:
            if len(self.records) >= MAX_HOSTS:
                oldest = min(self.records, key=lambda h: self.records[h].last_activity)
                del self.records[oldest]
            record = self.records[host] = HostRecord()
        self.dirty = True
        return record

    def tunnel_event(self, event: str, tunnel) -> None:
        """A L{bpctunnel.server.server_state.ServerState} observer: a tunnel opened or closed."""
        now = self.clock.seconds()
        if event == "open":
            record = self.record(tunnel.host)
            record.connected_at = now
            record.address = (tunnel.peer_address or None) and tunnel.peer_address[:MAX_ADDRESS]
            expires = tunnel.certificate_expires
            record.certificate_expires = expires.isoformat(timespec="seconds") if expires else None
            self._samples[tunnel] = deque([(now, _total(tunnel))], maxlen=2 + int(
                60 / SAMPLE_INTERVAL))
        elif event == "closed":
            self._sample_one(tunnel, now)
            self._samples.pop(tunnel, None)
            self.record(tunnel.host).disconnected_at = now

    def backup_requested(self, host: str) -> None:
        self.record(host).backup_requested_at = self.clock.seconds()

    def backup_done(self, host: str, ok: bool, detail: str = "") -> None:
        self.record(host).last_backup = BackupResult(ok, self.clock.seconds(),
                                                     detail[:MAX_DETAIL])

    def round_trip(self, host: str, seconds: float) -> None:
        self.record(host).rtt_ms = round(seconds * 1000, 3)

    # -- bytes -----------------------------------------------------------------

    def sample(self) -> None:
        """Add what each live tunnel moved since the last sample; save if it is time."""
        now = self.clock.seconds()
        for tunnel in list(self._samples):
            self._sample_one(tunnel, now)
        if self.dirty and now - self._saved_at >= SAVE_INTERVAL:
            self.save()

    def _sample_one(self, tunnel, now: float) -> None:
        samples = self._samples.get(tunnel)
        if samples is None or tunnel.mux is None:
            return
        total = _total(tunnel)
        moved = total - samples[-1][1]
        samples.append((now, total))
        if moved > 0:
            self.record(tunnel.host).add_bytes(now, moved)

    def throughput(self, tunnel) -> float:
        """Bytes per second through C{tunnel} over about the last minute (0 if unknown)."""
        samples = self._samples.get(tunnel)
        if not samples or tunnel.mux is None:
            return 0.0
        now = self.clock.seconds()
        start = next(((t, n) for t, n in samples if now - t <= 60 + SAMPLE_INTERVAL),
                     samples[-1])
        elapsed = now - start[0]
        return (_total(tunnel) - start[1]) / elapsed if elapsed > 0 else 0.0

    def last_hour(self, host: str, now: float) -> list[list]:
        """C{[[iso_minute, bytes], ...]} for each of the last 60 minutes, oldest first."""
        record = self.records.get(host)
        counts = {m: n for m, n in record.minutes} if record else {}
        return [[label, counts.get(m, 0)] for m, label in self._minutes(int(now // 60) * 60)]

    def _minutes(self, current: int) -> list[tuple[int, str]]:
        """The last hour's minutes and their ISO labels, made once a minute (not per host)."""
        if self._minute_labels is None or self._minute_labels[0] != current:
            self._minute_labels = (current, [
                (m, iso(m)) for m in range(current - 60 * (MAX_MINUTES - 1), current + 1, 60)])
        return self._minute_labels[1]

    # -- start, stop and the file ------------------------------------------------

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(SAMPLE_INTERVAL, now=False).addErrback(
                lambda f: self.log.failure("sampling the tunnels' traffic stopped", f))

    def stop(self) -> Deferred:
        """
        Sample once more and save (the server is stopping).  Fires once the
        records are on disk, or their write failed (logged); never fails.
        """
        if self._loop.running:
            self._loop.stop()
        now = self.clock.seconds()
        for tunnel in list(self._samples):
            self._sample_one(tunnel, now)
        return self.save()

    def save(self) -> Deferred:
        """
        Write the records, if they changed: their bytes are taken now, on
        this thread, and written to disk in a thread.  During a write, a
        save waits for it and then writes the records as they are then.
        Fires once no write is under way (the records as of this call are
        on disk, or their write failed); a failure is logged, never raised,
        and the next save tries again.
        """
        if self.state_file is None:
            return succeed(None)
        if self._writing is not None:
            self._save_after = True
        elif self.dirty:
            self._write()
        return self._when_idle()

    def _write(self) -> None:
        now = self.clock.seconds()
        data = self.state_file.serialize(self.records, now)
        # Changes from here on are not in this write: they make the
        # records dirty again, for the next one.
        self.dirty = False
        self._saved_at = now
        # Set before the callbacks: a run_in_thread that runs at once has
        # fired already, and _write_ended clears it.
        self._writing = written = maybeDeferred(self._run_in_thread, self.state_file.write, data)
        written.addErrback(self._write_failed).addBoth(self._write_ended)

    def _write_failed(self, failure) -> None:
        self.dirty = True
        path = str(self.state_file.path)
        if failure.check(OSError):
            error = failure.value
            self.log.error("cannot write the state file {path}: {error}; will try again",
                           path=path, error=error.strerror or str(error))
        else:
            self.log.failure("cannot write the state file {path}; will try again", failure,
                             path=path)

    def _write_ended(self, _) -> None:
        self._writing = None
        if self._save_after:
            self._save_after = False
            if self.dirty:
                self._write()
                return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _when_idle(self) -> Deferred:
        if self._writing is None:
            return succeed(None)
        waiter = Deferred()
        self._idle_waiters.append(waiter)
        return waiter


def _total(tunnel) -> int:
    mux = tunnel.mux
    return mux.bytes_in + mux.bytes_out if mux is not None else 0
