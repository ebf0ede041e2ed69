"""
End-to-end tests: real TLS with real certificates, real sockets on
127.0.0.1, the real rsync binary, server and client in this process.
"""

from __future__ import annotations

import os
import pwd

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bpctunnel import pki
from bpctunnel.client.config import find_rsync
from bpctunnel.admin.demo import rsync_pull
from bpctunnel.refusals import Refusal
from bpctunnel.client.rsync_daemon import log_daemon_identity
from bpctunnel.testing.sandbox import (
    Sandbox,
    free_port,
    make_sample_tree,
    start_client,
    start_server,
    tree_digest,
)
from tests.helpers import TIMEOUT, LogCapture, tcp_connect, temp_dir


class TunnelTestCase(TestCase):
    """A sandbox and a running server; helpers to connect clients."""

    timeout = 300
    #: More ServerSettings (and start_server options) for this class's server.
    server_settings: dict = {}
    #: The name in the server's certificate.
    server_name = "127.0.0.1"

    @inlineCallbacks
    def setUp(self):
        self.rsync = find_rsync("rsync")  # fails, not skips, without rsync
        self.root = temp_dir(self)
        self.sandbox = Sandbox.create(self.root, self.server_name)
        self.logs = LogCapture(self)
        self.server = yield start_server(reactor, self.sandbox, **self.server_settings)
        self.addCleanup(self.server.stop)
        self.server_events = []
        self.server.factory.observers.append(lambda event, tunnel: self.server_events.append(
            (event, tunnel.host)))

    def add_client(self, host, modules, port=None, register=True, files=None, url=None,
                   protocols=None, **settings):
        """Register C{host} (unless told not to) and start its client."""
        files = files or self.sandbox.issue_client(host)
        port = port if port is not None else free_port()
        if register:
            self.sandbox.register(host, port, files.fingerprint)
        config = self.sandbox.write_client_config(files, url or self.server.url, modules, self.rsync,
                                                  **settings)
        client = start_client(reactor, config)
        if protocols is not None:
            client.factory.protocols = protocols  # before the reactor runs the connection
        self.addCleanup(client.stop)
        return client, port, files

    @inlineCallbacks
    def connected_client(self, host, modules, **kwargs):
        client, port, files = self.add_client(host, modules, **kwargs)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        return client, port, files

    @inlineCallbacks
    def pull_and_compare(self, port, module, source):
        """rsync -a the module into a new folder; assert it equals C{source}."""
        dest = temp_dir(self)
        out, err, code = yield rsync_pull(reactor, self.rsync, port, module, dest,
                                          self.sandbox.auth_for(port)).addTimeout(TIMEOUT, reactor)
        self.assertEqual(code, 0, err.decode(errors="replace"))
        want = yield deferToThread(tree_digest, source)
        got = yield deferToThread(tree_digest, dest)
        self.assertEqual(got, want)
        return want

    def server_down(self, host):
        """Fires when the server has taken C{host}'s tunnel down."""
        from twisted.internet.defer import Deferred

        d = Deferred()

        def observer(event, tunnel):
            if event == "closed" and tunnel.host == host and not d.called:
                d.callback(None)

        self.server.factory.observers.append(observer)
        return d.addTimeout(TIMEOUT, reactor)


class RootClientTests(TunnelTestCase):
    """
    A client run by root reads every file of its modules, whatever the rsync
    version (3.2.x and 3.5.0 switch to nobody in a module without uid/gid).
    """

    @inlineCallbacks
    def test_reads_another_users_private_file(self):
        self.assertEqual(os.geteuid(), 0, "this test needs root, as CI runs it")
        source = self.root / "home-of-4242"
        source.mkdir(mode=0o700)
        secret = source / "secret.txt"
        secret.write_text("only its owner and root may read this\n")
        os.chmod(secret, 0o600)
        os.chown(secret, 4242, 4242)
        os.chown(source, 4242, 4242)
        client, port, _ = yield self.connected_client("laptop1", {"documents": source})
        want = yield self.pull_and_compare(port, "documents", source)
        self.assertIn("secret.txt", want)
        tunnel = self.server.factory.tunnels.get("laptop1")
        self.assertEqual(tunnel.served_modules, ("documents",))

    @inlineCallbacks
    def test_start_up_log(self):
        """The client says which rsync it runs and whom each module reads as."""
        source = self.root / "docs"
        source.mkdir()
        conf = self.root / "rsyncd.conf"
        conf.write_text(f"[documents]\n path = {source}\n[music]\n path = {source}\n"
                        f" uid = nobody\n gid = nogroup\n")
        lines = yield log_daemon_identity(reactor, self.rsync, conf, euid=0)
        self.assertRegex(lines[0], r"^rsync \d+\.\d+\.\d+\S* \(protocol \d+\) at ")
        # (An rsync older than 3.4.0 gets a warning line of its own.)
        modules = [line for line in lines if line.startswith("module ")]
        self.assertEqual(modules, ["module documents reads files as root",
                                   "module music reads files as nobody:nogroup"])
        lines = yield log_daemon_identity(reactor, self.rsync, conf, euid=os.getuid() or 65534)
        user = pwd.getpwuid(os.getuid() or 65534).pw_name
        self.assertEqual(lines[-2:], [f"module documents reads files as {user}",
                                      f"module music reads files as {user}"])


