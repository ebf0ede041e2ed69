"""
Links that break the way laptops' links break (issue 16, acceptance 4).

The laptop's client runs in a network namespace of its own and reaches the
server, in another, only through a wire that delays every packet 40 ms each
way and can be cut (L{tests.cuttable_link}): TCP sees the silence and backs
off as on a real outage.  Real server and client processes (twistd), real
rsync on both sides; BackupPC's rsync runs in the server's namespace and
connects to the laptop's port on 127.0.0.1 there, as BackupPC does.

The cut tests time the cut against the keepalive (it begins half a second
before the first ping is due, and lasts 20 s); everything else waits on
log lines and processes, with bounds.  Set BPCTUNNEL_LINK_TRACE=FILE to get
every packet's passage or drop written to FILE.
"""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bpctunnel.admin import commands as admin
from bpctunnel.admin.commands import Paths
from bpctunnel.client.config import find_rsync
from bpctunnel.testing.sandbox import Sandbox, free_port, make_sample_tree, tree_digest
from tests.cuttable_link import SERVER_ADDRESS, LaptopLink
from tests.helpers import PROJECT_ROOT, RunningProcess, temp_dir

#: The server's and the client's keepalive in the cut tests: a ping unanswered
#: for two intervals (30 s) means dead; one interval (15 s) did before.
KEEPALIVE = 15.0
#: The outage: longer than one keepalive interval, shorter than two.
CUT = 20.0
#: How long before the first keepalive ping the link is cut.
BEFORE_PING = 0.5
#: One-way delay of the laptop's link.
DELAY_MS = 40
#: Bound on everything that should take a few seconds (a tunnel opening, ...).
SHORT = 20
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
          "--nodaemon", "--pidfile=", "--logfile=-"]


class Process(RunningProcess):
    """A L{RunningProcess} that can also wait for the Nth line with given words."""

    def __init__(self):
        super().__init__()
        self._counted: list[tuple[str, int, Deferred]] = []

    def childDataReceived(self, fd, data):
        super().childDataReceived(fd, data)
        counted, self._counted = self._counted, []
        for words, count, d in counted:
            if self.text.count(words) >= count:
                d.callback(self.text)
            else:
                self._counted.append((words, count, d))

    def wait_count(self, words: str, count: int, timeout: float) -> Deferred:
        """Fires with all output so far once C{words} appeared C{count} times."""
        d = Deferred()
        if self.text.count(words) >= count:
            d.callback(self.text)
        else:
            self._counted.append((words, count, d))
        return d.addTimeout(timeout, reactor)


def spawn(testcase, argv: list[str], env: dict | None = None) -> Process:
    """Start C{argv} (with C{env} added to ours); SIGKILL it at the end of the test."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                           full_env.get("PYTHONPATH")]))
    full_env["PYTHONUNBUFFERED"] = "1"
    process = Process()
    reactor.spawnProcess(process, argv[0], argv, env=full_env)
    testcase.addCleanup(process.stop, "KILL")
    return process


def at(moment: float):
    """Fires at C{moment} (reactor time): the test's cut is timed against the pings."""
    return deferLater(reactor, max(0.0, moment - reactor.seconds()), lambda: None)


def arrival(d):
    """C{d} fires with (reactor time when it fired, its result)."""
    return d.addCallback(lambda result: (reactor.seconds(), result))


