"""
`bpctunnel backup-now`: the request, progress and BackupPC's verdict.

The units run on a Clock; the end-to-end tests run the real command against
a server in this process (real TLS, real rsync), with a recording stand-in
for BackupPC_serverMesg and `bpctunnel backup-done` as BackupPC's
DumpPostUserCmd would run it.  tests/test_backuppc_integration.py runs it
with the real BackupPC.
"""

from __future__ import annotations

import io
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.server.backup_requests import BackupDesk
from bpctunnel.server.backup_requests import (
    MAX_COUNT,
    MAX_NAME_CHARS,
    MAX_NAMES,
    MAX_REPORTS,
    REPORT_GRACE,
    REPORT_POLL,
)
from bpctunnel.client.backup_now import (
    FAILED, NOT_STARTED, OK, TIMED_OUT, BackupNow, Outcome, ProgressDisplay, clock_time,
    files_line, human_bytes,
)
from bpctunnel.client.retry import TunnelService
from bpctunnel.backuppc.server_mesg import BackupReply, BackupRequest, BackupTrigger, HostStatus
from tests.helpers import TIMEOUT, run_cli, spawn, tcp_connect, temp_dir
from tests.test_backup_trigger import NO_PING_REPLY, stand_in, status_stand_in
from tests.test_end_to_end import TunnelTestCase
from tests.test_retry import memory_tunnels


class FormatTests(SynchronousTestCase):
    def test_human_bytes(self):
        self.assertEqual([human_bytes(n) for n in (0, 999, 1500, 2_500_000, 7 * 10**12)],
                         ["0 bytes", "999 bytes", "1.5 KB", "2.5 MB", "7.0 TB"])

    def test_clock_time(self):
        self.assertEqual([clock_time(s) for s in (0, 75, 3 * 3600 + 62.9)],
                         ["0:00:00", "0:01:15", "3:01:02"])


def progress(sent=0, modules=(), connections=None, tunnel=True):
    return {"type": "backup-progress", "host": "laptop1", "tunnel": tunnel,
            "connections": len(modules) if connections is None else connections,
            "modules": list(modules), "bytes_from_client": sent, "bytes_to_client": 0}


class ProgressDisplayTests(SynchronousTestCase):
    def test_plain_lines_when_not_a_terminal(self):
        """A line on each module change, else one every `every` seconds; no carriage returns."""
        clock, out = Clock(), io.StringIO()
        display = ProgressDisplay(out, clock, live=False, every=10)
        display.update(progress())
        clock.advance(1)
        display.update(progress(1_000_000, ["documents"]))
        clock.advance(1)
        display.update(progress(3_000_000, ["documents"]))  # same module, too soon
        clock.advance(10)
        display.update(progress(13_000_000, ["documents"]))
        clock.advance(1)
        display.update(progress(14_000_000, ["photos"]))
        self.assertEqual(out.getvalue().splitlines(), [
            "laptop1: waiting for BackupPC to start the backup, 0:00:00",
            "laptop1: backing up module documents, 1.0 MB sent, 1.0 MB/s, 0:00:01",
            "laptop1: backing up module documents, 13.0 MB sent, 1.0 MB/s, 0:00:12",
            "laptop1: backing up module photos, 14.0 MB sent, 1.0 MB/s, 0:00:13",
        ])

    def test_live_line_on_a_terminal(self):
        """On a terminal one line is rewritten in place; a message ends it first."""
        clock, out = Clock(), io.StringIO()
        display = ProgressDisplay(out, clock, live=True)
        display.update(progress(5000, ["documents"]))
        clock.advance(2)
        display.update(progress(7000, ["documents"]))
        display.say("done")
        self.assertEqual(out.getvalue(),
                         "\rlaptop1: backing up module documents, 5.0 KB sent, 0 bytes/s, 0:00:00"
                         # one space blanks what the longer line left behind
                         "\rlaptop1: backing up module documents, 7.0 KB sent, 1.0 KB/s, 0:00:02 "
                         "\ndone\n")

    def test_tunnel_gone(self):
        line = ProgressDisplay.progress_line(progress(tunnel=False), 0, 0, 5)
        self.assertEqual(line, "laptop1: waiting for the tunnel to come back, 0:00:05")


