"""
The server's status API and metrics, served by C{twisted.web}.

    GET    /api/v1/hosts                every tunnel host, connected or not, with its
                                        history (L{bpctunnel.server.hosts_view})
    GET    /api/v1/tunnels              every connected host
    GET    /api/v1/tunnels/HOST         one
    DELETE /api/v1/tunnels/HOST         drop that tunnel
    POST   /api/v1/tunnels/HOST/ping    round trips through the tunnel (?count=3)
    GET    /metrics                     Prometheus text

Answers and errors are JSON (C{{"error": "..."}}).

Who may ask what (L{bpctunnel.server.web_users}): on the server's Unix
socket (C{--api-socket}, mode 660, BackupPC's group) the socket's
permissions let in root, BackupPC's user and the web server; of these only
root may drop a tunnel (C{DELETE}), by the peer's uid (C{SO_PEERCRED}).
The web server (C{--web-proxy-user}) asks for the BackupPC web user it names
in C{X-BackupPC-User}, who sees, pings and drops what BackupPC lets them
(its admins may drop); it may reach C{/api/v1/hosts} and the dashboard
only.  On TCP (C{--api-listen}) every request needs C{Authorization: Bearer
TOKEN}.  Refusals are 403s with a plain C{error}, logged within bounds (the
first few of a kind, then a sum every few seconds).
"""

from __future__ import annotations

import hmac
import json
import math
import socket
import struct

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import Interface

from bpctunnel.server.history import iso
from bpctunnel.server.web_users import (
    WEB_USER_HEADER, Viewer, WebUsers, viewer_for,
)
from bpctunnel.wire import framing
from bpctunnel.wire.peer_text import peer_text
from bpctunnel.wire.violations import ViolationCounter

PING_TIMEOUT = 5.0
MAX_PINGS = 20


def tunnel_info(tunnel) -> dict:
    """What the API says about one tunnel."""
    mux = tunnel.mux
    expires = tunnel.certificate_expires
    return {
        "host": tunnel.host,
        "port": tunnel.settings.port,
        "client_address": tunnel.peer_address,
        "connected_since": iso(tunnel.connected_at),
        "certificate_expires": expires.isoformat(timespec="seconds") if expires else None,
        "channels_open": len(mux.channels),
        "channels_opened": mux.channels_opened,
        "bytes_to_client": mux.bytes_out,
        "bytes_from_client": mux.bytes_in,
        "last_backup": getattr(tunnel, "last_backup", None),
        "modules": list(tunnel.served_modules) if tunnel.served_modules is not None else None,
    }


def rtt_summary(rtts_ms: list[float]) -> dict:
    """min/avg/max/mdev of round trips in milliseconds, as ping(8) computes them."""
    avg = sum(rtts_ms) / len(rtts_ms)
    mdev = math.sqrt(sum(r * r for r in rtts_ms) / len(rtts_ms) - avg * avg) if rtts_ms else 0.0
    return {"min": min(rtts_ms), "avg": avg, "max": max(rtts_ms), "mdev": mdev}


def peer_uid(request) -> int | None:
    """The uid of the process that sent C{request} over a Unix socket; None over TCP."""
    if not isinstance(request.getHost(), UNIXAddress):
        return None
    handle = request.channel.transport.getHandle()
    credentials = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def _json(request, status: int, body) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    # Answers differ per asker (a web user sees their own hosts): never cached.
    request.setHeader(b"cache-control", b"no-store, private")
    return json.dumps(body, indent=1).encode() + b"\n"


class IViewer(Interface):
    """The L{Viewer} of a request, once L{ApiAccess.viewer} has found it."""


class ApiAccess:
    """
    Who asks one API site (L{bpctunnel.server.web_users.viewer_for}), and its
    refusals, logged within bounds: a refused caller may retry as fast as it
    likes.

    @param clock: an C{IReactorTime} for the log's bounds, or None (then
        only the first few refusals of each kind are logged).
    @param web_users: what BackupPC's web users may do, if a web server
        (C{--web-proxy-user}) may ask for them.
    """

    def __init__(self, clock, web_users: WebUsers | None = None):
        self.web_users = web_users
        self.refusals = ViolationCounter(clock, "", budget=math.inf)

    def viewer(self, request) -> Viewer:
        """
        The L{Viewer} of C{request}, found once per request.

        @raise WebUserMissing: it comes from the web server, which named no user.
        """
        viewer = request.getComponent(IViewer)
        if viewer is None:
            viewer = viewer_for(peer_uid(request),
                                request.requestHeaders.getRawHeaders(WEB_USER_HEADER),
                                self.web_users)
            request.setComponent(IViewer, viewer)
        return viewer

    def refuse(self, request, status: int, error: str, who: str | None = None) -> bytes:
        """Answer C{request} C{status} with C{error}, and log that (within bounds)."""
        if who is None:
            who = self.viewer(request).who
        self.refusals.count(f"refused API requests ({status})",
                            "refused {method} {path} for {who}: {error}",
                            method=peer_text(request.method.decode("ascii", "replace"), 10),
                            path=peer_text(request.path.decode("utf-8", "replace"), 200),
                            who=who, error=peer_text(error, 400))
        return _json(request, status, {"error": error})

    def flush(self) -> None:
        """Log what the bounded logs still hold, and cancel their timers."""
        self.refusals.flush()
        if self.web_users is not None:
            self.web_users.log.flush()


