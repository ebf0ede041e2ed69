"""
Issue 16, acceptance 1: one attack per class of the issue against a real
server process (twistd bpctunnel-server) and real laptop clients (twistd
bpctunnel-client), then its bound asserted with a margin (the server's
resident memory, its BackupPC_serverMesg processes, its log lines, the time
a laptop takes to get in), while BackupPC's rsync pulls a second laptop
(laptop2) during the attack.

The attacks are the issue's, scaled down to run in seconds: where a server
option sets the bound (--handshake-timeout, --max-handshakes), the test sets
it lower and keeps the mechanism.  The hostile peers are in
L{tests.attackers}; every wait is on a process, a connection or a log line,
with a bound.  BackupPC_serverMesg is a stand-in script that records when it
runs (L{tests.attackers.FAKE_SERVER_MESG}).
"""

from __future__ import annotations

import os
import pwd
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, inlineCallbacks
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from bpctunnel.admin.demo import rsync_pull
from bpctunnel.client.config import find_rsync
from bpctunnel.testing.sandbox import Sandbox, free_port, make_sample_tree, tree_digest
from bpctunnel.wire import framing
from tests.attackers import (
    FAKE_SERVER_MESG,
    LOCAL_USER_ATTACK,
    OP_BINARY,
    OP_PING,
    Flood,
    HeaderFlood,
    RssSampler,
    StalledHandshakes,
    UpgradeRefused,
    most_at_once,
    open_hostile_tunnel,
    tls_endpoint,
    tunnel_message,
    ws_frame,
)
from tests.helpers import tcp_connect, temp_dir
from tests.test_link_faults import TWISTD, spawn

MiB = 1024 * 1024
#: Bound on what takes well under a second when nothing is wrong: a tunnel
#: opening, a pull of a small tree, a log line after the event it tells.
SHORT = 20
#: The most the server's resident memory may grow during an attack.
RSS_BOUND = 32 * MiB
NOBODY = pwd.getpwnam("nobody")


def within(d: Deferred, seconds: float) -> Deferred:
    """
    A new Deferred with C{d}'s result, or with C{None} if C{d} has not fired
    within C{seconds}: the test then asserts what it measured, with words,
    instead of failing with a bare TimeoutError.  (C{d}'s own later
    callbacks get C{None}.)
    """
    result = Deferred()

    def fired(value):
        if not result.called:
            result.callback(value)

    d.addBoth(fired)
    timer = reactor.callLater(seconds, fired, None)
    return result.addBoth(lambda value: (timer.active() and timer.cancel(), value)[1])


def mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


