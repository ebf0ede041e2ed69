"""
Hostile input never takes the server down.

Each test throws one kind of bad input at a live, in-process server (real
TLS, real sockets, real rsync): garbage bytes, plain HTTP, a TLS client with
no certificate, bad tunnel messages from an authenticated client, a host
config that is not Perl, a hosts file that vanished, and a few hundred random
messages.  Each checks the server's specific log line, then that a tunnel
that was up all along still carries a pull and that a fresh client connects
and pulls: the other tunnels go on.
"""

from __future__ import annotations

import random
import struct

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import globalLogPublisher

import treq
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpctunnel.wire import framing
from bpctunnel.wire.violations import LOG_BURST
from bpctunnel.refusals import Refusal
from bpctunnel.testing.sandbox import free_port, make_sample_tree
from bpctunnel.transport.tls import MINIMUM_TLS_VERSION, client_tls_options
from tests.helpers import TIMEOUT, tcp_connect
from tests.test_end_to_end import TunnelTestCase
from tests.test_status import http_pool

#: The server's limit on one WebSocket message (and frame), in bytes.
MAX_MESSAGE = 1024 * 1024

#: A client that must not reconnect while a test looks at its freed port
#: (the delay is this times 0.5-1.5, far beyond any test's run time).
NO_RETRY = {"retry_initial": 300.0}