class _ApiSite(Site):
    """The API's site: once its last listener stops, its bounded logs say what they hold."""

    def __init__(self, resource, access: ApiAccess):
        super().__init__(resource)
        self.access = access

    def stopFactory(self) -> None:
        super().stopFactory()
        self.access.flush()

    def log(self, request) -> None:
        """
        No access log: the dashboard polls every 2 s per open page, and a
        peer may send refused requests as fast as it likes.  What matters
        (refusals, drops, pings) the API logs itself, within bounds.
        """


class _Api(Resource):
    def __init__(self, factory, access: ApiAccess):
        super().__init__()
        self.factory = factory
        self.access = access

    def live(self, host: str):
        tunnel = self.factory.tunnels.get(host)
        if tunnel is None or tunnel.mux is None or tunnel.mux.lost:
            return None
        return tunnel

    def not_found(self, request, host: str) -> bytes:
        return _json(request, 404, {"error": f"no tunnel for {host} is up"})


class HostsResource(Resource):
    """
    C{/api/v1/hosts}: every tunnel host BackupPC knows and every connected
    one, that the asker may see (L{Viewer.visible}).
    """

    isLeaf = True

    def __init__(self, factory, access: ApiAccess):
        super().__init__()
        self.factory = factory
        self.access = access

    def render_GET(self, request) -> bytes:
        viewer = self.access.viewer(request)
        body = self.factory.state.hosts_view.body(
            sees=viewer.sees if viewer.hosts is not None else None)
        return _json(request, 200, viewer.visible(body))


class TunnelsResource(_Api):
    """C{/api/v1/tunnels}."""

    def getChild(self, name: bytes, request):
        if not name:
            return self
        return TunnelResource(self.factory, self.access, name.decode("utf-8", "replace").lower())

    def render_GET(self, request) -> bytes:
        tunnels = sorted((t for t in self.factory.tunnels if t.mux is not None and not t.mux.lost),
                         key=lambda t: t.host)
        return _json(request, 200, {"tunnels": [tunnel_info(t) for t in tunnels]})


class TunnelResource(_Api):
    """C{/api/v1/tunnels/HOST}."""

    log = Logger()

    def __init__(self, factory, access: ApiAccess, host: str):
        super().__init__(factory, access)
        self.host = host

    def getChild(self, name: bytes, request):
        if name == b"ping":
            return PingResource(self.factory, self.access, self.host)
        if name == b"backup-done":
            return BackupDoneResource(self.factory, self.access, self.host)
        return _NotFound(f"no such resource: {name.decode('utf-8', 'replace')}")

    def render_GET(self, request) -> bytes:
        tunnel = self.live(self.host)
        if tunnel is None:
            return self.not_found(request, self.host)
        return _json(request, 200, tunnel_info(tunnel))

    def render_DELETE(self, request) -> bytes:
        viewer = self.access.viewer(request)
        refusal = viewer.drop_refusal() or viewer.host_refusal(self.host)
        if refusal is not None:
            return self.access.refuse(request, 403, refusal)
        tunnel = self.live(self.host)
        if tunnel is None:
            return self.not_found(request, self.host)
        self.log.info("dropping the tunnel of {client_name} at the request of {who}",
                      client_name=self.host, who=viewer.who)
        tunnel.close_tunnel(framing.WS_CLOSE_NORMAL, f"the tunnel of {self.host} was dropped by "
                                                     f"an admin")
        return _json(request, 200, {"dropped": self.host})


