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
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Callable

import attrs
from attrs.validators import ge, instance_of
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

from bpctunnel.wire import framing
from bpctunnel.server.backup_requests import BackupDesk
from bpctunnel.backuppc.server_mesg import BackupTrigger
from bpctunnel.backuppc.hosts import TunnelSettings, authorize, read_hosts, read_perl_config
from bpctunnel.errors import (
    AlreadyConnected,
    BpcTunnelError,
    PortUnavailable,
    ProtocolError,
    Refused,
    UnknownHost,
)
from bpctunnel.backuppc.filecache import FileCache
from bpctunnel.server.backuppc_port import LocalListenerFactory
from bpctunnel.server.metrics import ServerMetrics
from bpctunnel.wire.mux import Multiplexer
from bpctunnel.pki import common_name, fingerprint_sha256, not_after
from bpctunnel.refusals import Refusal
from bpctunnel.server.tunnels import TunnelRegistry
from bpctunnel.transport.tls import peer_certificate_der
from bpctunnel.transport.autobahn_timers import ReactorTimer, cancel_close_timeout
from bpctunnel.transport.tls_bulk import wrap_server_tls
from bpctunnel.transport.websocket_fast import FastBinaryMixin, forget_handshake

TUNNEL_PATH = "/tunnel"
#: Seconds between log lines about connections dropped at a limit.
DROP_LOG_INTERVAL = 10.0
#: Bounds on a client's announced module list (names as rsyncd.conf allows).
MAX_MODULES = 256
MAX_MODULE_NAME = 255


@attrs.frozen
class ServerSettings:
    """
    The server's configuration.

    @ivar keepalive: seconds between WebSocket pings; a client silent for two
        intervals is dead and its port is freed.
    @ivar probe_timeout: how long an old tunnel has to answer when a new
        connection claims its host.
    @ivar check_interval: seconds between checks of idle tunnels (revocation,
        changed port, channel timeouts).
    @ivar idle_timeout: a carried connection with no data either way for this
        long is closed.
    @ivar max_connection_time: no carried connection lasts longer.
    @ivar max_channels: carried connections one client may have at once.
    @ivar max_unauthenticated: connections one address may have open before
        they have authenticated.
    @ivar handshake_timeout: seconds a connection may take to finish its TLS
        and WebSocket handshakes.
    @ivar max_handshakes: connections, from all addresses, that may be in
        their handshakes at once; more are dropped at once and their clients
        retry with backoff.  A fleet reconnecting after a server restart then
        gets through at the server's full speed, instead of every handshake
        slowing down until they all time out.
    """

    backuppc_conf: Path = attrs.field(converter=Path)
    keepalive: float = attrs.field(default=30.0, validator=[instance_of(float), ge(0.1)])
    probe_timeout: float = attrs.field(default=5.0, validator=[instance_of(float), ge(0.01)])
    check_interval: float = attrs.field(default=5.0, validator=[instance_of(float), ge(0.01)])
    idle_timeout: float = attrs.field(default=3600.0, validator=[instance_of(float), ge(1.0)])
    max_connection_time: float = attrs.field(default=4 * 3600.0,
                                             validator=[instance_of(float), ge(1.0)])
    max_channels: int = attrs.field(default=16, validator=[instance_of(int), ge(1)])
    max_unauthenticated: int = attrs.field(default=16, validator=[instance_of(int), ge(1)])
    #: Seconds from TCP accept to a finished WebSocket opening handshake (TLS included).
    handshake_timeout: float = attrs.field(default=30.0, validator=[instance_of(float), ge(0.1)])
    max_handshakes: int = attrs.field(default=1024, validator=[instance_of(int), ge(1)])


