"""
A real rsync pull of a tree (many small files, a few large ones) through
bpctunnel and directly from a local C{rsync --daemon}: the ratio of wall times.

    python bench/rsync_pull.py [--small 10000] [--large 3] [--large-mb 256] [--repeat 3] [--quick]

Both serve the same module from the same rsyncd.conf; the client is
C{rsync -a rsync://127.0.0.1:PORT/tree/ DEST/}, as BackupPC's rsyncd transfer
connects.  Each round pulls into an empty folder ("full") and then again
into the same folder ("unchanged": file lists only, like an incremental
with nothing new); the cases alternate and the median counts.  Tree and
copies live in /dev/shm when it exists, so the disk does not blur the ratio.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    GB, MB, BenchError, Proc, Profiler, Report, Tunnel, arguments, cpu_of, free_port,
    main_wrapper, wait_listening, work_dir)

RSYNC = shutil.which("rsync") or "/usr/bin/rsync"


def make_tree(root: Path, small: int, large: int, large_bytes: int) -> tuple[int, int]:
    """C{small} files of 0-32 KiB in 100 folders plus C{large} files; (files, bytes)."""
    rng = random.Random(8)
    total = 0
    for i in range(small):
        folder = root / f"dir{i % 100:02d}" / f"sub{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randrange(0, 32768))
        (folder / f"file{i:05d}.dat").write_bytes(data)
        total += len(data)
    block = rng.randbytes(1 << 22)
    for i in range(large):
        with (root / f"large{i}.bin").open("wb") as f:
            left = large_bytes
            salt = 0
            while left:
                # A counter in every block, so no two blocks are alike.
                chunk = salt.to_bytes(8, "big") + block[8:min(left, len(block))]
                f.write(chunk)
                left -= len(chunk)
                salt += 1
        total += large_bytes
    return small + large, total


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def pull(port: int, dest: Path, sandbox) -> float:
    """One rsync pull, with the host's secret where the daemon behind C{port} asks for it."""
    started = time.perf_counter()
    done = subprocess.run([RSYNC, "-a", sandbox.rsync_url(port, "tree/"), f"{dest}/"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=sandbox.rsync_env(port, dict(os.environ)))
    if done.returncode != 0:
        raise BenchError(f"rsync from port {port} exited {done.returncode}: {done.stdout[-2000:]}")
    return time.perf_counter() - started


def add_options(parser) -> None:
    parser.add_argument("--small", type=int, default=10000, help="small files (default 10000)")
    parser.add_argument("--large", type=int, default=3, help="large files (default 3)")
    parser.add_argument("--large-mb", type=int, default=256, help="MB per large file (256)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median counts")


def run() -> None:
    args = arguments(__doc__.strip().splitlines()[0], add_options)
    if args.quick:
        args.small, args.large, args.large_mb, args.repeat = 300, 1, 8, 1
    # In memory when possible: the disk's writeback would swamp the difference.
    work = work_dir(args, "rsync", "/dev/shm" if os.path.isdir("/dev/shm") else None)
    tree = work / "tree"
    print(f"  making the tree: {args.small} small files, {args.large} x {args.large_mb} MB ...",
          flush=True)
    expected = make_tree(tree, args.small, args.large, args.large_mb * 1024 * 1024)
    tunnel = Tunnel(work, RSYNC, {"tree": tree})
    conf = tunnel.sandbox.root / "clients" / tunnel.host / "rsyncd.conf"  # the same file
    direct_port = free_port()
    daemon = Proc([RSYNC, "--daemon", "--no-detach", "--address=127.0.0.1",
                   f"--port={direct_port}", f"--config={conf}"], work / "rsyncd.log")
    wait_listening(direct_port, daemon)
    cases = {"direct rsync --daemon": direct_port, "bpctunnel": tunnel.port}
    times: dict[tuple[str, str], list[float]] = {}
    cpu: list[tuple[float, float]] = []
    for round_ in range(args.repeat):
        order = list(cases.items()) if round_ % 2 == 0 else list(cases.items())[::-1]
        for name, port in order:
            dest = work / "dest"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            before = cpu_of([tunnel.server.pid]), cpu_of([tunnel.client.pid])
            spy = Profiler(args.profile if name == "bpctunnel" else None, f"rsync-{round_}",
                           {"server": tunnel.server.pid, "client": tunnel.client.pid})
            full = pull(port, dest, tunnel.sandbox)
            spy.stop()
            if name == "bpctunnel":
                cpu.append((cpu_of([tunnel.server.pid]) - before[0],
                            cpu_of([tunnel.client.pid]) - before[1]))
            got = tree_size(dest)
            if got != expected:
                raise BenchError(f"{name}: pulled {got} (files, bytes), expected {expected}")
            unchanged = pull(port, dest, tunnel.sandbox)
            times.setdefault((name, "full"), []).append(full)
            times.setdefault((name, "unchanged"), []).append(unchanged)
            print(f"  round {round_ + 1} {name:<22} full {full:6.2f} s, unchanged "
                  f"{unchanged:5.2f} s", flush=True)
    report = Report(f"rsync pull of {expected[0]:,} files, {expected[1] / GB:.2f} GB, 127.0.0.1 "
                    f"(median of {args.repeat})")
    median = {key: statistics.median(value) for key, value in times.items()}
    for kind in ("full", "unchanged"):
        for name in cases:
            extra = f"({expected[1] / MB / median[name, kind]:,.0f} MB/s)" if kind == "full" else ""
            report.figure(f"{kind} pull, {name}", median[name, kind], f"s {extra}", "{:.2f}")
        report.figure(f"{kind} pull ratio bpctunnel / direct",
                      median["bpctunnel", kind] / median["direct rsync --daemon", kind], "x",
                      "{:.3f}")
    server_cpu, client_cpu = (statistics.median(c) for c in zip(*cpu))
    report.figure("bpctunnel CPU per full pull, server", server_cpu, "s", "{:.2f}")
    report.figure("bpctunnel CPU per full pull, client", client_cpu, "s", "{:.2f}")
    report.target("full pull, bpctunnel / direct",
                  median["bpctunnel", "full"] / median["direct rsync --daemon", "full"],
                  "<=", 1.10, "x", "{:.3f}")
    report.print()
    report.save(args.json)


if __name__ == "__main__":
    main_wrapper(run)
