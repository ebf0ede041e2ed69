"""
In-memory tests of the server's per-connection logic
(L{bpctunnel.server.session.TunnelSession}) and its handshake limit
(L{bpctunnel.server.admission.HandshakeLimit}): no sockets, no real time.

A session runs over a real L{ServerState} (registry, metrics, backup desk,
host authorization over a sandbox's BackupPC files) on a L{Clock}; its
connection is a L{FakeLink} that records what the session asks of it, and
its port for BackupPC a L{FakePort}.  The last class drives the Autobahn
adapter itself over a L{StringTransport}, to show that it forwards.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from bpctunnel.refusals import Refusal
from bpctunnel.server.admission import DROP_LOG_INTERVAL
from bpctunnel.server.handshake_refusals import HandshakeDenied
from bpctunnel.server.keepalive import Keepalive
from bpctunnel.server.protocol import TunnelServerFactory, TunnelServerProtocol
from bpctunnel.server.server_state import ServerState
from bpctunnel.server.session import MAX_FOLLOWERS, MAX_HANDSHAKE_BYTES, ITunnelLink, TunnelSession
from bpctunnel.server.settings import ServerSettings
from bpctunnel.testing.sandbox import Sandbox
from bpctunnel.wire import framing
from tests.helpers import LogCapture, temp_dir
from tests.test_hostile import upgrade_request

PORT = 40001
KEEPALIVE = 30.0
HANDSHAKE_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0
CHECK_INTERVAL = 5.0


@implementer(ITunnelLink)
class FakeLink:
    """
    A session's connection: records messages, pings, closes and aborts.
    Like the WebSocket protocol, it answers for its session to whoever
    holds it as the tunnel (registry, backup desk, observers).
    """

    def __init__(self):
        self.session: TunnelSession | None = None
        self.sent: list = []
        self.pings: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.aborts = 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def send_while_open(self, payload):
        self.sent.append(framing.decode(bytes(payload)))

    def send_pieces_while_open(self, pieces):
        self.sent.append(framing.decode(b"".join(pieces)))

    def send_ping(self, payload):
        self.pings.append(payload)

    def close_connection(self, code, reason):
        self.closes.append((code, reason))

    def abort_connection(self):
        self.aborts += 1

    def sent_of(self, kind) -> list:
        return [m for m in self.sent if isinstance(m, kind)]


class FakePort:
    """A listening port for BackupPC that records whether it was closed."""

    def __init__(self, number: int, factory):
        self.number, self.factory = number, factory
        self.stopped = False

    def stopListening(self):
        self.stopped = True


class SessionTestCase(unittest.TestCase):
    """A server state on a clock, with laptop1 registered for port L{PORT}."""

    settings: dict = {}

    def setUp(self):
        self.clock = Clock()
        self.logs = LogCapture(self)
        self.sandbox = Sandbox.create(temp_dir(self))
        self.files = self.sandbox.issue_client("laptop1")
        self.cert = self.files.cert.read_bytes()
        self.sandbox.register("laptop1", PORT, self.files.fingerprint)
        self.ports: list[FakePort] = []
        #: Set to a Deferred to hold the next listen_local until the test fires it.
        self.pending_listen: Deferred | None = None
        options = dict(keepalive=KEEPALIVE, handshake_timeout=HANDSHAKE_TIMEOUT,
                       probe_timeout=PROBE_TIMEOUT, check_interval=CHECK_INTERVAL)
        options.update(self.settings)
        self.state = ServerState(self.clock, ServerSettings(self.sandbox.conf_dir, **options),
                                 listen_local=self.listen_local)
        self.events: list = []
        self.state.observers.append(lambda event, tunnel: self.events.append((event, tunnel)))

    def listen_local(self, number: int, factory) -> Deferred:
        port = FakePort(number, factory)
        self.ports.append(port)
        if self.pending_listen is not None:
            d, self.pending_listen = self.pending_listen, None
            return d.addCallback(lambda _: port)
        return succeed(port)

    def connect(self, ip: str = "192.0.2.1", source_port: int = 50000):
        """A new connection: (session, link, whether it was admitted)."""
        link = FakeLink()
        link.session = session = TunnelSession(self.state, link)
        return session, link, session.connection_made(ip, f"{ip}:{source_port}")

    def handshake(self, session, path="/tunnel", protocols=(framing.SUBPROTOCOL,), role=None,
                  cert=None) -> Deferred:
        return session.handshake(path, list(protocols), role, cert or self.cert,
                                 session.peer_address)

    def open(self, ip: str = "192.0.2.1", source_port: int = 50000):
        """An authorized, open tunnel for laptop1: (session, link)."""
        session, link, admitted = self.connect(ip, source_port)
        self.assertTrue(admitted)
        self.assertEqual(self.successResultOf(self.handshake(session)), framing.SUBPROTOCOL)
        session.opened()
        return session, link

    def denial(self, d: Deferred) -> HandshakeDenied:
        return self.failureResultOf(d, HandshakeDenied).value

    def refusals(self, refusal: Refusal) -> float:
        return self.state.metrics.registry.get_sample_value(
            "bpctunnel_refusals_total", {"reason": refusal.code}) or 0.0

    def assertTunnelGone(self, session, link):
        """The tunnel's port is closed, its host free, its channels failed, observers told."""
        self.assertTrue(self.ports[-1].stopped)
        self.assertIsNone(self.state.tunnels.get("laptop1"))
        self.assertTrue(session.mux.lost)
        self.assertEqual(self.events[-1], ("closed", link))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OpenTests(SessionTestCase):
    def test_open_registers_listens_and_tells(self):
        """An authorized client gets its host, a port on RsyncdClientPort, and 'up' is told."""
        session, link = self.open()
        self.assertIs(self.state.tunnels.get("laptop1"), link)
        self.assertEqual([p.number for p in self.ports], [PORT])
        self.assertEqual((session.host, session.settings.port), ("laptop1", PORT))
        self.assertEqual(self.events, [("open", link)])
        self.assertEqual(self.state.metrics.handshakes._value.get(), 1)
        [line] = self.logs.matching("tunnel up for laptop1")
        self.assertIn("from 192.0.2.1:50000, listening on 127.0.0.1:40001", line)

    def test_fake_link_is_a_link(self):
        self.assertTrue(verifyObject(ITunnelLink, FakeLink()))

    def test_unknown_host_refused(self):
        """A certificate for a host not in the hosts file: 403 'unknown host', counted."""
        stranger = self.sandbox.issue_client("stranger").cert.read_bytes()
        session, link, _ = self.connect()
        denied = self.denial(self.handshake(session, cert=stranger))
        self.assertEqual((denied.refusal, denied.http_status),
                         (Refusal.UNKNOWN_HOST, Refusal.UNKNOWN_HOST.http_status))
        self.assertTrue(denied.text.startswith("unknown host for stranger: "), denied.text)
        self.assertEqual(self.refusals(Refusal.UNKNOWN_HOST), 1)
        self.assertEqual((self.ports, self.events), ([], []))

    def test_certificate_without_common_name(self):
        """A CA-signed certificate that names no host: 403 'bad certificate', not a 503."""
        ca_cert = x509.load_pem_x509_certificate(self.sandbox.ca.cert_pem)
        ca_key = serialization.load_pem_private_key(self.sandbox.ca.key_pem, None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        nameless = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
                    .issuer_name(ca_cert.subject).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                    .sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        session, _, _ = self.connect()
        denied = self.denial(self.handshake(session, cert=nameless))
        self.assertEqual((denied.refusal, denied.http_status), (Refusal.BAD_CERTIFICATE, 403))
        self.assertIn("has no common name", denied.text)
        self.assertTrue(denied.text.startswith("bad certificate for (no host name): "),
                        denied.text)
        self.assertEqual(self.refusals(Refusal.BAD_CERTIFICATE), 1)
        self.assertEqual(self.refusals(Refusal.SERVER_CONFIG_ERROR), 0)

    def test_wrong_path_refused(self):
        session, _, _ = self.connect()
        denied = self.denial(self.handshake(session, path="/nope"))
        self.assertEqual((denied.refusal, denied.http_status), (Refusal.WRONG_PATH, 404))
        self.assertEqual(denied.text, "no tunnel at /nope; the path is /tunnel")
        self.assertEqual(self.refusals(Refusal.WRONG_PATH), 1)


class KeepaliveTests(SessionTestCase):
    """The keepalive: a WebSocket ping every KEEPALIVE seconds, dead after two silent ones."""

    def test_ping_sent_on_schedule(self):
        _, link = self.open()
        self.clock.advance(KEEPALIVE - 0.1)
        self.assertEqual(link.pings, [])
        self.clock.advance(0.1)
        self.assertEqual(len(link.pings), 1)
        self.assertEqual(len(link.pings[0]), 8)

    def test_pong_resets(self):
        """An answer keeps the tunnel; the next ping is due KEEPALIVE seconds after it."""
        session, link = self.open()
        self.clock.advance(KEEPALIVE)
        self.clock.advance(5)
        session.pong_received(link.pings[0])
        self.clock.advance(KEEPALIVE - 0.1)  # past when the first ping would have timed out
        self.assertEqual((len(link.pings), link.aborts), (1, 0))
        self.clock.advance(0.1)
        self.assertEqual(len(link.pings), 2)
        self.assertNotEqual(link.pings[0], link.pings[1])
        session.pong_received(link.pings[1])
        self.clock.advance(KEEPALIVE * 1.5)
        self.assertEqual((len(link.pings), link.aborts), (3, 0))
        self.assertFalse(session.mux.lost)

    def test_missing_pong_closes_after_two_intervals(self):
        """
        No answer: two intervals after the ping the connection is aborted,
        the port freed, and the log says why.  An outage that begins just
        before a ping has two whole intervals to end (issue 16).
        """
        session, link = self.open()
        self.clock.advance(KEEPALIVE)
        self.assertEqual(len(link.pings), 1)
        self.clock.advance(2 * KEEPALIVE - 0.1)
        self.assertEqual(link.aborts, 0)
        self.assertEqual(self.logs.matching("tunnel of laptop1 closed"), [])
        self.clock.advance(0.1)
        self.assertEqual(link.aborts, 1)
        self.assertEqual(self.logs.matching("tunnel of laptop1 closed"),
                         ["tunnel of laptop1 closed: ping timeout: no answer within 60 seconds "
                          "(two --keepalive intervals)"])
        self.assertTunnelGone(session, link)
        # What Autobahn reports once the abort lands adds nothing.
        session.closed(1006, "connection was closed uncleanly")
        session.connection_lost()
        self.assertEqual(len(self.logs.matching("tunnel of laptop1 closed")), 1)
        self.assertEqual([e for e, _ in self.events], ["open", "closed"])

    def test_outage_just_before_a_ping_is_survived(self):
        """The answer to a ping sent as an outage began may come 2 intervals later."""
        session, link = self.open()
        self.clock.advance(KEEPALIVE)
        self.clock.advance(2 * KEEPALIVE - 1)
        session.pong_received(link.pings[0])
        self.clock.advance(KEEPALIVE * 1.5)
        self.assertEqual((len(link.pings), link.aborts), (2, 0))

    def test_wrong_pong_does_not_count(self):
        session, link = self.open()
        self.clock.advance(KEEPALIVE)
        session.pong_received(b"not-mine")
        self.clock.advance(2 * KEEPALIVE)
        self.assertEqual(link.aborts, 1)

    def test_any_message_answers(self):
        """A message from the client while a ping is out counts as its answer (bulk traffic)."""
        session, link = self.open()
        self.clock.advance(KEEPALIVE + 10)
        session.message_received(framing.encode(framing.Control({"type": "modules",
                                                                 "modules": ["docs"]})), True)
        self.clock.advance(KEEPALIVE - 0.1)
        self.assertEqual((link.aborts, len(link.pings)), (0, 1))
        self.clock.advance(0.1)
        self.assertEqual(len(link.pings), 2)
        self.assertEqual(session.served_modules, ("docs",))

    def test_message_without_ping_out_does_not_delay(self):
        """Traffic between pings does not postpone the next one."""
        session, link = self.open()
        self.clock.advance(KEEPALIVE - 1)
        session.message_received(framing.encode(framing.Control({"type": "x"})), True)
        self.clock.advance(1)
        self.assertEqual(len(link.pings), 1)

    def test_no_pings_before_open_or_after_close(self):
        session, link, _ = self.connect()
        self.successResultOf(self.handshake(session))
        self.clock.advance(HANDSHAKE_TIMEOUT - 1)
        self.assertEqual(link.pings, [])
        session.opened()
        session.closed(1000, "the client is stopping")
        self.clock.advance(10 * KEEPALIVE)
        self.assertEqual((link.pings, link.aborts), ([], 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keepalive_alone(self):
        """Keepalive on its own: on_dead is called once, and never after stop."""
        clock, pings, dead = Clock(), [], []
        keepalive = Keepalive(clock, 10, 4, pings.append, lambda: dead.append(clock.seconds()))
        keepalive.start()
        keepalive.start()  # a second start does not double the pings
        clock.advance(10)
        self.assertEqual(len(pings), 1)
        clock.advance(4)
        self.assertEqual(dead, [14])
        clock.advance(100)
        self.assertEqual((len(pings), dead), (1, [14]))
        stopped = Keepalive(clock, 10, 4, pings.append, lambda: dead.append("stopped"))
        stopped.start()
        clock.advance(10)
        stopped.stop()
        clock.advance(100)
        self.assertEqual(dead, [14])


class PingTests(SessionTestCase):
    """Round trips through the tunnel (status API ping, takeover probe): PING messages."""

    def answer(self, session, link, index=-1):
        nonce = link.sent_of(framing.Ping)[index].payload
        session.message_received(framing.encode(framing.Pong(nonce)), True)

    def test_round_trip_time(self):
        session, link = self.open()
        d = session.ping(5.0)
        self.clock.advance(0.25)
        self.assertNoResult(d)
        self.answer(session, link)
        self.assertEqual(self.successResultOf(d), 0.25)

    def test_timeout(self):
        session, link = self.open()
        d = session.ping(5.0)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.answer(session, link)  # too late: ignored
        self.assertFalse(session.mux.lost)

    def test_pings_out_end_with_the_tunnel(self):
        session, _ = self.open()
        d = session.ping(5.0)
        session.closed(1000, "bye")
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(session.ping(5.0)))


class TakeoverTests(SessionTestCase):
    """A second connection for the host probes the first (probe_timeout)."""

    def test_probe_timeout_replaces_silent_tunnel(self):
        old, old_link = self.open()
        new, new_link, _ = self.connect(source_port=50001)
        d = self.handshake(new)
        self.assertEqual(len(old_link.sent_of(framing.Ping)), 1)
        self.clock.advance(PROBE_TIMEOUT - 0.01)
        self.assertNoResult(d)
        self.assertEqual(old_link.aborts, 0)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), framing.SUBPROTOCOL)
        self.assertEqual(old_link.aborts, 1)
        self.assertTrue(self.ports[0].stopped)
        self.assertFalse(self.ports[1].stopped)
        self.assertIs(self.state.tunnels.get("laptop1"), new_link)
        [line] = self.logs.matching("dropping the tunnel of laptop1 from 192.0.2.1:50000")
        self.assertIn("a new connection from the same host replaced it", line)
        new.opened()
        self.assertEqual(self.events, [("open", old_link), ("closed", old_link), ("open", new_link)])

    def test_newcomer_lost_during_probe_leaves_host_free(self):
        """
        The newcomer goes away while the old tunnel is probed: the silent old
        tunnel is still dropped, and the host ends up free, not held by the
        connection that went (the port it got is closed again).
        """
        old, old_link = self.open()
        new, new_link, _ = self.connect(source_port=50001)
        d = self.handshake(new)
        new.connection_lost()
        self.clock.advance(PROBE_TIMEOUT)
        self.successResultOf(d)
        self.assertEqual(old_link.aborts, 1)
        self.assertEqual([p.stopped for p in self.ports], [True, True])
        self.assertIsNone(self.state.tunnels.get("laptop1"))
        self.assertEqual(self.events, [("open", old_link), ("closed", old_link)])

    def test_answered_probe_refuses_newcomer(self):
        old, old_link = self.open()
        new, _, _ = self.connect(source_port=50001)
        d = self.handshake(new)
        self.clock.advance(1)
        PingTests.answer(self, old, old_link)
        denied = self.denial(d)
        self.assertEqual((denied.refusal, denied.http_status), (Refusal.ALREADY_CONNECTED, 409))
        self.assertTrue(denied.text.startswith("already connected for laptop1: "), denied.text)
        self.assertIs(self.state.tunnels.get("laptop1"), old_link)
        self.assertEqual((old_link.aborts, len(self.ports)), (0, 1))


