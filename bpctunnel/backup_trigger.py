"""
Backup on connect: when a laptop's tunnel comes up, ask BackupPC for a backup
with its own C{BackupPC_serverMesg backup HOST HOST USER TYPE}.

The default type C{-1} ("auto") lets BackupPC decide: it backs the host up
only if a backup is due by its own schedule, exactly as if it had found the
host online by itself; C{0} forces an incremental, C{1} a full backup.
"""

from __future__ import annotations

import shlex

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

DEFAULT_SERVER_MESG = "/usr/share/backuppc/bin/BackupPC_serverMesg"


@attrs.frozen
class BackupRequest:
    """How to ask BackupPC for a backup."""

    command: tuple[str, ...] = (DEFAULT_SERVER_MESG,)
    user: str = "bpctunnel"
    backup_type: str = attrs.field(default="-1", validator=attrs.validators.in_(
        ("-1", "0", "1", "auto", "doIncr", "doFull", "autoIncr", "autoFull")))

    @classmethod
    def from_command_line(cls, command: str, user: str, backup_type: str) -> BackupRequest:
        """C{command} may carry a prefix such as C{sudo -u backuppc}."""
        return cls(tuple(shlex.split(command)), user, backup_type)

    def argv(self, host: str, backup_type: str | None = None) -> list[str]:
        return [*self.command, "backup", host, host, self.user, backup_type or self.backup_type]


@attrs.frozen
class BackupReply:
    """What came of asking BackupPC: whether it took the request, and its words."""

    ok: bool
    text: str


class _Collect(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.done = Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.done.callback((getattr(reason.value, "exitCode", None), self.output))


class BackupTrigger:
    """Runs a L{BackupRequest} for each tunnel that comes up."""

    log = Logger()

    def __init__(self, reactor, request: BackupRequest):
        self.reactor = reactor
        self.request = request

    def __call__(self, event: str, tunnel) -> None:
        """A server factory observer."""
        if event == "up":
            self.request_backup(tunnel.host)

    def request_backup(self, host: str, backup_type: str | None = None) -> Deferred:
        """
        Ask BackupPC for a backup of C{host} (of C{backup_type}, by default
        the request's); fires with a L{BackupReply}, which is also logged.
        """
        argv = self.request.argv(host, backup_type)
        protocol = _Collect()
        try:
            self.reactor.spawnProcess(protocol, argv[0], argv, env={"PATH": "/usr/bin:/bin"})
        except OSError as e:
            self.log.error("cannot ask BackupPC to back up {client_name}: {command}: {error}",
                           client_name=host, command=argv[0], error=e)
            return succeed(BackupReply(False, f"the server cannot run {argv[0]}: {e.strerror}"))

        def ended(result):
            code, output = result
            reply = output.decode("utf-8", "replace").strip() or "(no reply)"
            # BackupPC_serverMesg exits 0 whenever it reached the daemon, and
            # prints the daemon's answer after "Got reply: ": "ok: ...",
            # "warning: ... already queued" or "error: ..." (unknown host,
            # bad backup type, disk full).  Only the answer tells a refusal.
            reply = reply.removeprefix("Got reply: ") or "(no reply)"
            ok = code == 0 and not reply.startswith("error")
            if ok:
                self.log.info("asked BackupPC to back up {client_name}: {reply}",
                              client_name=host, reply=reply)
            else:
                self.log.error("asking BackupPC to back up {client_name} failed (exit {code}): "
                               "{reply}", client_name=host, code=code, reply=reply)
            return BackupReply(ok, reply)

        return protocol.done.addCallback(ended)
