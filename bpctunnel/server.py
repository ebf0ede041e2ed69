"""
The tunnel server: accepts clients' WebSockets and, for each connected client,
listens on 127.0.0.1:<RsyncdClientPort> for BackupPC.

Each TCP connection BackupPC makes to that port becomes one channel of the
client's tunnel (see L{bpctunnel.mux}).  The listener lives exactly as long as
the tunnel: when the WebSocket closes, the port closes and every carried
connection is aborted, so BackupPC sees a failed transfer rather than a
truncated one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from bpctunnel import framing
from bpctunnel.backuppc import TunnelSettings, authorize
from bpctunnel.errors import (
    AlreadyConnected,
    BpcTunnelError,
    PortUnavailable,
    ProtocolError,
    Refused,
    UnknownHost,
)
from bpctunnel.mux import ILocalEnd, Multiplexer
from bpctunnel.pki import common_name, fingerprint_sha256
from bpctunnel.tls import peer_certificate_der

TUNNEL_PATH = "/tunnel"


class TunnelRegistry:
    """The live tunnels, by host name: at most one per host."""

    def __init__(self):
        self._tunnels: dict[str, TunnelServerProtocol] = {}

    def reserve(self, host: str, tunnel: TunnelServerProtocol) -> None:
        """Claim C{host} for C{tunnel}, or raise L{AlreadyConnected}."""
        if host in self._tunnels:
            raise AlreadyConnected(
                host, "a tunnel for this host is already up; the newer connection was refused"
            )
        self._tunnels[host] = tunnel

    def release(self, host: str, tunnel: TunnelServerProtocol) -> None:
        """Forget C{tunnel}, if it is the one registered for C{host}."""
        if self._tunnels.get(host) is tunnel:
            del self._tunnels[host]

    def get(self, host: str) -> TunnelServerProtocol | None:
        return self._tunnels.get(host)

    def __iter__(self):
        return iter(list(self._tunnels.values()))

    def __len__(self) -> int:
        return len(self._tunnels)


@implementer(ILocalEnd, IHalfCloseableProtocol)
class LocalConnectionProtocol(Protocol):
    """
    One TCP connection from BackupPC, carried as one channel.

    Reading stays paused until the client has started rsync and granted
    credit, so the first bytes always have somewhere to go.
    """

    log = Logger()

    def __init__(self, tunnel: TunnelServerProtocol):
        self.tunnel = tunnel
        self.channel = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.channel = self.tunnel.mux.open_channel({"peer": f"{peer.host}:{peer.port}"})
        self.channel.attach(self)
        self.transport.registerProducer(self.channel, True)
        self.log.debug(
            "channel {channel_id} opened for {client_name}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
        )

    def dataReceived(self, data: bytes) -> None:
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
            "channel {channel_id} of {client_name} closed: {bytes_to_client} bytes to the "
            "client, {bytes_from_client} bytes from it{reason}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
            bytes_to_client=self.channel.bytes_out,
            bytes_from_client=self.channel.bytes_in,
            reason=f" ({self.channel.close_reason})" if self.channel.close_reason else "",
        )

    # ILocalEnd
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_eof(self) -> None:
        self.transport.loseWriteConnection()

    def close(self) -> None:
        self.transport.loseConnection()

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
    """Makes a L{LocalConnectionProtocol} for each connection from BackupPC."""

    noisy = False

    def __init__(self, tunnel: TunnelServerProtocol):
        self.tunnel = tunnel

    def buildProtocol(self, addr):
        if self.tunnel.mux is None or self.tunnel.mux.lost:
            return None
        return LocalConnectionProtocol(self.tunnel)


class TunnelServerProtocol(WebSocketServerProtocol):
    """
    One client's tunnel.

    The opening handshake authorizes the client (see
    L{bpctunnel.backuppc.authorize}) and opens its local port; a refusal is
    the HTTP error of the handshake, whose reason phrase the client prints.
    """

    # Autobahn keeps its own (txaio) logger in self._log.
    _log = Logger()

    host: str | None = None
    settings: TunnelSettings | None = None
    mux: Multiplexer | None = None
    listening_port: IListeningPort | None = None
    peer_address: str = ""
    _cleaned_up = False

    def onConnect(self, request):
        self.peer_address = _peer_of(self.transport)
        if request.path != TUNNEL_PATH:
            self._deny(404, f"no tunnel at {request.path[:100]}; the path is {TUNNEL_PATH}")
        if framing.SUBPROTOCOL not in request.protocols:
            offered = ", ".join(request.protocols)[:100] or "none"
            self._deny(
                426,
                f"unsupported protocol version: the client offers {offered}, this server "
                f"speaks {framing.SUBPROTOCOL}; install the same bpctunnel version on both",
            )
        return maybeDeferred(self._authorize).addCallbacks(
            lambda _: framing.SUBPROTOCOL, self._refuse
        )

    def _deny(self, status: int, reason: str):
        self._log.warn("refused {peer}: {reason}", peer=self.peer_address, reason=reason)
        raise ConnectionDeny(status, _reason_phrase(reason))

    def _authorize(self) -> Deferred:
        der = peer_certificate_der(self.transport)
        if der is None:
            raise UnknownHost("(no certificate)", "no client certificate was presented")
        name = common_name(der)
        settings = self.factory.authorize(name, fingerprint_sha256(der))
        self.factory.registry.reserve(settings.host, self)
        self.host = settings.host
        self.settings = settings
        d = self.factory.listen_local(settings.port, LocalListenerFactory(self))
        return d.addCallbacks(self._listening, self._listen_failed)

    def _listening(self, port: IListeningPort) -> None:
        if self._cleaned_up:
            port.stopListening()
            return
        self.listening_port = port
        self.mux = Multiplexer(self._send_message, is_server=True, name=self.host)

    def _listen_failed(self, failure):
        self.factory.registry.release(self.host, self)
        raise PortUnavailable(
            self.host,
            f"the server cannot listen on 127.0.0.1:{self.settings.port} "
            f"({failure.getErrorMessage()}); another program may hold it — change "
            f"$Conf{{RsyncdClientPort}} in {self.settings.config_path.name} or free the port",
        )

    def _refuse(self, failure):
        if failure.check(Refused):
            error = failure.value
            self._log.warn(
                "refused {client_name} from {peer}: {reason}",
                client_name=error.host,
                peer=self.peer_address,
                reason=str(error),
                refusal=error.reason,
            )
            raise ConnectionDeny(error.http_status, _reason_phrase(str(error)))
        if failure.check(BpcTunnelError):
            self._log.error(
                "cannot serve {peer}: {error}", peer=self.peer_address, error=failure.getErrorMessage()
            )
            raise ConnectionDeny(
                503, "server configuration error; the BackupPC admin must check the server log"
            )
        self._log.failure("unexpected error authorizing {peer}", failure, peer=self.peer_address)
        raise ConnectionDeny(500, "internal server error; see the server log")

    def onOpen(self) -> None:
        self.registerProducer(self.mux, True)
        self.factory.notify("up", self)
        self._log.info(
            "tunnel up for {client_name} from {peer}, listening on 127.0.0.1:{port}",
            client_name=self.host,
            peer=self.peer_address,
            port=self.settings.port,
        )

    def _send_message(self, payload: bytes) -> None:
        # Once the closing handshake has begun nothing more may be sent; the
        # multiplexer learns of the loss when the connection ends.
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.mux is None:
            return
        if not isBinary:
            self._protocol_error("a text message (the protocol is binary only)")
            return
        try:
            self.mux.message_received(payload)
        except ProtocolError as e:
            self._protocol_error(str(e))

    def _protocol_error(self, what: str) -> None:
        self._log.warn(
            "closing the tunnel of {client_name}: protocol error: {error}",
            client_name=self.host,
            error=what,
        )
        self.sendClose(code=framing.WS_CLOSE_PROTOCOL_ERROR, reason=f"protocol error: {what}"[:120])

    def onClose(self, wasClean: bool, code, reason) -> None:
        if self.host is not None and self.mux is not None:
            self._log.info(
                "tunnel of {client_name} closed: {reason}",
                client_name=self.host,
                reason=reason or f"code {code}",
            )
        self._cleanup(reason or "the tunnel closed")

    def connectionLost(self, reason) -> None:
        if self.host is None and reason.check(SSL.Error):
            # The client never got past TLS: say why, for the admin.
            self._log.warn(
                "TLS handshake with {peer} failed: {error}",
                peer=_peer_of(self.transport),
                error=tls_error_text(reason.value),
            )
        super().connectionLost(reason)
        self._cleanup("the tunnel connection was lost")

    def _cleanup(self, why: str) -> None:
        if self._cleaned_up:
            return
        self._cleaned_up = True
        if self.mux is not None:
            self.mux.tunnel_lost(f"the tunnel of {self.host} closed: {why}")
        if self.listening_port is not None:
            port, self.listening_port = self.listening_port, None
            port.stopListening()
        if self.host is not None:
            self.factory.registry.release(self.host, self)
        if self.mux is not None:
            self.factory.notify("down", self)

    def drop(self, reason: str) -> None:
        """Close this tunnel from the server side."""
        self.sendClose(code=framing.WS_CLOSE_NORMAL, reason=reason[:120])


def _peer_of(transport) -> str:
    peer = transport.getPeer() if transport is not None else None
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def tls_error_text(error: SSL.Error) -> str:
    """The reason strings of an OpenSSL error, e.g. 'certificate verify failed'."""
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and len(entry) == 3:
            reasons.append(str(entry[2]))
    return ", ".join(reasons) or str(error)


def _reason_phrase(text: str) -> str:
    # The refusal travels as the HTTP reason phrase: one line of text.
    return " ".join(text.split())


@attrs.frozen
class ServerSettings:
    """Where the server finds BackupPC's configuration."""

    backuppc_conf: Path