class LinkFaultTestCase(TestCase):
    """A cuttable laptop link, a server behind it, helpers to run a laptop and pulls."""

    timeout = 150
    #: The server's --keepalive and the client's keepalive.
    keepalive = KEEPALIVE

    @inlineCallbacks
    def setUp(self):
        self.rsync = find_rsync("rsync")  # fails, not skips, without rsync
        self.root = temp_dir(self)
        self.link = yield LaptopLink(self, delay_ms=DELAY_MS).start()
        self.sandbox = Sandbox.create(self.root, SERVER_ADDRESS)
        self.server = spawn(self, self.link.in_server(TWISTD + [
            "bpctunnel-server", "--listen", f"{SERVER_ADDRESS}:0",
            "--certs", str(self.sandbox.certs_dir),
            "--backuppc-conf", str(self.sandbox.conf_dir),
            "--keepalive", str(self.keepalive), "--api-socket", "none", "--local-users", "any", "--state-dir", "none"]))
        text = yield self.server.wait_for("bpctunnel server listening on").addTimeout(SHORT,
                                                                                      reactor)
        self.url = "wss://{}:{}/tunnel".format(*re.search(
            r"bpctunnel server listening on ([\d.]+):(\d+)", text).groups())

    def register(self, host: str, source, **settings):
        """Register C{host} on a port of its own: (its files, its port, its client config)."""
        files = self.sandbox.issue_client(host)
        port = free_port()  # the server's namespace has only our ports: any free one is free
        self.sandbox.register(host, port, files.fingerprint)
        config = self.sandbox.write_client_config(
            files, self.url, {"docs": source}, self.rsync, keepalive=self.keepalive, **settings)
        return files, port, config

    @inlineCallbacks
    def start_client(self, host: str, config):
        """
        Start the laptop's client; fires with (the client, the time the
        server's "tunnel up" line arrived) once both sides say the tunnel is up.
        """
        up_before = self.server.text.count(f"tunnel up for {host} ")
        client = spawn(self, self.link.in_laptop(TWISTD + ["bpctunnel-client",
                                                           "--config", str(config)]))
        yield client.wait_for("tunnel up to").addTimeout(SHORT, reactor)
        opened, _ = yield arrival(self.server_line(f"tunnel up for {host} ", up_before + 1))
        return client, opened

    def server_line(self, words: str, count: int = 1):
        """Fires with the server's output once C{words} appeared C{count} times in it."""
        return self.server.wait_count(words, count, SHORT)

    def pull(self, port: int, bwlimit_kb: int):
        """
        BackupPC's rsync (in the server's namespace) pulls the laptop's
        module into a new folder, throttled (0: not): (the process, the folder).
        """
        dest = temp_dir(self)
        process = spawn(self, self.link.in_server([
            self.rsync, "-a", "--progress", f"--bwlimit={bwlimit_kb}",
            self.sandbox.rsync_url(port, "docs/"), f"{dest}/"]), self.sandbox.rsync_env(port))
        return process, dest

    @inlineCallbacks
    def assert_same_tree(self, source, dest):
        want = yield deferToThread(tree_digest, source)
        got = yield deferToThread(tree_digest, dest)
        self.assertEqual(got, want)


class CutBeforePingTests(LinkFaultTestCase):
    """
    A 20 s outage at the worst moment, just before the first keepalive ping,
    is longer than one keepalive interval but shorter than the documented
    dead-peer time (two): it must cost neither the tunnel nor the backup.
    """

    @inlineCallbacks
    def test_cut_just_before_the_ping_costs_nothing(self):
        """A pull is under way when the link is cut: it completes, through the same tunnel."""
        # 10 MB at 512 KB/s: ~20 s of transfer, so a third of it is left at the cut.
        source = yield deferToThread(make_sample_tree, self.root / "src",
                                     large_file_bytes=10 * 1024 * 1024)
        _, port, config = self.register("laptop1", source)
        client, opened = yield self.start_client("laptop1", config)
        pull, dest = self.pull(port, bwlimit_kb=512)
        yield pull.wait_for("large.bin").addTimeout(SHORT, reactor)  # the big file is under way
        yield self.cut_before_first_ping(opened, during=pull)
        code = yield pull.ended.addTimeout(60, reactor)
        self.assertEqual(code, 0, f"the pull failed:\n{pull.text[-600:]}\n{self.story(client)}")
        yield self.assert_same_tree(source, dest)
        self.assert_one_tunnel(client)

    @inlineCallbacks
    def test_cut_just_before_the_ping_costs_an_idle_tunnel_nothing(self):
        """
        The same outage on an idle tunnel, the usual state of a laptop's
        tunnel: both sides' pings go into the cut, each side's TCP
        retransmits its own with exponential backoff.  BackupPC connects
        as soon as the link is back, and its pull goes through the same tunnel.
        """
        source = make_sample_tree(self.root / "src")
        _, port, config = self.register("laptop1", source)
        client, opened = yield self.start_client("laptop1", config)
        yield self.cut_before_first_ping(opened)
        pull, dest = self.pull(port, bwlimit_kb=0)
        code = yield pull.ended.addTimeout(60, reactor)
        self.assertEqual(code, 0, f"the pull failed:\n{pull.text[-600:]}\n{self.story(client)}")
        yield self.assert_same_tree(source, dest)
        self.assert_one_tunnel(client)

    @inlineCallbacks
    def cut_before_first_ping(self, opened: float, during: RunningProcess | None = None):
        """
        Cut the link L{BEFORE_PING} seconds before the tunnel's first
        keepalive ping (the tunnel opened at C{opened}), mend it L{CUT}
        seconds later; assert that both ends sent into the cut and that
        C{during} was still running when it began.
        """
        yield at(opened + KEEPALIVE - BEFORE_PING)
        if during is not None:
            self.assertIsNone(during.exit_code, "it ended before the cut:\n" + during.text)
        yield self.link.cut()
        cut_at = reactor.seconds()
        self.assertLess(cut_at - opened, KEEPALIVE, "cut after the first ping was due")
        yield at(cut_at + CUT)
        mended = yield self.link.mend()
        dropped = re.search(r"A->B (\d+), B->A (\d+)", mended).groups()
        self.assertTrue(all(int(n) for n in dropped), f"an end sent nothing into the cut: {mended}")

    def assert_one_tunnel(self, client):
        """The same tunnel carried it all: opened once, never closed, on either side."""
        self.assertEqual(self.server.text.count("tunnel up for laptop1 "), 1, self.story(client))
        self.assertNotIn("tunnel of laptop1 closed", self.server.text)
        self.assertNotIn("ping timeout", self.server.text + client.text)
        self.assertEqual(client.text.count("tunnel up to"), 1, self.story(client))
        self.assertNotRegex(client.text, r"tunnel to \S+ closed")

    def story(self, client) -> str:
        """The lines of the server, the client and the wire that tell what happened."""
        words = ("tunnel", "ping", "cut", "mend", "first ")
        parts = [("server", self.server.text), ("client", client.text),
                 ("link (A = laptop)", self.link.wire.text)]
        return "\n".join(f"{name}:\n" + "\n".join(
            line for line in text.splitlines() if any(w in line for w in words))
            for name, text in parts)


