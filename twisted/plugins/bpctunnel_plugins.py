"""twistd plugins for bpctunnel: `twistd bpctunnel-server` and `twistd bpctunnel-client`."""

from twisted.application.service import ServiceMaker

BpcTunnelServer = ServiceMaker(
    "bpctunnel server",
    "bpctunnel.tap_server",
    "WebSocket/mTLS tunnel endpoint that gives BackupPC a port per connected laptop",
    "bpctunnel-server",
)

BpcTunnelClient = ServiceMaker(
    "bpctunnel client",
    "bpctunnel.tap_client",
    "Keeps a laptop's tunnel to the bpctunnel server up and runs rsync for BackupPC",
    "bpctunnel-client",
)
