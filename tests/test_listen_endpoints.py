"""
The server's --listen: [ADDRESS:]PORT and Twisted endpoint descriptions (tcp:,
tcp6:, systemd:, haproxy:), always under the server's own mutual TLS; the
socket under the PROXY protocol's wrapper tuned for bulk data; socket
activation with a socket passed as systemd passes it.
"""

from __future__ import annotations

import os
import re
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Server
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols import portforward
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bpctunnel.errors import ConfigError
from bpctunnel.server import service as server_service
from bpctunnel.server.endpoints import plain_endpoint, tunnel_endpoint
from bpctunnel.testing.sandbox import Sandbox, free_port, start_client
from bpctunnel.transport.listen_address import listen_description
from bpctunnel.transport.sockets import SEND_SIZE
from bpctunnel.transport.tls import server_tls_options
from bpctunnel.transport.tls_bulk import SOCKET_READ_SIZE
from tests.helpers import PROJECT_ROOT, TIMEOUT, LogCapture, RunningProcess, temp_dir

#: The client's address as a front proxy reports it (TEST-NET-1).
PROXIED_CLIENT = ("192.0.2.7", 40000)


class ListenDescriptionTests(SynchronousTestCase):
    """--listen and --proxy-protocol as one Twisted endpoint description."""

    def test_address_and_port(self):
        """The [ADDRESS:]PORT forms become tcp: descriptions (IPv6 escaped)."""
        self.assertEqual([listen_description(text) for text in ("8443", "127.0.0.1:0", "[::]:443")],
                         ["tcp:8443", "tcp:0:interface=127.0.0.1", r"tcp:443:interface=\:\:"])

    def test_proxy_protocol(self):
        """--proxy-protocol puts the endpoint under haproxy:, once."""
        self.assertEqual(listen_description("0.0.0.0:8443", proxy_protocol=True),
                         "haproxy:tcp:8443:interface=0.0.0.0")
        self.assertEqual(listen_description("systemd:domain=INET:index=0", proxy_protocol=True),
                         "haproxy:systemd:domain=INET:index=0")
        self.assertEqual(listen_description("haproxy:tcp:8443", proxy_protocol=True),
                         "haproxy:tcp:8443")

    def test_endpoints_as_given(self):
        for text in ("tcp:8443:interface=192.0.2.1", r"tcp6:8443:interface=\:\:1",
                     "systemd:domain=INET6:name=bpctunnel", "haproxy:tcp:0"):
            self.assertEqual(listen_description(f" {text} "), text)

    def test_tls_is_ours(self):
        """ssl: would put Twisted's TLS, not the server's mutual TLS, on the socket."""
        for text in ("ssl:8443:privateKey=server.key", "haproxy:ssl:8443"):
            e = self.assertRaises(ConfigError, listen_description, text)
            self.assertIn("the server's TLS is its own mutual TLS", str(e))

    def test_haproxy_around_tcp_only(self):
        e = self.assertRaises(ConfigError, listen_description, "haproxy:unix:/run/bpctunnel")
        self.assertIn("haproxy: goes around a tcp:, tcp6: or systemd: endpoint", str(e))

    def test_other_words_are_addresses(self):
        """A word that is no endpoint type is read as [ADDRESS:]PORT, and refused as one."""
        e = self.assertRaises(ConfigError, listen_description, "localhost:8443")
        self.assertIn("'localhost' is not an IP address", str(e))
        self.assertIn("or an endpoint: tcp:8443, haproxy:tcp:8443", str(e))


class RecordingProtocol(Protocol):
    def connectionMade(self):
        self.factory.made.append(self)


def recording_factory():
    factory = Factory.forProtocol(RecordingProtocol)
    factory.made = []
    return factory