class FakeMux:
    def __init__(self):
        self.bytes_in = self.bytes_out = 0
        self.channels = {}
        self.lost = False


class FakeTunnel:
    def __init__(self, host="laptop1"):
        self.host = host
        self.mux = FakeMux()
        self.controls = []
        self.reported = []

    def send_control(self, body):
        self.controls.append(body)

    def backup_done(self, ok, detail, body=None):
        self.reported.append((ok, detail))
        if body is not None:
            self.controls.append(body)


class FakeTrigger:
    def __init__(self, reply=BackupReply(True, "ok")):
        self.reply = reply
        self.asked = []
        #: One Deferred per status question, for the test to answer.
        self.status_asked = []

    def request_backup(self, host, backup_type=None):
        self.asked.append((host, backup_type))
        return succeed(self.reply)

    def host_status(self, host):
        d = Deferred()
        self.status_asked.append((host, d))
        return d


class Registry(dict):
    def get(self, host):
        return super().get(host)


class BackupDeskTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.tunnel = FakeTunnel()
        self.tunnels = Registry(laptop1=self.tunnel)
        self.trigger = FakeTrigger()
        self.desk = BackupDesk(self.clock, self.tunnels, self.trigger, interval=1.0)

    def test_request_progress_and_result(self):
        """Progress counts only bytes since the request; the result ends the reports."""
        watcher = FakeTunnel()
        self.tunnel.mux.bytes_in = 500  # carried before the request: not counted
        self.desk.request(watcher, full=True)
        self.assertEqual(self.trigger.asked, [("laptop1", "1")])
        self.assertEqual(watcher.controls[0], {"type": "backup-requested", "ok": True,
                                               "message": "ok"})
        self.assertEqual(watcher.controls[1]["bytes_from_client"], 0)
        channel = type("Channel", (), {})()
        channel.local = type("Local", (), {"module": "documents"})()
        self.tunnel.mux.channels[2] = channel
        self.tunnel.mux.bytes_in += 4096
        self.clock.advance(1)
        self.assertEqual(watcher.controls[-1], progress(4096, ["documents"]))
        self.assertEqual(self.desk.backup_done("laptop1", True, "xferOK=1"), 2)
        # The laptop's rsync is still exiting: the verdict waits for its channel.
        self.assertEqual(watcher.controls[-1]["type"], "backup-progress")
        del self.tunnel.mux.channels[2]
        self.clock.advance(REPORT_POLL)
        self.assertEqual(watcher.controls[-1], {
            "type": "backup-done", "host": "laptop1", "ok": True, "detail": "xferOK=1",
            "modules": [], "bytes_from_client": 4096, "bytes_to_client": 0})
        self.assertEqual(self.tunnel.reported, [(True, "xferOK=1")])
        count = len(watcher.controls)
        self.clock.advance(5)
        self.assertEqual(len(watcher.controls), count)

    def test_verdict_waits_for_the_last_transfer_report(self):
        """
        A transfer report that comes after BackupPC's verdict, before its
        channel closes, is in the verdict; a channel that never closes
        holds the verdict back REPORT_GRACE seconds at most.
        """
        watcher = FakeTunnel()
        self.desk.request(watcher)
        channel = type("Channel", (), {"local": None})()
        self.tunnel.mux.channels[2] = channel
        self.desk.backup_done("laptop1", True, "")
        self.clock.advance(1)
        self.desk.transfer_report("laptop1", {"type": "transfer-report", "module": "documents",
                                              "unreadable": ["secret.txt"],
                                              "unreadable_count": 1})
        del self.tunnel.mux.channels[2]
        self.clock.advance(REPORT_POLL)
        done = watcher.controls[-1]
        self.assertEqual((done["type"], done["unreadable"], done["unreadable_count"]),
                         ("backup-done", ["documents/secret.txt"], 1))
        stuck = FakeTunnel()
        self.desk.request(stuck)
        self.tunnel.mux.channels[3] = channel
        self.desk.backup_done("laptop1", False, "")
        self.clock.advance(REPORT_GRACE - 1)
        self.assertNotEqual(stuck.controls[-1]["type"], "backup-done")
        self.clock.advance(1)
        self.assertEqual(stuck.controls[-1]["type"], "backup-done")

    def test_module_reported_at_once_and_summed_up(self):
        """A module BackupPC asks for is reported at once; the result lists them all."""
        self.desk.request(self.tunnel)
        self.desk.module_started("laptop1", "documents")
        self.assertEqual(self.tunnel.controls[-1]["type"], "backup-progress")
        count = len(self.tunnel.controls)
        self.desk.module_started("laptop1", "photos")
        self.desk.module_started("laptop1", "documents")
        self.desk.module_started("laptop2", "documents")  # no request: nothing
        self.assertEqual(len(self.tunnel.controls), count + 2)
        watcher = FakeTunnel()
        self.desk.request(watcher)
        self.tunnel.mux.bytes_in = 1234
        self.desk.backup_done("laptop1", False, "")
        self.assertEqual(watcher.controls[-1], {
            "type": "backup-done", "host": "laptop1", "ok": False, "detail": "",
            "modules": ["documents", "photos"], "bytes_from_client": 1234,
            "bytes_to_client": 0})

    def test_reconnected_tunnel_keeps_the_count(self):
        """Bytes of a tunnel that was replaced mid-backup stay in the total."""
        self.desk.request(self.tunnel)
        self.tunnel.mux.bytes_in = 1000
        new = FakeTunnel()
        new.mux.bytes_in = 300
        self.tunnels["laptop1"] = new
        self.clock.advance(1)
        self.assertEqual(self.tunnel.controls[-1]["bytes_from_client"], 1300)

    def test_declined_request(self):
        """BackupPC's refusal goes back in its words, and nothing more is sent."""
        self.trigger.reply = BackupReply(False, "error: unknown host laptop1")
        self.desk.request(self.tunnel)
        self.assertEqual(self.trigger.asked, [("laptop1", "0")])
        self.assertEqual(self.tunnel.controls, [{"type": "backup-requested", "ok": False,
                                                 "message": "error: unknown host laptop1"}])
        self.clock.advance(5)
        self.assertEqual(len(self.tunnel.controls), 1)

    def test_no_trigger(self):
        desk = BackupDesk(self.clock, self.tunnels, None)
        desk.request(self.tunnel)
        self.assertFalse(self.tunnel.controls[0]["ok"])
        self.assertIn("--no-backup-now", self.tunnel.controls[0]["message"])

    def test_forget_stops_reports(self):
        self.desk.request(self.tunnel)
        count = len(self.tunnel.controls)
        self.desk.forget(self.tunnel)
        self.clock.advance(5)
        self.assertEqual(len(self.tunnel.controls), count)
        self.assertEqual(self.desk.backup_done("laptop1", False), 1)  # the tunnel itself


