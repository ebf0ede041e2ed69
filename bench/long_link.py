"""
Pulls over a long link: one large random file with the real rsync through
(a) bpctunnel, (a') bpctunnel with its windows held at 1 MiB (C{--max-window
1}: as before issue 17, in the same run), (b) C{ssh -R} (aes128-gcm) and (c)
a direct C{rsync --daemon}, each crossing the same delaying relay, at
several round trips; MiB/s, the ratios, bpctunnel's peak channel window and
each path's peak RSS.

    python bench/long_link.py [--rtts 0,30,100,200] [--size 200] [--rounds 1]
                              [--paths bpctunnel,fixed,ssh,direct] [--rate BYTES/S] [--quick]
    python bench/long_link.py --slow-reader [--size 2048] [--slow-seconds 60]

The relay (bench/_relay.py, a process of its own) holds every chunk for
half the round trip each way, keeping a whole bandwidth-delay product in
flight, and sits where the Internet would: between bpctunnel's client and
the server's wss port; between C{ssh -R} (the laptop's side) and an sshd
with throwaway keys; between BackupPC's rsync and the laptop's rsyncd.  The
relay ends TCP at loopback speed on both sides, so the direct pull is bound
by the relay's queue (64 MiB a direction), not by TCP's window as on a real
line: it is the path's upper bound.  The pull is C{rsync -a
rsync://127.0.0.1:PORT/tree/ DEST/} (bench/rsync_pull.py's) into /dev/shm;
rounds interleave the paths and the median counts.  Peak RSS is VmHWM,
reset before each pull, of the bpctunnel server and client processes and of
sshd's session processes and ssh (rsync's own and the relay's are left out).
The window is the server's C{bpctunnel_window_peak_bytes} metric.

C{--slow-reader}: BackupPC's side reads at 1 MB/s (C{--slow-seconds}, then
hangs up) while the laptop's side offers C{--size} (2 GiB) through each
path at 100 ms; the laptop's end is the raw-byte stand-in
(bench/_standin.py).  Prints each end's RSS growth over its start, every
second, and the largest.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError, Proc, Profiler, Report, Sandbox, SshTunnel, StandinService, Tunnel, arguments,
    free_port, main_wrapper, peak_rss_bytes, reset_peak_rss, rss_bytes, standin_wrapper,
    wait_listening, work_dir)
from _relay import RelayProcess  # noqa: E402
from rsync_pull import RSYNC, pull, tree_size  # noqa: E402

from bpctunnel.admin.api_client import api_connection  # noqa: E402
from bpctunnel.testing.sandbox import rsyncd_conf_text  # noqa: E402

MIB = 1024 * 1024
NAMES = {"bpctunnel": "bpctunnel", "fixed": "fixed 1 MiB", "ssh": "ssh -R",
         "direct": "direct"}
#: A per-channel window peak, however the server names it.
WINDOW_METRIC = re.compile(r"^(bpctunnel_\w*window\w*)(?:\{[^}]*\})?\s+(\S+)$", re.MULTILINE)
SLOW_RATE = 1e6


class Case:
    """One path from BackupPC's side to the laptop's: its port, and whose memory counts."""

    def __init__(self, name: str, port: int, servers=lambda: [], clients=lambda: [],
                 sandbox=None):
        self.name, self.port = name, port
        self.servers, self.clients = servers, clients
        #: Whose rsync secrets the pull sends (a tunnel's own), if not the first tunnel's.
        self.sandbox = sandbox


def make_file(path: Path, nbytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = nbytes
        while left:
            block = os.urandom(min(left, 4 * MIB))
            f.write(block)
            left -= len(block)


def window_peak(tunnel: Tunnel) -> tuple[float, str] | None:
    """The largest window peak the server reports (bytes) and its metric, or None."""
    conn, prefix = api_connection(tunnel.api_url, 10)
    try:
        conn.request("GET", f"{prefix}/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = [(float(value), name) for name, value in WINDOW_METRIC.findall(text)
             if "peak" in name or "max" in name]
    return max(found) if found else None


def peaks_reset(pids: list[int]) -> None:
    for pid in pids:
        if not reset_peak_rss(pid):
            raise BenchError(f"cannot reset VmHWM of process {pid} (/proc/PID/clear_refs): "
                             f"run as root")


def peak_of(pids: list[int]) -> int:
    return sum(peak_rss_bytes(pid) for pid in pids)


def rss_of(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def spread(values: list[float]) -> str:
    """Half the range as a share of the median (' ±3%'), or nothing for one value."""
    if len(values) < 2:
        return ""
    return f" ±{50 * (max(values) - min(values)) / statistics.median(values):.0f}%"


def add_options(parser) -> None:
    parser.add_argument("--rtts", default=None,
                        help="round trips in ms (0,30,100,200; --slow-reader: 100)")
    parser.add_argument("--size", type=float, default=None,
                        help="MiB to pull (200; --slow-reader: 2048 offered)")
    parser.add_argument("--paths", default="bpctunnel,fixed,ssh,direct",
                        help="of bpctunnel,fixed (its window held at 1 MiB, as before "
                             "issue 17),ssh,direct (all)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds per round trip, paths interleaved; the median counts")
    parser.add_argument("--rate", type=float, default=0,
                        help="the link's rate each way in bytes/s (default: unlimited)")
    parser.add_argument("--slow-reader", action="store_true",
                        help="BackupPC's side reads at 1 MB/s: memory of each end")
    parser.add_argument("--slow-seconds", type=float, default=None,
                        help="how long the slow reader reads (60; --quick: 5)")


def settle(args) -> tuple[list[int], list[str], int]:
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(NAMES)
    if unknown or not paths:
        raise BenchError(f"--paths takes some of {','.join(NAMES)}, not {args.paths!r}")
    if args.quick and not args.slow_reader:
        args.rtts = args.rtts or "0,30"
        args.size = args.size or 16
        args.rounds = 1
    default_rtts, default_size = ("100", 2048) if args.slow_reader else ("0,30,100,200", 200)
    rtts = [int(r) for r in (args.rtts or default_rtts).split(",")]
    if args.slow_seconds is None:
        args.slow_seconds = 5 if args.quick else 60
    return rtts, paths, int((args.size or default_size) * MIB)


def run() -> None:
    started = time.monotonic()
    args = arguments(__doc__.strip().splitlines()[0], add_options)
    rtts, names, nbytes = settle(args)
    # In memory: a disk's writeback would blur the pulls.
    work = work_dir(args, "long-link", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    relay = RelayProcess(work / "relay.log")
    if args.slow_reader:
        slow_reader(args, work, relay, rtts, names, nbytes)
    else:
        pulls(args, work, relay, rtts, names, nbytes)
    print(f"  run took {time.monotonic() - started:.0f} s")


def laptop_side(work: Path, relay: RelayProcess, names: list[str], rsync, modules,
                laptop_port: int) -> tuple[dict[str, Case], Tunnel | None]:
    """Each path's BackupPC-side port, all crossing the relay toward C{laptop_port}."""
    paths, tunnel = {}, None
    if "bpctunnel" in names:
        tunnel = Tunnel(work, rsync, modules, via=relay.route)
        paths["bpctunnel"] = Case("bpctunnel", tunnel.port, lambda: [tunnel.server.pid],
                                   lambda: [tunnel.client.pid])
    if "fixed" in names:
        # The same code with the window held at its base (--max-window 1):
        # the tunnel as it was before issue 17, measured in the same run.
        (work / "fixed").mkdir(exist_ok=True)
        fixed = Tunnel(work / "fixed", rsync, modules, server_args=("--max-window", "1"),
                       via=relay.route)
        paths["fixed"] = Case("fixed 1 MiB", fixed.port, lambda: [fixed.server.pid],
                              lambda: [fixed.client.pid], fixed.sandbox)
    if "ssh" in names:
        ssh = SshTunnel(work, laptop_port, via=relay.route)
        paths["ssh"] = Case("ssh -R", ssh.port, lambda: ssh.sshd.tree()[1:],
                             lambda: [ssh.ssh.pid])
    if "direct" in names:
        paths["direct"] = Case("direct", relay.route(laptop_port))
    return {name: paths[name] for name in names}, tunnel


