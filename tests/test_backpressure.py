"""
End-to-end backpressure: a slow reader on either side of the tunnel pauses
the producer on the other, and the memory of the server and client
processes stays bounded while gigabytes go through.

Server and client run as separate twistd processes, so that their resident
memory (VmRSS in /proc/<pid>/status) can be measured; the client runs
tests/fake_rsync.py as its rsync, which pushes or swallows a counter pattern
(see that file), so loss, duplication or reordering is detected too.

  - laptop -> server (a backup): the fake rsync writes as fast as its pipe
    takes bytes; BackupPC's stand-in, a TCP client in this process, reads at
    a fixed rate by pausing its transport and resuming it on the clock.
  - server -> laptop: BackupPC's stand-in writes as fast as its transport
    accepts (an IPushProducer on it); the fake rsync reads stdin at a fixed
    rate, sleeping between reads.

If any hop buffered instead of passing "stop" upstream, the bytes the
reader has not yet taken would pile up in the server or client, and their
RSS would grow by up to the whole stream.

BPCTUNNEL_BACKPRESSURE_BYTES sets the stream length for quick local runs
(a multiple of 64 KiB; the suite runs the default, 2 GiB).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from bpctunnel.testing.sandbox import Sandbox, free_port
from tests.fake_rsync import CHUNK, PatternChecker, pattern_chunk
from tests.helpers import TIMEOUT, temp_dir, twistd

FAKE_RSYNC = Path(__file__).resolve().parent / "fake_rsync.py"

#: Bytes pushed through the tunnel in each direction.
TOTAL = int(os.environ.get("BPCTUNNEL_BACKPRESSURE_BYTES", 2 * 1024**3))
#: How fast the deliberately slow readers read, in bytes per second: BackupPC
#: during a backup, rsync during a restore.  Well below what the tunnel
#: carries on two cores when not throttled (up to about 90 MiB/s towards the
#: server and 140 MiB/s towards the laptop), so that the reader, not the
#: tunnel, sets the pace and every hop has to hold back; 2 GiB then take
#: about 51 s and 32 s.
BACKUPPC_READ_RATE = 40 * 1024**2
RSYNC_READ_RATE = 64 * 1024**2
#: The bound on each process's RSS growth while the stream flows.
RSS_BOUND = 64 * 1024**2
#: Seconds between RSS samples (VmHWM catches peaks between them).
SAMPLE_INTERVAL = 0.2

MiB = 1024**2


def transfer_timeout(rate: float) -> float:
    """The longest a transfer at C{rate} may take: twice as long as it should, plus slack."""
    return 2 * TOTAL / rate + 60


def proc_status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class RssMonitor:
    """
    Samples the resident memory of some processes on the reactor's clock.

    The baseline is taken at construction; the peak is the largest sample,
    or the kernel's high-water mark (VmHWM, reset at the baseline through
    /proc/<pid>/clear_refs) if that is larger, so a spike between two
    samples is not missed.
    """

    def __init__(self, pids: dict[str, int], interval: float = SAMPLE_INTERVAL):
        self.pids = pids
        for pid in pids.values():
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        self.baseline = {name: proc_status_kib(pid, "VmRSS") * 1024 for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self.samples = 0
        self._stopped = False
        self._loop = LoopingCall(self.sample)
        self._loop.clock = reactor
        self._loop.start(interval, now=True)

    def _measure(self, field: str) -> None:
        for name, pid in self.pids.items():
            try:
                kib = proc_status_kib(pid, field)
            except FileNotFoundError:
                continue  # the process died; the transfer fails and says so
            self.peak[name] = max(self.peak[name], kib * 1024)

    def sample(self) -> None:
        self.samples += 1
        self._measure("VmRSS")

    def stop(self) -> None:
        """Stop sampling (once); take the high-water marks into account."""
        if self._stopped:
            return
        self._stopped = True
        self._loop.stop()
        self._measure("VmHWM")

    def growth(self, name: str) -> int:
        return self.peak[name] - self.baseline[name]

    def report(self) -> str:
        return "; ".join(
            f"{name} RSS baseline {self.baseline[name] / MiB:.1f} MiB, peak "
            f"{self.peak[name] / MiB:.1f} MiB, growth {self.growth(name) / MiB:.1f} MiB"
            for name in self.pids
        )


class SlowReaderProtocol(Protocol):
    """
    BackupPC's stand-in for a backup: asks the fake rsync to send C{total}
    bytes and reads them at no more than C{rate} bytes per second, by
    pausing its transport whenever it is ahead of that rate and resuming it
    on the clock once the rate has caught up.
    """

    def __init__(self, total: int, rate: float, clock=reactor):
        self.total = total
        self.rate = rate
        self.clock = clock
        self.checker = PatternChecker(total)
        #: Seconds the reader held its transport paused (it was ahead of the rate).
        self.held = 0.0
        self.started = self.finished = None
        self.done = Deferred()
        self._resume_call = None

    def connectionMade(self) -> None:
        self.started = self.clock.seconds()
        self.transport.write(b"send %d\n" % self.total)

    def dataReceived(self, data: bytes) -> None:
        self.checker.feed(data)
        ahead = self.started + self.checker.received / self.rate - self.clock.seconds()
        if ahead > 0 and self._resume_call is None:
            self.transport.pauseProducing()
            self.held += ahead
            self._resume_call = self.clock.callLater(ahead, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        self.transport.resumeProducing()

    def progress(self) -> str:
        error = self.checker.error or "no error"
        return f"{self.checker.received} of {self.total} bytes read, {error}"

    def connectionLost(self, reason) -> None:
        self.finished = self.clock.seconds()
        if self._resume_call is not None:
            self._resume_call.cancel()
            self._resume_call = None
        self.done.callback(None)


@implementer(IPushProducer)
class FastWriterProtocol(Protocol):
    """
    BackupPC's stand-in for a restore: asks the fake rsync to read C{total}
    bytes at C{rate} bytes per second, and writes them as fast as its
    transport takes them (it is the push producer of its own transport).
    What the fake rsync answers is kept in C{reply}.
    """

    def __init__(self, total: int, rate: float, clock=reactor):
        self.total = total
        self.rate = rate
        self.clock = clock
        self.chunks = total // CHUNK
        self.index = 0
        self.paused = True
        #: Times the transport paused us, and for how long in all.
        self.pauses = 0
        self.held = 0.0
        self._paused_at = None
        self.reply = b""
        self.started = self.written = self.finished = None
        self.done = Deferred()

    def connectionMade(self) -> None:
        self.started = self.clock.seconds()
        self.transport.write(b"receive %d %d\n" % (self.total, self.rate))
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        if self._paused_at is not None:
            self.held += self.clock.seconds() - self._paused_at
            self._paused_at = None
        self.paused = False
        # transport.write calls pauseProducing as soon as its buffer is full.
        while not self.paused and self.index < self.chunks:
            self.transport.write(pattern_chunk(self.index))
            self.index += 1
        if self.index == self.chunks and self.written is None:
            self.written = self.clock.seconds()
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1
        self._paused_at = self.clock.seconds()

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        self.reply += data

    def progress(self) -> str:
        return (f"{self.index * CHUNK} of {self.total} bytes written, "
                f"the fake rsync said {self.reply!r}")

    def connectionLost(self, reason) -> None:
        self.finished = self.clock.seconds()
        self.done.callback(None)


class SlowReaderMemoryTests(TestCase):
    """
    Acceptance: 2 GiB through a connection whose reader is deliberately
    slow, in each direction, keeps the server's and the client's RSS growth
    under 64 MiB.
    """

    timeout = int(transfer_timeout(min(BACKUPPC_READ_RATE, RSYNC_READ_RATE)) + 4 * TIMEOUT)

    @inlineCallbacks
    def setUp(self):
        root = temp_dir(self)
        sandbox = Sandbox.create(root)
        files = sandbox.issue_client("laptop1")
        self.port = free_port()
        sandbox.register("laptop1", self.port, files.fingerprint)
        self.server = twistd(self, "bpctunnel-server", "--listen", "127.0.0.1:0",
                             "--certs", str(sandbox.certs_dir),
                             "--backuppc-conf", str(sandbox.conf_dir), "--api-listen", "none", "--api-socket", "none", "--state-dir", "none")
        text = yield self.server.wait_for("bpctunnel server listening on")
        server_port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))
        (root / "docs").mkdir()
        config = sandbox.write_client_config(
            files, f"wss://127.0.0.1:{server_port}/tunnel", {"docs": root / "docs"},
            rsync=str(FAKE_RSYNC))
        self.client = twistd(self, "bpctunnel-client", "--config", str(config))
        yield self.client.wait_for("tunnel up to")
        yield self.server.wait_for("tunnel up for laptop1 from 127.0.0.1:")
        # Cleanups run last-added first, so this runs before helpers' KILLs
        # (and trial runs cleanups before tearDown).
        self.addCleanup(self.stop_processes)

    @inlineCallbacks
    def stop_processes(self):
        """Stop client and server the way an admin would; neither may log a traceback."""
        yield self.client.stop("TERM")
        yield self.server.wait_for("tunnel of laptop1 closed")
        yield self.server.stop("TERM")
        output = self.server.text + self.client.text
        self.assertNotIn("Traceback (most recent call last)", output)

    @inlineCallbacks
    def transfer(self, protocol, rate: float) -> Deferred:
        """
        Connect C{protocol} to the tunnel's port and measure the server's and
        client's RSS until the connection ends; fires with the L{RssMonitor}.
        """
        monitor = RssMonitor({"server": self.server.transport.pid,
                              "client": self.client.transport.pid})
        self.addCleanup(monitor.stop)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=10)
        yield connectProtocol(endpoint, protocol).addTimeout(TIMEOUT, reactor)
        try:
            yield protocol.done.addTimeout(transfer_timeout(rate), reactor)
        except TimeoutError:
            monitor.stop()
            self.fail(f"the transfer did not end within {transfer_timeout(rate):.0f} s: "
                      f"{protocol.progress()}; {monitor.report()}")
        monitor.stop()
        return monitor

    def assertBounded(self, monitor: RssMonitor, summary: str) -> None:
        print(f"\n{summary}\n{monitor.report()} ({monitor.samples} samples)", file=sys.stderr)
        for name in ("server", "client"):
            self.assertLess(
                monitor.growth(name), RSS_BOUND,
                f"the {name}'s RSS grew by {monitor.growth(name) / MiB:.1f} MiB "
                f"(bound {RSS_BOUND / MiB:.0f} MiB): {monitor.report()}")

    def assertReaderSetThePace(self, rate: float, limit: float) -> None:
        # Had the tunnel been slower than the reader, nothing would have had
        # to wait for the reader, and the memory bound would prove nothing.
        self.assertGreater(
            rate, 0.75 * limit,
            f"the tunnel carried only {rate / MiB:.1f} MiB/s, less than the reader's "
            f"{limit / MiB:.0f} MiB/s: this run could not test backpressure from the "
            f"reader (is the machine overloaded?)")

    @inlineCallbacks
    def test_slow_backuppc_reader(self):
        """
        laptop -> server (a backup): rsync writes as fast as its pipe takes
        bytes, BackupPC reads at BACKUPPC_READ_RATE; every byte arrives, in
        order, and neither process's RSS grows by RSS_BOUND or more.
        """
        reader = SlowReaderProtocol(TOTAL, BACKUPPC_READ_RATE)
        monitor = yield self.transfer(reader, BACKUPPC_READ_RATE)
        elapsed = reader.finished - reader.started
        rate = reader.checker.received / elapsed
        self.assertIsNone(reader.checker.error)
        self.assertEqual(reader.checker.received, TOTAL)
        self.assertTrue(reader.checker.complete)
        self.assertBounded(monitor, (
            f"laptop -> server, slow BackupPC: {TOTAL / MiB:.0f} MiB in {elapsed:.1f} s, "
            f"{rate / MiB:.1f} MiB/s (reader limited to {BACKUPPC_READ_RATE / MiB:.0f} MiB/s, "
            f"held back {reader.held / elapsed:.0%} of the time)"))
        self.assertReaderSetThePace(rate, BACKUPPC_READ_RATE)
        yield self.client.wait_for("exited with status 0")

    @inlineCallbacks
    def test_slow_rsync_reader(self):
        """
        server -> laptop (a restore): BackupPC writes as fast as its socket
        takes bytes, rsync reads at RSYNC_READ_RATE; every byte arrives, in
        order, and neither process's RSS grows by RSS_BOUND or more.
        """
        writer = FastWriterProtocol(TOTAL, RSYNC_READ_RATE)
        monitor = yield self.transfer(writer, RSYNC_READ_RATE)
        reply = writer.reply.decode("ascii", "replace")
        match = re.fullmatch(r"received (\d+) ok (\d+\.\d+)\n", reply)
        self.assertIsNotNone(match, f"the fake rsync answered {reply!r}")
        self.assertEqual(int(match.group(1)), TOTAL)
        elapsed = float(match.group(2))
        rate = TOTAL / elapsed
        self.assertBounded(monitor, (
            f"server -> laptop, slow rsync: {TOTAL / MiB:.0f} MiB in {elapsed:.1f} s, "
            f"{rate / MiB:.1f} MiB/s (reader limited to {RSYNC_READ_RATE / MiB:.0f} MiB/s; "
            f"BackupPC's writer was paused {writer.pauses} times, "
            f"{writer.held / (writer.written - writer.started):.0%} of the time)"))
        self.assertReaderSetThePace(rate, RSYNC_READ_RATE)
        # The writer was paused by its transport again and again, rather
        # than having its bytes buffered.
        self.assertGreater(writer.pauses, TOTAL // (8 * MiB))
        yield self.client.wait_for("exited with status 0")
