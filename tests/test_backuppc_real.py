"""
Real BackupPC 4 (Debian 12's C{backuppc} 4.4.0 with C{backuppc-rsync})
backing up laptops through the tunnel: the host settings of README's
"BackupPC host setup", BackupPC's own programs, and BackupPC's own tools to
look at what it stored.  Server and clients run in this process, except
where a client must be killed (a C{twistd} process, killed with SIGKILL).

A missing BackupPC fails these tests (CI installs it:
C{apt-get install -y --no-install-recommends backuppc}).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bpctunnel.client.config import find_rsync
from bpctunnel.testing.sandbox import (
    Sandbox, free_port, make_sample_tree, rsyncd_conf_text, start_client, start_server,
    tree_digest,
)
from tests.bpc_fixture import IsolatedBackupPC
from tests.helpers import TIMEOUT, LogCapture, tcp_connect, temp_dir, twistd

MB = 1024 * 1024


#: rsyncd.conf parameters of the module restores write to.  Without chroot,
#: rsync would "munge" restored symlinks (prefix /rsyncd-munged/), and an
#: rsync daemon started by root would write as nobody.
RESTORE_MODULE = {"munge symlinks": "no", "uid": os.geteuid(), "gid": os.getegid()}


def add_links(root: Path) -> Path:
    """Symlinks of every kind rsync keeps: to a file, a folder, up, nowhere."""
    os.symlink("readme.txt", root / "link to readme")
    os.symlink("a/b", root / "link-to-dir")
    os.symlink("../../readme.txt", root / "a" / "b" / "up-link")
    os.symlink("does/not/exist", root / "dangling")
    return root


def set_times(root: Path, when: int, dirs_only: bool = False) -> None:
    """Give every entry below C{root} (only folders, if told) the mtime C{when}."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + ([] if dirs_only else filenames):
            os.utime(Path(dirpath) / name, (when, when), follow_symlinks=False)
    os.utime(root, (when, when))


def snapshot(root: Path) -> dict[str, tuple]:
    """L{tree_digest} plus each entry's permission bits and each file's mtime."""
    result = {}
    for rel, digest in tree_digest(root).items():
        st = (Path(root) / rel).lstat()
        extra = (stat.S_IMODE(st.st_mode),)
        if digest[0] == "file":
            extra += (int(st.st_mtime),)
        if digest[0] == "link":
            extra = ()
        result[rel] = digest + extra
    return result


