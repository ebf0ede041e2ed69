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
    TUNNEL_CERT_RE,
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


#: Seconds a map of which host has which port is reused for new tunnels: it
#: costs a look at every host config (1,000 stat calls for 1,000 hosts), once
#: per handshake it made a fleet's reconnect ten times slower.
PORT_MAP_MAX_AGE = 2.0


class HostAuthorization:
    """
    The hosts file and host configs under C{backuppc_conf}, asked about certificates.

    @param clock: an C{IReactorTime}: with one, the map of ports that new
        tunnels are checked against is rebuilt at most every
        L{PORT_MAP_MAX_AGE} seconds (a connection from BackupPC always
        looks again); without, on every question.
    """

    log = Logger()

    def __init__(self, backuppc_conf: Path, clock=None):
        self.backuppc_conf = Path(backuppc_conf)
        self._read_hosts = FileCache(read_hosts)
        self._read_config = FileCache(read_perl_config)
        self._clock = clock
        #: (when it was made, port -> hosts), or None.
        self._port_map: tuple[float, dict[int, set[str]]] | None = None

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
        others = sorted(self.hosts_on_port(found.port, fresh=False) - {found.host})
        if others:
            raise PortShared(found.host, f"RsyncdClientPort {found.port} of {found.host} is also "
                                         f"that of {', '.join(others)} in BackupPC's config: a "
                                         f"backup of either would read the other's laptop")
        return found

    def hosts_on_port(self, port: int, fresh: bool = True) -> set[str]:
        """
        The hosts of BackupPC's hosts file whose own config sets C{port}
        (files cached); unless C{fresh}, from a map at most
        L{PORT_MAP_MAX_AGE} seconds old.
        """
        now = self._clock.seconds() if self._clock is not None else None
        if (fresh or now is None or self._port_map is None
                or now - self._port_map[0] >= PORT_MAP_MAX_AGE):
            self._port_map = (now or 0.0, self._ports())
        return set(self._port_map[1].get(port, ()))

    def _settings(self, name: str):
        """
        C{(host, value)} of setting C{name} in each readable own config of
        the hosts in BackupPC's hosts file (files cached: only changed ones
        are parsed again); nothing if the hosts file cannot be read (that
        is reported where it is read to authorize).
        """
        layout = config_layout(self.backuppc_conf)
        try:
            hosts = self._read_hosts(self.backuppc_conf / "hosts")
        except BpcTunnelError:
            return
        for host in hosts:
            try:
                path = find_host_config(self.backuppc_conf, host, layout)
                value = self._read_config(path).get(name) if path else None
            except BpcTunnelError:
                continue
            yield host, value

    def _ports(self) -> dict[int, set[str]]:
        ports: dict[int, set[str]] = {}
        for host, value in self._settings("RsyncdClientPort"):
            if isinstance(value, str) and value.isdigit():
                ports.setdefault(int(value), set()).add(host)
        return ports

    def tunnel_hosts(self) -> set[str]:
        """The hosts of BackupPC's hosts file whose own config holds a C{TunnelCert}."""
        return {host for host, comment in self._settings("ClientComment")
                if isinstance(comment, str) and TUNNEL_CERT_RE.search(comment)}

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