#: The desk's clock at the request, in BackupPC's epoch seconds.
REQUESTED_AT = 1764520000.5


def no_ping(start_time=REQUESTED_AT, **changes):
    return HostStatus(**{"state": "Status_idle", "reason": "Reason_no_ping",
                         "error": "ping too slow on 127.0.0.1 35.11msec (threshold is 20msec)",
                         "start_time": int(start_time), **changes})


class BackupDeskStatusTests(SynchronousTestCase):
    """Until BackupPC starts the backup, the desk watches the host's status."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(REQUESTED_AT)
        self.tunnel = FakeTunnel()
        self.trigger = FakeTrigger()
        self.desk = BackupDesk(self.clock, Registry(laptop1=self.tunnel), self.trigger,
                               interval=1.0, status_interval=3.0)
        self.watcher = FakeTunnel()
        self.desk.request(self.watcher)

    def answer(self, status):
        (host, d), = self.trigger.status_asked
        self.trigger.status_asked = []
        self.assertEqual(host, "laptop1")
        d.callback(status)

    def test_declined_backup_reported_in_backuppc_words(self):
        """
        A status question every 3 seconds, never two at once; once BackupPC
        ran the job and found the ping too slow, backup-now hears its words,
        and the desk stops asking and reporting.
        """
        self.clock.advance(2.9)
        self.assertEqual(self.trigger.status_asked, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.trigger.status_asked), 1)
        self.clock.advance(6)  # BackupPC is slow to answer: no second question
        self.assertEqual(len(self.trigger.status_asked), 1)
        self.answer(no_ping(queued=True))  # still queued: not an answer yet
        self.clock.advance(3)
        self.answer(no_ping(start_time=REQUESTED_AT - 60))  # an earlier request's outcome
        self.assertNotEqual(self.watcher.controls[-1]["type"], "backup-done")
        self.clock.advance(3)
        self.answer(no_ping())
        self.assertEqual(self.watcher.controls[-1], {
            "type": "backup-done", "host": "laptop1", "ok": False, "started": False,
            "reason": "no_ping", "detail": "BackupPC did not start the backup: ping too slow "
                                           "on 127.0.0.1 35.11msec (threshold is 20msec)",
            "modules": [], "bytes_from_client": 0, "bytes_to_client": 0})
        count = len(self.watcher.controls)
        self.clock.advance(30)
        self.assertEqual((len(self.watcher.controls), self.trigger.status_asked), (count, []))
        self.assertEqual(self.tunnel.reported, [])  # no backup happened: nothing to record
        self.assertEqual(self.desk.backup_done("laptop1", False), 1)  # the request is over

    def test_nothing_to_do(self):
        self.clock.advance(3)
        self.answer(no_ping(reason="Reason_nothing_to_do", error=""))
        body = self.watcher.controls[-1]
        self.assertEqual((body["type"], body["started"], body["reason"]),
                         ("backup-done", False, "nothing_to_do"))
        self.assertIn("nothing to do", body["detail"])

    def test_failure_before_the_transfer(self):
        self.clock.advance(3)
        self.answer(no_ping(reason="Reason_backup_failed", start_time=0,
                            error_time=int(REQUESTED_AT) + 2,
                            error="Can't read PC's config file"))
        body = self.watcher.controls[-1]
        self.assertEqual((body["reason"], body["detail"]), (
            "failed", "BackupPC's backup failed before it began: Can't read PC's config file"))

    def test_started_backup_stops_the_questions(self):
        """Once BackupPC asks for a module, DumpPostUserCmd reports: no more status."""
        self.clock.advance(3)
        self.desk.module_started("laptop1", "documents")
        self.answer(no_ping())  # an answer in flight is then ignored
        self.assertNotEqual(self.watcher.controls[-1]["type"], "backup-done")
        self.clock.advance(30)
        self.assertEqual(self.trigger.status_asked, [])

    def test_laptop_leaving_stops_the_questions(self):
        self.desk.forget(self.watcher)
        self.clock.advance(30)
        self.assertEqual(self.trigger.status_asked, [])

    def test_no_status_keeps_waiting(self):
        """BackupPC gives no status (logged by the trigger): ask again later."""
        self.clock.advance(3)
        self.answer(None)
        self.clock.advance(3)
        self.assertEqual(len(self.trigger.status_asked), 1)


class TransferReportTests(SynchronousTestCase):
    """The laptop's transfer reports reach backup-done, within bounds."""

    def setUp(self):
        self.clock = Clock()
        self.tunnel = FakeTunnel()
        self.desk = BackupDesk(self.clock, Registry(laptop1=self.tunnel), FakeTrigger())
        self.desk.request(self.tunnel)

    def report(self, module="documents", unreadable=(), count=None, **extra):
        body = {"type": "transfer-report", "module": module, "unreadable": list(unreadable),
                "unreadable_count": len(unreadable) if count is None else count,
                "vanished": [], "vanished_count": 0, **extra}
        self.desk.transfer_report("laptop1", body)

    def test_reports_summed_in_backup_done(self):
        self.report("documents", ["secret.txt", "locked/"])
        self.report("photos", ["a.jpg"], count=7)
        self.report("music")  # nothing to report
        self.report("mail", vanished=["tmp/lock"], vanished_count=1)
        watcher = FakeTunnel()
        self.desk.request(watcher)
        self.desk.backup_done("laptop1", True, "")
        body = watcher.controls[-1]
        self.assertEqual(
            (body["unreadable"], body["unreadable_count"], body["vanished"],
             body["vanished_count"]),
            (["documents/secret.txt", "documents/locked/", "photos/a.jpg"], 9,
             ["mail/tmp/lock"], 1))

    def test_tunnel_that_asked_gets_the_reports(self):
        """backup-now carrying the tunnel itself hears the reports too."""
        self.report("documents", ["secret.txt"])
        self.assertEqual(self.desk.backup_done("laptop1", True, ""), 1)
        self.assertEqual(self.tunnel.reported, [(True, "")])
        body = self.tunnel.controls[-1]
        self.assertEqual((body["type"], body["unreadable"], body["unreadable_count"]),
                         ("backup-done", ["documents/secret.txt"], 1))

    def test_clean_backup_has_no_lists(self):
        watcher = FakeTunnel()
        self.desk.request(watcher)
        self.desk.backup_done("laptop1", True, "")
        self.assertNotIn("unreadable", watcher.controls[-1])

    def verdict_after_many_reports(self) -> dict:
        """MAX_REPORTS + 10 more reports, then BackupPC's verdict as a watcher gets it."""
        for _ in range(MAX_REPORTS + 10):
            self.report("y", ["z"], count=1)
        watcher = FakeTunnel()
        self.desk.request(watcher)
        self.desk.backup_done("laptop1", True, "")
        return watcher.controls[-1]

    def test_bounds(self):
        """Names cut, lists capped, reports per backup capped, odd values refused."""
        self.report("m" * 1000, ["n" * 1000] * 500, count=10**15)
        self.report("x", [1, None, "ok"], count=True)
        body = self.verdict_after_many_reports()
        self.assertEqual(len(body["unreadable"]), MAX_NAMES)
        self.assertEqual(len(body["unreadable"][0]), 2 * MAX_NAME_CHARS + 1)
        # The total stays at the cap, whatever a client claims.
        self.assertEqual(body["unreadable_count"], MAX_COUNT)

    def test_report_count(self):
        """A count that is not a number counts the names; reports beyond MAX_REPORTS are dropped."""
        self.report("x", [1, None, "ok"], count=True)
        body = self.verdict_after_many_reports()
        self.assertEqual(body["unreadable_count"], 1 + MAX_REPORTS - 1)

    def test_no_pending_backup(self):
        """A report outside a requested backup is only logged."""
        self.desk.backup_done("laptop1", True, "")
        self.report("documents", ["secret.txt"])
        self.assertEqual(self.desk._pending, {})