class RealBackupPCTestCase(TestCase):
    """A tunnel server, an isolated BackupPC sharing its config folder, helpers."""

    timeout = 300
    maxDiff = None

    @inlineCallbacks
    def setUp(self):
        self.rsync = find_rsync("rsync")  # fails, not skips, without rsync
        self.root = temp_dir(self)
        self.sandbox = Sandbox.create(self.root / "tunnel")
        self.logs = LogCapture(self)
        self.server = yield start_server(reactor, self.sandbox)
        self.addCleanup(self.server.stop)
        # The daemon starts once the test has registered its hosts: it reads
        # the hosts file at start (later, only when its mtime's second changes).
        self.bpc = IsolatedBackupPC.create(reactor, self.root / "bpc", self.sandbox.conf_dir)
        self.addCleanup(self.bpc.stop)

    def laptop_config(self, host: str, modules: dict[str, Path], shares=None,
                      writable: tuple[str, ...] = (), options=None, port: int | None = None):
        """
        Register C{host} for BackupPC and the tunnel (shares: C{shares}, by
        default every module) and write its client's files, with C{options}
        (module -> {parameter: value}) added to its rsyncd.conf; returns
        (config path, port, client files).
        """
        files = self.sandbox.issue_client(host)
        port = port or free_port()
        self.sandbox.register(host, port, files.fingerprint, shares=tuple(shares or modules))
        config = self.sandbox.write_client_config(files, self.server.url, modules, self.rsync)
        text = rsyncd_conf_text(modules, writable)
        for module, parameters in (options or {}).items():
            text = text.replace(f"[{module}]\n", f"[{module}]\n" + "".join(
                f"    {name} = {value}\n" for name, value in parameters.items()))
        (config.parent / "rsyncd.conf").write_text(text)
        if writable:
            # The client refuses writable modules unless restores are enabled on purpose.
            with config.open("a") as f:
                f.write("allow_restore = yes\n")
        return config, port, files

    @inlineCallbacks
    def laptop(self, host: str, modules: dict[str, Path], **kwargs):
        """A registered laptop whose client (in this process) has its tunnel up."""
        config, port, files = self.laptop_config(host, modules, **kwargs)
        client = start_client(reactor, config)
        self.addCleanup(client.stop)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        return client, port, files

    @inlineCallbacks
    def backuppc_up(self):
        """Start BackupPC's daemon (after the test registered its hosts)."""
        yield self.bpc.start()

    def server_event(self, event: str, host: str) -> Deferred:
        """Fires at the server's next C{event} ("open", "closed") for C{host}."""
        d = Deferred()

        def observer(kind, tunnel):
            if kind == event and tunnel.host == host and not d.called:
                self.server.factory.observers.remove(observer)
                d.callback(tunnel)

        self.server.factory.observers.append(observer)
        return d.addTimeout(TIMEOUT, reactor)

    @inlineCallbacks
    def dump_ok(self, host: str, full: bool = True):
        """Back up C{host}; BackupPC must report success."""
        result = yield self.bpc.dump(host, full=full)
        kind = "full" if full else "incr"
        self.assertEqual(result.exit_code, 0, result.describe())
        self.assertIn(f"{kind} backup complete", result.output, result.describe())
        return result

    @inlineCallbacks
    def assert_backup_equals(self, host: str, num: int, share: str, want: dict):
        """Backup C{num} of C{share}, as BackupPC_tarCreate makes it, equals C{want}."""
        dest = yield self.bpc.tar_create(host, num, share, temp_dir(self) / share)
        got = yield deferToThread(snapshot, dest)
        if got != want:
            log = yield self.bpc.xfer_log(host, f"XferLOG.{num}.z")
            self.assertEqual(got, want, f"backup {num} of {host}'s {share} differs from the "
                                        f"source; {self.bpc.last_tar_create.describe()}\n"
                                        f"XferLOG.{num}.z:\n{log}")

    @inlineCallbacks
    def last_backup(self, host: str, kind: str):
        """BackupPC's record of C{host}'s newest backup, which must be a clean C{kind}."""
        # DumpPostUserCmd (what backup-now waits for) runs before BackupPC_dump
        # closes the backup's record ("active" until then): wait for its end.
        yield self.bpc.wait_for_host_status(host, self.bpc.idle)
        backups = yield self.bpc.backups(host)
        self.assertTrue(backups, f"BackupPC recorded no backup of {host}")
        last = backups[-1]
        self.assertEqual((last["type"], last["xferErrs"], last["xferBadFile"], last["xferBadShare"]),
                         (kind, "0", "0", "0"), last)
        return backups


class FullBackupTests(RealBackupPCTestCase):
    """Acceptance 1: a full backup through the tunnel equals the laptop's files."""

    @inlineCallbacks
    def test_full_backup_of_two_shares(self):
        """
        Two shares (nested folders, a 100 MB file, symlinks, empty files and
        folders, names with spaces, quotes and UTF-8): BackupPC reports
        success, and each share as BackupPC_tarCreate rebuilds it, and as
        BackupPC_ls lists it, equals the source.
        """
        documents = yield deferToThread(make_sample_tree, self.root / "laptop" / "documents",
                                        large_file_bytes=100 * MB, seed=1)
        photos = make_sample_tree(self.root / "laptop" / "photos", seed=2)
        add_links(documents)
        add_links(photos)
        (photos / "Ölgemälde 🎨.jpg").write_bytes(b"\xff\xd8" + os.urandom(5000))
        want = {"documents": (yield deferToThread(snapshot, documents)),
                "photos": (yield deferToThread(snapshot, photos))}
        self.assertEqual(want["documents"]["large.bin"][1], 100 * MB)

        yield self.laptop("laptop1", {"documents": documents, "photos": photos})
        yield self.backuppc_up()
        result = yield self.dump_ok("laptop1")

        backups = yield self.last_backup("laptop1", "full")
        self.assertEqual(len(backups), 1, backups)
        # BackupPC counts files and symlinks, not folders.
        files = sum(1 for tree in want.values() for d in tree.values() if d[0] != "dir")
        self.assertEqual(int(backups[0]["nFiles"]), files, backups[0])
        for share, tree in want.items():
            self.assertIn(f"started full dump, share={share}", result.output)
            yield self.assert_backup_equals("laptop1", 0, share, tree)
            listing = yield self.bpc.ls("laptop1", 0, share)
            self.assertEqual(sorted(listing), sorted(tree))
            for rel, digest in tree.items():
                self.assertEqual(listing[rel]["kind"], digest[0], rel)
                if digest[0] == "link":
                    self.assertEqual(listing[rel]["target"], digest[1], rel)
                if digest[0] == "file":
                    self.assertEqual(int(listing[rel]["size"]), digest[1], rel)
        # One rsync per share, each run to a clean end on the laptop.
        self.assertEqual(len(self.logs.matching("exited with status 0")), 2, self.logs.lines)

    @inlineCallbacks
    def test_unreadable_file_is_a_transfer_error(self):
        """
        A file rsyncd cannot read on the laptop: the backup completes with a
        transfer error, and BackupPC's XferLOG names the file and the reason
        exactly as with a local rsyncd (rsync's own message, sent in-band).
        """
        documents = make_sample_tree(self.root / "laptop" / "documents", seed=4)
        (documents / "secret.txt").write_bytes(b"secret\n")
        os.chmod(documents / "secret.txt", 0)
        # Root reads every file; rsyncd started by root reads as "uid" instead.
        options = {"documents": {"uid": 65534, "gid": 65534}} if os.geteuid() == 0 else {}
        yield self.laptop("laptop1", {"documents": documents}, options=options)
        yield self.backuppc_up()
        result = yield self.bpc.dump("laptop1")
        self.assertEqual(result.exit_code, 0, result.describe())

        backups = yield self.bpc.backups("laptop1")
        self.assertEqual(backups[-1]["type"], "full", backups)
        self.assertGreaterEqual(int(backups[-1]["xferErrs"]), 1, backups)
        log = yield self.bpc.xfer_log("laptop1", "XferLOG.0.z")
        # The laptop's daemon runs as root, so in a chroot of its module: it
        # names the file from that root.
        self.assertIn('rsync: [sender] send_files failed to open "/secret.txt" (in documents): '
                      'Permission denied (13)', log)


