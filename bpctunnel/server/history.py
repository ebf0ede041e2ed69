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

import datetime
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Callable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bpctunnel.server.threads import in_thread

#: The most hosts remembered; beyond it, the one heard from longest ago goes.
MAX_HOSTS = 10_000
#: Days of byte counts kept per host.
MAX_DAYS = 14
#: Minutes of byte counts kept per host (the dashboard's graph).
MAX_MINUTES = 60
#: The longest backup detail and address kept.
MAX_DETAIL = 500
MAX_ADDRESS = 100
MAX_HOST_NAME = 255
#: Seconds between samples of the live tunnels' byte counters.
SAMPLE_INTERVAL = 5.0
#: The most seconds between a change and its write to disk.
SAVE_INTERVAL = 30.0
#: The state file's name under --state-dir, and its format's version.
STATE_FILE = "state.json"
VERSION = 1


def iso(seconds: float | None) -> str | None:
    """C{seconds} since the epoch as ISO 8601 in UTC (to the second), or None."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


def day_of(seconds: float) -> str:
    """The UTC date of C{seconds}, C{YYYY-MM-DD}."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).date().isoformat()


def _number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, found {value!r:.40}")
    return float(value)


def _text(value, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {value!r:.40}")
    return value[:limit]


@attrs.frozen
class BackupResult:
    """How a backup ended, as BackupPC's C{backup-done} said."""

    ok: bool
    at: float
    detail: str = ""

    def to_json(self) -> dict:
        return {"ok": self.ok, "at": self.at, "detail": self.detail}

    @classmethod
    def from_json(cls, body: dict) -> BackupResult:
        if not isinstance(body.get("ok"), bool):
            raise ValueError("a backup result's ok is not true or false")
        return cls(body["ok"], _number(body["at"]), _text(body.get("detail", ""), MAX_DETAIL))


@attrs.define
class HostRecord:
    """
    What is remembered of one host; times are seconds since the epoch.

    @ivar bytes_by_day: bytes moved either way, by UTC date (L{MAX_DAYS} at most).
    @ivar minutes: C{[minute_start, bytes]} of the last L{MAX_MINUTES} minutes
        with traffic, oldest first.
    """

    connected_at: float | None = None
    disconnected_at: float | None = None
    address: str | None = None
    backup_requested_at: float | None = None
    last_backup: BackupResult | None = None
    rtt_ms: float | None = None
    certificate_expires: str | None = None
    bytes_by_day: dict[str, int] = attrs.Factory(dict)
    minutes: deque = attrs.Factory(lambda: deque(maxlen=MAX_MINUTES))

    @property
    def last_activity(self) -> float:
        """The latest time anything happened to the host (for eviction)."""
        times = [self.connected_at, self.disconnected_at, self.backup_requested_at,
                 self.last_backup.at if self.last_backup else None]
        return max((t for t in times if t is not None), default=0.0)

    def add_bytes(self, now: float, count: int) -> None:
        if count <= 0:
            return
        day = day_of(now)
        self.bytes_by_day[day] = self.bytes_by_day.get(day, 0) + count
        while len(self.bytes_by_day) > MAX_DAYS:
            del self.bytes_by_day[min(self.bytes_by_day)]
        minute = int(now // 60) * 60
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1][1] += count
        else:
            self.minutes.append([minute, count])

    def bytes_today(self, now: float) -> int:
        return self.bytes_by_day.get(day_of(now), 0)

    def to_json(self) -> dict:
        return {"connected_at": self.connected_at, "disconnected_at": self.disconnected_at,
                "address": self.address, "backup_requested_at": self.backup_requested_at,
                "last_backup": self.last_backup.to_json() if self.last_backup else None,
                "rtt_ms": self.rtt_ms, "certificate_expires": self.certificate_expires,
                "bytes_by_day": self.bytes_by_day, "minutes": list(self.minutes)}

    @classmethod
    def from_json(cls, body: dict) -> HostRecord:
        """
        @raise ValueError, TypeError, KeyError, AttributeError: not a record
            this module wrote.
        """
        days = body.get("bytes_by_day") or {}
        if not all(isinstance(d, str) and isinstance(n, int) for d, n in days.items()):
            raise ValueError("bytes_by_day must map dates to integers")
        minutes = body.get("minutes") or []
        if not all(isinstance(m, list) and len(m) == 2 and all(isinstance(x, int) for x in m)
                   for m in minutes):
            raise ValueError("minutes must be [minute, bytes] pairs")
        backup = body.get("last_backup")
        return cls(
            connected_at=_number(body.get("connected_at")),
            disconnected_at=_number(body.get("disconnected_at")),
            address=_text(body.get("address"), MAX_ADDRESS),
            backup_requested_at=_number(body.get("backup_requested_at")),
            last_backup=BackupResult.from_json(backup) if backup is not None else None,
            rtt_ms=_number(body.get("rtt_ms")),
            certificate_expires=_text(body.get("certificate_expires"), 40),
            bytes_by_day=dict(sorted(days.items())[-MAX_DAYS:]),
            minutes=deque(minutes[-MAX_MINUTES:], maxlen=MAX_MINUTES))


class StateFile:
    """
    The history's JSON file: read once at start, replaced atomically.

    @param path: the file (its folder must exist and be writable).
    """

    log = Logger()

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self, now: float) -> dict[str, HostRecord]:
        """
        The records in the file; none if there is no file.  A file that
        cannot be parsed is moved aside (C{state.json.corrupt-TIMESTAMP}),
        with a log line saying so.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            self.log.error("cannot read the state file {path}: {error}; starting with no "
                           "history", path=str(self.path), error=e.strerror)
            return {}
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or body.get("version") != VERSION:
                raise ValueError(f"not a version {VERSION} state file")
            hosts = body["hosts"]
            if not isinstance(hosts, dict):
                raise ValueError("its hosts are not an object")
            records = {}
            for host, record in hosts.items():
                if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_NAME:
                    raise ValueError(f"bad host name {host!r:.40}")
                records[host] = HostRecord.from_json(record)
            return dict(list(records.items())[-MAX_HOSTS:])
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            self._set_aside(e, now)
            return {}

    def _set_aside(self, error: Exception, now: float) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
        except OSError as e:
            self.log.error("the state file {path} is corrupt ({error}) and could not be moved "
                           "aside ({move_error}); starting with no history",
                           path=str(self.path), error=str(error), move_error=e.strerror)
            return
        self.log.error("the state file {path} is corrupt ({error}); moved it to {aside} and "
                       "starting with no history", path=str(self.path), error=str(error),
                       aside=str(aside))

    @staticmethod
    def serialize(records: dict[str, HostRecord], now: float) -> bytes:
        """The file's bytes for C{records}, saved at C{now} (no disk: a snapshot to L{write})."""
        body = {"version": VERSION, "saved_at": now,
                "hosts": {host: record.to_json() for host, record in records.items()}}
        return json.dumps(body, separators=(",", ":")).encode()

    def write(self, data: bytes) -> None:
        """
        Replace the file with C{data} (from L{serialize}): written to a
        temporary file in the same folder, flushed to disk, then renamed over
        the old one, so a crash leaves the old file or the new one, never
        half of one.  Blocking: run it in a thread, one call at a time (the
        temporary file is one).

        @raise OSError: the write failed; the old file is left as it was.
        """
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        try:
            folder = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(folder)
        except OSError:
            pass
        finally:
            os.close(folder)


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
        current = int(now // 60) * 60
        return [[iso(m), counts.get(m, 0)]
                for m in range(current - 60 * (MAX_MINUTES - 1), current + 1, 60)]

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
