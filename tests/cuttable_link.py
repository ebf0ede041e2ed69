"""
A laptop's network link that a test can delay and cut, for real processes.

Two network namespaces, "laptop" and "server", each with no way out but a
TUN device; a small process (this module run as a script) carries the IP
packets between the two devices, each one C{--delay-ms} late, and drops them
all while the link is cut.  Nothing between the two ends terminates TCP:
the client's and the server's own TCP stacks see the round trip, the losses
and the silence, and retransmit with exponential backoff exactly as on a
real outage (this kernel has no C{tc netem} and no netfilter, so a
packet-level wire in user space is the faithful way to drop and delay).

    python -m tests.cuttable_link --netns-a /run/netns/L --netns-b /run/netns/S \\
        --device tun-link --delay-ms 40 [--trace FILE]

It prints C{ready: ...} once both devices exist, then obeys lines on its
stdin: C{cut N} (answered C{cut N: ...}) and C{mend N} (answered C{mended N:
dropped ... packets ...}), and then prints C{first packet A->B after mend N
at +T s} for each direction once a packet gets through again, and C{first
data A->B ...} once one with TCP payload does (A is the C{--netns-a} end).  No bandwidth limit: the ends' TCP and rsync's
C{--bwlimit} set the pace.  The wire part is standard library only.

Imported, L{LaptopLink} builds the namespaces and the wire for a trial test
and takes them down at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import fcntl
import os
import struct
import sys

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
#: The private addresses of the two ends (each namespace has nothing else).
SERVER_ADDRESS = "10.77.0.1"
LAPTOP_ADDRESS = "10.77.0.2"
DEVICE = "tun-link"
#: A file to append every packet's passage or drop to (time, direction,
#: TCP ports, flags, seq, ack, bytes): for reading why a test failed.
TRACE = os.environ.get("BPCTUNNEL_LINK_TRACE")


# -- the wire (runs as its own process) -------------------------------------

def open_tun(netns: str, name: str) -> int:
    """A TUN device called C{name} made inside the namespace C{netns}; its fd."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
            return fd
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(own)


def tcp_payload(packet: bytes) -> int:
    """Bytes of TCP payload in an IPv4 packet (0 for anything else)."""
    if packet[0] >> 4 != 4 or packet[9] != 6:
        return 0
    ihl = (packet[0] & 15) * 4
    return len(packet) - ihl - (packet[ihl + 12] >> 4) * 4


def describe(packet: bytes) -> str:
    """One line about an IP packet, for the trace: TCP ports, flags, seq, ack, data."""
    if packet[0] >> 4 != 4 or packet[9] != 6:
        return f"IPv{packet[0] >> 4} {len(packet)} bytes"
    ihl = (packet[0] & 15) * 4
    sport, dport, seq, ack = struct.unpack("!HHII", packet[ihl:ihl + 12])
    flags = "".join(name for bit, name in ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"),
                                           (0x10, ".")) if packet[ihl + 13] & bit)
    return f"{sport}>{dport} [{flags}] seq {seq} ack {ack} data {tcp_payload(packet)}"


