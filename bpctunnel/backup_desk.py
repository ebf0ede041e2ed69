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

The connection that asks may be the host's tunnel itself, or one that only
watches while another client of the same host carries the backup.
"""

from __future__ import annotations

import attrs
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bpctunnel.backup_trigger import BackupTrigger

#: BackupPC_serverMesg's backup types for an incremental and a full backup.
INCREMENTAL, FULL = "0", "1"


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

    @param registry: the live tunnels (L{bpctunnel.registry.TunnelRegistry}).
    @param trigger: asks BackupPC, or C{None} if this server takes no requests.
    @param interval: seconds between progress messages.

    A connection is anything with C{host} and C{send_control(body)}.
    """

    log = Logger()

    def __init__(self, clock, registry, trigger: BackupTrigger | None, interval: float = 1.0):
        self.clock = clock
        self.registry = registry
        self.trigger = trigger
        self.interval = interval
        self._pending: dict[str, _Pending] = {}

    def request(self, connection, full: bool = False) -> None:
        """C{connection} asks for a backup of its host now."""
        host = connection.host
        kind = "full" if full else "incremental"
        if self.trigger is None:
            connection.send_control({
                "type": "backup-requested", "ok": False,
                "message": "this server does not take backup requests from laptops "
                           "(it runs with --no-backup-now); ask the BackupPC admin"})
            return
        self.log.info("{client_name} asks for a {kind} backup now", client_name=host, kind=kind)
        pending = self._pending.get(host)
        if pending is None:
            pending = self._pending[host] = _Pending(_Carried.starting_at(self.registry.get(host)))
        pending.subscribers.add(connection)
        d = self.trigger.request_backup(host, FULL if full else INCREMENTAL)
        d.addCallback(self._requested, connection, host)
        d.addErrback(lambda f: self.log.failure("asking BackupPC for {client_name} failed", f,
                                                client_name=host))

    def _requested(self, reply, connection, host: str) -> None:
        pending = self._pending.get(host)
        if pending is None or connection not in pending.subscribers:
            return  # the backup ended, or the laptop left, meanwhile
        connection.send_control({"type": "backup-requested", "ok": reply.ok,
                                 "message": reply.text})
        if not reply.ok:
            self._unsubscribe(host, connection)
            return
        if pending.loop is None:
            pending.loop = LoopingCall(self._report, host)
            pending.loop.clock = self.clock
            pending.loop.start(self.interval, now=True)

    def module_started(self, host: str, module: str) -> None:
        """BackupPC asked C{host}'s tunnel for C{module}: report it at once."""
        pending = self._pending.get(host)
        if pending is not None:
            if module not in pending.modules:
                pending.modules.append(module)
            self._report(host)

    def _report(self, host: str) -> None:
        pending = self._pending.get(host)
        if pending is None:
            return
        body = progress_of(host, self.registry.get(host), pending.carried)
        for connection in list(pending.subscribers):
            connection.send_control(body)

    def backup_done(self, host: str, ok: bool, detail: str = "") -> int:
        """
        BackupPC reports how a backup of C{host} ended: tell its tunnel and
        whoever asked.  Returns how many connections were told.
        """
        told = set()
        tunnel = self.registry.get(host)
        if tunnel is not None and tunnel.mux is not None and not tunnel.mux.lost:
            tunnel.backup_done(ok, detail)
            told.add(tunnel)
        pending = self._pending.pop(host, None)
        if pending is not None:
            self._stop(pending)
            bytes_in, bytes_out = pending.carried.totals(tunnel)
            body = {"type": "backup-done", "host": host, "ok": ok, "detail": detail,
                    "modules": pending.modules, "bytes_from_client": bytes_in,
                    "bytes_to_client": bytes_out}
            for connection in pending.subscribers - told:
                connection.send_control(body)
                told.add(connection)
        return len(told)

    def forget(self, connection) -> None:
        """C{connection} is gone."""
        if connection.host is not None:
            self._unsubscribe(connection.host, connection)

    def _unsubscribe(self, host: str, connection) -> None:
        pending = self._pending.get(host)
        if pending is None:
            return
        pending.subscribers.discard(connection)
        if not pending.subscribers:
            del self._pending[host]
            self._stop(pending)

    @staticmethod
    def _stop(pending: _Pending) -> None:
        if pending.loop is not None and pending.loop.running:
            pending.loop.stop()