class RevocationTests(SessionTestCase):
    """The periodic check (every CHECK_INTERVAL seconds) asks BackupPC's files again."""

    def setUp(self):
        super().setUp()
        self.session, self.link = self.open()
        self.state.start_checks()
        self.addCleanup(self.state.stop_checks)

    def test_unchanged_stays(self):
        self.clock.advance(CHECK_INTERVAL * 3)
        self.assertEqual((self.link.closes, self.link.aborts), ([], 0))
        self.assertIs(self.state.tunnels.get("laptop1"), self.link)
        self.assertFalse(self.session.mux.lost)

    def assertClosedBy(self, code: int, refusal: Refusal | None) -> str:
        """After the next check, the tunnel closed with C{code}; returns the reason."""
        self.clock.advance(CHECK_INTERVAL - 0.1)
        self.assertEqual(self.link.closes, [])
        self.clock.advance(0.1)
        [(closed_code, reason)] = self.link.closes
        self.assertEqual(closed_code, code)
        self.assertIs(Refusal.from_text(reason), refusal)
        self.assertEqual(self.logs.matching("dropping the tunnel of laptop1: "),
                         [f"dropping the tunnel of laptop1: {reason}"])
        self.assertTrue(self.ports[0].stopped)
        self.assertIsNone(self.state.tunnels.get("laptop1"))
        self.assertEqual(self.events[-1], ("closed", self.link))
        return reason

    def test_certificate_removed(self):
        """The host config no longer names the certificate: closed as revoked."""
        self.sandbox.register("laptop1", PORT, None, in_hosts=False)
        reason = self.assertClosedBy(framing.WS_CLOSE_REVOKED, Refusal.FINGERPRINT_MISMATCH)
        self.assertTrue(reason.startswith("fingerprint mismatch for laptop1: "), reason)

    def test_host_removed(self):
        (self.sandbox.conf_dir / "hosts").write_text("host dhcp user moreUsers\n")
        self.assertClosedBy(framing.WS_CLOSE_REVOKED, Refusal.UNKNOWN_HOST)

    def test_port_changed(self):
        self.sandbox.register("laptop1", PORT + 1, self.files.fingerprint, in_hosts=False)
        reason = self.assertClosedBy(framing.WS_CLOSE_NORMAL, None)
        self.assertEqual(reason, "RsyncdClientPort of laptop1 changed from 40001 to 40002; "
                                 "reconnect to use it")

    def test_unreadable_files_keep_the_tunnel(self):
        """The server's own files are broken: the tunnel keeps serving, the log says so."""
        (self.sandbox.conf_dir / "hosts").unlink()
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.link.closes, [])
        self.assertFalse(self.session.mux.lost)
        [line] = self.logs.matching("cannot re-check laptop1: ")
        self.assertIn("does not exist", line)

    def test_new_connection_from_backuppc_rechecks_at_once(self):
        """Revocation takes effect on BackupPC's next connection, before any periodic check."""
        factory = self.ports[0].factory
        address = IPv4Address("TCP", "127.0.0.1", 41000)
        self.assertIsNotNone(factory.buildProtocol(address))
        self.sandbox.register("laptop1", PORT, None, in_hosts=False)
        self.assertIsNone(factory.buildProtocol(address))
        [(code, _)] = self.link.closes
        self.assertEqual(code, framing.WS_CLOSE_REVOKED)

    def test_watchers_checked_too(self):
        """A backup-now connection that follows the tunnel is re-checked as well."""
        watcher, watcher_link, _ = self.connect(source_port=50002)
        d = self.handshake(watcher, role="backup-now")
        PingTests.answer(self, self.session, self.link)  # the tunnel answers the probe
        self.successResultOf(d)
        watcher.opened()
        self.assertEqual(self.state.watchers, {watcher_link})
        self.sandbox.register("laptop1", PORT, None, in_hosts=False)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual([c for c, _ in watcher_link.closes], [framing.WS_CLOSE_REVOKED])
        self.assertEqual(self.state.watchers, set())