class RawProtocol(Protocol):
    """Sends C{payload} on connect; C{lost} fires with every byte received."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.received: list[bytes] = []
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost.callback(b"".join(self.received))


class MessageTap:
    """
    Records every message a client's open tunnel receives (before its own
    handling), and fires Deferreds when given payloads arrive.
    """

    def __init__(self, tunnel):
        self.payloads: list[bytes] = []
        self._waiting: list[tuple[bytes, Deferred]] = []
        original = tunnel.onMessage

        def onMessage(payload, isBinary):
            self.payloads.append(payload)
            waiting, self._waiting = self._waiting, []
            for wanted, d in waiting:
                if wanted == payload:
                    d.callback(payload)
                else:
                    self._waiting.append((wanted, d))
            original(payload, isBinary)

        # Autobahn calls self.onMessage, so an instance attribute intercepts it.
        tunnel.onMessage = onMessage

    def wait_for(self, payload: bytes) -> Deferred:
        """
        Fires when a message equal to C{payload} arrives (or has arrived);
        the caller bounds the wait.
        """
        d = Deferred()
        if payload in self.payloads:
            d.callback(payload)
        else:
            self._waiting.append((payload, d))
        return d


class FailureCapture:
    """Every log event that carries a failure (a traceback), while installed."""

    def __init__(self, testcase):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_failure") is not None or event.get("failure") is not None:
            self.events.append(event)


def random_message(rng: random.Random) -> bytes:
    """
    One fuzz message: about half are well-formed messages with random fields
    (any type, including channels never opened and the client's own channel
    ids), half are a random type byte (valid or not) followed by random bytes.
    """
    channel_id = rng.choice([rng.randrange(2**32), rng.randrange(16)])
    if rng.random() < 0.5:
        payload = rng.randbytes(rng.choice([0, 1, 64, rng.randrange(4096)]))
        message = rng.choice([
            framing.Open(channel_id, rng.randrange(2**32), rng.choice([{}, {"peer": "x"}])),
            framing.Accept(channel_id, rng.randrange(2**32)),
            framing.Data(channel_id, payload),
            framing.Eof(channel_id),
            framing.Close(channel_id, rng.randrange(256), rng.choice(["", "gone", "é" * 50])),
            framing.Credit(channel_id, rng.randrange(2**32)),
            framing.Ping(payload[:framing.MAX_PING_PAYLOAD]),
            framing.Pong(payload[:framing.MAX_PING_PAYLOAD]),
            framing.Control({"type": rng.choice(["status", "", "unknown"]), "n": rng.random()}),
        ])
        return framing.encode(message)
    kind = rng.choice([rng.randrange(256), rng.randrange(framing.OPEN, framing.CONTROL + 1)])
    header = struct.pack(">BI", kind, channel_id) if rng.random() < 0.5 else bytes([kind])
    return header + rng.randbytes(rng.choice([0, 1, 3, 4, 8, rng.randrange(4096)]))


class HostileInputTests(TunnelTestCase):
    """
    Acceptance 8: every kind of hostile input gets a specific log line, and
    the server goes on serving the tunnels it has and new ones.
    """

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.failures = FailureCapture(self)
        self._fresh = 0
        # A tunnel that is up before every hostile input and must survive it.
        self.bystander_source = make_sample_tree(self.root / "bystander")
        _, self.bystander_port, _ = yield self.connected_client(
            "bystander", {"m": self.bystander_source})

    @inlineCallbacks
    def assert_still_serving(self):
        """
        The tunnel that was up all along still carries a pull, a fresh client
        connects and pulls, and nothing logged a traceback.
        """
        yield self.pull_and_compare(self.bystander_port, "m", self.bystander_source)
        self._fresh += 1
        host = f"fresh{self._fresh}"
        source = make_sample_tree(self.root / host)
        _, port, _ = yield self.connected_client(host, {"m": source})
        yield self.pull_and_compare(port, "m", source)
        self.assertNotIn(("closed", "bystander"), self.server_events)
        self.assertEqual(self.logs.matching("Traceback (most recent call last)"), [])
        self.assertEqual(self.logs.matching("Unhandled Error"), [])
        self.assertEqual(self.failures.events, [])

    def send_plain(self, payload: bytes) -> Deferred:
        """
        Connect to the wss port over plain TCP and send C{payload}; fires with
        (our address as the server logs it, the bytes the server sent back)
        once the server has closed the connection.
        """
        protocol = RawProtocol(payload)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port.getHost().port)

        def connected(protocol):
            peer = f"127.0.0.1:{protocol.transport.getHost().port}"
            return protocol.lost.addCallback(lambda received: (peer, received))

        d = connectProtocol(endpoint, protocol).addCallback(connected)
        return d.addTimeout(TIMEOUT, reactor)

    @inlineCallbacks
    def open_tunnel(self, host, **settings):
        """A connected real client for C{host}: (client, its open tunnel, port, source)."""
        source = make_sample_tree(self.root / host)
        client, port, _ = yield self.connected_client(host, {"m": source}, **settings)
        self.assertIsNotNone(client.factory.current)
        return client, client.factory.current, port, source

    @inlineCallbacks
    def assert_protocol_error_closes(self, payload: bytes, is_binary: bool, words: str):
        """
        An authenticated client sends C{payload}: the server logs a protocol
        error containing C{words}, closes that tunnel with the reason, frees
        its port, and goes on serving.
        """
        client, tunnel, port, _ = yield self.open_tunnel("laptop1", **NO_RETRY)
        down = self.server_down("laptop1")
        closed = client.events.next("closed")
        tunnel.sendMessage(payload, isBinary=is_binary)
        # However the tunnel ends, it ends; then the line must already be there.
        yield down
        lines = self.logs.matching("closing the tunnel of laptop1: protocol error: ")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(words, lines[0])
        reason = yield closed.addTimeout(TIMEOUT, reactor)
        self.assertIn(f"protocol error: {words}"[:100], reason)
        yield self.assertFailure(tcp_connect(port), ConnectionRefusedError)
        self.assertEqual(self.server.factory.tunnels.get("laptop1"), None)
        yield self.assert_still_serving()

    # -- before TLS ---------------------------------------------------------

    @inlineCallbacks
    def test_garbage_bytes(self):
        """
        Random bytes instead of a TLS handshake fail at TLS with a log line
        naming the peer (the first few; then the log sums them up); more of
        them than the per-address limit on unauthenticated connections do
        not use it up.
        """
        rng = random.Random(20240601)
        for attempt in range(self.server.factory.settings.max_unauthenticated + 4):
            # A first byte that is no TLS record type fails at once; a random
            # one could look like a record header and make the server wait.
            garbage = b"\x00garbage" + rng.randbytes(4096)
            peer, answer = yield self.send_plain(garbage)
            if attempt < LOG_BURST:
                line = yield self.logs.wait_for(f"TLS handshake with {peer} failed: ")
                self.assertRegex(line, r"failed: (wrong version number|unknown protocol"
                                       r"|packet length too long|record layer failure)")
        self.assertEqual(self.server_events, [("open", "bystander")])
        self.assertEqual(len(self.logs.matching("TLS handshake with")), LOG_BURST)
        yield self.assert_still_serving()

    @inlineCallbacks
    def test_plain_http(self):
        """A plain-HTTP WebSocket upgrade (no TLS) fails at TLS, logged as an HTTP request."""
        peer, answer = yield self.send_plain(
            b"GET /tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bpctunnel.v1\r\n\r\n")
        line = yield self.logs.wait_for(f"TLS handshake with {peer} failed: ")
        self.assertIn("http request", line)
        self.assertNotIn(b"HTTP/1.1 101", answer)
        yield self.assert_still_serving()

    @inlineCallbacks
    def test_tls_client_without_certificate(self):
        """A TLS client that presents no certificate is logged and never reaches the upgrade."""
        files = self.sandbox.issue_client("laptop1")
        self.sandbox.register("laptop1", free_port(), files.fingerprint)
        trust = trustRootFromCertificates([Certificate.loadPEM(files.ca.read_bytes())])
        tls = optionsForClientTLS("127.0.0.1", trustRoot=trust,
                                  extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS_VERSION})
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                         self.server.port.getHost().port))
        protocol = RawProtocol(
            b"GET /tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bpctunnel.v1\r\n\r\n")
        yield connectProtocol(endpoint, protocol).addTimeout(TIMEOUT, reactor)
        peer = f"127.0.0.1:{protocol.transport.getHost().port}"
        answer = yield protocol.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(answer, b"")
        line = yield self.logs.wait_for(f"TLS handshake with {peer} failed: ")
        self.assertIn("peer did not return a certificate", line)
        self.assertEqual(self.logs.matching("refused laptop1"), [])
        self.assertEqual(self.server_events, [("open", "bystander")])
        yield self.assert_still_serving()

    # -- bad tunnel messages from an authenticated client -------------------

    @inlineCallbacks
    def assert_oversized_closes(self, fragment_size: int | None, words: str):
        """
        A message over the server's 1 MiB limit (sent as frames of
        C{fragment_size}) closes that tunnel, says why, and frees its port.
        """
        client, tunnel, port, _ = yield self.open_tunnel("laptop1", **NO_RETRY)
        # Our own client would refuse to send it; a hostile one would not.
        tunnel.maxMessagePayloadSize = tunnel.maxFramePayloadSize = 0
        down = self.server_down("laptop1")
        closed = client.events.next("closed")
        payload = framing.encode(framing.Data(1, b"x" * MAX_MESSAGE))
        tunnel.sendMessage(payload, isBinary=True, fragmentSize=fragment_size)
        yield down
        lines = self.logs.matching("tunnel of laptop1 closed: ")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"{words} exceeds payload limit of {MAX_MESSAGE} octets", lines[0])
        reason = yield closed.addTimeout(TIMEOUT, reactor)
        # The server drops the connection at once (Autobahn's failByDrop).
        self.assertIn("peer dropped the TCP connection", reason)
        yield self.assertFailure(tcp_connect(port), ConnectionRefusedError)
        self.assertEqual(self.server.factory.tunnels.get("laptop1"), None)
        yield self.assert_still_serving()

    def test_oversized_frame(self):
        """One WebSocket frame over 1 MiB closes that tunnel."""
        return self.assert_oversized_closes(
            None, f"received WebSocket message size {MAX_MESSAGE + 5}")

    def test_oversized_fragmented_message(self):
        """A message of small frames adding up to over 1 MiB closes that tunnel."""
        return self.assert_oversized_closes(
            64 * 1024, f"received WebSocket message size {MAX_MESSAGE + 5}")

    def test_malformed_message(self):
        """A truncated DATA message is a protocol error: that tunnel closes."""
        return self.assert_protocol_error_closes(
            b"\x03\x00", True, "DATA message too short: 2 bytes, need at least 5")

    def test_text_message(self):
        """A text message is a protocol error: that tunnel closes."""
        return self.assert_protocol_error_closes(
            b"hello", False, "a text message (the protocol is binary only)")

    def test_deeply_nested_json(self):
        """OPEN metadata nested deeper than the JSON decoder's recursion limit is malformed."""
        return self.assert_protocol_error_closes(
            struct.pack(">BII", framing.OPEN, 1, 65536) + b"[" * 100_000, True,
            "OPEN carries invalid JSON")

    @inlineCallbacks
    def test_unknown_message_type(self):
        """A message type this version does not know is ignored, logged, and the tunnel stays up."""
        _, tunnel, port, source = yield self.open_tunnel("laptop1")
        tap = MessageTap(tunnel)
        tunnel.sendMessage(b"\x70" + b"from a newer version", isBinary=True)
        line = yield self.logs.wait_for("ignoring unknown message type 0x70")
        self.assertIn("from laptop1", line)
        # A round trip after it shows the tunnel is still up and answering.
        tunnel.sendMessage(framing.encode(framing.Ping(b"after 0x70")), isBinary=True)
        pong = framing.encode(framing.Pong(b"after 0x70"))
        yield tap.wait_for(pong).addTimeout(TIMEOUT, reactor)
        yield self.pull_and_compare(port, "m", source)
        self.assertNotIn(("closed", "laptop1"), self.server_events)
        yield self.assert_still_serving()

    @inlineCallbacks
    def test_channel_never_opened(self):
        """
        DATA, EOF and CREDIT for channel ids never opened are each answered
        with CLOSE and logged; the tunnel stays up and carries a pull.
        """
        _, tunnel, port, source = yield self.open_tunnel("laptop1")
        tap = MessageTap(tunnel)
        messages = [framing.Data(1001, b"stray"), framing.Eof(1003), framing.Credit(1004, 4096),
                    framing.Data(2**32 - 1, b"")]
        for message in messages:
            tunnel.sendMessage(framing.encode(message), isBinary=True)
        for message in messages:
            yield tap.wait_for(framing.encode(
                framing.Close(message.channel_id, framing.CLOSE_ERROR, "unknown channel"),
            )).addTimeout(TIMEOUT, reactor)
            line = yield self.logs.wait_for(f"message for unknown channel {message.channel_id} ")
            self.assertIn(f"from laptop1: {type(message).__name__}", line)
        yield self.pull_and_compare(port, "m", source)
        self.assertNotIn(("closed", "laptop1"), self.server_events)
        yield self.assert_still_serving()

    @inlineCallbacks
    def test_channels_opened_by_client(self):
        """
        The server accepts no channels from a client: each OPEN is answered
        with CLOSE and forgotten, so a client that never answers the CLOSE
        cannot fill the server's channel table, and its tunnel still carries
        BackupPC's connections.
        """
        _, tunnel, port, source = yield self.open_tunnel("laptop1")
        tap = MessageTap(tunnel)
        ids = range(1, 2 * 200, 2)
        for channel_id in ids:
            tunnel.sendMessage(framing.encode(framing.Open(channel_id, 65536, {})), isBinary=True)
        for channel_id in ids:
            yield tap.wait_for(framing.encode(framing.Close(
                channel_id, framing.CLOSE_ERROR, "this side accepts no channels",
            ))).addTimeout(TIMEOUT, reactor)
        self.assertEqual(len(self.server.factory.tunnels.get("laptop1").mux.channels), 0)
        yield self.pull_and_compare(port, "m", source)
        self.assertEqual(self.logs.matching("refusing a connection to laptop1"), [])
        yield self.assert_still_serving()

    # -- the server's own files ---------------------------------------------

    @inlineCallbacks
    def test_host_config_not_perl(self):
        """A host config that is not valid Perl refuses that host, naming the file and line."""
        files = self.sandbox.issue_client("laptop1")
        config = self.sandbox.register("laptop1", free_port(), files.fingerprint)
        config.write_text(config.read_text() + "this is { not perl ]]]\n")
        bad_line = len(config.read_text().splitlines())
        client, _, _ = self.add_client("laptop1", {"m": self.root}, register=False, files=files)
        detail = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        yield client.stop()
        expected = (f"host config error for laptop1: {config}, line {bad_line}: ] does not close "
                    f"the {{ opened on line {bad_line}")
        self.assertTrue(detail.startswith(expected), detail)
        line = yield self.logs.wait_for("refused laptop1 from 127.0.0.1:")
        self.assertIn(expected, line)
        yield self.logs.wait_for(f"refused by server: {expected}")
        self.assertEqual(self.server_events, [("open", "bystander")])
        yield self.assert_still_serving()

    @inlineCallbacks
    def test_hosts_file_vanished(self):
        """
        With the hosts file gone, a new client is refused as a server
        configuration error (the log names the file), tunnels already up keep
        working, and once the file is back the new client gets in.
        """
        hosts = self.sandbox.conf_dir / "hosts"
        files = self.sandbox.issue_client("laptop2")
        port2 = free_port()
        self.sandbox.register("laptop2", port2, files.fingerprint)
        saved = hosts.read_bytes()
        hosts.unlink()

        client, _, _ = self.add_client("laptop2", {"m": self.root}, register=False, files=files,
                                       port=port2, retry_initial=0.2, retry_max=1.0)
        detail = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        self.assertEqual(detail, "server configuration error; the BackupPC admin must check "
                                 "the server log")
        line = yield self.logs.wait_for("refused by server: server configuration error")
        self.assertIn("see the server's log", line)
        line = yield self.logs.wait_for("cannot serve 127.0.0.1:")
        self.assertIn(f"hosts file {hosts} does not exist", line)

        # The tunnel that was up keeps carrying connections; each one re-checks
        # the host and logs that it cannot, rather than dropping the tunnel.
        yield self.pull_and_compare(self.bystander_port, "m", self.bystander_source)
        line = yield self.logs.wait_for("cannot re-check bystander: ")
        self.assertIn(f"hosts file {hosts} does not exist", line)
        # So does the periodic check (run now rather than waited for).
        before = len(self.logs.matching("cannot re-check bystander: "))
        self.server.factory.check_tunnels()
        self.assertEqual(len(self.logs.matching("cannot re-check bystander: ")), before + 1)
        self.assertEqual(self.server_events, [("open", "bystander")])
        self.assertIs(self.server.factory.tunnels.get("bystander").mux.lost, False)

        opened = client.events.next("open")
        hosts.write_bytes(saved)
        yield opened.addTimeout(TIMEOUT, reactor)
        self.assertIn(("open", "laptop2"), self.server_events)
        yield self.assert_still_serving()

    # -- everything at once -------------------------------------------------

    @inlineCallbacks
    def test_fuzz_random_messages(self):
        """
        Hundreds of random messages, in batches, from an authenticated client:
        after each batch the tunnel either answers a PING or was closed by the
        server with a logged protocol error (and the client reconnects for the
        next batch).  The server then still serves everyone, and nothing
        escaped as a traceback.
        """
        rng = random.Random(0xB9C)
        client, _, fuzz_port, _ = yield self.open_tunnel("fuzzer", retry_initial=0.1,
                                                         retry_max=1.0)
        batches, batch_size = 15, 20
        closures = 0
        connections = []
        self.addCleanup(lambda: [c.transport.abortConnection() for c in connections
                                 if c.transport.connected])
        for batch in range(batches):
            tunnel = client.factory.current
            if tunnel is None or tunnel.state != WebSocketProtocol.STATE_OPEN:
                yield client.events.next("open").addTimeout(TIMEOUT, reactor)
                tunnel = client.factory.current
            # BackupPC connects too, so channels with a real local end and a
            # real rsync are open while the random messages arrive.
            backuppc = yield tcp_connect(fuzz_port)
            backuppc.transport.write(b"@RSYNCD: 31.0\n")
            connections.append(backuppc)
            tap = MessageTap(tunnel)
            probe = f"probe {batch}".encode()
            answered = tap.wait_for(framing.encode(framing.Pong(probe)))
            closed = client.events.next("closed")
            outcome = Deferred()
            answered.addCallback(lambda _: outcome.called or outcome.callback("answered"))
            closed.addCallback(lambda _: outcome.called or outcome.callback("closed"))
            for _ in range(batch_size):
                tunnel.sendMessage(random_message(rng), isBinary=True)
            tunnel.sendMessage(framing.encode(framing.Ping(probe)), isBinary=True)
            # Whichever comes first; the other may fire later, to no effect.
            result = yield outcome.addTimeout(TIMEOUT, reactor)
            if result == "closed":
                closures += 1
                errors = self.logs.matching("closing the tunnel of fuzzer: protocol error: ")
                self.assertGreaterEqual(len(errors), closures)
        self.assertGreater(closures, 0)
        ups = [event for event in self.server_events if event == ("open", "fuzzer")]
        self.assertGreaterEqual(len(ups), closures)
        yield self.assert_still_serving()


