"""Shared pieces of the end-to-end tests: log capture, process and socket waits."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import formatEvent, globalLogPublisher

#: Upper bound for any single wait in the end-to-end tests.
TIMEOUT = 120


class LogCapture:
    """Collects formatted log lines while installed; waits for a given line."""

    def __init__(self, testcase):
        self.lines: list[str] = []
        self._waiting: list[tuple[str, Deferred]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event) -> None:
        text = formatEvent(event)
        self.lines.append(text)
        waiting, self._waiting = self._waiting, []
        for words, d in waiting:
            if words in text:
                d.callback(text)
            else:
                self._waiting.append((words, d))

    def wait_for(self, words: str) -> Deferred:
        """Fires with the first log line (already seen or to come) containing C{words}."""
        for line in self.lines:
            if words in line:
                d = Deferred()
                d.callback(line)
                return d
        d = Deferred()
        self._waiting.append((words, d))
        return d.addTimeout(TIMEOUT, reactor)

    def matching(self, words: str) -> list[str]:
        return [line for line in self.lines if words in line]


def temp_dir(testcase) -> Path:
    """
    A new empty folder, removed after the test.  (TestCase.mktemp would put
    it under the current folder when pytest runs the suite.)
    """
    path = Path(tempfile.mkdtemp(prefix="bpctunnel-test-"))
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def tcp_connect(port: int) -> Deferred:
    """Connect to 127.0.0.1:port; fires with the protocol or fails (e.g. refused)."""
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10), Protocol())


class RunningProcess(ProcessProtocol):
    """
    A child process whose output (stdout and stderr together) is kept, with
    Deferreds for "a line containing these words appeared" and "it ended".
    """

    def __init__(self):
        self.output = b""
        self.ended = Deferred()
        self.exit_code = None
        self._waiting: list[tuple[bytes, Deferred]] = []

    def childDataReceived(self, fd, data):
        self.output += data
        waiting, self._waiting = self._waiting, []
        for words, d in waiting:
            if words in self.output:
                d.callback(self.text)
            else:
                self._waiting.append((words, d))

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def wait_for(self, words: str) -> Deferred:
        """Fires with all output so far once it contains C{words}."""
        d = Deferred()
        if words.encode() in self.output:
            d.callback(self.text)
        else:
            self._waiting.append((words.encode(), d))
        return d.addTimeout(TIMEOUT, reactor)

    def processEnded(self, reason):
        self.exit_code = getattr(reason.value, "exitCode", None)
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(AssertionError(f"process ended without printing that; output:\n{self.text}"))
        self.ended.callback(self.exit_code)

    def stop(self, signal="TERM") -> Deferred:
        """Signal the process (if still running); fires with its exit code."""
        if self.exit_code is None and not self.ended.called:
            try:
                self.transport.signalProcess(signal)
            except ProcessExitedAlready:
                pass
        d = Deferred()
        self.ended.addBoth(lambda r: (d.callback(r), r)[1])
        return d.addTimeout(TIMEOUT, reactor)


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def spawn(testcase, argv: list[str], cwd: Path | None = None) -> RunningProcess:
    """
    Start C{argv} with our Python's environment, the project on PYTHONPATH (so
    twistd finds our plugins), and kill it at the end of the test.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    process = RunningProcess()
    reactor.spawnProcess(process, argv[0], argv, env=env, path=str(cwd) if cwd else None)
    testcase.addCleanup(process.stop, "KILL")
    return process


def twistd(testcase, *args: str, cwd: Path | None = None) -> RunningProcess:
    """Run C{twistd --nodaemon --pidfile= --logfile=- ARGS} with our Python."""
    return spawn(testcase, [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                            "--nodaemon", "--pidfile=", "--logfile=-", *args], cwd=cwd)


def run_cli(testcase, *args: str, cwd: Path | None = None) -> Deferred:
    """Run C{bpctunnel ARGS} as a process; fires with (exit code, output)."""
    process = spawn(testcase, [sys.executable, "-m", "bpctunnel", *args], cwd=cwd)
    return process.ended.addCallback(lambda code: (code, process.text))


class _ProxySide(Protocol):
    """One side of a L{FreezableProxy} connection."""

    def __init__(self, proxy, peer=None):
        self.proxy = proxy
        self.peer = peer
        self.buffer = []

    def connectionMade(self):
        self.proxy.transports.append(self.transport)
        if self.proxy.frozen:
            self.transport.pauseProducing()
        if self.peer is None:
            # The accepted side: connect onward, and hold data until connected.
            self.transport.pauseProducing()
            other = _ProxySide(self.proxy, peer=self)
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target), other)
        else:
            self.peer.peer = self
            if not self.proxy.frozen:
                self.peer.transport.resumeProducing()

    def dataReceived(self, data):
        self.peer.transport.write(data)

    def connectionLost(self, reason):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class FreezableProxy:
    """
    A TCP forwarder from 127.0.0.1:<port> to 127.0.0.1:<target>.  C{freeze()}
    stops it forwarding in both directions without closing anything: a
    network path that silently died.
    """

    def __init__(self, testcase, target: int):
        from twisted.internet.protocol import Factory

        self.target = target
        self.frozen = False
        self.transports = []
        self.port = reactor.listenTCP(0, Factory.forProtocol(lambda: _ProxySide(self)),
                                      interface="127.0.0.1")
        testcase.addCleanup(self.close)

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def freeze(self) -> None:
        self.frozen = True
        for transport in self.transports:
            transport.pauseProducing()

    def close(self):
        for transport in self.transports:
            transport.abortConnection()
        return self.port.stopListening()
