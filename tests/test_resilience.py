"""
Faults injected for real: a client killed with SIGKILL, a network path that
silently stops forwarding, a server restart, a laptop reconnecting while its
old connection is half-open, revocation of a connected client, idle and
overlong carried connections.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from bpctunnel.admin import commands as admin
from bpctunnel.admin.commands import Paths
from bpctunnel.testing.sandbox import free_port, make_sample_tree, start_server
from tests.helpers import TIMEOUT, FreezableProxy, tcp_connect, temp_dir, twistd
from tests.test_end_to_end import TunnelTestCase

KEEPALIVE = 1.0
#: Dead within two keepalive intervals, plus scheduling slack.
DEAD_BOUND = 2 * KEEPALIVE + 2.0


def wait_lost(port: int) -> Deferred:
    """Open a TCP connection to the port; fires with the reason when it ends."""
    lost = Deferred()

    class Watch(Protocol):
        def connectionLost(self, reason):
            lost.callback(reason.value)

    connected = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Watch())
    return connected.addCallback(lambda protocol: (protocol, lost))


class DeadPeerTests(TunnelTestCase):
    """Acceptance 1 and 2: dead clients and dead paths are noticed within the keepalive bound."""

    server_settings = {"keepalive": KEEPALIVE}

    @inlineCallbacks
    def test_kill_9_client_mid_transfer(self):
        """SIGKILL the client during a pull: the port is freed, BackupPC's side fails visibly."""
        source = make_sample_tree(self.root / "src", large_file_bytes=50 * 1024 * 1024)
        files = self.sandbox.issue_client("laptop1")
        port = free_port()
        self.sandbox.register("laptop1", port, files.fingerprint)
        config = self.sandbox.write_client_config(files, self.server.url, {"docs": source},
                                                  self.rsync, keepalive=KEEPALIVE)
        client = twistd(self, "bpctunnel-client", "--config", str(config))
        yield client.wait_for("tunnel up to")
        dest = temp_dir(self)
        from twisted.internet.utils import getProcessOutputAndValue

        pull = getProcessOutputAndValue(
            self.rsync, ["-a", "--bwlimit=2000", self.sandbox.rsync_url(port, "docs/"), f"{dest}/"],
            env=self.sandbox.rsync_env(port), reactor=reactor)
        yield self.logs.wait_for("channel 2 opened for laptop1")  # the pull is under way
        down = self.server_down("laptop1")
        yield client.stop("KILL")
        yield down.addTimeout(DEAD_BOUND, reactor)
        _, err, code = yield pull.addTimeout(TIMEOUT, reactor)
        self.assertNotEqual(code, 0, "a cut transfer must not look complete")
        yield self.assertFailure(tcp_connect(port), ConnectionRefusedError)

    @inlineCallbacks
    def test_path_stops_forwarding(self):
        """A path that silently stops forwarding is detected by both sides."""
        address = self.server.port.getHost()
        proxy = FreezableProxy(self, address.port)
        client, port, _ = yield self.connected_client(
            "laptop1", {"m": self.root}, url=f"wss://127.0.0.1:{proxy.number}/tunnel",
            keepalive=KEEPALIVE, retry_max=300)
        down = self.server_down("laptop1")
        closed = client.events.next("closed")
        proxy.freeze()
        yield down.addTimeout(DEAD_BOUND, reactor)
        reason = yield closed.addTimeout(DEAD_BOUND, reactor)
        self.assertIn("ping timeout", reason)
        yield self.logs.wait_for("tunnel of laptop1 closed: ")
        yield self.assertFailure(tcp_connect(port), ConnectionRefusedError)