class IncrementalBackupTests(RealBackupPCTestCase):
    """Acceptance 2: an incremental backup records exactly what changed."""

    @inlineCallbacks
    def test_incremental_records_changes(self):
        """
        After a full backup, files are changed, added and deleted; the
        incremental through the tunnel transfers exactly those (its XferLOG),
        the new backup equals the changed tree and the full still equals the
        old one.
        """
        documents = make_sample_tree(self.root / "laptop" / "documents", seed=3)
        add_links(documents)
        # Times far from now, so that only what the test changes looks changed.
        set_times(documents, 1_600_000_000)
        yield self.laptop("laptop1", {"documents": documents})
        yield self.backuppc_up()
        yield self.dump_ok("laptop1", full=True)
        before = yield deferToThread(snapshot, documents)

        (documents / "readme.txt").write_bytes(b"changed through the tunnel\n")
        (documents / "a" / "notes.md").write_bytes(b"# notes, longer now\n" * 300)
        (documents / "new folder").mkdir()
        (documents / "new folder" / "added ✓.txt").write_bytes(b"added\n")
        (documents / "a" / "b" / "c" / "deep.bin").unlink()
        (documents / "name with spaces.txt").unlink()
        os.unlink(documents / "dangling")
        os.symlink("a/notes.md", documents / "dangling")
        for rel in ("readme.txt", "a/notes.md", "new folder/added ✓.txt"):
            os.utime(documents / rel, (1_700_000_000, 1_700_000_000))
        # Folders keep their times: their new or lost entries are the changes.
        set_times(documents, 1_600_000_000, dirs_only=True)
        after = yield deferToThread(snapshot, documents)

        yield self.dump_ok("laptop1", full=False)
        backups = yield self.last_backup("laptop1", "incr")
        self.assertEqual([(b["num"], b["type"]) for b in backups], [("0", "full"), ("1", "incr")])
        yield self.assert_backup_equals("laptop1", 1, "documents", after)
        yield self.assert_backup_equals("laptop1", 0, "documents", before)

        # XferLOG names each entry the transfer received or deleted:
        # "    new    recv >f.st...... rw-r--r--   0,   0   27 readme.txt".
        log = yield self.bpc.xfer_log("laptop1", "XferLOG.1.z")
        received, deleted = set(), set()
        for line in log.splitlines():
            words = line.split(None, 7)
            if len(words) == 8 and words[1] in ("recv", "del."):
                name = words[7].split(" -> ")[0]
                (received if words[1] == "recv" else deleted).add(name)
        self.assertEqual(received, {"readme.txt", "a/notes.md", "new folder",
                                    "new folder/added ✓.txt", "dangling"}, log)
        self.assertEqual(deleted, {"a/b/c/deep.bin", "name with spaces.txt"}, log)


