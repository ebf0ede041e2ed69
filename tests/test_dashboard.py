"""
The dashboard's resources in memory (treq's StubTreq): the page, its
sign-in with the API token, its POST actions' cross-site refusals
(issue 18, acceptance 4), and what BackupPC's web users may see and do
behind Apache.  tests/test_dashboard_browser.py drives the page
in a real browser.
"""

from __future__ import annotations

import json
import re
from http.cookies import SimpleCookie
from unittest import mock

from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from bpctunnel.server import api
from bpctunnel.server.api import make_api_site
from bpctunnel.server.dashboard import COOKIE, cookie_value
from bpctunnel.server.web_users import WebUsers
from tests.helpers import temp_dir

BASE = "http://dash.example"
TOKEN = "the-api-token-0123456789"


class FakeTunnel:
    """What the API's DELETE and ping use of a tunnel."""

    def __init__(self, host):
        self.host = host
        self.mux = mock.Mock(lost=False)
        self.closed = []

    def close_tunnel(self, code, reason):
        self.closed.append(reason)

    def ping(self, timeout):
        return succeed(0.0025)


class FakeTunnels(dict):
    def __iter__(self):
        return iter(self.values())


class FakeFactory:
    def __init__(self, *hosts):
        self.tunnels = FakeTunnels({host: FakeTunnel(host) for host in hosts})
        self.metrics = mock.Mock()
        # What the API's /api/v1/hosts and ping use (bpctunnel.server.history).
        self.state = mock.Mock()
        self.state.hosts_view.body.return_value = {"generated_at": "2025-01-01T00:00:00+00:00",
                                                   "hosts": []}


class DashboardTestCase(SynchronousTestCase):
    token: str | None = None

    def setUp(self):
        self.factory = FakeFactory("laptop1")
        self.tunnel = self.factory.tunnels["laptop1"]
        self.root = make_api_site(self.factory, self.token).resource

    def request(self, method, path, **kwargs):
        """(code, headers, body) of C{method} C{path}, with no cookie but C{cookies}."""
        http = StubTreq(self.root)
        d = http.request(method, BASE + path, allow_redirects=False, **kwargs)
        http.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(http.content(response))
        return response.code, response.headers, body

    def csrf_token(self, **kwargs) -> str:
        code, _, page = self.request("GET", "/dashboard/", **kwargs)
        self.assertEqual(code, 200)
        return re.search(rb'<meta name="csrf-token" content="([^"]+)">', page)[1].decode()


class PageTests(DashboardTestCase):
    """On the Unix socket (no token): the page and its files."""

    def test_page(self):
        """The page carries a random token, a strict CSP, and loads its own files."""
        code, headers, page = self.request("GET", "/dashboard/")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn(b"script-src 'self';", headers.getRawHeaders(b"content-security-policy")[0])
        self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
        self.assertIn(b'<script src="dashboard.js" defer></script>', page)
        self.assertNotIn(b"@CSRF_TOKEN@", page)
        self.assertGreaterEqual(len(self.csrf_token()), 40)
        other = StubTreq(make_api_site(FakeFactory()).resource)
        d = other.get(BASE + "/dashboard/")
        other.flush()
        self.assertNotIn(self.csrf_token().encode(),
                         self.successResultOf(other.content(self.successResultOf(d))))

    def test_files(self):
        for name, kind in [("dashboard.js", b"text/javascript"), ("dashboard.css", b"text/css")]:
            code, headers, body = self.request("GET", "/dashboard/" + name)
            self.assertEqual(code, 200)
            self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(kind))
            self.assertGreater(len(body), 500)
        code, _, body = self.request("GET", "/dashboard/nothing")
        self.assertEqual((code, body), (404, b'{\n "error": "no such dashboard resource"\n}\n'))

    def test_slash_redirect(self):
        """C{/dashboard} sends the browser to C{/dashboard/}, where relative URLs work."""
        code, headers, _ = self.request("GET", "/dashboard")
        self.assertEqual((code, headers.getRawHeaders(b"location")), (302, [b"dashboard/"]))

    def test_api_unchanged(self):
        code, _, body = self.request("GET", "/api/v1/tunnels/nobody")
        self.assertEqual((code, body), (404, b'{\n "error": "no tunnel for nobody is up"\n}\n'))


