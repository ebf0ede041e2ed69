"""
Tests for bpctunnel.transport.http_connect: choosing the proxy, the CONNECT endpoint in
memory (no sockets), TLS end to end through a proxy in memory, and a real
rsync pull through a real proxy (tinyproxy).
"""

from __future__ import annotations

import base64
import os
import shutil

from cryptography import x509
from twisted.internet import reactor
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel import pki
from bpctunnel.transport import tls
from bpctunnel.errors import BpcTunnelError, ConfigError
from bpctunnel.client.config import bypasses_proxy, is_loopback, select_proxy
from bpctunnel.transport.http_connect import (
    MAX_HEADER_BYTES,
    HTTPConnectEndpoint,
    HTTPProxy,
    ProxyError,
    connect_request,
    parse_proxy_url,
)
from bpctunnel.testing.sandbox import free_port, make_sample_tree
from tests.helpers import spawn, temp_dir
from tests.test_end_to_end import TunnelTestCase

PROXY_URL = "http://proxy.example:3128"
CONNECT = (b"CONNECT backup.example.org:8443 HTTP/1.1\r\n"
           b"Host: backup.example.org:8443\r\n\r\n")


class ProxyUrlTests(SynchronousTestCase):
    """parse_proxy_url accepts http://[USER:PASSWORD@]HOST:PORT only."""

    def test_host_and_port(self):
        self.assertEqual(parse_proxy_url("http://Proxy.Example:3128"),
                         HTTPProxy("proxy.example", 3128))
        self.assertEqual(parse_proxy_url("http://proxy.example:3128/").url, PROXY_URL)

    def test_ipv6(self):
        proxy = parse_proxy_url("http://[fd00::1]:8080")
        self.assertEqual((proxy.host, proxy.port, proxy.url), ("fd00::1", 8080,
                                                               "http://[fd00::1]:8080"))

    def test_credentials_become_basic_authorization(self):
        """Percent-escapes are decoded; the password never shows in the repr."""
        proxy = parse_proxy_url("http://alice:p%40ss%3Aword@proxy.example:3128")
        self.assertEqual(proxy.authorization,
                         "Basic " + base64.b64encode(b"alice:p@ss:word").decode())
        self.assertEqual(repr(proxy), "HTTPProxy(host='proxy.example', port=3128)")
        self.assertEqual(proxy.url, PROXY_URL)

    def test_errors(self):
        for url, words in [
            ("https://proxy.example:3128", "must be an http:// URL"),
            ("socks5://proxy.example:1080", "must be an http:// URL"),
            ("proxy.example:3128", "must be an http:// URL"),
            ("http://proxy.example", "has no port; add the proxy's port, e.g. "
                                     "http://proxy.example:3128"),
            ("http://proxy.example:99999", "has an invalid port number"),
            ("http://:3128", "names no host"),
            ("http://proxy.example:3128/path", "must be just http://"),
        ]:
            e = self.assertRaises(ConfigError, parse_proxy_url, url, "proxy", "in /x.conf")
            self.assertIn(words, str(e))
            self.assertTrue(str(e).startswith(f"proxy = {url} in /x.conf "), str(e))

    def test_password_not_in_errors(self):
        e = self.assertRaises(ConfigError, parse_proxy_url, "https://bob:s3cret@p:1")
        self.assertNotIn("s3cret", str(e))
        self.assertIn("https://bob:***@p:1", str(e))

    def test_scheme_optional(self):
        """As curl reads https_proxy: HOST:PORT means http://HOST:PORT."""
        self.assertEqual(parse_proxy_url("proxy.example:3128", scheme_optional=True),
                         HTTPProxy("proxy.example", 3128))