class AttackTestCase(TestCase):
    """
    A real server (with a stand-in BackupPC_serverMesg), laptop2's client
    connected before every attack, and helpers to start more laptops, pull
    laptop2 as BackupPC does and read the server's log.
    """

    timeout = 90
    #: More options for this class's server.
    server_options: tuple[str, ...] = ()

    @inlineCallbacks
    def setUp(self):
        self.rsync = find_rsync("rsync")  # fails, not skips, without rsync
        self.root = temp_dir(self)
        # Other local users' attacks meet the server's own permissions, not
        # the test folder's.
        os.chmod(self.root, 0o755)
        self.sandbox = Sandbox.create(self.root)
        self.server_mesg_log = self.root / "server_mesg.log"
        server_mesg = self.root / "BackupPC_serverMesg"
        server_mesg.write_text(FAKE_SERVER_MESG.format(log=self.server_mesg_log))
        server_mesg.chmod(0o755)
        self.server = spawn(self, TWISTD + [
            "bpctunnel-server", "--listen", "127.0.0.1:0",
            "--certs", str(self.sandbox.certs_dir), "--backuppc-conf", str(self.sandbox.conf_dir),
            "--backuppc-server-mesg", str(server_mesg), "--state-dir", "none",
            *self.server_arguments()])
        text = yield self.server.wait_for("bpctunnel server listening on 127.0.0.1:").addTimeout(
            SHORT, reactor)
        self.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+) ", text).group(1))
        self.url = f"wss://127.0.0.1:{self.port}/tunnel"
        self.bystander_source = make_sample_tree(self.root / "laptop2-files")
        _, self.bystander_port, _ = yield self.start_laptop("laptop2", self.bystander_source)

    def server_arguments(self) -> list[str]:
        """The server's options besides its files and the stand-in serverMesg."""
        return ["--api-socket", "none", *self.server_options]

    @property
    def server_pid(self) -> int:
        return self.server.transport.pid

    @inlineCallbacks
    def start_laptop(self, host: str, source, port: int | None = None, register: bool = True,
                     wait: bool = True, **settings):
        """
        Register C{host} (on C{port}, else a free one) and start its client
        serving C{source} as module docs; fires with (the client process,
        the port, the bundle) once the client says its tunnel is up (at once
        if not C{wait}).
        """
        files = self.sandbox.issue_client(host)
        port = port if port is not None else free_port()
        if register:
            self.sandbox.register(host, port, files.fingerprint)
        config = self.sandbox.write_client_config(files, self.url, {"docs": source}, self.rsync,
                                                  **settings)
        client = spawn(self, TWISTD + ["bpctunnel-client", "--config", str(config)])
        if wait:
            yield client.wait_for("tunnel up to").addTimeout(SHORT, reactor)
        return client, port, files

    def register(self, host: str):
        """Register C{host} on a free port, with no client: (its bundle, its port)."""
        files = self.sandbox.issue_client(host)
        port = free_port()
        self.sandbox.register(host, port, files.fingerprint)
        return files, port

    @inlineCallbacks
    def pull(self, port: int, source, path: str = "docs"):
        """
        BackupPC's pull of the module behind C{port} (with the host's
        secret), compared with C{source} byte for byte; fires with how long
        it took.
        """
        started = reactor.seconds()
        dest = temp_dir(self)
        out, err, code = yield rsync_pull(reactor, self.rsync, port, path, dest,
                                          self.sandbox.auth_for(port)).addTimeout(SHORT, reactor)
        took = reactor.seconds() - started
        self.assertEqual(code, 0, f"the pull from port {port} failed: {err.decode()}")
        want = yield deferToThread(tree_digest, source)
        got = yield deferToThread(tree_digest, dest)
        self.assertEqual(got, want)
        return took

    def bystander_pull(self) -> Deferred:
        """laptop2 pulled as BackupPC pulls it (see L{pull})."""
        return self.pull(self.bystander_port, self.bystander_source)

    def mark(self) -> int:
        """Where the server's output is now (for L{server_lines})."""
        return len(self.server.output)

    def server_lines(self, since: int = 0, words: str = "") -> list[str]:
        """The server's log lines since C{since} (see L{mark}) that contain C{words}."""
        text = self.server.output[since:].decode("utf-8", "replace")
        return [line for line in text.splitlines() if words in line]

    def server_line(self, words: str, since: int = 0) -> Deferred:
        """Fires with the server's first log line since C{since} with C{words} in it."""
        return self.server_match(re.escape(words), since)

    @inlineCallbacks
    def server_match(self, pattern: str, since: int = 0):
        """
        Fires with the server's first log line since C{since} (see L{mark})
        that matches C{pattern}, a regular expression, once it came (within
        L{SHORT} seconds).
        """
        deadline = reactor.seconds() + SHORT
        while True:
            for line in self.server_lines(since):
                if re.search(pattern, line):
                    return line
            left = deadline - reactor.seconds()
            more = None if left <= 0 else (yield within(
                self.server.wait_count("\n", self.server.text.count("\n") + 1, SHORT), left))
            if more is None:
                self.fail(f"no server log line matches {pattern!r} within {SHORT} s")

    def own(self, protocol):
        """Drop C{protocol}'s connection (ours) at the end of the test, and wait until it is gone."""

        def close():
            if protocol.transport is None or protocol.lost_at is not None:
                return None
            protocol.transport.abortConnection()
            return protocol.lost

        self.addCleanup(close)
        return protocol

    @inlineCallbacks
    def hostile_tunnel(self, files, role: str | None = None):
        """A L{tests.attackers.HostileTunnel} with C{files}' certificate, open."""
        tunnel = yield open_hostile_tunnel(self.port, files, role).addTimeout(SHORT, reactor)
        return self.own(tunnel)