class IdleService:
    """A service whose tunnel never opens: the outcome tests feed control messages."""

    running = False

    def startService(self):
        self.running = True

    def stopService(self):
        self.running = False
        return succeed(None)

    def whenConnected(self, failAfterFailures=None):
        return Deferred()


class BackupNowOutcomeTests(SynchronousTestCase):
    """How backup-now ends on each backup-done (no sockets: a service that never connects)."""

    def outcome(self, body):
        clock, out = Clock(), io.StringIO()
        config = type("Config", (), {"server": "wss://backup.example.org/tunnel",
                                     "host": "laptop1"})()
        run = BackupNow(clock, config, IdleService(), ProgressDisplay(out, clock, live=False))
        result = run.run()
        run._control({"type": "backup-requested", "ok": True, "message": "ok"})
        run._control(body)
        return self.successResultOf(result), out.getvalue()

    def test_declined(self):
        """BackupPC ran no backup (no ping): exit 2 with BackupPC's reason."""
        outcome, _ = self.outcome({
            "type": "backup-done", "ok": False, "started": False, "reason": "no_ping",
            "detail": "BackupPC did not start the backup: no ping response from 127.0.0.1"})
        self.assertEqual(outcome, Outcome(NOT_STARTED, (
            "BackupPC did not start the backup: no ping response from 127.0.0.1; "
            "see BackupPC's log for laptop1")))

    def test_failed_before_start(self):
        outcome, _ = self.outcome({"type": "backup-done", "ok": False, "started": False,
                                   "reason": "failed", "detail": "BackupPC's backup failed"})
        self.assertEqual(outcome.status, FAILED)

    def test_unreadable_files(self):
        """BackupPC says success, the laptop could not read files: exit 1, naming them."""
        outcome, _ = self.outcome({
            "type": "backup-done", "ok": True, "detail": "", "modules": ["documents"],
            "bytes_from_client": 10, "unreadable": ["documents/a", "documents/b",
                                                    "documents/c"], "unreadable_count": 3})
        self.assertEqual(outcome, Outcome(FAILED, (
            "BackupPC reports the backup succeeded with 3 files unreadable: documents/a, "
            "documents/b, documents/c; the laptop's rsync could not read them, so the backup "
            "is incomplete")))

    def test_vanished_files_only(self):
        """Files deleted during the backup are named, but the backup is complete: exit 0."""
        outcome, out = self.outcome({
            "type": "backup-done", "ok": True, "detail": "xferOK=1",
            "vanished": ["documents/tmp"], "vanished_count": 1})
        self.assertEqual(outcome, Outcome(OK, "BackupPC reports the backup succeeded: xferOK=1"))
        self.assertIn("laptop1: during the backup, 1 file vanished: documents/tmp\n", out)

    def test_files_line(self):
        self.assertEqual(files_line({"unreadable": ["a", "b"], "unreadable_count": 30},
                                    "unreadable"), "30 files unreadable: a, b and 28 more")
        self.assertEqual(files_line({"unreadable": ["a", 5], "unreadable_count": "x"},
                                    "unreadable"), "1 file unreadable: a")
        self.assertEqual(files_line({}, "vanished"), "")


