"""
Throughput of one stream, both directions, through (a) bpctunnel, (b) an
C{ssh -R} tunnel to a local sshd (aes128-gcm) and (c) a direct loopback TCP
connection; MB/s, the ratios a/b and a/c, and CPU seconds per GB of the
server and client processes.

    python bench/throughput.py [--gb 2] [--repeat 1] [--no-ssh] [--quick]

The laptop's end is the raw-byte stand-in for rsync (bench/_standin.py):
bpctunnel's client runs it as it runs rsync; for (b) and (c) it runs
inetd-style on the accepted socket.  BackupPC's end is a TCP client in this
process.  laptop -> server is the direction backups flow.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    GB, MB, BenchError, Profiler, Report, SshTunnel, StandinService, Tunnel, arguments,
    backuppc_pull, backuppc_push, cpu_of, main_wrapper, standin_wrapper, work_dir)

DIRECTIONS = {"laptop->server": backuppc_pull, "server->laptop": backuppc_push}


def measure(port: int, direction: str, nbytes: int, server_pids, client_pids):
    """One transfer: MB/s, and CPU seconds per GB of the server and client processes."""
    servers, clients = server_pids(), client_pids()
    before = cpu_of(servers), cpu_of(clients)
    seconds = DIRECTIONS[direction](port, nbytes)
    # Processes that appeared meanwhile (sshd's session children) count from zero.
    server_cpu = cpu_of(set(servers) | set(server_pids())) - before[0]
    client_cpu = cpu_of(set(clients) | set(client_pids())) - before[1]
    return nbytes / MB / seconds, server_cpu / (nbytes / GB), client_cpu / (nbytes / GB)


def add_options(parser) -> None:
    parser.add_argument("--gb", type=float, default=2.0, help="stream size in GB (default 2)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds (interleaved); the median counts")
    parser.add_argument("--no-ssh", action="store_true", help="skip the ssh -R baseline")


def run() -> None:
    args = arguments(__doc__.strip().splitlines()[0], add_options)
    gb = 0.064 if args.quick else args.gb
    nbytes = int(gb * GB) // 65536 * 65536
    work = work_dir(args, "throughput")
    service = StandinService()
    tunnel = Tunnel(work, standin_wrapper(work), {"docs": work})
    cases = {"bpctunnel": (tunnel.port, lambda: [tunnel.server.pid], lambda: [tunnel.client.pid]),
             "direct": (service.port, list, list)}
    if not args.no_ssh:
        ssh = SshTunnel(work, service.port)
        cases["ssh -R"] = (ssh.port, ssh.server_pids, ssh.client_pids)
    report = Report(f"throughput: one stream of {nbytes / GB:.3f} GB each way, 127.0.0.1"
                    + (f", median of {args.repeat}" if args.repeat > 1 else ""))
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for round_ in range(args.repeat):  # interleaved, so drifting load hits every case
        for direction in DIRECTIONS:
            for name, (port, servers, clients) in cases.items():
                print(f"  {direction:<15} {name:<10} ...", end=" ", flush=True)
                spy = Profiler(args.profile if name == "bpctunnel" else None,
                               f"throughput-{direction}-{round_}",
                               {"server": tunnel.server.pid, "client": tunnel.client.pid})
                runs.setdefault((direction, name), []).append(
                    measure(port, direction, nbytes, servers, clients))
                print(f"{runs[direction, name][-1][0]:,.0f} MB/s", flush=True)
                spy.stop()
    results = {key: tuple(statistics.median(column) for column in zip(*values))
               for key, values in runs.items()}
    for direction in DIRECTIONS:
        for name in cases:
            speed, server_cpu, client_cpu = results[direction, name]
            report.figure(f"{direction} {name}", speed, f"MB/s ({speed * 8 / 1000:.2f} Gbit/s)",
                          "{:,.0f}")
            if name != "direct":
                report.figure(f"{direction} {name} CPU server", server_cpu, "s/GB", "{:.2f}")
                report.figure(f"{direction} {name} CPU client", client_cpu, "s/GB", "{:.2f}")
        ours = results[direction, "bpctunnel"][0]
        if "ssh -R" in cases:
            report.figure(f"{direction} ratio a/b (bpctunnel / ssh -R)",
                          ours / results[direction, "ssh -R"][0], "x", "{:.2f}")
        report.figure(f"{direction} ratio a/c (bpctunnel / direct)",
                      ours / results[direction, "direct"][0], "x", "{:.2f}")
    for direction in DIRECTIONS:
        if "ssh -R" in cases:
            report.target(f"{direction} bpctunnel vs ssh -R",
                          results[direction, "bpctunnel"][0] / results[direction, "ssh -R"][0],
                          ">=", 1.0, "x")
    report.target("laptop->server absolute", results["laptop->server", "bpctunnel"][0] * 8 / 1000,
                  ">=", 1.0, " Gbit/s")
    report.print()
    report.save(args.json)
    for peer in (tunnel.server, tunnel.client):
        if "Traceback" in peer.text():
            raise BenchError(f"a traceback in {peer.log_path}")


if __name__ == "__main__":
    main_wrapper(run)
