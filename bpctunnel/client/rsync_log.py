"""
Reading an rsync daemon's log: which files it could not send.

BackupPC counts the files rsync could not send only after its
C{DumpPostUserCmd} has run, so the laptop counts them itself from the
daemon's own log lines (see L{bpctunnel.client.rsync_daemon}): L{TransferProblems}
keeps the first L{MAX_NAMES} names of each kind and how many there were.
"""

from __future__ import annotations

import re

import attrs

#: Bounds on what one channel's log may make us keep.
MAX_NAMES = 20
MAX_NAME_CHARS = 256
MAX_LOG_LINE = 16 * 1024

# rsync names a file as '"path" (in module)' (full_fname); its daemon log
# lines start with "YYYY/MM/DD HH:MM:SS [pid] ".
_LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\d+\] ")
_FILE = r'"(?P<name>.*)" \(in (?P<module>[^)]*)\)'
_PROBLEMS = [
    ("unreadable", "", re.compile(r"send_files failed to open " + _FILE)),
    ("unreadable", "/", re.compile(r"opendir " + _FILE + r" failed")),
    ("unreadable", "", re.compile(r"read errors mapping " + _FILE)),
    ("unreadable", "", re.compile(r"\blink_stat " + _FILE + r" failed")),
    ("unreadable", "", re.compile(r"readlink_stat\(" + _FILE + r"\) failed")),
    ("vanished", "", re.compile(r"file has vanished: " + _FILE)),
]


def parse_log_line(line: str) -> tuple[str, str, str] | None:
    """
    C{(kind, module, name)} of a daemon log line saying a file could not be
    sent (kind C{unreadable}; a folder's name ends with C{/}) or vanished
    (C{vanished}); C{None} for every other line.  Names are relative to
    the module: a daemon in a chroot names them from its root (C{"/a.txt"}).
    """
    text = _LOG_PREFIX.sub("", line)
    for kind, suffix, pattern in _PROBLEMS:
        match = pattern.search(text)
        if match:
            return kind, match.group("module"), match.group("name").lstrip("/") + suffix
    return None


def _bounded(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS - 3] + "..."


@attrs.define
class TransferProblems:
    """
    The files one rsync daemon could not send, from its log lines: the
    first L{MAX_NAMES} names of each kind and how many there were.
    """

    names: dict = attrs.Factory(lambda: {"unreadable": [], "vanished": []})
    counts: dict = attrs.Factory(lambda: {"unreadable": 0, "vanished": 0})
    module: str | None = None

    def add_line(self, line: str) -> bool:
        """Take in one log line; whether it named a problem."""
        found = parse_log_line(line)
        if found is None:
            return False
        kind, module, name = found
        self.module = self.module or module
        self.counts[kind] += 1
        if len(self.names[kind]) < MAX_NAMES:
            self.names[kind].append(_bounded(name))
        return True

    def __bool__(self) -> bool:
        return any(self.counts.values())

    def report(self, module: str | None) -> dict:
        """The C{transfer-report} CONTROL message for the server."""
        body = {"type": "transfer-report", "module": module or self.module or ""}
        for kind in ("unreadable", "vanished"):
            body[kind] = list(self.names[kind])
            body[f"{kind}_count"] = self.counts[kind]
        return body

    def summary(self) -> str:
        """C{'3 files unreadable: a, b, c'} and the like, for the log."""
        parts = []
        for kind in ("unreadable", "vanished"):
            count, names = self.counts[kind], self.names[kind]
            if count:
                more = f" and {count - len(names)} more" if count > len(names) else ""
                parts.append(f"{count} file{'s' if count != 1 else ''} {kind}: "
                             f"{', '.join(names)}{more}")
        return "; ".join(parts)
