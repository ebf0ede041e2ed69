"""
Where bpctunnel once read private names of Twisted or Autobahn, the public
way it uses now, tested in memory (issue 15):

 - the status API learns that an HTTP client left from C{notifyFinish()}
   (not C{request._disconnected});
 - the twistd plugin logs where it listens through an endpoint wrapper (not
   C{StreamServerEndpointService._waitingForPort});
 - L{forget_handshake} names the Autobahn fields it clears in one tuple, and
   a real opening handshake of the pinned Autobahn must fill each of them.

And where it still relies on Autobahn's internals (the websocket fast path
of L{bpctunnel.transport.fast_paths}, the private C{factory._batched_timer}
that the tunnel's protocols replace), each name, checked against the
installed Autobahn, so that an upgrade that drops one fails here rather
than in production.
"""

from __future__ import annotations

import ast
import gc
import inspect
import json
import types

from autobahn.twisted.websocket import (
    WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
    WebSocketServerProtocol)
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from bpctunnel import pki
from bpctunnel.server.api import make_api_site
from bpctunnel.server.history import HostHistory
from bpctunnel.server.service import LoggingEndpoint
from bpctunnel.transport import tls_bulk, websocket_fast
from bpctunnel.transport.autobahn_timers import ReactorTimer
from bpctunnel.transport.tls import client_tls_options_from, server_tls_options_from
from bpctunnel.transport.websocket_fast import (
    FORGOTTEN_HANDSHAKE_FIELDS, FastBinaryMixin, forget_handshake)


# -- status API: a ping whose HTTP client leaves --------------------------------------------


class FakeMux:
    lost = False
    channels: dict = {}


class FakeTunnel:
    """A live tunnel whose pings are Deferreds the test fires."""

    mux = FakeMux()

    def __init__(self, host: str):
        self.host = host
        self.pings: list[Deferred] = []

    def ping(self, timeout: float) -> Deferred:
        d = Deferred()
        self.pings.append(d)
        return d


class FakeRtt:
    def __init__(self):
        self.observed: list[float] = []

    def observe(self, value: float) -> None:
        self.observed.append(value)


class FakeMetrics:
    def __init__(self):
        self.ping_rtt = FakeRtt()


class FakeFactory:
    """What the status API reads of a L{bpctunnel.server.protocol.TunnelServerFactory}."""

    def __init__(self, *tunnels):
        self.tunnels = {t.host: t for t in tunnels}
        self.metrics = FakeMetrics()
        #: Where answered pings' round trips are kept.
        self.state = types.SimpleNamespace(history=HostHistory(Clock(), None))


PING_REQUEST = (b"POST /api/v1/tunnels/laptop1/ping?count=2 HTTP/1.1\r\n"
                b"Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")


class PingClientLeavesTests(unittest.TestCase):
    """The twisted.web site of the status API over a StringTransport: no sockets."""

    def setUp(self):
        self.tunnel = FakeTunnel("laptop1")
        self.factory = FakeFactory(self.tunnel)
        site = make_api_site(self.factory)
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.dropped = False
        self.addCleanup(self.drop)

    def drop(self):
        """The HTTP client goes away (once)."""
        if not self.dropped:
            self.dropped = True
            self.channel.connectionLost(Failure(ConnectionLost("the client went away")))

    def test_answered_while_connected(self):
        """The stock case, for comparison: both pings answer, the client gets JSON."""
        self.channel.dataReceived(PING_REQUEST)
        self.assertEqual(len(self.tunnel.pings), 2)
        self.assertEqual(self.transport.value(), b"")
        for d in self.tunnel.pings:
            d.callback(0.002)
        head, body = self.transport.value().split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        # Chunked: the JSON is the first chunk.
        answer = json.loads(body.split(b"\r\n", 2)[1])
        self.assertEqual((answer["sent"], answer["received"]), (2, 2))
        self.assertEqual(self.factory.metrics.ping_rtt.observed, [0.002, 0.002])

    def test_client_leaves_before_the_pings_end(self):
        """
        The HTTP client drops its connection while the pings are out: when
        they end, nothing is written, nothing is counted, nothing fails.
        """
        self.channel.dataReceived(PING_REQUEST)
        pings = self.tunnel.pings
        self.assertEqual(len(pings), 2)
        self.drop()
        self.transport.clear()
        with capturedLogs() as events:
            pings[0].callback(0.002)
            pings[1].callback(None)
            # An error in the answer would be "Unhandled error in Deferred",
            # logged when the Deferred is collected.
            del pings
            self.tunnel.pings = []
            gc.collect()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.factory.metrics.ping_rtt.observed, [])
        self.assertEqual([e for e in events if e.get("log_failure") is not None
                          or e.get("isError")], [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_client_leaves_pings_time_out(self):
        """The same when every ping times out (would be a 504)."""
        self.channel.dataReceived(PING_REQUEST)
        self.drop()
        self.transport.clear()
        for d in self.tunnel.pings:
            d.callback(None)
        self.tunnel.pings = []
        gc.collect()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])


