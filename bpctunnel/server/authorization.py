"""
Which client certificate may hold which host's tunnel, asked of BackupPC's
files when a client connects and again while its tunnel is up.

The decision itself is L{bpctunnel.backuppc.hosts.authorize}; this module
keeps the parsed files (read again only when they change) and says what a
live tunnel's re-check means: the tunnel stays, or it closes with a reason.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from twisted.logger import Logger

from bpctunnel.backuppc.filecache import FileCache
from bpctunnel.backuppc.hosts import AuthorizedHost, authorize, read_hosts, read_perl_config
from bpctunnel.errors import BpcTunnelError, Refused
from bpctunnel.wire import framing


@attrs.frozen
class Revocation:
    """A live tunnel must close: with this WebSocket close code and reason."""

    close_code: int
    reason: str


class HostAuthorization:
    """The hosts file and host configs under C{backuppc_conf}, asked about certificates."""

    log = Logger()

    def __init__(self, backuppc_conf: Path):
        self.backuppc_conf = Path(backuppc_conf)
        self._read_hosts = FileCache(read_hosts)
        self._read_config = FileCache(read_perl_config)

    def authorize(self, common_name: str, fingerprint: str) -> AuthorizedHost:
        """
        The host a certificate may tunnel for, and its port.

        @raise Refused: not authorized (the text says why).
        @raise BpcTunnelError: the server's own files are broken.
        """
        return authorize(self.backuppc_conf, common_name, fingerprint,
                         read_hosts_file=self._read_hosts, read_config=self._read_config)

    def recheck(self, held: AuthorizedHost, common_name: str,
                fingerprint: str) -> Revocation | None:
        """
        Ask again about the certificate of a tunnel that holds C{held}:
        C{None} if it may stay, else why it must close (revoked, or its port
        changed).  If the server's own files cannot be read, the tunnels
        already up keep serving and the error is logged.
        """
        try:
            now = self.authorize(common_name, fingerprint)
        except Refused as e:
            return Revocation(framing.WS_CLOSE_REVOKED, str(e))
        except BpcTunnelError as e:
            self.log.error("cannot re-check {client_name}: {error}", client_name=held.host,
                           error=str(e))
            return None
        if now.port != held.port:
            return Revocation(framing.WS_CLOSE_NORMAL,
                              f"RsyncdClientPort of {held.host} changed from {held.port} "
                              f"to {now.port}; reconnect to use it")
        return None