class TunnelServerFactory(WebSocketServerFactory):
    """
    Makes L{TunnelServerProtocol}s.

    @param reactor: used for the per-client listeners.
    @param listen_local: C{(port, factory) -> Deferred[IListeningPort]}, by
        default a TCP listener on 127.0.0.1.
    """

    protocol = TunnelServerProtocol

    def __init__(
        self,
        reactor,
        settings: ServerSettings,
        listen_local: Callable[[int, Factory], Deferred] | None = None,
        url: str = "wss://localhost/tunnel",
    ):
        super().__init__(url, protocols=[framing.SUBPROTOCOL], reactor=reactor)
        self.reactor = reactor
        self.settings = settings
        self.registry = TunnelRegistry()
        self.listen_local = listen_local or self._listen_tcp
        #: Callables C{(event, tunnel)} told of each tunnel going "up" and "down".
        self.observers: list[Callable] = []
        self.setProtocolOptions(
            # Our messages are binary; a DATA message is at most 64 KiB plus header.
            maxFramePayloadSize=1024 * 1024,
            maxMessagePayloadSize=1024 * 1024,
            openHandshakeTimeout=30,
            # No HTML status page for plain HTTP requests: nothing to see here.
            webStatus=False,
        )

    def notify(self, event: str, tunnel: TunnelServerProtocol) -> None:
        for observer in list(self.observers):
            observer(event, tunnel)

    def authorize(self, common_name: str, fingerprint: str) -> TunnelSettings:
        return authorize(self.settings.backuppc_conf, common_name, fingerprint)

    def _listen_tcp(self, port: int, factory: Factory) -> Deferred:
        return TCP4ServerEndpoint(self.reactor, port, interface="127.0.0.1").listen(factory)