class CrossSiteTests(DashboardTestCase):
    """Acceptance 4: a cross-site POST without the page's token is refused."""

    def post(self, path, **headers):
        return self.request("POST", path, headers={k.replace("_", "-"): v
                                                    for k, v in headers.items()})

    def test_cross_site_without_token_refused(self):
        code, _, body = self.post("/dashboard/hosts/laptop1/drop", Origin="https://evil.example",
                                  Sec_Fetch_Site="cross-site")
        self.assertEqual((code, body), (403, b'{\n "error": "a cross-site request may not act '
                                             b'here"\n}\n'))
        self.assertEqual(self.tunnel.closed, [])

    def test_without_token_refused(self):
        """Even without the browser's headers (an old browser, a form, curl)."""
        for token in [None, "guess"]:
            code, _, body = self.post("/dashboard/hosts/laptop1/drop",
                                      **({"X-CSRF-Token": token} if token else {}))
            self.assertEqual(code, 403)
            self.assertIn(b"lacks the dashboard page's token", body)
        self.assertEqual(self.tunnel.closed, [])

    def test_token_from_another_origin_refused(self):
        token = self.csrf_token()
        code, _, body = self.post("/dashboard/hosts/laptop1/drop", X_CSRF_Token=token,
                                  Origin="https://evil.example")
        self.assertEqual(code, 403)
        self.assertIn(b"another site (Origin)", body)
        code, _, _ = self.post("/dashboard/hosts/laptop1/drop", X_CSRF_Token=token,
                               Sec_Fetch_Site="same-site")
        self.assertEqual((code, self.tunnel.closed), (403, []))

    def test_drop_with_token(self):
        """The page's own POST (its token, same origin) drops the tunnel."""
        code, _, body = self.post("/dashboard/hosts/LAPTOP1/drop", X_CSRF_Token=self.csrf_token(),
                                  Origin=BASE, Sec_Fetch_Site="same-origin")
        self.assertEqual((code, body), (200, b'{\n "dropped": "laptop1"\n}\n'))
        self.assertEqual(self.tunnel.closed, ["the tunnel of laptop1 was dropped by an admin"])

    def test_behind_proxy(self):
        """Behind a reverse proxy, Origin is checked against X-Forwarded-Host."""
        code, _, _ = self.post("/dashboard/hosts/laptop1/drop", X_CSRF_Token=self.csrf_token(),
                               Origin="https://backuppc.example",
                               X_Forwarded_Host="backuppc.example")
        self.assertEqual(code, 200)
        # A browser that sends its own X-Forwarded-Host gets it first in the list
        # (mod_proxy appends the real one): the last entry counts.
        code, _, _ = self.post("/dashboard/hosts/laptop1/drop", X_CSRF_Token=self.csrf_token(),
                               Origin="https://evil.example",
                               X_Forwarded_Host="evil.example, backuppc.example")
        self.assertEqual(code, 403)

    def test_drop_needs_root(self):
        """On the Unix socket only root may drop a tunnel, as with the API's DELETE."""
        with mock.patch.object(api, "peer_uid", return_value=33):
            code, _, body = self.post("/dashboard/hosts/laptop1/drop",
                                      X_CSRF_Token=self.csrf_token())
        self.assertEqual((code, body), (403, b'{\n "error": "only root may drop a tunnel"\n}\n'))
        self.assertEqual(self.tunnel.closed, [])

    def test_ping(self):
        code, _, body = self.post("/dashboard/hosts/laptop1/ping?count=2",
                                  X_CSRF_Token=self.csrf_token())
        self.assertEqual(code, 200)
        self.assertIn(b'"received": 2', body)
        code, _, body = self.post("/dashboard/hosts/nobody/ping", X_CSRF_Token=self.csrf_token())
        self.assertEqual((code, body), (404, b'{\n "error": "no tunnel for nobody is up"\n}\n'))

    def test_get_does_not_act(self):
        code, headers, _ = self.request("GET", "/dashboard/hosts/laptop1/drop")
        self.assertEqual((code, self.tunnel.closed), (405, []))
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"POST"])


