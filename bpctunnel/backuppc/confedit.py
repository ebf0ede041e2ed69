"""
Edit BackupPC's host configs (C{<host>.pl}) and C{hosts} file safely.

Every edit is a pure text -> text function that changes as little as
possible: it replaces exactly one C{$Conf{Name} = ...;} statement (the span
L{bpctunnel.backuppc.perlconf} reports), or appends one, and keeps every other byte
(comments, order, CRLF line endings, a comment after the C{;}).  An edit it
cannot make unambiguously is refused with L{EditRefused} naming the file and
lines to fix by hand: a setting assigned several times with different values,
or set by Perl code or per key.  Each result is parsed again and checked to
hold the new value with every other setting unchanged before it is returned.

L{write_atomically} puts a result in place: temporary file in the same
folder, the original's mode, owner and group, fsync, rename, fsync of the
folder.  Nothing here touches the reactor.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from contextlib import suppress
from pathlib import Path

from bpctunnel.backuppc.hosts import TUNNEL_CERT_RE, ascii_lower, normalize_fingerprint, parse_hosts
from bpctunnel.errors import ConfigError, EditRefused
from bpctunnel.backuppc.perlconf import PerlExpression, parse_perl_config

__all__ = [
    "add_host", "perl_literal", "remove_tunnel_cert", "set_setting", "set_tunnel_cert",
    "write_atomically",
]

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Perl reads these as numbers whose value differs from their text ('0x10' is 16).
_NUMERIC_LOOKING = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|(?:[0-9][0-9_]*"
                              r"(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9][0-9_]*)?)")
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
# Names BackupPC's HostInfoRead reads back unchanged and that are safe as <host>.pl.
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,254}")


def perl_literal(value) -> str:
    """
    Write C{value} as a Perl literal: C{str} single-quoted (double-quoted with
    C{\\r} escapes if it holds a CR, because Perl reads CR LF in source as LF),
    C{int} as digits, C{list}/C{tuple} as C{[...]} on one line, C{None} as undef.

    @raise TypeError: any other type (including C{bool}).
    """
    if isinstance(value, str):
        if "\r" in value:
            escaped = re.sub(r'([\\"$@])', r"\\\1", value).replace("\r", "\\r")
            return f'"{escaped}"'
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(perl_literal(v) for v in value) + "]"
    if value is None:
        return "undef"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a BackupPC setting; "
                    f"use str, int, list, tuple or None")


def _wanted(value):
    """C{value} as the config reader returns it: numbers become their text."""
    if isinstance(value, (list, tuple)):
        return [_wanted(v) for v in value]
    return value if value is None or isinstance(value, str) else str(value)


def _equal(parsed, value):
    """Whether a parsed value is certainly what Perl reads for C{value}."""
    if isinstance(parsed, list) and isinstance(value, (list, tuple)):
        return len(parsed) == len(value) and all(map(_equal, parsed, value))
    wanted = _wanted(value)
    if isinstance(parsed, str) and _NUMERIC_LOOKING.fullmatch(parsed) \
            and not _CANONICAL_INT.fullmatch(parsed):
        return False   # a bare 0x10 and a quoted '0x10' parse alike; rewrite to be sure
    return not isinstance(wanted, list) and type(parsed) is type(wanted) and parsed == wanted


def _newline(text):
    """The line ending the text uses: CRLF if its first line ends so, else LF."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def _lines(numbers):
    numbers = [str(n) for n in numbers]
    return ", ".join(numbers[:-1]) + " and " + numbers[-1]


def _verify(before, new_text, name, value, source):
    """Refuse a result that does not read back as intended (a bug, never expected)."""
    after = parse_perl_config(new_text, source)
    # PerlExpression lines are left out: replacing a multi-line statement moves them.
    others = [[(a.name, a.value.text if isinstance(a.value, PerlExpression) else a.value)
               for a in c.assignments if a.name != name] for c in (before, after)]
    if others[0] != others[1] or _wanted(value) != after.get(name, object()):
        raise EditRefused(f"{source}: setting $Conf{{{name}}} would not read back as "
                          f"{value!r} with every other setting unchanged; nothing was "
                          f"changed, edit the file by hand")


def _not_plain(source, assignment):
    shown = assignment.value.text.splitlines()[0] if assignment.value.text else ""
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return EditRefused(f"{source}, line {assignment.line}: $Conf{{{assignment.name}}} is set "
                       f"by Perl code or per key ({shown!r}), not by a plain "
                       f"`$Conf{{{assignment.name}}} = value;`; edit it by hand")


