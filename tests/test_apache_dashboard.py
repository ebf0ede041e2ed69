"""
Issue 18, acceptance 2: the dashboard inside BackupPC's web interface, with
the real Apache from Debian (C{apache2}) and BackupPC's own CGI.

Apache runs on a free port with a minimal config of its own: Debian's
C{/etc/backuppc/apache.conf} and our C{etc/apache-bpctunnel.conf}, each with
its paths moved into the test's folder, serving BackupPC's C{index.cgi} (the
isolated copy of L{tests.bpc_fixture}) and proxying to a real server's API
socket (L{bpctunnel.server.service.ApiSocketEndpoint}: mode 660, in a group).
As root (CI) Apache's children run as www-data in that group, as
C{adduser www-data backuppc} makes them, and the server trusts Apache's
X-BackupPC-User from that user (C{--web-proxy-user}).  Two BackupPC web
users sign in: backuppc, an admin in Debian's C{$Conf{CgiAdminUsers}}, and
alice, the C{user} of one host only.  Without apache2 the test fails: CI
installs it (tests/debian-packages.txt).
"""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
from pathlib import Path

import treq
from twisted.internet import inotify, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.filepath import FilePath

from bpctunnel.admin.commands import DEFAULT_WEB_LINK, Paths, web_link
from bpctunnel.server.api import make_api_site
from bpctunnel.server.service import ApiSocketEndpoint
from bpctunnel.server.web_users import WebUsers, web_proxy_uid
from bpctunnel.testing.sandbox import free_port
from tests.bpc_fixture import IsolatedBackupPC
from tests.helpers import TIMEOUT
from tests.test_end_to_end import TunnelTestCase
from tests.test_status import http_pool

APACHE = "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
BACKUPPC_APACHE_CONF = Path("/etc/backuppc/apache.conf")
EXAMPLE = Path(__file__).parent.parent / "etc" / "apache-bpctunnel.conf"
USER, PASSWORD = "backuppc", "apache-test-password"
#: A BackupPC web user who is no admin: the user of one host.
OTHER_USER, OTHER_PASSWORD = "alice", "alice-test-password"
PASSWORDS = {USER: PASSWORD, OTHER_USER: OTHER_PASSWORD}

#: The modules the two configs need, and a minimal server around them.
SERVER_CONF = """\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/apache2.pid"
DefaultRuntimeDir "{root}"
Mutex file:{root} default
ErrorLog "{root}/error.log"
LogLevel warn
{user}
""" + "".join(f"LoadModule {name}_module {MODULES}/mod_{name}.so\n" for name in [
    "mpm_prefork", "authz_core", "authz_host", "authz_user", "authn_core", "authn_file",
    "auth_basic", "alias", "cgi", "dir", "mime", "headers", "proxy", "proxy_http"]) + """\
StartServers 2
MinSpareServers 1
MaxSpareServers 4
TypesConfig /etc/mime.types
DocumentRoot "{root}/htdocs"
"""


class ApacheProtocol(ProcessProtocol):
    """Apache in the foreground; C{ended} fires when it exits."""

    def __init__(self):
        self.output = b""
        self.ended = Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason)


def start_apache(root: Path, conf: Path) -> Deferred:
    """
    Start Apache with C{conf}; fires with its L{ApacheProtocol} once its pid
    file is written (after it opened its port), fails if it exits first.
    """
    if not os.access(APACHE, os.X_OK):
        raise AssertionError(f"{APACHE} is missing: apt-get install apache2")
    ready = Deferred()
    notifier = inotify.INotify(reactor)
    notifier.startReading()

    def changed(_watch, path, _mask):
        if path.basename() == b"apache2.pid" and not ready.called:
            ready.callback(apache)

    notifier.watch(FilePath(bytes(root)), mask=inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO,
                   callbacks=[changed])
    apache = ApacheProtocol()

    def exited(reason):
        if not ready.called:
            log = (root / "error.log").read_text(errors="replace") if (root / "error.log").exists() \
                else ""
            ready.errback(AssertionError(f"apache2 exited at start: {reason.value}\n"
                                         f"{apache.output.decode(errors='replace')}{log}"))
        return reason

    apache.ended.addCallback(exited)
    # In a session of its own: Apache signals its whole process group when it stops.
    reactor.spawnProcess(apache, "/usr/bin/setsid", ["setsid", APACHE, "-f", str(conf),
                                                     "-DFOREGROUND"],
                         env={"PATH": "/usr/bin:/bin", "LANG": "C"})

    def done(result):
        notifier.loseConnection()
        return result

    return ready.addTimeout(TIMEOUT, reactor).addBoth(done)