class HandshakeDeadlineTests(SessionTestCase):
    """A connection has HANDSHAKE_TIMEOUT seconds from accept to an open tunnel."""

    def test_silent_connection_aborted(self):
        session, link, _ = self.connect()
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertEqual(link.aborts, 0)
        self.clock.advance(0.1)
        self.assertEqual(link.aborts, 1)
        self.assertEqual(self.state.handshakes.in_handshake, 1)  # until the connection goes
        session.connection_lost()
        self.assertEqual(self.state.handshakes.in_handshake, 0)

    def test_open_in_time_stays(self):
        _, link = self.open()
        self.clock.advance(HANDSHAKE_TIMEOUT * 2)
        self.assertEqual(link.aborts, 0)

    def test_deadline_covers_authorization(self):
        """
        Authorization that takes too long (here, the port is slow to open)
        ends at the deadline too; when the port opens later, it is closed
        again and the host left free.
        """
        self.pending_listen = slow = Deferred()
        session, link, _ = self.connect()
        d = self.handshake(session)
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertNoResult(d)
        self.assertEqual(link.aborts, 1)
        session.connection_lost()
        slow.callback(None)
        self.assertTrue(self.ports[0].stopped)
        self.assertIsNone(self.state.tunnels.get("laptop1"))
        self.assertEqual(self.events, [])

    def test_lost_before_deadline_cancels_it(self):
        session, link, _ = self.connect()
        session.connection_lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HandshakeLimitTests(SessionTestCase):
    """
    At most 2 connections from one address and 3 in all may be in their
    handshakes; past that, the oldest that has not sent its opening
    handshake makes room, and only if there is none is the newcomer dropped.
    """

    settings = {"max_unauthenticated": 2, "max_handshakes": 3}

    def requested(self, ip: str, port: int):
        """A connection whose opening handshake arrived (and was refused: wrong path)."""
        session, link, admitted = self.connect(ip, port)
        self.assertTrue(admitted)
        self.denial(self.handshake(session, path="/nope"))
        return session, link

    def test_per_address_limit_evicts_the_oldest_stalled(self):
        _, first, _ = self.connect("192.0.2.1", 1)
        _, second, _ = self.connect("192.0.2.1", 2)
        self.clock.advance(3)
        _, third, admitted = self.connect("192.0.2.1", 3)
        self.assertTrue(admitted)
        self.assertEqual((first.aborts, second.aborts, third.aborts), (1, 0, 0))
        self.assertEqual(self.state.handshakes.from_address("192.0.2.1"), 2)
        self.assertEqual(self.logs.matching("to admit"),
                         ["dropping the connection from 192.0.2.1:1 (no opening handshake after "
                          "3.0 s) to admit 192.0.2.1:3: more than 2 connections from 192.0.2.1 "
                          "have not authenticated yet"])
        self.assertTrue(self.connect("192.0.2.2", 1)[2])  # another address still gets in

    def test_per_address_limit_when_all_requested(self):
        self.requested("192.0.2.1", 1)
        self.requested("192.0.2.1", 2)
        _, link, admitted = self.connect("192.0.2.1", 3)
        self.assertFalse(admitted)
        self.assertEqual(self.refusals(Refusal.TOO_MANY_FROM_ONE_ADDRESS), 1)
        self.assertEqual(self.refusals(Refusal.BUSY), 0)
        self.assertEqual(self.logs.matching("dropping a connection from"),
                         ["dropping a connection from 192.0.2.1:3: more than 2 connections from "
                          "192.0.2.1 have not authenticated yet"])

    def test_total_limit_evicts_from_the_most_crowded_address(self):
        _, crowded_old, _ = self.connect("192.0.2.1", 1)
        _, lone, _ = self.connect("192.0.2.2", 1)
        _, crowded_new, _ = self.connect("192.0.2.1", 2)
        self.assertTrue(self.connect("192.0.2.3", 1)[2])
        self.assertEqual((crowded_old.aborts, lone.aborts, crowded_new.aborts), (1, 0, 0))
        self.assertEqual(self.state.handshakes.in_handshake, 3)
        [line] = self.logs.matching("to admit 192.0.2.3:1")
        self.assertIn("3 connections are in their handshakes already (--max-handshakes)", line)

    def test_total_limit_when_all_requested(self):
        for ip, port in (("192.0.2.1", 1), ("192.0.2.1", 2), ("192.0.2.2", 1)):
            self.requested(ip, port)
        self.assertFalse(self.connect("192.0.2.3", 1)[2])
        self.assertEqual(self.refusals(Refusal.BUSY), 1)
        [line] = self.logs.matching("dropping a connection from 192.0.2.3:1: ")
        self.assertIn("3 connections are in their handshakes already (--max-handshakes)", line)

    def test_evicted_connection_frees_its_slot_once(self):
        evicted, _, _ = self.connect("192.0.2.1", 1)
        self.connect("192.0.2.1", 2)
        self.connect("192.0.2.1", 3)
        evicted.connection_lost()  # the abort's consequence
        self.assertEqual(self.state.handshakes.from_address("192.0.2.1"), 2)
        self.assertEqual(self.state.handshakes.in_handshake, 2)

    def test_slot_freed_on_authentication(self):
        session, _, _ = self.connect("192.0.2.1", 1)
        self.requested("192.0.2.1", 2)
        self.successResultOf(self.handshake(session))
        self.assertFalse(self.connect("192.0.2.1", 3)[2])  # authorized, not yet open
        session.opened()
        self.assertTrue(self.connect("192.0.2.1", 4)[2])
        session.connection_lost()  # an open tunnel's end frees nothing more
        self.assertEqual(self.state.handshakes.from_address("192.0.2.1"), 2)

    def test_slot_freed_on_disconnect(self):
        first, _, _ = self.connect("192.0.2.1", 1)
        self.requested("192.0.2.1", 2)
        first.connection_lost()
        first.connection_lost()  # twice: freed once
        self.assertEqual(self.state.handshakes.from_address("192.0.2.1"), 1)
        self.assertTrue(self.connect("192.0.2.1", 3)[2])
        self.assertEqual(self.state.handshakes.from_address("192.0.2.1"), 2)

    def test_refused_handshake_holds_slot_until_gone(self):
        session, _, _ = self.connect("192.0.2.1", 1)
        self.denial(self.handshake(session, path="/nope"))
        self.assertEqual(self.state.handshakes.in_handshake, 1)
        session.connection_lost()
        self.assertEqual(self.state.handshakes.in_handshake, 0)

    def test_drops_logged_at_most_every_interval(self):
        self.requested("192.0.2.1", 0)
        self.requested("192.0.2.1", 1)
        self.connect("192.0.2.1", 2)
        self.connect("192.0.2.1", 10)
        self.assertEqual(len(self.logs.matching("dropping a connection")), 1)
        self.clock.advance(DROP_LOG_INTERVAL)
        self.connect("192.0.2.1", 11)
        lines = self.logs.matching("dropping a connection")
        self.assertEqual(len(lines), 2)
        self.assertIn("(1 more dropped since the last such line)", lines[1])
        self.assertEqual(self.refusals(Refusal.TOO_MANY_FROM_ONE_ADDRESS), 3)