class TakeoverTests(TunnelTestCase):
    """Acceptance 4: a half-open old tunnel is replaced; a live one wins (see RefusalTests)."""

    server_settings = {"keepalive": 30.0, "probe_timeout": 1.0}

    @inlineCallbacks
    def test_half_open_tunnel_replaced(self):
        source = make_sample_tree(self.root / "src")
        address = self.server.port.getHost()
        proxy = FreezableProxy(self, address.port)
        files = self.sandbox.issue_client("laptop1")
        old, port, _ = yield self.connected_client(
            "laptop1", {"m": source}, files=files, url=f"wss://127.0.0.1:{proxy.number}/tunnel",
            retry_max=300)
        proxy.freeze()  # the laptop moved to another network; nothing reached us
        new, _, _ = yield self.connected_client("laptop1", {"m": source}, files=files,
                                                register=False, port=port)
        line = yield self.logs.wait_for("replacing the tunnel of laptop1")
        self.assertIn("did not answer within 1.0 seconds", line)
        self.assertEqual(self.server_events, [("open", "laptop1"), ("closed", "laptop1"),
                                              ("open", "laptop1")])
        yield self.pull_and_compare(port, "m", source)


class RestartTests(TunnelTestCase):
    """Acceptance 3: after a server restart the client comes back by itself."""

    @inlineCallbacks
    def test_server_restart(self):
        source = make_sample_tree(self.root / "src")
        client, port, _ = yield self.connected_client("laptop1", {"m": source}, retry_initial=0.2,
                                                      retry_max=2)
        number = self.server.port.getHost().port
        closed = client.events.next("closed")
        yield self.server.stop()
        yield closed.addTimeout(TIMEOUT, reactor)
        opened = client.events.next("open")
        self.server = yield start_server(reactor, self.sandbox, port=number)
        self.addCleanup(self.server.stop)
        yield opened.addTimeout(TIMEOUT, reactor)
        yield self.pull_and_compare(port, "m", source)


class RevocationTests(TunnelTestCase):
    """Acceptance 6: a revoked client is dropped, idle or not."""

    server_settings = {"check_interval": 5.0}

    @inlineCallbacks
    def test_idle_client_dropped_within_10_seconds(self):
        client, port, _ = yield self.connected_client("laptop1", {"m": self.root})
        closed = client.events.next("closed")
        admin.revoke(Paths(self.sandbox.certs_dir, self.sandbox.conf_dir), "laptop1")
        reason = yield closed.addTimeout(10, reactor)
        self.assertTrue(reason.startswith("fingerprint mismatch for laptop1"), reason)
        yield self.logs.wait_for("dropping the tunnel of laptop1: fingerprint mismatch")
        line = yield self.logs.wait_for("refused by server: fingerprint mismatch for laptop1")
        self.assertIn("retrying every 5 minutes", line)
        yield self.assertFailure(tcp_connect(port), ConnectionRefusedError)


class RecheckPerConnectionTests(TunnelTestCase):
    """Every connection from BackupPC re-checks the certificate first."""

    server_settings = {"check_interval": 3600.0}

    @inlineCallbacks
    def test_connection_after_revocation_refused(self):
        client, port, _ = yield self.connected_client("laptop1", {"m": self.root})
        closed = client.events.next("closed")
        admin.revoke(Paths(self.sandbox.certs_dir, self.sandbox.conf_dir), "laptop1")
        _, lost = yield wait_lost(port)
        yield lost.addTimeout(TIMEOUT, reactor)
        reason = yield closed.addTimeout(TIMEOUT, reactor)
        self.assertTrue(reason.startswith("fingerprint mismatch for laptop1"), reason)
        self.assertEqual(self.logs.matching("channel 2 opened"), [])


class ChannelTimeoutTests(TunnelTestCase):
    """Idle and overlong carried connections are closed."""

    server_settings = {"check_interval": 0.2, "idle_timeout": 1.0, "max_connection_time": 3600.0}

    @inlineCallbacks
    def test_idle_connection_closed(self):
        client, port, _ = yield self.connected_client("laptop1", {"m": self.root})
        _, lost = yield wait_lost(port)  # connects, then says nothing
        yield lost.addTimeout(TIMEOUT, reactor)
        line = yield self.logs.wait_for("idle for more than 1 seconds (--idle-timeout)")
        self.assertIn("laptop1", line)
        # The tunnel itself stays up for the next connection.
        self.assertEqual(self.server_events, [("open", "laptop1")])


