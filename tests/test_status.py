"""
The status API, /metrics, `bpctunnel status`, `bpctunnel ping` (for
BackupPC's PingCmd) and `bpctunnel revoke` asking about a live tunnel.
"""

from __future__ import annotations

import json

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.client import HTTPConnectionPool

from bpctunnel.testing.sandbox import make_sample_tree
from tests.helpers import TIMEOUT, run_cli
from tests.test_end_to_end import TunnelTestCase

#: BackupPC::Lib::CheckHostAlive's two round-trip regexes, verbatim.
BACKUPPC_PING_CHECK = r"""
my $s = do { local $/; <STDIN> };
if ( $s =~ /rtt\s*min\/avg\/max\/mdev\s*=\s*[\d.]+\/([\d.]+)\/[\d.]+\/[\d.]+\s*(ms|usec)/i ) {
    print "rtt $1\n";
}
if ( $s =~ /time=([\d.]+)\s*(ms|usec)/i ) {
    print "time $1\n";
}
"""


def http_pool(testcase) -> HTTPConnectionPool:
    """A connection pool whose connections are closed when the test ends."""
    pool = HTTPConnectionPool(reactor)
    testcase.addCleanup(pool.closeCachedConnections)
    return pool


class StatusApiTests(TunnelTestCase):
    """Acceptance 4: the API's JSON for two clients, DELETE, ping, errors; /metrics."""

    @inlineCallbacks
    def get(self, path, method="GET", **kwargs):
        if not hasattr(self, "pool"):
            self.pool = http_pool(self)
        response = yield treq.request(method, self.server.api_url + path, pool=self.pool,
                                      **kwargs).addTimeout(TIMEOUT, reactor)
        body = yield response.content()
        return response.code, body

    @inlineCallbacks
    def get_json(self, path, method="GET"):
        code, body = yield self.get(path, method)
        return code, json.loads(body)

    @inlineCallbacks
    def test_two_clients(self):
        _, port1, _ = yield self.connected_client("laptop1", {"m": self.root})
        _, port2, _ = yield self.connected_client("laptop2", {"m": self.root})
        code, body = yield self.get_json("/api/v1/tunnels")
        self.assertEqual(code, 200)
        tunnels = body["tunnels"]
        self.assertEqual([(t["host"], t["port"]) for t in tunnels],
                         [("laptop1", port1), ("laptop2", port2)])
        for tunnel in tunnels:
            self.assertRegex(tunnel["client_address"], r"^127\.0\.0\.1:\d+$")
            self.assertRegex(tunnel["connected_since"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
            self.assertRegex(tunnel["certificate_expires"], r"^\d{4}-")
            self.assertEqual((tunnel["channels_open"], tunnel["bytes_to_client"]), (0, 0))
        code, one = yield self.get_json("/api/v1/tunnels/LAPTOP2")
        self.assertEqual((code, one), (200, tunnels[1]))

    @inlineCallbacks
    def test_errors_are_json(self):
        code, body = yield self.get_json("/api/v1/tunnels/nobody")
        self.assertEqual((code, body), (404, {"error": "no tunnel for nobody is up"}))
        code, body = yield self.get_json("/nothing")
        self.assertEqual((code, body), (404, {"error": "no such resource: /nothing"}))
        yield self.connected_client("laptop1", {"m": self.root})
        code, body = yield self.get_json("/api/v1/tunnels/laptop1/ping?count=99", "POST")
        self.assertEqual((code, body["error"]), (400, "count must be 1-20, timeout 0-60 s"))

    @inlineCallbacks
    def test_ping(self):
        yield self.connected_client("laptop1", {"m": self.root})
        code, body = yield self.get_json("/api/v1/tunnels/laptop1/ping?count=4", "POST")
        self.assertEqual(code, 200)
        self.assertEqual((body["sent"], body["received"], len(body["rtt_ms"])), (4, 4, 4))
        self.assertTrue(0 < body["min"] <= body["avg"] <= body["max"], body)

    @inlineCallbacks
    def test_delete_drops_tunnel(self):
        client, port, _ = yield self.connected_client("laptop1", {"m": self.root})
        closed = client.events.next("closed")
        down = self.server_down("laptop1")
        code, body = yield self.get_json("/api/v1/tunnels/laptop1", "DELETE")
        self.assertEqual((code, body), (200, {"dropped": "laptop1"}))
        yield down
        reason = yield closed.addTimeout(TIMEOUT, reactor)
        self.assertIn("dropped by an admin", reason)
        code, _ = yield self.get_json("/api/v1/tunnels/laptop1")
        self.assertEqual(code, 404)

    @inlineCallbacks
    def test_metrics_parse_and_move(self):
        source = make_sample_tree(self.root / "src")
        _, port, _ = yield self.connected_client("laptop1", {"m": source})
        refused, _, _ = self.add_client("stranger", {"m": source}, register=False)
        yield refused.events.next("closed").addTimeout(TIMEOUT, reactor)
        yield refused.stop()
        yield self.pull_and_compare(port, "m", source)
        yield self.get_json("/api/v1/tunnels/laptop1/ping?count=2", "POST")
        code, text = yield self.get("/metrics")
        self.assertEqual(code, 200)
        samples = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        self.assertEqual(samples[("bpctunnel_tunnels_connected", ())], 1)
        self.assertEqual(samples[("bpctunnel_handshakes_total", ())], 1)
        self.assertEqual(samples[("bpctunnel_refusals_total", (("reason", "unknown_host"),))], 1)
        self.assertEqual(samples[("bpctunnel_channels_opened_total", ())], 1)
        self.assertGreater(samples[("bpctunnel_bytes_total", (("direction", "from_client"),
                                                               ("host", "laptop1")))], 70_000)
        self.assertEqual(samples[("bpctunnel_ping_rtt_seconds_count", ())], 2)


class TokenTests(TunnelTestCase):
    """An API with a token refuses requests without it."""

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        from bpctunnel.server.api import make_api_site

        self.token = "s3cret-token-of-some-length"
        port = reactor.listenTCP(0, make_api_site(self.server.factory, self.token),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/api/v1/tunnels"

    @inlineCallbacks
    def test_token_required(self):
        pool = http_pool(self)
        response = yield treq.get(self.url, pool=pool).addTimeout(TIMEOUT, reactor)
        body = yield response.json()
        self.assertEqual((response.code, body["error"]),
                         (401, "this API needs 'Authorization: Bearer TOKEN'"))
        response = yield treq.get(self.url, pool=pool,
                                  headers={"Authorization": "Bearer " + self.token})
        self.assertEqual(response.code, 200)
        yield response.content()


class CommandTests(TunnelTestCase):
    """bpctunnel ping / status / revoke against a running server."""

    @inlineCallbacks
    def test_ping_output_passes_backuppc_parser(self):
        """Acceptance 1: the output matches both of BackupPC's regexes; exit 0 when up."""
        yield self.connected_client("laptop1", {"m": self.root})
        code, out = yield run_cli(self, "ping", "laptop1", "--api", self.server.api_url)
        self.assertEqual(code, 0, out)
        self.assertIn("rtt min/avg/max/mdev = ", out)
        parsed, err, status = yield getProcessOutputAndValue(
            "/usr/bin/perl", ["-e", BACKUPPC_PING_CHECK], env={}, reactor=reactor,
            stdinBytes=out.encode()).addTimeout(TIMEOUT, reactor)
        self.assertEqual(status, 0, err)
        lines = parsed.decode().splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["rtt", "time"])
        self.assertGreater(float(lines[0].split()[1]), 0)

    @inlineCallbacks
    def test_ping_down_exits_1(self):
        code, out = yield run_cli(self, "ping", "laptop1", "--api", self.server.api_url)
        self.assertEqual(code, 1)
        self.assertIn("laptop1 is not reachable through bpctunnel: no tunnel for laptop1 is up", out)

    @inlineCallbacks
    def test_status_table(self):
        """
        Acceptance 5 (and issue 18): bpctunnel status shows every tunnel
        host, connected or not, its last backup in words (no Python repr).
        """
        yield self.connected_client("laptop1", {"m": self.root})
        self.sandbox.register("laptop2", None, "ab" * 32)
        code, out = yield run_cli(self, "backup-done", "laptop1", "0", "--detail", "xferOK=0",
                                  "--api", self.server.api_url)
        self.assertEqual(code, 0, out)
        code, out = yield run_cli(self, "status", "--api", self.server.api_url)
        self.assertEqual(code, 0, out)
        header, row1, row2, *problems = out.splitlines()
        self.assertEqual(header.split(), ["HOST", "STATE", "ADDRESS", "RTT", "TODAY", "LAST",
                                          "BACKUP"])
        self.assertRegex(row1, r"^laptop1  connected \d+s +127\.0\.0\.1:\d+ +(-|[\d.]+ ms) +"
                               r"[\d.]+ (bytes|KB) +FAILED \d+s ago: xferOK=0$")
        self.assertRegex(row2, r"^laptop2  never seen +- +- +0 bytes +-$")
        self.assertNotIn("{", out)
        self.assertNotIn("'ok'", out)
        self.assertIn("laptop2: never seen by this server", problems)
        code, out = yield run_cli(self, "status", "--json", "--api", self.server.api_url)
        body = json.loads(out)
        self.assertEqual([h["host"] for h in body["hosts"]], ["laptop1", "laptop2"])
        self.assertEqual(body["hosts"][0]["last_backup"]["detail"], "xferOK=0")

    @inlineCallbacks
    def test_revoke_says_tunnel_is_live(self):
        client, _, _ = yield self.connected_client("laptop1", {"m": self.root})
        closed = client.events.next("closed")
        code, out = yield run_cli(self, "revoke", "laptop1", "--certs", str(self.sandbox.certs_dir),
                                  "--backuppc-conf", str(self.sandbox.conf_dir),
                                  "--api", self.server.api_url)
        self.assertEqual(code, 0, out)
        self.assertIn("revoked laptop1", out)
        self.assertIn("a tunnel for laptop1 is live (from 127.0.0.1:", out)
        self.assertIn("the server drops it within 10 seconds", out)
        reason = yield closed.addTimeout(10, reactor)
        self.assertTrue(reason.startswith("fingerprint mismatch"), reason)
        code, out = yield run_cli(self, "revoke", "laptop1", "--certs", str(self.sandbox.certs_dir),
                                  "--backuppc-conf", str(self.sandbox.conf_dir),
                                  "--api", self.server.api_url)
        self.assertIn("no tunnel for laptop1 is up now", out)
