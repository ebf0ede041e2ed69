"""
Same-run A/B of each fast path (issue 15): bulk one-way throughput (MiB/s)
and CPU seconds per GiB of the server and client processes, with every fast
path combination: each fast path on against the same tunnel with it off.

    python bench/fast_paths_ab.py [--mib 1024] [--rounds 5] [--direction laptop->server]

One tunnel (server and client twistd processes) per configuration, all
started before measuring; BPCTUNNEL_FAST_PATHS in their environment picks
the configuration (checked in /proc/PID/environ).  Each round moves one
stream through every tunnel in turn, in a rotated order, so drifting load
on a shared machine hits every configuration alike.  Prints per
configuration the median and the spread (min-max) over the rounds, and per
fast path (on top of the others, and alone) the ratios fast/stock of the
medians and of each round's pair.
A fast path pays only if its gain is beyond the spread: its slowest round
faster than the stock path's fastest, or its most CPU-hungry round cheaper
than the stock path's cheapest.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError, Report, Tunnel, arguments, backuppc_pull, backuppc_push, cpu_of,
    main_wrapper, standin_wrapper, work_dir)

from bpctunnel.transport.fast_paths import ENVIRONMENT_VARIABLE, NAMES  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
DIRECTIONS = {"laptop->server": backuppc_pull, "server->laptop": backuppc_push}


def label_of(names) -> str:
    """A configuration's name: the fast paths it has on."""
    if set(names) == set(NAMES):
        return "all"
    return "+".join(sorted(names)) or "none"


def configurations() -> dict[str, str | None]:
    """
    Name -> value of BPCTUNNEL_FAST_PATHS (None: unset, the default) for
    every combination of the fast paths: each one's gain is measured both
    on top of the others and alone.
    """
    found: dict[str, str | None] = {}
    for size in range(len(NAMES), -1, -1):
        for names in itertools.combinations(NAMES, size):
            label = label_of(names)
            found[label] = None if label == "all" else (",".join(names) or "none")
    return found


def comparisons() -> list[tuple[str, str, str]]:
    """(what, fast configuration, stock configuration) for each A/B."""
    pairs = []
    for name in NAMES:
        others = [n for n in NAMES if n != name]
        for size in range(len(others), -1, -1):
            for rest in itertools.combinations(others, size):
                context = ("with " + "+".join(rest)) if rest else "alone"
                what = f"{name} ({context})" if others else name
                pairs.append((what, label_of((*rest, name)), label_of(rest)))
    if len(NAMES) > 1:
        pairs.append(("all fast paths", "all", "none"))
    return pairs


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0")
                if "=" in item)


def start(work: Path, label: str, value: str | None) -> Tunnel:
    """A tunnel whose server and client run with BPCTUNNEL_FAST_PATHS=C{value}."""
    folder = work / label.replace(" ", "-")
    folder.mkdir()
    old = os.environ.pop(ENVIRONMENT_VARIABLE, None)
    if value is not None:
        os.environ[ENVIRONMENT_VARIABLE] = value
    try:
        tunnel = Tunnel(folder, standin_wrapper(folder), {"docs": folder})
    finally:
        os.environ.pop(ENVIRONMENT_VARIABLE, None)
        if old is not None:
            os.environ[ENVIRONMENT_VARIABLE] = old
    for role, proc in (("server", tunnel.server), ("client", tunnel.client)):
        seen = environ_of(proc.pid).get(ENVIRONMENT_VARIABLE)
        if seen != value:
            raise BenchError(f"the {label} {role} runs with {ENVIRONMENT_VARIABLE}={seen!r}, "
                             f"not {value!r}")
    return tunnel


def measure(tunnel: Tunnel, direction: str, nbytes: int) -> dict[str, float]:
    """One transfer: MiB/s, and CPU seconds per GiB of the server, the client and both."""
    before = cpu_of([tunnel.server.pid]), cpu_of([tunnel.client.pid])
    seconds = DIRECTIONS[direction](tunnel.port, nbytes)
    server = cpu_of([tunnel.server.pid]) - before[0]
    client = cpu_of([tunnel.client.pid]) - before[1]
    gib = nbytes / GIB
    return {"MiB/s": nbytes / MIB / seconds, "server CPU s/GiB": server / gib,
            "client CPU s/GiB": client / gib, "total CPU s/GiB": (server + client) / gib}