class PingResource(_Api):
    """C{/api/v1/tunnels/HOST/ping}: round trips to the client through its tunnel."""

    def __init__(self, factory, access: ApiAccess, host: str):
        super().__init__(factory, access)
        self.host = host

    def render_POST(self, request):
        refusal = self.access.viewer(request).host_refusal(self.host)
        if refusal is not None:
            return self.access.refuse(request, 403, refusal)
        tunnel = self.live(self.host)
        if tunnel is None:
            return self.not_found(request, self.host)
        try:
            count = int(request.args.get(b"count", [b"3"])[0])
            timeout = float(request.args.get(b"timeout", [str(PING_TIMEOUT).encode()])[0])
        except ValueError:
            return _json(request, 400, {"error": "count and timeout must be numbers"})
        if not 1 <= count <= MAX_PINGS or not 0 < timeout <= 60:
            return _json(request, 400, {"error": f"count must be 1-{MAX_PINGS}, timeout 0-60 s"})
        pings = [tunnel.ping(timeout) for _ in range(count)]
        # The HTTP client may leave before the pings end (notifyFinish's
        # errback tells); then there is no one to answer.
        gone: list = []
        request.notifyFinish().addErrback(gone.append)

        def answer(rtts):
            if gone:
                return
            answered = [r * 1000 for r in rtts if r is not None]
            for rtt in answered:
                self.factory.metrics.ping_rtt.observe(rtt / 1000)
            if answered:
                self.factory.state.history.round_trip(self.host, answered[-1] / 1000)
            if not answered:
                body = _json(request, 504, {"error": f"{self.host} did not answer within "
                                                      f"{timeout:g} seconds"})
            else:
                body = _json(request, 200, {"host": self.host, "sent": count,
                                            "received": len(answered), "rtt_ms": answered,
                                            **rtt_summary(answered)})
            request.write(body)
            request.finish()

        gatherResults(pings).addCallback(answer)
        return NOT_DONE_YET


class BackupDoneResource(_Api):
    """
    C{/api/v1/tunnels/HOST/backup-done?ok=1}: BackupPC's
    C{$Conf{DumpPostUserCmd}} reports how a backup ended; the server counts it
    and passes it to the client.
    """

    isLeaf = True

    def __init__(self, factory, access: ApiAccess, host: str):
        super().__init__(factory, access)
        self.host = host

    def render_POST(self, request) -> bytes:
        ok_arg = request.args.get(b"ok", [b""])[0]
        if ok_arg not in (b"0", b"1"):
            return _json(request, 400, {"error": "ok must be 1 (success) or 0 (failure)"})
        detail = request.args.get(b"detail", [b""])[0].decode("utf-8", "replace")[:500]
        ok = ok_arg == b"1"
        self.factory.metrics.backups.labels("success" if ok else "failure").inc()
        # Kept whether or not the tunnel is still up to be told.
        self.factory.state.hosts_view.backup_done(self.host, ok, detail)
        told = self.factory.backup_desk.backup_done(self.host, ok, detail)
        return _json(request, 200, {"host": self.host, "delivered": told > 0})


class MetricsResource(Resource):
    """C{/metrics}: Prometheus text."""

    isLeaf = True

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)


class _NotFound(Resource):
    isLeaf = True

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def render(self, request) -> bytes:
        return _json(request, 404, {"error": self.message})


class _Answer(Resource):
    """A leaf that answers every request with C{body} (already made by L{_json})."""

    isLeaf = True

    def __init__(self, body: bytes):
        super().__init__()
        self.body = body

    def render(self, request) -> bytes:
        return self.body


class _Guard(Resource):
    """The root: checks the bearer token (if any), then routes."""

    def __init__(self, factory, token: str | None, access: ApiAccess):
        super().__init__()
        self.token = token
        api = Resource()
        v1 = Resource()
        api.putChild(b"v1", v1)
        v1.putChild(b"tunnels", TunnelsResource(factory, access))
        v1.putChild(b"hosts", HostsResource(factory, access))
        self.children_by_name = {b"api": api, b"metrics": MetricsResource(factory.metrics)}

    def getChild(self, name: bytes, request):
        if self.token is not None:
            header = request.getHeader(b"authorization") or b""
            if not hmac.compare_digest(header, f"Bearer {self.token}".encode()):
                return _Unauthorized()
        return self.children_by_name.get(name) or _NotFound(
            f"no such resource: /{name.decode('utf-8', 'replace')}")


class _Unauthorized(Resource):
    isLeaf = True

    def render(self, request) -> bytes:
        return _json(request, 401, {"error": "this API needs 'Authorization: Bearer TOKEN'"})


def make_api_site(factory, token: str | None = None,
                  web_users: WebUsers | None = None) -> Site:
    """
    The status API and metrics of a L{bpctunnel.server.protocol.TunnelServerFactory};
    C{web_users}: on the Unix socket, what the web server's users may do
    (C{--web-proxy-user}).
    """
    # Test doubles of the factory may have no reactor: then the refusals'
    # log is bounded to its first lines.
    access = ApiAccess(web_users.clock if web_users is not None
                       else getattr(factory, "reactor", None), web_users)
    site = _ApiSite(_Guard(factory, token, access), access)
    site.displayTracebacks = False
    site.noisy = False
    from bpctunnel.server.dashboard import DashboardGate  # it imports this module
    site.resource = DashboardGate(site.resource, factory, token, access)
    return site
