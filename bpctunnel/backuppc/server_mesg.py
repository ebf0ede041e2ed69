"""
Backup on connect: when a laptop's tunnel comes up, ask BackupPC for a backup
with its own C{BackupPC_serverMesg backup HOST HOST USER TYPE}.

The default type C{-1} ("auto") lets BackupPC decide: it backs the host up
only if a backup is due by its own schedule, exactly as if it had found the
host online by itself; C{0} forces an incremental, C{1} a full backup.

The same program answers C{status host(HOST)} with the daemon's record of the
host (C{%StatusHost}, a Perl dump): L{BackupTrigger.host_status} reads it
into a L{HostStatus}, so that a backup BackupPC decides not to run (the host
answered no ping, or too slowly; nothing was due) is known at once, in
BackupPC's own words.
"""

from __future__ import annotations

import re
import shlex

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from bpctunnel.errors import ConfigError
from bpctunnel.backuppc.perllex import tokenize

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

    def status_argv(self, host: str) -> list[str]:
        """C{BackupPC_serverMesg status host(HOST)}, the host name URI-escaped as BackupPC expects."""
        escaped = re.sub(r"[^A-Za-z0-9._~-]", lambda m: "".join(
            f"%{b:02X}" for b in m.group(0).encode()), host)
        return [*self.command, "status", f"host({escaped})"]


@attrs.frozen
class BackupReply:
    """What came of asking BackupPC: whether it took the request, and its words."""

    ok: bool
    text: str


#: C{%StatusHost} reasons of a backup BackupPC decided not to run.
NO_PING, NOTHING_TO_DO = "Reason_no_ping", "Reason_nothing_to_do"
#: ... and of one that failed before it carried anything (e.g. an unreadable host config).
BACKUP_FAILED = "Reason_backup_failed"
#: The most of C{BackupPC_serverMesg}'s output we keep (the daemon's status
#: of one host is a few hundred bytes).
MAX_REPLY = 64 * 1024
#: Seconds BackupPC_serverMesg may take before it is killed (it answers in
#: well under one when BackupPC's daemon is up).
SERVER_MESG_TIMEOUT = 60.0
#: Seconds from its SIGTERM to its SIGKILL.
KILL_AFTER = 5.0


@attrs.frozen
class HostStatus:
    """
    What BackupPC's daemon says about one host (C{%StatusHost}): its
    C{state} (C{Status_idle}, C{Status_backup_starting},
    C{Status_backup_in_progress}, ...), the C{reason} of the last outcome,
    BackupPC's C{error} text, when the last job or outcome began
    (C{start_time}, epoch seconds) or failed (C{error_time}), and whether
    a job for it is C{queued} or C{running} now.
    """

    state: str = ""
    reason: str = ""
    error: str = ""
    start_time: float | None = None
    error_time: float | None = None
    queued: bool = False
    running: bool = False

    @property
    def busy(self) -> bool:
        """A backup of this host is queued or running."""
        return self.queued or self.running

    def ended_without_backup(self, since: float) -> bool:
        """
        BackupPC, since C{since} (epoch seconds), finished a job for this
        host that backed nothing up: no ping (or too slow), nothing to do,
        or a failure before the transfer started.  (The daemon records
        whole seconds.)
        """
        if self.busy or self.state != "Status_idle":
            return False
        when = self.error_time if self.reason == BACKUP_FAILED else self.start_time
        return (self.reason in (NO_PING, NOTHING_TO_DO, BACKUP_FAILED)
                and when is not None and when >= int(since))


def _scalar(tokens) -> object:
    """A value of one token: a string, a number, C{undef} (None); else C{True} (present)."""
    if len(tokens) == 1:
        token = tokens[0]
        if token.kind == "str" and token.value is not None:
            return token.value
        if token.kind == "num":
            return token.text
        if token.kind == "word" and token.text == "undef":
            return None
    return True


def parse_status_reply(text: str) -> HostStatus | None:
    """
    The L{HostStatus} in C{BackupPC_serverMesg status host(HOST)}'s output
    (C{Got reply: %StatusHost = ('state' => 'Status_idle', ...);}), or
    C{None} if it holds none (the daemon knows no such host, or the output
    is not such a dump).  Only the top-level keys are read; nested values
    (the running job's record) count as present.
    """
    text = text.strip().removeprefix("Got reply:").strip()
    if not text.startswith("%StatusHost"):
        return None
    try:
        tokens = tokenize(text, "BackupPC_serverMesg's reply")
    except ConfigError:
        return None
    # %StatusHost = ( KEY => VALUE , ... ) ;
    if len(tokens) < 4 or not tokens[1].is_op("=") or not tokens[2].is_op("("):
        return None
    fields: dict[str, object] = {}
    depth, item = 0, []
    for token in tokens[3:]:
        if token.kind == "op" and token.text in "([{":
            depth += 1
        elif token.kind == "op" and token.text in ")]}":
            if depth == 0:
                break
            depth -= 1
        if depth == 0 and token.is_op(","):
            _field(item, fields)
            item = []
        else:
            item.append(token)
    _field(item, fields)

    def text_of(name):
        value = fields.get(name)
        return value if isinstance(value, str) else ""

    def seconds(name):
        try:
            return float(fields[name])
        except (KeyError, TypeError, ValueError):
            return None

    return HostStatus(
        state=text_of("state"), reason=text_of("reason"), error=text_of("error"),
        start_time=seconds("startTime"), error_time=seconds("errorTime"),
        queued=any(fields.get(k) not in (None, "", "0") for k in
                   ("UserQueueOn", "BgQueueOn", "CmdQueueOn")),
        running=fields.get("Job") not in (None, "", "0"))


