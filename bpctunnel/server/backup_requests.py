"""
Backups that laptops ask for (C{bpctunnel backup-now}): the request to
BackupPC, progress while it runs, and how it ended.

A laptop's connection sends CONTROL C{{"type": "backup-request", "full":
bool}}.  The server asks BackupPC with C{BackupPC_serverMesg} and answers
C{backup-requested} (whether BackupPC took the request, in its words).
While the backup is pending, every C{interval} seconds it sends
C{backup-progress}: the connections BackupPC has open through the host's
tunnel, the rsyncd modules they asked for, and the bytes carried each way
since the request.  When C{$Conf{DumpPostUserCmd}} reports the result
(C{bpctunnel backup-done}), it sends C{backup-done} and the request is over.

Until BackupPC starts the backup (asks the tunnel for a module), the desk
also asks BackupPC for the host's status every C{status_interval} seconds,
one question at a time.  If BackupPC ran its job for the host and backed
nothing up (no ping or too slow a ping, nothing due, a failure before the
transfer), C{DumpPostUserCmd} never runs: the desk then sends
C{{"type": "backup-done", "ok": false, "started": false, "reason": ...,
"detail": ...}} with BackupPC's words, and the request is over.  C{reason}
is C{"no_ping"} or C{"nothing_to_do"} (BackupPC declined: C{backup-now}
exits 2) or C{"failed"} (it failed before it began: exit 1).  Clients from
before C{started} read it as a failed backup.

While a backup runs, the laptop's client sends one C{transfer-report} per
rsync connection (C{{"type": "transfer-report", "module": str,
"unreadable": [names], "unreadable_count": int, "vanished": [names],
"vanished_count": int}}, see L{bpctunnel.client.rsync_daemon}); the desk keeps
them, bounded, and C{backup-done} carries their sum: C{unreadable} and
C{vanished} (at most L{MAX_NAMES} C{module/name} entries each) and their
counts.

The connection that asks may be the host's tunnel itself, or one that only
watches while another client of the same host carries the backup.

One request per host at a time: however many C{backup-request} messages
come, and from however many connections, BackupPC is asked once (one
C{BackupPC_serverMesg} at a time per host).  A request while one is being
asked, or while the backup it asked for is pending, joins it: its connection
gets the same C{backup-requested} answer and the same progress and result.
A connection is answered once per request, however often it asks, and at
most L{MAX_WATCHERS} connections follow one host's request.
"""

from __future__ import annotations

import attrs
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bpctunnel.backuppc.server_mesg import (
    BACKUP_FAILED, NO_PING, BackupReply, BackupTrigger, HostStatus,
)

#: BackupPC_serverMesg's backup types for an incremental and a full backup.
INCREMENTAL, FULL = "0", "1"
#: Bounds on what a client's transfer reports may make the server keep:
#: names per list, characters per name, reports per backup.
MAX_NAMES = 20
MAX_NAME_CHARS = 256
MAX_REPORTS = 64
#: The largest count a report may claim (a count is only a number to show).
MAX_COUNT = 10**9
#: How long BackupPC's verdict may wait for the laptop's last transfer
#: report (its rsync still exiting), and how often it looks.
REPORT_GRACE = 10.0
REPORT_POLL = 0.05
#: Connections that may follow one host's request at once (the host's own
#: tunnel and C{backup-now} connections alike).
MAX_WATCHERS = 8


@attrs.define
class _Carried:
    """Bytes carried for one request, across the tunnels that carried them."""

    tunnel: object = None
    base_in: int = 0
    base_out: int = 0
    earlier_in: int = 0
    earlier_out: int = 0

    @classmethod
    def starting_at(cls, tunnel) -> _Carried:
        """Count from what C{tunnel} (or C{None}) has carried so far."""
        if tunnel is None or tunnel.mux is None:
            return cls(tunnel)
        return cls(tunnel, tunnel.mux.bytes_in, tunnel.mux.bytes_out)

    def totals(self, tunnel) -> tuple[int, int]:
        """(from the client, to the client) since the request, as of now."""
        if tunnel is not self.tunnel:
            # The tunnel changed (the laptop reconnected): keep what the old
            # one carried and count the new one from its start.
            if self.tunnel is not None and self.tunnel.mux is not None:
                self.earlier_in += self.tunnel.mux.bytes_in - self.base_in
                self.earlier_out += self.tunnel.mux.bytes_out - self.base_out
            self.tunnel, self.base_in, self.base_out = tunnel, 0, 0
        if tunnel is None or tunnel.mux is None:
            return self.earlier_in, self.earlier_out
        return (self.earlier_in + tunnel.mux.bytes_in - self.base_in,
                self.earlier_out + tunnel.mux.bytes_out - self.base_out)


