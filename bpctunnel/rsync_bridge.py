"""
The client's end of a channel: one `rsync --server --daemon` process.

rsync speaks its daemon protocol over stdin/stdout exactly as it would over a
socket (this is how `rsync -e ssh host::module` works), so no rsync port is
ever opened on the laptop and no rsync password is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from bpctunnel.mux import Channel, ILocalEnd

#: Seconds rsync may keep running after BackupPC has gone away.
KILL_GRACE = 10.0
#: How much of BackupPC's first bytes are looked at for the module name.
MODULE_HEAD_LIMIT = 1024


def rsync_argv(rsync: str, rsyncd_conf: Path) -> list[str]:
    """The one command the client ever runs, whatever the server sends."""
    return [rsync, "--server", "--daemon", f"--config={rsyncd_conf}", "."]


def rsync_environment() -> dict[str, str]:
    """A minimal environment: rsync needs no secrets of ours."""
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    for name in ("SYSTEMROOT", "LANG", "LC_ALL", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


@implementer(ILocalEnd)
class RsyncProcessProtocol(ProcessProtocol):
    """
    Carries one channel's bytes to and from one rsync process.

    fd 1 feeds the channel, fd 2 goes to the log, and the channel's EOF
    closes rsync's stdin: the daemon protocol depends on that end-of-stream.
    """

    log = Logger()

    def __init__(self, channel: Channel, clock: IReactorTime, client_name: str = ""):
        self.channel = channel
        self.clock = clock
        self.client_name = client_name
        self.pid = None
        self.ended = False
        self.exit_code: int | None = None
        self._stderr = b""
        self._kill_call = None
        self._aborted = False
        self.module: str | None = None
        self._head: bytes | None = b""
        self.started = clock.seconds()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.channel.attach(self)
        self.transport.registerProducer(self.channel, True)
        self.channel.accept()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.channel.local_data(data)
        elif childFD == 2:
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

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 1:
            self.channel.local_eof()

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
        if reason.check(ProcessDone) or (signal is None and self.exit_code is not None):
            # rsync reports its own errors inside its protocol; the stream
            # itself ended properly.
            self.channel.local_closed()
        elif not self._aborted:
            self.channel.local_closed(error=f"rsync was killed by signal {signal}")

    # ILocalEnd
    def write(self, data: bytes) -> None:
        if self._head is not None:
            self._read_module(data)
        self.transport.write(data)

    def _read_module(self, data: bytes) -> None:
        # The daemon protocol starts "@RSYNCD: <version>\n<module>\n" from
        # BackupPC's side: remember the module, for the log.
        self._head += data[:MODULE_HEAD_LIMIT]
        lines = self._head.split(b"\n")
        if len(lines) >= 3 or len(self._head) >= MODULE_HEAD_LIMIT:
            if len(lines) >= 3 and lines[0].startswith(b"@RSYNCD:"):
                self.module = lines[1].decode("utf-8", "replace").strip() or None
            self._head = None

    def write_eof(self) -> None:
        self.transport.closeStdin()

    def close(self) -> None:
        self.transport.closeStdin()
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
        self._kill()

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()


@attrs.frozen
class RsyncLauncher:
    """
    Starts one rsync daemon process per channel the server opens.

    @ivar reactor: an C{IReactorProcess} and C{IReactorTime}.
    """

    reactor: IReactorProcess
    rsync: str
    rsyncd_conf: Path
    client_name: str = ""

    def __call__(self, channel: Channel) -> RsyncProcessProtocol:
        protocol = RsyncProcessProtocol(channel, self.reactor, self.client_name)
        argv = rsync_argv(self.rsync, self.rsyncd_conf)
        try:
            self.reactor.spawnProcess(protocol, argv[0], argv, env=rsync_environment())
        except OSError as e:
            channel.reset(f"the client could not start {self.rsync}: {e}")
        return protocol
