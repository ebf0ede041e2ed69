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

No rsync port is ever opened on the laptop and no rsync password is needed.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorProcess, IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from zope.interface import implementer

from bpctunnel.bulk_io import release_and_close, tune_for_bulk
from bpctunnel.errors import ConfigError
from bpctunnel.greeting import ModuleSniffer
from bpctunnel.mux import LOCAL_READ_SIZE, Channel, ILocalEnd
from bpctunnel.rsyncd_conf import identity_overrides, module_identities, read_rsyncd_conf

#: Seconds rsync may keep running after BackupPC has gone away.
KILL_GRACE = 10.0


def rsync_argv(rsync: str, rsyncd_conf: Path, overrides=()) -> list[str]:
    """
    The one command the client ever runs, whatever the server sends;
    C{overrides} are C{--dparam} options of ours (L{identity_overrides}).
    """
    return [rsync, "--daemon", f"--config={rsyncd_conf}", *overrides]


def daemon_overrides(rsyncd_conf: Path, euid: int) -> list[str]:
    """L{identity_overrides} for the rsyncd.conf as it is now (rsync reports a bad one)."""
    try:
        global_settings, _ = read_rsyncd_conf(rsyncd_conf)
    except ConfigError:
        global_settings = {}
    return identity_overrides(global_settings, euid)


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

    def __init__(self, channel: Channel, clock: IReactorTime, client_name: str = ""):
        self.channel = channel
        self.clock = clock
        self.client_name = client_name
        self.pid = None
        self.socket = None
        self.ended = False
        self._socket_ended = False
        self._reason = None
        self._finished = False
        self.exit_code: int | None = None
        self._stderr = b""
        self._kill_call = None
        self._aborted = False
        self._greeting = ModuleSniffer()
        self.started = clock.seconds()

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
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        signal = getattr(value, "signal", None)
        self.log.info(
            "rsync[{pid}] for channel {channel_id} exited {how}: module {module}, "
            "{bytes_out} bytes sent, {bytes_in} bytes received in {duration:.1f} s",
            pid=self.pid,
            channel_id=self.channel.channel_id,
            how=f"with status {self.exit_code}" if signal is None else f"on signal {signal}",
            exit_code=self.exit_code,
            module=self.module or "(module list)",
            bytes_out=self.channel.bytes_out,
            bytes_in=self.channel.bytes_in,
            duration=self.clock.seconds() - self.started,
        )
        self._reason = reason
        if self.socket is None:
            self._socket_ended = True   # rsync never got its socket
        self._maybe_finished()

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
        release_and_close(self.socket, half=True)

    def close(self) -> None:
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

    def __call__(self, channel: Channel) -> RsyncProcessProtocol:
        protocol = RsyncProcessProtocol(channel, self.reactor, self.client_name)
        argv = rsync_argv(self.rsync, self.rsyncd_conf,
                          daemon_overrides(self.rsyncd_conf, self.euid))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                self.reactor.spawnProcess(protocol, argv[0], argv, env=rsync_environment(),
                                          childFDs={0: theirs.fileno(), 1: "r", 2: "r"})
            except OSError as e:
                channel.reset(f"the client could not start {self.rsync}: {e}")
                return protocol
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
