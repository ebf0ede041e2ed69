"""
A delaying TCP relay: a long link (laptop <-> BackupPC server) on 127.0.0.1.

Each route listens on a 127.0.0.1 port and forwards every connection to a
target port, holding each chunk until its arrival time plus the one-way
delay of its direction, so a whole bandwidth-delay product is in flight:
reading never pauses for the delay, only when a direction holds more than
its cap (then the sender's TCP pushes back, as a full link does).  With a
rate, a direction sends at most that many bytes per second: a chunk leaves
when the ones before it have (serialisation), then travels the delay.

    python bench/_relay.py        # prints "relay control on 127.0.0.1:PORT"

Control, one line per request on the control port, one line answered:

    route TARGET                        -> listening PORT
    set FORWARD BACK RATE CAP           -> ok
        (delays in seconds; FORWARD is from the side that connects to
        the target; RATE in bytes/s per direction, 0 for none; CAP in
        bytes per direction and connection, 0 for the default)
    stats                               -> {"peak_queued": N, "relayed": N}
        (the largest direction queue since the last stats, bytes relayed)

A new setting applies to the chunks that arrive after it.  The relay runs as
a process of its own (standard library only), so its CPU and memory are
not the benchmark's; L{RelayProcess} starts and drives it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections import deque
from pathlib import Path

#: Per direction and connection, when no rate sets one: enough for
#: 640 MB/s at 100 ms one way.
DEFAULT_CAP = 64 * 1024 * 1024
#: With a rate: at least this much (a few chunks) whatever the delay.
MIN_CAP = 4 * 1024 * 1024


class LinkSettings:
    """What every direction reads when a chunk arrives (changed by C{set})."""

    def __init__(self):
        self.forward = self.back = 0.0
        self.rate = 0.0
        self.cap = DEFAULT_CAP
        self.peak_queued = 0
        self.relayed = 0

    def update(self, forward: float, back: float, rate: float, cap: int) -> None:
        self.forward, self.back, self.rate = forward, back, rate
        if cap:
            self.cap = cap
        elif rate:
            # Twice what is on the wire: the link stays full, and a queue
            # adds at most one more delay.
            self.cap = max(MIN_CAP, int(rate * max(forward, back) * 2))
        else:
            self.cap = DEFAULT_CAP


class Direction:
    """
    Bytes from one side to the other: a queue of (due time, chunk).  Reads
    from C{source} stop while the queue holds C{cap} bytes or more; writes to
    C{sink} stop while its transport asks us to pause.
    """

    def __init__(self, loop, settings: LinkSettings, forward: bool, on_eof_sent):
        self.loop, self.settings, self.forward = loop, settings, forward
        self.on_eof_sent = on_eof_sent
        self.source = self.sink = None  # transports, set as each side connects
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: EOF
        self.queued = 0
        self.sink_paused = False
        self.source_paused = False
        self.eof_sent = False
        self._timer = None
        self._serialised_until = 0.0

    def received(self, data: bytes | None) -> None:
        """A chunk (or EOF, C{None}) from the source: due after the delay."""
        now = self.loop.time()
        settings = self.settings
        leaves = now
        if settings.rate and data:
            leaves = max(now, self._serialised_until) + len(data) / settings.rate
            self._serialised_until = leaves
        delay = settings.forward if self.forward else settings.back
        # Never before the chunk ahead of it: a shorter new delay keeps the order.
        due = max(leaves + delay, self.queue[-1][0] if self.queue else 0.0)
        self.queue.append((due, data))
        if data:
            self.queued += len(data)
            settings.peak_queued = max(settings.peak_queued, self.queued)
            if self.queued >= settings.cap and not self.source_paused:
                self.source_paused = True
                self.source.pause_reading()
        self.arm()

    def arm(self) -> None:
        """Send what is due now, or set a timer for the next chunk."""
        if self._timer is not None or self.sink is None or self.sink_paused or not self.queue:
            return
        due = self.queue[0][0]
        if due <= self.loop.time():
            self._flush()
        else:
            self._timer = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now and not self.sink_paused:
            _, data = self.queue.popleft()
            if data is None:
                self.sink.write_eof()  # after what it still buffers
                self.eof_sent = True
                self.on_eof_sent()
                return
            self.queued -= len(data)
            self.settings.relayed += len(data)
            self.sink.write(data)  # may call pause_writing, ending the loop
        if self.source_paused and self.queued < self.settings.cap:
            self.source_paused = False
            self.source.resume_reading()
        self.arm()

    def pause(self) -> None:
        self.sink_paused = True

    def resume(self) -> None:
        self.sink_paused = False
        self.arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.queue.clear()
        self.queued = 0


class Side(asyncio.Protocol):
    """One TCP connection of a relayed pair: feeds C{inbound}, drains C{outbound}."""

    def __init__(self, pair: Pair, inbound: Direction, outbound: Direction):
        self.pair, self.inbound, self.outbound = pair, inbound, outbound
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        # Pause (and resume) writing well before the kernel's buffer is the limit.
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inbound.source = transport
        self.outbound.sink = transport
        self.pair.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.inbound.received(data)

    def eof_received(self) -> bool:
        self.inbound.received(None)
        return True  # half-closed: the other direction goes on

    def pause_writing(self) -> None:
        self.outbound.pause()

    def resume_writing(self) -> None:
        self.outbound.resume()

    def connection_lost(self, exc) -> None:
        self.pair.side_lost(self, exc)


class Pair:
    """
    An accepted connection and the one made to the target, with a direction
    each way.  EOF travels with the delay; both sides close once both
    directions have delivered theirs; a reset on one side aborts the other.
    """

    def __init__(self, relay: Relay, target: int):
        self.relay, self.target = relay, target
        loop, settings = relay.loop, relay.settings
        self.forward = Direction(loop, settings, True, self._eof_sent)
        self.back = Direction(loop, settings, False, self._eof_sent)
        self.accepted = Side(self, self.forward, self.back)
        self.onward = Side(self, self.back, self.forward)

    def side_made(self, side: Side) -> None:
        if side is self.accepted:
            # What arrives meanwhile waits in the forward queue (capped).
            self.relay.loop.create_task(self._connect())
        else:
            self.forward.arm()

    async def _connect(self) -> None:
        try:
            await self.relay.loop.create_connection(lambda: self.onward, "127.0.0.1",
                                                    self.target)
        except OSError:
            self.forward.close()
            self.accepted.transport.abort()

    def _eof_sent(self) -> None:
        if self.forward.eof_sent and self.back.eof_sent:
            for side in (self.accepted, self.onward):
                side.transport.close()  # after flushing

    def side_lost(self, side: Side, exc) -> None:
        other = self.onward if side is self.accepted else self.accepted
        if exc is not None:
            self.forward.close()
            self.back.close()
            if other.transport is not None:
                other.transport.abort()
        elif other.transport is not None and not other.transport.is_closing():
            # Closed without an EOF of its own first: once what is queued
            # toward the other side is delivered, close that too.
            (self.forward if side is self.accepted else self.back).received(None)


class Relay:
    """Routes and their shared L{LinkSettings}, in one asyncio loop."""

    def __init__(self, loop):
        self.loop = loop
        self.settings = LinkSettings()

    async def route(self, target: int) -> int:
        """Listen on a free 127.0.0.1 port, relaying to C{target}; the port."""
        server = await self.loop.create_server(lambda: self._accepted(target), "127.0.0.1", 0)
        return server.sockets[0].getsockname()[1]

    def _accepted(self, target: int) -> Side:
        return Pair(self, target).accepted

    async def control(self, reader, writer) -> None:
        """The control protocol (see the module's docstring)."""
        while line := await reader.readline():
            words = line.decode().split()
            try:
                if words[0] == "route":
                    answer = f"listening {await self.route(int(words[1]))}"
                elif words[0] == "set":
                    forward, back, rate = (float(w) for w in words[1:4])
                    self.settings.update(forward, back, rate, int(words[4]))
                    answer = "ok"
                elif words[0] == "stats":
                    answer = json.dumps({"peak_queued": self.settings.peak_queued,
                                         "relayed": self.settings.relayed,
                                         "cap": self.settings.cap})
                    self.settings.peak_queued = 0
                else:
                    answer = f"error unknown request {words[0]!r}"
            except (IndexError, ValueError) as e:
                answer = f"error {e}"
            writer.write(answer.encode() + b"\n")
            await writer.drain()


async def main() -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(loop)
    server = await asyncio.start_server(relay.control, "127.0.0.1", 0)
    print(f"relay control on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()  # until the benchmark stops us


# -- the benchmark's side -------------------------------------------------------------

class RelayProcess:
    """
    The relay as a child process (stopped with the benchmark's others), and
    its control connection.
    """

    def __init__(self, log_path: Path):
        from _procs import Proc  # the relay process itself needs only asyncio

        self.proc = Proc([sys.executable, __file__], log_path)
        port = int(self.proc.wait_for(r"relay control on 127\.0\.0\.1:(\d+)").group(1))
        self._control = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._answers = self._control.makefile("r")
        self.pid = self.proc.pid

    def _ask(self, request: str) -> str:
        from _procs import BenchError

        self._control.sendall(request.encode() + b"\n")
        answer = self._answers.readline().strip()
        if not answer or answer.startswith("error"):
            raise BenchError(f"relay: {request!r} answered {answer!r}; see {self.proc.log_path}")
        return answer

    def route(self, target: int) -> int:
        """A port on 127.0.0.1 that reaches C{target} across the link."""
        return int(self._ask(f"route {target}").split()[1])

    def set(self, forward: float, back: float, rate: float = 0, cap: int = 0) -> None:
        """One-way delays in seconds, rate in bytes/s (0: none), queue cap (0: default)."""
        self._ask(f"set {forward} {back} {rate} {cap}")

    def stats(self) -> dict:
        """The largest queue since the last call, bytes relayed so far, and the cap."""
        return json.loads(self._ask("stats"))

    def stop(self) -> None:
        self._control.close()
        self.proc.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