def pulls(args, work: Path, relay: RelayProcess, rtts, names, nbytes) -> None:
    tree = work / "tree"
    print(f"  making a {nbytes / MIB:g} MiB random file ...", flush=True)
    make_file(tree / "big.bin", nbytes)
    expected = tree_size(tree)
    conf = work / "rsyncd.conf"
    conf.write_text(rsyncd_conf_text({"tree": tree}))
    rsyncd_port = free_port()
    daemon = Proc([RSYNC, "--daemon", "--no-detach", "--address=127.0.0.1",
                   f"--port={rsyncd_port}", f"--config={conf}"], work / "rsyncd.log")
    wait_listening(rsyncd_port, daemon)
    paths, tunnel = laptop_side(work, relay, names, RSYNC, {"tree": tree}, rsyncd_port)
    sandbox = tunnel.sandbox if tunnel else Sandbox.create(work / "sandbox")
    # (rtt, name) -> [(MiB/s, server peak RSS, client peak RSS)]; rtt -> window peak
    runs: dict[tuple[int, str], list[tuple[float, int, int]]] = {}
    windows: dict[int, tuple[float, str] | None] = {}
    capped: list[str] = []
    for rtt in rtts:
        relay.set(rtt / 2000, rtt / 2000, args.rate)
        for round_ in range(args.rounds):  # interleaved, so drifting load hits every path
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                path = paths[name]
                dest = work / "dest"
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                servers, clients = path.servers(), path.clients()
                peaks_reset(servers + clients)
                relay.stats()  # restarts its queue peak
                spy = Profiler(args.profile if name == "bpctunnel" else None,
                               f"long-link-{rtt}ms-{round_}",
                               {"server": tunnel.server.pid, "client": tunnel.client.pid}
                               if tunnel else {})
                seconds = pull(path.port, dest, path.sandbox or sandbox)
                spy.stop()
                if tree_size(dest) != expected:
                    raise BenchError(f"{path.name}: pulled {tree_size(dest)} (files, bytes), "
                                     f"expected {expected}")
                # sshd's session processes may have come and gone: count those alive now.
                servers = [p for p in servers if Path(f"/proc/{p}").exists()]
                speed = nbytes / MIB / seconds
                runs.setdefault((rtt, name), []).append(
                    (speed, peak_of(servers), peak_of(clients)))
                queue = relay.stats()
                # A full queue bounds a pull at cap / one-way delay; near that, the
                # relay (not the path) is what the figure measures.
                if rtt and speed * MIB >= 0.8 * queue["cap"] / (rtt / 2000):
                    capped.append(f"{path.name} at {rtt} ms")
                print(f"  {rtt:>3} ms  round {round_ + 1}  {path.name:<9} {speed:8.1f} MiB/s "
                      f"({seconds:.1f} s, relay queue peak {queue['peak_queued'] / MIB:.1f} MiB)",
                      flush=True)
        windows[rtt] = window_peak(tunnel) if tunnel else None
    report_pulls(args, rtts, names, paths, runs, windows, capped, nbytes)
    if tunnel:
        for peer in (tunnel.server, tunnel.client):
            if "Traceback" in peer.text():
                raise BenchError(f"a traceback in {peer.log_path}")