class TokenSignInTests(DashboardTestCase):
    """On TCP with a token: C{?token=} once, then a cookie that only reads."""

    token = TOKEN

    def sign_in(self) -> dict:
        code, headers, _ = self.request("GET", f"/dashboard/?token={TOKEN}")
        self.assertEqual((code, headers.getRawHeaders(b"location")), (302, [b"./"]))
        [line] = headers.getRawHeaders(b"set-cookie")
        self.assertNotIn(TOKEN.encode(), line)
        self.assertIn(b"HttpOnly", line)
        self.assertIn(b"SameSite=strict", line)
        cookie = SimpleCookie(line.decode())
        return {name: morsel.value for name, morsel in cookie.items()}

    def test_needs_token(self):
        for path in ["/dashboard/", "/dashboard/dashboard.js", "/dashboard/?token=wrong"]:
            code, _, body = self.request("GET", path)
            self.assertEqual(code, 401, path)
            self.assertIn(b"/dashboard/?token=TOKEN", body)

    def test_sign_in(self):
        cookies = self.sign_in()
        self.assertEqual(cookies, {COOKIE.decode(): cookie_value(TOKEN).decode()})
        code, _, _ = self.request("GET", "/dashboard/", cookies=cookies)
        self.assertEqual(code, 200)
        code, _, _ = self.request("GET", "/dashboard/", headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(code, 200)

    def test_cookie_reads_api(self):
        """The cookie stands for the token on the API's GETs: the page's polls."""
        code, _, _ = self.request("GET", "/api/v1/hosts")
        self.assertEqual(code, 401)
        code, _, body = self.request("GET", "/api/v1/hosts", cookies=self.sign_in())
        self.assertEqual((code, json.loads(body)["hosts"]), (200, []))

    def test_cookie_does_not_act_on_api(self):
        """...but not on its DELETE or POST, which have no page token to check."""
        cookies = self.sign_in()
        for method, path in [("DELETE", "/api/v1/tunnels/laptop1"),
                             ("POST", "/api/v1/tunnels/laptop1/ping")]:
            code, _, _ = self.request(method, path, cookies=cookies)
            self.assertEqual(code, 401, path)
        self.assertEqual(self.tunnel.closed, [])

    def test_post_needs_both(self):
        cookies = self.sign_in()
        csrf = self.csrf_token(cookies=cookies)
        code, _, _ = self.request("POST", "/dashboard/hosts/laptop1/drop",
                                  headers={"X-CSRF-Token": csrf})
        self.assertEqual(code, 401)
        code, _, _ = self.request("POST", "/dashboard/hosts/laptop1/drop", cookies=cookies)
        self.assertEqual(code, 403)
        self.assertEqual(self.tunnel.closed, [])
        code, _, _ = self.request("POST", "/dashboard/hosts/laptop1/drop", cookies=cookies,
                                  headers={"X-CSRF-Token": csrf})
        self.assertEqual(code, 200)


WEB_HOSTS = """\
host        dhcp    user    moreUsers
laptop1     0       alice
laptop2     0       bob     carol
"""


class WebProxyTests(DashboardTestCase):
    """
    Behind Apache (the web proxy's uid on the socket): the BackupPC user it
    names in X-BackupPC-User gets what BackupPC gives them, and the web
    server reaches nothing but the dashboard and /api/v1/hosts.
    """

    proxy_uid = 33

    def setUp(self):
        conf = self.conf = temp_dir(self)
        (conf / "config.pl").write_text("$Conf{CgiAdminUsers} = 'backuppc';\n"
                                        "$Conf{CgiAdminUserGroup} = '';\n")
        (conf / "hosts").write_text(WEB_HOSTS)
        self.clock = Clock()
        self.factory = FakeFactory("laptop1", "laptop2")
        self.factory.state.hosts_view.body.return_value = {
            "generated_at": "2025-01-01T00:00:00+00:00",
            "hosts": [{"host": "laptop1"}, {"host": "laptop2"}, {"host": "roaming"}]}
        self.factory.backup_desk = mock.Mock()
        self.tunnel = self.factory.tunnels["laptop1"]
        self.root = make_api_site(self.factory, None,
                                  WebUsers(conf, self.clock, self.proxy_uid)).resource
        self.uid = self.proxy_uid
        self.patch(api, "peer_uid", lambda request: self.uid)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def as_user(self, user, method, path, **headers):
        if user is not None:
            headers["X-BackupPC-User"] = user
        return self.request(method, path, headers=headers)

    def action(self, user, host, action):
        return self.as_user(user, "POST", f"/dashboard/hosts/{host}/{action}",
                            **{"X-CSRF-Token": self.csrf_token(headers={"X-BackupPC-User": user}),
                               "Origin": BASE, "Sec-Fetch-Site": "same-origin"})

    def test_no_access_log_and_no_cache(self):
        """
        A refused request leaves no access-log line (only the bounded refusal
        log), and per-user answers are never cached.
        """
        site = make_api_site(self.factory, None, WebUsers(self.conf, self.clock, self.proxy_uid))
        request = DummyRequest([b"api", b"v1", b"tunnels"])
        request.code, request.sentLength = 403, 0
        site.startFactory()   # where twisted.web opens its access log
        self.addCleanup(site.stopFactory)
        with capturedLogs() as events:
            for _ in range(50):
                site.log(request)
        self.assertEqual(events, [])
        _, headers, _ = self.as_user("alice", "GET", "/api/v1/hosts")
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store, private"])

    def test_hosts_of_user(self):
        """A non-admin sees the hosts whose user or moreUsers they are, and who they are."""
        for user, hosts in [("alice", ["laptop1"]), ("carol", ["laptop2"]), ("dave", [])]:
            code, _, body = self.as_user(user, "GET", "/api/v1/hosts")
            self.assertEqual(code, 200)
            body = json.loads(body)
            self.assertEqual([h["host"] for h in body["hosts"]], hosts, user)
            self.assertEqual(body["viewer"], {"name": user, "admin": False})
            # The others are left out before they are built, not after.
            sees = self.factory.state.hosts_view.body.call_args.kwargs["sees"]
            self.assertEqual([h for h in ["laptop1", "laptop2", "roaming"] if sees(h)], hosts)

    def test_admin_sees_all(self):
        code, _, body = self.as_user("backuppc", "GET", "/api/v1/hosts")
        body = json.loads(body)
        self.assertEqual([h["host"] for h in body["hosts"]], ["laptop1", "laptop2", "roaming"])
        self.assertEqual(body["viewer"], {"name": "backuppc", "admin": True})
        self.assertIsNone(self.factory.state.hosts_view.body.call_args.kwargs["sees"])

    def test_without_user_refused(self):
        """The web server must name the user: else 403, with the fix."""
        for path in ["/dashboard/", "/api/v1/hosts"]:
            code, _, body = self.as_user(None, "GET", path)
            self.assertEqual(code, 403, path)
            self.assertIn("a request from the web server (uid 33) names no BackupPC user",
                          json.loads(body)["error"])
        code, _, _ = self.as_user("", "GET", "/api/v1/hosts")
        self.assertEqual(code, 403)
        code, _, _ = self.as_user("backuppc", "POST", "/dashboard/hosts/laptop1/drop")
        self.assertEqual(code, 403)
        self.assertEqual(self.tunnel.closed, [])

    def test_rest_of_api_refused(self):
        """Apache proxies only the dashboard and /api/v1/hosts; the rest is 403 for it."""
        for method, path in [("GET", "/api/v1/tunnels"), ("GET", "/api/v1/tunnels/laptop1"),
                             ("DELETE", "/api/v1/tunnels/laptop1"), ("GET", "/metrics"),
                             ("POST", "/api/v1/tunnels/laptop1/ping"),
                             ("POST", "/api/v1/tunnels/laptop1/backup-done?ok=1"),
                             ("GET", "/api/v1/hostsx"), ("GET", "/"), ("GET", "/api/v1/")]:
            code, _, body = self.as_user("backuppc", method, path)
            self.assertEqual((code, json.loads(body)),
                             (403, {"error": "through the web server only the dashboard and "
                                             "/api/v1/hosts may be reached"}), path)
        self.assertEqual(self.tunnel.closed, [])
        self.factory.backup_desk.backup_done.assert_not_called()

    def test_drop_for_admins_only(self):
        code, _, body = self.action("alice", "laptop1", "drop")
        self.assertEqual((code, json.loads(body)["error"]),
                         (403, "alice is not one of BackupPC's admins ($Conf{CgiAdminUsers}, "
                               "$Conf{CgiAdminUserGroup}): only they may drop a tunnel"))
        self.assertEqual(self.tunnel.closed, [])
        code, _, body = self.action("backuppc", "laptop1", "drop")
        self.assertEqual((code, body), (200, b'{\n "dropped": "laptop1"\n}\n'))
        self.assertEqual(len(self.tunnel.closed), 1)

    def test_ping_own_hosts_only(self):
        code, _, body = self.action("alice", "laptop1", "ping")
        self.assertEqual(code, 200)
        self.assertIn(b'"received": 3', body)
        code, _, body = self.action("alice", "laptop2", "ping")
        self.assertEqual((code, json.loads(body)["error"]),
                         (403, "BackupPC does not let alice see laptop2: only its user and "
                               "moreUsers (BackupPC's hosts file) and BackupPC's admins may"))
        code, _, _ = self.action("backuppc", "laptop2", "ping")
        self.assertEqual(code, 200)

    def test_csrf_still_checked(self):
        code, _, body = self.as_user("backuppc", "POST", "/dashboard/hosts/laptop1/drop",
                                     Origin="https://evil.example")
        self.assertEqual(code, 403)
        self.assertEqual(self.tunnel.closed, [])

    def test_header_from_others_ignored(self):
        """BackupPC's user (or anyone but the web server) is who it is, whatever it sends."""
        self.uid = 108
        code, _, body = self.as_user("alice", "GET", "/api/v1/hosts")
        self.assertEqual(json.loads(body)["hosts"], [{"host": "laptop1"}, {"host": "laptop2"},
                                                     {"host": "roaming"}])
        self.assertNotIn("viewer", json.loads(body))
        code, _, body = self.action("backuppc", "laptop1", "drop")
        self.assertEqual((code, body), (403, b'{\n "error": "only root may drop a tunnel"\n}\n'))
        code, _, _ = self.as_user("alice", "GET", "/api/v1/tunnels/nobody")
        self.assertEqual(code, 404)
        self.uid = 0
        code, _, _ = self.action("alice", "laptop1", "drop")
        self.assertEqual(code, 200)

    def test_refusals_logged_within_bounds(self):
        """Each refusal names who and what; a flood writes five lines, then a sum."""
        for _ in range(50):
            self.as_user("alice", "DELETE", "/api/v1/tunnels/laptop1")
        lines = [e for e in self.events if e.get("log_format", "").startswith("refused {method}")]
        self.assertEqual(len(lines), 5)
        self.assertEqual((lines[0]["method"], lines[0]["path"], lines[0]["who"]),
                         ("DELETE", "/api/v1/tunnels/laptop1",
                          "BackupPC user alice (through the web server)"))
        self.clock.advance(10)
        [summary] = [e for e in self.events if "suppressed" in e]
        self.assertEqual(summary["suppressed"], 45)