class Direction:
    """Packets read from one device, written to the other C{delay} seconds later."""

    def __init__(self, wire: Wire, name: str, source: int, sink: int):
        self.wire, self.name, self.source, self.sink = wire, name, source, sink
        self.queue: collections.deque = collections.deque()
        self.timer = None
        self.dropped = 0
        self.waiting_first = self.waiting_data = False

    def readable(self) -> None:
        loop = self.wire.loop
        while True:
            try:
                packet = os.read(self.source, 65536)
            except BlockingIOError:
                return
            if self.wire.trace is not None:
                self.wire.trace.write(f"{loop.time():.3f} {self.name} "
                                      f"{'DROP' if self.wire.is_cut else 'pass'} "
                                      f"{describe(packet)}\n")
            if self.wire.is_cut:
                self.dropped += 1
                continue
            self.queue.append((loop.time() + self.wire.delay, packet))
            if self.timer is None:
                self.timer = loop.call_at(self.queue[0][0], self.deliver)

    def deliver(self) -> None:
        loop = self.wire.loop
        self.timer = None
        now = loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, packet = self.queue.popleft()
            if self.waiting_first or self.waiting_data:
                self.first_after_mend(packet, now - self.wire.mended_at)
            try:
                os.write(self.sink, packet)
            except OSError:
                pass  # a lossy link: the ends' TCP copes
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self.deliver)

    def first_after_mend(self, packet: bytes, after: float) -> None:
        # The ends' TCP recovering: a pure ACK shows that an end is alive,
        # data that it has left its retransmission backoff.
        tag = self.wire.mend_tag
        if self.waiting_first:
            self.waiting_first = False
            print(f"first packet {self.name} after mend{tag} at +{after:.3f} s", flush=True)
        if self.waiting_data and tcp_payload(packet):
            self.waiting_data = False
            print(f"first data {self.name} after mend{tag} at +{after:.3f} s", flush=True)

    def cut(self) -> None:
        # What is on the wire when it is cut is lost with it.
        self.dropped += len(self.queue)
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Wire:
    def __init__(self, loop, fd_a: int, fd_b: int, delay: float, trace=None):
        self.loop, self.delay, self.trace = loop, delay, trace
        self.is_cut = False
        self.mend_tag = ""
        self.cut_at = self.mended_at = 0.0
        self.directions = [Direction(self, "A->B", fd_a, fd_b),
                           Direction(self, "B->A", fd_b, fd_a)]
        for direction in self.directions:
            loop.add_reader(direction.source, direction.readable)

    def command(self, line: str) -> None:
        line, _, tag = line.partition(" ")
        tag = f" {tag}" if tag else ""
        if line == "cut":
            self.is_cut = True
            self.cut_at = self.loop.time()
            for direction in self.directions:
                direction.dropped = 0
                direction.cut()
            print(f"cut{tag}: dropping every packet", flush=True)
        elif line == "mend":
            self.is_cut = False
            self.mended_at = self.loop.time()
            a, b = self.directions
            for direction in self.directions:
                direction.waiting_first = direction.waiting_data = True
            self.mend_tag = tag
            print(f"mended{tag}: dropped {a.dropped + b.dropped} packets (A->B {a.dropped}, "
                  f"B->A {b.dropped}) in {self.mended_at - self.cut_at:.3f} s", flush=True)
        elif line:
            print(f"unknown command {line!r}", flush=True)


async def run_wire(args) -> None:
    loop = asyncio.get_running_loop()
    fd_a = open_tun(args.netns_a, args.device)
    fd_b = open_tun(args.netns_b, args.device)
    trace = open(args.trace, "a", buffering=1) if args.trace else None
    wire = Wire(loop, fd_a, fd_b, args.delay_ms / 1000, trace)
    done = loop.create_future()
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b""

    def commands():
        nonlocal pending
        try:
            data = os.read(stdin, 4096)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(stdin)
            if not done.done():
                done.set_result(None)  # the test went away: so does the wire
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            wire.command(line.decode().strip())

    loop.add_reader(stdin, commands)
    print(f"ready: {args.device} in {args.netns_a} and {args.netns_b}, "
          f"{args.delay_ms:g} ms each way", flush=True)
    await done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--netns-a", required=True, help="path of one end's network namespace")
    parser.add_argument("--netns-b", required=True, help="path of the other end's")
    parser.add_argument("--device", default=DEVICE, help="name of the TUN device in each")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="delay each way")
    parser.add_argument("--trace", help="append a line per packet to this file")
    asyncio.run(run_wire(parser.parse_args(argv)))


# -- the test side ----------------------------------------------------------

_made = 0


