"""
K clients connect to one server: server RSS per connected client, handshake
rate, the time for all to reconnect after a server restart, and the number
of refusals and errors (must be 0).

    python bench/fleet.py [--clients 1000] [--concurrency 32] [--one-address] [--quick]

The server is a twistd process (its RSS is read from /proc); the clients are
the real TunnelClientProtocol/TunnelClientFactory/TunnelClientService, each
with its own certificate and host config (port 20000 and up), all in this
process's reactor.  Each client connects from its own loopback address
(127.1.x.y), as laptops do from their own networks; C{--one-address} puts
them all on 127.0.0.1, where the server's per-address limit on connections
that have not authenticated yet applies.  Clients start with at most
C{--concurrency} handshakes in flight; after the restart they reconnect on
their own, with their normal retry policy (first retry 0.5-1.5 s, doubling).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError, Profiler, Report, arguments, cpu_seconds, main_wrapper, raise_nofile,
    rss_bytes, twistd, work_dir)
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS  # noqa: E402
from twisted.internet.task import LoopingCall, deferLater  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from bpctunnel import pki  # noqa: E402
from bpctunnel.client.protocol import TunnelClientFactory, TunnelClientService  # noqa: E402
from bpctunnel.client.config import ClientConfig  # noqa: E402
from bpctunnel.testing.sandbox import HOSTS_HEADER, Sandbox, host_config_text  # noqa: E402
from bpctunnel.transport.tls import client_tls_options_from  # noqa: E402

FIRST_PORT = 20000


def free_ports(count: int) -> list[int]:
    """C{count} ports from FIRST_PORT up that 127.0.0.1 can bind now."""
    ports, port = [], FIRST_PORT
    while len(ports) < count:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
        if port > 65535:
            raise BenchError(f"only {len(ports)} free ports from {FIRST_PORT} up")
    return ports


def source_address(i: int) -> str:
    return f"127.{1 + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 1}"


class CountingEndpoint:
    """An endpoint that reports every failed connection attempt."""

    def __init__(self, inner, fleet, index: int):
        self.inner, self.fleet, self.index = inner, fleet, index

    def connect(self, factory):
        return self.inner.connect(factory).addErrback(self._failed)

    def _failed(self, failure):
        self.fleet.failure(self.index, f"connect: {failure.getErrorMessage()}")
        return failure


class Fleet:
    """K clients in this reactor, and what happened to them."""

    def __init__(self, sandbox: Sandbox, url: str, wss_port: int, bundles, one_address: bool):
        self.opened_at: dict[int, float] = {}  # index -> last "open"
        self.started_at: dict[int, float] = {}
        self.failures: list[tuple[float, int, str]] = []
        self.drops: list[tuple[float, int, str]] = []
        self.services = []
        for i, (host, bundle) in enumerate(bundles):
            tls = client_tls_options_from("127.0.0.1", sandbox.ca.cert_pem, bundle.cert_pem,
                                          bundle.key_pem)
            config = ClientConfig(server=url, server_host="127.0.0.1", server_port=wss_port,
                                  ca=Path("ca.crt"), cert=Path("c.crt"), key=Path("c.key"),
                                  rsyncd_conf=Path("rsyncd.conf"), rsync="/bin/false", host=host)
            factory = TunnelClientFactory(reactor, config, accept_channel=self._no_channels)
            factory.observers.append(lambda kind, proto, detail, i=i: self._event(i, kind, detail))
            bind = ("127.0.0.1" if one_address else source_address(i), 0)
            endpoint = CountingEndpoint(
                wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", wss_port,
                                                      bindAddress=bind)), self, i)
            self.services.append(TunnelClientService(endpoint, factory, reactor))

    @staticmethod
    def _no_channels(channel):
        channel.reset("the fleet benchmark carries no connections")

    def _event(self, i: int, kind: str, detail) -> None:
        if kind == "open":
            self.opened_at[i] = time.monotonic()
        elif kind == "closed":
            if self.opened_at.pop(i, None) is not None:
                self.drops.append((time.monotonic(), i, str(detail)))
            else:
                self.failure(i, f"tunnel: {detail}")

    def failure(self, i: int, what: str) -> None:
        self.failures.append((time.monotonic(), i, what))

    def start(self, i: int) -> None:
        self.started_at[i] = time.monotonic()
        self.services[i].startService()


async def until(predicate, timeout: float, what: str, step: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, step, lambda: None)
    return time.monotonic()


def server_argv(sandbox: Sandbox, listen: str) -> list:
    return ["--listen", listen, "--certs", sandbox.certs_dir, "--backuppc-conf", sandbox.conf_dir,
            "--api-listen", "none", "--api-socket", "none"]


def summarize(events, since: float, until_: float | None = None) -> str:
    chosen = [what for at, _, what in events if at >= since and (until_ is None or at < until_)]
    kinds = {}
    for what in chosen:
        kinds[what[:90]] = kinds.get(what[:90], 0) + 1
    return "; ".join(f"{n} x {w}" for w, n in sorted(kinds.items(), key=lambda x: -x[1])[:4])


async def measure(args, work: Path, sandbox: Sandbox, server, wss_port: int, fleet: Fleet,
                  nofile: int, report: Report) -> None:
    k = len(fleet.services)
    await deferLater(reactor, 1.0, lambda: None)
    rss_before = rss_bytes(server.pid)
    cpu_server, cpu_self = cpu_seconds(server.pid), cpu_seconds(os.getpid())
    began = time.monotonic()
    print(f"  connecting {k} clients, at most {args.concurrency} handshakes in flight ...",
          flush=True)

    def feed():
        while len(fleet.started_at) < k and (
                len(fleet.started_at) - len(fleet.opened_at) < args.concurrency):
            fleet.start(len(fleet.started_at))

    spy = Profiler(args.profile, "fleet-connect", {"server": server.pid,
                                                   "load generator": os.getpid()})
    feeder = LoopingCall(feed)
    feeder.start(0.002)
    all_open = await until(lambda: len(fleet.opened_at) == k, max(120, k / 20), "all clients")
    feeder.stop()
    spy.stop()
    connect_failures = len(fleet.failures)
    cpu_server = cpu_seconds(server.pid) - cpu_server
    cpu_self = cpu_seconds(os.getpid()) - cpu_self
    waits = [fleet.opened_at[i] - fleet.started_at[i] for i in range(k)]
    await deferLater(reactor, 1 if args.quick else 5, lambda: None)  # hold: nothing may drop
    rss_after = rss_bytes(server.pid)
    held_errors = len(fleet.failures) + len(fleet.drops) - connect_failures
    rate = k / (all_open - began)
    report.figure("clients", k, "", "{:,d}")
    report.figure("server RSS before / with all connected",
                  f"{rss_before / 2**20:,.1f} / {rss_after / 2**20:,.1f} MiB")
    per_client = (rss_after - rss_before) / k
    report.figure("server RSS per connected client", per_client / 1024, "KiB", "{:,.1f}")
    report.figure("load generator RSS per client", rss_bytes(os.getpid()) / k / 1024, "KiB",
                  "{:,.1f}")
    report.figure("handshake rate", rate, "clients/s", "{:,.0f}")
    report.figure("handshake time median / p95",
                  f"{statistics.median(waits) * 1000:,.0f} / "
                  f"{sorted(waits)[int(0.95 * (k - 1))] * 1000:,.0f} ms")
    report.figure("CPU per handshake: server / load generator",
                  f"{cpu_server / k * 1000:.2f} / {cpu_self / k * 1000:.2f} ms")
    report.figure("server CPU busy while connecting", cpu_server / (all_open - began) * 100, "%",
                  "{:.0f}")
    report.figure("refusals and errors while connecting", connect_failures, "", "{:d}")
    if connect_failures:
        report.figure("  of which", summarize(fleet.failures, 0))
    report.figure("refusals, errors and drops while connected", held_errors, "", "{:d}")

    print("  restarting the server ...", flush=True)
    killed = time.monotonic()
    server.popen.send_signal(signal.SIGTERM)
    await until(lambda: server.popen.poll() is not None, 60, "the server to stop")
    server.stop()
    stopped = time.monotonic()
    new = twistd("bpctunnel-server", server_argv(sandbox, f"127.0.0.1:{wss_port}"),
                 work / "server-restarted.log", nofile=nofile)
    await until(lambda: "listening on 127.0.0.1" in new.text(), 60, "the new server", 0.01)
    listening = time.monotonic()
    await until(lambda: len(fleet.opened_at) == k, 300, "all clients to reconnect")
    back = time.monotonic()
    late = [f for f in fleet.failures if f[0] >= listening]
    report.figure("restart: server stopped / listening again after",
                  f"{stopped - killed:.2f} / {listening - killed:.2f} s")
    report.figure("restart: all reconnected after", back - killed, "s", "{:.2f}")
    report.figure("restart: failed attempts while the server was down",
                  sum(1 for f in fleet.failures if killed <= f[0] < listening), "", "{:d}")
    report.figure("restart: refusals and errors once listening", len(late), "", "{:d}")
    if late:
        report.figure("  of which", summarize(late, 0))
    report.target("server RSS per idle client", per_client / 1024, "<=", 64, " KiB", "{:.1f}")
    # A restart's failed attempts are figures above, not errors: the clients
    # find the server down or busy (--max-handshakes) and retry with backoff,
    # as designed; what counts there is how soon all are back.
    report.target(f"{k} clients connect: refusals and errors",
                  connect_failures + held_errors, "<=", 0, "", "{:d}")
    report.target("handshakes per second", rate, ">=", 200, "/s", "{:.0f}")
    report.target(f"all {k} reconnect after a restart", back - killed, "<=", 60, " s", "{:.1f}")


def add_options(parser) -> None:
    parser.add_argument("--clients", type=int, default=1000, help="clients (default 1000)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="handshakes in flight while connecting (32)")
    parser.add_argument("--one-address", action="store_true",
                        help="all clients connect from 127.0.0.1")


def run() -> None:
    args = arguments(__doc__.strip().splitlines()[0], add_options)
    k = 20 if args.quick else args.clients
    # The server holds two descriptors per client: its TLS connection and the
    # client's 127.0.0.1 listener.
    nofile = 2 * k + 200
    got = raise_nofile(nofile)
    if got < nofile:
        raise BenchError(
            f"{k} clients need an open-file limit of {nofile}, but the hard limit is {got} and "
            f"this process may not raise it (root without CAP_SYS_RESOURCE, e.g. in a "
            f"container; raise it with ulimit -Hn or the container's nofile setting); at most "
            f"--clients {(got - 200) // 2} fit")
    work = work_dir(args, "fleet")
    print(f"  issuing {k} client certificates ...", flush=True)
    sandbox = Sandbox.create(work / "sandbox")
    bundles = [(f"fleet{i:05d}", pki.make_client_cert(sandbox.ca, f"fleet{i:05d}"))
               for i in range(k)]
    hosts = [HOSTS_HEADER, "localhost   0       backuppc\n"]
    for (host, bundle), port in zip(bundles, free_ports(k)):
        hosts.append(f"{host}   0       backuppc\n")
        (sandbox.conf_dir / f"{host}.pl").write_text(
            host_config_text(pki.fingerprint_sha256(bundle.cert_pem), port))
    (sandbox.conf_dir / "hosts").write_text("".join(hosts))
    server = twistd("bpctunnel-server", server_argv(sandbox, "127.0.0.1:0"), work / "server.log",
                    nofile=nofile)
    wss_port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    print(f"  building {k} clients ...", flush=True)
    fleet = Fleet(sandbox, f"wss://127.0.0.1:{wss_port}/tunnel", wss_port, bundles,
                  args.one_address)
    report = Report(f"fleet: {k} clients, one server, 127.0.0.1")
    outcome = []

    def go():
        d = ensureDeferred(measure(args, work, sandbox, server, wss_port, fleet, nofile, report))
        d.addBoth(lambda result: (outcome.append(result), reactor.stop()))

    reactor.callWhenRunning(go)
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    report.print()
    report.save(args.json)


if __name__ == "__main__":
    main_wrapper(run)
