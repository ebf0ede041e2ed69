"""
Hostile peers for the attack tests (tests/test_attacks.py, issue 16), in
this process on the test's reactor: what a stolen laptop, a stranger with a
CA-signed certificate, or a crowd behind a laptop's NAT address can do to a
real server process.

  - L{HostileTunnel}: mutual TLS with a real certificate, a hand-written
    WebSocket upgrade, then raw frames (tunnel messages made with
    L{bpctunnel.wire.framing.encode}, or WebSocket pings).  It answers the
    server's pings and mux PINGs like a client, unless told to stop reading.
  - L{Flood}: writes a batch of bytes again and again, as fast as the
    connection takes them (a push producer: it never buffers more than one
    batch here).
  - L{HeaderFlood}: an opening handshake whose headers never end.
  - L{StalledHandshakes}: connections that never finish TLS (nothing sent,
    or half a ClientHello), reopened whenever the server drops one.
  - L{RssSampler}: a process's peak resident memory while an attack runs.
  - L{LOCAL_USER_ATTACK}: a standard-library script for another local user
    (run under setpriv) that knocks on a laptop's port and the API socket.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from bpctunnel.errors import BadFrame
from bpctunnel.server.session import TUNNEL_PATH
from bpctunnel.transport.tls import client_tls_options
from bpctunnel.wire import framing
from tests.test_hostile import upgrade_request as hostile_upgrade_request

#: WebSocket opcodes (RFC 6455 5.2).
OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x2, 0x8, 0x9, 0xA


def ws_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, unmasked WebSocket frame (the server accepts unmasked client frames)."""
    n = len(payload)
    if n <= 125:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def tunnel_message(message: framing.Message) -> bytes:
    """A tunnel message as one binary WebSocket frame."""
    return ws_frame(OP_BINARY, framing.encode(message))


def upgrade_request(role: str | None = None) -> bytes:
    """The opening handshake the real client sends (C{role}: its X-Bpctunnel-Role)."""
    request = hostile_upgrade_request(TUNNEL_PATH)
    if role is None:
        return request
    return request[:-2] + f"{framing.ROLE_HEADER}: {role}\r\n\r\n".encode()


def tls_endpoint(port: int, files):
    """Mutual TLS to the server on 127.0.0.1:C{port} with a client bundle (L{ClientFiles})."""
    tls = client_tls_options("127.0.0.1", files.ca, files.cert, files.key)
    return wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10))


class UpgradeRefused(Exception):
    """The server answered the opening handshake with something other than 101."""