def spread(values: list[float], fmt: str) -> str:
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def add_options(parser) -> None:
    parser.add_argument("--mib", type=int, default=1024, help="stream size in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds; medians and spread over them (default 5)")
    parser.add_argument("--configs", metavar="A,B",
                        help="measure only these configurations (as named in the output, "
                             "e.g. all,websocket)")
    parser.add_argument("--direction", choices=sorted(DIRECTIONS), default="laptop->server",
                        help="laptop->server (backups; default) or server->laptop")


def run() -> None:
    args = arguments(__doc__.strip().splitlines()[0], add_options)
    mib, rounds = (32, 2) if args.quick else (args.mib, args.rounds)
    nbytes = mib * MIB
    work = work_dir(args, "fast-paths-ab")
    configs = configurations()
    if args.configs:
        wanted = args.configs.split(",")
        unknown = sorted(set(wanted) - set(configs))
        if unknown:
            raise BenchError(f"no configuration {', '.join(unknown)}; "
                             f"there are {', '.join(configs)}")
        configs = {label: value for label, value in configs.items() if label in wanted}
    tunnels = {label: start(work, label, value) for label, value in configs.items()}
    labels = list(configs)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    # One warm-up transfer each (imports, first buffers), not counted.
    for label in labels:
        measure(tunnels[label], args.direction, min(nbytes, 16 * MIB))
    for round_ in range(rounds):
        order = labels[round_ % len(labels):] + labels[:round_ % len(labels)]
        if round_ % 2:
            order.reverse()
        for label in order:
            print(f"  round {round_ + 1}/{rounds} {label:<14} ...", end=" ", flush=True)
            runs[label].append(measure(tunnels[label], args.direction, nbytes))
            print(f"{runs[label][-1]['MiB/s']:,.0f} MiB/s, "
                  f"{runs[label][-1]['total CPU s/GiB']:.2f} CPU s/GiB", flush=True)

    report = Report(f"fast paths A/B: {args.direction}, {mib} MiB per stream, "
                    f"{rounds} interleaved rounds, 127.0.0.1; median (min-max)")
    metrics = ("MiB/s", "server CPU s/GiB", "client CPU s/GiB", "total CPU s/GiB")
    for label in labels:
        env = configs[label]
        report.figure(f"[{label}] {ENVIRONMENT_VARIABLE}",
                      "unset" if env is None else env)
        for metric in metrics:
            values = [r[metric] for r in runs[label]]
            fmt = "{:,.0f}" if metric == "MiB/s" else "{:.2f}"
            report.figure(f"[{label}] {metric}", spread(values, fmt))
            report.values[f"{label} {metric} median"] = statistics.median(values)
            report.values[f"{label} {metric} min"] = min(values)
            report.values[f"{label} {metric} max"] = max(values)
    for what, fast, stock in comparisons():
        if fast not in configs or stock not in configs:
            continue
        for metric in ("MiB/s", "server CPU s/GiB", "client CPU s/GiB", "total CPU s/GiB"):
            a = [r[metric] for r in runs[fast]]
            b = [r[metric] for r in runs[stock]]
            ratio = statistics.median(a) / statistics.median(b)
            paired = [x / y for x, y in zip(a, b)]
            if metric == "MiB/s":
                beyond = min(a) > max(b)
            else:
                beyond = max(a) < min(b)
            report.figure(
                f"{what}: fast/stock {metric}",
                f"{ratio:.3f} (per round {min(paired):.3f}-{max(paired):.3f})"
                f"{'  gain beyond spread' if beyond else ''}")
            report.values[f"{what} fast/stock {metric}"] = ratio
            report.values[f"{what} fast/stock {metric} beyond spread"] = beyond
    report.print()
    report.save(args.json)
    for label, tunnel in tunnels.items():
        for peer in (tunnel.server, tunnel.client):
            if "Traceback" in peer.text():
                raise BenchError(f"a traceback in {peer.log_path} ({label})")


if __name__ == "__main__":
    main_wrapper(run)
