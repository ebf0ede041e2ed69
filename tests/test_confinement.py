"""
A broken-into BackupPC server talks to the laptop's rsync daemon directly:
whatever options it sends, it reads nothing outside the module
(bpctunnel.client.rsyncd_conf.confinement_overrides), with the host's rsync
and with 3.2.7, which still has daemon-side holes under use chroot = no.
"""

import subprocess

from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.client.rsync_daemon import parse_rsync_version, version_warning
from tests.helpers import temp_dir
from tests.old_rsync import rsync_3_2_7
from tests.test_rsync_auth import serve_once

OUTSIDE = "the laptop's private key, outside every module\n"
#: What BackupPC 4 sends for a backup (config.pl's RsyncArgs), less the log format.
BACKUPPC_ARGS = ["--super", "--recursive", "--protect-args", "--numeric-ids", "--perms",
                 "--owner", "--group", "-D", "--times", "--links", "--hard-links", "--delete",
                 "--delete-excluded", "--one-file-system", "--partial", "--stats", "--checksum"]
#: (-K, keep-dirlinks, is refused too but only matters to a receiver: a pull
#: never sends it to the daemon.)
HOSTILE = [["-L"], ["--copy-links"], ["--copy-unsafe-links"], ["-k"], ["--copy-dirlinks"],
           ["--copy-devices"], ["--remove-source-files"], ["--max-alloc=0"]]


class ConfinementTests(SynchronousTestCase):
    def setUp(self):
        self.root = temp_dir(self)
        (self.root / "outside").mkdir()
        (self.root / "outside" / "id_rsa").write_text(OUTSIDE)
        docs = self.root / "docs"
        docs.mkdir()
        (docs / "readme.txt").write_text("backed up\n")
        (docs / "escape").symlink_to(self.root / "outside" / "id_rsa")
        (docs / "escape-dir").symlink_to(self.root / "outside")
        self.conf = self.root / "rsyncd.conf"
        # As register-client's template writes it.
        self.conf.write_text(f"use chroot = no\n[docs]\n    path = {docs}\n    read only = yes\n")

    def pull(self, rsync, options):
        dest = temp_dir(self)
        port, daemon = serve_once(rsync, self.conf, None)
        result = subprocess.run(["rsync", *options, f"rsync://127.0.0.1:{port}/docs/",
                                 f"{dest}/"], capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        daemon.wait(timeout=60)
        copied = {p.relative_to(dest).as_posix(): p.read_text()
                  for p in dest.rglob("*") if p.is_file() and not p.is_symlink()}
        return result.returncode, result.stderr, copied

    def check(self, rsync):
        code, err, copied = self.pull(rsync, BACKUPPC_ARGS)
        self.assertEqual((code, copied), (0, {"readme.txt": "backed up\n"}), err)
        for options in HOSTILE:
            code, err, copied = self.pull(rsync, ["-a", *options])
            self.assertNotIn(OUTSIDE, copied.values(), options)
            self.assertNotEqual(code, 0, options)
            self.assertIn("The server is configured to refuse", err, options)
        self.assertTrue((self.root / "docs" / "readme.txt").exists(), "nothing removed")

    def test_host_rsync(self):
        self.check("/usr/bin/rsync")

    def test_rsync_3_2_7(self):
        self.check(str(rsync_3_2_7()))


class VersionWarningTests(SynchronousTestCase):
    def test_old_versions_warned(self):
        out = subprocess.run([str(rsync_3_2_7()), "--version"], capture_output=True,
                             text=True, timeout=30).stdout
        version = parse_rsync_version(out)
        self.assertEqual(version[0], "3.2.7")
        self.assertIn("predates 3.4.0", version_warning(version[0]))
        host = parse_rsync_version(subprocess.run(["/usr/bin/rsync", "--version"],
                                                  capture_output=True, text=True,
                                                  timeout=30).stdout)
        # The host's rsync (3.5.0 on Debian 12 with updates, 3.2.7 without) is
        # warned about exactly when it predates 3.4.0.
        old = tuple(int(n) for n in host[0].split(".")[:2]) < (3, 4)
        self.assertEqual(version_warning(host[0]) is not None, old, host)
        for version, warned in [("3.1.3", True), ("3.3.0", True), ("3.4.0", False),
                                ("3.4.1", False), ("4.0.0pre1", False)]:
            self.assertEqual(version_warning(version) is not None, warned, version)
