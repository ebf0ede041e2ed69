"""
bpctunnel and the real BackupPC 4 daemon (Debian 12's 4.4.0, see
L{tests.bpc_fixture}) working together, as BackupPC runs its own jobs:

- C{$Conf{PingCmd}} running C{bpctunnel ping HOST}: a laptop whose tunnel is
  down is skipped as unreachable (no failed backup); with its tunnel up, the
  same setting lets the backup run (issue 7, acceptance 1).
- The server's C{--backup-on-connect}: a laptop connects, the server asks
  the daemon with BackupPC's own C{BackupPC_serverMesg}, and the daemon backs
  the laptop up (issue 7, acceptance 2).
- C{bpctunnel backup-now} on the laptop: progress while the daemon backs it
  up, and the exit status that C{$Conf{DumpPostUserCmd}} running C{bpctunnel
  backup-done $client $xferOK} reports (issue 7, acceptance 3).

Backups are requested as BackupPC's web interface does it
(C{BackupPC_serverMesg backup HOST HOST USER TYPE}), so the daemon runs
C{BackupPC_dump}, pings the host, and records the outcome in its status.  A
missing BackupPC fails these tests.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from bpctunnel.server import service as tap_server
from bpctunnel.backuppc.server_mesg import BackupRequest, BackupTrigger
from bpctunnel.testing.sandbox import free_port, make_sample_tree, start_client
from tests.bpc_fixture import perl_string
from tests.helpers import PROJECT_ROOT, TIMEOUT, spawn
from tests.test_backuppc_real import RealBackupPCTestCase, snapshot

#: BackupPC's status reasons (C{$Status->{$host}{reason}}) of a finished job.
NO_PING = "Reason_no_ping"
BACKUP_DONE = "Reason_backup_done"

#: Upper bound for one backup the daemon runs (a few files: about a second).
JOB_TIMEOUT = 30


def bpctunnel_command() -> list[str]:
    """
    The C{bpctunnel} command of this environment, runnable with BackupPC's
    bare environment (C{PATH} is C{$Conf{MyPath}}, nothing else): the
    console script next to our Python where it is installed, else our
    Python running the package from this checkout.
    """
    script = Path(sys.executable).parent / "bpctunnel"
    if script.exists():
        return [str(script)]
    return ["/usr/bin/env", f"PYTHONPATH={PROJECT_ROOT}", sys.executable, "-m", "bpctunnel"]


class DaemonBackupTestCase(RealBackupPCTestCase):
    """Backups the BackupPC daemon runs at a user's request, and their outcome."""

    timeout = 120

    def set_host_setting(self, host: str, name: str, perl_value: str) -> None:
        """Add C{$Conf{name} = perl_value;} to C{host}'s config (BackupPC_dump rereads it)."""
        with (self.sandbox.conf_dir / f"{host}.pl").open("a") as f:
            f.write(f"$Conf{{{name}}} = {perl_value};\n")

    def ping_cmd(self, ping_host: str) -> str:
        """C{bpctunnel ping ... PING_HOST} against this test's server, as a PingCmd string."""
        words = [*bpctunnel_command(), "ping", "--api", self.server.api_url, ping_host]
        for word in words:
            # BackupPC splits a PingCmd string at white space.
            self.assertNotRegex(word, r"\s", words)
        return " ".join(words)

    @inlineCallbacks
    def request_backup(self, host: str, backup_type: str = "1"):
        """
        Ask the daemon for a backup as BackupPC's web interface does; the
        daemon has queued it by the time it answers.
        """
        result = yield self.bpc.run_ok("BackupPC_serverMesg", "backup", host, host,
                                       "bpctunnel-tests", backup_type)
        kind = {"0": "doIncr", "1": "doFull"}[backup_type]
        self.assertEqual(result.stdout.decode().strip(),
                         f"Got reply: ok: requested backup of {host} ({kind})", result.describe())

    def job_done(self, host: str):
        """Fires with C{host}'s daemon status once no backup of it is queued or running."""
        return self.bpc.wait_for_host_status(host, self.bpc.idle, timeout=JOB_TIMEOUT)


