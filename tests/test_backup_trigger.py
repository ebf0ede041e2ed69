"""
Backup on connect (BackupPC_serverMesg, here a recording stand-in) and
`bpctunnel backup-done` reaching the laptop.
"""

from __future__ import annotations

import json
import os
from unittest import mock

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from bpctunnel.backuppc import server_mesg
from bpctunnel.backuppc.server_mesg import (
    BackupReply, BackupRequest, BackupTrigger, HostStatus, parse_status_reply,
)
from tests.helpers import TIMEOUT, run_cli, temp_dir
from tests.test_end_to_end import TunnelTestCase


def stand_in(folder, exit_code=0, reply="ok: requested backup of $2 (auto)"):
    """A BackupPC_serverMesg that records its arguments and answers like the real one."""
    script = folder / "BackupPC_serverMesg"
    args = folder / "args"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {args}\nprintf '%s' \"Got reply: {reply}\"\n"
                      f"exit {exit_code}\n")
    os.chmod(script, 0o755)
    return script, args


class BackupRequestTests(TunnelTestCase):
    """Acceptance 2 (stand-in): the right arguments, at connect time."""

    def test_argv(self):
        request = BackupRequest.from_command_line("sudo -u backuppc /usr/bin/mesg", "admin", "0")
        self.assertEqual(request.argv("laptop1"), ["sudo", "-u", "backuppc", "/usr/bin/mesg",
                                                   "backup", "laptop1", "laptop1", "admin", "0"])
        self.assertRaises(ValueError, BackupRequest, ("x",), "u", "sometimes")

    @inlineCallbacks
    def test_backup_requested_on_connect(self):
        script, args = stand_in(temp_dir(self))
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)))
        self.server.factory.observers.append(trigger)
        yield self.connected_client("laptop1", {"m": self.root})
        line = yield self.logs.wait_for("asked BackupPC to back up laptop1")
        self.assertIn("ok: requested backup of laptop1 (auto)", line)
        self.assertEqual(args.read_text().splitlines(),
                         ["backup", "laptop1", "laptop1", "bpctunnel", "-1"])

    @inlineCallbacks
    def test_failed_request_logged(self):
        script, _ = stand_in(temp_dir(self), exit_code=1, reply="error: unknown host $2")
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)))
        reply = yield trigger.request_backup("laptop9")
        self.assertEqual(reply, BackupReply(False, "error: unknown host laptop9"))
        line = yield self.logs.wait_for("asking BackupPC to back up laptop9 failed (exit 1)")
        self.assertIn("error: unknown host laptop9", line)

    @inlineCallbacks
    def test_missing_command_logged(self):
        """A wrong path is an error in the log, not a crash."""
        trigger = BackupTrigger(reactor, BackupRequest(("/nonexistent/BackupPC_serverMesg",)))
        reply = yield trigger.request_backup("laptop1")
        self.assertFalse(reply.ok)
        self.assertIn("cannot run /nonexistent/BackupPC_serverMesg", reply.text)
        line = yield self.logs.wait_for("cannot ask BackupPC to back up laptop1")
        self.assertIn("/nonexistent/BackupPC_serverMesg", line)


