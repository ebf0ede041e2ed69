"""
Issue 16, class 5: two hosts configured with the same RsyncdClientPort.  A
backup of one would read the other's laptop: both are refused, each naming
the other, and a tunnel already up is closed when BackupPC connects.
"""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from bpctunnel.admin.demo import rsync_pull
from bpctunnel.testing.sandbox import free_port
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