class HostileTunnel(Protocol):
    """
    A tunnel client written by hand.  C{opened} fires with it once the
    server answered 101 (or fails with L{UpgradeRefused}); C{lost} fires
    with the reactor time when the connection is gone.  While reading it
    answers WebSocket pings and mux PINGs, keeps every tunnel message the
    server sends (L{messages}) and the server's close reason
    (L{close_reason}).
    """

    def __init__(self, role: str | None = None):
        self.request = upgrade_request(role)
        self.opened = Deferred()
        self.lost = Deferred()
        self.upgraded = False
        self.messages: list[framing.Message] = []
        self.close_reason: str | None = None
        #: The reactor time the connection went (None: it is up).
        self.lost_at: float | None = None
        self._buffer = b""
        self._waiting: list[tuple[object, Deferred]] = []

    @property
    def peer(self) -> str:
        """Our address as the server logs it."""
        host = self.transport.getHost()
        return f"{host.host}:{host.port}"

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self._buffer += data
        if not self.upgraded:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            if not status.startswith("HTTP/1.1 101"):
                self.transport.loseConnection()
                self.opened.errback(UpgradeRefused(status))
                return
            self.upgraded, self._buffer = True, rest
            self.opened.callback(self)
        self._frames()

    def _frames(self):
        while True:
            frame = _next_frame(self._buffer)
            if frame is None:
                return
            opcode, payload, size = frame
            self._buffer = self._buffer[size:]
            if opcode == OP_PING:
                self.transport.write(ws_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close_reason = payload[2:].decode("utf-8", "replace")
                self.transport.write(ws_frame(OP_CLOSE, payload[:2]))
                self.transport.loseConnection()
            elif opcode == OP_BINARY:
                self._message(payload)

    def _message(self, payload: bytes):
        try:
            message = framing.decode(payload)
        except BadFrame:
            return
        if isinstance(message, framing.Ping):
            self.send(framing.Pong(message.payload))
        self.messages.append(message)
        waiting, self._waiting = self._waiting, []
        for wanted, d in waiting:
            if wanted(message):
                d.callback(message)
            else:
                self._waiting.append((wanted, d))

    def wait_message(self, wanted) -> Deferred:
        """Fires with the first message (received or to come) for which C{wanted} is true."""
        d = Deferred()
        for message in self.messages:
            if wanted(message):
                d.callback(message)
                return d
        self._waiting.append((wanted, d))
        return d

    def send(self, message: framing.Message) -> None:
        self.transport.write(tunnel_message(message))

    def stop_reading(self) -> None:
        """Read nothing more: whatever the server answers piles up on its side."""
        self.transport.pauseProducing()

    def connectionLost(self, reason):
        if not self.upgraded and not self.opened.called:
            self.opened.errback(UpgradeRefused(f"connection lost: {reason.getErrorMessage()}"))
        for _, d in self._waiting:
            d.errback(AssertionError("the tunnel closed before that message came"))
        self._waiting = []
        self.lost_at = reactor.seconds()
        self.lost.callback(self.lost_at)


def _next_frame(buffer: bytes):
    """(opcode, payload, frame size) of the first whole server frame in C{buffer}, or None."""
    if len(buffer) < 2:
        return None
    opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
    offset = 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, offset = struct.unpack_from("!H", buffer, 2)[0], 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
    if len(buffer) < offset + length:
        return None
    return opcode, buffer[offset:offset + length], offset + length


def open_hostile_tunnel(port: int, files, role: str | None = None) -> Deferred:
    """Connect a L{HostileTunnel} with C{files}' certificate; fires once it is open."""
    tunnel = HostileTunnel(role)
    d = connectProtocol(tls_endpoint(port, files), tunnel)
    return d.addCallback(lambda _: tunnel.opened)


@implementer(IPushProducer)
class Flood:
    """
    Writes C{batch} to C{transport} once per reactor turn for as long as the
    transport takes it, until C{limit} bytes (None: no limit) or L{stop}.
    C{sent} counts what the transport took.
    """

    def __init__(self, transport, batch: bytes, limit: int | None = None):
        self.transport = transport
        self.batch = batch
        self.limit = limit
        self.sent = 0
        self._paused = False
        self._stopped = False
        self._call = None

    def start(self) -> Flood:
        self.transport.registerProducer(self, True)
        self._schedule()
        return self

    def _schedule(self):
        if self._call is None and not self._paused and not self._stopped:
            self._call = reactor.callLater(0, self._write)

    def _write(self):
        self._call = None
        if self._paused or self._stopped:
            return
        if self.limit is not None and self.sent >= self.limit:
            self.stop()
            return
        self.sent += len(self.batch)
        self.transport.write(self.batch)
        self._schedule()

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._schedule()

    def stopProducing(self):
        self._stopped = True

    def stop(self):
        """Write no more."""
        if not self._stopped:
            self._stopped = True
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None


@implementer(IHandshakeListener)
class HeaderFlood(Protocol):
    """
    Once TLS is up, an opening handshake whose header lines never end, as
    fast as the server reads, up to C{limit} bytes.  C{lost} fires with the
    reactor time when the connection is gone.
    """

    LINE = b"X-Pad: " + b"a" * 1000 + b"\r\n"

    def __init__(self, limit: int):
        self.limit = limit
        self.flood: Flood | None = None
        self.lost = Deferred()
        self.lost_at: float | None = None
        self.peer = "?"

    def connectionMade(self):
        host = self.transport.getHost()
        self.peer = f"{host.host}:{host.port}"

    def handshakeCompleted(self):
        # Only now: before the handshake, TLS buffers what we write without limit.
        self.transport.write(b"GET /tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self.flood = Flood(self.transport, self.LINE * 64, self.limit).start()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        if self.flood is not None:
            self.flood.stop()
        self.lost_at = reactor.seconds()
        self.lost.callback(self.lost_at)


class _Stalled(Protocol):
    def __init__(self, owner: StalledHandshakes, first_bytes: bytes):
        self.owner = owner
        self.first_bytes = first_bytes

    def connectionMade(self):
        self.owner.open.add(self)
        if self.first_bytes:
            self.transport.write(self.first_bytes)

    def connectionLost(self, reason):
        self.owner.open.discard(self)
        self.owner.dropped += 1
        self.owner.reopen_soon()


#: The start of a TLS ClientHello: a handshake record that announces 512
#: bytes, of which it sends the first 6.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03"


class StalledHandshakes:
    """
    Keeps C{count} connections to 127.0.0.1:C{port} that never finish TLS
    (every other one sends half a ClientHello, the rest nothing), and opens
    a new one C{pause} seconds after the server drops one, until L{stop}.
    """

    def __init__(self, port: int, count: int, pause: float = 0.1):
        self.port = port
        self.count = count
        self.pause = pause
        self.open: set[_Stalled] = set()
        self.made = 0
        self.dropped = 0
        #: Fires once the first C{count} connection attempts have been answered.
        self.ready: Deferred | None = None
        self._pending = 0
        self._calls: set = set()
        self._stopped = False
        self._kinds = itertools.cycle([b"", PARTIAL_CLIENT_HELLO])

    def start(self) -> StalledHandshakes:
        self.ready = gatherResults([self._connect() for _ in range(self.count)])
        return self

    def _connect(self) -> Deferred:
        if self._stopped:
            return succeed(None)
        self.made += 1
        self._pending += 1
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
        d = connectProtocol(endpoint, _Stalled(self, next(self._kinds)))

        def done(result):
            self._pending -= 1
            return result

        return d.addBoth(done).addCallbacks(lambda _: None, lambda _: self.reopen_soon())

    def reopen_soon(self):
        """One connection is gone: the attacker tries again shortly."""
        if not self._stopped and len(self.open) + self._pending < self.count:
            self._pending += 1
            call = reactor.callLater(self.pause, self._reopen)
            self._calls.add(call)

    def _reopen(self):
        self._calls = {call for call in self._calls if call.active()}
        self._pending -= 1
        self._connect()

    def stop(self):
        """Stop trying, and drop every connection still open."""
        self._stopped = True
        for call in self._calls:
            if call.active():
                call.cancel()
        for protocol in list(self.open):
            protocol.transport.abortConnection()


def rss_bytes(pid: int) -> int:
    """The resident memory of process C{pid} (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class RssSampler:
    """The peak resident memory of process C{pid}, sampled every C{interval} seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self._loop = LoopingCall(self._sample)
        self._loop.clock = reactor
        self._loop.start(interval)

    def _sample(self):
        try:
            self.peak = max(self.peak, rss_bytes(self.pid))
        except OSError:
            self.stop()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def stop(self) -> int:
        """Stop sampling (once more first); returns the growth in bytes."""
        if self._loop.running:
            self._sample()
            if self._loop.running:
                self._loop.stop()
        return self.growth


#: Run by another local user (setpriv): ARGV port api-socket attempts.  Each
#: attempt connects to the laptop's port and greets it as an rsync client
#: would, then reads what comes back; and tries to connect to the API socket.
#: Prints "port: N connections, B bytes back" and "api: N connected".
LOCAL_USER_ATTACK = """
import socket, sys
port, api, attempts = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
got = 0
for _ in range(attempts):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(b"@RSYNCD: 31.0\\n")
            got += len(s.recv(4096))  # a laptop's daemon greets: "@RSYNCD: ..."
        except OSError:
            pass
connected = 0
for _ in range(attempts):
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(api)
            connected += 1
        except OSError:
            pass
print(f"port: {attempts} connections, {got} bytes back")
print(f"api: {connected} connected")
"""

#: A stand-in for BackupPC_serverMesg: logs "start PID ARGS" and "end PID"
#: to LOG around half a second of work, then answers as BackupPC does (a
#: backup is taken; a status is "backup starting", so nobody gives up).
FAKE_SERVER_MESG = """#!/bin/sh
echo "start $$ $*" >> {log}
sleep 0.5
echo "end $$" >> {log}
case "$1" in
  backup) echo "Got reply: ok: requested backup of $2 (backup_type $5)" ;;
  *) echo "Got reply: %StatusHost = ('state' => 'Status_backup_starting');" ;;
esac
"""


def most_at_once(log: Path) -> tuple[int, list[str]]:
    """(the most runs of L{FAKE_SERVER_MESG} at one time, the argument lists of all)."""
    running, most, calls = set(), 0, []
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, pid, *args = line.split()
        if kind == "start":
            running.add(pid)
            calls.append(" ".join(args))
            most = max(most, len(running))
        else:
            running.discard(pid)
    return most, calls
