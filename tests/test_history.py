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
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.admin.api_client import format_hosts, human_age
from bpctunnel.server import history
from bpctunnel.server.api import make_api_site
from bpctunnel.server.protocol import TunnelServerFactory
from bpctunnel.server.server_state import ServerState
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
        self.assertEqual(again.last_backup, history.BackupResult(False, START + 5, "xferOK=0"))
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
        with mock.patch.object(history.os, "fsync", side_effect=OSError(28, "No space left")), \
                capturedLogs() as events:
            state.history.save()
        self.assertEqual(os.listdir(folder), ["state.json"])
        self.assertEqual((folder / "state.json").read_bytes(), before)
        self.assertTrue(state.history.dirty)
        self.assertIn("cannot write the state file", events[-1]["log_format"])
        state.history.save()
        self.assertEqual(sorted(self.server_state().history.records), ["laptop1", "laptop2"])
        self.assertEqual(os.listdir(folder), ["state.json"])


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
        record = history.HostRecord()
        for day in range(20):
            for minute in range(70):
                record.add_bytes(START + day * 86400 + minute * 60, 10)
        self.assertEqual(len(record.bytes_by_day), history.MAX_DAYS)
        self.assertEqual(min(record.bytes_by_day), "2024-05-07")
        self.assertEqual(record.bytes_by_day["2024-05-20"], 700)
        self.assertEqual(len(record.minutes), history.MAX_MINUTES)

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
                         history.MAX_DETAIL)
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
