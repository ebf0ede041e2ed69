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

#: rsync's spellings of a boolean, compared without case or white space.
_TRUE = {"yes", "true", "1"}
_FALSE = {"no", "false", "0"}
#: Parameters rsync reads as booleans: a spelling it cannot read leaves the
#: value as it was (the default, or the global one), as rsync does.
BOOLEAN_KEYS = frozenset({
    "readonly", "writeonly", "list", "usechroot", "mungesymlinks", "strictmodes",
    "numericids", "ignoreerrors", "ignorenonreadable", "transferlogging", "fakesuper",
    "forwardlookup", "reverselookup", "opennoatime",
})


def _squeezed(text: str) -> str:
    """How rsync compares names and boolean words: no white space, any case."""
    return "".join(text.split()).lower()


def _boolean(value: str) -> str | None:
    """C{"yes"} or C{"no"} for a spelling rsync reads as a boolean, else None."""
    word = _squeezed(value)
    return "yes" if word in _TRUE else "no" if word in _FALSE else None


def _logical_lines(text: str):
    """
    (line number, line) with rsync's continuations joined: a line whose last
    non-blank character is a backslash goes on with the next one (except a
    comment line, which rsync ends at its newline).
    """
    pending, first = "", 0
    for number, raw in enumerate(text.replace("\r", "").split("\n"), 1):
        stripped = raw.rstrip()
        if not pending:
            first = number
            if stripped.lstrip()[:1] in ("#", ";"):
                yield number, raw       # a comment ends at its line, backslash or not
                continue
        if stripped.endswith("\\"):
            pending += stripped[:-1]
            continue
        yield first, pending + raw
        pending = ""
    if pending:
        yield first, pending


def parse_rsyncd_conf(text: str, source: str) -> tuple[dict, dict[str, dict]]:
    """
    The global settings and each module's settings, exactly as rsync reads
    them (its C{params.c} and C{loadparm.c}):

      - C{#} and C{;} start comment lines; a trailing backslash continues a line;
      - names of parameters and modules match without case or white space
        (C{[Docs]} and C{[ d o c s ]} are one module, its settings merged);
      - a module starts with the global settings as they are at its header,
        and a later C{[global]} section changes only the modules after it;
      - a boolean spelling rsync cannot read leaves the value as it was.

    Keys are given squeezed (C{"readonly"}); booleans as C{"yes"}/C{"no"}.

    @raise ConfigError: C{&include}/C{&merge} (other files we would have to
        follow to know what is writable), or a line rsync refuses.
    """
    global_settings: dict[str, str] = {}
    modules: dict[str, dict[str, str]] = {}
    names: dict[str, str] = {}
    current = global_settings
    for number, raw in _logical_lines(text):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "&":
            raise ConfigError(f"{source}, line {number}: {line.split()[0]} directives are not "
                              f"supported: keep the modules bpctunnel serves in this one file")
        if line[0] == "[":
            if "]" not in line:
                raise ConfigError(f"{source}, line {number}: a module name needs a closing ']'")
            name = " ".join(line[1:line.index("]")].split())
            if not name:
                raise ConfigError(f"{source}, line {number}: a module needs a name")
            key = _squeezed(name)
            if key == "global":
                current = global_settings
            elif "/" in name:
                raise ConfigError(f"{source}, line {number}: module name {name!r} has a '/'")
            else:
                name = names.setdefault(key, name)
                current = modules.setdefault(name, dict(global_settings))
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}, line {number}: expected 'name = value', got {line!r}")
        key, value = _squeezed(key), value.strip()
        if key in BOOLEAN_KEYS:
            value = _boolean(value)
            if value is None:
                continue            # rsync: "Badly formed boolean", value unchanged
        current[key] = value
    return global_settings, modules


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


#: Options no backup or restore by BackupPC needs (its RsyncArgs and
#: RsyncRestoreArgs send none of them), with which a hostile BackupPC (or a
#: BackupPC web user who may edit RsyncArgsExtra) would make the laptop's
#: daemon follow symlinks out of a module, read devices, delete what it
#: sent, or allocate without bound.  rsync refuses the short forms (-L, -k,
#: -K) with the long ones.
REFUSED_OPTIONS = ("copy-links", "copy-unsafe-links", "copy-dirlinks", "keep-dirlinks",
                   "copy-devices", "write-devices", "remove-source-files", "max-alloc")


def confinement_overrides(euid: int) -> list[str]:
    """
    The C{--dparam} options that keep a daemon inside its modules: the
    options in L{REFUSED_OPTIONS} refused, and for a daemon started by root
    C{use chroot = yes} (the template's global C{use chroot = no} is for a
    daemon run by a user, which cannot chroot).  A module that sets its own
    C{refuse options} or C{use chroot} keeps them.
    """
    found = [f"--dparam=refuseoptions={' '.join(REFUSED_OPTIONS)}"]
    if euid == 0:
        found.append("--dparam=usechroot=yes")
    return found


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
    _, modules = read_rsyncd_conf(path)
    return [name for name, settings in modules.items() if settings.get("readonly") == "no"]
