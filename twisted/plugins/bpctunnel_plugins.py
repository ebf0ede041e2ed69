"""twistd plugins for bpctunnel: `twistd bpctunnel-server` and `twistd bpctunnel-client`."""

from twisted.application.service import ServiceMaker

BpcTunnelServer = ServiceMaker(
    "bpctunnel server",
    "bpctunnel.server.service",
    "WebSocket/mTLS tunnel endpoint that gives BackupPC a port per connected laptop",
    "bpctunnel-server",
)

BpcTunnelClient = ServiceMaker(
    "bpctunnel client",
    "bpctunnel.client.service",
    "Keeps a laptop's tunnel to the bpctunnel server up and runs rsync for BackupPC",
    "bpctunnel-client",
)
