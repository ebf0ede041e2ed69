"""
The twistd plugins and the bpctunnel command, run as real processes: help,
startup errors, the demo, and a server and client started by twistd.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bpctunnel import pki
from bpctunnel.client.config import find_rsync
from bpctunnel.admin.demo import rsync_pull
from bpctunnel.testing.sandbox import Sandbox, free_port, make_sample_tree, tree_digest
from tests.helpers import TIMEOUT, spawn, temp_dir, twistd
from tests.old_rsync import rsync_3_2_7


class HelpTests(TestCase):
    """twistd finds both plugins and documents their options."""

    @inlineCallbacks
    def test_server_help(self):
        process = twistd(self, "bpctunnel-server", "--help")
        code = yield process.ended
        self.assertEqual(code, 0, process.text)
        for option in ("--listen", "--certs", "--backuppc-conf", "TunnelCert:sha256"):
            self.assertIn(option, process.text)

    @inlineCallbacks
    def test_client_help(self):
        process = twistd(self, "bpctunnel-client", "--help")
        yield process.ended
        self.assertEqual(process.exit_code, 0, process.text)
        for option in ("--config", "--server", "--rsyncd-conf", "inetd-style"):
            self.assertIn(option, process.text)

    @inlineCallbacks
    def test_version(self):
        process = spawn(self, [sys.executable, "-m", "bpctunnel", "--version"])
        yield process.ended
        self.assertEqual(process.exit_code, 0)
        self.assertRegex(process.text, r"^bpctunnel \d+\.\d+\.\d+\n$")


class StartupErrorTests(TestCase):
    """Bad files and options stop the server at once with a specific message."""

    def setUp(self):
        self.root = temp_dir(self)
        self.sandbox = Sandbox.create(self.root)

    @inlineCallbacks
    def assertStartupError(self, words, *args):
        process = twistd(self, *args)
        yield process.ended
        self.assertNotEqual(process.exit_code, 0)
        self.assertIn(words, process.text)
        self.assertNotIn("Traceback (most recent call last)", process.text)
        # The error alone, not after the whole --help.
        self.assertNotIn("Options:", process.text)
        self.assertLessEqual(len(process.text.strip().splitlines()), 2, process.text)

    def test_unknown_option(self):
        return self.assertStartupError("option --bogus not recognized",
                                       *self.server("--bogus"))

    def test_no_pidfile_where_none_can_be_written(self):
        """twistd's default twistd.pid is dropped in a folder we may not write."""
        from twisted.scripts.twistd import ServerOptions

        from bpctunnel import twistd_options

        config = self.sandbox.write_client_config(self.sandbox.issue_client("laptop1"),
                                                  "wss://127.0.0.1:1/tunnel", {}, "rsync")
        writable = {True}
        self.patch(twistd_options, "writable", lambda folder: writable.pop() if writable
                   else False)
        options = ServerOptions()
        options.parseOptions(["-n", "bpctunnel-client", "--config", str(config)])
        self.assertEqual(options["pidfile"], os.path.abspath("twistd.pid"))
        options = ServerOptions()
        options.parseOptions(["-n", "bpctunnel-client", "--config", str(config)])
        self.assertEqual(options["pidfile"], "")
        options = ServerOptions()
        options.parseOptions(["-n", "--pidfile", "/run/x.pid", "bpctunnel-client",
                              "--config", str(config)])
        self.assertEqual(options["pidfile"], "/run/x.pid")

    def server(self, *extra):
        return ["bpctunnel-server", "--listen", "127.0.0.1:0", "--api-socket",
                str(self.sandbox.root / "api.sock"), "--certs", str(self.sandbox.certs_dir),
                "--backuppc-conf", str(self.sandbox.conf_dir), "--state-dir", "none", *extra]

    def test_missing_ca(self):
        (self.sandbox.certs_dir / "ca.crt").unlink()
        return self.assertStartupError(f"{self.sandbox.certs_dir}/ca.crt does not exist", *self.server())

    def test_key_mismatch(self):
        other = pki.make_server_cert(self.sandbox.ca, "127.0.0.1")
        pki.write_private(self.sandbox.certs_dir / "server.key", other.key_pem)
        return self.assertStartupError("server.key does not belong to", *self.server())

    def test_garbage_certificate(self):
        (self.sandbox.certs_dir / "server.crt").write_text("not a certificate\n")
        return self.assertStartupError("server.crt is not a PEM certificate", *self.server())

    def test_bad_listen_address(self):
        return self.assertStartupError("'1.2.3' is not an IP address",
                                       *self.server("--listen", "1.2.3:8443"))

    def test_listen_with_twisted_tls(self):
        """The wss listener's TLS is the server's mutual TLS: ssl: is refused, saying so."""
        return self.assertStartupError("the server's TLS is its own mutual TLS",
                                       *self.server("--listen", "ssl:8443"))

    def test_listen_on_systemd_socket_without_one(self):
        return self.assertStartupError(
            "systemd passed no such socket (LISTEN_FDS)",
            *self.server("--listen", "systemd:domain=INET:index=0"))

    def test_bad_listen_endpoint(self):
        return self.assertStartupError("bad listen endpoint 'tcp:https'",
                                       *self.server("--listen", "tcp:https"))

    def test_missing_backuppc_conf(self):
        return self.assertStartupError(
            "BackupPC config folder /nonexistent does not exist",
            *self.server("--backuppc-conf", "/nonexistent"))

    def test_client_missing_config(self):
        return self.assertStartupError(
            "cannot read client config", "bpctunnel-client", "--config", str(self.root / "no.conf"))