def _field(item, fields: dict) -> None:
    if len(item) >= 3 and item[1].is_op("=>") and item[0].kind in ("str", "word"):
        key = item[0].value if item[0].kind == "str" else item[0].text
        if isinstance(key, str):
            fields[key] = _scalar(item[2:])


class _Collect(ProcessProtocol):
    """A command's output (at most L{MAX_REPLY} bytes) and exit code; killed after C{timeout}."""

    def __init__(self, clock, timeout: float):
        self.output = b""
        self.done = Deferred()
        self.timed_out = False
        self._clock = clock
        self._timer = clock.callLater(timeout, self._stop, "TERM")

    def _stop(self, signal: str):
        # TERM first: sudo passes it on to the command it runs; KILL if
        # that did not end it.
        self.timed_out = True
        try:
            self.transport.signalProcess(signal)
        except ProcessExitedAlready:
            signal = "KILL"    # gone, yet not ended: what it started holds its pipes
        if signal == "TERM":
            self._timer = self._clock.callLater(KILL_AFTER, self._stop, "KILL")
        else:
            self._timer = self._clock.callLater(KILL_AFTER, self._give_up)

    def _give_up(self):
        # Killed, yet not ended: a process it started holds its output open.
        # Close our ends, so that it ends for us (what holds them is left).
        self.transport.loseConnection()

    def abandon(self):
        """The command could not start: no timer."""
        self._timer.cancel()

    def childDataReceived(self, fd, data):
        if len(self.output) < MAX_REPLY:
            self.output += data[:MAX_REPLY - len(self.output)]

    def processEnded(self, reason):
        if self._timer.active():
            self._timer.cancel()
        self.done.callback((getattr(reason.value, "exitCode", None), self.output))


class BackupTrigger:
    """
    Runs a L{BackupRequest} for each tunnel that comes up, and BackupPC's
    other commands for the server; each is killed if it has not ended
    after C{timeout} seconds (a BackupPC daemon that hangs must not hold a
    host's requests, which wait for the one before, for ever).
    """

    log = Logger()

    def __init__(self, reactor, request: BackupRequest, timeout: float = SERVER_MESG_TIMEOUT):
        self.reactor = reactor
        self.request = request
        self.timeout = timeout
        #: Hosts whose on-connect request is still being asked.
        self._on_connect: set[str] = set()

    def _run(self, argv: list[str]) -> tuple[_Collect, None] | tuple[None, OSError]:
        """Start C{argv}: (its protocol, None), or (None, why it could not start)."""
        protocol = _Collect(self.reactor, self.timeout)
        try:
            self.reactor.spawnProcess(protocol, argv[0], argv, env={"PATH": "/usr/bin:/bin"})
        except OSError as e:
            protocol.abandon()
            return None, e
        return protocol, None

    def _timed_out(self, protocol: _Collect, argv: list[str]) -> str | None:
        if not protocol.timed_out:
            return None
        return f"{argv[0]} did not end within {self.timeout:g} seconds and was killed"

    def __call__(self, event: str, tunnel) -> None:
        """
        A server factory observer (C{--backup-on-connect}): one request per
        host at a time, however often its laptop reconnects meanwhile.
        """
        if event == "open" and tunnel.host not in self._on_connect:
            self._on_connect.add(tunnel.host)
            self.request_backup(tunnel.host).addBoth(
                lambda _: self._on_connect.discard(tunnel.host))

    def request_backup(self, host: str, backup_type: str | None = None) -> Deferred:
        """
        Ask BackupPC for a backup of C{host} (of C{backup_type}, by default
        the request's); fires with a L{BackupReply}, which is also logged.
        """
        argv = self.request.argv(host, backup_type)
        protocol, e = self._run(argv)
        if e is not None:
            self.log.error("cannot ask BackupPC to back up {client_name}: {command}: {error}",
                           client_name=host, command=argv[0], error=e)
            return succeed(BackupReply(False, f"the server cannot run {argv[0]}: {e.strerror}"))

        def ended(result):
            code, output = result
            reply = output.decode("utf-8", "replace").strip() or "(no reply)"
            late = self._timed_out(protocol, argv)
            if late is not None:
                self.log.error("asking BackupPC to back up {client_name} failed: {reason}",
                               client_name=host, reason=late)
                return BackupReply(False, late)
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

    def host_status(self, host: str) -> Deferred:
        """
        Ask BackupPC's daemon for C{host}'s status; fires with a
        L{HostStatus}, or C{None} if there is none to be had (logged).
        """
        argv = self.request.status_argv(host)
        protocol, e = self._run(argv)
        if e is not None:
            self.log.error("cannot ask BackupPC for the status of {client_name}: {command}: "
                           "{error}", client_name=host, command=argv[0], error=e)
            return succeed(None)

        def ended(result):
            code, output = result
            late = self._timed_out(protocol, argv)
            if late is not None:
                self.log.warn("BackupPC gave no status for {client_name}: {reason}",
                              client_name=host, reason=late)
                return None
            status = parse_status_reply(output.decode("utf-8", "replace"))
            if status is None:
                self.log.warn("BackupPC gave no status for {client_name} (exit {code}): {reply}",
                              client_name=host, code=code,
                              reply=output.decode("utf-8", "replace").strip()[:200] or "(none)")
            return status

        return protocol.done.addCallback(ended)