class NoProxyTests(SynchronousTestCase):
    """bypasses_proxy and is_loopback."""

    def test_matches(self):
        for host, no_proxy, expected in [
            ("backup.example.org", "*", True),
            ("backup.example.org", "example.org", True),
            ("backup.example.org", ".example.org", True),
            ("backup.example.org", "*.example.org", True),
            ("backup.example.org", "other.org, Backup.Example.Org", True),
            ("backup.example.org", "backup.example.org:8443", True),
            ("backup.example.org", "ample.org", False),
            ("backup.example.org", "other.org,,", False),
            ("backup.example.org", "", False),
            ("10.1.2.3", "10.0.0.0/8", True),
            ("10.1.2.3", "10.1.2.3", True),
            ("10.1.2.3", "10.1.2.3:8443", True),
            ("10.1.2.3", "192.168.0.0/16", False),
            ("::1", "[::1]:22", True),
            ("example.org", "backup.example.org", False),
        ]:
            self.assertEqual(bypasses_proxy(host, no_proxy), expected, (host, no_proxy))

    def test_loopback(self):
        for host in ("localhost", "LOCALHOST.", "a.localhost", "127.0.0.1", "127.8.9.1", "::1"):
            self.assertTrue(is_loopback(host), host)
        for host in ("10.0.0.1", "backup.example.org", "localhost.example.org", "::2"):
            self.assertFalse(is_loopback(host), host)


class SelectProxyTests(SynchronousTestCase):
    """The config's proxy, else https_proxy unless no_proxy or loopback; none disables."""

    HOST = "backup.example.org"

    def test_config_setting(self):
        self.assertEqual(select_proxy(PROXY_URL, self.HOST, {}), HTTPProxy("proxy.example", 3128))

    def test_config_setting_beats_environment_and_no_proxy(self):
        """An explicit proxy was set for this server: no_proxy does not apply to it."""
        env = {"https_proxy": "http://other:1", "no_proxy": "*"}
        self.assertEqual(select_proxy(PROXY_URL, self.HOST, env), HTTPProxy("proxy.example", 3128))
        self.assertEqual(select_proxy(PROXY_URL, "127.0.0.1", env).host, "proxy.example")

    def test_none_disables_environment(self):
        self.assertIsNone(select_proxy("none", self.HOST, {"https_proxy": PROXY_URL}))
        self.assertIsNone(select_proxy(" None ", self.HOST, {"HTTPS_PROXY": PROXY_URL}))

    def test_empty_setting(self):
        e = self.assertRaises(ConfigError, select_proxy, "", self.HOST, {}, "in /x.conf")
        self.assertEqual(str(e), "proxy is empty in /x.conf: give http://HOST:PORT, or none "
                                 "to connect directly")

    def test_environment(self):
        self.assertIsNone(select_proxy(None, self.HOST, {}))
        self.assertIsNone(select_proxy(None, self.HOST, {"http_proxy": PROXY_URL}))
        self.assertEqual(select_proxy(None, self.HOST, {"https_proxy": PROXY_URL}).url, PROXY_URL)
        self.assertEqual(select_proxy(None, self.HOST, {"HTTPS_PROXY": PROXY_URL}).url, PROXY_URL)
        self.assertEqual(
            select_proxy(None, self.HOST, {"https_proxy": "http://lower:1",
                                           "HTTPS_PROXY": "http://upper:2"}).host, "lower")
        self.assertEqual(select_proxy(None, self.HOST, {"https_proxy": "proxy.example:3128"}),
                         HTTPProxy("proxy.example", 3128))

    def test_no_proxy(self):
        for env in ({"no_proxy": "example.org"}, {"NO_PROXY": ".example.org"},
                    {"no_proxy": "*"}):
            self.assertIsNone(select_proxy(None, self.HOST, {"https_proxy": PROXY_URL, **env}),
                              env)
        self.assertIsNotNone(select_proxy(None, self.HOST, {"https_proxy": PROXY_URL,
                                                            "no_proxy": "other.org"}))

    def test_loopback_server_is_never_proxied_from_environment(self):
        for host in ("127.0.0.1", "localhost", "::1"):
            self.assertIsNone(select_proxy(None, host, {"https_proxy": PROXY_URL}), host)

    def test_bad_environment_value(self):
        e = self.assertRaises(ConfigError, select_proxy, None, self.HOST,
                              {"HTTPS_PROXY": "socks5://p:1080"}, "in /x.conf")
        self.assertTrue(str(e).startswith(
            "HTTPS_PROXY = socks5://p:1080 in the environment must be an http:// URL"), str(e))
        self.assertTrue(str(e).endswith("; fix it, or set proxy = none in /x.conf to connect "
                                        "directly"), str(e))


class RecordingProtocol(Protocol):
    """What the caller's protocol saw of the tunnel."""

    def __init__(self):
        self.received = []
        self.lost = None
        self.made = False

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost = reason


