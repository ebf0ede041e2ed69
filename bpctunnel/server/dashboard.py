"""
The dashboard: an HTML page over the status API, served by C{twisted.web}
next to it (L{DashboardGate} wraps the API site's root).

    GET  /dashboard/                         the page (it polls /api/v1/hosts every 2 s)
    GET  /dashboard/dashboard.js, .css       its script and style
    POST /dashboard/hosts/HOST/ping          round trips, as the API's ping
    POST /dashboard/hosts/HOST/drop          drop the tunnel, as the API's DELETE

Who may see it: the API's own rules.  On the Unix socket anyone the socket
lets in; behind Apache, whose login guards it, the BackupPC web user Apache
names sees and does what BackupPC lets them (L{bpctunnel.server.web_users}),
and the web server reaches the dashboard and C{/api/v1/hosts} only, never
the rest of the API.  On TCP with a token a browser cannot send
C{Authorization: Bearer}, so it opens
C{/dashboard/?token=TOKEN} once: the page then sets an HttpOnly, SameSite
cookie (a digest of the token, not the token) and redirects to
C{/dashboard/}.  That cookie stands for the token on the API's GETs only,
never on its POSTs or DELETEs, so it cannot be used to act cross-site.

Cross-site requests: every POST to the dashboard needs the page's token (a
random value made once per server, written into the page) in an
C{X-CSRF-Token} header, and is refused (403) if C{Sec-Fetch-Site} says
another site or C{Origin} names another host than C{Host} (or
C{X-Forwarded-Host} behind a proxy).  Pinging and dropping need the
authority of the API's ping and C{DELETE} (L{bpctunnel.server.web_users.Viewer}).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
from importlib import resources
from urllib.parse import urlsplit

from twisted.web.resource import Resource
from twisted.web.util import Redirect

from bpctunnel.server.api import (
    ApiAccess, PingResource, TunnelResource, _Answer, _json, _NotFound,
)
from bpctunnel.server.web_users import WebUserMissing

#: The cookie that stands for the API token in a browser.
COOKIE = b"bpctunnel_dashboard"
#: The header a POST carries the page's token in.
CSRF_HEADER = b"x-csrf-token"
#: Static files, from the package's data.
STATIC = {b"dashboard.js": b"text/javascript; charset=utf-8",
          b"dashboard.css": b"text/css; charset=utf-8"}
#: Same origin only, no inline script: host-provided text can never run.
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                b"img-src 'self'; connect-src 'self'; base-uri 'none'; "
                                b"form-action 'none'; frame-ancestors 'self'",
    b"x-content-type-options": b"nosniff",
    # The login URL carries the token: never pass it on.
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}


def _file(name: str) -> bytes:
    return (resources.files("bpctunnel.server") / "dashboard_files" / name).read_bytes()


def cookie_value(token: str) -> bytes:
    """What the dashboard's cookie holds for API token C{token}: a digest, not the token."""
    return hmac.new(token.encode(), b"bpctunnel dashboard cookie", hashlib.sha256) \
        .hexdigest().encode()


def cross_site_refusal(request, csrf_token: str) -> str | None:
    """Why C{request}, a POST, may be cross-site (so must be refused), or None."""
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None and fetch_site not in (b"same-origin", b"none"):
        return f"a {fetch_site.decode('ascii', 'replace')} request may not act here"
    origin = request.getHeader(b"origin")
    if origin is not None:
        host = request.getHeader(b"x-forwarded-host") or request.getHeader(b"host") or b""
        # Each proxy appends the Host it was sent: the last entry is the
        # nearest proxy's; the first may be the browser's own invention.
        host = host.split(b",")[-1].strip().lower()
        if urlsplit(origin.decode("ascii", "replace")).netloc.lower() != host.decode(
                "ascii", "replace"):
            return "the request comes from another site (Origin)"
    sent = request.getHeader(CSRF_HEADER) or b""
    if not hmac.compare_digest(sent, csrf_token.encode()):
        return "the request lacks the dashboard page's token (X-CSRF-Token)"
    return None


