"""
The benchmarks' smoke test: each of bench/*.py runs with C{--quick} (tiny
sizes, seconds each) and prints its figures, ratios and target lines.
Timings are never asserted: a missed target is a result, not a failure.

Needs what the benchmarks need: rsync, and for the ssh -R baseline of
throughput.py openssh-server and openssh-client.
"""

from __future__ import annotations

import json
import re
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.helpers import PROJECT_ROOT, spawn, temp_dir

#: A figure: its name, then a number (1,234.5) and a unit.
NUMBER = r"\s+[\d,]+(?:\.\d+)?\s*"


class QuickBenchmarkTests(unittest.TestCase):
    """Each benchmark exits 0 with C{--quick} and prints its figure lines."""

    # Each takes seconds; the bound is for a machine busy with other tests.
    timeout = 300

    @inlineCallbacks
    def run_bench(self, name: str, *expected: str):
        """
        Run bench/NAME.py --quick; assert it exits 0, prints each regex in
        C{expected} and the other-load line, and writes its figures as JSON.
        """
        out = temp_dir(self) / f"{name}.json"
        process = spawn(self, [sys.executable, str(PROJECT_ROOT / "bench" / f"{name}.py"),
                               "--quick", "--json", str(out)], cwd=PROJECT_ROOT)
        code = yield process.ended
        self.assertEqual(code, 0, f"bench/{name}.py --quick failed:\n{process.text}")
        for pattern in (*expected, r"TARGET (MET|MISSED) ",
                        r"other processes used \d+% of this machine's \d+ CPUs"):
            self.assertRegex(process.text, pattern)
        figures = json.loads(out.read_text())
        self.assertTrue(figures["targets"], figures)
        self.assertNotIn("Traceback", process.text)
        return figures

    @inlineCallbacks
    def test_throughput(self):
        """throughput.py prints MB/s, CPU per GB and the ratios, both directions."""
        figures = yield self.run_bench(
            "throughput",
            *(line for direction in ("laptop->server", "server->laptop") for line in (
                rf"{direction} bpctunnel{NUMBER}MB/s",
                rf"{direction} ssh -R{NUMBER}MB/s",
                rf"{direction} direct{NUMBER}MB/s",
                rf"{direction} bpctunnel CPU server{NUMBER}s/GB",
                rf"{direction} bpctunnel CPU client{NUMBER}s/GB",
                rf"{direction} ratio a/b \(bpctunnel / ssh -R\){NUMBER}x",
                rf"{direction} ratio a/c \(bpctunnel / direct\){NUMBER}x",
            )),
            r"TARGET (MET|MISSED) +laptop->server absolute: ")
        self.assertIn("laptop->server ratio a/b (bpctunnel / ssh -R)", figures["values"])

    @inlineCallbacks
    def test_rsync_pull(self):
        """rsync_pull.py prints both pulls' times and their ratios."""
        yield self.run_bench(
            "rsync_pull",
            rf"full pull, direct rsync --daemon{NUMBER}s",
            rf"full pull, bpctunnel{NUMBER}s",
            rf"full pull ratio bpctunnel / direct{NUMBER}x",
            rf"unchanged pull ratio bpctunnel / direct{NUMBER}x")

    @inlineCallbacks
    def test_fleet(self):
        """fleet.py prints RSS per client, handshake rate and the restart figures."""
        figures = yield self.run_bench(
            "fleet",
            rf"server RSS per connected client{NUMBER}KiB",
            rf"handshake rate{NUMBER}clients/s",
            rf"restart: all reconnected after{NUMBER}s",
            r"refusals and errors while connecting\s+\d+")
        self.assertIn("handshake rate", figures["values"])

    @inlineCallbacks
    def test_latency(self):
        """latency.py prints round trips idle and during bulk, and the drops."""
        yield self.run_bench(
            "latency",
            rf"idle: RTT median{NUMBER}ms",
            rf"during bulk laptop->server: RTT p99{NUMBER}ms",
            rf"during bulk server->laptop: RTT p99{NUMBER}ms",
            r"tunnel drops \(starved keepalive or errors\)\s+\d+")

    def test_figure_pattern(self):
        """The figure pattern matches the benchmarks' number formats, and only them."""
        pattern = re.compile(rf"x{NUMBER}MB/s")
        for text in ("x  1,057 MB/s", "x 0.25 MB/s", "x 12 MB/s"):
            self.assertRegex(text, pattern)
        self.assertNotRegex("x  - MB/s", pattern)