def assert_bulk_socket(testcase, transport) -> None:
    """
    The socket under C{transport} and every protocol wrapper on it (TLS's,
    the PROXY protocol's) reads and sends in bulk sizes.
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    testcase.assertIsInstance(transport, Server)
    testcase.assertEqual((transport.bufferSize, transport.SEND_LIMIT),
                         (SOCKET_READ_SIZE, SEND_SIZE))


class ListenerTests(SynchronousTestCase):
    """The listener an endpoint description makes: where it listens, with which TLS."""

    def setUp(self):
        self.tls = server_tls_options(Sandbox.create(temp_dir(self)).certs_dir)
        self.reactor = MemoryReactor()

    def listen(self, description):
        factory = recording_factory()
        tunnel_endpoint(self.reactor, description, self.tls).listen(factory)
        port, outer, _backlog, interface = self.reactor.tcpServers[-1]
        return port, outer, interface, factory

    def assert_socket_tuned(self, outer):
        """A connection to the listener: its socket, untuned at first, ends up tuned."""
        transport = StringTransport()
        transport.bufferSize, transport.SEND_LIMIT = 65536, 131072  # Twisted's
        protocol = outer.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        self.assertEqual((transport.bufferSize, transport.SEND_LIMIT),
                         (SOCKET_READ_SIZE, SEND_SIZE))
        return protocol

    def test_tcp_under_our_tls(self):
        port, outer, interface, factory = self.listen(listen_description("127.0.0.1:8443"))
        self.assertEqual((port, interface), (8443, "127.0.0.1"))
        self.assertIsInstance(outer, TLSMemoryBIOFactory)
        self.assertIs(outer.wrappedFactory, factory)
        self.assert_socket_tuned(outer)

    def test_ipv6_address(self):
        port, _, interface, _ = self.listen(listen_description("[::1]:8443"))
        self.assertEqual((port, interface), (8443, "::1"))

    def test_proxy_header_then_tls(self):
        """
        haproxy: the PROXY header is read on plain TCP, TLS comes next, and
        the socket under the PROXY wrapper is the one tuned for bulk data.
        """
        _, outer, _, factory = self.listen("haproxy:tcp:8443")
        self.assertNotIsInstance(outer, TLSMemoryBIOFactory)
        self.assertIsInstance(outer.wrappedFactory, TLSMemoryBIOFactory)
        self.assertIs(outer.wrappedFactory.wrappedFactory, factory)
        protocol = self.assert_socket_tuned(outer)
        host, port = PROXIED_CLIENT
        protocol.dataReceived(f"PROXY TCP4 {host} 127.0.0.1 {port} 8443\r\n".encode())
        peer = factory.made[0].transport.getPeer()
        self.assertEqual((peer.host, peer.port), PROXIED_CLIENT)

    def test_systemd_without_sockets(self):
        """Without sockets from systemd, systemd: is an option error saying so."""
        e = self.assertRaises(ConfigError, plain_endpoint, None, "systemd:domain=INET:index=0")
        self.assertIn("systemd passed no such socket (LISTEN_FDS)", str(e))

    def test_bad_descriptions(self):
        for description, words in [("tcp:https", "invalid literal for int()"),
                                   ("tcp:8443:color=blue", "unexpected keyword argument"),
                                   ("systemd:domain=INET", "exactly one of descriptor index or name")]:
            e = self.assertRaises(ConfigError, plain_endpoint, None, description)
            self.assertIn(f"bad listen endpoint {description!r}: ", str(e))
            self.assertIn(words, str(e))


class ProxyHeaderClient(portforward.ProxyClient):
    """A front proxy's side towards the server: the PROXY header first."""

    def connectionMade(self):
        host, port = PROXIED_CLIENT
        server = self.transport.getPeer()
        self.transport.write(f"PROXY TCP4 {host} {server.host} {port} {server.port}\r\n".encode())
        super().connectionMade()


class ProxyHeaderClientFactory(portforward.ProxyClientFactory):
    protocol = ProxyHeaderClient


class ProxyHeaderServer(portforward.ProxyServer):
    clientProtocolFactory = ProxyHeaderClientFactory


