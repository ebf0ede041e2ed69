"""
One client's connection to the tunnel server, from accept to close, as a
plain object: admission, the opening handshake's authorization and
refusals, the local port for BackupPC, keepalive, the periodic re-check
(revocation, carried connections' timeouts), being probed and replaced by a
newer connection, backup-now, and the end.

The session knows no WebSocket library and no reactor beyond the server's
clock: L{bpctunnel.server.protocol.TunnelServerProtocol} forwards Autobahn's
events to it and does for it what only the connection can (L{ITunnelLink}),
so the tests drive a session with a fake link and a
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import datetime

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.logger import Logger
from zope.interface import Interface

from bpctunnel.backuppc.hosts import AuthorizedHost
from bpctunnel.errors import (
    AlreadyConnected,
    BadCertificate,
    CertificateError,
    PortShared,
    PortUnavailable,
    ProtocolError,
    Refused,
    TooManyWatchers,
    UnknownHost,
)
from bpctunnel.pki import common_name, fingerprint_sha256, not_after
from bpctunnel.refusals import Refusal
from bpctunnel.server.admission import HandshakeSlot
from bpctunnel.server.backup_requests import MAX_WATCHERS
from bpctunnel.server.backuppc_port import LocalListenerFactory
from bpctunnel.server.keepalive import Keepalive, RoundTrips
from bpctunnel.server.server_state import ServerState
from bpctunnel.wire import framing
from bpctunnel.wire.mux import Multiplexer

TUNNEL_PATH = "/tunnel"
#: A client whose ping stays unanswered this many keepalive intervals is dead.
DEAD_AFTER_INTERVALS = 2
#: backup-now connections that may follow one host's tunnel at once (with
#: the tunnel itself, the backup desk's L{MAX_WATCHERS} of one request).
MAX_FOLLOWERS = MAX_WATCHERS - 1
#: The most a client may send before its tunnel opens (its HTTP upgrade
#: request is a few hundred bytes; proxies add a few headers).
MAX_HANDSHAKE_BYTES = 16 * 1024
#: BackupPC's connection goes straight into a tunnel that carried data from
#: the client within this many seconds; into a quieter one only once the
#: client answers a probe (--probe-timeout): its link may have died since.
RECENT_DATA = 2.0
#: Bounds on a client's announced module list (names as rsyncd.conf allows).
MAX_MODULES = 256
MAX_MODULE_NAME = 255


class ITunnelLink(Interface):
    """
    What a L{TunnelSession} needs of its connection.  The link is also the
    tunnel as the tunnels (TunnelRegistry), the watchers, the backup desk and the observers
    hold it, answering for the session.
    """

    def send_while_open(payload):
        """Send one binary message, unless the closing handshake has begun."""

    def send_pieces_while_open(pieces):
        """The same for a message given in pieces (byte strings)."""

    def send_ping(payload):
        """Send a WebSocket ping frame carrying C{payload}."""

    def close_connection(code, reason):
        """Begin the closing handshake with C{code} and C{reason}, if the tunnel is open."""

    def abort_connection():
        """Drop the connection at once."""


class TunnelSession:
    """
    One client's connection and, once it is authorized, its tunnel.

    @param server: the server's shared state.
    @param link: the connection (an L{ITunnelLink}).
    """

    log = Logger()

    host: str | None = None
    settings: AuthorizedHost | None = None
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
    _slot: HandshakeSlot | None = None
    _deadline: IDelayedCall | None = None
    _handshake_bytes = 0
    #: When data last came from the client through a channel (C{None}: never).
    data_heard_at: float | None = None

    def __init__(self, server: ServerState, link):
        self.server = server
        self.link = link
        self.clock = server.clock
        self._down = Deferred()
        self._gone = False
        self._gone_waiters: list[Deferred] = []
        self._pings = RoundTrips(self.clock, self._send_ping_message)
        # BackupPC's probes (L{probe_if_silent}): any sign of life answers them.
        self._probes = RoundTrips(self.clock, self._send_ping_message)
        interval = server.settings.keepalive
        # The dead-peer time the README promises: a ping unanswered for two
        # intervals, so an outage shorter than that costs no tunnel wherever
        # it falls relative to the pings (issue 16).
        self.keepalive = Keepalive(self.clock, interval, DEAD_AFTER_INTERVALS * interval,
                                   link.send_ping, self._keepalive_failed,
                                   on_round_trip=self._round_trip)

    # -- from accept to open -----------------------------------------------

    def connection_made(self, peer_ip: str, peer_address: str) -> bool:
        """
        A connection was accepted: whether it may go on to its handshakes
        (see L{bpctunnel.server.admission}).  If so, it has
        C{handshake_timeout} seconds to open its tunnel.
        """
        self.peer_ip, self.peer_address = peer_ip, peer_address
        self._slot = self.server.handshakes.admit(peer_ip, peer_address,
                                                  evict=self.link.abort_connection)
        if self._slot is None:
            return False
        self._deadline = self.clock.callLater(self.server.settings.handshake_timeout,
                                              self._handshake_timed_out)
        return True

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        self.log.debug("{peer} did not finish its handshakes within {timeout:g} seconds",
                       peer=self.peer_address, timeout=self.server.settings.handshake_timeout)
        self.link.abort_connection()

    def received_before_open(self, size: int) -> bool:
        """
        C{size} more bytes arrived before the tunnel opened: whether the
        connection is still within L{MAX_HANDSHAKE_BYTES}.  If not, it is
        dropped (and the line that says so is among a bounded few).
        """
        self._handshake_bytes += size
        if self._handshake_bytes <= MAX_HANDSHAKE_BYTES:
            return True
        self.server.handshakes.failed(
            "oversized opening handshakes",
            "dropping the connection from {peer}: its opening handshake is larger than "
            "{limit} KiB", peer=self.peer_address, limit=MAX_HANDSHAKE_BYTES // 1024)
        self.link.abort_connection()
        return False

    def _handshake_over(self) -> None:
        # The connection authenticated, or went away: its place is free.
        if self._slot is not None:
            self._slot.release()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def handshake(self, path: str, protocols, role: str | None, certificate_der: bytes | None,
                  peer_address: str) -> Deferred:
        """
        The client's opening handshake asks for C{path} with C{protocols}
        (and C{role}, its C{X-Bpctunnel-Role} header): fires with the
        subprotocol once the client is authorized and its port is open (or
        it follows the host's live tunnel), or fails with
        L{bpctunnel.server.handshake_refusals.HandshakeDenied}.

        @param peer_address: the client's address, now that a PROXY header
            (if any) has been read.
        """
        self.peer_address = peer_address
        if self._slot is not None:
            # Its request is being answered: no newcomer takes its place now.
            self._slot.requested()
        refusals = self.server.refusals
        if path != TUNNEL_PATH:
            wrong = Refusal.WRONG_PATH
            return fail(refusals.deny(peer_address, wrong,
                                      f"{wrong.words} {path[:100]}; the path is {TUNNEL_PATH}"))
        if role == "backup-now":
            self.role = "backup-now"
        if framing.SUBPROTOCOL not in protocols:
            offered = ", ".join(protocols)[:100] or "none"
            return fail(refusals.deny(
                peer_address, Refusal.UNSUPPORTED_PROTOCOL,
                f"{Refusal.UNSUPPORTED_PROTOCOL.words}: the client offers {offered}, this server "
                f"speaks {framing.SUBPROTOCOL}; install the same bpctunnel version on both",
            ))
        return maybeDeferred(self._authorize, certificate_der).addCallbacks(
            lambda _: framing.SUBPROTOCOL, self._refuse
        )

    def _authorize(self, der: bytes | None) -> Deferred:
        if der is None:
            raise UnknownHost("(no certificate)", "no client certificate was presented")
        try:
            self.common_name = common_name(der)
        except CertificateError as e:
            raise BadCertificate("(no host name)", str(e)) from None
        self.fingerprint = fingerprint_sha256(der)
        self.certificate_expires = not_after(der)
        settings = self.server.authorization.authorize_new(self.common_name, self.fingerprint)
        self.host, self.settings = settings.host, settings
        d = self.server.tunnels.claim(settings.host, self.link)
        listener = LocalListenerFactory(self, self.server.local_users, self.server.outsiders)
        d.addCallback(lambda _: self.server.listen_local(settings.port, listener))
        d.addCallbacks(self._listening, self._listen_failed)
        if self.role == "backup-now":
            d.addErrback(self._watch)
        return d

    def _listening(self, port: IListeningPort) -> None:
        if self._cleaned_up:
            # The connection went away while it waited for its claim.
            port.stopListening()
            self.server.tunnels.release(self.host, self.link)
            return
        self.listening_port = port
        self._make_mux()

    def _watch(self, failure) -> None:
        # backup-now while the host's own client has the tunnel: follow it.
        failure.trap(AlreadyConnected)
        if self._cleaned_up:
            return
        following = sum(1 for link in self.server.watchers if link.host == self.host)
        if following >= MAX_FOLLOWERS:
            raise TooManyWatchers(self.host, f"{following} are following its tunnel already "
                                             f"(at most {MAX_FOLLOWERS})")
        self.watching = True
        self.server.watchers.add(self.link)
        self._make_mux()

    def _make_mux(self) -> None:
        self.mux = Multiplexer(self.link.send_while_open,
                               send_pieces=self.link.send_pieces_while_open,
                               is_server=True, name=self.host,
                               on_pong=self._pings.answered, on_control=self._control,
                               clock=self.clock,
                               max_window=self.server.settings.max_window,
                               window_budget=self.server.window_budget,
                               # The server's one channel limit, --max-channels.
                               max_channels=self.server.settings.max_channels)

    def _listen_failed(self, failure):
        if failure.check(Refused):
            return failure
        self.server.tunnels.release(self.host, self.link)
        raise PortUnavailable(
            self.host,
            f"the server cannot listen on 127.0.0.1:{self.settings.port} "
            f"({failure.getErrorMessage()}); another program may hold it — change "
            f"$Conf{{RsyncdClientPort}} in {self.settings.config_path.name} or free the port",
        )

    def _refuse(self, failure):
        raise self.server.refusals.refuse(self.peer_address, failure)

    def opened(self) -> None:
        """The opening handshake is done: the tunnel is up (or follows the host's)."""
        self._handshake_over()
        self.connected_at = self.clock.seconds()
        self.server.metrics.handshakes.inc()
        self.keepalive.start()
        self.server.open_sessions.add(self)
        if self.watching:
            self.log.info("backup-now of {client_name} from {peer} follows the tunnel already up",
                          client_name=self.host, peer=self.peer_address)
            return
        self.server.notify("open", self.link)
        self.log.info(
            "tunnel up for {client_name} from {peer}, listening on 127.0.0.1:{port}",
            client_name=self.host,
            peer=self.peer_address,
            port=self.settings.port,
        )

    # -- while open ----------------------------------------------------------

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """A WebSocket message came from the client."""
        self.keepalive.heard_from_peer()
        self._heard_from_client()
        # Once the tunnel is closed (say, after a protocol error) messages
        # still in flight are dropped, not logged one by one.
        if self.mux is None or self._cleaned_up:
            return
        if not is_binary:
            self._protocol_error("a text message (the protocol is binary only)")
            return
        bytes_in = self.mux.bytes_in
        try:
            self.mux.message_received(payload)
        except ProtocolError as e:
            self._protocol_error(str(e))
        if self.mux.bytes_in != bytes_in:
            self.data_heard_at = self.clock.seconds()

    def pong_received(self, payload: bytes) -> None:
        """A WebSocket pong frame came from the client."""
        self.keepalive.pong(payload)
        self._heard_from_client()

    def _round_trip(self, seconds: float) -> None:
        if self.host is not None and not self.watching:
            self.server.history.round_trip(self.host, seconds)

    def _keepalive_failed(self) -> None:
        self._log_closed(f"ping timeout: no answer within {self.keepalive.timeout:g} seconds "
                         f"(two --keepalive intervals)")
        self._cleanup("the client stopped answering pings")
        self.link.abort_connection()

    def module_requested(self, module: str) -> None:
        """BackupPC asked for C{module} on one of this tunnel's connections."""
        self.server.backup_desk.module_started(self.host, module)

    def send_control(self, body: dict) -> None:
        """Send a CONTROL message to the client, if the tunnel is still up."""
        if self.mux is not None and not self._cleaned_up:
            self.mux.send(framing.Control(body))

    def _control(self, body: dict) -> None:
        desk = self.server.backup_desk
        if body.get("type") == "backup-request":
            self.server.history.backup_requested(self.host)
            desk.request(self.link, full=body.get("full") is True)
        elif body.get("type") == "transfer-report" and not self.watching:
            # Only the connection that runs the laptop's rsync has any to make.
            desk.transfer_report(self.host, body)
        elif body.get("type") == "modules" and isinstance(body.get("modules"), list):
            self.served_modules = tuple(
                str(m)[:MAX_MODULE_NAME] for m in body["modules"][:MAX_MODULES])
        else:
            # Allowed (a newer client may say more), but counted: a flood of
            # them is logged in sums and, past the budget, closes the tunnel.
            self.mux.violation("unknown control messages",
                               f"ignoring control message {str(body.get('type'))[:40]!r}")

    def ping_received(self, size: int) -> bool:
        """
        The client sent a WebSocket ping whose answer is C{size} bytes:
        whether to answer it.  Answers the client does not read count
        against its budget (L{Multiplexer.answering}); past it, the tunnel
        closes.
        """
        self._heard_from_client()
        if self.mux is None:
            return True
        if self.mux.failed is not None:
            return False
        try:
            self.mux.answering(size)
        except ProtocolError as e:
            self._protocol_error(str(e))
            return False
        return True

    def _protocol_error(self, what: str) -> None:
        self.log.warn(
            "closing the tunnel of {client_name}: protocol error: {error}",
            client_name=self.host,
            error=what,
        )
        self.close_tunnel(framing.WS_CLOSE_PROTOCOL_ERROR, f"protocol error: {what}")

    def backup_done(self, ok: bool, detail: str = "", body: dict | None = None) -> None:
        """
        BackupPC says how a backup of this host ended: remember it, tell the
        client (with C{body}, the backup desk's full C{backup-done}, if given).
        """
        at = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        self.last_backup = {"ok": ok, "at": at.isoformat(timespec="seconds"), "detail": detail}
        self.log.info("BackupPC reports the backup of {client_name} {outcome}{detail}",
                      client_name=self.host, outcome="succeeded" if ok else "failed",
                      detail=f": {detail}" if detail else "")
        self.send_control(body or {"type": "backup-done", "host": self.host, "ok": ok,
                                   "detail": detail})

    # -- probes, checks and being replaced ---------------------------------

    def probe(self, timeout: float) -> Deferred:
        """Fires with whether the client answers a PING within C{timeout} seconds."""
        if self.mux is None:
            return succeed(not self._cleaned_up)  # still in its own handshake
        return self.ping(timeout).addCallback(lambda rtt: rtt is not None)

    def probe_if_silent(self) -> Deferred:
        """
        Whether BackupPC's new connection may go into this tunnel: fires with
        C{True} at once if the client sent data within L{RECENT_DATA}
        seconds, else with whether it answers a PING within
        C{--probe-timeout} seconds.  Anything from the client answers it, as
        it answers the keepalive: after an outage the PING may wait behind
        the server's own retransmissions while the client's already arrive.
        """
        if self.mux is None or self.mux.lost:
            return succeed(False)
        if self.data_heard_at is not None and \
                self.clock.seconds() - self.data_heard_at <= RECENT_DATA:
            return succeed(True)
        return self._probes.ping(self.server.settings.probe_timeout).addCallback(
            lambda rtt: rtt is not None)

    def _heard_from_client(self) -> None:
        if self._probes.outstanding:
            self._probes.answer_all()

    def ping(self, timeout: float) -> Deferred:
        """
        A round trip to the client through the tunnel: fires with the time in
        seconds, or C{None} if no answer came within C{timeout} seconds.
        """
        if self.mux is None or self.mux.lost:
            return succeed(None)
        return self._pings.ping(timeout)

    def _send_ping_message(self, nonce: bytes) -> None:
        self.mux.send(framing.Ping(nonce))

    def replace(self, reason: str) -> Deferred:
        """Drop this (unresponsive) tunnel; fires once its port is closed."""
        self.log.warn("dropping the tunnel of {client_name} from {peer}: {reason}",
                      client_name=self.host, peer=self.peer_address, reason=reason)
        self._cleanup(reason)
        self.link.abort_connection()
        return self._down

    def may_carry_connection(self) -> bool:
        """Whether BackupPC may open one more connection through this tunnel now."""
        if self.mux is None or self.mux.lost or not self.still_authorized():
            return False
        others = sorted(self.server.authorization.hosts_on_port(self.settings.port) - {self.host})
        if others:
            # Whose laptop would this connection read?  Neither's, until the admin says.
            refusal = PortShared(self.host, f"RsyncdClientPort {self.settings.port} of "
                                            f"{self.host} is now also that of "
                                            f"{', '.join(others)} in BackupPC's config")
            self.close_tunnel(framing.WS_CLOSE_REVOKED, str(refusal), log=True)
            return False
        if len(self.mux.channels) >= self.mux.max_channels:
            self.log.warn("refusing a connection to {client_name}: it already carries {count} "
                          "connections (the maximum)", client_name=self.host,
                          count=len(self.mux.channels))
            return False
        return True

    def still_authorized(self) -> bool:
        """Check the certificate against the host config again; drop the tunnel if revoked."""
        revocation = self.server.authorization.recheck(self.settings, self.common_name,
                                                       self.fingerprint)
        if revocation is None:
            return True
        self.close_tunnel(revocation.close_code, revocation.reason, log=True)
        return False

    def check(self, now: float) -> None:
        """The periodic check: authorization, then carried connections' timeouts."""
        if self.mux is None or self.mux.lost or not self.still_authorized():
            return
        settings = self.server.settings
        for channel in list(self.mux.channels.values()):
            if now - channel.opened_at > settings.max_connection_time:
                channel.reset(f"open for more than {settings.max_connection_time:g} seconds "
                              f"(--max-connection-time)")
            elif now - channel.last_activity > settings.idle_timeout:
                channel.reset(f"idle for more than {settings.idle_timeout:g} seconds "
                              f"(--idle-timeout)")

    def close_tunnel(self, code: int, reason: str, log: bool = False) -> None:
        """Close from the server side with a reason the client shows; free the port now."""
        if log:
            self.log.warn("dropping the tunnel of {client_name}: {reason}",
                          client_name=self.host, reason=reason)
        self.link.close_connection(code, reason)
        self._cleanup(reason)

    # -- the end -----------------------------------------------------------

    def closed(self, code, reason: str | None) -> None:
        """The WebSocket closed (the closing handshake ended, or the connection did)."""
        self._log_closed(reason or f"code {code}")
        self._cleanup(reason or "the tunnel closed")

    def connection_lost(self, tls_error: str | None = None) -> None:
        """
        The connection is gone; C{tls_error}, the reason a TLS handshake
        failed (see L{bpctunnel.server.protocol.tls_error_text}), if it did.
        """
        if self.host is None and tls_error is not None:
            # The client never got past TLS: say why, for the admin.
            self.server.handshakes.failed("failed TLS handshakes",
                                          "TLS handshake with {peer} failed: {error}",
                                          peer=self.peer_address, error=tls_error)
        self._handshake_over()
        self._cleanup("the tunnel connection was lost")
        self._gone = True
        self.server.open_sessions.discard(self)
        waiters, self._gone_waiters = self._gone_waiters, []
        for d in waiters:
            d.callback(None)

    def when_gone(self) -> Deferred:
        """Fires once the connection is gone (cancelling it only stops the wait)."""
        if self._gone:
            return succeed(None)
        d = Deferred(self._gone_waiters.remove)
        self._gone_waiters.append(d)
        return d

    def _log_closed(self, reason: str) -> None:
        if self.host is not None and self.mux is not None and not self._cleaned_up:
            self.log.info("tunnel of {client_name} closed: {reason}", client_name=self.host,
                          reason=reason)

    def _cleanup(self, why: str) -> None:
        if self._cleaned_up:
            return
        self._cleaned_up = True
        self.keepalive.stop()
        if self.mux is not None:
            self.mux.tunnel_lost(f"the tunnel of {self.host} closed: {why}")
        # After the mux: who waits on a ping (BackupPC's connection, say)
        # then sees that the tunnel closed, not that the client was silent.
        self._pings.stop()
        self._probes.stop()
        closed = succeed(None)
        if self.listening_port is not None:
            port, self.listening_port = self.listening_port, None
            closed = maybeDeferred(port.stopListening)
        server = self.server
        if self.host is not None:
            server.tunnels.release(self.host, self.link)
            server.watchers.discard(self.link)
            server.backup_desk.forget(self.link)
        if self.mux is not None and not self.watching:
            server.metrics.tunnel_closed(self)
            server.notify("closed", self.link)
        closed.chainDeferred(self._down)
