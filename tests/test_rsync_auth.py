"""
The laptop's rsync daemon asks BackupPC for the host's own secret
(bpctunnel.client.rsync_auth): parsing, the launcher's pipe, and real rsync
daemons (the host's and 3.2.7) that let only the right secret in.
"""

import os
import socket
import subprocess
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.client.rsync_auth import SECRETS_FD, RsyncAuth, parse_secrets, read_secrets
from bpctunnel.client.rsync_daemon import RsyncLauncher, daemon_overrides, rsync_argv
from bpctunnel.errors import ConfigError
from tests.helpers import temp_dir
from tests.old_rsync import rsync_3_2_7
from tests.test_mux import FakeLocalEnd, Wire

SECRET = "s3cret-s3cret-s3cret"


class ParseTests(SynchronousTestCase):
    def test_one_line(self):
        auth = parse_secrets(f"# written by register-client\nbackuppc:{SECRET}\n", "f")
        self.assertEqual((auth.user, auth.secret), ("backuppc", SECRET))
        self.assertEqual(auth.secrets_line(), f"backuppc:{SECRET}\n".encode())
        self.assertNotIn(SECRET, repr(auth))

    def test_malformed(self):
        for text, words in [("", "found 0 line(s)"), ("a:b\nc:d\n", "found 2 line(s)"),
                            ("backuppc\n", "one line user:secret"),
                            ("bad user:" + SECRET, "rsync user name 'bad user'"),
                            ("backuppc:short", "16-256 printable characters"),
                            (f"backuppc:{SECRET} x", "16-256 printable characters")]:
            e = self.assertRaises(ConfigError, parse_secrets, text, "rsyncd.secrets")
            self.assertIn(words, str(e))
            self.assertTrue(str(e).startswith("rsyncd.secrets"), str(e))

    def test_generated_secrets_differ(self):
        self.assertNotEqual(RsyncAuth.generate().secret, RsyncAuth.generate().secret)
        self.assertEqual(RsyncAuth.generate("bpc").user, "bpc")

    def test_file_must_be_private(self):
        path = temp_dir(self) / "rsyncd.secrets"
        path.write_text(f"backuppc:{SECRET}\n")
        os.chmod(path, 0o640)
        e = self.assertRaises(ConfigError, read_secrets, path)
        self.assertIn(f"chmod 600 {path}", str(e))
        os.chmod(path, 0o600)
        self.assertEqual(read_secrets(path).secret, SECRET)
        e = self.assertRaises(ConfigError, read_secrets, path.with_name("none"))
        self.assertIn("No such file", str(e))


class LauncherTests(SynchronousTestCase):
    def test_secret_through_a_pipe(self):
        """The daemon gets auth users and /dev/fd/4; the secret is written there, then closed."""
        spawned = []

        class Process:
            def __init__(self):
                self.written, self.closed = [], []

            def writeToChild(self, fd, data):
                self.written.append((fd, data))

            def closeChildFD(self, fd):
                self.closed.append(fd)

        class Reactor(MemoryReactorClock):
            def spawnProcess(self, protocol, executable, args, env=None, childFDs=None, **kw):
                spawned.append((args, childFDs, env, Process()))
                return spawned[-1][3]

            def adoptStreamConnection(self, *args):
                pass

        conf = temp_dir(self) / "rsyncd.conf"
        conf.write_text("[documents]\npath = /tmp\n")
        auth = RsyncAuth("backuppc", SECRET)
        wire = Wire()
        wire.client._accept_channel = RsyncLauncher(Reactor(), "/usr/bin/rsync", conf, euid=1000,
                                                    auth=auth)
        wire.server.open_channel().attach(FakeLocalEnd())
        wire.pump()
        (args, child_fds, env, process), = spawned
        self.assertEqual(args[-2:], ["--dparam=authusers=backuppc",
                                     f"--dparam=secretsfile=/dev/fd/{SECRETS_FD}"])
        self.assertEqual(child_fds[SECRETS_FD], "w")
        self.assertEqual(process.written, [(SECRETS_FD, auth.secrets_line())])
        self.assertEqual(process.closed, [SECRETS_FD])
        self.assertNotIn(SECRET, " ".join(args) + repr(env))

    def test_no_secret_no_auth(self):
        conf = temp_dir(self) / "rsyncd.conf"
        conf.write_text("[documents]\npath = /tmp\n")
        self.assertFalse([a for a in daemon_overrides(conf, 1000) if "auth" in a or "secret" in a])


def serve_once(rsync: str, conf: Path, auth: RsyncAuth | None) -> tuple[int, subprocess.Popen]:
    """One rsync daemon, inetd-style, as the launcher starts it, behind a port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    argv = rsync_argv(rsync, conf, daemon_overrides(conf, os.geteuid(), auth))
    read_end, write_end = os.pipe()
    os.write(write_end, auth.secrets_line() if auth else b"")
    os.close(write_end)
    script = ("import os, socket, sys\n"
              "s = socket.socket(fileno=int(sys.argv[1])); c, _ = s.accept(); s.close()\n"
              "os.dup2(c.fileno(), 0); os.dup2(c.fileno(), 1); os.dup2(int(sys.argv[2]), 4)\n"
              "os.dup2(os.open('/dev/null', os.O_WRONLY), 3)\n"
              "os.execv(sys.argv[3], sys.argv[3:])\n")
    daemon = subprocess.Popen(["python3", "-c", script, str(listener.fileno()), str(read_end),
                               *argv], pass_fds=(listener.fileno(), read_end))
    listener.close()
    os.close(read_end)
    return port, daemon


class RealDaemonTests(SynchronousTestCase):
    """Real rsync daemons, the host's and 3.2.7, with the launcher's options."""

    def pull(self, rsync, password, user="backuppc"):
        root = temp_dir(self)
        (root / "docs").mkdir()
        (root / "docs" / "private.txt").write_text("only for BackupPC\n")
        conf = root / "rsyncd.conf"
        conf.write_text(f"use chroot = no\n[docs]\n    path = {root / 'docs'}\n"
                        f"    read only = yes\n")
        port, daemon = serve_once(rsync, conf, RsyncAuth("backuppc", SECRET))
        env = {"PATH": "/usr/bin:/bin"}
        if password is not None:
            env["RSYNC_PASSWORD"] = password
        who = f"{user}@" if user else ""
        result = subprocess.run(["rsync", f"rsync://{who}127.0.0.1:{port}/docs/private.txt",
                                 str(root / "copy.txt")], env=env, capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
        daemon.wait(timeout=60)
        copied = (root / "copy.txt").read_text() if (root / "copy.txt").exists() else None
        return result.returncode, result.stderr, copied

    def check(self, rsync):
        self.assertEqual(self.pull(rsync, SECRET)[::2], (0, "only for BackupPC\n"))
        for password, user in [("wrong-wrong-wrong-wrong", "backuppc"), (None, None),
                               (SECRET, "someone")]:
            code, err, copied = self.pull(rsync, password, user)
            self.assertEqual(copied, None)
            self.assertNotEqual(code, 0)
            self.assertIn("auth failed on module docs", err)

    def test_host_rsync(self):
        self.check("/usr/bin/rsync")

    def test_rsync_3_2_7(self):
        self.check(str(rsync_3_2_7()))