class ConnectEndpointTests(SynchronousTestCase):
    """HTTPConnectEndpoint on a MemoryReactorClock and StringTransport."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.built = []

    def endpoint(self, **kwargs):
        kwargs.setdefault("proxy_url", PROXY_URL)
        return HTTPConnectEndpoint(TCP4ClientEndpoint(self.reactor, "proxy.example", 3128),
                                   "backup.example.org", 8443, clock=self.reactor, **kwargs)

    def factory(self):
        def build():
            protocol = RecordingProtocol()
            self.built.append(protocol)
            return protocol
        return Factory.forProtocol(build)

    def connect(self, **kwargs):
        """Connect, and complete the TCP connection to the proxy."""
        d = self.endpoint(**kwargs).connect(self.factory())
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("proxy.example", 3128))
        self.proxy_side = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proxy_side.makeConnection(self.transport)
        return d

    def answer(self, data: bytes):
        self.proxy_side.dataReceived(data)

    def assertProxyError(self, d, message):
        failure = self.failureResultOf(d, ProxyError)
        self.assertEqual(str(failure.value), message)
        self.assertIsInstance(failure.value, BpcTunnelError)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.built, [])
        return failure.value

    def test_request(self):
        """The CONNECT request, exactly; nothing is built before the answer."""
        d = self.connect()
        self.assertEqual(self.transport.value(), CONNECT)
        self.assertNoResult(d)
        self.assertEqual(self.built, [])

    def test_request_with_authorization(self):
        self.connect(authorization="Basic YTpi")
        self.assertEqual(self.transport.value(),
                         CONNECT[:-2] + b"Proxy-Authorization: Basic YTpi\r\n\r\n")
        self.assertEqual(connect_request("::1", 22),
                         b"CONNECT [::1]:22 HTTP/1.1\r\nHost: [::1]:22\r\n\r\n")

    def test_established(self):
        """
        On 200 the caller's protocol gets the same transport, the bytes after
        the answer, everything after, and the connection's end.
        """
        d = self.connect()
        with capturedLogs() as events:
            self.answer(b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\nfirst")
        protocol = self.successResultOf(d)
        self.assertEqual(self.built, [protocol])
        self.assertTrue(protocol.made)
        self.assertIs(protocol.transport, self.transport)
        self.assertEqual(protocol.received, [b"first"])
        self.answer(b"second")
        self.assertEqual(protocol.received, [b"first", b"second"])
        protocol.transport.write(b"up")
        self.assertEqual(self.transport.value(), CONNECT + b"up")
        self.assertFalse(self.transport.disconnecting)
        self.proxy_side.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(protocol.lost.value, ConnectionDone)
        self.assertEqual([e["log_format"] for e in events],
                         ["{proxy_name} opened a tunnel to {target}"])
        self.assertEqual(events[0]["proxy_name"], f"the proxy {PROXY_URL}")

    def test_answer_in_single_bytes(self):
        """An answer that arrives a byte at a time, with bare LF line ends and 1xx first."""
        d = self.connect()
        for byte in b"HTTP/1.1 100 Continue\n\nHTTP/1.0 204\nX: y\n":
            self.answer(bytes([byte]))
            self.assertNoResult(d)
        self.answer(b"\n")
        protocol = self.successResultOf(d)
        for byte in b"rest":
            self.answer(bytes([byte]))
        self.assertEqual(b"".join(protocol.received), b"rest")
        self.assertEqual(len(self.built), 1)

    def test_forbidden(self):
        """A refusal fails with the proxy's own words, is logged, and closes."""
        d = self.connect()
        with capturedLogs() as events:
            self.answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
        error = self.assertProxyError(
            d, "the proxy http://proxy.example:3128 refused CONNECT backup.example.org:8443: "
               "403 Forbidden; the proxy does not allow this destination; ask its admin to "
               "allow CONNECT to backup.example.org:8443")
        self.assertEqual((error.status, error.reason), (403, "Forbidden"))
        self.assertEqual([(e["log_level"].name, e["error"]) for e in events],
                         [("error", str(error))])

    def test_authentication_required(self):
        d = self.connect()
        self.answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b"Proxy-Authenticate: Basic realm=\"corp\"\r\n\r\n")
        self.assertProxyError(
            d, "the proxy http://proxy.example:3128 refused CONNECT backup.example.org:8443: "
               "407 Proxy Authentication Required; the proxy wants a user name and password: "
               "give them as http://USER:PASSWORD@HOST:PORT")

    def test_upstream_failure(self):
        d = self.connect()
        self.answer(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        self.assertProxyError(
            d, "the proxy http://proxy.example:3128 refused CONNECT backup.example.org:8443: "
               "502 Bad Gateway; the proxy could not reach backup.example.org:8443: check the "
               "server's address and that it is running")

    def test_refusal_without_reason_or_name(self):
        d = self.connect(proxy_url=None)
        self.answer(b"HTTP/1.1 418\r\n\r\n")
        self.assertProxyError(d, "the proxy refused CONNECT backup.example.org:8443: 418")

    def test_not_http(self):
        """A server that is not an HTTP proxy (an SSH banner) is named as such at once."""
        d = self.connect()
        self.answer(b"SSH-2.0-OpenSSH_9.2p1 Debian")
        self.assertProxyError(
            d, "the proxy http://proxy.example:3128 answered CONNECT backup.example.org:8443 "
               "with something that is not HTTP: b'SSH-2.0-OpenSSH_9.2p1 Debian'; check that "
               "it is an HTTP proxy")

    def test_bad_status_line(self):
        d = self.connect()
        self.answer(b"HTTP/1.1 OK\r\n")
        self.assertProxyError(
            d, "the proxy http://proxy.example:3128 answered CONNECT backup.example.org:8443 "
               "with something that is not HTTP: b'HTTP/1.1 OK\\r\\n'; check that it is an "
               "HTTP proxy")

    def test_endless_headers(self):
        """Headers are read up to MAX_HEADER_BYTES and no further."""
        d = self.connect()
        self.answer(b"HTTP/1.1 200 OK\r\n")
        self.answer(b"X-Filler: " + b"a" * (MAX_HEADER_BYTES - 40) + b"\r\n")
        self.assertNoResult(d)
        self.answer(b"b" * 100)
        self.assertProxyError(
            d, f"the proxy http://proxy.example:3128 sent more than {MAX_HEADER_BYTES} bytes "
               f"of headers in answer to CONNECT backup.example.org:8443")
        self.assertEqual(MAX_HEADER_BYTES, 16 * 1024)

    def test_closed_before_answering(self):
        d = self.connect()
        self.answer(b"HTTP/1.1 200 Conn")
        self.proxy_side.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(d, ProxyError)
        self.assertEqual(str(failure.value),
                         "the proxy http://proxy.example:3128 closed the connection before "
                         "answering CONNECT backup.example.org:8443")

    def test_timeout(self):
        """A proxy that never answers is given up on after the timeout."""
        d = self.connect(timeout=20)
        self.reactor.advance(19.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertProxyError(
            d, "the proxy http://proxy.example:3128 did not answer CONNECT "
               "backup.example.org:8443 within 20 seconds")

    def test_answer_cancels_timeout(self):
        d = self.connect(timeout=20)
        self.answer(b"HTTP/1.1 200 OK\r\n\r\n")
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_proxy_unreachable(self):
        d = self.endpoint().connect(self.factory())
        ConnectionCompleter(self.reactor).failOnce(Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(d, ProxyError)
        self.assertTrue(str(failure.value).startswith(
            "cannot reach the proxy http://proxy.example:3128: Connection was refused"),
            str(failure.value))

    def test_cancel_while_connecting_to_proxy(self):
        d = self.endpoint().connect(self.factory())
        connector = self.reactor.connectors[0]
        with capturedLogs() as events:
            d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(connector.stoppedConnecting, True)
        self.assertEqual(events, [])

    def test_cancel_while_waiting_for_answer(self):
        d = self.connect()
        with capturedLogs() as events:
            d.cancel()
            self.proxy_side.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(events, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def connect_with(self, factory):
        d = self.endpoint().connect(factory)
        self.proxy_side = self.reactor.tcpClients[0][2].buildProtocol(None)
        self.transport = StringTransport()
        self.proxy_side.makeConnection(self.transport)
        self.answer(b"HTTP/1.1 200 OK\r\n\r\n")
        return d

    def test_factory_declines(self):
        """A factory that builds no protocol fails the connect and closes the tunnel."""

        class Declining(Factory):
            def buildProtocol(self, addr):
                return None

        failure = self.failureResultOf(self.connect_with(Declining()), ProxyError)
        self.assertEqual(str(failure.value), "the protocol factory refused the tunnel to "
                                             "backup.example.org:8443")
        self.assertTrue(self.transport.disconnecting)

    def test_factory_raises(self):
        """A factory that raises fails the connect with its exception, and closes the tunnel."""

        class Broken(Factory):
            def buildProtocol(self, addr):
                raise ZeroDivisionError("broken factory")

        self.failureResultOf(self.connect_with(Broken()), ZeroDivisionError)
        self.assertTrue(self.transport.disconnecting)

    def test_repr_names_target_and_proxy(self):
        self.assertEqual(repr(self.endpoint(proxy_url="http://u:secret@p:1")),
                         "<HTTPConnectEndpoint backup.example.org:8443 via proxy http://u:***@p:1>")


class FakeProxy(Protocol):
    """
    Reads a CONNECT request, answers C{answer}, then (on 2xx) relays to a
    protocol built by C{then}, as if that were the server behind the proxy.
    """

    def __init__(self, answer: bytes, then=None):
        self.answer = answer
        self.then = then
        self.raw = b""
        self.request = None
        self.relay = None

    def dataReceived(self, data):
        self.raw += data
        if self.relay is not None:
            self.relay.dataReceived(data)
        elif self.request is None and b"\r\n\r\n" in self.raw:
            self.request, rest = self.raw.split(b"\r\n\r\n", 1)
            self.transport.write(self.answer)
            if self.then is not None:
                self.relay = self.then.buildProtocol(None)
                self.relay.makeConnection(self.transport)
                if rest:
                    self.relay.dataReceived(rest)

    def connectionLost(self, reason):
        if self.relay is not None:
            self.relay.connectionLost(reason)


class TLSThroughProxyTests(SynchronousTestCase):
    """TLS over HTTPConnectEndpoint (as wrapClientTLS does it): end to end, in memory."""

    def test_tls_end_to_end(self):
        ca = pki.make_ca()
        server_cert = pki.make_server_cert(ca, "tunnel.example")
        client_cert = pki.make_client_cert(ca, "laptop1")
        server_options = tls.server_tls_options_from(ca.cert_pem, server_cert.cert_pem,
                                                     server_cert.key_pem)
        client_options = tls.client_tls_options_from("tunnel.example", ca.cert_pem,
                                                     client_cert.cert_pem, client_cert.key_pem)

        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(b"echo:" + data)

        memory = MemoryReactorClock()
        behind = TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(Echo), memory)
        proxy = FakeProxy(b"HTTP/1.1 200 Connection established\r\n\r\n", then=behind)
        memory.listenTCP(3128, Factory.forProtocol(lambda: proxy))
        endpoint = HTTPConnectEndpoint(TCP4ClientEndpoint(memory, "127.0.0.1", 3128),
                                       "tunnel.example", 8443, clock=memory)
        client = RecordingProtocol()
        # What wrapClientTLS(client_options, endpoint) does, with the memory
        # clock for TLS's write buffering instead of the global reactor.
        d = endpoint.connect(TLSMemoryBIOFactory(client_options, True,
                                                 Factory.forProtocol(lambda: client), memory))
        pump = ConnectionCompleter(memory).succeedOnce()
        pump.flush()
        self.assertIs(self.successResultOf(d).wrappedProtocol, client)
        client.transport.write(b"secret words")
        pump.flush()
        self.assertEqual(b"".join(client.received), b"echo:secret words")
        self.assertEqual(proxy.request,
                         b"CONNECT tunnel.example:8443 HTTP/1.1\r\nHost: tunnel.example:8443")
        # The proxy carried only TLS records, never the plain text.
        self.assertNotIn(b"secret words", proxy.raw)
        # The certificate checked was the server's, behind the proxy.
        self.assertEqual(tls.peer_certificate_der(client.transport),
                         x509.load_pem_x509_certificate(server_cert.cert_pem).public_bytes(
                             Encoding.DER))


def tinyproxy_binary(search_path: str | None = None) -> str:
    """The tinyproxy binary; a missing one fails the test, saying how to install it."""
    path = shutil.which("tinyproxy", path=search_path or os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]))
    if path is None:
        raise AssertionError("tinyproxy is not installed: apt-get install tinyproxy "
                             "(the real HTTP CONNECT proxy these tests go through)")
    return path


class TinyproxyBinaryTests(SynchronousTestCase):
    """Without tinyproxy the end-to-end tests fail (not skip) and say what to install."""

    def test_missing_binary_fails_with_advice(self):
        empty = temp_dir(self)
        e = self.assertRaises(AssertionError, tinyproxy_binary, str(empty))
        self.assertIn("apt-get install tinyproxy", str(e))


class TinyproxyTests(TunnelTestCase):
    """A real client, through a real HTTP proxy (tinyproxy), to the real server."""

    @inlineCallbacks
    def start_tinyproxy(self, connect_port: int):
        """tinyproxy on 127.0.0.1, allowing CONNECT to C{connect_port} only."""
        binary = tinyproxy_binary()
        folder = temp_dir(self)
        port = free_port()
        conf = folder / "tinyproxy.conf"
        # No LogFile: in the foreground (-d) tinyproxy logs to stdout, which
        # the test reads.
        conf.write_text(
            f"Port {port}\n"
            "Listen 127.0.0.1\n"
            "Allow 127.0.0.1\n"
            f"ConnectPort {connect_port}\n"
            f'PidFile "{folder / "tinyproxy.pid"}"\n'
            "LogLevel Info\n"
            "Timeout 600\n"
            "MaxClients 20\n")
        process = spawn(self, [binary, "-d", "-c", str(conf)])
        yield process.wait_for("Accepting connections")
        return port, process

    @inlineCallbacks
    def test_pull_through_proxy(self):
        """The tunnel goes through CONNECT; an rsync pull arrives byte-identical."""
        server_port = self.server.port.getHost().port
        proxy_port, proxy = yield self.start_tinyproxy(server_port)
        source = make_sample_tree(self.root / "src", large_file_bytes=2 * 1024 * 1024)
        client, port, _ = yield self.connected_client(
            "laptop1", {"docs": source}, proxy=f"http://127.0.0.1:{proxy_port}")
        self.assertEqual(client.config.proxy.url, f"http://127.0.0.1:{proxy_port}")
        yield self.pull_and_compare(port, "docs", source)
        # The client's TCP connection is to the proxy...
        tunnel_tcp = client.factory.current.transport
        self.assertEqual(tunnel_tcp.getPeer().port, proxy_port)
        # ...which connected onward to the server, as asked,
        yield proxy.wait_for(f"CONNECT 127.0.0.1:{server_port} HTTP/1.1")
        yield self.logs.wait_for(f"the proxy http://127.0.0.1:{proxy_port} opened a tunnel to "
                                 f"127.0.0.1:{server_port}")
        # ...so the server saw the proxy's connection, not the client's.
        line = yield self.logs.wait_for("tunnel up for laptop1 from 127.0.0.1:")
        self.assertNotIn(f"from 127.0.0.1:{tunnel_tcp.getHost().port},", line)

    @inlineCallbacks
    def test_proxy_refusal_is_logged(self):
        """A proxy that does not allow the server's port: its words reach the client's log."""
        server_port = self.server.port.getHost().port
        proxy_port, proxy = yield self.start_tinyproxy(connect_port=free_port())
        client, _, _ = self.add_client("laptop1", {"docs": self.root},
                                       proxy=f"http://127.0.0.1:{proxy_port}")
        line = yield self.logs.wait_for(
            f"the proxy http://127.0.0.1:{proxy_port} refused CONNECT 127.0.0.1:{server_port}: "
            f"403 Access violation")
        self.assertIn(f"ask its admin to allow CONNECT to 127.0.0.1:{server_port}", line)
        yield proxy.wait_for(f"Refused CONNECT method on port {server_port}")
        # The client keeps trying (its admin may fix the proxy) until stopped.
        yield self.logs.wait_for("Scheduling retry 1 to connect")
        # (Stop on a later turn, not inside ClientService's own log call.)
        yield deferLater(reactor, 0, client.stop)
        self.assertEqual(self.server_events, [])
        self.assertIsNone(client.factory.current)