def set_setting(text: str, name: str, value, source: str) -> str:
    """
    Return C{text} changed so that C{$Conf{name}} reads as C{value}.

    Already equal in every assignment: C{text} unchanged.  Not assigned: one
    statement appended.  Assigned once: that statement replaced.

    @raise EditRefused: assigned several times with values not all equal to
        C{value}, or set by Perl code or per key.
    @raise ConfigError: C{text} is not a config file L{parse_perl_config} reads.
    @raise TypeError: C{value} has no Perl literal (see L{perl_literal}).
    """
    literal = perl_literal(value)
    if not isinstance(name, str) or not _SETTING_NAME.fullmatch(name):
        raise ConfigError(f"{name!r} is not a BackupPC setting name")
    config = parse_perl_config(text, source)
    found = config.assignments_of(name)
    statement = f"$Conf{{{name}}} = {literal};"
    if found and all(_equal(a.value, value) or text[a.start:a.end] == statement
                     for a in found):
        return text
    if len(found) > 1:
        raise EditRefused(f"{source} assigns $Conf{{{name}}} on lines "
                          f"{_lines(a.line for a in found)}; edit it by hand so that it is "
                          f"assigned once")
    if found:
        if isinstance(found[0].value, PerlExpression):
            raise _not_plain(source, found[0])
        new_text = text[:found[0].start] + statement + text[found[0].end:]
    else:
        newline = _newline(text)
        separator = newline if text and not text.endswith("\n") else ""
        new_text = text + separator + statement + newline
    _verify(config, new_text, name, value, source)
    return new_text


def _comment(text, source):
    """The ClientComment Perl reads (None if unset or undef); refuse non-strings."""
    found = parse_perl_config(text, source).assignments_of("ClientComment")
    if not found:
        return None
    last = found[-1]
    if isinstance(last.value, PerlExpression):
        raise _not_plain(source, last)
    if last.value is not None and not isinstance(last.value, str):
        kind = "a list" if isinstance(last.value, list) else "a hash"
        raise EditRefused(f"{source}, line {last.line}: $Conf{{ClientComment}} is {kind}, "
                          f"not a quoted string; edit it by hand")
    return last.value


def _rewrite_tags(comment, tag):
    """
    Replace the first TunnelCert tag in C{comment} with C{tag} (drop it if
    C{tag} is empty) and drop the others; a dropped tag takes one adjacent
    space with it, so C{"a TAG b"} becomes C{"a b"}.
    """
    out, pos = "", 0
    for i, match in enumerate(TUNNEL_CERT_RE.finditer(comment)):
        out += comment[pos:match.start()]
        pos = match.end()
        if i == 0 and tag:
            out += tag
        elif out.endswith(" ") and (pos == len(comment) or comment[pos] == " "):
            out = out[:-1]
        elif not out and comment.startswith(" ", pos):
            pos += 1
    return out + comment[pos:]


def set_tunnel_cert(text: str, fingerprint: str, source: str) -> str:
    """
    Return C{text} whose ClientComment holds exactly one
    C{TunnelCert:sha256:<fingerprint>} tag, its other text kept: the first
    existing tag is replaced and the others removed, or the tag is appended
    (or the ClientComment created).  Refusals as L{set_setting}.

    @raise ConfigError: C{fingerprint} is not a SHA-256 fingerprint.
    """
    tag = f"TunnelCert:sha256:{normalize_fingerprint(fingerprint)}"
    comment = _comment(text, source) or ""
    if TUNNEL_CERT_RE.search(comment):
        new = _rewrite_tags(comment, tag)
    else:
        new = comment + (" " if comment and not comment[-1].isspace() else "") + tag
    return set_setting(text, "ClientComment", new, source)


def remove_tunnel_cert(text: str, source: str) -> tuple[str, bool]:
    """
    Remove every TunnelCert tag from the ClientComment Perl reads, tidying the
    spaces around it; return C{(new_text, removed_any)}.  The assignment stays,
    possibly as C{''}.  Refusals as L{set_setting}.
    """
    comment = _comment(text, source)
    if not comment or not TUNNEL_CERT_RE.search(comment):
        return text, False
    new = _rewrite_tags(comment, "").strip()
    return set_setting(text, "ClientComment", new, source), True