# -- tap_server: logging where it listens, without _waitingForPort --------------------------


class LoggingEndpointTests(unittest.TestCase):
    def test_logs_where_it_listens(self):
        reactor = MemoryReactorClock()
        endpoint = LoggingEndpoint(TCP4ServerEndpoint(reactor, 8443, interface="127.0.0.1"),
                                   "BackupPC config in /etc/backuppc")
        factory = Factory()
        service = StreamServerEndpointService(endpoint, factory)
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        [(port, listened, _, interface)] = reactor.tcpServers
        self.assertEqual((port, listened, interface), (8443, factory, "127.0.0.1"))
        [line] = [e for e in events if e["log_format"].startswith("bpctunnel server listening")]
        self.assertEqual((line["host"], line["port"], line["description"]),
                         ("0.0.0.0", 8443, "BackupPC config in /etc/backuppc"))
        self.successResultOf(service.stopService())

    def test_failure_to_listen_passes_through(self):
        """A port that cannot be listened on is StreamServerEndpointService's to log, once."""

        class Refusing:
            def listen(self, factory):
                return fail(CannotListenError("127.0.0.1", 8443, OSError("in use")))

        service = StreamServerEndpointService(LoggingEndpoint(Refusing(), "x"), Factory())
        with capturedLogs() as events:
            service.startService()
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertFalse([e for e in events if e["log_format"].startswith("bpctunnel server")])

    def test_stop_before_listening_cancels(self):
        pending = Deferred()

        class Slow:
            def listen(self, factory):
                return pending

        service = StreamServerEndpointService(LoggingEndpoint(Slow(), "x"), Factory())
        service.startService()
        self.successResultOf(service.stopService())
        self.assertTrue(pending.called)  # cancelled


# -- forget_handshake: the fields exist in the pinned Autobahn --------------------------------