class HandshakeLimitTests(TunnelTestCase):
    """
    --max-handshakes full of connections that never even start TLS: a
    laptop's connection takes the place of the oldest of them, at its first
    try, and the log says why.  (When every place is held by a connection
    whose request is being answered, the newcomer is dropped instead:
    tests/test_server_session.py, HandshakeLimitTests.)
    """

    server_settings = {"max_handshakes": 2, "handshake_timeout": 5.0}

    @inlineCallbacks
    def test_stalled_handshakes_make_room_for_a_laptop(self):
        port = self.server.port.getHost().port
        holders = yield gatherResults([tcp_connect(port), tcp_connect(port)])
        lost = [Deferred(), Deferred()]
        for holder, d in zip(holders, lost):
            holder.connectionLost = lambda reason, d=d: d.callback(None)
        evicted = self.logs.wait_for("to admit")
        client, _, _ = self.add_client("laptop1", {"m": self.root}, retry_initial=0.2,
                                       retry_max=1.0)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        line = yield evicted
        self.assertIn("(no opening handshake after", line)
        self.assertIn("2 connections are in their handshakes already (--max-handshakes)", line)
        self.assertEqual(self.server_events, [("open", "laptop1")])
        # The oldest holder lost its place; the other still holds one.
        yield lost[0].addTimeout(TIMEOUT, reactor)
        self.assertFalse(lost[1].called)
        self.assertEqual(self.server.factory.state.handshakes.in_handshake, 1)
        yield lost[1].addTimeout(TIMEOUT, reactor)  # its --handshake-timeout
        metrics = generate_latest(self.server.factory.metrics.registry).decode()
        self.assertNotRegex(metrics, r'bpctunnel_refusals_total\{reason="busy"\} [1-9]')


