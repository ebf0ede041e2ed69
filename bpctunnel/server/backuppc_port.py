"""
The server's end of a channel: one TCP connection from BackupPC to
127.0.0.1:<RsyncdClientPort>.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from bpctunnel.transport.sockets import release_and_close, tune_for_bulk
from bpctunnel.wire.rsync_greeting import ModuleSniffer
from bpctunnel.wire.mux import LOCAL_READ_SIZE, ILocalEnd


@implementer(ILocalEnd, IHalfCloseableProtocol)
class LocalConnectionProtocol(Protocol):
    """
    One TCP connection from BackupPC, carried as one channel.

    Reading stays paused until the client has started rsync and granted
    credit, so the first bytes always have somewhere to go.
    """

    log = Logger()

    def __init__(self, tunnel):
        self.tunnel = tunnel
        self.channel = None
        self._greeting = ModuleSniffer()

    @property
    def module(self) -> str | None:
        """The rsyncd module BackupPC asked for, once known."""
        return self._greeting.module

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        tune_for_bulk(self.transport, LOCAL_READ_SIZE)
        self.channel = self.tunnel.mux.open_channel({"peer": f"{peer.host}:{peer.port}"})
        self.channel.attach(self)
        self.transport.registerProducer(self.channel, True)
        self.log.debug(
            "channel {channel_id} opened for {client_name}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
        )

    def dataReceived(self, data: bytes) -> None:
        if not self._greeting.done:
            self._greeting.feed(data)
            if self._greeting.module is not None:
                self.tunnel.module_requested(self._greeting.module)
        self.channel.local_data(data)

    def readConnectionLost(self) -> None:
        self.channel.local_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        error = None
        if reason is not None and not reason.check(ConnectionDone):
            error = f"BackupPC's connection failed: {reason.getErrorMessage()}"
        self.channel.local_closed(error)
        self.log.info(
            "channel {channel_id} of {client_name} closed: module {module}, {bytes_to_client} "
            "bytes to the client, {bytes_from_client} bytes from it{reason}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
            module=self.module or "(module list)",
            bytes_to_client=self.channel.bytes_out,
            bytes_from_client=self.channel.bytes_in,
            reason=f" ({self.channel.close_reason})" if self.channel.close_reason else "",
        )

    # ILocalEnd
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_eof(self) -> None:
        release_and_close(self.transport, half=True)

    def close(self) -> None:
        release_and_close(self.transport)

    def abort(self, reason: str) -> None:
        self.log.warn(
            "aborting BackupPC's connection on channel {channel_id} of {client_name}: {reason}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
            reason=reason,
        )
        self.transport.abortConnection()

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()


class LocalListenerFactory(Factory):
    """
    Makes a L{LocalConnectionProtocol} for each connection from BackupPC,
    after asking the tunnel whether it may carry one more (the client may
    have been revoked, or have too many connections open).
    """

    noisy = False

    def __init__(self, tunnel):
        self.tunnel = tunnel

    def buildProtocol(self, addr):
        if not self.tunnel.may_carry_connection():
            return None
        return LocalConnectionProtocol(self.tunnel)