def stop_apache(apache: ApacheProtocol) -> Deferred:
    """SIGTERM Apache (it stops its children) and wait for it to exit."""
    if not apache.ended.called:
        apache.transport.signalProcess("TERM")
    return apache.ended.addErrback(lambda f: f.trap(ProcessDone))


def htpasswd_line(user: str, password: str) -> str:
    """An Apache password file line ({SHA}: base64 of SHA-1)."""
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    return f"{user}:{{SHA}}{digest}\n"


class ApacheDashboardTests(TunnelTestCase):
    """The dashboard under BackupPC's URL and login, linked from its navigation bar."""

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.pool = http_pool(self)
        # Apache's children refuse to run as root: as root they run as
        # www-data, in the socket's group (as `adduser www-data backuppc` does).
        if os.geteuid() == 0:
            run_as, group = "www-data", grp.getgrnam("backuppc").gr_gid
            user_lines = f"User www-data\nGroup #{group}"
        else:
            run_as, group, user_lines = pwd.getpwuid(os.geteuid()).pw_name, None, ""
        os.chmod(self.root, 0o755)   # mkdtemp's 0700: Apache's user must pass
        web = self.root / "apache"
        (web / "htdocs").mkdir(parents=True)
        os.chmod(web, 0o777)         # its error.log and the CGI's folders

        # BackupPC's CGI: the isolated copy's realindex.cgi, run as Apache's user.
        self.bpc = IsolatedBackupPC.create(reactor, self.root / "bpc", self.sandbox.conf_dir)
        with (self.sandbox.conf_dir / "config.pl").open("a") as f:
            f.write(f"$Conf{{BackupPCUser}} = '{run_as}';\n")
        cgi = web / "cgi-bin"
        cgi.mkdir()
        shutil.copy(self.bpc.install_dir / "lib" / "realindex.cgi", cgi / "index.cgi")
        os.chmod(cgi / "index.cgi", 0o755)
        for folder in (self.bpc.log_dir, self.bpc.run_dir, self.bpc.top_dir):
            os.chmod(folder, 0o777)
        htpasswd = web / "htpasswd"
        htpasswd.write_text("".join(htpasswd_line(u, p) for u, p in PASSWORDS.items()))

        # The server's API on its Unix socket, mode 660 in the group; it
        # trusts X-BackupPC-User from Apache's user (--web-proxy-user).
        self.socket = self.root / "run" / "api.sock"
        self.socket.parent.mkdir(mode=0o755)
        web_users = WebUsers(self.sandbox.conf_dir, reactor, web_proxy_uid(run_as))
        api = yield ApiSocketEndpoint(reactor, self.socket, group).listen(
            make_api_site(self.server.factory, web_users=web_users))
        self.addCleanup(api.stopListening)

        self.port = free_port()
        backuppc_conf = BACKUPPC_APACHE_CONF.read_text() \
            .replace("/usr/share/backuppc/cgi-bin/", f"{cgi}/") \
            .replace("/etc/backuppc/htpasswd", str(htpasswd))
        example = EXAMPLE.read_text() \
            .replace("/run/bpctunnel/api.sock", str(self.socket)) \
            .replace("/etc/backuppc/htpasswd", str(htpasswd))
        conf = web / "apache2.conf"
        conf.write_text(SERVER_CONF.format(root=web, port=self.port, user=user_lines)
                        + backuppc_conf + "\n" + example)
        apache = yield start_apache(web, conf)
        self.addCleanup(stop_apache, apache)

    @inlineCallbacks
    def get(self, path, login=True, user=USER, method="GET", headers=None):
        auth = (user, PASSWORDS[user]) if login else None
        response = yield treq.request(method, f"http://127.0.0.1:{self.port}{path}", auth=auth,
                                      headers=headers, pool=self.pool, allow_redirects=False
                                      ).addTimeout(TIMEOUT, reactor)
        body = yield response.content()
        return response, body.decode("utf-8", "replace")

    @inlineCallbacks
    def hosts_seen(self, user, **headers):
        """The hosts /api/v1/hosts lists for C{user}, and who it says they are."""
        response, body = yield self.get("/backuppc/tunnels/api/v1/hosts", user=user,
                                        headers=headers)
        self.assertEqual(response.code, 200, body)
        body = json.loads(body)
        return [h["host"] for h in body["hosts"]], body["viewer"]

    @inlineCallbacks
    def drop(self, user, host, **headers):
        """The page's own Drop: its token, same origin; (code, JSON answer)."""
        _, page = yield self.get(DEFAULT_WEB_LINK, user=user)
        token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)[1]
        response, body = yield self.get(
            f"{DEFAULT_WEB_LINK}hosts/{host}/drop", user=user, method="POST",
            headers={"X-CSRF-Token": token, "Origin": f"http://127.0.0.1:{self.port}",
                     "Sec-Fetch-Site": "same-origin", **headers})
        return response.code, json.loads(body)

    @inlineCallbacks
    def test_dashboard_under_backuppc_login(self):
        """Without BackupPC's login: 401; with it: the page, and the JSON it polls."""
        self.sandbox.register("laptop1", free_port(), "00" * 32)
        for path in [DEFAULT_WEB_LINK, "/backuppc/tunnels/api/v1/hosts", "/backuppc/"]:
            response, _ = yield self.get(path, login=False)
            self.assertEqual(response.code, 401, path)
        response, page = yield self.get(DEFAULT_WEB_LINK)
        self.assertEqual(response.code, 200, page)
        self.assertIn('src="dashboard.js"', page)
        response, _ = yield self.get(DEFAULT_WEB_LINK + "dashboard.js")
        self.assertEqual(response.code, 200)
        # dashboard.js fetches ../api/v1/hosts from the page's URL.
        response, body = yield self.get("/backuppc/tunnels/api/v1/hosts")
        self.assertEqual(response.code, 200, body)
        self.assertIn('"laptop1"', body)
        # The rest of the API is not exposed.
        response, _ = yield self.get("/backuppc/tunnels/metrics")
        self.assertEqual(response.code, 404)
        response, _ = yield self.get("/backuppc/tunnels")
        self.assertEqual((response.code, response.headers.getRawHeaders("location")),
                         (302, [f"http://127.0.0.1:{self.port}{DEFAULT_WEB_LINK}"]))

    @inlineCallbacks
    def test_navigation_bar_links_dashboard(self):
        """
        After `web-link`, BackupPC's own page links to the dashboard (once, when
        run twice).  No BackupPC daemon runs here: the CGI's page says so, under
        BackupPC's real header and navigation bar.
        """
        paths = Paths(self.sandbox.certs_dir, self.sandbox.conf_dir)
        response, page = yield self.get("/backuppc/")
        self.assertEqual(response.code, 200, page)
        self.assertIn('<div class="NavMenu" id="NavMenu">', page)
        self.assertNotIn(DEFAULT_WEB_LINK, page)
        web_link(paths)
        self.assertEqual(web_link(paths), [f"BackupPC's navigation bar already links to "
                                           f"{DEFAULT_WEB_LINK} ({paths.config_pl})"])
        response, page = yield self.get("/backuppc/")
        self.assertEqual(response.code, 200, page)
        links = re.findall(r'<a href="([^"]*)"[^>]*>Tunnels</a>', page)
        self.assertEqual(links, [DEFAULT_WEB_LINK], page)

    @inlineCallbacks
    def test_socket_group_needed(self):
        """Apache's user outside the socket's group: 503, as the example's comments say."""
        if os.geteuid() != 0:
            raise AssertionError("this test needs root, as CI runs it")
        os.chown(self.socket, -1, grp.getgrnam("nogroup").gr_gid)
        response, _ = yield self.get(DEFAULT_WEB_LINK)
        self.assertEqual(response.code, 503)

    @inlineCallbacks
    def test_backuppc_users_rights(self):
        """
        Apache names the signed-in user (replacing a header the browser
        forged), and each gets what BackupPC gives them: the admin sees every
        laptop and drops a connected one's tunnel; alice sees only the host
        whose user she is, and may not drop.
        """
        self.sandbox.register("laptop2", free_port(), "00" * 32, in_hosts=False)
        with (self.sandbox.conf_dir / "hosts").open("a") as f:
            f.write(f"laptop2   0   {OTHER_USER}\n")
        yield self.connected_client("laptop1", {"docs": self.root})

        hosts, viewer = yield self.hosts_seen(USER)
        self.assertEqual((hosts, viewer), (["laptop1", "laptop2"], {"name": USER, "admin": True}))
        # alice, pretending to be the admin: still alice.
        hosts, viewer = yield self.hosts_seen(OTHER_USER, **{"X-BackupPC-User": USER})
        self.assertEqual((hosts, viewer), (["laptop2"], {"name": OTHER_USER, "admin": False}))
        for host in ["laptop1", "laptop2"]:
            code, answer = yield self.drop(OTHER_USER, host, **{"X-BackupPC-User": USER})
            self.assertEqual((code, answer), (403, {"error": (
                "alice is not one of BackupPC's admins ($Conf{CgiAdminUsers}, "
                "$Conf{CgiAdminUserGroup}): only they may drop a tunnel")}))
        self.assertIsNotNone(self.server.factory.tunnels.get("laptop1"))
        yield self.logs.wait_for("refused POST /dashboard/hosts/laptop1/drop for BackupPC user "
                                 "alice (through the web server)")

        down = self.server_down("laptop1")
        code, answer = yield self.drop(USER, "laptop1")
        self.assertEqual((code, answer), (200, {"dropped": "laptop1"}))
        yield down
