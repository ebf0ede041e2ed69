"""
The client's end of a channel: one rsync daemon, serving one connection.

rsync runs as its own daemon in inetd mode, C{rsync --daemon --config=...}
with one end of a socket pair as its stdin: exactly how inetd or systemd
socket activation run rsyncd for one TCP connection.  BackupPC therefore sees
what a local rsyncd gives it, error messages included: a socket daemon sends
them inside the protocol stream ("ERROR: module is read only", "send_files
failed to open ...").  Over pipes, C{rsync --server --daemon} is a daemon
run by a remote shell, and rsync >= 3.2.3 writes those messages to its
stderr instead: BackupPC never saw them, and recorded a restore that wrote
nothing as a good one.

No rsync port is ever opened on the laptop.  With a bundle that holds the
host's secret (L{bpctunnel.client.rsync_auth}), every module asks BackupPC
for it; the secret reaches rsync through a pipe, fd 4.

BackupPC counts the files rsync could not send only after its
C{DumpPostUserCmd} has run, so the laptop counts them itself: each daemon
writes its log to a pipe we read (C{--dparam=logfile=/dev/fd/3}, with fd 3
our pipe; rsync still opens it as a path, by name, before it drops
privileges), L{TransferProblems} picks out the files it could not read
(C{send_files failed to open}, C{opendir ... failed}, ...) and those that
vanished, and when the daemon exits the client logs them on its summary
line and sends the server C{{"type": "transfer-report", "module": str,
"unreadable": [names], "unreadable_count": int, "vanished": [names],
"vanished_count": int}} (only if there were any; at most
L{bpctunnel.client.rsync_log.MAX_NAMES} names of each kind).  A global C{log file}
in rsyncd.conf still gets every line (we append what we read); a module that sets its own C{log file} takes its
lines there instead, and its unreadable files go unreported.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorProcess, IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from zope.interface import implementer

from bpctunnel.wire import framing
from bpctunnel.transport.sockets import release_and_close, tune_for_bulk
from bpctunnel.errors import ConfigError
from bpctunnel.wire.rsync_greeting import ModuleSniffer
from bpctunnel.wire.mux import LOCAL_READ_SIZE, Channel, ILocalEnd
from bpctunnel.client.rsync_auth import SECRETS_FD, RsyncAuth
from bpctunnel.client.rsync_log import MAX_LOG_LINE, TransferProblems
from bpctunnel.client.rsyncd_conf import (
    confinement_overrides,
    identity_overrides,
    module_identities,
    read_rsyncd_conf,
    writable_modules,
)

#: Seconds rsync may keep running after BackupPC has gone away.
KILL_GRACE = 10.0
#: The daemon's file descriptor for its log: a pipe we read.
LOG_FD = 3
LOG_OVERRIDE = f"--dparam=logfile=/dev/fd/{LOG_FD}"
def rsync_argv(rsync: str, rsyncd_conf: Path, overrides=()) -> list[str]:
    """
    The one command the client ever runs, whatever the server sends;
    C{overrides} are C{--dparam} options of ours (L{daemon_overrides}).
    """
    return [rsync, "--daemon", f"--config={rsyncd_conf}", *overrides]


def daemon_overrides(rsyncd_conf: Path, euid: int, auth: RsyncAuth | None = None) -> list[str]:
    """
    L{identity_overrides} for the rsyncd.conf as it is now (rsync reports a
    bad one), the daemon's log to our pipe (L{LOG_FD}), and the host's
    secret (L{SECRETS_FD}) if there is one.
    """
    try:
        global_settings, _ = read_rsyncd_conf(rsyncd_conf)
    except ConfigError:
        global_settings = {}
    secret = auth.daemon_overrides() if auth is not None else []
    return [*identity_overrides(global_settings, euid), *confinement_overrides(euid),
            LOG_OVERRIDE, *secret]


def user_log_file(rsyncd_conf: Path) -> Path | None:
    """The global C{log file} of rsyncd.conf, which our override replaces, if any."""
    try:
        global_settings, _ = read_rsyncd_conf(rsyncd_conf)
    except ConfigError:
        return None
    name = global_settings.get("logfile", "")
    return Path(name) if name else None


def rsync_environment() -> dict[str, str]:
    """A minimal environment: rsync needs no secrets of ours."""
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    for name in ("SYSTEMROOT", "LANG", "LC_ALL", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


@implementer(IHalfCloseableProtocol)
class RsyncSocketProtocol(Protocol):
    """Our end of the socket pair whose other end is rsync's stdin."""

    def __init__(self, bridge: RsyncProcessProtocol):
        self.bridge = bridge

    def connectionMade(self) -> None:
        self.bridge.socket_connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.bridge.channel.local_data(data)

    def readConnectionLost(self) -> None:
        self.bridge.socket_ended()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.bridge.socket_lost = True
        self.bridge.socket_ended()


