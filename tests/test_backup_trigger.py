"""
Backup on connect (BackupPC_serverMesg, here a recording stand-in) and
`bpctunnel backup-done` reaching the laptop.
"""

from __future__ import annotations

import json
import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.client import HTTPConnectionPool

from bpctunnel.backup_trigger import BackupReply, BackupRequest, BackupTrigger
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