def upgrade_request(path: str) -> bytes:
    """A WebSocket opening handshake for C{path}, as a client sends it."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {framing.SUBPROTOCOL}"
            f"\r\n\r\n").encode()


class RefusalCardinalityTests(TunnelTestCase):
    """
    Issue 15, acceptance 3: what a peer sends never becomes a metric label.
    Any holder of a certificate the CA signed (a revoked one too) reaches the
    opening handshake; 25 different bad paths make one refusal series, not 25.
    """

    @inlineCallbacks
    def upgrade(self, files, path: str) -> bytes:
        """Open TLS with C{files}' certificate, ask for C{path}; the server's whole answer."""
        # The TLS options the real client uses: mutual TLS with a signed certificate.
        tls = client_tls_options("127.0.0.1", files.ca, files.cert, files.key)
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.server.port.getHost().port))
        protocol = RawProtocol(upgrade_request(path))
        yield connectProtocol(endpoint, protocol).addTimeout(TIMEOUT, reactor)
        answer = yield protocol.lost.addTimeout(TIMEOUT, reactor)
        return answer

    @inlineCallbacks
    def scrape(self) -> list:
        """The samples of C{bpctunnel_refusals_total} in GET /metrics, parsed."""
        response = yield treq.get(self.server.api_url + "/metrics",
                                  pool=http_pool(self)).addTimeout(TIMEOUT, reactor)
        self.assertEqual(response.code, 200)
        text = yield response.text()
        return [sample for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == "bpctunnel_refusals_total"]

    @inlineCallbacks
    def test_bad_paths_make_one_series(self):
        registered = self.sandbox.issue_client("laptop1")
        self.sandbox.register("laptop1", free_port(), registered.fingerprint)
        revoked = self.sandbox.issue_client("laptop2")
        self.sandbox.register("laptop2", free_port(), None)  # no TunnelCert: revoked
        stranger = self.sandbox.issue_client("stranger")  # signed, in no hosts file
        odd = ['/"}', "/a\\b", "/%0a", "/metrics", "/tunnel/", "/TUNNEL", "/tunnelx?y=1",
               "/" + "x" * 300, "/é"]
        paths = odd + [f"/bad-{n}" for n in range(25 - len(odd))]
        self.assertEqual(len(set(paths)), 25)
        bundles = [registered, revoked, stranger]
        for n, path in enumerate(paths):
            answer = yield self.upgrade(bundles[n % len(bundles)], path)
            self.assertTrue(answer.startswith(b"HTTP/1.1 404 no tunnel at /"), answer[:200])
            self.assertIn(b"; the path is /tunnel", answer)
        # The log: the first few refusals of a kind, then a sum (issue 16).
        self.assertEqual(len(self.logs.matching("refused 127.0.0.1:")), LOG_BURST)

        samples = yield self.scrape()
        self.assertEqual([(s.labels, s.value) for s in samples],
                         [({"reason": Refusal.WRONG_PATH.code}, 25.0)])
        # Every label value is a code, whatever else was refused meanwhile.
        codes = {member.code for member in Refusal}
        client, _, _ = self.add_client("laptop3", {"m": self.root}, register=False)
        yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        yield client.stop()
        samples = yield self.scrape()
        self.assertEqual({s.labels["reason"]: s.value for s in samples},
                         {Refusal.WRONG_PATH.code: 25.0, Refusal.UNKNOWN_HOST.code: 1.0})
        self.assertLessEqual({s.labels["reason"] for s in samples}, codes)
