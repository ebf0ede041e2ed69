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


#: An HTTP request over a Unix socket with nothing but the standard library, so
#: that other users run it whatever the checkout's permissions.  Exit 0: 2xx,
#: 1: an HTTP error, 2: no connection.
HTTP_OVER_UNIX = """
import http.client, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
c = C("localhost", timeout=30)
try:
    c.request(sys.argv[2], sys.argv[3])
    r = c.getresponse()
except OSError as e:
    print(e); sys.exit(2)
print(r.status, r.read().decode())
sys.exit(0 if r.status < 400 else 1)
"""


class ApiSocketTests(TunnelTestCase):
    @inlineCallbacks
    def test_socket_for_backuppc_drop_for_root(self):
        path = temp_dir(self) / "api.sock"
        os.chmod(path.parent, 0o755)
        endpoint = ApiSocketEndpoint(reactor, path, BACKUPPC.pw_gid)
        port = yield endpoint.listen(make_api_site(self.server.factory))
        self.addCleanup(port.stopListening)
        yield self.connected_client("laptop1", {"docs": self.root})
        api, api_path = f"unix:{path}", path

        def request_as(account, method, path):
            """One API request by C{account}, from a stdlib-only script (any checkout folder)."""
            argv = [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                    "/usr/bin/python3", "-c", HTTP_OVER_UNIX, str(api_path), method, path]
            return getProcessOutputAndValue("/usr/bin/setpriv", argv, env={"PATH": "/usr/bin:/bin"},
                                            reactor=reactor).addTimeout(TIMEOUT, reactor)

        # Another local user cannot even connect.
        out, err, code = yield request_as(NOBODY, "GET", "/api/v1/tunnels")
        self.assertEqual(code, 2, out + err)
        self.assertIn(b"Permission denied", out + err)
        out, err, code = yield request_as(NOBODY, "POST",
                                          "/api/v1/tunnels/laptop1/backup-done?ok=1")
        self.assertEqual(code, 2, out + err)
        # BackupPC's user (its PingCmd, its DumpPostUserCmd) can.
        out, err, code = yield request_as(BACKUPPC, "POST", "/api/v1/tunnels/laptop1/ping?count=1")
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"200", out)
        # Dropping a tunnel is for root: refused for BackupPC's user, by its uid.
        out, err, code = yield request_as(BACKUPPC, "DELETE", "/api/v1/tunnels/laptop1")
        self.assertEqual(code, 1, out + err)
        self.assertIn(b"403", out)
        self.assertIn(b"only root may drop a tunnel", out)
        self.assertIsNotNone(self.server.factory.tunnels.get("laptop1"))
        answer = yield deferToThread(call, "DELETE", api, "/api/v1/tunnels/laptop1")
        self.assertEqual(answer, {"dropped": "laptop1"})
        self.assertRaises(ApiError, call, "DELETE", f"unix:{path}.missing", "/api/v1/tunnels/x")
