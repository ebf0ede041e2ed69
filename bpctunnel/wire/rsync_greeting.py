"""
The module a connection to an rsync daemon asks for.

BackupPC's side of the daemon protocol starts C{"@RSYNCD: <version>\\n"}
then C{"<module>\\n"}; both ends of a channel read the module from there, for
their logs and for backup progress.
"""

from __future__ import annotations

#: How much of the first bytes is looked at.
HEAD_LIMIT = 1024


class ModuleSniffer:
    """Fed the connecting side's first bytes; C{module} once they name one."""

    def __init__(self):
        self.module: str | None = None
        self._head: bytes | None = b""

    @property
    def done(self) -> bool:
        """Whether more bytes can tell nothing more."""
        return self._head is None

    def feed(self, data: bytes) -> None:
        if self._head is None:
            return
        self._head += data[:HEAD_LIMIT]
        lines = self._head.split(b"\n")
        if len(lines) >= 3 or len(self._head) >= HEAD_LIMIT:
            if len(lines) >= 3 and lines[0].startswith(b"@RSYNCD:"):
                self.module = lines[1].decode("utf-8", "replace").strip() or None
            self._head = None
