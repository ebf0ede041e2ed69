"""
The tunnel's TCP connection rides out outages the keepalive tolerates
(issue 16, class 6): retransmissions at most RETRANSMIT_CAP apart, and TCP's
own give-up time beyond the keepalive's.  What that buys on a cut link is
shown by tests/test_link_faults.py; here, that the options land on the
socket under the TLS and PROXY wrappers.
"""

from __future__ import annotations

import socket

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.transport.sockets import RETRANSMIT_CAP, TCP_RTO_MAX_MS, ride_out_outages


class SocketTransport:
    """The part of a Twisted TCP transport that the tuning uses."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


def wrapped(transport, layers: int):
    """C{transport} under C{layers} protocol wrappers (TLS, PROXY ...)."""
    for _ in range(layers):
        wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
        wrapper.transport = transport
        transport = wrapper
    return transport


class RideOutOutagesTests(SynchronousTestCase):
    def connected(self) -> socket.socket:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        self.addCleanup(listener.accept()[0].close)
        return client

    def test_options_on_the_socket_under_the_wrappers(self):
        sock = self.connected()
        default_user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        self.assertEqual(default_user_timeout, 0)
        self.assertTrue(ride_out_outages(wrapped(SocketTransport(sock), 2), 60.0))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS),
                         int(RETRANSMIT_CAP * 1000))
        # TCP gives up on unacknowledged data only after the keepalive would.
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                         int((60.0 + 2 * RETRANSMIT_CAP) * 1000))

    def test_give_up_time_follows_the_keepalive(self):
        sock = self.connected()
        self.assertTrue(ride_out_outages(SocketTransport(sock), 600.0))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                         int((600.0 + 2 * RETRANSMIT_CAP) * 1000))

    def test_not_a_socket(self):
        self.assertFalse(ride_out_outages(wrapped(StringTransport(), 1), 60.0))

    def test_unix_socket_left_alone(self):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(ride_out_outages(SocketTransport(a), 60.0))