class BackupNowConnectionTests(SynchronousTestCase):
    """
    backup-now's one attempt (ClientService.whenConnected(failAfterFailures=1)),
    with the real tunnel protocol on in-memory connections and a clock.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.factory, self.endpoint = memory_tunnels(self.clock, role="backup-now")
        self.service = TunnelService(self.endpoint, self.factory, self.clock)
        run = BackupNow(self.clock, self.factory.config, self.service,
                        ProgressDisplay(io.StringIO(), self.clock, live=False), timeout=60)
        self.result = Deferred()
        self.start = lambda: run.run().chainDeferred(self.result)

    def assertStopped(self):
        """The service is stopped on the next turn: no retry, no timer left."""
        self.clock.advance(0)
        self.assertFalse(self.service.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused(self):
        """The server refuses: exit 2 with its words and the advice, and no second attempt."""
        self.start()
        self.endpoint.refuse("unknown host for laptop1: not in BackupPC's hosts file")
        self.assertEqual(self.successResultOf(self.result), Outcome(NOT_STARTED, (
            "could not open the tunnel: unknown host for laptop1: not in BackupPC's hosts file; "
            "ask the BackupPC admin to add this host to BackupPC's hosts file")))
        self.assertStopped()
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_unreachable(self):
        self.endpoint.refusing = True
        self.start()
        outcome = self.successResultOf(self.result)
        self.assertEqual(outcome.status, NOT_STARTED)
        self.assertTrue(outcome.message.startswith(
            "cannot reach wss://backup.example.org:8443/tunnel: Connection was refused"),
            outcome.message)
        self.assertStopped()

    def test_asks_and_follows_until_the_result(self):
        """Once open it asks for the backup; the result closes the tunnel, then exit 0."""
        self.start()
        protocol = self.endpoint.accept()
        _, transport = self.endpoint.connections[-1]
        self.assertIn(b'"backup-request"', transport.value())
        transport.clear()
        self.factory.current._control({"type": "backup-done", "ok": True, "detail": "xferOK=1"})
        self.assertNoResult(self.result)
        self.assertTrue(transport.value().startswith(b"\x88"))  # the closing handshake
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(self.result),
                         Outcome(OK, "BackupPC reports the backup succeeded: xferOK=1"))
        self.assertStopped()
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_tunnel_lost(self):
        """The tunnel closes before the result: exit 1, and no reconnection."""
        self.start()
        protocol = self.endpoint.accept()
        protocol.connectionLost(Failure(ConnectionLost("gone")))
        outcome = self.successResultOf(self.result)
        self.assertEqual(outcome.status, FAILED)
        self.assertIn("the tunnel closed before BackupPC reported the result: ", outcome.message)
        self.assertStopped()
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_no_result_in_time(self):
        """The timeout during the handshake: exit 3; stopping aborts the connection."""
        self.start()
        self.clock.advance(60)
        self.assertEqual(self.successResultOf(self.result).status, TIMED_OUT)
        self.clock.advance(0)
        protocol, transport = self.endpoint.connections[-1]
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(self.service.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BackupNowTestCase(TunnelTestCase):
    """A server whose BackupPC_serverMesg is a recording stand-in."""

    mesg_exit = 0
    mesg_reply = "ok: requested backup of $2"

    def setUp(self):
        script, self.mesg_args = stand_in(temp_dir(self), self.mesg_exit, self.mesg_reply)
        self.server_settings = {"backup_trigger": BackupTrigger(
            reactor, BackupRequest((str(script),), "bpctunnel", "-1"))}
        return super().setUp()

    def laptop(self, host="laptop1", register=True):
        """Register C{host}; its client config, without starting the client."""
        files = self.sandbox.issue_client(host)
        port = self.port = self.free_port()
        if register:
            self.sandbox.register(host, port, files.fingerprint)
        return self.sandbox.write_client_config(files, self.server.url, {"documents": self.root},
                                                self.rsync)

    @staticmethod
    def free_port():
        from bpctunnel.testing.sandbox import free_port

        return free_port()

    def backup_now(self, config, *args):
        return spawn(self, [sys.executable, "-m", "bpctunnel", "backup-now", "--config",
                            str(config), *args])

    def backup_done(self, status):
        return run_cli(self, "backup-done", "laptop1", status, "--api", self.server.api_url,
                       "--detail", f"xferOK={status}")

    @inlineCallbacks
    def backuppc_reads(self, module):
        """What BackupPC does first: connect to the host's port and name a module."""
        connection = yield tcp_connect(self.port)
        self.addCleanup(connection.transport.loseConnection)
        connection.transport.write(f"@RSYNCD: 31.0\n{module}\n".encode())
        return connection


