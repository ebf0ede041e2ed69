"""
The tunnel client, run on the laptop: one outbound WebSocket over mutual TLS,
and an rsync daemon process for each connection BackupPC makes through it.
"""

from __future__ import annotations

import re
from typing import Callable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from bpctunnel.wire import framing
from bpctunnel.client.config import ClientConfig, InlinePem, pem_and_source
from bpctunnel.errors import ConfigError, ProtocolError
from bpctunnel.transport.http_connect import HTTPConnectEndpoint
from bpctunnel.transport.sockets import ride_out_outages
from bpctunnel.wire.mux import Channel, Multiplexer
from bpctunnel.refusals import Notice, Refusal, advice_for
from bpctunnel.wire.peer_text import peer_text, peer_values
from bpctunnel.client.retry import RetryPolicy, TunnelNotOpened, TunnelService
from bpctunnel.client.rsync_daemon import RsyncLauncher, log_daemon_identity
from bpctunnel.client.rsyncd_conf import read_rsyncd_conf
from bpctunnel.transport.autobahn_timers import ReactorTimer, cancel_close_timeout
from bpctunnel.transport.tls import client_tls_options, client_tls_options_from
from bpctunnel.transport.tls_bulk import wrap_client_tls
from bpctunnel.transport.websocket_fast import FastBinaryMixin

_UPGRADE_FAILED = re.compile(r"upgrade failed \[(\d+)\]: (.*?)\"?\)?$")

#: What TLS alerts from the server mean for the laptop's user.
TLS_ADVICE = {
    "unknown ca": "the server does not accept this certificate: it was not issued by the "
                  "server's CA; ask the BackupPC admin for a new bundle",
    "certificate required": "the server requires a client certificate; set cert and key",
    "unsupported certificate": "this certificate is not a client certificate; use the "
                               "HOST.crt from your bundle",
    "certificate verify failed": "the server's certificate is not signed by the CA in "
                                 "the 'ca' setting; check that ca points to your bundle's ca.crt",
    "protocol version": "the other side does not speak TLS 1.3",
}


def tls_advice(reason: str | None) -> str | None:
    """Advice for a tunnel that closed because of a TLS alert, if it did."""
    for words, advice in TLS_ADVICE.items():
        if words in (reason or ""):
            return advice
    return None


def duration(seconds: float) -> str:
    """C{90} -> '90 seconds', C{300} -> '5 minutes'."""
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return "1 second" if seconds == 1 else f"{seconds:g} seconds"


def refusal_from_close_reason(reason: str | None) -> tuple[int, str] | None:
    """
    The HTTP status and reason phrase of a refused opening handshake, as
    Autobahn reports it in C{onClose}, or C{None} if C{reason} is something else.
    """
    match = _UPGRADE_FAILED.search(reason or "")
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


#: A server whose ping stays unanswered this many keepalive intervals is gone.
DEAD_AFTER_INTERVALS = 2


