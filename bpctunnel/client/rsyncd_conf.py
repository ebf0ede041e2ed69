"""
Reading the client's rsyncd.conf: to refuse writable modules, to know which
modules the laptop serves, and which user each one reads files as.

A backup server that is broken into must not become a way to overwrite or
wipe every laptop it backs up, so by default the client refuses to start if
any module accepts writes (restores need C{allow_restore = yes}).

A daemon started by root switches to the module's C{uid}/C{gid}; without
one, rsync 3.2.x switches to C{nobody}, which cannot read a user's private
files: BackupPC then records a backup with files missing as a success.  So a
root client runs rsync with C{--dparam uid=0 gid=0} unless rsyncd.conf sets
them itself (L{identity_overrides}): it reads what root reads, whatever the
rsync version, and a module that names its own C{uid}/C{gid} still gets them.
"""

from __future__ import annotations

from pathlib import Path

from bpctunnel.errors import ConfigError

_FALSE = {"no", "false", "0"}
_TRUE = {"yes", "true", "1"}


def parse_rsyncd_conf(text: str, source: str) -> tuple[dict, dict[str, dict]]:
    """
    The global settings and each module's settings, as rsync reads them:
    C{[name]} starts a module, C{key = value} lines (keys are case- and
    space-insensitive), C{#} and C{;} start comment lines.
    """
    global_settings: dict[str, str] = {}
    modules: dict[str, dict[str, str]] = {}
    current = global_settings
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{source}, line {number}: a module name needs a closing ']'")
            name = line[1:-1].strip()
            if name in ("global", ""):
                current = global_settings
            else:
                current = modules.setdefault(name, {})
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{source}, line {number}: expected 'name = value', got {line!r}")
        current["".join(key.lower().split())] = value.strip()
    return global_settings, modules


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    return default


def read_rsyncd_conf(path: Path) -> tuple[dict, dict[str, dict]]:
    """L{parse_rsyncd_conf} of the file at C{path}."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"cannot read rsyncd.conf {path}: {e.strerror}") from None
    return parse_rsyncd_conf(text, str(path))


def identity_overrides(global_settings: dict, euid: int) -> list[str]:
    """
    The C{--dparam} options that make a daemon started by root read as root,
    except where rsyncd.conf's global section names a C{uid}/C{gid} (modules
    naming their own override these defaults anyway).
    """
    if euid != 0:
        return []
    return [f"--dparam={key}=0" for key in ("uid", "gid") if key not in global_settings]


def module_identities(global_settings: dict, modules: dict[str, dict], euid: int,
                      user: str) -> dict[str, str]:
    """Who each module reads files as, in words for the client's log."""
    found = {}
    for name, settings in modules.items():
        if euid != 0:
            found[name] = user
            continue
        uid = settings.get("uid", global_settings.get("uid", "root"))
        gid = settings.get("gid", global_settings.get("gid", "root"))
        found[name] = uid if uid in ("root", "0") and gid in ("root", "0") else f"{uid}:{gid}"
    return found


def writable_modules(path: Path) -> list[str]:
    """The modules of an rsyncd.conf that accept writes (read only = no)."""
    global_settings, modules = read_rsyncd_conf(path)
    global_read_only = _flag(global_settings.get("readonly"), True)
    return [name for name, settings in modules.items()
            if not _flag(settings.get("readonly"), global_read_only)]
