"""
Reading the client's rsyncd.conf, to refuse writable modules.

A backup server that is broken into must not become a way to overwrite or
wipe every laptop it backs up, so by default the client refuses to start if
any module accepts writes (restores need C{allow_restore = yes}).
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


def writable_modules(path: Path) -> list[str]:
    """The modules of an rsyncd.conf that accept writes (read only = no)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"cannot read rsyncd.conf {path}: {e.strerror}") from None
    global_settings, modules = parse_rsyncd_conf(text, str(path))
    global_read_only = _flag(global_settings.get("readonly"), True)
    return [name for name, settings in modules.items()
            if not _flag(settings.get("readonly"), global_read_only)]