class HungServerMesgTests(TunnelTestCase):
    """A BackupPC_serverMesg that never ends is killed, and the request fails saying so."""

    def hanging(self, ignore_term: bool):
        folder = temp_dir(self)
        script, pid = folder / "BackupPC_serverMesg", folder / "pid"
        trap = "trap '' TERM\n" if ignore_term else ""
        # $$: the shell that hangs.
        script.write_text(f"#!/bin/sh\n{trap}echo $$ > {pid}\nwhile :; do read x; done\n")
        os.chmod(script, 0o755)
        return script, pid

    @inlineCallbacks
    def test_backup_request_killed(self):
        script, pid = self.hanging(ignore_term=False)
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)), timeout=0.5)
        reply = yield trigger.request_backup("laptop1").addTimeout(TIMEOUT, reactor)
        self.assertEqual(reply, BackupReply(
            False, f"{script} did not end within 0.5 seconds and was killed"))
        yield self.logs.wait_for("asking BackupPC to back up laptop1 failed: ")
        self.assertFalse(os.path.exists(f"/proc/{pid.read_text().strip()}/cmdline"))

    @inlineCallbacks
    def test_given_up_when_a_child_holds_its_output(self):
        """A command killed whose own child (deaf to TERM) keeps its pipes still ends for us."""
        folder = temp_dir(self)
        script, child = folder / "BackupPC_serverMesg", folder / "child"
        script.write_text(f"#!/bin/sh\n(trap '' TERM; echo $(sh -c 'echo $PPID') > {child}; "
                          f"exec sleep 1000) &\nwait\n")
        os.chmod(script, 0o755)
        self.patch(server_mesg, "KILL_AFTER", 0.2)
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)), timeout=0.2)
        reply = yield trigger.request_backup("laptop1").addTimeout(TIMEOUT, reactor)
        pid = int(child.read_text())
        self.addCleanup(os.kill, pid, 9)
        self.assertEqual(reply, BackupReply(
            False, f"{script} did not end within 0.2 seconds and was killed"))
        # It is still there, holding the pipes: we did not wait for it.
        self.assertTrue(os.path.exists(f"/proc/{pid}/cmdline"))

    @inlineCallbacks
    def test_on_connect_once_per_host_at_a_time(self):
        """A laptop that reconnects while its request hangs does not start another."""
        script, pid = self.hanging(ignore_term=False)
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)), timeout=0.5)
        laptop = mock.Mock(host="laptop1")
        for _ in range(5):
            trigger("open", laptop)
        trigger("open", mock.Mock(host="laptop2"))
        self.assertEqual(sorted(trigger._on_connect), ["laptop1", "laptop2"])
        yield self.logs.wait_for("asking BackupPC to back up laptop1 failed: ")
        yield self.logs.wait_for("asking BackupPC to back up laptop2 failed: ")
        self.assertEqual(len([line for line in self.logs.lines
                              if "asking BackupPC to back up laptop1" in line]), 1)
        # Once the request has ended (on the next turn), the host may ask again.
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(trigger._on_connect, set())

    @inlineCallbacks
    def test_status_killed_when_it_ignores_term(self):
        script, pid = self.hanging(ignore_term=True)
        self.patch(server_mesg, "KILL_AFTER", 0.2)
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)), timeout=0.2)
        status = yield trigger.host_status("laptop1").addTimeout(TIMEOUT, reactor)
        self.assertIsNone(status)
        line = yield self.logs.wait_for("BackupPC gave no status for laptop1: ")
        self.assertIn("did not end within 0.2 seconds and was killed", line)
        self.assertFalse(os.path.exists(f"/proc/{pid.read_text().strip()}/cmdline"))


class BackupDoneTests(TunnelTestCase):
    """`bpctunnel backup-done HOST STATUS` reaches the laptop and the API."""

    @inlineCallbacks
    def test_success_and_failure_reach_client(self):
        client, _, _ = yield self.connected_client("laptop1", {"m": self.root})
        reported = []
        got = Deferred()

        def observer(event, protocol, detail):
            if event == "backup-done":
                reported.append(detail)
                if len(reported) == 2:
                    got.callback(None)

        client.factory.observers.append(observer)
        for status in ("1", "0"):
            code, out = yield run_cli(self, "backup-done", "laptop1", status, "--api",
                                      self.server.api_url, "--detail", f"xferOK={status}")
            self.assertEqual(code, 0, out)
        yield got.addTimeout(TIMEOUT, reactor)
        self.assertEqual(reported, [{"ok": True, "detail": "xferOK=1"},
                                    {"ok": False, "detail": "xferOK=0"}])
        yield self.logs.wait_for("BackupPC reports the backup of laptop1 failed: xferOK=0")
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        response = yield treq.get(self.server.api_url + "/api/v1/tunnels/laptop1", pool=pool)
        info = json.loads((yield response.content()))
        self.assertEqual((info["last_backup"]["ok"], info["last_backup"]["detail"]),
                         (False, "xferOK=0"))

    @inlineCallbacks
    def test_no_tunnel(self):
        code, out = yield run_cli(self, "backup-done", "laptop1", "1", "--api", self.server.api_url)
        self.assertEqual(code, 0, out)
        self.assertIn("no tunnel for laptop1 is up to pass it on", out)
        code, out = yield run_cli(self, "backup-done", "laptop1", "yes")
        self.assertEqual(code, 2)
        self.assertIn("STATUS must be 1 (success) or 0 (failure)", out)


#: What BackupPC 4.4's daemon answers `status host(laptop1)` after BackupPC_dump
#: found the ping too slow (Data::Dumper, Indent 0; key order varies).
NO_PING_REPLY = (
    "Got reply: %StatusHost = ('userReq' => 1,'aliveCnt' => 0,'activeJob' => 0,"
    "'state' => 'Status_idle','deadCnt' => 1,'endTime' => '','type' => 'full',"
    "'startTime' => 1764520001,'lastGoodBackupTime' => 1764510000,'BgQueueOn' => undef,"
    "'needLink' => 0,'error' => 'ping too slow on 127.0.0.1 35.11msec (threshold is 20msec)',"
    "'UserQueueOn' => undef,'Job' => undef,'CmdQueueOn' => undef,'reason' => 'Reason_no_ping');")