class LocalUserAttackTests(AttackTestCase):
    """
    Class 1: another local user of the BackupPC server (nobody) knocks 200
    times on a connected laptop's port and on the status API's socket.
    """

    ATTEMPTS = 200
    #: Log lines the 200 refusals may cost: the first few, then sums.
    LOG_BOUND = 20

    def server_arguments(self) -> list[str]:
        self.api_socket = self.root / "run" / "api.sock"
        return ["--api-socket", str(self.api_socket), "--local-users", "backuppc"]

    @inlineCallbacks
    def test_other_user_refused_in_bounded_lines(self):
        """
        Every attempt is refused (no byte of the laptop's rsync daemon comes
        back, the API socket does not let it connect), the refusals cost at
        most 20 log lines with nobody's uid in them, laptop2's pull works
        meanwhile and laptop1's own BackupPC (root here) still gets in.
        """
        source = make_sample_tree(self.root / "laptop1-files")
        _, port, _ = yield self.start_laptop("laptop1", source)
        since = self.mark()
        attack = getProcessOutputAndValue("/usr/bin/setpriv", [
            f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
            "/usr/bin/python3", "-c", LOCAL_USER_ATTACK, str(port), str(self.api_socket),
            str(self.ATTEMPTS)], env={"PATH": "/usr/bin:/bin"}, reactor=reactor)
        (out, err, code), _ = yield gatherResults(
            [attack.addTimeout(SHORT * 3, reactor), self.bystander_pull()], consumeErrors=True)
        self.assertEqual(code, 0, (out + err).decode())
        self.assertIn(f"port: {self.ATTEMPTS} connections, 0 bytes back", out.decode())
        self.assertIn("api: 0 connected", out.decode())

        # BackupPC's user still gets in; its channel's line comes after every refusal's.
        yield self.pull(port, source)
        yield self.server_line(" of laptop1 closed: module docs", since)
        lines = self.server_lines(since)
        refused = [line for line in lines if re.search(rf"\b{NOBODY.pw_uid}\b", line)]
        self.assertTrue(refused, "no refusal names nobody's uid")
        self.assertIn("laptop1", refused[0])
        # Besides the refusals, the two pulls' channels: a line as each opens and closes.
        self.assertLessEqual(len(lines), self.LOG_BOUND + 4,
                             f"{self.ATTEMPTS} refused attempts and two pulls wrote {len(lines)} "
                             f"log lines, {len(refused)} of them naming nobody's uid")