class RevokedMidTransferTests(LinkFaultTestCase):
    """
    A laptop revoked while a pull runs hears why (the server's reason, not a
    dropped connection or a protocol error), the pull fails, and no rsync is
    left running on the laptop.  Five times: the old bug struck in 6 of 9.
    """

    RUNS = 5
    #: The server re-checks idle and busy tunnels every 5 seconds.
    BOUND = 10

    @inlineCallbacks
    def test_revoked_while_pulling(self):
        source = yield deferToThread(make_sample_tree, self.root / "src",
                                     large_file_bytes=16 * 1024 * 1024)
        files, port, config = self.register("laptop1", source)
        paths = Paths(self.sandbox.certs_dir, self.sandbox.conf_dir)
        for run in range(1, self.RUNS + 1):
            if run > 1:  # registered again, as an admin who changed their mind
                self.sandbox.register("laptop1", port, files.fingerprint, in_hosts=False)
            client, _ = yield self.start_client("laptop1", config)
            # 16 MB at 2 MB/s: still running when the server notices, 0-5 s later.
            pull, _ = self.pull(port, bwlimit_kb=2048)
            yield pull.wait_for("large.bin").addTimeout(SHORT, reactor)
            revoked_at = reactor.seconds()
            admin.revoke(paths, "laptop1")

            refused_at, text = yield arrival(client.wait_for("refused by server").addTimeout(
                self.BOUND, reactor))
            line = text[text.index("refused by server"):].split("\n")[0]
            self.assertIn("fingerprint mismatch for laptop1", line, f"run {run}")
            self.assertLess(refused_at - revoked_at, self.BOUND)
            for wrong in ("peer dropped the TCP connection", "RSV", "reserved opcode",
                          "protocol error", "protocol violation"):
                self.assertNotIn(wrong, client.text, f"run {run}")
            code = yield pull.ended.addTimeout(self.BOUND, reactor)
            self.assertNotEqual(code, 0, f"run {run}: a cut transfer must not look complete")
            # "rsync[PID] for channel N exited ...": the client saw its daemon end.
            yield client.wait_for("] for channel ").addTimeout(self.BOUND, reactor)
            self.assertEqual(self.link.laptop_processes("rsync"), [],
                             f"run {run}: rsync left on the laptop; client:\n{client.text}")
            yield client.stop("KILL")


class SilentTunnelTests(LinkFaultTestCase):
    """
    BackupPC connecting into a tunnel whose link has silently died is told
    at once (the server probes the tunnel, --probe-timeout, 5 s), not after
    the keepalive gives up on it (two intervals: a minute by default).
    Until the server probes the tunnel for BackupPC's connections, this
    fails at its 15 s bound.
    """

    keepalive = 30.0
    #: BackupPC's connection must have failed by then.
    BOUND = 15

    @inlineCallbacks
    def test_backuppc_into_a_cut_link_fails_fast(self):
        source = make_sample_tree(self.root / "src")
        _, port, config = self.register("laptop1", source)
        yield self.start_client("laptop1", config)
        yield self.link.cut()
        started = reactor.seconds()
        pull, _ = self.pull(port, bwlimit_kb=0)
        try:
            code = yield pull.ended.addTimeout(self.BOUND, reactor)
        except TimeoutError:
            self.fail(f"BackupPC's rsync still waited {self.BOUND} s after connecting into a "
                      f"tunnel whose link is cut; server:\n{self.server.text[-3000:]}")
        self.assertLess(reactor.seconds() - started, self.BOUND)
        self.assertNotEqual(code, 0, pull.text)
        said = [line for line in self.server.text.splitlines()
                if "laptop1" in line and "did not answer" in line]
        self.assertTrue(said, f"no server log line says laptop1 did not answer:\n"
                              f"{self.server.text[-3000:]}")
