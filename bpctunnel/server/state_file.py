"""
The hosts' records (L{HostRecord}) as JSON, and the one file they last in
across restarts (L{StateFile}): written atomically (a temporary file in the
same folder, fsync, rename, fsync of the folder), bounded in what it keeps,
and, when it cannot be read back, set aside so that the server starts.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections import deque
from pathlib import Path

import attrs
from twisted.logger import Logger

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
#: The largest time or round trip read back (2**33 s since the epoch is in
#: the year 2242): beyond it a number is corrupt, not a date to show.
MAX_NUMBER = 2 ** 33
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
    """A time (seconds since the epoch) or a round trip (ms): a number in [0, L{MAX_NUMBER}]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, found {value!r:.40}")
    if not 0 <= value <= MAX_NUMBER:   # also false for NaN
        raise ValueError(f"expected a number from 0 to {MAX_NUMBER}, found {value!r:.40}")
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
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError,
                RecursionError) as e:
            # RecursionError: deeply nested JSON; OverflowError: a huge integer.
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