class BackupNowTests(BackupNowTestCase):
    """Acceptance 3, with the stand-in: exit 0 after success, non-zero after failure."""

    @inlineCallbacks
    def test_success_with_progress(self):
        """No client running: backup-now carries the tunnel, shows progress, exits 0."""
        process = self.backup_now(self.laptop(), "--full")
        yield process.wait_for("BackupPC took the request: ok: requested backup of laptop1")
        self.assertEqual(self.mesg_args.read_text().splitlines(),
                         ["backup", "laptop1", "laptop1", "bpctunnel", "1"])
        yield process.wait_for("waiting for BackupPC to start the backup")
        connection = yield self.backuppc_reads("documents")
        yield process.wait_for("laptop1: backing up module documents, ")
        connection.transport.loseConnection()
        code, out = yield self.backup_done("1")
        self.assertIn("backup of laptop1 succeeded", out)
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 0, process.text)
        self.assertIn("BackupPC reports the backup succeeded: xferOK=1", process.text)
        self.assertNotIn("\r", process.text)  # not a terminal: plain lines
        yield self.logs.wait_for("laptop1 asks for a full backup now")

    @inlineCallbacks
    def test_failure(self):
        """BackupPC reports failure: exit 1 with the reason."""
        process = self.backup_now(self.laptop())
        yield process.wait_for("BackupPC took the request")
        yield self.backup_done("0")
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 1, process.text)
        self.assertIn("BackupPC reports the backup failed: xferOK=0; see BackupPC's log for "
                      "laptop1", process.text)
        self.assertEqual(self.mesg_args.read_text().splitlines()[-1], "0")  # incremental

    @inlineCallbacks
    def test_follows_the_running_client(self):
        """
        With the client service connected, backup-now follows its tunnel: the
        backup runs through the service's tunnel, which stays up.
        """
        client, port, files = yield self.connected_client("laptop1", {"documents": self.root})
        self.port = port
        tunnel, protocol = self.server.factory.tunnels.get("laptop1"), client.factory.current
        process = self.backup_now(files.cert.parent / "laptop1.conf")
        yield process.wait_for("BackupPC took the request")
        yield self.logs.wait_for("backup-now of laptop1 from 127.0.0.1")
        connection = yield self.backuppc_reads("documents")
        yield process.wait_for("laptop1: backing up module documents, ")
        connection.transport.loseConnection()
        yield self.backup_done("1")
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 0, process.text)
        self.assertIs(self.server.factory.tunnels.get("laptop1"), tunnel)
        self.assertIs(client.factory.current, protocol)
        self.assertFalse(tunnel.mux.lost)
        self.assertEqual(self.server.factory.watchers, set())
        # The service's own client heard the result too.
        yield self.logs.wait_for("BackupPC reports the backup of laptop1 succeeded")

    @inlineCallbacks
    def test_refused(self):
        """A host the server does not know: exit 2 with the refusal and advice."""
        process = self.backup_now(self.laptop(register=False))
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 2, process.text)
        self.assertIn("could not open the tunnel: unknown host", process.text)
        self.assertIn("ask the BackupPC admin to add this host", process.text)

    @inlineCallbacks
    def test_not_started_in_time(self):
        """BackupPC took the request but never connects: exit 3, saying so."""
        down = self.server_down("laptop1")
        process = self.backup_now(self.laptop(), "--start-timeout", "1")
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 3, process.text)
        self.assertIn("BackupPC did not start the backup within 1 second", process.text)
        yield down  # it closed the tunnel it carried

    @inlineCallbacks
    def test_unreachable_server(self):
        config = self.laptop()
        text = config.read_text().replace(self.server.url, f"wss://127.0.0.1:{self.free_port()}"
                                                           f"/tunnel")
        config.write_text(text)
        process = self.backup_now(config)
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 2, process.text)
        self.assertIn("cannot reach wss://127.0.0.1:", process.text)