class DashboardGate(Resource):
    """
    The API site's new root: C{/dashboard} goes to L{DashboardResource};
    everything else to the API's root C{api_root}, after letting the
    dashboard's cookie stand for the token on GET and HEAD.  A request from
    the web server must name its BackupPC user, and may reach only the
    dashboard and C{/api/v1/hosts} (all that Apache proxies).
    """

    def __init__(self, api_root: Resource, factory, token: str | None, access: ApiAccess):
        super().__init__()
        self.api_root = api_root
        self.token = token
        self.access = access
        self.dashboard = DashboardResource(factory, token, access)

    def getChild(self, name: bytes, request):
        try:
            viewer = self.access.viewer(request)
        except WebUserMissing as e:
            return _Answer(self.access.refuse(request, 403, str(e), who="the web server"))
        if viewer.web and name != b"dashboard" and not (
                name == b"api" and request.postpath[:2] == [b"v1", b"hosts"]):
            return _Answer(self.access.refuse(
                request, 403, "through the web server only the dashboard and /api/v1/hosts "
                              "may be reached"))
        if name == b"dashboard":
            return self.dashboard
        if (self.token is not None and request.method in (b"GET", b"HEAD")
                and request.getHeader(b"authorization") is None
                and signed_in(request, self.token)):
            request.requestHeaders.setRawHeaders(b"authorization",
                                                 [f"Bearer {self.token}".encode()])
        return self.api_root.getChildWithDefault(name, request)


def signed_in(request, token: str | None) -> bool:
    """Whether C{request} carries the API token (as a bearer header or the dashboard cookie)."""
    if token is None:
        return True
    bearer = request.getHeader(b"authorization") or b""
    cookie = request.getCookie(COOKIE) or b""
    return (hmac.compare_digest(bearer, f"Bearer {token}".encode())
            or hmac.compare_digest(cookie, cookie_value(token)))


class DashboardResource(Resource):
    """C{/dashboard}: the page, its files, and its POST actions."""

    def __init__(self, factory, token: str | None, access: ApiAccess):
        super().__init__()
        self.factory = factory
        self.token = token
        self.access = access
        # One per server: a cross-site page cannot read it from ours.
        self.csrf_token = secrets.token_urlsafe(32)

    def getChild(self, name: bytes, request):
        for header, value in SECURITY_HEADERS.items():
            request.setHeader(header, value)
        if name == b"" and self.token is not None and b"token" in request.args:
            return self.sign_in(request)
        if not signed_in(request, self.token):
            return _SignInNeeded()
        if name == b"":
            return _File("index.html", b"text/html; charset=utf-8", self.csrf_token)
        if name in STATIC:
            return _File(name.decode(), STATIC[name])
        if name == b"hosts":
            return _Actions(self)
        return _NotFound("no such dashboard resource")

    def render_GET(self, request):
        # /dashboard without the slash: the page's relative URLs need it.
        return Redirect(b"dashboard/").render(request)

    def sign_in(self, request):
        """C{?token=TOKEN}: set the cookie and send the browser on without the token."""
        given = request.args[b"token"][0]
        if not hmac.compare_digest(given, self.token.encode()):
            # Within bounds: a guesser may try as fast as it likes.
            self.access.refusals.count("refused dashboard sign-ins",
                                       "refused a dashboard sign-in with a wrong token from "
                                       "{address}", address=str(request.getClientAddress()))
            return _SignInNeeded()
        request.addCookie(COOKIE, cookie_value(self.token), path=b"/", httpOnly=True,
                          sameSite="strict")
        return Redirect(b"./")


class _File(Resource):
    """One of the dashboard's files; C{@CSRF_TOKEN@} in it becomes C{csrf_token}."""

    isLeaf = True

    def __init__(self, name: str, content_type: bytes, csrf_token: str = ""):
        super().__init__()
        self.name, self.content_type, self.csrf_token = name, content_type, csrf_token

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        return _file(self.name).replace(b"@CSRF_TOKEN@", html.escape(self.csrf_token).encode())


class _Actions(Resource):
    """C{/dashboard/hosts/HOST/ACTION}: POST only, with the page's token."""

    isLeaf = True

    def __init__(self, dashboard: DashboardResource):
        super().__init__()
        self.dashboard = dashboard

    def render_GET(self, request) -> bytes:
        request.setHeader(b"allow", b"POST")
        return _json(request, 405, {"error": "dashboard actions are POSTs"})

    def render_POST(self, request):
        access = self.dashboard.access
        refusal = cross_site_refusal(request, self.dashboard.csrf_token)
        if refusal is not None:
            return access.refuse(request, 403, refusal)
        if len(request.postpath) != 2:
            return _json(request, 404, {"error": "POST /dashboard/hosts/HOST/ping or .../drop"})
        host = request.postpath[0].decode("utf-8", "replace").lower()
        action = request.postpath[1]
        factory = self.dashboard.factory
        # The API's ping and DELETE, with their checks of who asks (Viewer).
        if action == b"ping":
            return PingResource(factory, access, host).render_POST(request)
        if action == b"drop":
            return TunnelResource(factory, access, host).render_DELETE(request)
        return _json(request, 404, {"error": f"no such action: {action.decode('utf-8', 'replace')}"})


class _SignInNeeded(Resource):
    isLeaf = True

    def render(self, request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (b"This dashboard needs the API's token: open /dashboard/?token=TOKEN once "
                b"(the server's --api-token).\n")