class MaxDurationTests(TunnelTestCase):
    server_settings = {"check_interval": 0.2, "idle_timeout": 3600.0, "max_connection_time": 1.0}

    @inlineCallbacks
    def test_overlong_connection_closed(self):
        client, port, _ = yield self.connected_client("laptop1", {"m": self.root})
        protocol, lost = yield wait_lost(port)
        protocol.transport.write(b"@RSYNCD: 31.0\n")
        yield lost.addTimeout(TIMEOUT, reactor)
        yield self.logs.wait_for("open for more than 1 seconds (--max-connection-time)")


class HandshakeTimeoutTests(TunnelTestCase):
    """A connection that never finishes its handshakes is closed."""

    server_settings = {"handshake_timeout": 1.0}

    @inlineCallbacks
    def test_silent_connection_closed(self):
        """TCP connected, no TLS ClientHello ever: closed after the handshake timeout."""
        _, lost = yield wait_lost(self.server.port.getHost().port)
        yield lost.addTimeout(TIMEOUT, reactor)
        # The server is fine afterwards.
        good = make_sample_tree(self.root / "good")
        _, port, _ = yield self.connected_client("laptop1", {"m": good})
        yield self.pull_and_compare(port, "m", good)


def process_tree(pid: int) -> list[int]:
    """C{pid} and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


class NoStarvationTests(TunnelTestCase):
    """
    One carried connection whose reader has stopped reading cannot starve the
    other connections of the same tunnel, nor other clients' tunnels.
    """

    @inlineCallbacks
    def test_stalled_reader_does_not_block_others(self):
        """
        A real rsync pull of a large module is frozen (SIGSTOP) once data is
        flowing to it: its channel fills its window and waits, while another
        connection of the same tunnel and another client's tunnel complete
        full pulls.
        """
        from twisted.internet.protocol import ProcessProtocol

        from bpctunnel.server.backuppc_port import LocalConnectionProtocol

        big = make_sample_tree(self.root / "big", large_file_bytes=100 * 1024 * 1024)
        small = make_sample_tree(self.root / "small", seed=7)
        _, port, _ = yield self.connected_client("laptop1", {"big": big, "small": small})
        _, other_port, _ = yield self.connected_client("laptop2", {"small": small})

        flowing = Deferred()
        original_write = LocalConnectionProtocol.write

        def counting_write(protocol, data):
            original_write(protocol, data)
            if protocol.channel.bytes_in > 4 * 1024 * 1024 and not flowing.called:
                flowing.callback(protocol.channel)

        self.patch(LocalConnectionProtocol, "write", counting_write)
        ended = Deferred()

        class Pull(ProcessProtocol):
            def processEnded(self, reason):
                ended.callback(reason.value)

        dest = temp_dir(self)
        frozen = Pull()
        reactor.spawnProcess(frozen, self.rsync, [self.rsync, "-a",
                                                  self.sandbox.rsync_url(port, "big/"), f"{dest}/"],
                             env=self.sandbox.rsync_env(port))
        channel = yield flowing.addTimeout(TIMEOUT, reactor)
        # rsync's receiver is a child of the process we started: stop both,
        # or the receiver keeps reading and the "frozen" pull completes.
        tree = process_tree(frozen.transport.pid)
        self.assertGreaterEqual(len(tree), 2, "rsync's receiver has not forked yet")
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: ended)
        self.addCleanup(frozen.transport.signalProcess, "KILL")
        for pid in tree:
            self.addCleanup(os.kill, pid, signal.SIGCONT)

        yield self.pull_and_compare(port, "small", small)
        yield self.pull_and_compare(other_port, "small", small)
        self.assertIn(channel.channel_id, self.server.factory.tunnels.get("laptop1").mux.channels)
        self.assertLess(channel.bytes_in, 100 * 1024 * 1024, "the frozen pull is not finished")