class DeclinedTests(BackupNowTestCase):
    mesg_exit = 1
    mesg_reply = "error: host $2 is disabled"

    @inlineCallbacks
    def test_declined(self):
        """BackupPC does not take the request: exit 2 with its words."""
        process = self.backup_now(self.laptop())
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 2, process.text)
        self.assertIn("BackupPC did not take the request: error: host laptop1 is disabled",
                      process.text)


class StatusTests(BackupNowTestCase):
    """backup-now against a stand-in whose status says BackupPC found the ping too slow."""

    def setUp(self):
        d = super().setUp()
        script, self.mesg_args = status_stand_in(temp_dir(self), "Got reply: ")
        self.status_reply = script.parent / "status-reply"
        trigger = BackupTrigger(reactor, BackupRequest((str(script),), "bpctunnel", "-1"))
        desk = self.server.factory.backup_desk
        desk.trigger, desk.status_interval = trigger, 0.2
        return d

    @inlineCallbacks
    def test_declined_with_backuppc_reason(self):
        """
        BackupPC took the request, then skipped the host: backup-now exits 2
        promptly with BackupPC's reason, not after --start-timeout.
        """
        process = self.backup_now(self.laptop())
        yield process.wait_for("BackupPC took the request")
        yield self.logs.wait_for("BackupPC gave no status for laptop1")  # the poll runs
        now = int(reactor.seconds())
        self.status_reply.write_text(NO_PING_REPLY.replace("1764520001", str(now)))
        self.assertEqual((yield process.ended.addTimeout(TIMEOUT, reactor)), 2, process.text)
        self.assertIn("BackupPC did not start the backup: ping too slow on 127.0.0.1 35.11msec "
                      "(threshold is 20msec); see BackupPC's log for laptop1", process.text)
        self.assertIn("status\nhost(laptop1)", self.mesg_args.read_text())
