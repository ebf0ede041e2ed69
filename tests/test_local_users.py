"""
Issue 16, class 1: only BackupPC's user (and root) reach a laptop, with the
host's secret; any other local user of the BackupPC server is refused at the
laptop's port, and a pull without the secret gets nothing.  The status API's
Unix socket lets in root and BackupPC's user only, and only root may drop a
tunnel.  Real server, client, rsync and bpctunnel commands; the processes
run as other users (setpriv).
"""

import os
import pwd
import shutil
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from bpctunnel.admin.api_client import ApiError, call
from bpctunnel.server.api import make_api_site
from bpctunnel.server.service import ApiSocketEndpoint
from bpctunnel.testing.sandbox import make_sample_tree, tree_digest
from tests.helpers import TIMEOUT, temp_dir
from tests.test_end_to_end import TunnelTestCase

BACKUPPC = pwd.getpwnam("backuppc")
NOBODY = pwd.getpwnam("nobody")


class LocalUsersTests(TunnelTestCase):
    server_settings = {"local_uids": {0, BACKUPPC.pw_uid}}

    def pull_as(self, account, port, secret=True):
        """rsync -a the docs module as C{account}; fires with (out, err, code, dest)."""
        dest = temp_dir(self) / "copy"
        dest.mkdir()
        shutil.chown(dest, account.pw_uid, account.pw_gid)
        os.chmod(dest.parent, 0o755)
        env = self.sandbox.rsync_env(port, {"PATH": "/usr/bin:/bin"}) if secret else \
            {"PATH": "/usr/bin:/bin", "RSYNC_PASSWORD": "not-the-secret-at-all"}
        argv = [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                self.rsync, "-a", self.sandbox.rsync_url(port, "docs/"), f"{dest}/"]
        d = getProcessOutputAndValue("/usr/bin/setpriv", argv, env=env, reactor=reactor)
        return d.addCallback(lambda r: (*r, dest)).addTimeout(TIMEOUT, reactor)

    @inlineCallbacks
    def test_only_backuppc_with_the_secret(self):
        source = make_sample_tree(self.root / "private")
        os.chmod(self.root, 0o755)
        _, port, _ = yield self.connected_client("laptop1", {"docs": source})

        # Another local user: cut off at the port, the refusal logged with its uid.
        _, err, code, dest = yield self.pull_as(NOBODY, port)
        self.assertNotEqual(code, 0)
        self.assertEqual(list(dest.iterdir()), [])
        yield self.logs.wait_for(f"uid {NOBODY.pw_uid} (nobody) is neither root nor "
                                 f"BackupPC's user")

        # BackupPC's user without the host's secret: the laptop serves nothing.
        _, err, code, dest = yield self.pull_as(BACKUPPC, port, secret=False)
        self.assertNotEqual(code, 0)
        self.assertIn(b"auth failed on module docs", err)
        self.assertEqual(list(dest.iterdir()), [])

        # BackupPC's user with it: everything, byte for byte.
        _, err, code, dest = yield self.pull_as(BACKUPPC, port)
        self.assertEqual(code, 0, err)
        self.assertEqual(tree_digest(dest), tree_digest(source))


class ApiSocketTests(TunnelTestCase):
    @inlineCallbacks
    def test_socket_for_backuppc_drop_for_root(self):
        path = temp_dir(self) / "api.sock"
        os.chmod(path.parent, 0o755)
        endpoint = ApiSocketEndpoint(reactor, path, BACKUPPC.pw_gid)
        port = yield endpoint.listen(make_api_site(self.server.factory))
        self.addCleanup(port.stopListening)
        yield self.connected_client("laptop1", {"docs": self.root})
        api = f"unix:{path}"

        def bpctunnel_as(account, *args):
            argv = [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                    str(Path(sys.executable).parent / "bpctunnel"), *args, "--api", api]
            return getProcessOutputAndValue("/usr/bin/setpriv", argv, env={"PATH": "/usr/bin:/bin"},
                                            reactor=reactor).addTimeout(TIMEOUT, reactor)

        # Another local user cannot even connect.
        out, err, code = yield bpctunnel_as(NOBODY, "status")
        self.assertNotEqual(code, 0)
        self.assertIn(b"Permission denied", out + err)
        out, err, code = yield bpctunnel_as(NOBODY, "backup-done", "laptop1", "1")
        self.assertNotEqual(code, 0)
        # BackupPC's user (its PingCmd, its DumpPostUserCmd) can.
        out, err, code = yield bpctunnel_as(BACKUPPC, "ping", "laptop1")
        self.assertEqual(code, 0, out + err)
        # Dropping a tunnel is for root: refused for BackupPC's user, by its uid.
        script = ("import sys; from bpctunnel.admin.api_client import call; "
                  "call('DELETE', sys.argv[1], '/api/v1/tunnels/laptop1')")
        out, err, code = yield getProcessOutputAndValue(
            "/usr/bin/setpriv", [f"--reuid={BACKUPPC.pw_uid}", f"--regid={BACKUPPC.pw_gid}",
                                 "--clear-groups", sys.executable, "-c", script, api],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)},
            reactor=reactor).addTimeout(TIMEOUT, reactor)
        self.assertNotEqual(code, 0)
        self.assertIn(b"only root may drop a tunnel", err)
        self.assertIsNotNone(self.server.factory.tunnels.get("laptop1"))
        answer = yield deferToThread(call, "DELETE", api, "/api/v1/tunnels/laptop1")
        self.assertEqual(answer, {"dropped": "laptop1"})
        self.assertRaises(ApiError, call, "DELETE", f"unix:{path}.missing", "/api/v1/tunnels/x")
