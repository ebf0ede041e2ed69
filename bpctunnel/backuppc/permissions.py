"""
Who can read a file: the question C{bpctunnel check} asks for BackupPC's
user and for the server's user, whoever runs C{check}.

Run as root, C{os.access} would answer for root, which can read anything;
BackupPC then failed with "Can't read PC's config file ... Permission denied"
while C{check} said "no problems".  So the answer here comes from the file's
and its folders' owner, group and mode bits, and the user's groups, as the
kernel decides for a process of that user (ACLs aside).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import attrs


@attrs.frozen
class Account:
    """A local user and the groups it belongs to."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> Account | None:
        """The account called C{name}, or None if this machine has none."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, entry.pw_uid, frozenset(gids))


def _owner_text(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group} {stat.S_IMODE(st.st_mode):04o}"


def _allowed(st: os.stat_result, account: Account, want: int) -> bool:
    """C{want} is a combination of 4 (read) and 1 (execute/search), as in "other" bits."""
    if account.uid == 0:
        return not (want & 1) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == account.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in account.gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def unreadable_reason(path: Path, account: Account) -> str | None:
    """
    Why C{account} cannot read C{path}, in words an admin can act on; None
    when it can (or when C{path} does not exist: other checks report that).
    """
    path = Path(os.path.abspath(path))
    try:
        target = Path(os.path.realpath(path))
        st = os.stat(target)
    except OSError:
        return None
    for folder in reversed(target.parents):
        try:
            folder_st = os.stat(folder)
        except OSError:
            return None
        if not _allowed(folder_st, account, 1):
            return (f"{account.name} cannot enter {folder} ({_owner_text(folder_st)}), so it "
                    f"cannot read {path}")
    if not _allowed(st, account, 4):
        return f"{account.name} cannot read {path} ({_owner_text(st)})"
    return None
