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
from bpctunnel.backuppc.hosts import (
    AuthorizedHost,
    authorize,
    find_host_config,
    read_hosts,
    read_perl_config,
)
from bpctunnel.backuppc.layout import config_layout
from bpctunnel.errors import BpcTunnelError, PortShared, Refused
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

    def authorize_new(self, common_name: str, fingerprint: str) -> AuthorizedHost:
        """
        L{authorize}, for a tunnel that is not up yet: also refused if another
        host of BackupPC's has the same C{RsyncdClientPort}, since a backup
        of either would then read whichever laptop holds the port.

        @raise PortShared: naming the other host(s).
        """
        found = self.authorize(common_name, fingerprint)
        others = sorted(self.hosts_on_port(found.port) - {found.host})
        if others:
            raise PortShared(found.host, f"RsyncdClientPort {found.port} of {found.host} is also "
                                         f"that of {', '.join(others)} in BackupPC's config: a "
                                         f"backup of either would read the other's laptop")
        return found

    def hosts_on_port(self, port: int) -> set[str]:
        """The hosts of BackupPC's hosts file whose own config sets C{port} (files cached)."""
        layout = config_layout(self.backuppc_conf)
        found = set()
        try:
            hosts = self._read_hosts(self.backuppc_conf / "hosts")
        except BpcTunnelError:
            return found        # reported where the hosts file is read to authorize
        for host in hosts:
            try:
                path = find_host_config(self.backuppc_conf, host, layout)
                value = self._read_config(path).get("RsyncdClientPort") if path else None
            except BpcTunnelError:
                continue
            if isinstance(value, str) and value.isdigit() and int(value) == port:
                found.add(host)
        return found

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