@attrs.define
class _Pending:
    """A host's requested backup that BackupPC has not reported on yet."""

    carried: _Carried
    subscribers: set = attrs.Factory(set)
    #: The modules BackupPC asked for since the request, in order.
    modules: list = attrs.Factory(list)
    loop: LoopingCall | None = None
    #: BackupPC's answer to the request (a L{BackupReply}), once it came.
    reply: BackupReply | None = None
    #: Connections refused (too many watchers) during this request.
    refused: set = attrs.Factory(set)
    #: When the laptop asked (the desk's clock), and the status poll.
    requested_at: float = 0.0
    status_loop: LoopingCall | None = None
    status_asked: bool = False
    #: The laptop's transfer reports: (kind -> names kept, kind -> count).
    reports: int = 0
    names: dict = attrs.Factory(lambda: {"unreadable": [], "vanished": []})
    counts: dict = attrs.Factory(lambda: {"unreadable": 0, "vanished": 0})


def progress_of(host: str, tunnel, carried: _Carried) -> dict:
    """The C{backup-progress} message for C{host}, whose tunnel may be C{None}."""
    channels = list(tunnel.mux.channels.values()) if tunnel is not None and tunnel.mux else []
    modules = sorted({m for m in (getattr(c.local, "module", None) for c in channels) if m})
    bytes_in, bytes_out = carried.totals(tunnel)
    return {"type": "backup-progress", "host": host, "tunnel": tunnel is not None,
            "connections": len(channels), "modules": modules,
            "bytes_from_client": bytes_in, "bytes_to_client": bytes_out}


