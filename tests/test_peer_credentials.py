"""Which local user opened a loopback TCP connection (bpctunnel.transport.peer_credentials)."""

import os
import pwd
import socket
import subprocess
import sys

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.server.backuppc_port import LocalConnectionProtocol, LocalUsers
from bpctunnel.transport.peer_credentials import owner_in_table, tcp_connection_owner

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
          "timeout inode\n")


def row(local, remote, uid, state="01"):
    return (f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:>5} "
            f"0 12345 1 0000000000000000 20 4 30 10 -1\n")


class TableTests(SynchronousTestCase):
    def test_connecting_row_not_its_mirror(self):
        # 127.0.0.1:54321 -> 127.0.0.1:8080 by uid 65534; the accepted mirror is ours (0).
        table = HEADER + row("0100007F:1F90", "0100007F:D431", 0) \
            + row("0100007F:D431", "0100007F:1F90", 65534) + row("0100007F:1F90", "00000000:0000", 0, "0A")
        self.assertEqual(owner_in_table(table, ("127.0.0.1", 54321), ("127.0.0.1", 8080)), 65534)
        self.assertEqual(owner_in_table(table, ("127.0.0.1", 8080), ("127.0.0.1", 54321)), 0)
        self.assertIsNone(owner_in_table(table, ("127.0.0.1", 54322), ("127.0.0.1", 8080)))

    def test_only_established_rows(self):
        table = HEADER + row("0100007F:D431", "0100007F:1F90", 1000, state="06")
        self.assertIsNone(owner_in_table(table, ("127.0.0.1", 54321), ("127.0.0.1", 8080)))

    def test_ipv6_and_mapped(self):
        loop6 = "00000000000000000000000001000000"
        mapped = "0000000000000000FFFF00000100007F"
        table = HEADER + row(f"{loop6}:D431", f"{loop6}:1F90", 1000) \
            + row(f"{mapped}:D432", f"{mapped}:1F90", 1001)
        self.assertEqual(owner_in_table(table, ("::1", 54321), ("::1", 8080)), 1000)
        self.assertEqual(owner_in_table(table, ("127.0.0.1", 54322), ("127.0.0.1", 8080)), 1001)

    def test_garbage_rows_skipped(self):
        table = HEADER + "   0: zz:zz yy 01 a b c 1000\n" + row("0100007F:D431", "0100007F:1F90", 7)
        self.assertEqual(owner_in_table(table, ("127.0.0.1", 54321), ("127.0.0.1", 8080)), 7)


class RealSocketTests(SynchronousTestCase):
    """The kernel's own tables, with a connection from another uid (setpriv)."""

    def connect_as(self, uid):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        script = (f"import socket,sys; s=socket.create_connection(('127.0.0.1',{port})); "
                  f"print(s.getsockname()[1], flush=True); sys.stdin.read()")
        child = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                                  sys.executable, "-c", script],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(child.wait, 30)
        self.addCleanup(child.stdin.close)
        client_port = int(child.stdout.readline())
        accepted, address = listener.accept()
        self.addCleanup(accepted.close)
        self.assertEqual(address, ("127.0.0.1", client_port))
        return tcp_connection_owner(address, ("127.0.0.1", port))

    def test_other_user(self):
        self.assertEqual(self.connect_as(65534), 65534)

    def test_root(self):
        self.assertEqual(os.geteuid(), 0, "the suite runs as root (CI does)")
        self.assertEqual(self.connect_as(0), 0)


class LocalUsersTests(SynchronousTestCase):
    """A laptop's port lets in root and BackupPC's user only (server.backuppc_port)."""

    def connection(self, uid, users):
        class Tunnel:
            host = "laptop1"
            opened = 0

            @staticmethod
            def probe_if_silent():
                return succeed(True)  # a tunnel that is carrying data

            class mux:
                @staticmethod
                def open_channel(_details):
                    Tunnel.opened += 1
                    raise AssertionError("no channel for a refused user")

        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 64701),
                                    peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        protocol = LocalConnectionProtocol(Tunnel, users(lambda client, server: uid))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        try:
            protocol.makeConnection(transport)
        except AssertionError:
            pass
        protocol.connectionLost(None)
        return transport, Tunnel.opened, [e for e in events if "refusal" in e]

    def test_other_user_cut_off_with_uid_logged(self):
        transport, opened, logged = self.connection(
            65534, lambda owner: LocalUsers.backuppc("backuppc", owner))
        self.assertEqual((transport.disconnecting or transport.disconnected, opened), (True, 0))
        self.assertIn("uid 65534 (nobody) is neither root nor BackupPC's user",
                      logged[0]["refusal"])

    def test_unknown_owner_cut_off(self):
        _, opened, logged = self.connection(None, lambda owner: LocalUsers(frozenset({0}), owner))
        self.assertEqual(opened, 0)
        self.assertIn("could not be identified", logged[0]["refusal"])

    def test_backuppc_and_root_get_a_channel(self):
        for uid in (0, pwd.getpwnam("backuppc").pw_uid):
            _, opened, logged = self.connection(
                uid, lambda owner: LocalUsers.backuppc("backuppc", owner))
            self.assertEqual((opened, logged), (1, []), uid)
            self.flushLoggedErrors(AssertionError)  # the fake tunnel's open_channel