class RestoreTests(RealBackupPCTestCase):
    """Acceptance 3: a restore through the tunnel puts the files back."""

    @inlineCallbacks
    def test_restore_to_writable_module(self):
        """
        The laptop loses and damages files after a backup; BackupPC_restore
        into the module that allows writes (same folder as the read-only one
        BackupPC backs up) brings the tree back byte-identical.  Restoring
        into the read-only module fails, and BackupPC shows rsyncd's reason
        ("ERROR: module is read only", as a local rsyncd sends it).
        """
        documents = yield deferToThread(make_sample_tree, self.root / "laptop" / "documents",
                                        large_file_bytes=20 * MB, seed=5)
        add_links(documents)
        want = yield deferToThread(snapshot, documents)
        yield self.laptop("laptop1", {"documents": documents, "restore": documents},
                          shares=("documents",), writable=("restore",),
                          options={"restore": RESTORE_MODULE})
        yield self.backuppc_up()
        yield self.dump_ok("laptop1")

        (documents / "readme.txt").unlink()
        (documents / "a" / "b" / "c" / "deep.bin").write_bytes(b"damaged")
        with (documents / "large.bin").open("r+b") as f:
            f.seek(10 * MB)
            f.write(b"\0" * 4096)
        # Same size, other mtime: rsync rebuilds it from the blocks that match.
        os.utime(documents / "large.bin", (want["large.bin"][4] - 100,) * 2)
        (documents / "link to readme").unlink()
        damaged = yield deferToThread(snapshot, documents)
        self.assertNotEqual(damaged, want)

        refused = yield self.bpc.restore("laptop1", 0, "documents", "documents")
        self.assertNotEqual(refused.exit_code, 0, refused.describe())
        self.assertEqual((yield deferToThread(snapshot, documents)), damaged)

        result = yield self.bpc.restore("laptop1", 0, "documents", "restore")
        self.assertEqual(result.exit_code, 0, result.describe())
        restores = yield self.bpc.restores("laptop1")
        self.assertEqual([r["result"] for r in restores], ["failed", "ok"], restores)
        self.assertIn("read only", refused.output, refused.describe())
        self.assertEqual((yield deferToThread(snapshot, documents)), want)


def make_unique(tree: Path, tag: str) -> None:
    """Append C{tag} to every non-empty file under C{tree}."""
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size:
            with path.open("ab") as f:
                f.write(f"\n{tag}\n".encode())


class ConcurrentBackupTests(RealBackupPCTestCase):
    """Acceptance 4: three laptops back up at the same time."""

    @inlineCallbacks
    def test_three_hosts_at_once(self):
        """
        Three hosts, each with its own client, port and files, backed up
        by three BackupPC_dump processes started together: each backup
        equals its own laptop's files.
        """
        hosts = ("laptop1", "laptop2", "laptop3")
        trees, ports = {}, {}
        for n, host in enumerate(hosts):
            tree = yield deferToThread(make_sample_tree, self.root / host / "home",
                                       large_file_bytes=10 * MB, seed=10 + n)
            (tree / f"only-on-{host}").write_bytes(host.encode())
            # No file the same on two hosts: BackupPC 4.4 itself races when two
            # backups add the same new content to the pool at the same moment
            # ("bpc_poolWrite_updateMatches: can't open candidate file"), then
            # calls a backup with a missing folder complete, tunnel or not.
            yield deferToThread(make_unique, tree, host)
            trees[host] = yield deferToThread(snapshot, tree)
            _, ports[host], _ = yield self.laptop(host, {"home": tree})
        self.assertEqual(len(set(ports.values())), 3)
        # A fresh pool races when backups fill it at once (see create_pool_dirs).
        yield deferToThread(self.bpc.create_pool_dirs)
        yield self.backuppc_up()

        started = [(host, self.bpc.start_dump(host)) for host in hosts]
        results = yield gatherResults([self.bpc.finished(p) for _, p in started], consumeErrors=True)
        for (host, _), result in zip(started, results):
            self.assertEqual(result.exit_code, 0, result.describe())
            self.assertIn("full backup complete", result.output)
            self.assertIn(f"--port={ports[host]} ", result.output)
        for host in hosts:
            yield self.last_backup(host, "full")
            yield self.assert_backup_equals(host, 0, "home", trees[host])


