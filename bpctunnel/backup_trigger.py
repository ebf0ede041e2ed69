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

    def argv(self, host: str) -> list[str]:
        return [*self.command, "backup", host, host, self.user, self.backup_type]


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

    def request_backup(self, host: str) -> Deferred:
        """Ask BackupPC; fires with its reply (and logs it) or its error."""
        argv = self.request.argv(host)
        protocol = _Collect()
        try:
            self.reactor.spawnProcess(protocol, argv[0], argv, env={"PATH": "/usr/bin:/bin"})
        except OSError as e:
            self.log.error("cannot ask BackupPC to back up {client_name}: {command}: {error}",
                           client_name=host, command=argv[0], error=e)
            return succeed(None)

        def ended(result):
            code, output = result
            reply = output.decode("utf-8", "replace").strip() or "(no reply)"
            if code == 0 and not reply.startswith("error"):
                self.log.info("asked BackupPC to back up {client_name}: {reply}",
                              client_name=host, reply=reply)
            else:
                self.log.error("asking BackupPC to back up {client_name} failed (exit {code}): "
                               "{reply}", client_name=host, code=code, reply=reply)
            return reply

        return protocol.done.addCallback(ended)
