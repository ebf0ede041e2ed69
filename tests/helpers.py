"""Shared pieces of the end-to-end tests: log capture, process and socket waits."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
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