class TransferTests(TunnelTestCase):
    """Acceptance 1: real rsync pulls through the tunnel arrive byte-identical."""

    @inlineCallbacks
    def test_large_tree_byte_identical(self):
        """Nested folders, a 200 MB random file, empty files and odd names."""
        source = yield deferToThread(make_sample_tree, self.root / "src",
                                     large_file_bytes=200 * 1024 * 1024)
        _, port, _ = yield self.connected_client("laptop1", {"documents": source})
        want = yield self.pull_and_compare(port, "documents", source)
        self.assertEqual(want["large.bin"][1], 200 * 1024 * 1024)
        self.assertIn("Grüße – ünïcödé ✓.txt", want)
        self.assertEqual(want["a/b/empty"][1], 0)
        self.assertEqual(len(self.logs.matching("rsync[")), len(self.logs.matching("exited with status 0")))

    @inlineCallbacks
    def test_two_modules_one_after_the_other(self):
        """Two modules of one client, pulled one after the other."""
        one = make_sample_tree(self.root / "one", seed=1)
        two = make_sample_tree(self.root / "two", seed=2)
        (two / "only-in-two").write_bytes(b"2")
        _, port, _ = yield self.connected_client("laptop1", {"one": one, "two": two})
        first = yield self.pull_and_compare(port, "one", one)
        second = yield self.pull_and_compare(port, "two", two)
        self.assertNotEqual(first, second)

    @inlineCallbacks
    def test_two_pulls_at_once(self):
        """Two concurrent connections on one tunnel each get their own module."""
        one = make_sample_tree(self.root / "one", large_file_bytes=20 * 1024 * 1024, seed=3)
        two = make_sample_tree(self.root / "two", large_file_bytes=20 * 1024 * 1024, seed=4)
        _, port, _ = yield self.connected_client("laptop1", {"one": one, "two": two})
        results = yield gatherResults(
            [self.pull_and_compare(port, "one", one), self.pull_and_compare(port, "two", two)],
            consumeErrors=True,
        )
        self.assertNotEqual(results[0]["large.bin"], results[1]["large.bin"])

    @inlineCallbacks
    def test_module_list(self):
        """The module list request (what BackupPC's rsync sends first) is answered."""
        source = make_sample_tree(self.root / "src")
        _, port, _ = yield self.connected_client("laptop1", {"documents": source, "photos": source})
        from twisted.internet.utils import getProcessOutputAndValue

        out, err, code = yield getProcessOutputAndValue(
            self.rsync, [f"rsync://127.0.0.1:{port}/"], env={}, reactor=reactor
        ).addTimeout(TIMEOUT, reactor)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(line.split()[0] for line in out.decode().splitlines()),
                         ["documents", "photos"])


class IdleTunnelMemoryTests(TunnelTestCase):
    """An open tunnel does not keep its opening handshake (issue 8: memory per client)."""

    @inlineCallbacks
    def test_handshake_forgotten_tunnel_works(self):
        source = make_sample_tree(self.root / "src")
        _, port, _ = yield self.connected_client("laptop1", {"m": source})
        tunnel = self.server.factory.tunnels.get("laptop1")
        self.assertEqual((tunnel.http_request_data, tunnel.http_headers), (b"", {}))
        self.assertIsNone(tunnel._transport_details._peer_cert)
        self.assertIsNotNone(tunnel.certificate_expires)  # what the status API shows
        yield self.pull_and_compare(port, "m", source)


