"""
The benchmarks' smoke test: each of bench/*.py runs with C{--quick} (tiny
sizes, seconds each) and prints its figures, ratios and target lines.
Timings are never asserted: a missed target is a result, not a failure.

Needs what the benchmarks need: rsync, and for the ssh -R baselines of
throughput.py and long_link.py openssh-server and openssh-client (and root:
long_link.py resets processes' peak RSS through /proc/PID/clear_refs).
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
    def run_bench(self, name: str, *expected: str, options: tuple = ()):
        """
        Run bench/NAME.py --quick (plus C{options}); assert it exits 0, prints
        each regex in C{expected} and the other-load line, and writes its
        figures as JSON.  Fires with the figures; the output is C{self.output}.
        """
        out = temp_dir(self) / f"{name}.json"
        process = spawn(self, [sys.executable, str(PROJECT_ROOT / "bench" / f"{name}.py"),
                               "--quick", *options, "--json", str(out)], cwd=PROJECT_ROOT)
        code = yield process.ended
        self.assertEqual(code, 0, f"bench/{name}.py --quick failed:\n{process.text}")
        for pattern in (*expected, r"TARGET (MET|MISSED) ",
                        r"other processes used \d+% of this machine's \d+ CPUs"):
            self.assertRegex(process.text, pattern)
        figures = json.loads(out.read_text())
        self.assertTrue(figures["targets"], figures)
        self.assertNotIn("Traceback", process.text)
        self.output = process.text
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

    @inlineCallbacks
    def test_long_link(self):
        """
        long_link.py prints a table row per round trip (0 and 30 ms) with
        positive MiB/s for each path, the ratios, the window peak and the
        peak RSS of bpctunnel's and ssh's ends.
        """
        figures = yield self.run_bench(
            "long_link", rf"30 ms ratio bpctunnel / direct{NUMBER}x",
            rf"30 ms ratio bpctunnel / ssh -R{NUMBER}x",
            r"TARGET (MET|MISSED) +bpctunnel / direct at 30 ms: ")
        for rtt in (0, 30):
            row = re.search(rf"^ +{rtt} ms \|(.*)\|$", self.output, re.MULTILINE)
            self.assertIsNotNone(row, f"no table row for {rtt} ms:\n{self.output}")
            cells = [cell.strip() for cell in row.group(1).split("|")]
            # 4 speeds (bpctunnel, its window held at 1 MiB, ssh -R, direct),
            # 2 ratios, the window, 3 RSS pairs
            self.assertEqual(len(cells), 10, cells)
            numbers = [float(n) for cell in cells[:6] + cells[7:] for n in re.findall(
                r"\d+(?:\.\d+)?", cell)]
            self.assertEqual(len(numbers), 12, cells)
            self.assertTrue(all(n > 0 for n in numbers), cells)
            self.assertRegex(cells[6], r"^\d+\.\d\d MiB$")
            for path in ("bpctunnel", "fixed 1 MiB", "ssh -R", "direct"):
                self.assertGreater(figures["values"][f"{rtt} ms {path} MiB/s"], 0)
            for end in ("server", "client"):
                # a twistd process, whole: tens of MiB, far from 0 and from a GiB
                rss = figures["values"][f"{rtt} ms bpctunnel peak RSS {end}"]
                self.assertTrue(10 * 2**20 < rss < 2**30, rss)

    @inlineCallbacks
    def test_long_link_slow_reader(self):
        """long_link.py --slow-reader prints each end's RSS growth, and how much was read."""
        figures = yield self.run_bench(
            "long_link",
            *(rf"100 ms {path} {end} RSS growth, max\s+-?[\d,]+\.\d MiB"
              for path in ("bpctunnel", "ssh -R") for end in ("server", "client")),
            rf"100 ms direct read{NUMBER}MB",
            r"TARGET (MET|MISSED) +100 ms bpctunnel server RSS growth: ",
            options=("--slow-reader",))
        for path in ("bpctunnel", "ssh -R", "direct"):
            self.assertGreater(figures["values"][f"100 ms {path} read"], 0)

    def test_figure_pattern(self):
        """The figure pattern matches the benchmarks' number formats, and only them."""
        pattern = re.compile(rf"x{NUMBER}MB/s")
        for text in ("x  1,057 MB/s", "x 0.25 MB/s", "x 12 MB/s"):
            self.assertRegex(text, pattern)
        self.assertNotRegex("x  - MB/s", pattern)