class StalledHandshakeAttackTests(SessionTestCase):
    """
    Issue 16, class 3, in memory: an attacker behind the laptop's address
    opens 100 connections a second and never sends a request; the laptop,
    whose request comes one round trip (0.1 s) after its connection, gets
    its tunnel at its first try.  The default limits (16 per address).
    """

    def test_laptop_gets_in_while_the_attacker_hammers(self):
        attackers = []
        for _ in range(300):  # three seconds of the attack before the laptop comes
            attackers.append(self.connect("192.0.2.1", 1000 + len(attackers)))
            self.clock.advance(0.01)
        laptop, link, admitted = self.connect("192.0.2.1", 50000)
        self.assertTrue(admitted)
        for _ in range(10):  # the attack goes on during the laptop's round trip
            attackers.append(self.connect("192.0.2.1", 1000 + len(attackers)))
            self.clock.advance(0.01)
        self.assertEqual(link.aborts, 0)
        self.assertEqual(self.successResultOf(self.handshake(laptop)), framing.SUBPROTOCOL)
        laptop.opened()
        self.assertIs(self.state.tunnels.get("laptop1"), link)
        # The laptop's place is free again; the attacker holds the other 15.
        self.assertEqual(self.state.handshakes.from_address("192.0.2.1"), 15)
        self.assertEqual(sum(a[1].aborts for a in attackers), len(attackers) - 15)
        lines = self.logs.matching("to admit")
        self.assertLessEqual(len(lines), 10, lines[:12])