def report_pulls(args, rtts, names, paths, runs, windows, capped, nbytes) -> None:
    report = Report(f"long link: rsync pull of one {nbytes / MIB:g} MiB random file through a "
                    f"delaying relay{f' at {args.rate / 1e6:g} MB/s' if args.rate else ''}"
                    + (f", median of {args.rounds}" if args.rounds > 1 else ""))
    median = {key: statistics.median(r[0] for r in value) for key, value in runs.items()}
    ours = "bpctunnel" in names

    def ratio(rtt, other):
        if ours and other in names:
            return median[rtt, "bpctunnel"] / median[rtt, other]
        return None

    rss_paths = [n for n in names if n != "direct"]
    head = (f"  {'RTT':>6} |" + "".join(f" {paths[n].name + ' MiB/s':>16} |" for n in names)
            + f" {'bpc/direct':>10} | {'bpc/ssh':>7} | {'window peak':>11} |"
            + "".join(f" {paths[n].name + ' RSS srv/cli':>22} |" for n in rss_paths))
    print(f"\n{head}\n  {'-' * (len(head) - 2)}")
    for rtt in rtts:
        cells = [f"{median[rtt, n]:.1f}{spread([r[0] for r in runs[rtt, n]])}" for n in names]
        window = windows[rtt]
        row = (f"  {rtt:>3} ms |" + "".join(f" {c:>16} |" for c in cells)
               + "".join(f" {'-' if r is None else f'{r:.2f}':>{w}} |"
                         for r, w in ((ratio(rtt, "direct"), 10), (ratio(rtt, "ssh"), 7)))
               + f" {'n/a' if window is None else f'{window[0] / MIB:.2f} MiB':>11} |")
        for n in rss_paths:
            server = max(r[1] for r in runs[rtt, n]) / MIB
            client = max(r[2] for r in runs[rtt, n]) / MIB
            row += f" {f'{server:.1f} / {client:.1f} MiB':>22} |"
        print(row)
    for rtt in rtts:
        for n in names:
            report.values[f"{rtt} ms {paths[n].name} MiB/s"] = median[rtt, n]
        for n in rss_paths:
            report.values[f"{rtt} ms {paths[n].name} peak RSS server"] = max(
                r[1] for r in runs[rtt, n])
            report.values[f"{rtt} ms {paths[n].name} peak RSS client"] = max(
                r[2] for r in runs[rtt, n])
        for other in ("direct", "ssh", "fixed"):
            if ratio(rtt, other) is not None:
                report.figure(f"{rtt} ms ratio bpctunnel / {NAMES[other]}", ratio(rtt, other),
                              "x", "{:.2f}")
        if windows[rtt] is not None:
            report.figure(f"{rtt} ms peak channel window", windows[rtt][0] / MIB, "MiB", "{:.2f}")
    reported = [w[1] for w in windows.values() if w is not None]
    if reported:
        report.figure("peak channel window from", f"{reported[0]} (after each round trip's "
                      f"pulls; a peak since the server started grows only)")
    elif ours:
        report.figure("peak channel window", "n/a (the server reports no "
                      "bpctunnel_*window*peak* metric)")
    for rtt in rtts:
        if rtt >= 30 and ratio(rtt, "direct") is not None:
            report.target(f"bpctunnel / direct at {rtt} ms", ratio(rtt, "direct"), ">=", 0.9, "x")
        if rtt == 100 and ratio(rtt, "ssh") is not None:
            report.target(f"bpctunnel / ssh -R at {rtt} ms", ratio(rtt, "ssh"), ">=", 2.0, "x")
    for what in capped:
        report.figure(f"relay-bound ({what})", "near the relay's queue cap / one-way delay")
    report.print()
    report.save(args.json)