class RefusalTests(TunnelTestCase):
    """Acceptance 2: each refusal reads the same on the client and in the server log."""

    @inlineCallbacks
    def assertRefused(self, host, words, server_words=None, **kwargs):
        client, _, _ = self.add_client(host, {"m": self.root}, **kwargs)
        detail = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        yield client.stop()
        self.assertTrue(detail.startswith(words), detail)
        client_line = yield self.logs.wait_for(f"refused by server: {words}")
        server_line = yield self.logs.wait_for(server_words or f"refused {host} from 127.0.0.1:")
        self.assertIn(words, server_line)
        # Counted under its member's code, and only codes are label values.
        refusal = Refusal.from_text(words)
        self.assertIsNotNone(refusal, words)
        registry = self.server.factory.metrics.registry
        self.assertGreaterEqual(registry.get_sample_value("bpctunnel_refusals_total",
                                                          {"reason": refusal.code}), 1)
        labels = {sample.labels["reason"] for metric in registry.collect()
                  for sample in metric.samples if sample.name == "bpctunnel_refusals_total"}
        self.assertEqual(labels, {refusal.code})
        self.assertIn(refusal.advice, client_line)
        # The server goes on serving others.
        good = make_sample_tree(self.root / f"good-{host}")
        _, port, _ = yield self.connected_client(f"good-{host}", {"m": good})
        yield self.pull_and_compare(port, "m", good)
        return client_line

    @inlineCallbacks
    def test_unknown_host(self):
        line = yield self.assertRefused("stranger", "unknown host for stranger", register=False)
        self.assertIn("not listed in", line)
        self.assertIn("hosts file", line)

    @inlineCallbacks
    def test_fingerprint_mismatch(self):
        """A certificate other than the registered one is refused."""
        registered = self.sandbox.issue_client("laptop1")
        self.sandbox.register("laptop1", free_port(), registered.fingerprint)
        other = self.sandbox.issue_client("laptop1")  # same CA and CN, new key
        line = yield self.assertRefused(
            "laptop1", "fingerprint mismatch for laptop1", register=False, files=other)
        self.assertIn("the certificate does not match TunnelCert in laptop1.pl", line)

    @inlineCallbacks
    def test_missing_port_setting(self):
        files = self.sandbox.issue_client("laptop1")
        self.sandbox.register("laptop1", None, files.fingerprint)
        line = yield self.assertRefused("laptop1", "host config error for laptop1",
                                        register=False, files=files)
        self.assertIn("RsyncdClientPort", line)

    @inlineCallbacks
    def test_already_connected(self):
        """A second client with the same host name is refused while the first is up."""
        source = make_sample_tree(self.root / "src")
        first, port, _ = yield self.connected_client("laptop1", {"m": source})
        files = self.sandbox.issue_client("laptop1")
        # Same certificate CN, registered fingerprint of the second bundle too.
        path = self.sandbox.conf_dir / "laptop1.pl"
        path.write_text(path.read_text().replace(
            "';\n", f" TunnelCert:sha256:{files.fingerprint}';\n"))
        yield self.assertRefused("laptop1", "already connected for laptop1",
                                 register=False, files=files, port=port)
        # The first tunnel still works.
        yield self.pull_and_compare(port, "m", source)

    @inlineCallbacks
    def test_port_unavailable(self):
        """A port held by another program is refused with the port named."""
        holder = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(holder.stopListening)
        port = holder.getHost().port
        line = yield self.assertRefused("laptop1", "port unavailable for laptop1", port=port)
        self.assertIn(f"127.0.0.1:{port}", line)

    @inlineCallbacks
    def test_refused_client_retries_and_gets_in(self):
        """
        A refused client keeps retrying; once the admin adds the host (no
        server restart: the config is read for every new tunnel) it gets in.
        """
        files = self.sandbox.issue_client("newlaptop")
        client, port, _ = self.add_client("newlaptop", {"m": self.root}, register=False, files=files,
                                          retry_max=1)
        detail = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        self.assertTrue(detail.startswith("unknown host for newlaptop"), detail)
        line = yield self.logs.wait_for("refused by server: unknown host for newlaptop")
        self.assertIn("(retrying every 1 second until then)", line)
        self.sandbox.register("newlaptop", port, files.fingerprint)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        self.assertEqual(self.server_events, [("open", "newlaptop")])

    @inlineCallbacks
    def test_other_protocol_version(self):
        """A client speaking another protocol version is told to upgrade."""
        line = yield self.assertRefused(
            "laptop1", "unsupported protocol version: the client offers bpctunnel.v99",
            protocols=["bpctunnel.v99"], server_words="refused 127.0.0.1:")
        self.assertIn("install the bpctunnel version the server runs", line)

    @inlineCallbacks
    def test_wrong_path(self):
        """Only /tunnel is a tunnel; another path gets an HTTP error with the right path."""
        yield self.assertRefused("laptop1", "no tunnel at /other; the path is /tunnel",
                                 url=self.server.url.replace("/tunnel", "/other"),
                                 server_words="refused 127.0.0.1:")

    @inlineCallbacks
    def test_plain_http_request(self):
        """A plain HTTP request (with a valid certificate) gets an HTTP error, no crash."""
        from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol

        from bpctunnel.transport.tls import client_tls_options

        files = self.sandbox.issue_client("laptop1")
        received = []
        done = Deferred()

        class Http(Protocol):
            def connectionMade(self):
                self.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

            def dataReceived(self, data):
                received.append(data)

            def connectionLost(self, reason):
                done.callback(None)

        address = self.server.port.getHost()
        tls = client_tls_options("127.0.0.1", files.ca, files.cert, files.key)
        yield connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", address.port, tls), Http())
        yield done.addTimeout(TIMEOUT, reactor)
        self.assertRegex(b"".join(received).decode(), r"^HTTP/1.1 4\d\d ")
        good = make_sample_tree(self.root / "good")
        _, port, _ = yield self.connected_client("good", {"m": good})
        yield self.pull_and_compare(port, "m", good)

    @inlineCallbacks
    def test_certificate_from_another_ca(self):
        """A certificate our CA did not sign fails at TLS; the server logs it."""
        foreign = pki.make_ca("someone else's CA")
        files = self.sandbox.issue_client("laptop1", ca=foreign)
        self.sandbox.register("laptop1", free_port(), files.fingerprint)
        client, _, _ = self.add_client("laptop1", {"m": self.root}, register=False, files=files)
        detail = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        yield client.stop()
        self.assertIn("unknown ca", detail)
        yield self.logs.wait_for("TLS with wss://")
        line = yield self.logs.wait_for("TLS handshake with 127.0.0.1:")
        self.assertIn("certificate verify failed", line)
        self.assertEqual(self.server_events, [])


