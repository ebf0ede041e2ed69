"""
BackupPC connecting into a tunnel that has been silent (issue 16, section 6):
the server probes it before the channel opens, and closes BackupPC's
connection if it does not answer within --probe-timeout, instead of leaving
BackupPC to wait for the keepalive.  In memory: a session over a fake link
(L{tests.test_server_session}), BackupPC's connection on a StringTransport,
time on a Clock.  tests/test_link_faults.py shows the same with a real cut link.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from bpctunnel.server.session import RECENT_DATA
from bpctunnel.wire import framing
from tests.test_bridges import HalfCloseTransport
from tests import test_server_session
from tests.test_server_session import PORT, PROBE_TIMEOUT, SessionTestCase

answer = test_server_session.PingTests.answer


class SilentTunnelProbeTests(SessionTestCase):
    """What happens to BackupPC's connection into a silent or a busy tunnel."""

    def backuppc_connects(self, source_port: int = 40000):
        """BackupPC connects to laptop1's port: (its protocol, its transport)."""
        factory = self.ports[-1].factory
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", source_port))
        transport = HalfCloseTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", PORT),
                                       peerAddress=IPv4Address("TCP", "127.0.0.1", source_port))
        protocol.makeConnection(transport)
        return protocol, transport

    def client_says(self, session, message) -> None:
        session.message_received(framing.encode(message), True)

    def test_silent_tunnel_probed_before_the_channel_opens(self):
        """Into a tunnel that carried no data yet: a PING first, no OPEN, BackupPC not read."""
        session, link = self.open()
        self.clock.advance(10)
        _, transport = self.backuppc_connects()
        self.assertEqual(len(link.sent_of(framing.Ping)), 1)
        self.assertEqual(link.sent_of(framing.Open), [])
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(session.mux.channels, {})

    def test_no_answer_closes_backuppc_connection_only(self):
        """
        No answer within --probe-timeout: BackupPC's connection is aborted
        and the log says so with the host's name; the tunnel itself is left
        to the keepalive.
        """
        session, link = self.open()
        self.clock.advance(10)
        _, transport = self.backuppc_connects()
        self.clock.advance(PROBE_TIMEOUT - 0.01)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.01)
        self.assertTrue(transport.aborted)
        [line] = self.logs.matching("did not answer")
        self.assertEqual(line, "laptop1 did not answer a probe within 5 seconds; closing "
                               "BackupPC's connection (the keepalive decides about the tunnel)")
        self.assertEqual(link.sent_of(framing.Open), [])
        self.assertEqual((link.closes, link.aborts), ([], 0))
        self.assertFalse(session.mux.lost)
        self.assertFalse(self.ports[-1].stopped)
        self.assertIs(self.state.tunnels.get("laptop1"), link)

    def test_answer_opens_the_channel_and_data_flows(self):
        """
        The client answers: the channel opens, BackupPC is read once the
        client accepts it, and bytes go both ways.
        """
        session, link = self.open()
        self.clock.advance(10)
        protocol, transport = self.backuppc_connects()
        self.clock.advance(0.1)
        answer(self, session, link)
        [opened] = link.sent_of(framing.Open)
        self.assertEqual(transport.producerState, "paused")  # until the client's rsync runs
        self.client_says(session, framing.Accept(opened.channel_id, 65536))
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"@RSYNCD: 31.0\n")
        self.assertEqual(link.sent_of(framing.Data)[-1],
                         framing.Data(opened.channel_id, b"@RSYNCD: 31.0\n"))
        self.client_says(session, framing.Data(opened.channel_id, b"@RSYNCD: 31.0\n"))
        self.assertEqual(transport.value(), b"@RSYNCD: 31.0\n")
        self.clock.advance(PROBE_TIMEOUT)
        self.assertFalse(transport.aborted)
        self.assertEqual(self.logs.matching("did not answer"), [])

    def test_any_sign_of_life_answers(self):
        """
        Anything from the client while the probe is out answers it, as it
        answers the keepalive: after an outage the client's retransmitted
        ping may arrive while the PING still waits behind the server's own.
        """
        for sign_of_life in (lambda session: session.ping_received(10),
                             lambda session: session.pong_received(b"12345678"),
                             lambda session: self.client_says(
                                 session, framing.Control({"type": "modules", "modules": []}))):
            session, link = self.open(source_port=len(self.ports) + 50000)
            self.backuppc_connects()
            self.assertEqual(link.sent_of(framing.Open), [])
            sign_of_life(session)
            self.assertEqual(len(link.sent_of(framing.Open)), 1)
            session.connection_lost()

    def test_tunnel_carrying_data_is_not_probed(self):
        """
        Within L{RECENT_DATA} seconds of data from the client, the next
        connection (BackupPC's next share) opens its channel at once; later,
        it is probed again.
        """
        session, link = self.open()
        first, _ = self.backuppc_connects(40000)
        answer(self, session, link)
        [opened] = link.sent_of(framing.Open)
        self.client_says(session, framing.Accept(opened.channel_id, 65536))
        self.client_says(session, framing.Data(opened.channel_id, b"files"))
        first.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(RECENT_DATA)
        _, transport = self.backuppc_connects(40001)
        self.assertEqual(len(link.sent_of(framing.Ping)), 1)  # the first connection's
        self.assertEqual(len(link.sent_of(framing.Open)), 2)
        self.clock.advance(0.01)
        self.backuppc_connects(40002)
        self.assertEqual(len(link.sent_of(framing.Ping)), 2)
        self.assertEqual(len(link.sent_of(framing.Open)), 2)

    def test_control_messages_are_no_data(self):
        """A tunnel that only just opened, or sent only control messages, is probed."""
        session, link = self.open()
        self.client_says(session, framing.Control({"type": "modules", "modules": ["docs"]}))
        self.backuppc_connects()
        self.assertEqual(len(link.sent_of(framing.Ping)), 1)
        self.assertEqual(link.sent_of(framing.Open), [])

    def test_backuppc_gone_during_the_probe(self):
        """BackupPC gives up while the probe is out: the answer opens no channel."""
        session, link = self.open()
        protocol, _ = self.backuppc_connects()
        protocol.connectionLost(Failure(ConnectionDone()))
        answer(self, session, link)
        self.assertEqual(link.sent_of(framing.Open), [])
        self.assertEqual(session.mux.channels, {})

    def test_tunnel_closed_during_the_probe(self):
        """The tunnel closes while the probe is out: BackupPC's connection ends, no probe blamed."""
        session, link = self.open()
        _, transport = self.backuppc_connects()
        session.closed(1000, "the client is stopping")
        self.assertTrue(transport.aborted)
        self.assertEqual(self.logs.matching("did not answer"), [])
        self.assertEqual(len(self.logs.matching(
            "closing BackupPC's connection to laptop1: the tunnel closed")), 1)
        self.assertEqual(link.sent_of(framing.Open), [])

    def test_revoked_during_the_probe(self):
        """The host is revoked while the probe is out: the answer opens no channel."""
        session, link = self.open()
        _, transport = self.backuppc_connects()
        self.sandbox.register("laptop1", PORT, "0" * 64)
        answer(self, session, link)
        self.assertTrue(transport.aborted)
        self.assertEqual(link.sent_of(framing.Open), [])
        self.assertEqual(len(link.closes), 1)