def _ip(*args: str) -> None:
    import subprocess

    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class LaptopLink:
    """
    Network namespaces "laptop" and "server" joined only by a delaying,
    cuttable wire (see the module's docstring).  The server side has
    L{SERVER_ADDRESS}, the laptop L{LAPTOP_ADDRESS}; each has its own
    loopback.  Everything is removed at the end of C{testcase}: the wire,
    the namespaces (so the processes started in them must be stopped first:
    start them after making the link, and trial's cleanups run last-first).
    """

    def __init__(self, testcase, delay_ms: float = 40.0):
        global _made
        _made += 1
        self.testcase = testcase
        self.delay_ms = delay_ms
        stem = f"bpct{os.getpid()}n{_made}"
        self.laptop_ns, self.server_ns = f"{stem}-laptop", f"{stem}-server"
        self.wire = None
        self._sent = 0

    @property
    def laptop_path(self) -> str:
        return f"/run/netns/{self.laptop_ns}"

    @property
    def server_path(self) -> str:
        return f"/run/netns/{self.server_ns}"

    def start(self):
        """Make the namespaces and the wire; fires once packets can flow."""
        from tests.helpers import spawn

        for name in (self.laptop_ns, self.server_ns):
            _ip("netns", "add", name)
            self.testcase.addCleanup(_ip, "netns", "delete", name)
            _ip("-n", name, "link", "set", "lo", "up")
        # Runs before the namespaces go (cleanups run last-first), after the
        # processes the test started (registered later): whatever those left
        # behind in our namespaces, say a killed client's rsync daemons.
        self.testcase.addCleanup(self.kill_leftovers)
        self.wire = spawn(self.testcase, [sys.executable, "-m", "tests.cuttable_link",
                                          "--netns-a", self.laptop_path,
                                          "--netns-b", self.server_path,
                                          "--delay-ms", str(self.delay_ms),
                                          *(["--trace", TRACE] if TRACE else [])])

        def configure(_):
            for name, here, there in ((self.laptop_ns, LAPTOP_ADDRESS, SERVER_ADDRESS),
                                      (self.server_ns, SERVER_ADDRESS, LAPTOP_ADDRESS)):
                _ip("-n", name, "addr", "add", here, "peer", there, "dev", DEVICE)
                _ip("-n", name, "link", "set", DEVICE, "up")
            return self

        return self.wire.wait_for("ready:").addCallback(configure)

    def _command(self, command: str, answer: str):
        """Send C{command} to the wire; fires with the line it answers."""
        self._sent += 1
        tag = f"{answer} {self._sent}:"
        self.wire.transport.write(f"{command} {self._sent}\n".encode())
        return self.wire.wait_for(tag).addCallback(
            lambda text: tag + text.split(tag, 1)[1].split("\n", 1)[0])

    def cut(self):
        """Stop carrying packets (silently, both ways); fires once cut."""
        return self._command("cut", "cut")

    def mend(self):
        """Carry packets again; fires with the wire's line saying what it dropped."""
        return self._command("mend", "mended")

    def in_laptop(self, argv: list[str]) -> list[str]:
        """C{argv} run inside the laptop's namespace."""
        return ["/usr/bin/nsenter", f"--net={self.laptop_path}", "--", *argv]

    def in_server(self, argv: list[str]) -> list[str]:
        """C{argv} run inside the server's namespace."""
        return ["/usr/bin/nsenter", f"--net={self.server_path}", "--", *argv]

    def processes(self, namespace_path: str, command: str | None = None) -> list[int]:
        """Pids of the processes (named C{command}, if given) in that namespace."""
        namespace = os.stat(namespace_path)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                net = os.stat(f"/proc/{entry}/ns/net")
                if (net.st_dev, net.st_ino) != (namespace.st_dev, namespace.st_ino):
                    continue
                if command is not None:
                    with open(f"/proc/{entry}/comm") as f:
                        if f.read().strip() != command:
                            continue
                found.append(int(entry))
            except OSError:
                continue  # gone meanwhile
        return found

    def laptop_processes(self, command: str) -> list[int]:
        """Pids of the processes named C{command} in the laptop's namespace."""
        return self.processes(self.laptop_path, command)

    def kill_leftovers(self) -> None:
        """SIGKILL every process still in either namespace (all of them ours)."""
        import signal

        for path in (self.laptop_path, self.server_path):
            if not os.path.exists(path):
                continue
            for pid in self.processes(path):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


if __name__ == "__main__":
    main()