class BackupDesk:
    """
    The server's side of requested backups.

    @param tunnels: the live tunnels (L{bpctunnel.server.tunnels.TunnelRegistry}).
    @param trigger: asks BackupPC, or C{None} if this server takes no requests.
    @param interval: seconds between progress messages.

    A connection is anything with C{host} and C{send_control(body)}.
    """

    log = Logger()

    def __init__(self, clock, tunnels, trigger: BackupTrigger | None, interval: float = 1.0,
                 status_interval: float = 3.0):
        self.clock = clock
        self.tunnels = tunnels
        self.trigger = trigger
        self.interval = interval
        self.status_interval = status_interval
        self._pending: dict[str, _Pending] = {}
        #: Hosts whose request BackupPC is being asked now (one at a time).
        self._asking: set[str] = set()
        #: Connections told that this server takes no requests (told once).
        self._told_no: set = set()

    def request(self, connection, full: bool = False) -> None:
        """
        C{connection} asks for a backup of its host now: BackupPC is asked,
        unless a request for the host is being asked or pending already;
        then C{connection} joins it.
        """
        host = connection.host
        kind = "full" if full else "incremental"
        what = "a full" if full else "an incremental"
        if self.trigger is None:
            if connection not in self._told_no:
                self._told_no.add(connection)
                connection.send_control({
                    "type": "backup-requested", "ok": False,
                    "message": "this server does not take backup requests from laptops "
                               "(it runs with --no-backup-now); ask the BackupPC admin"})
            return
        pending = self._pending.get(host)
        if pending is not None and (connection in pending.subscribers
                                    or connection in pending.refused):
            return  # asked again: it has its answer, or will have
        if pending is not None and len(pending.subscribers) >= MAX_WATCHERS:
            pending.refused.add(connection)
            self.log.warn("refusing a backup request for {client_name}: {count} connections "
                          "follow its request already", client_name=host,
                          count=len(pending.subscribers))
            connection.send_control({
                "type": "backup-requested", "ok": False,
                "message": f"{MAX_WATCHERS} connections follow the backup request of "
                           f"{host} already (the most there may be); try again when it is "
                           f"done"})
            return
        if pending is None:
            pending = self._pending[host] = _Pending(_Carried.starting_at(self.tunnels.get(host)),
                                                     requested_at=self.clock.seconds())
        pending.subscribers.add(connection)
        if pending.reply is not None:
            # The backup is pending: same answer, same progress, same result.
            self.log.info("{client_name} asks for {what} backup now; it joins the one "
                          "BackupPC has taken", client_name=host, kind=kind, what=what)
            self._answer(connection, pending)
            return
        if host in self._asking:
            self.log.info("{client_name} asks for {what} backup now; it joins the request "
                          "BackupPC is being asked", client_name=host, kind=kind, what=what)
            return
        self.log.info("{client_name} asks for {what} backup now", client_name=host, kind=kind,
                      what=what)
        self._asking.add(host)
        try:
            d = self.trigger.request_backup(host, FULL if full else INCREMENTAL)
        except Exception:
            self._asking.discard(host)
            raise
        d.addCallbacks(self._requested, self._request_failed, callbackArgs=(host,),
                       errbackArgs=(host,))
        d.addErrback(lambda f: self.log.failure("answering the backup request of {client_name} "
                                                "failed", f, client_name=host))

    def _request_failed(self, failure, host: str) -> None:
        self.log.failure("asking BackupPC for {client_name} failed", failure, client_name=host)
        self._requested(BackupReply(False, f"the server could not ask BackupPC: "
                                           f"{failure.getErrorMessage()}"), host)

    def _requested(self, reply: BackupReply, host: str) -> None:
        """BackupPC answered: the request of C{host} that is pending now has its reply."""
        self._asking.discard(host)
        pending = self._pending.get(host)
        if pending is None or pending.reply is not None:
            return  # the backup ended, or everyone left, meanwhile
        pending.reply = reply
        for connection in list(pending.subscribers):
            self._answer(connection, pending)
        if not reply.ok:
            # Declined: the request is over; the next one asks again.
            if self._pending.get(host) is pending:
                del self._pending[host]
            self._stop(pending)
            return
        if pending.loop is None:
            pending.loop = LoopingCall(self._report, host)
            pending.loop.clock = self.clock
            pending.loop.start(self.interval, now=True)
        if pending.status_loop is None and not pending.modules:
            pending.status_loop = LoopingCall(self._ask_status, host, pending)
            pending.status_loop.clock = self.clock
            pending.status_loop.start(self.status_interval, now=False).addErrback(
                lambda f: self.log.failure("watching BackupPC's status of {client_name} failed",
                                           f, client_name=host))

    @staticmethod
    def _answer(connection, pending: _Pending) -> None:
        """C{connection}'s C{backup-requested} (once per request: see L{request})."""
        reply = pending.reply
        connection.send_control({"type": "backup-requested", "ok": reply.ok,
                                 "message": reply.text})

    def module_started(self, host: str, module: str) -> None:
        """BackupPC asked C{host}'s tunnel for C{module}: report it at once."""
        pending = self._pending.get(host)
        if pending is not None:
            if module not in pending.modules:
                pending.modules.append(module)
            # BackupPC has started the backup; DumpPostUserCmd will tell.
            self._stop_status(pending)
            self._report(host)

    # -- BackupPC's status, until the backup starts --------------------------

    def _ask_status(self, host: str, pending: _Pending) -> None:
        if self._pending.get(host) is not pending or pending.modules:
            self._stop_status(pending)
            return
        if pending.status_asked:
            return  # one question at a time: BackupPC may be slow to answer
        pending.status_asked = True
        d = self.trigger.host_status(host)

        def answered(status):
            pending.status_asked = False
            if status is not None:
                self._status(host, pending, status)

        def failed(failure):
            pending.status_asked = False
            self.log.failure("asking BackupPC for the status of {client_name} failed", failure,
                             client_name=host)

        d.addCallbacks(answered, failed)

    def _status(self, host: str, pending: _Pending, status: HostStatus) -> None:
        if self._pending.get(host) is not pending or pending.modules:
            return
        if not status.ended_without_backup(pending.requested_at):
            return
        if status.reason == NO_PING:
            reason = "no_ping"
            words = status.error or "the host did not answer its ping"
            detail = f"BackupPC did not start the backup: {words}"
        elif status.reason == BACKUP_FAILED:
            reason = "failed"
            detail = (f"BackupPC's backup failed before it began: "
                      f"{status.error or 'no reason given'}")
        else:
            reason = "nothing_to_do"
            detail = ("BackupPC did not start the backup: it found nothing to do (no backup "
                      "is due, or the host is in a blackout period)")
        self.log.warn("BackupPC ran no backup of {client_name}: {detail}", client_name=host,
                      detail=detail, reason=reason)
        del self._pending[host]
        self._stop(pending)
        body = {"type": "backup-done", "host": host, "ok": False, "started": False,
                "reason": reason, "detail": detail, "modules": [],
                "bytes_from_client": 0, "bytes_to_client": 0}
        for connection in list(pending.subscribers):
            connection.send_control(body)

    @staticmethod
    def _stop_status(pending: _Pending) -> None:
        if pending.status_loop is not None and pending.status_loop.running:
            pending.status_loop.stop()

    # -- the laptop's transfer reports ---------------------------------------

    def transfer_report(self, host: str, body: dict) -> None:
        """
        C{host}'s client reports what one rsync connection could not send;
        kept, within bounds, for the pending backup's C{backup-done}.
        """
        module = _bounded_name(body.get("module")) or "?"
        counts = {}
        for kind in ("unreadable", "vanished"):
            names = body.get(kind)
            names = [_bounded_name(n) for n in names[:MAX_NAMES]] if isinstance(names, list) else []
            names = [n for n in names if n]
            count = body.get(f"{kind}_count")
            count = count if isinstance(count, int) and not isinstance(count, bool) else len(names)
            counts[kind] = (names, min(max(count, len(names)), MAX_COUNT))
        if not any(count for _, count in counts.values()):
            return
        self.log.warn("{client_name}'s rsync for module {module} could not read {unreadable} "
                      "file(s) ({vanished} vanished)", client_name=host, module=module,
                      unreadable=counts["unreadable"][1], vanished=counts["vanished"][1])
        pending = self._pending.get(host)
        if pending is None or pending.reports >= MAX_REPORTS:
            return
        pending.reports += 1
        for kind, (names, count) in counts.items():
            kept = pending.names[kind]
            kept.extend(f"{module}/{n}" for n in names[:MAX_NAMES - len(kept)])
            pending.counts[kind] = min(pending.counts[kind] + count, MAX_COUNT)

    def _report(self, host: str) -> None:
        pending = self._pending.get(host)
        if pending is None:
            return
        body = progress_of(host, self.tunnels.get(host), pending.carried)
        for connection in list(pending.subscribers):
            connection.send_control(body)

    def backup_done(self, host: str, ok: bool, detail: str = "") -> int:
        """
        BackupPC reports how a backup of C{host} ended: tell its tunnel and
        whoever asked.  Returns how many connections will be told.

        BackupPC runs its C{DumpPostUserCmd} as soon as its own rsync is
        done, while the laptop's rsync may still be exiting: its
        C{transfer-report} comes just before its channel's CLOSE.  So the
        news waits until the tunnel carries no channel (at most
        L{REPORT_GRACE} seconds), and then includes every report.
        """
        tunnel = self._live(host)
        pending = self._pending.get(host)
        recipients = set(pending.subscribers) if pending is not None else set()
        if tunnel is not None:
            recipients.add(tunnel)
        self._deliver_done(host, ok, detail, self.clock.seconds() + REPORT_GRACE)
        return len(recipients)

    def _live(self, host: str):
        tunnel = self.tunnels.get(host)
        if tunnel is not None and tunnel.mux is not None and not tunnel.mux.lost:
            return tunnel
        return None

    def _deliver_done(self, host: str, ok: bool, detail: str, deadline: float) -> None:
        tunnel = self._live(host)
        if (tunnel is not None and tunnel.mux.channels and self._pending.get(host) is not None
                and self.clock.seconds() < deadline):
            self.clock.callLater(REPORT_POLL, self._deliver_done, host, ok, detail, deadline)
            return
        told = set()
        pending = self._pending.pop(host, None)
        body = None
        if pending is not None:
            self._stop(pending)
            bytes_in, bytes_out = pending.carried.totals(tunnel)
            body = {"type": "backup-done", "host": host, "ok": ok, "detail": detail,
                    "modules": pending.modules, "bytes_from_client": bytes_in,
                    "bytes_to_client": bytes_out}
            for kind in ("unreadable", "vanished"):
                if pending.counts[kind]:
                    body[kind] = pending.names[kind]
                    body[f"{kind}_count"] = pending.counts[kind]
        if tunnel is not None:
            # The tunnel may be backup-now's own connection: it gets the full account.
            asked = pending is not None and tunnel in pending.subscribers
            tunnel.backup_done(ok, detail, body if asked else None)
            told.add(tunnel)
        if pending is not None:
            for connection in pending.subscribers - told:
                connection.send_control(body)
                told.add(connection)

    def forget(self, connection) -> None:
        """C{connection} is gone."""
        self._told_no.discard(connection)
        if connection.host is not None:
            self._unsubscribe(connection.host, connection)

    def _unsubscribe(self, host: str, connection) -> None:
        pending = self._pending.get(host)
        if pending is None:
            return
        pending.subscribers.discard(connection)
        pending.refused.discard(connection)
        if not pending.subscribers:
            del self._pending[host]
            self._stop(pending)

    @classmethod
    def _stop(cls, pending: _Pending) -> None:
        if pending.loop is not None and pending.loop.running:
            pending.loop.stop()
        cls._stop_status(pending)


def _bounded_name(value) -> str:
    """A name from a client, as text of at most L{MAX_NAME_CHARS} characters."""
    if not isinstance(value, str):
        return ""
    if len(value) > MAX_NAME_CHARS:
        return value[:MAX_NAME_CHARS - 3] + "..."
    return value