def add_host(text: str, host: str, user: str = "backuppc",
             source: str = "hosts") -> tuple[str, bool]:
    """
    Return C{(text, False)} if BackupPC's C{hosts} C{text} lists C{host}
    (compared lower-cased, as BackupPC does), else C{text} with the line
    C{<host>    0    <user>} appended and True.

    @raise ConfigError: C{host} or C{user} is not a name BackupPC would read
        back unchanged, or C{text} has no header line.
    """
    for what, name, pattern in (("host", host, _HOST_NAME), ("user", user, _USER_NAME)):
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise ConfigError(f"{name!r} cannot be written to {source} as a {what} name; use "
                              f"letters, digits, '_', '.' and '-' (and '@', '+' in a user "
                              f"name), starting with a letter, digit or '_'")
    before = parse_hosts(text, source)
    if ascii_lower(host) in before:
        return text, False
    newline = _newline(text)
    separator = newline if text and not text.endswith("\n") else ""
    new_text = f"{text}{separator}{host}    0    {user}{newline}"
    after = parse_hosts(new_text, source)
    entry = after.pop(ascii_lower(host), None)
    if entry is None or (entry.name, entry.user) != (host, user) or after != before:
        raise EditRefused(f"{source}: the line for {host} would not read back as intended; "
                          f"nothing was changed, add `{host} 0 {user}` by hand")
    return new_text, True


def _decode(data):
    """Decode as L{read_config_text} does; return (text, encoding)."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _stat_or_none(path):
    if path is None:
        return None
    try:
        return os.stat(path)
    except OSError:
        return None


def write_atomically(path, new_text: str, old_text: str | None, *,
                     encoding: str | None = None, like=None, private: bool = False) -> bool:
    """
    Replace the file at C{path} (a symlink's target) with C{new_text}; return
    whether it was written (not when C{new_text == old_text}).

    C{old_text} is what the edit started from (None: the file was new).  If
    the file no longer holds it, someone else saved it meanwhile: refused.
    The text is encoded in C{encoding}, by default the one the file is in
    (UTF-8, else latin-1, as L{read_config_text} reads it), without newline
    translation.  The file keeps its mode, owner and group; a new one gets
    those of the file C{like} (BackupPC's own C{config.pl}, so that BackupPC
    and its web interface can read it) or, without one, mode 0640 and the
    folder's group.  C{private}: the file holds a secret, and others (not
    its owner, not its group) lose any access.  On failure the old file is untouched
    and no temporary file is left.

    @raise EditRefused: the file changed since C{old_text} was read.
    @raise ConfigError: it cannot be read, encoded or written.
    """
    if new_text == old_text:
        return False
    path = Path(os.path.realpath(path))
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    current_text, current_encoding = _decode(current) if current is not None else ("", None)
    if current_text != (old_text or "") or (current is not None and old_text is None):
        raise EditRefused(f"{path} changed while it was being edited (another program or "
                          f"BackupPC's web editor saved it); nothing was written, run the "
                          f"command again")
    encoding = encoding or current_encoding or "utf-8"
    try:
        data = new_text.encode(encoding)
    except UnicodeEncodeError as e:
        raise ConfigError(f"cannot write {path} in its encoding {encoding}: "
                          f"{e.object[e.start:e.end]!r} has no {encoding} form") from None
    try:
        st = os.stat(path) if current is not None else _stat_or_none(like)
        gid = st.st_gid if st else os.stat(path.parent).st_gid
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}; nothing was changed") from None
    try:
        with open(fd, "wb") as f:
            mine = os.fstat(fd)
            owner = (st.st_uid if st else mine.st_uid, gid)
            if (mine.st_uid, mine.st_gid) != owner:
                os.fchown(fd, *owner)
            # After fchown, which may clear set-id bits.
            mode = stat.S_IMODE(st.st_mode) if st else 0o640
            os.fchmod(fd, mode & ~0o007 if private else mode)
            f.write(data)
            f.flush()
            os.fsync(fd)
        os.replace(temp, path)
    except BaseException as e:
        with suppress(OSError):
            os.unlink(temp)
        if isinstance(e, OSError):
            raise ConfigError(f"cannot write {path} with its owner, group and mode: "
                              f"{e.strerror or e}; nothing was changed") from None
        raise
    folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(folder)   # make the rename itself durable
    except OSError:
        pass               # some file systems cannot sync a folder; the rename is done
    finally:
        os.close(folder)
    return True