class ProxyHeaderFactory(portforward.ProxyFactory):
    """A front proxy on 127.0.0.1 that sends the PROXY header (v1) as HAProxy does."""

    protocol = ProxyHeaderServer


class ProxyProtocolTests(TestCase):
    """
    The server as twistd builds it (makeService), behind a front proxy that
    sends the PROXY header: the tunnel opens, the client's address is the
    header's, and the socket under the PROXY wrapper is tuned.
    """

    timeout = 120

    @inlineCallbacks
    def start(self, *listen):
        self.logs = LogCapture(self)
        self.sandbox = Sandbox.create(temp_dir(self))
        options = server_service.Options()
        options.parseOptions([*listen, "--api-listen", "none", "--api-socket", "none",
                              "--state-dir", "none", "--certs",
                              str(self.sandbox.certs_dir), "--backuppc-conf",
                              str(self.sandbox.conf_dir)])
        top = server_service.makeService(options, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        line = yield self.logs.wait_for("bpctunnel server listening on 127.0.0.1:")
        server_port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        front = reactor.listenTCP(0, ProxyHeaderFactory("127.0.0.1", server_port),
                                  interface="127.0.0.1")
        self.addCleanup(front.stopListening)
        return top.services[0].factory, front.getHost().port

    @inlineCallbacks
    def assert_through_front(self, server_factory, front_port):
        files = self.sandbox.issue_client("laptop1")
        self.sandbox.register("laptop1", free_port(), files.fingerprint)
        config = self.sandbox.write_client_config(files, f"wss://127.0.0.1:{front_port}/tunnel",
                                                  {"m": temp_dir(self)})
        client = start_client(reactor, config)
        self.addCleanup(client.stop)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        host, port = PROXIED_CLIENT
        yield self.logs.wait_for(f"tunnel up for laptop1 from {host}:{port},")
        assert_bulk_socket(self, server_factory.tunnels.get("laptop1").transport)

    @inlineCallbacks
    def test_haproxy_endpoint(self):
        factory, front = yield self.start("--listen", "haproxy:tcp:0:interface=127.0.0.1")
        yield self.assert_through_front(factory, front)

    @inlineCallbacks
    def test_proxy_protocol_flag(self):
        factory, front = yield self.start("--listen", "127.0.0.1:0", "--proxy-protocol")
        yield self.assert_through_front(factory, front)


class SocketActivationTests(TestCase):
    """
    twistd bpctunnel-server --listen systemd:domain=INET:index=0 takes the
    listening socket it inherits as fd 3, as systemd passes it
    (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), and a client gets through.
    """

    timeout = 120

    @inlineCallbacks
    def test_inherited_socket(self):
        sandbox = Sandbox.create(temp_dir(self))
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="bpctunnel", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                            os.environ.get("PYTHONPATH")])))
        # LISTEN_PID is the server's own process id: the shell's, which exec keeps.
        argv = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh",
                sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=", "--logfile=-", "bpctunnel-server",
                "--listen", "systemd:domain=INET:index=0", "--api-listen", "none", "--api-socket", "none",
                "--state-dir", "none",
                "--certs", str(sandbox.certs_dir), "--backuppc-conf", str(sandbox.conf_dir)]
        server = RunningProcess()
        reactor.spawnProcess(server, argv[0], argv, env=env,
                             childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()})
        self.addCleanup(server.stop, "KILL")
        listening.close()  # the server's now
        yield server.wait_for(f"bpctunnel server listening on 127.0.0.1:{port} ")

        files = sandbox.issue_client("laptop1")
        sandbox.register("laptop1", free_port(), files.fingerprint)
        config = sandbox.write_client_config(files, f"wss://127.0.0.1:{port}/tunnel",
                                             {"m": temp_dir(self)})
        client = start_client(reactor, config)
        self.addCleanup(client.stop)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        yield server.wait_for("tunnel up for laptop1 from 127.0.0.1:")
        yield client.stop()
        yield server.stop("TERM")
        self.assertNotIn("Traceback (most recent call last)", server.text)
