"""
The command-line side of the status API (C{bpctunnel status}, C{ping},
C{revoke}).  A short-lived command, so plain blocking HTTP is fine here.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
from urllib.parse import urlsplit

from bpctunnel.client.backup_now import human_bytes
from bpctunnel.errors import BpcTunnelError, ConfigError

#: Where the server's API listens by default (its --api-socket).
DEFAULT_API = "unix:/run/bpctunnel/api.sock"


class ApiError(BpcTunnelError):
    """The server's API could not be reached or refused the request."""


class NotFound(ApiError):
    """The API answered 404: e.g. no tunnel for that host is up."""


def api_token(token_file: str | None) -> str | None:
    """
    The bearer token: from C{--api-token-file}, read as the server reads
    it, or from C{BPCTUNNEL_API_TOKEN}.
    """
    if token_file:
        # Imported here: the server's modules are not needed for calls without a token file.
        from bpctunnel.server.service import read_api_token

        try:
            return read_api_token(token_file)
        except ConfigError as e:
            raise ApiError(str(e)) from None
    return os.environ.get("BPCTUNNEL_API_TOKEN") or None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the server's Unix socket (C{unix:PATH})."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def api_connection(base: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the API at C{base} (C{unix:PATH} or C{http://HOST:PORT}) and its path prefix."""
    if base.startswith("unix:"):
        return _UnixConnection(base[len("unix:"):], timeout), ""
    url = urlsplit(base)
    if url.scheme != "http" or not url.hostname:
        raise ApiError(f"--api {base}: give unix:PATH or http://HOST:PORT")
    return http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout), \
        url.path.rstrip("/")


def call(method: str, base: str, path: str, token: str | None = None, timeout: float = 30):
    """One API request; returns the decoded JSON answer."""
    connection, prefix = api_connection(base, timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request(method, prefix + path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except OSError as e:
        hint = ("is the server running, and may this user use its socket?"
                if base.startswith("unix:") else
                "is the server running, and is --api-listen where --api points?")
        raise ApiError(f"cannot reach the bpctunnel server's API at {base} "
                       f"({e.strerror or e}); {hint}") from None
    finally:
        connection.close()
    if response.status >= 400:
        try:
            message = json.loads(body).get("error", response.reason)
        except ValueError:
            message = response.reason
        raise (NotFound if response.status == 404 else ApiError)(message)
    return json.loads(body)


def ping_lines(answer: dict) -> list[str]:
    """C{bpctunnel ping} output, in the two forms BackupPC's ping parser accepts."""
    lines = [f"reply from {answer['host']} through its tunnel: time={rtt:.3f} ms"
             for rtt in answer["rtt_ms"]]
    lines.append(f"{answer['sent']} packets transmitted, {answer['received']} received")
    lines.append("rtt min/avg/max/mdev = {min:.3f}/{avg:.3f}/{max:.3f}/{mdev:.3f} ms".format(**answer))
    return lines


def human_age(seconds: float) -> str:
    """C{7260} -> C{2h}: the largest unit that fits."""
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _seconds(stamp: str | None) -> float | None:
    return datetime.datetime.fromisoformat(stamp).timestamp() if stamp else None


def format_hosts(body: dict) -> str:
    """The C{bpctunnel status} table of C{GET /api/v1/hosts}: plain words, no reprs."""
    now = _seconds(body["generated_at"])
    rows = [("HOST", "STATE", "ADDRESS", "RTT", "TODAY", "LAST BACKUP")]
    for h in body["hosts"]:
        if h["connected"]:
            state = f"connected {human_age(now - _seconds(h['connected_since']))}"
        elif h["last_seen"]:
            state = f"seen {human_age(now - _seconds(h['last_seen']))} ago"
        else:
            state = "never seen"
        backup = h["last_backup"]
        if backup is None:
            last = "-"
        else:
            ago = human_age(now - _seconds(backup["at"]))
            last = f"ok {ago} ago" if backup["ok"] else f"FAILED {ago} ago"
            if not backup["ok"] and backup["detail"]:
                last += f": {' '.join(backup['detail'].split())[:60]}"
        rtt = f"{h['rtt_ms']:.1f} ms" if h["rtt_ms"] is not None else "-"
        rows.append((h["host"], state, h["address"] or "-", rtt, human_bytes(h["bytes_today"]),
                     last))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    for h in body["hosts"]:
        lines += [f"{h['host']}: {problem}" for problem in h["problems"]]
    lines += [f"server: {problem}" for problem in body.get("server_problems", [])]
    return "\n".join(lines)