class PingCmdTests(DaemonBackupTestCase):
    """Issue 7, acceptance 1 with real BackupPC: PingCmd = bpctunnel ping."""

    @inlineCallbacks
    def test_down_tunnel_is_skipped_then_up_tunnel_backed_up(self):
        """
        With C{$Conf{PingCmd}} running C{bpctunnel ping laptop1}: while the
        laptop's tunnel is down, a requested backup ends with BackupPC's
        "no ping response" (status C{Reason_no_ping}), not as a failed
        backup: no backup is recorded and nothing in BackupPC's logs says
        failed.  Once the tunnel is up, the same request with the same
        setting gives a complete full backup.
        """
        documents = make_sample_tree(self.root / "laptop" / "documents", seed=21)
        config, _, _ = self.laptop_config("laptop1", {"documents": documents})
        self.set_host_setting("laptop1", "PingCmd", perl_string(self.ping_cmd("laptop1")))
        yield self.backuppc_up()

        yield self.request_backup("laptop1")
        status = yield self.job_done("laptop1")
        self.assertEqual((status["state"], status["reason"], status["error"]),
                         ("Status_idle", NO_PING, "no ping response from 127.0.0.1"), status)
        self.assertEqual((yield self.bpc.backups("laptop1")), [])
        host_log = self.bpc.host_log("laptop1")
        self.assertRegex(host_log, r"(?m) no ping response from 127\.0\.0\.1$")
        self.assertRegex(host_log, r"(?m) can't ping 127\.0\.0\.1 \(client = laptop1\); exiting$")
        server_log = self.bpc.server_log()
        self.assertIn("User bpctunnel-tests requested backup of laptop1 (laptop1)", server_log)
        for text in (host_log, server_log):
            self.assertNotRegex(text, r"(?i)fail|abort", text)

        client = start_client(reactor, config)
        self.addCleanup(client.stop)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        yield self.request_backup("laptop1")
        status = yield self.job_done("laptop1")
        self.assertEqual((status["state"], status["reason"]), ("Status_idle", BACKUP_DONE), status)
        self.assertNotIn("error", status)
        backups = yield self.last_backup("laptop1", "full")
        self.assertEqual(len(backups), 1, backups)
        self.assertIn("Finished full backup on laptop1", self.bpc.server_log())
        yield self.assert_backup_equals("laptop1", 0, "documents",
                                        (yield deferToThread(snapshot, documents)))

    @inlineCallbacks
    def test_backuppc_reads_the_round_trip(self):
        """
        BackupPC runs the PingCmd twice and parses a round-trip time from
        C{bpctunnel ping}'s output; with C{$Conf{PingMaxMsec}} below it, the
        host is skipped as "ping too slow", naming that time: BackupPC's own
        parser read our number (output it cannot parse counts as 0 ms).
        """
        documents = make_sample_tree(self.root / "laptop" / "documents", seed=22)
        yield self.laptop("laptop1", {"documents": documents})
        command = self.ping_cmd("laptop1")
        self.set_host_setting("laptop1", "PingCmd", perl_string(command))
        yield self.backuppc_up()

        result = yield self.dump_ok("laptop1")
        ran = re.findall(r"CheckHostAlive: ran '(.*)'; returning ([\d.]+)\n", result.output)
        self.assertEqual(len(ran), 1, result.output)
        self.assertEqual(ran[0][0], command)
        rtt = float(ran[0][1])
        self.assertGreater(rtt, 0, result.output)

        self.set_host_setting("laptop1", "PingMaxMsec", "0.000001")
        yield self.request_backup("laptop1", "0")
        status = yield self.job_done("laptop1")
        self.assertEqual(status["reason"], NO_PING, status)
        slow = re.fullmatch(r"ping too slow on 127\.0\.0\.1 ([\d.]+)msec \(threshold is 1e-06msec\)",
                            status["error"])
        self.assertIsNotNone(slow, status)
        self.assertGreater(float(slow.group(1)), 0, status)
        self.assertEqual([b["type"] for b in (yield self.bpc.backups("laptop1"))], ["full"])

    @inlineCallbacks
    def test_host_variable_is_the_client_name_alias(self):
        """
        BackupPC replaces C{$host} in C{PingCmd} and C{DumpPostUserCmd} with
        the address it pings, which for a tunnel host is its
        C{ClientNameAlias} (127.0.0.1), not the host's name: a global
        C{bpctunnel ping $host} asks for a tunnel named 127.0.0.1 and finds
        none while laptop1's is up.  So PingCmd names the host, in the
        host's own config, and DumpPostUserCmd uses C{$client}.
        """
        documents = make_sample_tree(self.root / "laptop" / "documents", seed=23)
        yield self.laptop("laptop1", {"documents": documents})
        self.set_host_setting("laptop1", "PingCmd", perl_string(self.ping_cmd("$host")))
        self.set_host_setting("laptop1", "DumpPostUserCmd",
                              perl_string("/bin/echo DumpPostUserCmd: host=$host client=$client"))
        yield self.backuppc_up()

        result = yield self.bpc.dump("laptop1")
        self.assertEqual(result.exit_code, 1, result.describe())
        self.assertIn(f"ping --api {self.server.api_url} 127.0.0.1) failed", result.output)
        self.assertIn("no ping response from 127.0.0.1", result.output)
        self.assertEqual((yield self.bpc.backups("laptop1")), [])

        self.set_host_setting("laptop1", "PingCmd", perl_string(self.ping_cmd("laptop1")))
        result = yield self.dump_ok("laptop1")
        self.assertIn("\nDumpPostUserCmd: host=127.0.0.1 client=laptop1\n", result.output)