class FloodTests(AttackTestCase):
    """Class 2: every queue, process and log line a peer can drive is bounded."""

    #: Scaled down from 30 s, so that a connection the server never cuts
    #: costs the test 10 s, not 30.
    server_options = ("--handshake-timeout", "10")
    #: How long a flood may go on before the test gives up on the server
    #: cutting it.
    FLOOD_TIME = 8.0

    @inlineCallbacks
    def test_endless_headers(self):
        """
        A CA-signed but unregistered client sends endless header lines (up
        to 8 MiB) on 8 connections: the server's memory grows by less than
        32 MiB, it cuts every connection within 14 s (10 s is its handshake
        deadline here) and says why, and laptop2's pull works meanwhile, in
        under 10 s.
        """
        stranger = self.sandbox.issue_client("stranger")  # in no hosts file
        rss = RssSampler(self.server_pid)
        started = reactor.seconds()
        floods = [self.own(HeaderFlood(8 * MiB)) for _ in range(8)]
        yield gatherResults([connectProtocol(tls_endpoint(self.port, stranger), flood)
                             for flood in floods]).addTimeout(SHORT, reactor)
        pulled = self.bystander_pull()
        yield within(gatherResults([flood.lost for flood in floods]), 14)
        growth = rss.stop()
        took = yield pulled
        sent = sum(flood.flood.sent for flood in floods if flood.flood)
        self.assertLess(growth, RSS_BOUND, f"the server grew by {mib(growth)} while 8 "
                                           f"connections sent {mib(sent)} of headers")
        uncut = [flood.peer for flood in floods if flood.lost_at is None]
        self.assertEqual(uncut, [], "connections still open after 14 s")
        for flood in floods:
            self.assertLess(flood.lost_at - started, 14)
            # More than the few KiB an opening handshake needs got through.
            self.assertGreater(flood.flood.sent if flood.flood else 0, 64 * 1024)
        # A cut connection is named with the reason (the rest may be summed up).
        yield self.server_match("|".join(re.escape(flood.peer) + r": \S" for flood in floods))
        self.assertLess(took, 10, "laptop2's pull during the attack")

    @inlineCallbacks
    def flood_unread(self, frame: bytes):
        """
        A registered laptop's tunnel stops reading and sends C{frame} as fast
        as the server reads: the server's memory grows by less than 32 MiB,
        it closes the tunnel within L{FLOOD_TIME} seconds with a log line
        saying why, and laptop2's pull works meanwhile.
        """
        files, _ = self.register("laptop1")
        tunnel = yield self.hostile_tunnel(files)
        since = self.mark()
        yield self.server_line("tunnel up for laptop1 ")
        rss = RssSampler(self.server_pid)
        tunnel.stop_reading()
        flood = Flood(tunnel.transport, frame * (64 * 1024 // len(frame))).start()
        pulled = self.bystander_pull()
        cut = yield within(tunnel.lost, self.FLOOD_TIME)
        flood.stop()
        growth = rss.stop()
        yield pulled
        self.assertLess(growth, RSS_BOUND, f"the server grew by {mib(growth)} while the tunnel "
                                           f"sent {mib(flood.sent)} it did not read answers to")
        self.assertIsNotNone(cut, f"the tunnel was still open after {self.FLOOD_TIME:g} s and "
                                  f"{mib(flood.sent)} of it")
        line = yield self.server_line("the tunnel of laptop1: ", since)
        self.assertRegex(line, r"(closing|dropping) the tunnel of laptop1: \S")

    def test_websocket_ping_flood(self):
        """WebSocket pings whose pongs the laptop never reads."""
        return self.flood_unread(ws_frame(OP_PING, b"p" * 125))

    def test_mux_ping_flood(self):
        """Tunnel PINGs whose PONGs the laptop never reads."""
        return self.flood_unread(tunnel_message(framing.Ping(b"p" * framing.MAX_PING_PAYLOAD)))

    @inlineCallbacks
    def test_bad_message_flood(self):
        """
        12,000 messages in a burst, for channels that do not exist, of an
        unknown type, and CONTROL messages of unknown types: the server
        writes fewer than 50 log lines about the tunnel, closes it with
        "protocol error: 1,001 bad messages" (the peer hears it too), and
        laptop2's pull works meanwhile.
        """
        files, _ = self.register("laptop1")
        tunnel = yield self.hostile_tunnel(files)
        since = self.mark()
        yield self.server_line("tunnel up for laptop1 ")
        kinds = [lambda n: tunnel_message(framing.Data(2 * n + 1, b"x")),
                 lambda n: ws_frame(OP_BINARY, b"\x42" + n.to_bytes(4, "big")),
                 lambda n: tunnel_message(framing.Control({"type": f"no-such-type-{n % 7}"}))]
        tunnel.transport.write(b"".join(kinds[n % 3](n) for n in range(12_000)))
        pulled = self.bystander_pull()
        cut = yield within(tunnel.lost, 10)
        self.assertIsNotNone(cut, "the tunnel is still open 10 s after the burst")
        self.assertRegex(tunnel.close_reason or "", r"^protocol error: 1,001 bad messages")
        yield self.server_line("closing the tunnel of laptop1: protocol error: 1,001 bad messages",
                               since)
        yield pulled
        # laptop2's channel closes after the whole burst was read.
        yield self.server_line(" of laptop2 closed: module docs", since)
        lines = self.server_lines(since, "laptop1")
        self.assertLess(len(lines), 50, "\n".join(lines[:60]))

    @inlineCallbacks
    def test_backup_request_flood(self):
        """
        A laptop's tunnel sends 300 backup-request messages in one burst,
        then 200 backup-now connections for the same host each ask too: one
        BackupPC_serverMesg runs at a time and BackupPC is asked for one
        backup; the laptop hears "backup-requested" once; at most 16 of the
        200 connections are taken on (told ok) and at most 16 are still
        open 5 s after their answers (the server lets go of the others);
        laptop2's pull works meanwhile.
        """
        files, _ = self.register("laptop1")
        tunnel = yield self.hostile_tunnel(files)
        yield self.server_line("tunnel up for laptop1 ")
        request = tunnel_message(framing.Control({"type": "backup-request", "full": False}))
        tunnel.transport.write(request * 300)
        answer = yield within(tunnel.wait_message(
            lambda m: isinstance(m, framing.Control) and m.type == "backup-requested"), SHORT)
        self.assertIsNotNone(answer, "the laptop heard no answer")
        self.assertTrue(answer.body["ok"], answer.body)

        watchers, answers = [], []
        gate = DeferredSemaphore(8)  # fewer than the server lets one address have in handshakes

        @inlineCallbacks
        def watch():
            try:
                watcher = yield self.hostile_tunnel(files, role="backup-now")
            except UpgradeRefused as e:
                answers.append(f"refused: {e}")
                return
            watchers.append(watcher)
            watcher.send(framing.Control({"type": "backup-request", "full": False}))
            reply = yield within(watcher.wait_message(
                lambda m: isinstance(m, framing.Control) and m.type == "backup-requested"), SHORT)
            answers.append("no answer" if reply is None else reply.body["ok"])

        pulled = self.bystander_pull()
        yield gatherResults([gate.run(watch) for _ in range(200)], consumeErrors=True)
        yield pulled
        self.assertEqual(len(answers), 200)
        self.assertNotIn("no answer", answers)
        taken = answers.count(True)
        self.assertLessEqual(taken, 16, f"{taken} of 200 backup-now connections were taken on")
        repeats = [m for m in tunnel.messages
                   if isinstance(m, framing.Control) and m.type == "backup-requested"]
        self.assertEqual(len(repeats), 1, repeats)

        most, calls = most_at_once(self.server_mesg_log)
        self.assertEqual(most, 1, f"BackupPC_serverMesg runs at once; all runs: {calls}")
        self.assertEqual([c for c in calls if c.startswith("backup ")],
                         ["backup laptop1 laptop1 bpctunnel 0"])

        # The server lets go of the connections it did not take on.
        gone = Deferred()
        left = [len(watchers)]

        def lost(_):
            left[0] -= 1
            if left[0] <= 16 and not gone.called:
                gone.callback(None)

        for watcher in watchers:
            watcher.lost.addCallback(lost)
        if left[0] <= 16:
            gone.callback(None)
        yield within(gone, 5)
        self.assertLessEqual(left[0], 16, f"{left[0]} of {len(watchers)} backup-now connections "
                                          f"are still open 5 s after their answers")


class AdmissionTests(AttackTestCase):
    """
    Class 3: an attacker from the laptop's own address (127.0.0.1) holds
    stalled TLS handshakes and reconnects whenever it is dropped; a laptop's
    client (retrying after 0.5-2 s, scaled down with the limits) still
    gets its tunnel within 10 s of its start, and is pulled.
    """

    ADMIT_BOUND = 10.0
    #: Stalled connections the attacker keeps: more than the 16 that one
    #: address may have in their handshakes (--max-unauthenticated's default).
    STALLED = 20

    @inlineCallbacks
    def test_laptop_gets_in_despite_stalled_handshakes(self):
        source = make_sample_tree(self.root / "laptop1-files")
        attacker = StalledHandshakes(self.port, self.STALLED).start()
        self.addCleanup(attacker.stop)
        yield attacker.ready.addTimeout(SHORT, reactor)
        started = reactor.seconds()
        client, port, _ = yield self.start_laptop("laptop1", source, wait=False,
                                                  retry_initial=0.5, retry_max=2.0)
        up = yield within(client.wait_for("tunnel up to"), self.ADMIT_BOUND)
        took = reactor.seconds() - started
        pulled = self.bystander_pull()
        self.assertIsNotNone(up, f"laptop1 was still locked out after {took:.1f} s by "
                                 f"{len(attacker.open)} stalled connections "
                                 f"({attacker.made} made); laptop1's client said:\n"
                                 + "\n".join(client.text.splitlines()[-5:]))
        self.assertLess(took, self.ADMIT_BOUND)
        self.assertGreater(attacker.made, self.STALLED, "the attacker never had to reconnect")
        yield pulled
        yield self.pull(port, source)


class AdmissionTableFullTests(AdmissionTests):
    """
    Class 3 with --max-handshakes scaled down to 8: the attacker's stalled
    connections fill the whole handshake table, not only its address's share.
    """

    server_options = ("--max-handshakes", "8")
    STALLED = 12


#: What a laptop keeps outside its modules.
OUTSIDE = "the laptop's private key, outside every module\n"


class BrokenIntoServerTests(AttackTestCase):
    """
    Class 4: a broken-into BackupPC server (root, with the host's rsync
    secret) talks to laptop1's rsync daemon with options a backup never
    sends, and with paths that climb out of the module.
    """

    #: (rsync options, path, the option the laptop's daemon must refuse)
    HOSTILE = [(["-a", "-L"], "docs/", "--copy-links"),
               (["-a", "--copy-unsafe-links"], "docs/", "--copy-unsafe-links"),
               (["-a", "-k"], "docs/", "--copy-dirlinks"),
               (["-a"], "docs/../", None),
               (["-a"], "docs/../../outside/", None)]

    @inlineCallbacks
    def test_hostile_rsync_stays_in_the_module(self):
        """
        Nothing outside the module reaches the attacker (not through a
        symlink to a file or a folder outside, not by a path with ..), the
        refused options fail the transfer and each shows in laptop1's
        client log, and laptop2's pull works meanwhile.
        """
        outside = self.root / "outside"
        outside.mkdir()
        (outside / "id_rsa").write_text(OUTSIDE)
        docs = make_sample_tree(self.root / "docs")
        (docs / "escape").symlink_to(outside / "id_rsa")
        (docs / "escape-dir").symlink_to(outside)
        client, port, _ = yield self.start_laptop("laptop1", docs)
        auth = self.sandbox.auth_for(port)

        def hostile_pull(options, path):
            dest = temp_dir(self)
            argv = [*options, f"rsync://{auth.user}@127.0.0.1:{port}/{path}", f"{dest}/"]
            d = getProcessOutputAndValue(self.rsync, argv, reactor=reactor, env={
                "PATH": "/usr/bin:/bin", "RSYNC_PASSWORD": auth.secret})
            return d.addCallback(lambda result: (*result, dest)).addTimeout(SHORT, reactor)

        results = yield gatherResults(
            [hostile_pull(options, path) for options, path, _ in self.HOSTILE]
            + [self.bystander_pull()], consumeErrors=True)
        for (options, path, refused), (out, err, code, dest) in zip(self.HOSTILE, results):
            what = f"rsync {' '.join(options)} .../{path}"
            copied = [p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()]
            self.assertNotIn(OUTSIDE, [p.read_text(errors="replace") for p in copied], what)
            if refused:
                self.assertNotEqual(code, 0, what)
                self.assertIn(f"configured to refuse {refused}", err.decode(), what)
                yield client.wait_for(f"The server is configured to refuse {refused}").addTimeout(
                    SHORT, reactor)


class PortSharedAttackTests(AttackTestCase):
    """
    Class 5: two hosts configured with the same RsyncdClientPort (a BackupPC
    user pointed theirs at another's, or an admin's slip).
    """

    @inlineCallbacks
    def test_both_refused_naming_the_other(self):
        """
        Both laptops' tunnels are refused, each refusal naming the other
        host; nothing listens on the shared port; laptop2, on its own port,
        is pulled meanwhile.
        """
        shared = free_port()
        source = make_sample_tree(self.root / "laptop-files")
        laptops = {}
        for host in ("laptop1", "laptop3"):
            laptops[host], _, _ = yield self.start_laptop(host, source, port=shared, wait=False)
        pulled = self.bystander_pull()
        for host, other in [("laptop1", "laptop3"), ("laptop3", "laptop1")]:
            text = yield laptops[host].wait_for("refused by server").addTimeout(SHORT, reactor)
            line = text[text.index("refused by server"):].splitlines()[0]
            self.assertIn(f"port shared for {host}: RsyncdClientPort {shared} of {host} is also "
                          f"that of {other}", line)
        yield pulled
        self.assertEqual(self.server_lines(words="tunnel up for laptop1 "), [])
        self.assertEqual(self.server_lines(words="tunnel up for laptop3 "), [])
        yield self.assertFailure(tcp_connect(shared), ConnectionRefusedError)
