"""
Which file BackupPC reads as a host's config: its own C{ConfigPath} logic
(C{BackupPC::Storage::Text}), so that the file that authorizes a laptop's
tunnel is the one whose settings BackupPC backs the laptop up with.

  - An FHS installation (C{useFHS} in BackupPC's C{Lib.pm}) reads only
    C{<ConfDir>/pc/<host>.pl}.
  - Any other, Debian's included, reads C{<TopDir>/pc/<host>/config.pl} if
    it exists (BackupPC 3's place), else C{<ConfDir>/<host>.pl}.

Where BackupPC's C{Lib.pm} is not found (no BackupPC on this machine, as
in the sandbox), both C{<ConfDir>/<host>.pl} and C{<ConfDir>/pc/<host>.pl}
are read, in that order.  Other existing candidates are copies BackupPC
ignores; C{bpctunnel check} names them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from bpctunnel.backuppc.perlconf import read_perl_config
from bpctunnel.errors import ConfigError

#: Where BackupPC installations keep C{Lib.pm}: Debian's package, the
#: upstream tarball's default.
LIB_PM = (Path("/usr/share/backuppc/lib/BackupPC/Lib.pm"),
          Path("/usr/local/BackupPC/lib/BackupPC/Lib.pm"))
_USE_FHS = re.compile(rb"^\s*my\s+\$useFHS\s*=\s*(\d)\s*;", re.M)
_TOP_DIR = re.compile(rb"""^\s*\$topDir\s*=\s*['"]([^'"]+)['"]""", re.M)


@attrs.frozen
class ConfigLayout:
    """Where BackupPC keeps host configs: L{host_config} is the one it reads."""

    conf_dir: Path
    #: True: FHS; False: classic (Debian); None: BackupPC not found here.
    fhs: bool | None = None
    top_dir: Path | None = None

    def candidates(self, host: str) -> list[Path]:
        """Every place a config of C{host} might be, BackupPC's choice first when it exists."""
        if self.fhs:
            return [self.conf_dir / "pc" / f"{host}.pl"]
        if self.fhs is None:
            return [self.conf_dir / f"{host}.pl", self.conf_dir / "pc" / f"{host}.pl"]
        legacy = [self.top_dir / "pc" / host / "config.pl"] if self.top_dir else []
        return [*legacy, self.conf_dir / f"{host}.pl"]

    def host_config(self, host: str) -> Path:
        """The file BackupPC reads for C{host} (it may not exist yet)."""
        candidates = self.candidates(host)
        for path in candidates:
            if path.exists():
                return path
        return candidates[-1] if self.fhs is False else candidates[0]

    def ignored_copies(self, host: str) -> list[Path]:
        """Configs of C{host} that exist where this BackupPC never reads them."""
        read = self.host_config(host)
        others = [self.conf_dir / f"{host}.pl", self.conf_dir / "pc" / f"{host}.pl"]
        if self.top_dir:
            others.append(self.top_dir / "pc" / host / "config.pl")
        return [p for p in others if p != read and p.exists()]


#: (path, inode, size, mtime) -> what was read from it.
_seen: dict[tuple, object] = {}


def _once_per_version(path: Path, read):
    """C{read(path)}, again only after the file changes; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    # The dashboard's check reads this from a thread while the reactor may:
    # never read back from the shared dict what another thread may clear.
    try:
        return _seen[key]
    except KeyError:
        pass
    try:
        value = read(path)
    except (OSError, ConfigError):
        value = None
    if len(_seen) > 64:
        _seen.clear()
    _seen[key] = value
    return value


def _lib_pm_defaults(path: Path) -> tuple[bool, str | None]:
    text = path.read_bytes()
    fhs = _USE_FHS.search(text)
    top = _TOP_DIR.search(text)
    return (fhs is not None and fhs.group(1) == b"1",
            top.group(1).decode("utf-8", "replace") if top else None)


def _config_top_dir(path: Path) -> str | None:
    value = read_perl_config(path).get("TopDir")
    return value if isinstance(value, str) and value else None


def config_layout(conf_dir, lib_pm=LIB_PM) -> ConfigLayout:
    """The layout of the BackupPC installed here, for configs in C{conf_dir}."""
    conf_dir = Path(conf_dir)
    for path in lib_pm:
        found = _once_per_version(Path(path), _lib_pm_defaults)
        if found is not None:
            fhs, default_top = found
            top = _once_per_version(conf_dir / "config.pl", _config_top_dir) or default_top
            return ConfigLayout(conf_dir, fhs, Path(top) if top else None)
    return ConfigLayout(conf_dir)