class TunnelClientProtocol(FastBinaryMixin, WebSocketClientProtocol):
    """
    The client's side of one tunnel.

    @ivar control_listener: called with each control message from the
        server, after the factory's observers (backup-now's).
    """

    # Autobahn keeps its own (txaio) logger in self._log.
    _log = Logger()
    mux: Multiplexer | None = None
    control_listener: Callable[[dict], None] | None = None

    def __init__(self):
        super().__init__()
        #: None while the opening handshake runs, then True, or the TunnelNotOpened.
        self._opening: bool | TunnelNotOpened | None = None
        self._open_waiters: list[Deferred] = []
        #: Why the tunnel closed, once it has.
        self._closed_reason: str | None = None
        self._close_waiters: list[Deferred] = []

    @property
    def tunnel_protocol(self) -> TunnelClientProtocol:
        """This protocol, also when read through C{ClientService}'s proxy of it."""
        return self

    def when_open(self) -> Deferred:
        """
        Fires with this protocol once the WebSocket is open, or fails with
        L{TunnelNotOpened} if the connection closes first; cancelling it
        aborts the connection.
        """
        if self._opening is True:
            return succeed(self)
        if self._opening is not None:
            return fail(self._opening)
        d = Deferred(self._abort_opening)
        self._open_waiters.append(d)
        return d

    def _abort_opening(self, _waiter: Deferred) -> None:
        # ClientService cancels its wait when it is stopped mid-handshake.
        if self.transport is not None:
            self.transport.abortConnection()

    def when_closed(self) -> Deferred:
        """Fires with why the tunnel closed (the refusal, if refused), once it has."""
        if self._closed_reason is not None:
            return succeed(self._closed_reason)
        d = Deferred()
        self._close_waiters.append(d)
        return d

    def _opened(self, outcome: bool | TunnelNotOpened) -> None:
        self._opening = outcome
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            if d.called:
                continue  # cancelled
            if outcome is True:
                d.callback(self)
            else:
                d.errback(outcome)

    def onConnect(self, response) -> None:
        if response.protocol != framing.SUBPROTOCOL:
            raise ProtocolError(
                f"the server answered with protocol {response.protocol!r}, "
                f"not {framing.SUBPROTOCOL}"
            )

    def onOpen(self) -> None:
        self.mux = Multiplexer(
            self.send_while_open,
            send_pieces=self.send_pieces_while_open,
            is_server=False,
            accept_channel=self.factory.accept_channel,
            on_control=self._control,
            name=self.factory.config.host,
            clock=self.factory.reactor,
        )
        self.registerProducer(self.mux, True)
        ride_out_outages(self.transport, DEAD_AFTER_INTERVALS * self.factory.config.keepalive)
        self.factory.current = self
        self.factory.retry_policy.tunnel_opened()
        self._log.info("tunnel up to {url}", url=self.factory.config.server)
        modules = self.factory.served_modules()
        if modules is not None:
            # So that `bpctunnel check HOST` can compare them with what
            # BackupPC expects; servers before this message ignore it.
            self.mux.send(framing.Control({"type": "modules", "modules": modules}))
        self.factory.tunnel_opened(self)
        # Now ClientService takes the connection (prepareConnection).
        self._opened(True)

    def _control(self, body: dict) -> None:
        # Everything the server says reaches our log and terminal: one line,
        # control characters escaped, bounded.
        body = peer_values(body)
        if body.get("type") == "backup-done":
            ok = bool(body.get("ok"))
            detail = str(body.get("detail") or "")
            emit = self._log.info if ok else self._log.error
            emit("BackupPC reports the backup of {client_name} {outcome}{detail}",
                 client_name=self.factory.config.host, outcome="succeeded" if ok else "failed",
                 detail=f": {detail}" if detail else "")
            self.factory.backup_reported(ok, detail)
        self.factory.control_received(self, body)
        if self.control_listener is not None:
            self.control_listener(body)

    def close_tunnel(self, reason: str) -> None:
        """Close the tunnel cleanly from this side."""
        # A TLS transport only shuts down once its producer has gone.
        self.unregisterProducer()
        self.sendClose(code=framing.WS_CLOSE_NORMAL, reason=reason[:120])

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        cancel_close_timeout(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.mux is None:
            return
        try:
            if not isBinary:
                raise ProtocolError("the server sent a text message")
            self.mux.message_received(payload)
        except ProtocolError as e:
            self._protocol_error(e)

    def onPing(self, payload: bytes) -> None:
        # Answers the server does not read count against its budget; the
        # pong's frame is a 2-byte header and the payload.
        if self.mux is not None:
            if self.mux.failed is not None:
                return
            try:
                self.mux.answering(2 + len(payload))
            except ProtocolError as e:
                self._protocol_error(e)
                return
        super().onPing(payload)

    def _protocol_error(self, error: ProtocolError) -> None:
        self._log.warn("closing the tunnel: protocol error: {error}", error=str(error))
        self.sendClose(code=framing.WS_CLOSE_PROTOCOL_ERROR,
                       reason=f"protocol error: {error}"[:120])

    def onClose(self, wasClean: bool, code, reason) -> None:
        reason = peer_text(reason, 1000) if reason else reason
        refusal = refusal_from_close_reason(reason)
        if refusal is None and code == framing.WS_CLOSE_REVOKED and reason:
            refusal = (403, reason)
        if refusal is not None:
            status, text = refusal
            known = Refusal.from_text(text)
            retry = ""
            if known is not None and known.needs_admin:
                retry = f" (retrying every {duration(self.factory.retry_policy.maximum)} until then)"
            self._log.error(
                "refused by server: {refusal}; {advice}{retry}",
                refusal=text,
                advice=advice_for(text),
                retry=retry,
                http_status=status,
                refusal_code=known.code if known is not None else None,
            )
        elif tls_advice(reason) is not None:
            self._log.error("TLS with {url} failed: {reason}; {advice}", url=self.factory.config.server,
                           reason=reason, advice=tls_advice(reason))
        elif self.mux is not None and Notice.from_text(reason) is Notice.SERVER_RESTARTING:
            # News, not a failure: one line, with what happens next.
            self._log.info("tunnel to {url} closed: {advice}", url=self.factory.config.server,
                           advice=Notice.SERVER_RESTARTING.advice, reason=reason,
                           notice=Notice.SERVER_RESTARTING.code)
        elif self.mux is not None:
            emit = self._log.info if wasClean else self._log.warn
            emit("tunnel to {url} closed: {reason}", url=self.factory.config.server,
                 reason=reason or f"code {code}")
        else:
            self._log.warn("could not open the tunnel to {url}: {reason}",
                          url=self.factory.config.server, reason=reason or f"code {code}")
        if self.mux is not None:
            self.mux.tunnel_lost(f"the tunnel closed: {reason}")
        if self.factory.current is self:
            self.factory.current = None
        refusal_text = refusal[1] if refusal else None
        said = refusal_text or reason or "the connection closed"
        # Before ClientService asks the policy how long to wait.
        self.factory.retry_policy.tunnel_closed(refusal_text)
        if self._opening is None:
            # ClientService counts one more failed attempt.
            self._opened(TunnelNotOpened(refusal_text, said))
        self.factory.tunnel_closed(self, refusal_text, reason)
        self._closed_reason = said
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(self._closed_reason)


class TunnelClientFactory(WebSocketClientFactory):
    """
    Makes L{TunnelClientProtocol}s.

    @param accept_channel: starts the local end of each channel the server
        opens (by default an L{RsyncLauncher}).
    @param role: C{"backup-now"} for L{bpctunnel.client.backup_now}: if the host's
        tunnel is already up elsewhere, the server lets this connection
        follow it instead of refusing it.
    """

    protocol = TunnelClientProtocol

    def __init__(self, reactor, config: ClientConfig,
                 accept_channel: Callable[[Channel], object] | None = None,
                 role: str | None = None):
        headers = {framing.ROLE_HEADER: role} if role else None
        super().__init__(config.server, protocols=[framing.SUBPROTOCOL], reactor=reactor,
                         headers=headers)
        self.config = config
        self.accept_channel = accept_channel or RsyncLauncher(
            reactor, config.rsync, config.rsyncd_conf, config.host, auth=config.rsync_auth,
            allow_restore=config.allow_restore,
        )
        self.setProtocolOptions(
            maxFramePayloadSize=1024 * 1024,
            maxMessagePayloadSize=1024 * 1024,
            openHandshakeTimeout=30,
            # A server that answers no ping for two intervals is gone (a
            # laptop that slept, a NAT that forgot us): reconnect.  Not one
            # interval: an outage that begins just before a ping must cost
            # no backup if it is shorter than the documented dead-peer time.
            autoPingInterval=config.keepalive,
            autoPingTimeout=DEAD_AFTER_INTERVALS * config.keepalive,
            # Masking protects intermediaries that read WebSocket frames in the
            # clear; ours travel inside TLS end to end, and XOR-ing every byte
            # costs the client and the server CPU on each (issue 8).
            maskClientFrames=False,
        )
        self._batched_timer = ReactorTimer(reactor)
        self.retry_policy = RetryPolicy(initial=config.retry_initial, maximum=config.retry_max)
        self.observers: list = []
        #: The open tunnel, if any.
        self.current: TunnelClientProtocol | None = None

    def served_modules(self) -> list[str] | None:
        """The modules of our rsyncd.conf as it is now (None if we run no rsync)."""
        if not isinstance(self.accept_channel, RsyncLauncher):
            return None
        try:
            return sorted(read_rsyncd_conf(self.accept_channel.rsyncd_conf)[1])
        except ConfigError:
            return []

    def tunnel_opened(self, protocol: TunnelClientProtocol) -> None:
        for observer in list(self.observers):
            observer("open", protocol, None)

    def backup_reported(self, ok: bool, detail: str) -> None:
        for observer in list(self.observers):
            observer("backup-done", self.current, {"ok": ok, "detail": detail})

    def control_received(self, protocol: TunnelClientProtocol, body: dict) -> None:
        for observer in list(self.observers):
            observer("control", protocol, body)

    def tunnel_closed(self, protocol, refusal: str | None, reason: str | None) -> None:
        for observer in list(self.observers):
            observer("closed", protocol, refusal or reason)


def client_tls(config: ClientConfig):
    """
    The client's TLS options: our certificate, and the server's checked
    against C{ca}; each of C{ca}, C{cert}, C{key} a file or inline PEM.
    """
    settings = (config.ca, config.cert, config.key)
    if not any(isinstance(s, InlinePem) for s in settings):
        return client_tls_options(config.server_host, *settings)
    (ca, ca_source), (cert, cert_source), (key, key_source) = map(pem_and_source, settings)
    return client_tls_options_from(config.server_host, ca, cert, key, ca_source=ca_source,
                                   cert_source=cert_source, key_source=key_source)


def client_endpoint(reactor, config: ClientConfig, tls=None):
    """
    The mutual-TLS endpoint of the server named in C{config}, through its
    HTTP proxy if it has one (TLS still runs end to end, inside CONNECT).
    """
    tls = tls or client_tls(config)
    if config.proxy is None:
        tcp = HostnameEndpoint(reactor, config.server_host, config.server_port)
    else:
        tcp = HTTPConnectEndpoint(
            HostnameEndpoint(reactor, config.proxy.host, config.proxy.port),
            config.server_host, config.server_port, config.proxy.authorization,
            clock=reactor, proxy_url=config.proxy.url)
    return wrap_client_tls(tls, tcp, reactor)


class TunnelClientService(TunnelService):
    """Keeps the tunnel up, reconnecting with backoff; closes it cleanly on stop."""

    _described = None

    def __init__(self, endpoint, factory: TunnelClientFactory, clock):
        super().__init__(endpoint, factory, clock)
        self.factory = factory
        self.reactor = clock

    def startService(self):
        launcher = self.factory.accept_channel
        if isinstance(launcher, RsyncLauncher):
            # `rsync --version`, for the log; stopping waits for it (milliseconds),
            # and for every rsync daemon it stops.
            self._described = log_daemon_identity(self.reactor, launcher.rsync,
                                                  launcher.rsyncd_conf, launcher.euid)
        return super().startService()

    def stopService(self):
        if self.factory.current is not None:
            self.factory.current.close_tunnel("the client is stopping")
        stopped = super().stopService()
        waits = [stopped]
        if self._described is not None and not self._described.called:
            waits.append(self._described)
        launcher = self.factory.accept_channel
        if isinstance(launcher, RsyncLauncher):
            waits.append(launcher.stop_all("the client is stopping"))
        return gatherResults(waits, consumeErrors=True)


def make_client_service(reactor, config: ClientConfig, factory: TunnelClientFactory | None = None,
                        tls=None) -> TunnelClientService:
    """A service that keeps the tunnel to the server in C{config} up."""
    factory = factory or TunnelClientFactory(reactor, config)
    return TunnelClientService(client_endpoint(reactor, config, tls), factory, reactor)