class TwistdEndToEndTests(TestCase):
    """Server and client as the admin runs them: separate twistd processes."""

    timeout = 300

    @inlineCallbacks
    def test_pull_through_twistd_processes(self):
        rsync = find_rsync("rsync")
        root = temp_dir(self)
        sandbox = Sandbox.create(root)
        files = sandbox.issue_client("laptop1")
        port = free_port()
        sandbox.register("laptop1", port, files.fingerprint)
        server = twistd(self, "bpctunnel-server", "--listen", "127.0.0.1:0",
                        "--api-socket", str(root / "api.sock"),
                        "--certs", str(sandbox.certs_dir), "--backuppc-conf", str(sandbox.conf_dir),
                        "--state-dir", "none")
        text = yield server.wait_for("bpctunnel server listening on")
        server_port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))

        source = make_sample_tree(root / "src", large_file_bytes=3_000_000)
        config = sandbox.write_client_config(
            files, f"wss://127.0.0.1:{server_port}/tunnel", {"docs": source}, rsync)
        client = twistd(self, "bpctunnel-client", "--config", str(config))
        yield client.wait_for("tunnel up to")
        yield server.wait_for("tunnel up for laptop1 from 127.0.0.1:")

        dest = temp_dir(self)
        out, err, code = yield rsync_pull(reactor, rsync, port, "docs", dest,
                                          sandbox.auth_for(port)).addTimeout(TIMEOUT, reactor)
        self.assertEqual(code, 0, err)
        want = yield deferToThread(tree_digest, source)
        got = yield deferToThread(tree_digest, dest)
        self.assertEqual(got, want)
        yield client.wait_for("exited with status 0")

        yield client.stop("TERM")
        yield server.wait_for("tunnel of laptop1 closed")
        yield server.stop("TERM")
        self.assertNotIn("Traceback (most recent call last)", server.text + client.text)


class DemoTests(TestCase):
    """bpctunnel demo, as a newcomer runs it."""

    timeout = 300

    @inlineCallbacks
    def test_demo_succeeds(self):
        process = spawn(self, [sys.executable, "-m", "bpctunnel", "demo"])
        code = yield process.ended
        self.assertEqual(code, 0, process.text)
        self.assertIn("6. All 14 entries", process.text)
        self.assertIn("arrived byte-identical", process.text)
        self.assertIn("Demo succeeded.", process.text)

    @inlineCallbacks
    def test_demo_as_root_with_rsync_3_2_7(self):
        """
        rsync 3.2.7 (Debian 12 without updates) run by root reads a module
        without uid/gid as nobody; the demo's 0700 folder then failed.
        """
        self.assertEqual(os.geteuid(), 0, "this test needs root, as CI runs it")
        old = yield deferToThread(rsync_3_2_7)
        version = yield deferToThread(subprocess.run, [str(old), "--version"],
                                      capture_output=True, text=True)
        self.assertIn("version 3.2.7 ", version.stdout)
        process = spawn(self, ["/usr/bin/env", f"PATH={old.parent}:/usr/bin:/bin",
                               sys.executable, "-m", "bpctunnel", "demo"])
        code = yield process.ended
        self.assertEqual(code, 0, process.text)
        self.assertIn("Demo succeeded.", process.text)

    @inlineCallbacks
    def test_demo_without_rsync(self):
        """Without rsync on PATH the demo says what to install."""
        empty = temp_dir(self)
        process = spawn(self, ["/usr/bin/env", f"PATH={empty}", sys.executable, "-m", "bpctunnel",
                               "demo"])
        code = yield process.ended
        self.assertEqual(code, 2)
        self.assertIn("bpctunnel demo needs rsync", process.text)
        self.assertIn("apt-get install rsync", process.text)
