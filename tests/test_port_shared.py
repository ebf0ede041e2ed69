"""
Issue 16, class 5: two hosts configured with the same RsyncdClientPort.  A
backup of one would read the other's laptop: both are refused, each naming
the other, and a tunnel already up is closed when BackupPC connects.
"""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.admin.demo import rsync_pull
from bpctunnel.errors import PortShared
from bpctunnel.server.authorization import PORT_MAP_MAX_AGE, HostAuthorization
from bpctunnel.testing.sandbox import Sandbox, free_port
from tests.helpers import TIMEOUT, temp_dir
from tests.test_end_to_end import TunnelTestCase


class PortSharedTests(TunnelTestCase):
    @inlineCallbacks
    def test_both_refused_naming_the_other(self):
        port = free_port()
        first = self.sandbox.issue_client("laptop1")
        second = self.sandbox.issue_client("laptop2")
        self.sandbox.register("laptop1", port, first.fingerprint)
        self.sandbox.register("laptop2", port, second.fingerprint)
        for host, files, other in [("laptop1", first, "laptop2"), ("laptop2", second, "laptop1")]:
            client, _, _ = self.add_client(host, {"docs": self.root}, port=port, register=False,
                                           files=files)
            refusal = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
            yield client.stop()
            self.assertTrue(refusal.startswith(
                f"port shared for {host}: RsyncdClientPort {port} of {host} is also that of "
                f"{other}"), refusal)
        self.assertEqual(self.server_events, [])

    @inlineCallbacks
    def test_clash_made_while_connected(self):
        client, port, _ = yield self.connected_client("laptop1", {"docs": self.root})
        other = self.sandbox.issue_client("laptop2")
        self.sandbox.register("laptop2", port, other.fingerprint)
        closed = client.events.next("closed")
        # BackupPC connects: whose laptop would it read?  Neither's.
        _, err, code = yield self.pull(port)
        self.assertNotEqual(code, 0)
        refusal = yield closed.addTimeout(TIMEOUT, reactor)
        self.assertIn(f"RsyncdClientPort {port} of laptop1 is now also that of laptop2", refusal)

    def pull(self, port):
        return rsync_pull(reactor, self.rsync, port, "docs", temp_dir(self),
                          self.sandbox.auth_for(port)).addTimeout(TIMEOUT, reactor)


class PortMapTests(SynchronousTestCase):
    """
    The map of ports new tunnels are checked against looks at every host
    config, so it is reused for PORT_MAP_MAX_AGE seconds (a fleet's
    handshakes made it O(hosts) each); BackupPC's connections always look
    again.
    """

    def setUp(self):
        self.clock = Clock()
        self.sandbox = Sandbox.create(temp_dir(self))
        self.files = self.sandbox.issue_client("laptop1")
        self.sandbox.register("laptop1", 40001, self.files.fingerprint)
        self.authorization = HostAuthorization(self.sandbox.conf_dir, self.clock)

    def test_new_tunnels_use_a_recent_map(self):
        self.authorization.authorize_new("laptop1", self.files.fingerprint)
        self.sandbox.register("laptop2", 40001, None)
        # Within the map's age, a new tunnel is checked against the map...
        self.authorization.authorize_new("laptop1", self.files.fingerprint)
        # ...a connection from BackupPC looks again...
        self.assertEqual(self.authorization.hosts_on_port(40001), {"laptop1", "laptop2"})
        # ...and so does the map, once it is old enough.
        self.clock.advance(PORT_MAP_MAX_AGE)
        self.sandbox.register("laptop3", 40001, None)
        with self.assertRaises(PortShared) as raised:
            self.authorization.authorize_new("laptop1", self.files.fingerprint)
        self.assertIn("also that of laptop2, laptop3", str(raised.exception))

    def test_map_reused_within_its_age(self):
        self.assertEqual(self.authorization.hosts_on_port(40001, fresh=False), {"laptop1"})
        self.sandbox.register("laptop2", 40001, None)
        self.clock.advance(PORT_MAP_MAX_AGE - 0.1)
        self.assertEqual(self.authorization.hosts_on_port(40001, fresh=False), {"laptop1"})
        self.clock.advance(0.1)
        self.assertEqual(self.authorization.hosts_on_port(40001, fresh=False),
                         {"laptop1", "laptop2"})

    def test_without_a_clock_always_fresh(self):
        authorization = HostAuthorization(self.sandbox.conf_dir)
        self.assertEqual(authorization.hosts_on_port(40001, fresh=False), {"laptop1"})
        self.sandbox.register("laptop2", 40001, None)
        self.assertEqual(authorization.hosts_on_port(40001, fresh=False), {"laptop1", "laptop2"})