# -- the Autobahn adapter, in memory ---------------------------------------------------------


class CertifiedTransport(StringTransport):
    """A StringTransport whose peer presented C{cert_pem} (as a TLS transport says)."""

    def __init__(self, cert_pem: bytes | None, ip: str = "192.0.2.1"):
        super().__init__(peerAddress=IPv4Address("TCP", ip, 50000))
        self.cert_pem = cert_pem

    def unregisterProducer(self):
        # As a real transport: dropping a connection that registered none is fine.
        self.producer = None

    def getPeerCertificate(self):
        if self.cert_pem is None:
            return None
        return crypto.X509.from_cryptography(x509.load_pem_x509_certificate(self.cert_pem))


class AdapterTests(SessionTestCase):
    """TunnelServerProtocol over a StringTransport: Autobahn's events reach the session."""

    def make(self, cert_pem: bytes | None):
        clock = MemoryReactorClock()
        self.reactor = clock
        factory = TunnelServerFactory(clock, self.state.settings, listen_local=self.listen_local)
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 50000))
        transport = CertifiedTransport(cert_pem)
        protocol.makeConnection(transport)
        return factory, protocol, transport

    def test_adapter_is_a_link(self):
        self.assertTrue(verifyClass(ITunnelLink, TunnelServerProtocol))

    def test_refusal_is_the_http_error(self):
        _, protocol, transport = self.make(None)
        protocol.dataReceived(upgrade_request("/tunnel"))
        self.assertTrue(transport.value().startswith(
            b"HTTP/1.1 403 unknown host for (no certificate): no client certificate was "
            b"presented\r\n"), transport.value()[:200])

    def test_open_tunnel_and_keepalive_frames(self):
        """
        A certified client's handshake opens the tunnel; the keepalive's ping
        is a WebSocket ping frame, a pong frame answers it, and silence
        aborts the connection.
        """
        factory, protocol, transport = self.make(self.cert)
        protocol.dataReceived(upgrade_request("/tunnel"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value()[:200])
        self.assertIs(factory.tunnels.get("laptop1"), protocol)
        self.assertEqual((protocol.host, protocol.settings.port), ("laptop1", PORT))
        self.assertFalse(protocol.mux.lost)
        transport.clear()
        self.reactor.advance(KEEPALIVE)
        frame = transport.value()
        self.assertEqual((frame[0], frame[1]), (0x89, 8))  # FIN + ping, unmasked, 8 bytes
        protocol.dataReceived(bytes((0x8A, 8)) + frame[2:10])  # the client's pong
        self.reactor.advance(KEEPALIVE - 0.1)
        self.assertFalse(transport.disconnected)
        transport.clear()
        self.reactor.advance(0.1)
        self.assertEqual(transport.value()[0], 0x89)  # the next ping: never answered
        self.reactor.advance(2 * KEEPALIVE - 0.1)
        self.assertFalse(transport.disconnected)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertTrue(self.ports[0].stopped)
        self.assertIsNone(factory.tunnels.get("laptop1"))

    def test_silent_connection_aborted_at_deadline(self):
        _, protocol, transport = self.make(self.cert)
        self.reactor.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnected)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)