class KilledClientTests(RealBackupPCTestCase):
    """Acceptance 5: a client killed mid-backup fails that backup, not the next."""

    def client_process(self, config: Path):
        """The client as a C{twistd} process (so that it can be killed)."""
        up = self.server_event("open", "laptop1")
        process = twistd(self, "bpctunnel-client", "--config", str(config))
        return process, up

    @inlineCallbacks
    def test_client_killed_mid_backup(self):
        """
        SIGKILL to the client while BackupPC receives a large file: BackupPC
        records a failed backup with a clear error, the server closes the
        port, and once the client is back a full backup succeeds and is
        complete.
        """
        documents = yield deferToThread(make_sample_tree, self.root / "laptop" / "documents", seed=7)
        with (documents / "a-first.bin").open("wb") as f:
            f.write(os.urandom(2 * MB))
        with (documents / "z-last.bin").open("wb") as f:
            for _ in range(150):
                f.write(os.urandom(MB))
        want = yield deferToThread(snapshot, documents)
        config, port, _ = self.laptop_config("laptop1", {"documents": documents})
        yield self.backuppc_up()
        process, up = self.client_process(config)
        yield up

        dump = self.bpc.start_dump("laptop1")
        # With -v, BackupPC_dump echoes its XferLOG; a file is logged once it
        # is received, so z-last.bin (150 MB) is on its way.
        yield dump.wait_for_output("a-first.bin").addTimeout(TIMEOUT, reactor)
        self.assertNotIn("z-last.bin", (dump.stdout + dump.stderr).decode(errors="replace"))
        down = self.server_event("closed", "laptop1")
        yield process.stop("KILL")
        yield down
        result = yield self.bpc.finished(dump)

        # The server reset BackupPC's connection: rsync_bpc sees the stream
        # break (never a clean end), and BackupPC fails the backup.
        self.assertEqual(result.exit_code, 1, result.describe())
        self.assertRegex(result.output, r"rsync_bpc: (read|write) error: "
                                        r"(Connection reset by peer|Broken pipe)")
        self.assertIn("dump failed: rsync error: error in rsync protocol data stream (code 12)",
                      result.output)
        self.assertIn("Backup aborted (rsync error: error in rsync protocol data stream",
                      self.bpc.host_log("laptop1"))
        # What arrived is kept as a partial backup, never as a full one.
        backups = yield self.bpc.backups("laptop1")
        self.assertEqual([b["type"] for b in backups], ["partial"], backups)
        failure = tcp_connect(port)
        yield self.assertFailure(failure, ConnectionRefusedError)

        process, up = self.client_process(config)
        yield up
        yield self.dump_ok("laptop1")
        yield self.last_backup("laptop1", "full")
        num = int((yield self.bpc.backups("laptop1"))[-1]["num"])
        yield self.assert_backup_equals("laptop1", num, "documents", want)


class RevokedHostTests(RealBackupPCTestCase):
    """Acceptance 6: a revoked laptop cannot be backed up."""

    @inlineCallbacks
    def test_revoked_host_cannot_be_backed_up(self):
        """
        A laptop that was backed up, whose fingerprint is then removed from
        its config: its client is refused with "fingerprint mismatch", and
        BackupPC's next attempt fails with a connection error.
        """
        documents = make_sample_tree(self.root / "laptop" / "documents", seed=9)
        client, port, files = yield self.laptop("laptop1", {"documents": documents})
        yield self.backuppc_up()
        yield self.dump_ok("laptop1")

        down = self.server_event("closed", "laptop1")
        yield client.stop()
        yield down
        # Revoke: the host config stays, without the TunnelCert fingerprint.
        self.sandbox.register("laptop1", port, None, in_hosts=False, shares=("documents",))
        config = files.cert.parent / "laptop1.conf"
        client = start_client(reactor, config)
        self.addCleanup(client.stop)
        refusal = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        self.assertIn("fingerprint mismatch", refusal)
        self.assertTrue(self.logs.matching("refused laptop1"), self.logs.lines)

        result = yield self.bpc.dump("laptop1")
        self.assertEqual(result.exit_code, 1, result.describe())
        self.assertIn("rsync_bpc: failed to connect to 127.0.0.1 (127.0.0.1): Connection refused",
                      result.output)
        self.assertIn("dump failed: rsync error: error in socket IO (code 10)", result.output)
        # BackupPC 4 starts a full from a copy of the last one; the failed
        # attempt leaves that copy marked partial, and no new full.
        backups = yield self.bpc.backups("laptop1")
        self.assertEqual([b["type"] for b in backups], ["full", "partial"], backups)
