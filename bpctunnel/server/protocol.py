"""
The tunnel server: accepts clients' WebSockets and, for each connected client,
listens on 127.0.0.1:<RsyncdClientPort> for BackupPC.

Each TCP connection BackupPC makes to that port becomes one channel of the
client's tunnel (see L{bpctunnel.wire.mux}).  The listener lives exactly as long as
the tunnel: when the WebSocket closes, the port closes and every carried
connection is aborted, so BackupPC sees a failed transfer rather than a
truncated one.

While a tunnel is up the server keeps checking it: every new connection from
BackupPC, and every few seconds while idle, the client's certificate is
checked against its host config again (revocation takes effect at once), and
carried connections that sit idle or outlive their maximum are closed.

What happens to a connection is decided by its
L{bpctunnel.server.session.TunnelSession}, over the server's shared
L{bpctunnel.server.server_state.ServerState}; this module holds only the
Autobahn adapters (protocol and factory) and the wss listener.
"""

from __future__ import annotations

from typing import Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from bpctunnel.backuppc.server_mesg import BackupTrigger
from bpctunnel.server.handshake_refusals import HandshakeDenied
from bpctunnel.server.server_state import ServerState
from bpctunnel.server.session import ITunnelLink, TunnelSession
from bpctunnel.server.settings import ServerSettings
from bpctunnel.transport.autobahn_timers import ReactorTimer, cancel_close_timeout
from bpctunnel.transport.sockets import ride_out_outages
from bpctunnel.transport.tls import peer_certificate_der
from bpctunnel.transport.websocket_fast import FastBinaryMixin, forget_handshake
from bpctunnel.wire import framing


def _of_session(name: str) -> property:
    """What the rest of the server reads of a tunnel, kept by its session."""
    return property(lambda self: getattr(self.session, name),
                    doc=f"C{{{name}}} of the tunnel's L{{TunnelSession}}.")