class ViolationFloodTests(SessionTestCase):
    """A client that floods CONTROL messages of a type we don't know (issue 16, class 2)."""

    def test_unknown_control_flood_is_logged_in_sums_and_closes_the_tunnel(self):
        session, link = self.open()
        message = framing.encode(framing.Control({"type": "from-the-future\nforged"}))
        for _ in range(100_000):
            session.message_received(message, True)
        self.assertEqual(len(link.closes), 1, link.closes[:3])
        code, reason = link.closes[0]
        self.assertEqual(code, framing.WS_CLOSE_PROTOCOL_ERROR)
        self.assertIn("protocol error: 1,001 bad messages within 10 s", reason)
        self.assertIn("1,001 unknown control messages", reason)
        lines = self.logs.matching("control message")
        self.assertLessEqual(len(lines), 10, lines)
        self.assertTrue(all("\n" not in line for line in lines), lines)
        self.assertEqual(len(self.logs.matching("closing the tunnel of laptop1: protocol error")), 1)

    def test_a_few_unknown_control_messages_cost_nothing(self):
        session, link = self.open()
        for n in range(50):
            session.message_received(framing.encode(framing.Control({"type": f"new-{n}"})), True)
            self.clock.advance(1)
        self.assertEqual(link.closes, [])
        self.assertFalse(session.mux.lost)


