"""
The laptop's rsync daemon asks BackupPC for the host's own secret.

The port a laptop's tunnel gets on the BackupPC server is reachable by every
process there, and a BackupPC user who may edit a host's config can point
it at another host's port.  So the port is not the credential: each host
has a secret of its own that only BackupPC (and the CGI's group) can read,
C{$Conf{RsyncdUserName}} and C{$Conf{RsyncdPasswd}} in its host config,
which BackupPC's rsyncd transfer already sends.  C{register-client} writes
it there and into the laptop's bundle (C{rsyncd.secrets}, mode 600, one
C{user:secret} line, the format of rsync's own secrets file).

The client hands it to each rsync daemon it starts as C{auth users} and a
C{secrets file} that is a pipe (C{/dev/fd/4}): the secret never lands in a
file rsync can be told to read, and rsync's C{strict modes} check passes
(a pipe belongs to our user, mode 600).  A module that names its own C{auth
users} keeps them.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

import attrs

from bpctunnel.errors import ConfigError

#: The daemon's file descriptor for its secrets file: a pipe we write.
SECRETS_FD = 4
#: The user BackupPC names when it connects (its C{RsyncdUserName}).
DEFAULT_USER = "backuppc"
#: rsync reads a user name up to white space, ',' or ':'.
_USER = re.compile(r"[A-Za-z0-9._@-]{1,64}")
#: Printable ASCII without white space: safe in a Perl single-quoted string
#: once quoted, in an environment variable and in rsync's secrets file.
_SECRET = re.compile(r"[!-~]{16,256}")


@attrs.frozen
class RsyncAuth:
    """One host's rsync daemon credentials."""

    user: str = attrs.field()
    secret: str = attrs.field(repr=False)

    @user.validator
    def _check_user(self, _attribute, value):
        if not isinstance(value, str) or not _USER.fullmatch(value):
            raise ConfigError(f"rsync user name {value!r} must be 1-64 letters, digits or ._@-")

    @secret.validator
    def _check_secret(self, _attribute, value):
        if not isinstance(value, str) or not _SECRET.fullmatch(value):
            raise ConfigError("the rsync secret must be 16-256 printable characters "
                              "without spaces")

    @classmethod
    def generate(cls, user: str = DEFAULT_USER) -> RsyncAuth:
        """A new, random secret for C{user}."""
        return cls(user, secrets.token_urlsafe(32))

    def secrets_line(self) -> bytes:
        """The line of rsync's secrets file that holds this secret."""
        return f"{self.user}:{self.secret}\n".encode("ascii")

    def daemon_overrides(self) -> list[str]:
        """C{--dparam} options that make every module ask for this secret."""
        return [f"--dparam=authusers={self.user}", f"--dparam=secretsfile=/dev/fd/{SECRETS_FD}"]


def parse_secrets(text: str, source: str) -> RsyncAuth:
    """The one C{user:secret} line of a bundle's C{rsyncd.secrets}."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1 or ":" not in lines[0]:
        raise ConfigError(f"{source} must hold one line user:secret (as register-client "
                          f"writes it), found {len(lines)} line(s)")
    user, _, secret = lines[0].partition(":")
    try:
        return RsyncAuth(user, secret)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def read_secrets(path: Path) -> RsyncAuth:
    """
    L{parse_secrets} of the file at C{path}, which only its owner may read.

    @raise ConfigError: unreadable, readable by others, or malformed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise ConfigError(f"cannot read rsync secrets {path}: {e.strerror}") from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        mode = os.fstat(f.fileno()).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigError(f"{path} holds the secret BackupPC's backups of this laptop "
                              f"are checked with: make it readable by its owner only "
                              f"(chmod 600 {path})")
        return parse_secrets(f.read(64 * 1024), str(path))
