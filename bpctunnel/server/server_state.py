"""
What the tunnel server shares across its connections, apart from any
protocol: the live tunnels, the handshake limit, the host authorization, the
refusals, the backup desk, the metrics and the observers; the periodic check of the
live tunnels; and, when the server stops, the notice to every open tunnel.

A connection's L{bpctunnel.server.session.TunnelSession} works on this;
L{bpctunnel.server.protocol.TunnelServerFactory} makes one and starts and
stops its checks.
"""

from __future__ import annotations

import math

from typing import Callable

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bpctunnel.backuppc.paths import Paths
from bpctunnel.backuppc.server_mesg import BackupTrigger
from bpctunnel.refusals import Notice
from bpctunnel.server.admission import HandshakeLimit
from bpctunnel.server.authorization import HostAuthorization
from bpctunnel.server.config_checks import ConfigChecks
from bpctunnel.server.backup_requests import BackupDesk
from bpctunnel.server.handshake_refusals import HandshakeRefusals
from bpctunnel.server.history import HostHistory
from bpctunnel.server.hosts_view import HostsView
from bpctunnel.server.metrics import ServerMetrics
from bpctunnel.server.settings import ServerSettings
from bpctunnel.server.state_file import STATE_FILE, StateFile
from bpctunnel.server.backuppc_port import LocalUsers
from bpctunnel.server.tunnels import TunnelRegistry
from bpctunnel.wire.violations import ViolationCounter
from bpctunnel.wire.windows import WindowBudget

#: How long a stopping server waits for its tunnels' closing handshakes.
STOP_GRACE = 2.0


class ServerState:
    """
    The server's shared state.

    @param reactor: an C{IReactorTime} (timers, checks); with no
        C{listen_local}, also an C{IReactorTCP}.
    @param listen_local: C{(port, factory) -> Deferred[IListeningPort]}, by
        default a TCP listener on 127.0.0.1.
    @param backup_trigger: asks BackupPC for laptops' backups, or C{None}
        (the server takes no requests).

    A tunnel, as the registry, the watchers, the backup desk and the
    observers hold it, is the object a session was given as its link (the
    WebSocket protocol); it answers for its session.
    """

    log = Logger()

    def __init__(self, reactor, settings: ServerSettings,
                 listen_local: Callable[[int, Factory], Deferred] | None = None,
                 backup_trigger: BackupTrigger | None = None):
        self.clock = reactor
        self._reactor = reactor
        self.settings = settings
        self.tunnels = TunnelRegistry(settings.probe_timeout)
        #: Who may connect to a laptop's port.
        self.local_users = LocalUsers(settings.local_uids)
        self.metrics = ServerMetrics(self.tunnels)
        self.listen_local = listen_local or self._listen_tcp
        #: What clients before authentication and local users at a laptop's
        #: port do wrong, logged within bounds: the first few lines of each
        #: kind at once, then a sum every few seconds (they may try as
        #: fast as they like).
        self.outsiders = ViolationCounter(reactor, "", budget=math.inf)
        self.handshakes = HandshakeLimit(reactor, settings.max_unauthenticated,
                                         settings.max_handshakes, self.metrics.refused,
                                         self.outsiders)
        self.authorization = HostAuthorization(settings.backuppc_conf, reactor)
        self.refusals = HandshakeRefusals(self.metrics, self.outsiders)
        #: Callables C{(event, tunnel)} told when a tunnel opens ("open") and
        #: closes ("closed"), the client's names for the same events.
        self.observers: list[Callable] = []
        #: backup-now connections that follow another connection's tunnel.
        self.watchers: set = set()
        #: The sessions whose tunnel opened and whose connection is not yet
        #: gone (L{bpctunnel.server.session.TunnelSession}s): what a
        #: stopping server closes.
        self.open_sessions: set = set()
        #: Window growth all tunnels together may have (see L{bpctunnel.wire.windows}).
        self.window_budget = WindowBudget(settings.window_budget)
        self.backup_desk = BackupDesk(reactor, self.tunnels, backup_trigger)
        #: What lasts across restarts: each host's last connection, backup,
        #: round trip and traffic.
        self.history = HostHistory(
            reactor, StateFile(settings.state_dir / STATE_FILE) if settings.state_dir else None)
        self.observers.append(self.history.tunnel_event)
        #: What `bpctunnel check` finds in the files, for the dashboard.
        self.config_checks = (ConfigChecks(reactor, Paths(settings.certs, settings.backuppc_conf))
                              if settings.certs is not None else None)
        #: The fleet as the API and the dashboard show it.
        self.hosts_view = HostsView(self)
        self._checker = LoopingCall(self.check_tunnels)
        self._checker.clock = reactor

    def start_checks(self) -> None:
        """Check the live tunnels every C{settings.check_interval} seconds from now on."""
        if not self._checker.running:
            self._checker.start(self.settings.check_interval, now=False).addErrback(
                lambda f: self.log.failure("the tunnel checks stopped", f))
        self.history.start()

    def stop_checks(self) -> Deferred:
        """Stop the checks; fires once the history's last write is on disk."""
        if self._checker.running:
            self._checker.stop()
        return self.history.stop()

    def check_tunnels(self) -> None:
        """Check every live tunnel (see L{bpctunnel.server.session.TunnelSession.check})."""
        now = self.clock.seconds()
        for tunnel in [*self.tunnels, *self.watchers]:
            try:
                tunnel.check(now)
            except Exception:
                self.log.failure("checking the tunnel of {client_name} failed",
                                 client_name=tunnel.host)

    def notify(self, event: str, tunnel) -> None:
        """Tell the observers that C{tunnel} is C{"open"} or C{"closed"} (the client's event names too)."""
        for observer in list(self.observers):
            observer(event, tunnel)

    def _listen_tcp(self, port: int, factory: Factory) -> Deferred:
        return TCP4ServerEndpoint(self._reactor, port, interface="127.0.0.1").listen(factory)

    def close_for_stop(self, grace: float = STOP_GRACE) -> Deferred:
        """
        The server is stopping: close every open tunnel saying so
        (L{Notice.SERVER_RESTARTING}), so that laptops come back as soon as
        it is up again rather than count a failure.  Fires once the
        connections are gone, or after C{grace} seconds (a client that does
        not answer must not hold up the stop; the reactor drops the rest).
        """
        sessions = list(self.open_sessions)
        if not sessions:
            return succeed(None)
        notice = Notice.SERVER_RESTARTING
        self.log.info("the server is stopping: closing {count} tunnel(s) ({reason})",
                      count=len(sessions), reason=notice.words)
        gone = [session.when_gone() for session in sessions]
        reason = notice.text("the bpctunnel server is stopping; reconnect when it is back")
        for session in sessions:
            try:
                session.close_tunnel(notice.close_code, reason)
            except Exception:
                self.log.failure("closing the tunnel of {client_name} failed",
                                 client_name=session.host)
        done = Deferred()

        def late() -> None:
            left = [s.host for s in sessions if s in self.open_sessions]
            self.log.warn("{count} tunnel(s) did not close within {grace:g} seconds "
                          "({hosts}); stopping anyway", count=len(left), grace=grace,
                          hosts=", ".join(str(h) for h in left))
            done.callback(None)
            for d in gone:
                d.cancel()

        timer = self.clock.callLater(grace, late)

        def all_gone(_) -> None:
            if not done.called:
                timer.cancel()
                done.callback(None)

        DeferredList(gone, consumeErrors=True).addCallback(all_gone)
        return done
