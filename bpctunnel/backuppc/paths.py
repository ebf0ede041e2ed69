"""
Where bpctunnel's server keeps its certificates and BackupPC its
configuration, and the plain readings of BackupPC's files that the admin's
tools, C{bpctunnel check} and the server's dashboard share.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from bpctunnel.backuppc.hosts import read_config_text
from bpctunnel.backuppc.perlconf import parse_perl_config
from bpctunnel.errors import ConfigError

DEFAULT_CERTS = Path("/etc/bpctunnel")
DEFAULT_CONF = Path("/etc/backuppc")
#: Certificates this close to expiry are reissued rather than reused, and flagged by check.
RENEW_WITHIN_DAYS = 30

#: BackupPC skips a host whose ping takes longer than $Conf{PingMaxMsec}
#: (default 20 ms); a laptop's round trip through its tunnel is the whole
#: Internet path, often 30-300 ms, so tunnel hosts get this instead.
TUNNEL_PING_MAX_MSEC = 2000

#: What register-client wrote as RsyncdPasswd before hosts had secrets of
#: their own (bpctunnel.client.rsync_auth): such a host relies on its port alone.
RSYNCD_PASSWD_PLACEHOLDER = "unused-bpctunnel-authenticates-with-tls"


@attrs.frozen
class Paths:
    """Where the server's certificates and BackupPC's configuration live."""

    certs: Path = DEFAULT_CERTS
    conf: Path = DEFAULT_CONF

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.certs / "ca.key"

    @property
    def server_conf(self) -> Path:
        return self.certs / "server.conf"

    def issued_cert(self, host: str) -> Path:
        """A copy of the certificate last issued to C{host} (for expiry checks)."""
        return self.certs / "clients" / f"{host}.crt"

    @property
    def hosts(self) -> Path:
        return self.conf / "hosts"

    @property
    def config_pl(self) -> Path:
        """BackupPC's global config: new host configs get its owner, group and mode."""
        return self.conf / "config.pl"


def backuppc_setting(paths: Paths, name: str, default=None):
    """A plain setting of BackupPC's config.pl (C{default} if absent or unreadable)."""
    try:
        value = read_host_config(paths.config_pl)[1].get(name)
    except ConfigError:
        return default
    return default if value is None else value


def backuppc_user(paths: Paths) -> str:
    """The user BackupPC runs as ($Conf{BackupPCUser}), who must read host configs."""
    user = backuppc_setting(paths, "BackupPCUser", "backuppc")
    return user if isinstance(user, str) and user else "backuppc"


def host_config_files(conf: Path) -> dict[Path, str]:
    """Every host config in C{conf} and C{conf/pc} (once each), by path -> host."""
    found: dict[Path, str] = {}
    seen: set[Path] = set()
    for folder in (conf, conf / "pc"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.pl")):
            if path.name == "config.pl" or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            found[path] = path.name[:-3]
    return found


def read_host_config(path: Path):
    """Parse a host config; returns (text, PerlConfig)."""
    text = read_config_text(path, "host config")
    return text, parse_perl_config(text, str(path))