@implementer(ILocalEnd)
class RsyncProcessProtocol(ProcessProtocol):
    """
    Carries one channel's bytes to and from one rsync daemon.

    The bytes travel over the socket pair (L{RsyncSocketProtocol}); the
    channel's EOF half-closes our end, which the daemon protocol depends on.
    The process itself only has its stderr logged (rsync closes it once it
    runs as a daemon, so only start-up errors appear).  The channel closes
    once rsync has exited and its end of the socket has ended, so that
    nothing it wrote is lost.
    """

    log = Logger()

    def __init__(self, channel: Channel, clock: IReactorTime, client_name: str = "",
                 log_file: Path | None = None):
        self.channel = channel
        self.problems = TransferProblems()
        self._log_buffer = b""
        #: rsyncd.conf's own global log file, which gets each line we read.
        self.log_file = log_file
        self._log_file_failed = False
        self.clock = clock
        self.client_name = client_name
        self.pid = None
        self.socket = None
        self.ended = False
        self._socket_ended = False
        #: Our end of the socket is closed: nothing more can be written to it.
        self.socket_lost = False
        self._reason = None
        self._finished = False
        self.exit_code: int | None = None
        self._stderr = b""
        self._kill_call = None
        self._aborted = False
        self._greeting = ModuleSniffer()
        self.started = clock.seconds()
        #: Fires once rsync has exited and its pipes are closed.
        self.done = Deferred()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def socket_connected(self, transport) -> None:
        """Our end of the socket pair is in the reactor: the channel can start."""
        self.socket = transport
        tune_for_bulk(transport, LOCAL_READ_SIZE)
        self.channel.attach(self)
        transport.registerProducer(self.channel, True)

    def socket_ended(self) -> None:
        """rsync's end of the socket closed: everything it wrote has been read."""
        if not self._socket_ended:
            self._socket_ended = True
            self.channel.local_eof()
            self._maybe_finished()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 2:
            self._stderr += data
            *lines, self._stderr = self._stderr.split(b"\n")
            for line in lines:
                self._log_stderr(line)
        elif childFD == LOG_FD:
            self._log_buffer += data
            *lines, self._log_buffer = self._log_buffer.split(b"\n")
            if len(self._log_buffer) > MAX_LOG_LINE:
                # A line without end: keep its start, as a line of its own.
                lines.append(self._log_buffer[:MAX_LOG_LINE])
                self._log_buffer = b""
            self._daemon_log(lines)

    def _daemon_log(self, lines: list[bytes]) -> None:
        texts = [line.decode("utf-8", "replace").rstrip() for line in lines]
        texts = [text for text in texts if text]
        for text in texts:
            self.problems.add_line(text)
            self.log.debug("rsyncd on channel {channel_id}: {line}",
                           channel_id=self.channel.channel_id, line=text)
        if texts and self.log_file is not None and not self._log_file_failed:
            try:
                with self.log_file.open("a", encoding="utf-8") as f:
                    f.write("".join(text + "\n" for text in texts))
            except OSError as e:
                self._log_file_failed = True
                self.log.warn("cannot append rsync's log to {path}: {error}",
                              path=str(self.log_file), error=e.strerror)

    def _log_stderr(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            self.log.info(
                "rsync[{pid}] on channel {channel_id}: {line}",
                pid=self.pid,
                channel_id=self.channel.channel_id,
                line=text,
            )

    def processEnded(self, reason) -> None:
        self.ended = True
        if self._stderr:
            self._log_stderr(self._stderr)
            self._stderr = b""
        if self._log_buffer:
            self._daemon_log([self._log_buffer])
            self._log_buffer = b""
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        signal = getattr(value, "signal", None)
        problems = self.problems.summary()
        emit = self.log.warn if problems else self.log.info
        emit(
            "rsync[{pid}] for channel {channel_id} exited {how}: module {module}, "
            "{bytes_out} bytes sent, {bytes_in} bytes received in {duration:.1f} s{problems}",
            pid=self.pid,
            channel_id=self.channel.channel_id,
            how=f"with status {self.exit_code}" if signal is None else f"on signal {signal}",
            exit_code=self.exit_code,
            module=self.module or "(module list)",
            bytes_out=self.channel.bytes_out,
            bytes_in=self.channel.bytes_in,
            duration=self.clock.seconds() - self.started,
            problems=f"; {problems}" if problems else "",
            unreadable=self.problems.counts["unreadable"],
            vanished=self.problems.counts["vanished"],
        )
        if self.problems:
            # Before the channel's CLOSE, and long before BackupPC's
            # DumpPostUserCmd reports the backup's end to the server.
            self.channel.mux.send(framing.Control(self.problems.report(self.module)))
        self._reason = reason
        if self.socket is None:
            self._socket_ended = True   # rsync never got its socket
        self._maybe_finished()
        self.done.callback(None)

    def _maybe_finished(self) -> None:
        # Only once rsync has exited AND its end of the socket has ended:
        # bytes it wrote just before exiting may still be unread.
        if self._finished or not self.ended or not self._socket_ended:
            return
        self._finished = True
        signal = getattr(self._reason.value, "signal", None)
        if self.socket is not None:
            self.socket.loseConnection()
        if self._reason.check(ProcessDone) or (signal is None and self.exit_code is not None):
            # rsync reports its own errors inside its protocol; the stream
            # itself ended properly.
            self.channel.local_closed()
        elif not self._aborted:
            self.channel.local_closed(error=f"rsync was killed by signal {signal}")

    # ILocalEnd
    def write(self, data: bytes) -> None:
        if not self._greeting.done:
            self._greeting.feed(data)
        self.socket.write(data)

    @property
    def module(self) -> str | None:
        """The rsyncd module BackupPC asked for, once known."""
        return self._greeting.module

    def write_eof(self) -> None:
        if not self.socket_lost:     # rsync may be gone before BackupPC's EOF arrives
            release_and_close(self.socket, half=True)

    def close(self) -> None:
        if not self.socket_lost:
            release_and_close(self.socket)
        if not self.ended:
            self._kill_call = self.clock.callLater(KILL_GRACE, self._kill)

    def abort(self, reason: str) -> None:
        self._aborted = True
        self.log.warn(
            "stopping rsync[{pid}] on channel {channel_id}: {reason}",
            pid=self.pid,
            channel_id=self.channel.channel_id,
            reason=reason,
        )
        if self.socket is not None:
            self.socket.abortConnection()
        self._kill()

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def pause_reading(self) -> None:
        self.socket.pauseProducing()

    def resume_reading(self) -> None:
        self.socket.resumeProducing()


@attrs.frozen
class RsyncLauncher:
    """
    Starts one rsync daemon per channel the server opens.

    @ivar reactor: an C{IReactorProcess}, C{IReactorSocket} and C{IReactorTime}.
    """

    reactor: IReactorProcess
    rsync: str
    rsyncd_conf: Path
    client_name: str = ""
    euid: int = attrs.field(factory=os.geteuid)
    #: The secret each daemon asks BackupPC for, if any.
    auth: RsyncAuth | None = None
    #: Whether rsyncd.conf may have writable modules (checked again for
    #: every channel: an edit made while the client runs counts).
    allow_restore: bool = False
    #: The rsync daemons running now.
    running: set = attrs.field(factory=set, eq=False)

    def stop_all(self, reason: str) -> Deferred:
        """Stop every running rsync; fires once all have exited."""
        waiting = []
        for protocol in list(self.running):
            protocol.abort(reason)
            waiting.append(protocol.done)
        return gatherResults(waiting, consumeErrors=True)

    def _writable_now(self) -> str | None:
        """Why rsyncd.conf as it is now must not be served, if it must not."""
        try:
            writable = writable_modules(self.rsyncd_conf)
        except ConfigError as e:
            return f"the client serves nothing: {e}"
        if not writable:
            return None
        return (f"the client serves nothing: {self.rsyncd_conf} now has writable module(s) "
                f"{', '.join(writable)} (read only = no), and a backup server that was broken "
                f"into could overwrite this machine's files; make them read only = yes, or set "
                f"allow_restore = yes in the client's config to allow restores")

    def __call__(self, channel: Channel) -> RsyncProcessProtocol:
        protocol = RsyncProcessProtocol(channel, self.reactor, self.client_name,
                                        user_log_file(self.rsyncd_conf))
        refusal = None if self.allow_restore else self._writable_now()
        if refusal:
            Logger().warn("{refusal}", refusal=refusal)
            channel.reset(refusal)
            return protocol
        argv = rsync_argv(self.rsync, self.rsyncd_conf,
                          daemon_overrides(self.rsyncd_conf, self.euid, self.auth))
        child_fds = {0: None, 1: "r", 2: "r", LOG_FD: "r"}
        if self.auth is not None:
            child_fds[SECRETS_FD] = "w"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child_fds[0] = theirs.fileno()
            try:
                process = self.reactor.spawnProcess(protocol, argv[0], argv,
                                                    env=rsync_environment(), childFDs=child_fds)
            except OSError as e:
                channel.reset(f"the client could not start {self.rsync}: {e}")
                return protocol
            if self.auth is not None:
                # A few dozen bytes: the pipe holds them until rsync reads.
                process.writeToChild(SECRETS_FD, self.auth.secrets_line())
                process.closeChildFD(SECRETS_FD)
            self.running.add(protocol)
            protocol.done.addBoth(lambda _: self.running.discard(protocol))
            # The reactor keeps a duplicate of our end; both originals close
            # below, so rsync's exit shows as the end of the socket.
            self.reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX,
                Factory.forProtocol(lambda: RsyncSocketProtocol(protocol)))
        finally:
            ours.close()
            theirs.close()
        channel.accept()
        return protocol


