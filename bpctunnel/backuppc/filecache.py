"""
Parsed files that are read again only when they change.

The server re-checks a client's authorization for every connection BackupPC
makes and every few seconds while the client is idle; the hosts file and host
configs rarely change, so each is parsed again only when its modification
time, size or inode differ from the last read.
"""

from __future__ import annotations

import os
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class FileCache(Generic[T]):
    """C{cache(path)} returns C{parse(path)}, reusing the last result while the file is unchanged."""

    def __init__(self, parse: Callable[[os.PathLike], T], max_entries: int = 100_000):
        self._parse = parse
        self._entries: dict[str, tuple[tuple, T]] = {}
        self._max_entries = max_entries
        self.parses = 0

    def __call__(self, path: os.PathLike) -> T:
        key = os.fspath(path)
        try:
            st = os.stat(key)
        except OSError:
            # Let the parser raise its own, specific error for a missing file.
            self._entries.pop(key, None)
            return self._parse(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == stamp:
            return entry[1]
        self.parses += 1
        value = self._parse(path)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[key] = (stamp, value)
        return value
