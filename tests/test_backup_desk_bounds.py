"""
The backup desk asks BackupPC once per host at a time (issue 16): a burst of
backup-request messages, from one connection or many, runs one
BackupPC_serverMesg, every connection that asked gets the one answer once,
and at most MAX_WATCHERS connections follow a host's request.  On a Clock,
with a trigger whose answers the tests give by hand.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.backuppc.server_mesg import BackupReply
from bpctunnel.server.backup_requests import MAX_WATCHERS, BackupDesk
from tests.test_backup_now import FakeTunnel, Registry


class HandTrigger:
    """A BackupTrigger whose answers the test gives; counts calls in flight."""

    def __init__(self):
        self.calls: list[tuple[str, str, Deferred]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.status_asked = []

    def request_backup(self, host, backup_type=None):
        d = Deferred()
        self.calls.append((host, backup_type, d))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

        def ended(result):
            self.in_flight -= 1
            return result

        return d.addBoth(ended)

    def answer(self, reply: BackupReply, index: int = -1) -> None:
        self.calls[index][2].callback(reply)

    def host_status(self, host):
        d = Deferred()
        self.status_asked.append(d)
        return d


def requested(connection) -> list[dict]:
    return [body for body in connection.controls if body["type"] == "backup-requested"]


TAKEN = BackupReply(True, "ok: requested backup of laptop1 (backup_type 0)")
DECLINED = BackupReply(False, "error: unknown host laptop1")


class OneRequestPerHostTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.tunnel = FakeTunnel()
        self.trigger = HandTrigger()
        self.desk = BackupDesk(self.clock, Registry(laptop1=self.tunnel), self.trigger,
                               interval=1.0)
        self.lines = []
        observer = lambda event: self.lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def test_burst_from_one_connection(self):
        """300 requests in one burst: one BackupPC_serverMesg, one answer, one log line."""
        watcher = FakeTunnel()
        for _ in range(300):
            self.desk.request(watcher)
        self.assertEqual(len(self.trigger.calls), 1)
        self.assertEqual(requested(watcher), [])
        self.trigger.answer(TAKEN)
        self.assertEqual(requested(watcher), [{"type": "backup-requested", "ok": True,
                                               "message": TAKEN.text}])
        for _ in range(300):
            self.desk.request(watcher)  # while the backup is pending
        self.assertEqual((len(self.trigger.calls), len(requested(watcher))), (1, 1))
        self.assertEqual(self.lines, ["laptop1 asks for an incremental backup now"])

    def test_burst_from_many_connections(self):
        """
        Connections asking while BackupPC is being asked, or while the backup
        is pending, join the request: the same answer, the same progress.
        """
        early = [FakeTunnel() for _ in range(3)]
        for connection in early * 100:
            self.desk.request(connection, full=True)
        self.assertEqual(self.trigger.most_in_flight, 1)
        self.trigger.answer(TAKEN)
        late = FakeTunnel()
        self.desk.request(late)
        self.desk.request(late)
        self.assertEqual(len(self.trigger.calls), 1)
        for connection in [*early, late]:
            self.assertEqual(requested(connection), [{"type": "backup-requested", "ok": True,
                                                      "message": TAKEN.text}])
        self.clock.advance(1)
        for connection in [*early, late]:
            self.assertEqual(connection.controls[-1]["type"], "backup-progress")
        self.desk.backup_done("laptop1", True, "")
        for connection in [*early, late]:
            self.assertEqual(connection.controls[-1]["type"], "backup-done")

    def test_at_most_max_watchers(self):
        """The connection beyond MAX_WATCHERS is refused, once, in words backup-now shows."""
        watchers = [FakeTunnel() for _ in range(MAX_WATCHERS)]
        for connection in watchers:
            self.desk.request(connection)
        one_too_many = FakeTunnel()
        for _ in range(50):
            self.desk.request(one_too_many)
        self.assertEqual(one_too_many.controls, [{
            "type": "backup-requested", "ok": False,
            "message": f"{MAX_WATCHERS} connections follow the backup request of laptop1 "
                       f"already (the most there may be); try again when it is done"}])
        self.assertEqual(len(self.lines), 1 + MAX_WATCHERS - 1 + 1)
        # One leaving makes room for another.
        self.desk.forget(watchers[0])
        newcomer = FakeTunnel()
        self.desk.request(newcomer)
        self.trigger.answer(TAKEN)
        self.assertEqual(len(requested(newcomer)), 1)
        self.assertTrue(requested(newcomer)[0]["ok"])
        self.assertEqual((requested(watchers[0]), len(self.trigger.calls)), ([], 1))

    def test_declined_request_ends(self):
        """A refusal goes to everyone who asked, once; the next request is a new one."""
        watchers = [FakeTunnel(), FakeTunnel()]
        for connection in watchers * 5:
            self.desk.request(connection)
        self.trigger.answer(DECLINED)
        for connection in watchers:
            self.assertEqual(connection.controls, [{"type": "backup-requested", "ok": False,
                                                    "message": DECLINED.text}])
        self.clock.advance(10)
        self.assertEqual(len(watchers[0].controls), 1)
        self.desk.request(watchers[0])
        self.assertEqual(len(self.trigger.calls), 2)
        self.assertEqual(self.trigger.most_in_flight, 1)

    def test_one_in_flight_even_when_the_asker_left(self):
        """
        The laptop that asked leaves while BackupPC is being asked; one that
        asks meanwhile waits for that answer rather than running a second
        BackupPC_serverMesg.
        """
        first, second = FakeTunnel(), FakeTunnel()
        self.desk.request(first)
        self.desk.forget(first)
        self.desk.request(second)
        self.assertEqual(len(self.trigger.calls), 1)
        self.trigger.answer(TAKEN)
        self.assertEqual((first.controls, len(requested(second))), ([], 1))
        self.assertEqual(self.trigger.most_in_flight, 1)

    def test_after_the_result_a_new_request(self):
        """Once BackupPC reported, asking again asks BackupPC again (a distinct request)."""
        watcher = FakeTunnel()
        self.desk.request(watcher)
        self.trigger.answer(TAKEN)
        self.desk.backup_done("laptop1", True, "")
        self.desk.request(watcher)
        self.assertEqual(len(self.trigger.calls), 2)
        self.trigger.answer(TAKEN)
        self.assertEqual(len(requested(watcher)), 2)

    def test_hosts_are_independent(self):
        """One request in flight per host, not per server."""
        self.desk.request(FakeTunnel("laptop1"))
        self.desk.request(FakeTunnel("laptop2"))
        self.assertEqual([call[0] for call in self.trigger.calls], ["laptop1", "laptop2"])

    def test_trigger_failure_is_answered(self):
        """An unexpected failure asking BackupPC is an answer too: nobody waits forever."""
        watchers = [FakeTunnel(), FakeTunnel()]
        for connection in watchers:
            self.desk.request(connection)
        self.trigger.calls[0][2].errback(OSError("fork failed"))
        for connection in watchers:
            self.assertEqual(connection.controls, [{
                "type": "backup-requested", "ok": False,
                "message": "the server could not ask BackupPC: fork failed"}])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.desk.request(watchers[0])
        self.assertEqual(len(self.trigger.calls), 2)

    def test_no_trigger_answers_once(self):
        """Without --backup-now, a connection is told so once, however often it asks."""
        desk = BackupDesk(self.clock, Registry(laptop1=self.tunnel), None)
        watcher = FakeTunnel()
        for _ in range(300):
            desk.request(watcher)
        self.assertEqual(len(watcher.controls), 1)
        self.assertIn("--no-backup-now", watcher.controls[0]["message"])
        desk.forget(watcher)
        self.assertEqual(desk._told_no, set())