#: ... while its job runs (Job is the job's record, holding a glob).
RUNNING_REPLY = (
    "Got reply: %StatusHost = ('Job' => {'fh' => *::FH,'startTime' => 1764520100,"
    "'cmd' => '/usr/share/backuppc/bin/BackupPC_dump -i laptop1','pid' => 123,"
    "'userReq' => 1},'state' => 'Status_backup_in_progress','reason' => '',"
    "'startTime' => 1764520101,'UserQueueOn' => 0,'error' => 'it\\'s \\\\ quoted');")


class StatusReplyTests(SynchronousTestCase):
    """parse_status_reply reads BackupPC_serverMesg's %StatusHost dump."""

    def test_no_ping(self):
        status = parse_status_reply(NO_PING_REPLY + "\n")
        self.assertEqual(status, HostStatus(
            state="Status_idle", reason="Reason_no_ping",
            error="ping too slow on 127.0.0.1 35.11msec (threshold is 20msec)",
            start_time=1764520001.0, queued=False, running=False))
        self.assertTrue(status.ended_without_backup(1764520001.9))
        self.assertFalse(status.ended_without_backup(1764520002.0))  # an older outcome

    def test_running_job(self):
        status = parse_status_reply(RUNNING_REPLY)
        self.assertEqual((status.state, status.running, status.queued, status.error),
                         ("Status_backup_in_progress", True, False, "it's \\ quoted"))
        self.assertFalse(status.ended_without_backup(0))

    def test_queued_is_busy(self):
        status = parse_status_reply(NO_PING_REPLY.replace("'UserQueueOn' => undef",
                                                          "'UserQueueOn' => 1"))
        self.assertTrue(status.queued)
        self.assertFalse(status.ended_without_backup(0))

    def test_nothing_to_do_and_early_failure(self):
        nothing = parse_status_reply(NO_PING_REPLY.replace("Reason_no_ping",
                                                           "Reason_nothing_to_do"))
        self.assertTrue(nothing.ended_without_backup(1764520000))
        failed = parse_status_reply(
            "Got reply: %StatusHost = ('state' => 'Status_idle','reason' => "
            "'Reason_backup_failed','error' => 'Can\\'t read PC\\'s config file',"
            "'errorTime' => 1764520005,'startTime' => 1764500000);")
        self.assertEqual(failed.error, "Can't read PC's config file")
        self.assertTrue(failed.ended_without_backup(1764520004))
        done = parse_status_reply(NO_PING_REPLY.replace("Reason_no_ping", "Reason_backup_done"))
        self.assertFalse(done.ended_without_backup(0))

    def test_no_status(self):
        """An unknown host gets an empty reply; other output is no status either."""
        for text in ["Got reply: ", "", "Got reply: ok", "Got reply: %StatusHost = ('a' => '",
                     "%Status = ('laptop1' => {})"]:
            self.assertIsNone(parse_status_reply(text), text)

    def test_status_argv(self):
        request = BackupRequest.from_command_line("sudo -u backuppc /usr/bin/mesg", "u", "0")
        self.assertEqual(request.status_argv("laptop1"),
                         ["sudo", "-u", "backuppc", "/usr/bin/mesg", "status", "host(laptop1)"])
        self.assertEqual(request.status_argv("a b(c)")[-1], "host(a%20b%28c%29)")


def status_stand_in(folder, status_reply):
    """A BackupPC_serverMesg that answers `backup` as the real one and `status` with a dump."""
    script = folder / "BackupPC_serverMesg"
    args = folder / "args"
    reply_file = folder / "status-reply"
    reply_file.write_text(status_reply)
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {args}\n"
                      f"if [ \"$1\" = status ]; then cat {reply_file}; "
                      f"else printf 'Got reply: ok: requested backup of %s' \"$2\"; fi\n")
    os.chmod(script, 0o755)
    return script, args


class HostStatusTests(TunnelTestCase):
    @inlineCallbacks
    def test_host_status_runs_server_mesg(self):
        """host_status runs `BackupPC_serverMesg status host(HOST)` and parses its reply."""
        script, args = status_stand_in(temp_dir(self), NO_PING_REPLY + "\n")
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)))
        status = yield trigger.host_status("laptop1")
        self.assertEqual(args.read_text().splitlines(), ["status", "host(laptop1)"])
        self.assertEqual((status.reason, status.error), (
            "Reason_no_ping", "ping too slow on 127.0.0.1 35.11msec (threshold is 20msec)"))

    @inlineCallbacks
    def test_no_status_logged(self):
        script, _ = status_stand_in(temp_dir(self), "Got reply: ")
        trigger = BackupTrigger(reactor, BackupRequest((str(script),)))
        self.assertIsNone((yield trigger.host_status("laptop9")))
        yield self.logs.wait_for("BackupPC gave no status for laptop9 (exit 0)")
        missing = BackupTrigger(reactor, BackupRequest(("/nonexistent/BackupPC_serverMesg",)))
        self.assertIsNone((yield missing.host_status("laptop1")))
        yield self.logs.wait_for("cannot ask BackupPC for the status of laptop1")