class Server(FastBinaryMixin, WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.factory.received.append(bytes(payload))


class Client(FastBinaryMixin, WebSocketClientProtocol):
    def onMessage(self, payload, isBinary):
        self.factory.received.append(bytes(payload))


def _pki():
    ca = pki.make_ca()
    server = pki.make_server_cert(ca, "localhost")
    client = pki.make_client_cert(ca, "laptop1")
    return ca, server, client


def open_over_tls(testcase):
    """A server and a client after real TLS (mutual) and WebSocket handshakes, in memory."""
    ca, server_cert, client_cert = _pki()
    clock = MemoryReactorClock()
    factories = []
    for factory_class, protocol_class in ((WebSocketServerFactory, Server),
                                          (WebSocketClientFactory, Client)):
        factory = factory_class("wss://localhost/tunnel", reactor=clock)
        factory._batched_timer = ReactorTimer(clock)
        factory.protocol = protocol_class
        factory.received = []
        factory.setProtocolOptions(openHandshakeTimeout=0)
        factories.append(factory)
    server_tls = TLSMemoryBIOFactory(
        server_tls_options_from(ca.cert_pem, server_cert.cert_pem, server_cert.key_pem),
        False, factories[0], clock=clock)
    client_tls = TLSMemoryBIOFactory(
        client_tls_options_from("localhost", ca.cert_pem, client_cert.cert_pem,
                                client_cert.key_pem),
        True, factories[1], clock=clock)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    client, server, pump = connectedServerAndClient(
        lambda: server_tls.buildProtocol(address), lambda: client_tls.buildProtocol(address),
        clock=clock)
    pump.flush()
    server, client = server.wrappedProtocol, client.wrappedProtocol
    testcase.assertEqual((server.state, client.state), (server.STATE_OPEN, client.STATE_OPEN))
    return server, client, pump


def field(protocol, path: str):
    value = protocol
    for name in path.split("."):
        value = getattr(value, name)
    return value


class ForgetHandshakeTests(unittest.TestCase):
    def test_fields_named_in_one_tuple(self):
        self.assertEqual([path for path, _ in FORGOTTEN_HANDSHAKE_FIELDS],
                         ["http_request_data", "http_response_data", "http_headers",
                          "transport_details.peer_cert"])
        self.assertFalse([p for p, _ in FORGOTTEN_HANDSHAKE_FIELDS
                          if any(part.startswith("_") for part in p.split("."))])

    def test_autobahn_fills_each_field(self):
        """
        After a real mutual-TLS WebSocket handshake, each field that
        forget_handshake clears holds something on both sides: if Autobahn
        renames one, this fails (and forget_handshake raises AttributeError).
        """
        server, client, _ = open_over_tls(self)
        for protocol in (server, client):
            for path, empty in FORGOTTEN_HANDSHAKE_FIELDS:
                value = field(protocol, path)
                self.assertTrue(value, f"{type(protocol).__name__}.{path} is {value!r}")
                self.assertNotEqual(value, empty)
        self.assertEqual(server.transport_details.peer_cert["subject"]["cn"], "laptop1")
        self.assertIn("sec-websocket-key", server.http_headers)

    def test_forgets_and_the_tunnel_still_works(self):
        server, client, pump = open_over_tls(self)
        for protocol in (server, client):
            forget_handshake(protocol)
            for path, empty in FORGOTTEN_HANDSHAKE_FIELDS:
                self.assertEqual(field(protocol, path), empty, path)
        # Each protocol gets a dict of its own.
        self.assertIsNot(server.http_headers, client.http_headers)
        client.sendMessage(b"masked", isBinary=True)
        server.send_binary(b"z" * 300)
        pump.flush()
        self.assertEqual(server.factory.received, [b"masked"])
        self.assertEqual(client.factory.received, [b"z" * 300])

    def test_renamed_field_fails_loudly(self):
        """A field Autobahn no longer has is an AttributeError, not a silent skip."""

        class Renamed:
            http_request_data = b"GET"
            http_response_data = b"101"
            http_headers_v2 = {}

        self.assertRaises(AttributeError, forget_handshake, Renamed())

        class NoDetails:
            http_request_data = http_response_data = b"x"
            http_headers = {"a": "b"}

        self.assertRaises(AttributeError, forget_handshake, NoDetails())


# -- the fast paths: every library name they use, checked against the installed versions ----


def attributes_used(module, class_name: str) -> set[str]:
    """
    The attribute names C{class_name} in C{module} reads, calls or sets on
    C{self}, and the methods it defines.
    """
    tree = ast.parse(inspect.getsource(module))
    [node] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    used = {sub.attr for sub in ast.walk(node)
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
            and sub.value.id == "self"}
    return used | {sub.name for sub in node.body if isinstance(sub, ast.FunctionDef)}


class TwistedTLSTests(unittest.TestCase):
    """The tunnel's TLS uses no private name of Twisted's (its fast path was dropped)."""

    def test_stock_protocol_overrides_a_public_method_only(self):
        """TunedTLSProtocol overrides makeConnection only; the factory sets its protocol only."""
        self.assertEqual([n for n in vars(tls_bulk.TunedTLSProtocol) if not n.startswith("__")],
                         ["makeConnection"])
        self.assertEqual([n for n in vars(tls_bulk.TunedTLSFactory) if not n.startswith("__")],
                         ["protocol"])
        self.assertFalse(hasattr(tls_bulk, "BulkTLSProtocol"))


class AutobahnNamesTests(unittest.TestCase):
    """The websocket fast path (websocket_fast.FastBinaryMixin) against Autobahn."""

    def test_no_private_names(self):
        """
        The mixin uses no private name of Autobahn's, and every name of
        Autobahn's it uses is listed in AUTOBAHN_NAMES (and so checked below).
        """
        used = attributes_used(websocket_fast, "FastBinaryMixin")
        own = set(vars(FastBinaryMixin))
        autobahns = used - own - {"factory", "transport"}
        self.assertFalse({n for n in autobahns if n.startswith("_")}, autobahns)
        self.assertEqual(autobahns, set(websocket_fast.AUTOBAHN_NAMES))

    def test_each_name_on_an_open_protocol(self):
        """After a real opening handshake both sides have every name the mixin uses."""
        server, client, _ = open_over_tls(self)
        # Read on the side that has them only.
        server_only = {"maskServerFrames", "requireMaskedClientFrames"}
        client_only = {"maskClientFrames"}
        for protocol, others in ((server, client_only), (client, server_only)):
            for name in set(websocket_fast.AUTOBAHN_NAMES) - others:
                self.assertTrue(hasattr(protocol, name), f"{type(protocol).__name__}.{name}")
            self.assertEqual(protocol.websocket_extensions_in_use, [])
            self.assertIsNone(protocol.current_frame)
            self.assertEqual(protocol.data, b"")

    def test_batched_timer_is_where_autobahn_schedules(self):
        """
        server/protocol.py and client/protocol.py replace Autobahn's private
        C{factory._batched_timer} with a L{ReactorTimer}: Autobahn must still
        schedule its protocol timers (here, the opening handshake's) through it.
        """
        clock = MemoryReactorClock()
        factory = WebSocketServerFactory("ws://localhost/", reactor=clock)
        self.assertTrue(hasattr(factory, "_batched_timer"))
        factory._batched_timer = ReactorTimer(clock)
        factory.protocol = WebSocketServerProtocol
        factory.setProtocolOptions(openHandshakeTimeout=7)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        [call] = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 7)
        protocol.connectionLost(Failure(ConnectionLost("done")))
