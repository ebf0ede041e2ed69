"""
twistd plugin for the tunnel client: C{twistd -n bpctunnel-client --config FILE}.
"""

from __future__ import annotations

from twisted.python import usage

from bpctunnel.transport.allocator import keep_bulk_buffers
from bpctunnel.client.protocol import client_tls, make_client_service
from bpctunnel.client.config import load_client_config
from bpctunnel.errors import BpcTunnelError
from bpctunnel.twistd_options import PluginOptions

LONGDESC = """\
Keeps one outbound WebSocket (mutual TLS) to the bpctunnel server up, and for
each connection BackupPC makes through it runs rsync's daemon for that one
connection, inetd-style (on a socket pair, never on a port):
    rsync --daemon --config=RSYNCD_CONF
No port is opened on this machine.  FILE is an INI file:

    [bpctunnel]
    server = wss://backup.example.org:8443/tunnel
    ca = ca.crt
    cert = laptop1.crt
    key = laptop1.key
    rsyncd_conf = rsyncd.conf
    rsync = rsync          (optional)
    proxy = http://proxy.example.org:3128   (optional; or none)

ca, cert and key may also hold the PEM text itself, indented under the key
(a FILE holding the key must be mode 600).  Without proxy, https_proxy or
HTTPS_PROXY from the environment is used unless no_proxy/NO_PROXY names the
server or the server is this machine; proxy = none connects directly.  TLS
runs end to end through the proxy (HTTP CONNECT).

Relative paths are relative to FILE's folder; the options below override it.
"""


class Options(PluginOptions):
    command = "bpctunnel-client"

    """Command-line options of C{twistd bpctunnel-client}."""

    longdesc = LONGDESC
    optParameters = [
        ["config", "f", None, "The client's INI file."],
        ["server", None, None, "wss:// URL of the server (overrides the file)."],
        ["ca", None, None, "CA certificate that signed the server's certificate."],
        ["cert", None, None, "This client's certificate (its CN is the BackupPC host name)."],
        ["key", None, None, "This client's private key."],
        ["rsyncd-conf", None, None, "rsyncd.conf with the modules BackupPC may read."],
        ["rsync", None, None, "The rsync binary (default: rsync on PATH)."],
    ]

    def postOptions(self) -> None:
        overrides = {
            key: self[key.replace("_", "-")]
            for key in ("server", "ca", "cert", "key", "rsyncd_conf", "rsync")
        }
        try:
            self["client_config"] = load_client_config(self["config"], overrides)
            self["tls"] = client_tls(self["client_config"])
        except BpcTunnelError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor=None):
    """Build the client's service from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor
    keep_bulk_buffers()
    return make_client_service(reactor, options["client_config"], tls=options["tls"])