def slow_read(port: int, nbytes: int, seconds: float, ends: dict[str, list[int]]):
    """
    Ask the stand-in for C{nbytes}, read them at 1 MB/s for C{seconds} and
    hang up; the RSS growth of each end's processes at each second, and bytes read.
    """
    start = {end: rss_of(pids) for end, pids in ends.items()}
    samples: dict[str, list[int]] = {end: [] for end in ends}
    got = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"send {nbytes}\n".encode())
        began = time.monotonic()
        next_sample = began + 1
        while (now := time.monotonic()) < began + seconds and got < nbytes:
            if now >= next_sample:
                for end, pids in ends.items():
                    samples[end].append(rss_of(pids) - start[end])
                next_sample += 1
            allowed = int(SLOW_RATE * (now - began)) - got
            if allowed <= 0:
                time.sleep(min(0.01, next_sample - now))
                continue
            s.settimeout(max(0.01, next_sample - now))
            try:
                data = s.recv(min(allowed, 65536))
            except socket.timeout:
                continue
            if not data:
                raise BenchError(f"the stream ended after {got} of {nbytes} bytes")
            got += len(data)
        for end, pids in ends.items():  # at hanging up
            samples[end].append(rss_of(pids) - start[end])
    return samples, got


def slow_reader(args, work: Path, relay: RelayProcess, rtts, names, nbytes) -> None:
    service = StandinService()
    paths, tunnel = laptop_side(work, relay, names, standin_wrapper(work), {"docs": work},
                                service.port)
    report = Report(f"slow reader: BackupPC's side reads at {SLOW_RATE / 1e6:g} MB/s for "
                    f"{args.slow_seconds:g} s while the laptop offers {nbytes / MIB:g} MiB")
    for rtt in rtts:
        relay.set(rtt / 2000, rtt / 2000, args.rate)
        for name in names:
            path = paths[name]
            ends = {"server": path.servers(), "client": path.clients()}
            ends = {end: pids for end, pids in ends.items() if pids}
            samples, got = slow_read(path.port, nbytes, args.slow_seconds, ends)
            print(f"  {rtt} ms {path.name}: read {got / 1e6:.1f} MB; RSS growth (MiB) "
                  f"each second and at hanging up:", flush=True)
            if not samples:
                print("    (no process of its own between the ends)")
            for end, growth in samples.items():
                for first in range(0, len(growth), 20):  # 20 seconds a line
                    print(f"    {end if first == 0 else '':<6} "
                          + " ".join(f"{g / MIB:.1f}" for g in growth[first:first + 20]))
                largest = max(growth, default=0) / MIB
                report.figure(f"{rtt} ms {path.name} {end} RSS growth, max", largest, "MiB",
                              "{:.1f}")
                if name == "bpctunnel":
                    report.target(f"{rtt} ms bpctunnel {end} RSS growth", largest, "<=", 64,
                                  " MiB", "{:.1f}")
            report.figure(f"{rtt} ms {path.name} read", got / 1e6, "MB", "{:.1f}")
    report.print()
    report.save(args.json)


if __name__ == "__main__":
    main_wrapper(run)