class LifecycleTests(TunnelTestCase):
    """Acceptance 3: the port lives exactly as long as the tunnel."""

    @inlineCallbacks
    def test_port_closes_and_reopens(self):
        source = make_sample_tree(self.root / "src")
        client, port, files = yield self.connected_client("laptop1", {"m": source})
        connection = yield tcp_connect(port)
        connection.transport.loseConnection()

        down = self.server_down("laptop1")
        yield client.stop()
        yield down
        yield self.assertFailure(tcp_connect(port), ConnectionRefusedError)

        yield self.connected_client("laptop1", {"m": source}, port=port, register=False,
                                    files=files)
        yield self.pull_and_compare(port, "m", source)
        self.assertEqual([e for e in self.server_events], [("open", "laptop1"), ("closed", "laptop1"),
                                                           ("open", "laptop1")])

    @inlineCallbacks
    def test_tunnel_loss_aborts_carried_connection(self):
        """
        A connection open when the tunnel dies is aborted (reset), not closed
        cleanly and not left hanging: BackupPC must see a failure.
        """
        source = make_sample_tree(self.root / "src")
        client, port, _ = yield self.connected_client("laptop1", {"m": source})
        from twisted.internet.defer import Deferred

        lost = Deferred()

        class Watch(Protocol):
            def connectionLost(self, reason):
                lost.callback(reason.value)

        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        watcher = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Watch())
        watcher.transport.write(b"@RSYNCD: 31.0\n")
        yield client.stop()
        why = yield lost.addTimeout(TIMEOUT, reactor)
        self.assertIsInstance(why, ConnectionLost)
