"""
Issue 18: the hosts' history that survives restarts (acceptance 3), the
C{GET /api/v1/hosts} body the dashboard polls, and C{bpctunnel status}'s
table of it.
"""

from __future__ import annotations

import datetime
import json
import os
from unittest import mock

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bpctunnel.admin.api_client import format_hosts, human_age
from bpctunnel.server import history, state_file
from bpctunnel.server.api import make_api_site
from bpctunnel.server.protocol import TunnelServerFactory
from bpctunnel.server.server_state import ServerState
from bpctunnel.server.service import RestartNoticeService
from bpctunnel.server.settings import ServerSettings
from bpctunnel.testing.sandbox import HOSTS_HEADER, host_config_text
from tests.helpers import temp_dir

#: 2024-05-01 12:00:00 UTC.
START = 1714564800.0
FINGERPRINT = "ab" * 32


@attrs.define
class FakeMux:
    bytes_in: int = 0
    bytes_out: int = 0
    lost: bool = False


@attrs.define(eq=False)
class FakeTunnel:
    """What the history and the hosts view read of a tunnel."""

    host: str
    peer_address: str = "192.0.2.7:50000"
    connected_at: float | None = None
    certificate_expires: datetime.datetime | None = None
    mux: FakeMux = attrs.Factory(FakeMux)

    def check(self, now):
        """The server's periodic check: nothing to do here."""


def backuppc_conf(root, hosts=("laptop1", "laptop2")):
    """A BackupPC config folder whose C{hosts} are tunnel hosts."""
    conf = root / "backuppc"
    conf.mkdir()
    (conf / "hosts").write_text(HOSTS_HEADER + "".join(f"{h}  0  backuppc\n" for h in hosts))
    for port, host in enumerate(hosts, 64701):
        (conf / f"{host}.pl").write_text(host_config_text(FINGERPRINT, port, ("docs",), None))
    return conf


class HistoryTestCase(SynchronousTestCase):
    def setUp(self):
        self.root = temp_dir(self)
        self.clock = Clock()
        self.clock.advance(START)
        self.conf = backuppc_conf(self.root)

    def server_state(self, state_dir="state"):
        settings = ServerSettings(backuppc_conf=self.conf,
                                  state_dir=self.root / state_dir if state_dir else None)
        if state_dir:
            (self.root / state_dir).mkdir(exist_ok=True)
        return ServerState(self.clock, settings)

    def connect(self, state, host="laptop1", **kwargs):
        tunnel = FakeTunnel(host, connected_at=self.clock.seconds(), **kwargs)
        state.tunnels._tunnels[host] = tunnel
        state.notify("open", tunnel)
        return tunnel

    def disconnect(self, state, tunnel):
        state.tunnels._tunnels.pop(tunnel.host, None)
        state.notify("closed", tunnel)


