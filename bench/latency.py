"""
Round trips through the tunnel (C{bpctunnel ping}'s PING/PONG), idle and
while a bulk transfer saturates the same tunnel in either direction:
keepalive and ping must not starve behind bulk data.

    python bench/latency.py [--samples 200] [--interval 0.05] [--keepalive 5] [--quick]

Each sample is one C{POST /api/v1/tunnels/HOST/ping?count=1} to the
server's status API (what C{bpctunnel ping} calls); the RTT is the server's
own measurement, from sending PING to receiving PONG.  Both sides use a
short keepalive, so a starved WebSocket ping would drop the tunnel, which
is counted.  The bulk stream is the raw-byte stand-in for rsync, as in
throughput.py.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MB, PROJECT_ROOT, BenchError, Report, Tunnel, arguments, main_wrapper, project_env,
    standin_wrapper, work_dir)
from bpctunnel.admin.api_client import api_connection  # noqa: E402

ENDLESS = 10**15


class Bulk:
    """A transfer through the tunnel that runs until stopped; counts bytes."""

    def __init__(self, port: int, direction: str):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.bytes = 0
        self.error: Exception | None = None
        self._stop = threading.Event()
        upload = direction == "laptop->server"
        self.sock.sendall(f"{'send' if upload else 'receive'} {ENDLESS}\n".encode())
        self._thread = threading.Thread(target=self._read if upload else self._write, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        view = memoryview(bytearray(1 << 20))
        try:
            while not self._stop.is_set():
                n = self.sock.recv_into(view)
                if not n:
                    if not self._stop.is_set():
                        raise BenchError("the bulk stream ended early")
                    return
                self.bytes += n
        except Exception as e:
            self.error = e

    def _write(self) -> None:
        block = memoryview(os.urandom(1 << 20))
        try:
            while not self._stop.is_set():
                self.sock.sendall(block)
                self.bytes += len(block)
        except Exception as e:
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self.sock.close()
        if self.error is not None and not isinstance(self.error, OSError):
            raise BenchError(f"bulk transfer failed: {self.error}")


class Pinger:
    """One ping through the tunnel per call, via the server's status API."""

    def __init__(self, api_url: str, host: str):
        self.conn, prefix = api_connection(api_url, 30)
        self.path = f"{prefix}/api/v1/tunnels/{host}/ping?count=1&timeout=10"

    def __call__(self) -> float | None:
        self.conn.request("POST", self.path)
        response = self.conn.getresponse()
        body = json.loads(response.read())
        if response.status == 504:
            return None
        if response.status != 200:
            raise BenchError(f"ping API answered {response.status}: {body}")
        return body["rtt_ms"][0]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ping_command(tunnel: Tunnel) -> str:
    """The output of C{bpctunnel ping HOST --api URL}, the command BackupPC runs."""
    done = subprocess.run([sys.executable, "-m", "bpctunnel", "ping", tunnel.host,
                           "--api", tunnel.api_url, "--count", "3"],
                          capture_output=True, text=True, env=project_env(), timeout=60,
                          cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise BenchError(f"bpctunnel ping exited {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def add_options(parser) -> None:
    parser.add_argument("--samples", type=int, default=200, help="pings per phase (200)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between pings")
    parser.add_argument("--keepalive", type=float, default=5.0,
                        help="keepalive of server and client, seconds (5)")


def run() -> None:
    args = arguments(__doc__.strip().splitlines()[0], add_options)
    if args.quick:
        args.samples, args.interval = 20, 0.02
    work = work_dir(args, "latency")
    tunnel = Tunnel(work, standin_wrapper(work), {"docs": work}, keepalive=args.keepalive)
    ping = Pinger(tunnel.api_url, tunnel.host)
    report = Report(f"ping round trips through the tunnel, {args.samples} per phase, "
                    f"keepalive {args.keepalive:g} s, 127.0.0.1")
    rtts: dict[str, list[float]] = {}
    for phase in ("idle", "laptop->server", "server->laptop"):
        bulk = Bulk(tunnel.port, phase) if phase != "idle" else None
        time.sleep(0.5 if args.quick else 2.0)  # let the stream reach full speed
        sent_before, started = (bulk.bytes if bulk else 0), time.perf_counter()
        samples, lost = [], 0
        for _ in range(args.samples):
            rtt = ping()
            if rtt is None:
                lost += 1
            else:
                samples.append(rtt)
            time.sleep(args.interval)
        command = ping_command(tunnel)
        name = "idle" if bulk is None else f"during bulk {phase}"
        if bulk is not None:
            rate = (bulk.bytes - sent_before) / MB / (time.perf_counter() - started)
            bulk.stop()
            report.figure(f"{name}: bulk rate while pinging", rate, "MB/s", "{:,.0f}")
        if not samples:
            raise BenchError(f"{name}: no ping was answered")
        rtts[name] = samples
        for label, value in (("min", min(samples)), ("median", statistics.median(samples)),
                             ("p95", percentile(samples, 95)), ("p99", percentile(samples, 99)),
                             ("max", max(samples))):
            report.figure(f"{name}: RTT {label}", value, "ms", "{:.2f}")
        report.figure(f"{name}: pings lost (10 s timeout)", lost, "", "{:d}")
        report.figure(f"{name}: bpctunnel ping", command)
        print(f"  {name}: median {statistics.median(samples):.2f} ms, max {max(samples):.2f} ms",
              flush=True)
        time.sleep(0.5)
    drops = tunnel.tunnel_drops()
    report.figure("tunnel drops (starved keepalive or errors)", drops, "", "{:d}")
    for name, samples in rtts.items():
        if name != "idle":
            report.target(f"RTT p99 {name}", percentile(samples, 99), "<=", 50, " ms")
            report.target(f"RTT max {name}", max(samples), "<=", 50, " ms")
    report.target("tunnel drops", drops, "<=", 0, "", "{:d}")
    report.print()
    report.save(args.json)


if __name__ == "__main__":
    main_wrapper(run)