def parse_rsync_version(output: str) -> tuple[str, str] | None:
    """C{('3.2.7', '31')} from the first line of C{rsync --version}."""
    match = re.search(r"rsync\s+version\s+v?(\S+)\s+protocol version (\d+)", output)
    return (match.group(1), match.group(2)) if match else None


#: rsync 3.4.0 (January 2025) fixed daemon-side holes (CVE-2024-12084 to
#: -12088 and more) that a hostile client could use; distributions backport
#: the fixes without changing the version (Debian 12's 3.2.7-1+deb12u2).
FIXED_DAEMON_HOLES = (3, 4, 0)


def version_warning(version: str) -> str | None:
    """Words for the log if C{version} predates L{FIXED_DAEMON_HOLES}."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    if not numbers or numbers >= FIXED_DAEMON_HOLES:
        return None
    return (f"rsync {version} predates 3.4.0, which fixed daemon holes a broken-into backup "
            f"server could use; bpctunnel confines it (refused options, and a chroot when run "
            f"as root), but update rsync or make sure your distribution backported the fixes")


def log_daemon_identity(reactor: IReactorProcess, rsync: str, rsyncd_conf: Path,
                        euid: int | None = None) -> Deferred:
    """
    Log, once at start, the rsync version and who each module reads files
    as; fires with the lines logged (for tests).
    """
    log = Logger()
    euid = os.geteuid() if euid is None else euid
    try:
        user = pwd.getpwuid(euid).pw_name
    except KeyError:
        user = f"uid {euid}"

    def report(result):
        out, _err, code = result
        version = parse_rsync_version(out.decode("utf-8", "replace"))
        lines = []
        if version is None:
            lines.append(f"{rsync} --version said no version (exit status {code})")
        else:
            lines.append(f"rsync {version[0]} (protocol {version[1]}) at {rsync}")
            warning = version_warning(version[0])
            if warning:
                log.warn("{warning}", warning=warning)
                lines.append(warning)
        try:
            global_settings, modules = read_rsyncd_conf(rsyncd_conf)
        except ConfigError as e:
            lines.append(str(e))
        else:
            for module, who in module_identities(global_settings, modules, euid, user).items():
                lines.append(f"module {module} reads files as {who}")
        for line in lines:
            log.info("{line}", line=line)
        return lines

    def failed(failure):
        log.warn("cannot run {rsync} --version: {error}", rsync=rsync,
                 error=failure.getErrorMessage())
        return [failure.getErrorMessage()]

    d = getProcessOutputAndValue(rsync, ["--version"], env=rsync_environment(), reactor=reactor)
    return d.addCallbacks(report, failed)