class HistoryLastsTests(HistoryTestCase):
    """Acceptance 3: the history survives a restart; a broken file never stops the server."""

    def test_survives_restart(self):
        """What one server learnt, the next one, reading the same folder, knows."""
        state = self.server_state()
        state.start_checks()
        tunnel = self.connect(state, certificate_expires=datetime.datetime(
            2024, 5, 20, tzinfo=datetime.timezone.utc))
        tunnel.mux.bytes_in = 3000
        self.clock.advance(history.SAMPLE_INTERVAL)
        tunnel.mux.bytes_out = 500
        state.history.round_trip("laptop1", 0.0425)
        state.history.backup_done("laptop1", False, "xferOK=0")
        self.clock.advance(60)
        self.disconnect(state, tunnel)
        state.stop_checks()

        again = self.server_state().history.records["laptop1"]
        self.assertEqual(again.connected_at, START)
        self.assertEqual(again.disconnected_at, START + 65)
        self.assertEqual(again.address, "192.0.2.7:50000")
        self.assertEqual(again.rtt_ms, 42.5)
        self.assertEqual(again.last_backup, state_file.BackupResult(False, START + 5, "xferOK=0"))
        self.assertEqual(again.bytes_by_day, {"2024-05-01": 3500})
        self.assertEqual(again.certificate_expires, "2024-05-20T00:00:00+00:00")
        self.assertEqual(list(again.minutes), [[int(START), 3000], [int(START) + 60, 500]])

    def test_truncated_file_set_aside(self):
        """A truncated state file is moved aside with a log line, and the server starts empty."""
        folder = self.root / "state"
        folder.mkdir()
        good = self.server_state()
        good.history.backup_done("laptop1", True)
        good.history.save()
        text = (folder / "state.json").read_bytes()
        (folder / "state.json").write_bytes(text[:len(text) // 2])
        with capturedLogs() as events:
            state = self.server_state()
        self.assertEqual(state.history.records, {})
        self.assertEqual(sorted(os.listdir(folder)), ["state.json.corrupt-20240501T120000"])
        self.assertEqual((folder / "state.json.corrupt-20240501T120000").read_bytes(),
                         text[:len(text) // 2])
        [event] = [e for e in events if e.get("log_level").name == "error"]
        self.assertEqual(event["path"], str(folder / "state.json"))
        self.assertEqual(event["aside"], str(folder / "state.json.corrupt-20240501T120000"))
        self.assertIn("corrupt", event["log_format"])
        # ... and it keeps working: the next save writes a good file.
        state.history.backup_done("laptop2", True)
        state.history.save()
        self.assertEqual(list(self.server_state().history.records), ["laptop2"])

    def test_wrong_shape_set_aside(self):
        """Valid JSON that is not our file (a bad record inside) is set aside too."""
        folder = self.root / "state"
        folder.mkdir()
        (folder / "state.json").write_text(json.dumps(
            {"version": 1, "hosts": {"laptop1": {"rtt_ms": "fast"}}}))
        with capturedLogs():
            state = self.server_state()
        self.assertEqual(state.history.records, {})
        self.assertFalse((folder / "state.json").exists())

    def test_hostile_values_set_aside(self):
        """
        Numbers no clock gives (infinite, NaN, past the year 2242, a 400-digit
        integer) and JSON nested too deep are corrupt: set aside, the server
        starts, and its hosts view answers.
        """
        folder = self.root / "state"
        folder.mkdir()
        bodies = [b'{"version": 1, "hosts": {"laptop1": {"connected_at": %s}}}' % number
                  for number in [b"1e400", b"NaN", b"-5", b"1e20", b"1" + b"0" * 400]]
        bodies += [b'{"version": 1, "hosts": {"laptop1": {"last_backup": '
                   b'{"ok": true, "at": 1e300}}}}',
                   b'{"version": 1, "hosts": {"laptop1": {"rtt_ms": Infinity}}}',
                   b"[" * 100_000 + b"]" * 100_000]
        for body in bodies:
            (folder / "state.json").write_bytes(body)
            with capturedLogs() as events:
                state = self.server_state()
            self.assertEqual(state.history.records, {}, body[:80])
            self.assertFalse((folder / "state.json").exists(), body[:80])
            self.assertIn("corrupt", events[-1]["log_format"])
            self.assertEqual([h["host"] for h in state.hosts_view.body()["hosts"]],
                             ["laptop1", "laptop2"])
            for aside in folder.iterdir():
                aside.unlink()

    def test_no_state_dir(self):
        """Without --state-dir (none) the history is in memory only."""
        state = self.server_state(state_dir=None)
        state.history.backup_done("laptop1", True)
        state.history.save()
        self.assertEqual(os.listdir(self.root), ["backuppc"])

    def test_written_at_most_every_interval(self):
        """Changes reach the disk within SAVE_INTERVAL seconds, not on every change."""
        state = self.server_state()
        state.start_checks()
        path = self.root / "state" / "state.json"
        state.history.backup_done("laptop1", True)
        self.clock.advance(history.SAMPLE_INTERVAL)
        self.assertFalse(path.exists())
        self.clock.advance(history.SAVE_INTERVAL)
        self.assertIn("laptop1", json.loads(path.read_text())["hosts"])
        mtime = path.stat().st_mtime_ns
        self.clock.advance(history.SAVE_INTERVAL)     # nothing changed: no write
        self.assertEqual(path.stat().st_mtime_ns, mtime)
        state.stop_checks()


class AtomicWriteTests(HistoryTestCase):
    def test_failed_write_leaves_old_file(self):
        """A write that fails half-way leaves the old file whole and no temporary file."""
        state = self.server_state()
        state.history.backup_done("laptop1", True)
        state.history.save()
        folder = self.root / "state"
        before = (folder / "state.json").read_bytes()
        state.history.backup_done("laptop2", False)
        with mock.patch.object(state_file.os, "fsync", side_effect=OSError(28, "No space left")), \
                capturedLogs() as events:
            state.history.save()
        self.assertEqual(os.listdir(folder), ["state.json"])
        self.assertEqual((folder / "state.json").read_bytes(), before)
        self.assertTrue(state.history.dirty)
        self.assertIn("cannot write the state file", events[-1]["log_format"])
        state.history.save()
        self.assertEqual(sorted(self.server_state().history.records), ["laptop1", "laptop2"])
        self.assertEqual(os.listdir(folder), ["state.json"])


class HeldThread:
    """
    A C{run_in_thread} that only records each call: the test runs it later,
    with L{finish}, as a thread would while the reactor goes on.
    """

    def __init__(self):
        #: C{(f, args, Deferred)} of the calls not run yet, oldest first.
        self.calls: list[tuple] = []

    def __call__(self, f, *args) -> Deferred:
        d = Deferred()
        self.calls.append((f, args, d))
        return d

    def finish(self) -> None:
        """Run the oldest call, firing its Deferred with its result or its exception."""
        f, args, d = self.calls.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)


@implementer(IReactorThreads)
class ThreadedClock(Clock):
    """A Clock that is also an C{IReactorThreads}, whose pool only records calls."""

    def __init__(self):
        super().__init__()
        self.pool = self
        #: C{(on_result, f, args)} handed to the pool.
        self.queued: list[tuple] = []

    def getThreadPool(self):
        return self.pool

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.queued.append((on_result, f, args))

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def callInThread(self, f, *args, **kwargs):
        raise AssertionError("the history uses the pool's callInThreadWithCallback")

    def suggestThreadPoolSize(self, size):
        pass


class ThreadedWriteTests(HistoryTestCase):
    """The file's writes (fsync, rename) run off the reactor thread, one at a time."""

    def setUp(self):
        super().setUp()
        (self.root / "state").mkdir()
        self.path = self.root / "state" / "state.json"
        self.thread = HeldThread()
        self.history = history.HostHistory(self.clock, state_file.StateFile(self.path),
                                           run_in_thread=self.thread)

    def on_disk(self) -> list[str]:
        return sorted(json.loads(self.path.read_text())["hosts"])

    def test_write_runs_later_in_the_thread(self):
        """save() takes the records' bytes and returns; the disk is touched only by the thread."""
        self.history.backup_done("laptop1", True)
        saved = self.history.save()
        [(f, (data,), _)] = self.thread.calls
        self.assertEqual(f, self.history.state_file.write)
        self.assertEqual(sorted(json.loads(data)["hosts"]), ["laptop1"])
        self.assertFalse(self.path.exists())
        self.assertFalse(self.history.dirty)
        self.assertNoResult(saved)
        self.thread.finish()
        self.assertIsNone(self.successResultOf(saved))
        self.assertEqual(self.on_disk(), ["laptop1"])

    def test_default_is_the_reactors_thread_pool(self):
        """Given a reactor (an IReactorThreads), the write goes to its thread pool."""
        reactor = ThreadedClock()
        reactor.advance(START)
        kept = history.HostHistory(reactor, state_file.StateFile(self.path))
        kept.backup_done("laptop1", True)
        saved = kept.save()
        [(on_result, f, (data,))] = reactor.queued
        self.assertEqual(f, kept.state_file.write)
        self.assertFalse(self.path.exists())
        self.assertNoResult(saved)
        on_result(True, f(data))
        self.successResultOf(saved)
        self.assertEqual(self.on_disk(), ["laptop1"])

    def test_change_during_a_write_is_written_after_it(self):
        """
        A change made while a write is under way is in the next write; a save
        asked for meanwhile waits for the first write rather than race it.
        """
        self.history.start()
        self.addCleanup(self.history.stop)
        self.history.backup_done("laptop1", True)
        self.clock.advance(history.SAVE_INTERVAL)      # the periodic save
        self.assertEqual(len(self.thread.calls), 1)
        self.history.backup_done("laptop2", True)      # the write has its snapshot already
        self.assertTrue(self.history.dirty)
        second = self.history.save()
        self.assertEqual(len(self.thread.calls), 1)    # never two writers at once
        self.thread.finish()
        self.assertEqual(self.on_disk(), ["laptop1"])
        [(_, (data,), _)] = self.thread.calls          # the second write, at once
        self.assertEqual(sorted(json.loads(data)["hosts"]), ["laptop1", "laptop2"])
        self.assertNoResult(second)
        self.thread.finish()
        self.successResultOf(second)
        self.assertEqual(self.on_disk(), ["laptop1", "laptop2"])
        self.assertFalse(self.history.dirty)

    def test_change_during_a_write_is_saved_by_the_next_interval(self):
        self.history.start()
        self.addCleanup(self.history.stop)
        self.history.backup_done("laptop1", True)
        self.clock.advance(history.SAVE_INTERVAL)
        self.history.round_trip("laptop2", 0.01)
        self.thread.finish()
        self.assertEqual((self.on_disk(), self.thread.calls), (["laptop1"], []))
        self.clock.advance(history.SAVE_INTERVAL)
        self.thread.finish()
        self.assertEqual(self.on_disk(), ["laptop1", "laptop2"])

    def test_stop_waits_for_the_write(self):
        """stop() samples the tunnels once more and fires once that is on disk."""
        self.history.start()
        tunnel = FakeTunnel("laptop1", connected_at=self.clock.seconds())
        self.history.tunnel_event("open", tunnel)
        tunnel.mux.bytes_in = 1234
        stopped = self.history.stop()
        self.assertNoResult(stopped)
        self.thread.finish()
        self.successResultOf(stopped)
        self.assertEqual(json.loads(self.path.read_text())["hosts"]["laptop1"]["bytes_by_day"],
                         {"2024-05-01": 1234})

    def test_stop_during_a_write_waits_for_both(self):
        self.history.start()
        self.history.backup_done("laptop1", True)
        self.clock.advance(history.SAVE_INTERVAL)
        self.history.backup_done("laptop2", True)
        stopped = self.history.stop()
        self.thread.finish()
        self.assertNoResult(stopped)
        self.thread.finish()
        self.successResultOf(stopped)
        self.assertEqual(self.on_disk(), ["laptop1", "laptop2"])

    def test_server_stop_waits_for_the_write(self):
        """The server's stop (twistd's) ends only once the history is on disk."""
        state = self.server_state()
        state.history = self.history
        self.history.backup_done("laptop1", True)
        stopped = RestartNoticeService(state).stopService()
        self.assertNoResult(stopped)
        self.thread.finish()
        self.successResultOf(stopped)
        self.assertEqual(self.on_disk(), ["laptop1"])

    def test_failed_write_logged_and_retried(self):
        """A failed write is logged, not raised; the records stay dirty for the next save."""
        self.history.start()
        self.addCleanup(self.history.stop)
        self.history.backup_done("laptop1", True)
        saved = self.history.save()
        with mock.patch.object(state_file.os, "fsync", side_effect=OSError(28, "No space left")), \
                capturedLogs() as events:
            self.thread.finish()
        self.assertIsNone(self.successResultOf(saved))
        [event] = events
        self.assertEqual((event["log_format"].split(":")[0], event["path"], event["error"]),
                         ("cannot write the state file {path}", str(self.path), "No space left"))
        self.assertTrue(self.history.dirty)
        self.assertEqual(os.listdir(self.path.parent), [])
        self.clock.advance(history.SAMPLE_INTERVAL)    # not at once: within SAVE_INTERVAL
        self.assertEqual(self.thread.calls, [])
        self.clock.advance(history.SAVE_INTERVAL)
        self.thread.finish()
        self.assertEqual(self.on_disk(), ["laptop1"])
        self.assertFalse(self.history.dirty)

    def test_unexpected_error_logged_with_traceback(self):
        self.history.backup_done("laptop1", True)
        saved = self.history.save()
        with mock.patch.object(state_file.os, "replace", side_effect=ValueError("odd")), \
                capturedLogs() as events:
            self.thread.finish()
        self.successResultOf(saved)
        [event] = events
        self.assertEqual(event["path"], str(self.path))
        self.assertTrue(event["log_failure"].check(ValueError))
        self.assertTrue(self.history.dirty)
        self.flushLoggedErrors(ValueError)


class BoundsTests(HistoryTestCase):
    def test_host_cap_evicts_the_longest_silent(self):
        state = self.server_state()
        with mock.patch.object(history, "MAX_HOSTS", 3):
            for n in range(5):
                self.clock.advance(1)
                state.history.backup_done(f"host{n}", True)
            state.history.backup_done("host2", True)     # heard from again: stays
            self.clock.advance(1)
            state.history.backup_done("host5", True)
        self.assertEqual(sorted(state.history.records), ["host2", "host4", "host5"])

    def test_days_and_minutes_capped(self):
        record = state_file.HostRecord()
        for day in range(20):
            for minute in range(70):
                record.add_bytes(START + day * 86400 + minute * 60, 10)
        self.assertEqual(len(record.bytes_by_day), state_file.MAX_DAYS)
        self.assertEqual(min(record.bytes_by_day), "2024-05-07")
        self.assertEqual(record.bytes_by_day["2024-05-20"], 700)
        self.assertEqual(len(record.minutes), state_file.MAX_MINUTES)

    def test_backup_of_unknown_host_not_kept(self):
        """backup-done for a name that is neither BackupPC's tunnel host nor seen is not kept."""
        state = self.server_state()
        state.hosts_view.backup_done("made-up", True, "")
        state.hosts_view.backup_done("laptop1", True, "")
        self.assertEqual(list(state.history.records), ["laptop1"])

    def test_long_detail_and_file_size(self):
        state = self.server_state()
        for n in range(200):
            state.history.backup_done("laptop1", False, "x" * 10_000)
            state.history.round_trip("laptop1", 0.01)
        state.history.save()
        self.assertEqual(len(state.history.records["laptop1"].last_backup.detail),
                         state_file.MAX_DETAIL)
        self.assertLess((self.root / "state" / "state.json").stat().st_size, 2000)


class HostsApiTests(HistoryTestCase):
    """C{GET /api/v1/hosts}: the shape the dashboard depends on."""

    def get(self, factory, path=b"/api/v1/hosts"):
        treq = StubTreq(make_api_site(factory).resource)
        response = self.successResultOf(treq.get("http://localhost" + path.decode()))
        body = self.successResultOf(response.content())
        return response.code, json.loads(body)

    def test_shape(self):
        factory = TunnelServerFactory(self.clock, ServerSettings(backuppc_conf=self.conf))
        state = factory.state
        state.start_checks()
        self.addCleanup(state.stop_checks)
        gone = self.connect(state, "laptop2")
        self.clock.advance(10)
        self.disconnect(state, gone)
        state.history.backup_done("laptop2", False, "rsync error 23")
        self.clock.advance(8 * 86400)
        tunnel = self.connect(state, "roaming", certificate_expires=datetime.datetime.fromtimestamp(
            self.clock.seconds() + 10 * 86400, datetime.timezone.utc))
        self.clock.advance(history.SAMPLE_INTERVAL)
        tunnel.mux.bytes_in = 6000
        state.history.round_trip("roaming", 0.012)
        code, body = self.get(factory)
        self.assertEqual(code, 200)
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        self.assertEqual(body["generated_at"], now.isoformat(timespec="seconds"))
        hosts = {h["host"]: h for h in body["hosts"]}
        self.assertEqual([h["host"] for h in body["hosts"]], ["laptop1", "laptop2", "roaming"])
        keys = ["host", "connected", "connected_since", "last_seen", "address", "rtt_ms",
                "bytes_today", "throughput_bps", "history", "last_backup",
                "certificate_expires", "problems"]
        for h in body["hosts"]:
            self.assertEqual(list(h), keys)
            self.assertEqual(len(h["history"]), 60)
        roaming = hosts["roaming"]
        self.assertEqual((roaming["connected"], roaming["address"], roaming["rtt_ms"]),
                         (True, "192.0.2.7:50000", 12.0))
        self.assertEqual(roaming["connected_since"], (now - datetime.timedelta(seconds=5))
                         .isoformat(timespec="seconds"))
        self.assertEqual(roaming["last_seen"], body["generated_at"])
        self.assertEqual(roaming["throughput_bps"], 6000 / history.SAMPLE_INTERVAL)
        self.assertEqual(roaming["problems"], [
            "its certificate expires in 9 days (2024-05-19); run `bpctunnel renew roaming`"])
        laptop2 = hosts["laptop2"]
        self.assertEqual((laptop2["connected"], laptop2["connected_since"], laptop2["throughput_bps"],
                          laptop2["bytes_today"]), (False, None, 0.0, 0))
        self.assertEqual(laptop2["last_seen"], "2024-05-01T12:00:10+00:00")
        self.assertEqual(laptop2["last_backup"], {"ok": False, "at": "2024-05-01T12:00:10+00:00",
                                                  "detail": "rsync error 23"})
        self.assertEqual(laptop2["problems"], [
            "not seen for 8 days",
            "its last backup failed (2024-05-01T12:00:10+00:00): rsync error 23"])
        self.assertEqual(hosts["laptop1"]["problems"], ["never seen by this server"])
        self.assertEqual(hosts["laptop1"]["history"][-1], [
            now.replace(second=0).isoformat(timespec="seconds"), 0])
        # Bytes sampled later land in the graph and today's count.
        self.clock.advance(history.SAMPLE_INTERVAL)
        _, body = self.get(factory)
        roaming = body["hosts"][2]
        self.assertEqual((roaming["bytes_today"], sum(n for _, n in roaming["history"])),
                         (6000, 6000))

    def test_host_files_read_at_most_every_few_seconds(self):
        factory = TunnelServerFactory(self.clock, ServerSettings(backuppc_conf=self.conf))
        (self.conf / "hosts").write_text(HOSTS_HEADER + "laptop1 0 backuppc\n")
        with mock.patch.object(factory.state.authorization, "tunnel_hosts",
                               wraps=factory.state.authorization.tunnel_hosts) as asked:
            for _ in range(5):
                self.get(factory)
            self.assertEqual(asked.call_count, 1)
            self.clock.advance(6)
            _, body = self.get(factory)
            self.assertEqual(asked.call_count, 2)
        self.assertEqual([h["host"] for h in body["hosts"]], ["laptop1"])

    def test_token_required_on_tcp(self):
        factory = TunnelServerFactory(self.clock, ServerSettings(backuppc_conf=self.conf))
        treq = StubTreq(make_api_site(factory, "t" * 20).resource)
        response = self.successResultOf(treq.get("http://localhost/api/v1/hosts"))
        self.assertEqual(response.code, 401)


class StatusTableTests(SynchronousTestCase):
    """C{bpctunnel status}: plain words, no Python reprs."""

    BODY = {"generated_at": "2024-05-03T12:00:00+00:00", "hosts": [
        {"host": "laptop1", "connected": True, "connected_since": "2024-05-03T09:00:00+00:00",
         "last_seen": "2024-05-03T12:00:00+00:00", "address": "192.0.2.7:50000",
         "rtt_ms": 42.25, "bytes_today": 5_000_000, "throughput_bps": 10.0,
         "history": [], "last_backup": {"ok": True, "at": "2024-05-03T10:00:00+00:00",
                                        "detail": ""},
         "certificate_expires": None, "problems": []},
        {"host": "laptop2", "connected": False, "connected_since": None,
         "last_seen": "2024-05-01T12:00:00+00:00", "address": "198.51.100.1:40000",
         "rtt_ms": None, "bytes_today": 0, "throughput_bps": 0.0, "history": [],
         "last_backup": {"ok": False, "at": "2024-05-02T11:00:00+00:00",
                         "detail": "rsync error\n23"},
         "certificate_expires": None, "problems": ["its last backup failed"]},
        {"host": "laptop3", "connected": False, "connected_since": None, "last_seen": None,
         "address": None, "rtt_ms": None, "bytes_today": 0, "throughput_bps": 0.0,
         "history": [], "last_backup": None, "certificate_expires": None, "problems": []},
    ]}

    def test_table(self):
        self.assertEqual(format_hosts(self.BODY).splitlines(), [
            "HOST     STATE         ADDRESS             RTT      TODAY    LAST BACKUP",
            "laptop1  connected 3h  192.0.2.7:50000     42.2 ms  5.0 MB   ok 2h ago",
            "laptop2  seen 2d ago   198.51.100.1:40000  -        0 bytes  FAILED 1d ago: rsync "
            "error 23",
            "laptop3  never seen    -                   -        0 bytes  -",
            "laptop2: its last backup failed",
        ])
        self.assertNotIn("{", format_hosts(self.BODY))
        self.assertNotIn("'ok'", format_hosts(self.BODY))

    def test_human(self):
        self.assertEqual([human_age(s) for s in (5, 61, 7260, 90000)], ["5s", "1m", "2h", "1d"])
