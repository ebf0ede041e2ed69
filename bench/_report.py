"""
Command line, work folder, output (figures, ratios and targets) and
profiling for the benchmarks.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _procs import BenchError, OtherLoad, cleanup, install_cleanup


# -- profiling ---------------------------------------------------------------------

class Profiler:
    """
    C{py-spy record} of some processes while one phase runs (C{--profile DIR}):
    collapsed stacks in DIR/NAME-ROLE.txt (for flamegraph.pl or speedscope),
    and the functions with the most samples printed.  Does nothing without DIR.
    """

    def __init__(self, folder: str | None, name: str, pids: dict[str, int]):
        self.spies: list[tuple[str, Path, subprocess.Popen]] = []
        if not folder:
            return
        exe = shutil.which("py-spy")
        if exe is None:
            raise BenchError("--profile needs py-spy: pip install py-spy")
        Path(folder).mkdir(parents=True, exist_ok=True)
        for role, pid in pids.items():
            out = Path(folder) / f"{name}-{role}.txt".replace(">", "").replace(" ", "_")
            spy = subprocess.Popen([exe, "record", "--nonblocking", "-r", "200", "-f", "raw",
                                    "-o", str(out), "--pid", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.spies.append((role, out, spy))
        time.sleep(0.5)  # py-spy attaches

    def stop(self, top: int = 12) -> None:
        for role, out, spy in self.spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            if out.exists():
                print(f"  profile of {role} ({out}):")
                for line in profile_summary(out, top):
                    print(f"    {line}")


def profile_summary(path: Path, top: int) -> list[str]:
    """The frames with the most samples (self, then inclusive) in a py-spy raw file."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or "Thread._bootstrap" in stack:  # the thread pool waiting
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            if "bpctunnel/" in frame or "autobahn/" in frame or "tls.py" in frame:
                inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        return ["no samples"]
    lines = [f"{total} samples; self:"]
    lines += [f"{100 * n / total:5.1f}% {f}"
              for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines.append("inclusive (bpctunnel, autobahn, TLS):")
    lines += [f"{100 * n / total:5.1f}% {f}"
              for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    return lines


# -- command line and output -------------------------------------------------------

def arguments(description: str, add=None) -> argparse.Namespace:
    """Parse C{--quick}, C{--keep}, C{--json FILE} and what C{add(parser)} adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, a few seconds: proves the benchmark still runs (CI)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy the bpctunnel processes while measuring; stacks to DIR")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to SECONDS until other processes leave the CPUs "
                             "(under 10%% for 5 s): on a shared machine they skew the figures")
    if add is not None:
        add(parser)
    args = parser.parse_args()
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    global _load
    _load = OtherLoad()
    return args


_load: OtherLoad | None = None


def wait_quiet(limit: float) -> None:
    """Wait (up to C{limit} seconds) until other processes use under 10% of the CPUs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        probe = OtherLoad()
        time.sleep(5)
        share = probe.share()
        probe.stop()
        if share < 0.10:
            return
        print(f"  waiting: other processes use {share:.0%} of the CPUs", flush=True)
    print("  the machine is still busy; measuring anyway", flush=True)


def work_dir(args, name: str, base: str | None = None) -> Path:
    """A fresh folder (under C{base} if given), removed at exit unless C{--keep}."""
    path = Path(tempfile.mkdtemp(prefix=f"bpctunnel-bench-{name}-", dir=base))
    path.chmod(0o755)  # rsync's daemon, run as root, reads as "nobody"
    if args.keep:
        print(f"work folder (kept): {path}")
    else:
        atexit.register(shutil.rmtree, path, True)
    return path


class Report:
    """Figures, ratios and targets, printed as a table."""

    def __init__(self, title: str):
        self.title = title
        self.figures: list[tuple[str, str]] = []
        self.targets: list[tuple[bool, str]] = []
        self.values: dict[str, float] = {}

    def figure(self, name: str, value, unit: str = "", fmt: str = "{:,.1f}") -> None:
        if isinstance(value, (int, float)):
            self.values[name] = value
            text = fmt.format(value)
        else:
            text = str(value)
        self.figures.append((name, f"{text} {unit}".rstrip()))

    def target(self, name: str, value: float, op: str, bound: float, unit: str = "",
               fmt: str = "{:,.2f}") -> None:
        met = value >= bound if op == ">=" else value <= bound
        self.targets.append((met, f"{name}: {fmt.format(value)}{unit} "
                                  f"(target {op} {fmt.format(bound)}{unit})"))

    def print(self) -> None:
        width = max((len(n) for n, _ in self.figures), default=10)
        print(f"\n== {self.title} ==")
        for name, text in self.figures:
            print(f"  {name:<{width}}  {text}")
        for met, text in self.targets:
            print(f"  TARGET {'MET   ' if met else 'MISSED'} {text}")
        if _load is not None:
            self.values["other load"] = share = _load.share()
            print(f"  other processes used {share:.0%} of this machine's {os.cpu_count()} CPUs "
                  f"during the run{'; they skew these figures' if share > 0.1 else ''}")
        sys.stdout.flush()

    def save(self, path: str | None) -> None:
        if path:
            Path(path).write_text(json.dumps(
                {"title": self.title, "figures": dict(self.figures), "values": self.values,
                 "targets": [{"met": m, "text": t} for m, t in self.targets]}, indent=1))


def main_wrapper(run) -> None:
    """Run C{run()}; errors print one line (plus logs) and exit 1; always clean up."""
    install_cleanup()
    try:
        run()
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        cleanup()