@implementer(ITunnelLink)
class TunnelServerProtocol(FastBinaryMixin, WebSocketServerProtocol):
    """
    One client's connection: forwards Autobahn's events to its
    L{TunnelSession}, does for the session what only the WebSocket can
    (L{ITunnelLink}), and is the tunnel that the tunnels (TunnelRegistry), the status API,
    the metrics, the backup desk and the observers hold: what they read of
    it and ask of it is its session's.

    A refusal is the HTTP error of the opening handshake, whose reason
    phrase the client prints.
    """

    session: TunnelSession
    _started = False

    host = _of_session("host")
    settings = _of_session("settings")
    mux = _of_session("mux")
    listening_port = _of_session("listening_port")
    peer_address = _of_session("peer_address")
    peer_ip = _of_session("peer_ip")
    common_name = _of_session("common_name")
    fingerprint = _of_session("fingerprint")
    connected_at = _of_session("connected_at")
    certificate_expires = _of_session("certificate_expires")
    last_backup = _of_session("last_backup")
    served_modules = _of_session("served_modules")
    role = _of_session("role")
    watching = _of_session("watching")
    probe = _of_session("probe")
    ping = _of_session("ping")
    replace = _of_session("replace")
    may_carry_connection = _of_session("may_carry_connection")
    still_authorized = _of_session("still_authorized")
    check = _of_session("check")
    module_requested = _of_session("module_requested")
    send_control = _of_session("send_control")
    backup_done = _of_session("backup_done")
    close_tunnel = _of_session("close_tunnel")

    def connectionMade(self) -> None:
        self.session = TunnelSession(self.factory.state, self)
        peer_ip = getattr(self.transport.getPeer(), "host", "?")
        if not self.session.connection_made(peer_ip, _peer_of(self.transport)):
            self.transport.abortConnection()
            return
        self._started = True
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        # Until the tunnel opens, what a client sends is bounded: Autobahn
        # would keep headers that never end.
        if not self._started or (self.state == self.STATE_CONNECTING
                                 and not self.session.received_before_open(len(data))):
            return
        super().dataReceived(data)

    def onConnect(self, request):
        # Behind a proxy speaking the PROXY protocol, the client's real
        # address is only known once the header has been read.
        d = self.session.handshake(request.path, request.protocols,
                                   request.headers.get(framing.ROLE_HEADER.lower()),
                                   peer_certificate_der(self.transport), _peer_of(self.transport))
        return d.addErrback(_connection_deny)

    def onOpen(self) -> None:
        forget_handshake(self)
        self.registerProducer(self.session.mux, True)
        ride_out_outages(self.transport, self.session.keepalive.timeout)
        self.session.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.session.message_received(payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        # The pong's frame: a 2-byte header and the payload (at most 125 bytes).
        if self.session.ping_received(2 + len(payload)):
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self.session.pong_received(payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        self.session.closed(code, reason)

    def connectionLost(self, reason) -> None:
        tls_error = tls_error_text(reason.value) if reason.check(SSL.Error) else None
        if self._started:
            # Autobahn logs every failed TLS handshake as an error, one line
            # per connection; the session logs them within bounds.
            super().connectionLost(Failure(ConnectionLost(tls_error)) if tls_error is not None
                                   else reason)
            cancel_close_timeout(self)
        self.session.connection_lost(tls_error)

    # -- ITunnelLink (send_while_open and send_pieces_while_open: FastBinaryMixin)

    def send_ping(self, payload: bytes) -> None:
        self.sendPing(payload)

    def close_connection(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(code=code, reason=_close_reason(reason))

    def abort_connection(self) -> None:
        if self.state == self.STATE_OPEN:
            self.dropConnection(abort=True)
        else:
            # In its handshakes (a deadline, an eviction, a handshake too
            # large): the session logs it within bounds, and Autobahn's
            # dropConnection would add a warning per connection.
            self.transport.abortConnection()


def _connection_deny(failure):
    failure.trap(HandshakeDenied)
    raise ConnectionDeny(failure.value.http_status, _reason_phrase(failure.value.text))


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


def _close_reason(text: str) -> str:
    # A WebSocket close reason is at most 123 bytes of UTF-8.
    data = _reason_phrase(text).encode("utf-8")[:123]
    return data.decode("utf-8", "ignore")


class TunnelServerFactory(WebSocketServerFactory):
    """
    Makes L{TunnelServerProtocol}s over one L{ServerState}, whose checks of
    the live tunnels run while the factory is started.

    @param reactor: the reactor (listeners, timers).
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
        backup_trigger: BackupTrigger | None = None,
    ):
        super().__init__(url, protocols=[framing.SUBPROTOCOL], reactor=reactor)
        self.reactor = reactor
        self.settings = settings
        self.state = ServerState(reactor, settings, listen_local, backup_trigger)
        # The shared state under the names the service, the status API and
        # the tests use: the same objects.
        self.tunnels = self.state.tunnels
        self.metrics = self.state.metrics
        self.observers = self.state.observers
        self.watchers = self.state.watchers
        self.backup_desk = self.state.backup_desk
        self._batched_timer = ReactorTimer(reactor)
        self.setProtocolOptions(
            # Our messages are binary; a DATA message is at most 64 KiB plus header.
            maxFramePayloadSize=1024 * 1024,
            maxMessagePayloadSize=1024 * 1024,
            # The session keeps the handshake deadline and the keepalive
            # (settings.handshake_timeout, settings.keepalive), on its clock.
            openHandshakeTimeout=0,
            autoPingInterval=0,
            # No HTML status page for plain HTTP requests: nothing to see here.
            webStatus=False,
            # Our clients send unmasked frames (they travel inside TLS end to
            # end); masked ones, from older clients, are still accepted.
            requireMaskedClientFrames=False,
        )

    def startFactory(self) -> None:
        super().startFactory()
        self.state.start_checks()

    def stopFactory(self) -> None:
        self.state.stop_checks()
        self.state.outsiders.flush()
        super().stopFactory()

    def check_tunnels(self) -> None:
        """Check every live tunnel now (see L{TunnelSession.check})."""
        self.state.check_tunnels()
