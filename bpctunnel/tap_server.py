"""
twistd plugin for the tunnel server: C{twistd -n bpctunnel-server [options]}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from bpctunnel.backuppc import read_hosts
from bpctunnel.errors import BpcTunnelError
from bpctunnel.listen_address import parse_listen
from bpctunnel.server import ServerSettings, TunnelServerFactory
from bpctunnel.tls import server_tls_options

LONGDESC = """\
Accepts laptops' tunnels over WebSocket with mutual TLS (TLS 1.3) and, while
a laptop is connected, listens on 127.0.0.1:<RsyncdClientPort> so that
BackupPC's rsyncd transfer reaches the laptop's rsync through the tunnel.

Files:
  CERTS/ca.crt        the CA that signs client certificates
  CERTS/server.crt    the server's certificate, and
  CERTS/server.key    its private key
  CONF/hosts          BackupPC's hosts file: a client's certificate CN must be listed
  CONF/HOST.pl or CONF/pc/HOST.pl
                      the host's config: $Conf{ClientComment} holds
                      TunnelCert:sha256:<fingerprint>, $Conf{RsyncdClientPort}
                      the port to listen on.
The BackupPC files are read afresh for every new tunnel.
"""


class Options(usage.Options):
    """Command-line options of C{twistd bpctunnel-server}."""

    longdesc = LONGDESC
    optParameters = [
        ["listen", "l", "8443", "[ADDRESS:]PORT for the wss listener (IPv6 in brackets)."],
        ["certs", "c", "/etc/bpctunnel", "Folder holding ca.crt, server.crt and server.key."],
        ["backuppc-conf", "b", "/etc/backuppc", "BackupPC's configuration folder."],
    ]

    def postOptions(self) -> None:
        try:
            self["listen_address"] = parse_listen(self["listen"])
            self["tls"] = server_tls_options(Path(self["certs"]))
            conf = Path(self["backuppc-conf"])
            if not conf.is_dir():
                raise BpcTunnelError(f"BackupPC config folder {conf} does not exist (--backuppc-conf)")
            read_hosts(conf / "hosts")
        except BpcTunnelError as e:
            raise usage.UsageError(str(e)) from None


class _LoggingEndpointService(StreamServerEndpointService):
    log = Logger()

    def __init__(self, endpoint, factory, description: str):
        super().__init__(endpoint, factory)
        self._description = description

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        address = port.getHost()
        self.log.info("bpctunnel server listening on {host}:{port} ({description})",
                      host=address.host, port=address.port, description=self._description)
        return port


def makeService(options: Options, reactor=None):
    """Build the server's service from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor
    address = options["listen_address"]
    conf = Path(options["backuppc-conf"])
    factory = TunnelServerFactory(reactor, ServerSettings(backuppc_conf=conf))
    endpoint = SSL4ServerEndpoint(reactor, address.port, options["tls"], interface=address.interface)
    return _LoggingEndpointService(endpoint, factory, f"BackupPC config in {conf}")