class HandshakeSizeTests(SessionTestCase):
    """Issue 16, class 2: what a client sends before its tunnel opens is bounded."""

    def make(self):
        return AdapterTests.make(self, self.cert)

    def test_endless_headers_dropped_past_the_limit(self):
        _, protocol, transport = self.make()
        request = upgrade_request("/tunnel")
        head = request[:-2]  # the headers never end
        protocol.dataReceived(head)
        filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        sent = len(head)
        while sent + len(filler) <= MAX_HANDSHAKE_BYTES:
            protocol.dataReceived(filler)
            sent += len(filler)
        self.assertFalse(transport.disconnected)
        protocol.dataReceived(filler)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")  # no answer, no tunnel
        self.assertEqual(self.ports, [])
        self.assertEqual(self.state.handshakes.in_handshake, 0)
        self.assertEqual(len(self.logs.matching("its opening handshake is larger than 16 KiB")),
                         1)

    def test_headers_within_the_limit_open_the_tunnel(self):
        factory, protocol, transport = self.make()
        request = upgrade_request("/tunnel")
        extra = b"".join(b"X-Proxy-%d: %s\r\n" % (n, b"v" * 500) for n in range(20))
        self.assertLess(len(request) + len(extra), MAX_HANDSHAKE_BYTES)
        protocol.dataReceived(request[:-2] + extra + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value()[:200])
        self.assertIs(factory.tunnels.get("laptop1"), protocol)

    def test_open_tunnel_takes_more_than_the_limit(self):
        _, protocol, transport = self.make()
        protocol.dataReceived(upgrade_request("/tunnel"))
        message = framing.encode(framing.Control({"type": "modules", "modules": ["x" * 200]}))
        frame = bytes((0x82, 126)) + len(message).to_bytes(2, "big") + message
        for _ in range(2 * MAX_HANDSHAKE_BYTES // len(frame) + 1):
            protocol.dataReceived(frame)
        self.assertFalse(transport.disconnected)

    def test_many_oversized_handshakes_few_lines(self):
        factory, _, _ = self.make()
        for n in range(100):
            protocol = factory.buildProtocol(IPv4Address("TCP", f"198.51.100.{n}", 50000))
            transport = CertifiedTransport(self.cert, f"198.51.100.{n}")
            protocol.makeConnection(transport)
            self.assertFalse(transport.disconnected)  # admitted
            protocol.dataReceived(b"GET /tunnel HTTP/1.1\r\n" + b"a" * MAX_HANDSHAKE_BYTES)
            self.assertTrue(transport.disconnected)
        lines = self.logs.matching("opening handshake is larger than")
        self.assertEqual(len(lines), 5, lines[:10])
        self.reactor.advance(10)
        self.assertEqual(len(self.logs.matching("95 more oversized opening handshakes")), 1,
                         self.logs.lines[-3:])


class WatcherLimitTests(SessionTestCase):
    """Issue 16, class 2: a bounded number of backup-now connections follow one host's tunnel."""

    def follow(self, n: int):
        watcher, link, admitted = self.connect("192.0.2.9", 40000 + n)
        self.assertTrue(admitted)
        d = self.handshake(watcher, role="backup-now")
        if not d.called:
            PingTests.answer(self, self.session, self.link)  # the tunnel answers the probe
        return watcher, link, d

    def test_followers_beyond_the_limit_refused(self):
        self.session, self.link = self.open()
        followers = []
        for n in range(MAX_FOLLOWERS):
            watcher, link, d = self.follow(n)
            self.assertEqual(self.successResultOf(d), framing.SUBPROTOCOL)
            watcher.opened()
            followers.append(watcher)
        _, _, d = self.follow(MAX_FOLLOWERS)
        denial = self.denial(d)
        self.assertEqual(denial.refusal, Refusal.TOO_MANY_WATCHERS)
        self.assertEqual(denial.http_status, 429)
        self.assertEqual(denial.text, f"too many backup-now connections for laptop1: "
                                      f"{MAX_FOLLOWERS} are following its tunnel already "
                                      f"(at most {MAX_FOLLOWERS})")
        self.assertEqual(self.refusals(Refusal.TOO_MANY_WATCHERS), 1)
        followers[0].connection_lost()  # one leaves: a place is free
        watcher, _, d = self.follow(MAX_FOLLOWERS + 1)
        self.assertEqual(self.successResultOf(d), framing.SUBPROTOCOL)