class BackupOnConnectTests(DaemonBackupTestCase):
    """Issue 7, acceptance 2 with real BackupPC: --backup-on-connect."""

    def start_trigger_server(self):
        """
        A second tunnel server, built as C{twistd bpctunnel-server} builds it
        from its command line, with C{--backup-on-connect} using this
        BackupPC's own C{BackupPC_serverMesg}; fires with its wss URL.
        """
        options = tap_server.Options()
        options.parseOptions([
            "--listen", "127.0.0.1:0", "--certs", str(self.sandbox.certs_dir),
            "--backuppc-conf", str(self.sandbox.conf_dir), "--api-listen", "none", "--api-socket", "none",
            "--state-dir", "none", "--backup-on-connect", "--backuppc-server-mesg", self.bpc.bin("BackupPC_serverMesg"),
            "--backup-user", "bpctunnel-tests", "--backup-type", "1"])
        service = tap_server.makeService(options, reactor)
        listening = self.logs.wait_for("bpctunnel server listening on").addTimeout(
            JOB_TIMEOUT, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        factory = service.services[0].factory
        self.addCleanup(lambda: [t.dropConnection(abort=True) for t in list(factory.tunnels)])

        def url(line):
            host_port = re.search(r"listening on (127\.0\.0\.1:\d+) ", line).group(1)
            return f"wss://{host_port}/tunnel"

        return listening.addCallback(url)

    @inlineCallbacks
    def test_connect_triggers_real_backup(self):
        """
        A laptop connects to a server run with C{--backup-on-connect}: the
        server runs C{BackupPC_serverMesg backup laptop1 laptop1
        bpctunnel-tests 1}, logs the daemon's reply, and the daemon (which
        schedules nothing by itself: BackupsDisable = 1) runs a full backup
        that succeeds and equals the laptop's files.
        """
        documents = make_sample_tree(self.root / "laptop" / "documents", seed=24)
        url = yield self.start_trigger_server()
        files = self.sandbox.issue_client("laptop1")
        port = free_port()
        self.sandbox.register("laptop1", port, files.fingerprint, shares=("documents",))
        config = self.sandbox.write_client_config(files, url, {"documents": documents}, self.rsync)
        yield self.backuppc_up()

        client = start_client(reactor, config)
        self.addCleanup(client.stop)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        line = yield self.logs.wait_for("asked BackupPC to back up laptop1").addTimeout(
            JOB_TIMEOUT, reactor)
        # BackupPC_serverMesg prints the daemon's reply after "Got reply: ".
        self.assertEqual(line, "asked BackupPC to back up laptop1: "
                               "ok: requested backup of laptop1 (doFull)")
        status = yield self.job_done("laptop1")
        self.assertEqual((status["state"], status["reason"]), ("Status_idle", BACKUP_DONE), status)
        server_log = self.bpc.server_log()
        for words in ("User bpctunnel-tests requested backup of laptop1 (laptop1)",
                      "Started full backup on laptop1 (pid=", "Finished full backup on laptop1"):
            self.assertIn(words, server_log)
        backups = yield self.last_backup("laptop1", "full")
        self.assertEqual(len(backups), 1, backups)
        self.assertIn(f"--port={port} ", (yield self.bpc.xfer_log("laptop1", "XferLOG.0.z")))
        yield self.assert_backup_equals("laptop1", 0, "documents",
                                        (yield deferToThread(snapshot, documents)))


class BackupTriggerReplyTests(DaemonBackupTestCase):
    @inlineCallbacks
    def test_refusal_is_logged_as_error(self):
        """
        The daemon refuses a backup of a host it does not know; the real
        BackupPC_serverMesg still exits 0 ("Got reply: error: unknown host
        nosuchhost"), and the server logs a failed request, not a success.
        """
        yield self.backuppc_up()
        trigger = BackupTrigger(reactor, BackupRequest((self.bpc.bin("BackupPC_serverMesg"),),
                                                       "bpctunnel-tests", "1"))
        reply = yield trigger.request_backup("nosuchhost")
        self.assertEqual((reply.ok, reply.text), (False, "error: unknown host nosuchhost"))
        self.assertEqual(self.logs.matching("asked BackupPC to back up nosuchhost"), [])
        line = yield self.logs.wait_for("asking BackupPC to back up nosuchhost failed")
        self.assertEqual(line, "asking BackupPC to back up nosuchhost failed (exit 0): "
                               "error: unknown host nosuchhost")


class BackupNowTests(DaemonBackupTestCase):
    """Issue 7, acceptance 3 with real BackupPC: bpctunnel backup-now."""

    def backup_now_laptop(self, shares, options=None):
        """laptop1 with a documents module, BackupPC reporting results, no client running."""
        documents = make_sample_tree(self.root / "laptop" / "documents",
                                     large_file_bytes=8 * 1024 * 1024, seed=31)
        config, _, _ = self.laptop_config("laptop1", {"documents": documents}, shares=shares,
                                          options=options)
        done = [*bpctunnel_command(), "backup-done", "--api", self.server.api_url,
                "$client", "$xferOK"]
        self.set_host_setting("laptop1", "DumpPostUserCmd", perl_string(" ".join(done)))
        self.server.factory.backup_desk.trigger = BackupTrigger(reactor, BackupRequest(
            (self.bpc.bin("BackupPC_serverMesg"),), "bpctunnel-tests"))
        return config, documents

    def backup_now(self, config):
        process = spawn(self, [*bpctunnel_command(), "backup-now", "--config", str(config)])
        return process.ended.addTimeout(JOB_TIMEOUT + TIMEOUT, reactor).addCallback(
            lambda code: (code, process.text))

    @inlineCallbacks
    def test_success(self):
        """
        No client is running: backup-now carries the tunnel itself, BackupPC
        backs the laptop up (its first backup, so a full one), the progress
        lines name the module, and it exits 0 on BackupPC's word.
        """
        config, documents = self.backup_now_laptop(("documents",))
        yield self.backuppc_up()
        code, out = yield self.backup_now(config)
        self.assertEqual(code, 0, out)
        for words in ("BackupPC took the request: ok: requested backup of laptop1 (doIncr)",
                      "laptop1: backing up module documents, ",
                      "BackupPC reports the backup succeeded"):
            self.assertIn(words, out)
        backups = yield self.last_backup("laptop1", "full")
        self.assertEqual(len(backups), 1, backups)
        yield self.assert_backup_equals("laptop1", 0, "documents",
                                        (yield deferToThread(snapshot, documents)))

    @inlineCallbacks
    def test_failure(self):
        """
        A share the laptop does not have: BackupPC's backup fails, its
        DumpPostUserCmd reports xferOK 0, and backup-now exits 1 saying so.
        """
        config, _ = self.backup_now_laptop(("documents", "nosuchmodule"))
        yield self.backuppc_up()
        code, out = yield self.backup_now(config)
        self.assertEqual(code, 1, out)
        self.assertIn("BackupPC took the request", out)
        self.assertIn("BackupPC reports the backup failed; see BackupPC's log for laptop1", out)
        status = yield self.job_done("laptop1")
        self.assertNotEqual(status["reason"], BACKUP_DONE, status)

    # Issue 14: backup-now passes on what BackupPC and the laptop's rsync say went wrong.

    @inlineCallbacks
    def test_ping_too_slow(self):
        """
        BackupPC takes the request, then BackupPC_dump finds the ping too
        slow (C{$Conf{PingMaxMsec}} = 0.001) and backs nothing up, so
        C{DumpPostUserCmd} never runs: backup-now learns BackupPC's reason
        from its status and exits 2 at once, not after --start-timeout (600 s).
        """
        config, _ = self.backup_now_laptop(("documents",))
        self.set_host_setting("laptop1", "PingMaxMsec", "0.001")
        yield self.backuppc_up()
        started = reactor.seconds()
        code, out = yield self.backup_now(config)
        self.assertEqual(code, 2, out)
        self.assertIn("BackupPC took the request: ok: requested backup of laptop1 (doIncr)", out)
        self.assertRegex(out, r"BackupPC did not start the backup: ping too slow on 127\.0\.0\.1 "
                              r"[\d.]+msec \(threshold is 0\.001msec\); see BackupPC's log for "
                              r"laptop1")
        self.assertLess(reactor.seconds() - started, JOB_TIMEOUT + TIMEOUT)
        self.assertEqual((yield self.bpc.backups("laptop1")), [])
        status = yield self.job_done("laptop1")
        self.assertEqual(status["reason"], NO_PING, status)

    @inlineCallbacks
    def test_unreadable_files_reported(self):
        """
        The laptop's module reads as nobody and holds a file of another user
        with mode 000: BackupPC reports success (its DumpPostUserCmd runs
        before it counts transfer errors), but the laptop's rsync could not
        read the file, and backup-now says so and exits 1.
        """
        config, documents = self.backup_now_laptop(
            ("documents",), options={"documents": {"uid": "nobody", "gid": "nogroup"}})
        # nobody must reach the module; the secret stays unreadable to it.
        for folder in (self.root, self.root / "laptop", documents):
            os.chmod(folder, 0o755)
        secret = documents / "secret.txt"
        secret.write_text("not for nobody\n")
        os.chown(secret, 12345, 12345)
        os.chmod(secret, 0)
        yield self.backuppc_up()
        code, out = yield self.backup_now(config)
        self.assertEqual(code, 1, out)
        self.assertIn("laptop1: backing up module documents, ", out)
        self.assertIn("BackupPC reports the backup succeeded with 1 file unreadable: "
                      "documents/secret.txt; the laptop's rsync could not read them, so the "
                      "backup is incomplete", out)
        self.assertEqual(self.logs.matching("rsync for module documents could not read"),
                         ["laptop1's rsync for module documents could not read 1 file(s) "
                          "(0 vanished)"])