class TunnelServerProtocol(FastBinaryMixin, WebSocketServerProtocol):
    """
    One client's tunnel.

    The opening handshake authorizes the client (see
    L{bpctunnel.backuppc.hosts.authorize}) and opens its local port; a refusal is
    the HTTP error of the handshake, whose reason phrase the client prints.
    """

    # Autobahn keeps its own (txaio) logger in self.log.
    _log = Logger()

    host: str | None = None
    settings: TunnelSettings | None = None
    mux: Multiplexer | None = None
    listening_port: IListeningPort | None = None
    peer_address: str = ""
    peer_ip: str = ""
    common_name: str = ""
    fingerprint: str = ""
    connected_at: float | None = None
    certificate_expires = None
    last_backup: dict | None = None
    #: The modules the client's rsyncd.conf serves, as it announced them
    #: (None: a client from before that message).
    served_modules: tuple[str, ...] | None = None
    #: C{"backup-now"} from C{bpctunnel backup-now}: if a tunnel for the
    #: host is already up, this connection only watches (see L{watching}).
    role: str = "tunnel"
    #: A connection that holds no port and carries nothing: it asked for a
    #: backup that the host's live tunnel carries, and follows its progress.
    watching = False
    _cleaned_up = False
    _unauthenticated = False
    _started = False

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "?")
        self.peer_address = _peer_of(self.transport)
        self._down = Deferred()
        self._pings: dict[bytes, Deferred] = {}
        if not self.factory.admit(self.peer_ip, self.peer_address):
            self.transport.abortConnection()
            return
        self._unauthenticated = True
        self._started = True
        super().connectionMade()

    def _authenticated(self) -> None:
        if self._unauthenticated:
            self._unauthenticated = False
            self.factory.authenticated(self.peer_ip)

    def onConnect(self, request):
        # Behind a proxy speaking the PROXY protocol, the client's real
        # address is only known once the header has been read.
        self.peer_address = _peer_of(self.transport)
        if request.path != TUNNEL_PATH:
            wrong = Refusal.WRONG_PATH
            self._deny(wrong, f"{wrong.words} {request.path[:100]}; the path is {TUNNEL_PATH}")
        if request.headers.get(framing.ROLE_HEADER.lower()) == "backup-now":
            self.role = "backup-now"
        if framing.SUBPROTOCOL not in request.protocols:
            offered = ", ".join(request.protocols)[:100] or "none"
            self._deny(
                Refusal.UNSUPPORTED_PROTOCOL,
                f"{Refusal.UNSUPPORTED_PROTOCOL.words}: the client offers {offered}, this server "
                f"speaks {framing.SUBPROTOCOL}; install the same bpctunnel version on both",
            )
        return maybeDeferred(self._authorize).addCallbacks(
            lambda _: framing.SUBPROTOCOL, self._refuse
        )

    def _deny(self, refusal: Refusal, reason: str):
        # The reason may quote what the peer sent (its path, its protocols):
        # it goes to the log and back to the peer, never into a metric label.
        self._log.warn("refused {peer}: {reason}", peer=self.peer_address, reason=reason,
                       refusal_code=refusal.code)
        self.factory.metrics.refused(refusal)
        raise ConnectionDeny(refusal.http_status, _reason_phrase(reason))

    def _authorize(self) -> Deferred:
        der = peer_certificate_der(self.transport)
        if der is None:
            raise UnknownHost("(no certificate)", "no client certificate was presented")
        self.common_name, self.fingerprint = common_name(der), fingerprint_sha256(der)
        self.certificate_expires = not_after(der)
        settings = self.factory.authorize(self.common_name, self.fingerprint)
        self.host, self.settings = settings.host, settings
        d = self.factory.registry.claim(settings.host, self)
        d.addCallback(lambda _: self.factory.listen_local(settings.port, LocalListenerFactory(self)))
        d.addCallbacks(self._listening, self._listen_failed)
        if self.role == "backup-now":
            d.addErrback(self._watch)
        return d

    def _listening(self, port: IListeningPort) -> None:
        if self._cleaned_up:
            port.stopListening()
            return
        self.listening_port = port
        self._make_mux()

    def _watch(self, failure) -> None:
        # backup-now while the host's own client has the tunnel: follow it.
        failure.trap(AlreadyConnected)
        if self._cleaned_up:
            return
        self.watching = True
        self.factory.watchers.add(self)
        self._make_mux()

    def _make_mux(self) -> None:
        self.mux = Multiplexer(self.send_while_open, send_pieces=self.send_pieces_while_open,
                               is_server=True, name=self.host,
                               on_pong=self._pong, on_control=self._control,
                               clock=self.factory.reactor)

    def _listen_failed(self, failure):
        if failure.check(Refused):
            return failure
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
            refusal = error.refusal or Refusal.INTERNAL_ERROR
            self.factory.metrics.refused(refusal)
            self._log.warn(
                "refused {client_name} from {peer}: {reason}",
                client_name=error.host,
                peer=self.peer_address,
                reason=str(error),
                refusal=error.reason,
                refusal_code=refusal.code,
            )
            raise ConnectionDeny(error.http_status, _reason_phrase(str(error)))
        if failure.check(BpcTunnelError):
            refusal = Refusal.SERVER_CONFIG_ERROR
            self.factory.metrics.refused(refusal)
            self._log.error(
                "cannot serve {peer}: {error}", peer=self.peer_address, error=failure.getErrorMessage()
            )
            raise ConnectionDeny(refusal.http_status,
                                 f"{refusal.words}; the BackupPC admin must check the server log")
        refusal = Refusal.INTERNAL_ERROR
        self.factory.metrics.refused(refusal)
        self._log.failure("unexpected error authorizing {peer}", failure, peer=self.peer_address)
        raise ConnectionDeny(refusal.http_status, f"{refusal.words}; see the server log")

    def onOpen(self) -> None:
        self._authenticated()
        forget_handshake(self)
        self.connected_at = self.factory.reactor.seconds()
        self.factory.metrics.handshakes.inc()
        self.registerProducer(self.mux, True)
        if self.watching:
            self._log.info("backup-now of {client_name} from {peer} follows the tunnel already up",
                           client_name=self.host, peer=self.peer_address)
            return
        self.factory.notify("up", self)
        self._log.info(
            "tunnel up for {client_name} from {peer}, listening on 127.0.0.1:{port}",
            client_name=self.host,
            peer=self.peer_address,
            port=self.settings.port,
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # Once the tunnel is closed (say, after a protocol error) messages
        # still in flight are dropped, not logged one by one.
        if self.mux is None or self._cleaned_up:
            return
        if not isBinary:
            self._protocol_error("a text message (the protocol is binary only)")
            return
        try:
            self.mux.message_received(payload)
        except ProtocolError as e:
            self._protocol_error(str(e))

    def module_requested(self, module: str) -> None:
        """BackupPC asked for C{module} on one of this tunnel's connections."""
        self.factory.backup_desk.module_started(self.host, module)

    def send_control(self, body: dict) -> None:
        """Send a CONTROL message to the client, if the tunnel is still up."""
        if self.mux is not None and not self._cleaned_up:
            self.mux.send(framing.Control(body))

    def _control(self, body: dict) -> None:
        if body.get("type") == "backup-request":
            self.factory.backup_desk.request(self, full=body.get("full") is True)
        elif body.get("type") == "transfer-report" and not self.watching:
            # Only the connection that runs the laptop's rsync has any to make.
            self.factory.backup_desk.transfer_report(self.host, body)
        elif body.get("type") == "modules" and isinstance(body.get("modules"), list):
            self.served_modules = tuple(
                str(m)[:MAX_MODULE_NAME] for m in body["modules"][:MAX_MODULES])
        else:
            self._log.debug("ignoring control message {message_type} from {client_name}",
                            message_type=str(body.get("type"))[:40], client_name=self.host)

    def _protocol_error(self, what: str) -> None:
        self._log.warn(
            "closing the tunnel of {client_name}: protocol error: {error}",
            client_name=self.host,
            error=what,
        )
        self.close_tunnel(framing.WS_CLOSE_PROTOCOL_ERROR, f"protocol error: {what}")

    # -- probes, checks and being replaced ---------------------------------

    def probe(self, timeout: float) -> Deferred:
        """Fires with whether the client answers a PING within C{timeout} seconds."""
        if self.mux is None:
            return succeed(not self._cleaned_up)  # still in its own handshake
        return self.ping(timeout).addCallback(lambda rtt: rtt is not None)

    def ping(self, timeout: float) -> Deferred:
        """
        A round trip to the client through the tunnel: fires with the time in
        seconds, or C{None} if no answer came within C{timeout} seconds.
        """
        if self.mux is None or self.mux.lost:
            return succeed(None)
        clock = self.factory.reactor
        nonce = os.urandom(8)
        d = Deferred()
        self._pings[nonce] = (d, clock.seconds())
        call = clock.callLater(timeout, self._ping_timed_out, nonce)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        self.mux.send(framing.Ping(nonce))
        return d

    def _ping_timed_out(self, nonce: bytes) -> None:
        entry = self._pings.pop(nonce, None)
        if entry is not None:
            entry[0].callback(None)

    def _pong(self, payload: bytes) -> None:
        entry = self._pings.pop(payload, None)
        if entry is not None:
            d, sent = entry
            d.callback(self.factory.reactor.seconds() - sent)

    def replace(self, reason: str) -> Deferred:
        """Drop this (unresponsive) tunnel; fires once its port is closed."""
        self._log.warn("dropping the tunnel of {client_name} from {peer}: {reason}",
                       client_name=self.host, peer=self.peer_address, reason=reason)
        self._cleanup(reason)
        self.dropConnection(abort=True)
        return self._down

    def may_carry_connection(self) -> bool:
        """Whether BackupPC may open one more connection through this tunnel now."""
        if self.mux is None or self.mux.lost or not self.still_authorized():
            return False
        if len(self.mux.channels) >= self.factory.settings.max_channels:
            self._log.warn("refusing a connection to {client_name}: it already carries {count} "
                           "connections (the maximum)", client_name=self.host,
                           count=len(self.mux.channels))
            return False
        return True

    def still_authorized(self) -> bool:
        """Check the certificate against the host config again; drop the tunnel if revoked."""
        try:
            settings = self.factory.authorize(self.common_name, self.fingerprint)
        except Refused as e:
            self.close_tunnel(framing.WS_CLOSE_REVOKED, str(e), log=True)
            return False
        except BpcTunnelError as e:
            # The server's own files are broken (say, hosts vanished): keep
            # serving the tunnels we have, and say so.
            self._log.error("cannot re-check {client_name}: {error}", client_name=self.host,
                            error=str(e))
            return True
        if settings.port != self.settings.port:
            self.close_tunnel(framing.WS_CLOSE_NORMAL,
                              f"RsyncdClientPort of {self.host} changed from {self.settings.port} "
                              f"to {settings.port}; reconnect to use it", log=True)
            return False
        return True

    def check(self, now: float) -> None:
        """The periodic check: authorization, then carried connections' timeouts."""
        if self.mux is None or self.mux.lost or not self.still_authorized():
            return
        settings = self.factory.settings
        for channel in list(self.mux.channels.values()):
            if now - channel.opened_at > settings.max_connection_time:
                channel.reset(f"open for more than {settings.max_connection_time:g} seconds "
                              f"(--max-connection-time)")
            elif now - channel.last_activity > settings.idle_timeout:
                channel.reset(f"idle for more than {settings.idle_timeout:g} seconds "
                              f"(--idle-timeout)")

    def backup_done(self, ok: bool, detail: str = "", body: dict | None = None) -> None:
        """
        BackupPC says how a backup of this host ended: remember it, tell the
        client (with C{body}, the backup desk's full C{backup-done}, if given).
        """
        at = datetime.datetime.fromtimestamp(self.factory.reactor.seconds(), datetime.timezone.utc)
        self.last_backup = {"ok": ok, "at": at.isoformat(timespec="seconds"), "detail": detail}
        self._log.info("BackupPC reports the backup of {client_name} {outcome}{detail}",
                       client_name=self.host, outcome="succeeded" if ok else "failed",
                       detail=f": {detail}" if detail else "")
        self.send_control(body or {"type": "backup-done", "host": self.host, "ok": ok,
                                   "detail": detail})

    def close_tunnel(self, code: int, reason: str, log: bool = False) -> None:
        """Close from the server side with a reason the client shows; free the port now."""
        if log:
            self._log.warn("dropping the tunnel of {client_name}: {reason}",
                           client_name=self.host, reason=reason)
        if self.state == self.STATE_OPEN:
            self.sendClose(code=code, reason=_close_reason(reason))
        self._cleanup(reason)

    # -- the end -----------------------------------------------------------

    def onClose(self, wasClean: bool, code, reason) -> None:
        if self.host is not None and self.mux is not None and not self._cleaned_up:
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
                peer=self.peer_address,
                error=tls_error_text(reason.value),
            )
        self._authenticated()
        if self._started:
            super().connectionLost(reason)
            cancel_close_timeout(self)
            self._cleanup("the tunnel connection was lost")

    def _cleanup(self, why: str) -> None:
        if self._cleaned_up:
            return
        self._cleaned_up = True
        pings, self._pings = list(self._pings.values()), {}
        for d, _ in pings:
            d.callback(None)
        if self.mux is not None:
            self.mux.tunnel_lost(f"the tunnel of {self.host} closed: {why}")
        closed = succeed(None)
        if self.listening_port is not None:
            port, self.listening_port = self.listening_port, None
            closed = maybeDeferred(port.stopListening)
        if self.host is not None:
            self.factory.registry.release(self.host, self)
            self.factory.watchers.discard(self)
            self.factory.backup_desk.forget(self)
        if self.mux is not None and not self.watching:
            self.factory.metrics.tunnel_closed(self)
            self.factory.notify("down", self)
        closed.chainDeferred(self._down)


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
    Makes L{TunnelServerProtocol}s, and checks the live tunnels every
    C{settings.check_interval} seconds while it is started.

    @param reactor: the reactor (listeners, timers).
    @param listen_local: C{(port, factory) -> Deferred[IListeningPort]}, by
        default a TCP listener on 127.0.0.1.
    """

    protocol = TunnelServerProtocol
    _log = Logger()

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
        self.registry = TunnelRegistry(settings.probe_timeout)
        self.metrics = ServerMetrics(self.registry)
        self.listen_local = listen_local or self._listen_tcp
        #: Callables C{(event, tunnel)} told of each tunnel going "up" and "down".
        self.observers: list[Callable] = []
        #: backup-now connections that follow another connection's tunnel.
        self.watchers: set[TunnelServerProtocol] = set()
        self.backup_desk = BackupDesk(reactor, self.registry, backup_trigger)
        self._read_hosts = FileCache(read_hosts)
        self._read_config = FileCache(read_perl_config)
        self._unauthenticated: dict[str, int] = {}
        self._handshaking = 0
        self._drops = 0
        self._last_drop_log: float | None = None
        self._checker = LoopingCall(self.check_tunnels)
        self._checker.clock = reactor
        self._batched_timer = ReactorTimer(reactor)
        self.setProtocolOptions(
            # Our messages are binary; a DATA message is at most 64 KiB plus header.
            maxFramePayloadSize=1024 * 1024,
            maxMessagePayloadSize=1024 * 1024,
            openHandshakeTimeout=settings.handshake_timeout,
            # No HTML status page for plain HTTP requests: nothing to see here.
            webStatus=False,
            autoPingInterval=settings.keepalive,
            autoPingTimeout=settings.keepalive,
            # Our clients send unmasked frames (they travel inside TLS end to
            # end); masked ones, from older clients, are still accepted.
            requireMaskedClientFrames=False,
        )

    def startFactory(self) -> None:
        super().startFactory()
        if not self._checker.running:
            self._checker.start(self.settings.check_interval, now=False).addErrback(
                lambda f: self._log.failure("the tunnel checks stopped", f))

    def stopFactory(self) -> None:
        if self._checker.running:
            self._checker.stop()
        super().stopFactory()

    def check_tunnels(self) -> None:
        """Check every live tunnel (see L{TunnelServerProtocol.check})."""
        now = self.reactor.seconds()
        for tunnel in [*self.registry, *self.watchers]:
            try:
                tunnel.check(now)
            except Exception:
                self._log.failure("checking the tunnel of {client_name} failed",
                                  client_name=tunnel.host)

    def admit(self, ip: str, peer: str) -> bool:
        """
        Count a new connection from C{ip}, unless it is over a limit on
        unauthenticated connections: then log why (at most every
        L{DROP_LOG_INTERVAL} seconds) and return False.
        """
        settings = self.settings
        if self._unauthenticated.get(ip, 0) >= settings.max_unauthenticated:
            self._dropped(peer, f"more than {settings.max_unauthenticated} connections from "
                                f"{ip} have not authenticated yet",
                          Refusal.TOO_MANY_FROM_ONE_ADDRESS)
            return False
        if self._handshaking >= settings.max_handshakes:
            self._dropped(peer, f"{settings.max_handshakes} connections are in their handshakes "
                                f"already (--max-handshakes); the client retries later",
                          Refusal.BUSY)
            return False
        self._unauthenticated[ip] = self._unauthenticated.get(ip, 0) + 1
        self._handshaking += 1
        return True

    def authenticated(self, ip: str) -> None:
        """A connection L{admit}ted from C{ip} authenticated, or went away."""
        self._handshaking -= 1
        count = self._unauthenticated.get(ip, 0) - 1
        if count <= 0:
            self._unauthenticated.pop(ip, None)
        else:
            self._unauthenticated[ip] = count

    def _dropped(self, peer: str, why: str, refusal: Refusal) -> None:
        self.metrics.refused(refusal)
        self._drops += 1
        now = self.reactor.seconds()
        if self._last_drop_log is None or now - self._last_drop_log >= DROP_LOG_INTERVAL:
            more = f" ({self._drops - 1} more dropped since the last such line)" \
                if self._drops > 1 else ""
            self._log.warn("dropping a connection from {peer}: {why}{more}", peer=peer, why=why,
                           more=more)
            self._last_drop_log, self._drops = now, 0

    def notify(self, event: str, tunnel: TunnelServerProtocol) -> None:
        for observer in list(self.observers):
            observer(event, tunnel)

    def authorize(self, common_name: str, fingerprint: str) -> TunnelSettings:
        return authorize(self.settings.backuppc_conf, common_name, fingerprint,
                         read_hosts_file=self._read_hosts, read_config=self._read_config)

    def _listen_tcp(self, port: int, factory: Factory) -> Deferred:
        return TCP4ServerEndpoint(self.reactor, port, interface="127.0.0.1").listen(factory)


@implementer(IStreamServerEndpoint)
class TunnelEndpoint:
    """
    The wss listener: TLS on a TCP port, optionally behind a PROXY protocol
    header (v1 or v2, as HAProxy's C{send-proxy-v2} or nginx's
    C{proxy_protocol on} send it), so that the client's real address is the
    one logged and reported while TLS stays end to end.
    """

    def __init__(self, reactor, port: int, tls, interface: str = "", proxy_protocol: bool = False):
        self.reactor, self.port, self.tls = reactor, port, tls
        self.interface, self.proxy_protocol = interface, proxy_protocol

    def listen(self, factory) -> Deferred:
        tcp = TCP4ServerEndpoint(self.reactor, self.port, interface=self.interface)
        if self.proxy_protocol:
            # The PROXY header comes before the TLS handshake, so it is read
            # on plain TCP and TLS starts after it.
            tcp = proxyEndpoint(tcp)
        return wrap_server_tls(self.tls, tcp, self.reactor).listen(factory)
