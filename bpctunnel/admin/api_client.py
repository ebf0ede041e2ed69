"""
The command-line side of the status API (C{bpctunnel status}, C{ping},
C{revoke}).  A short-lived command, so plain blocking HTTP is fine here.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from urllib.parse import urlsplit

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


def format_status(tunnels: list[dict]) -> str:
    """The C{bpctunnel status} table."""
    rows = [("HOST", "PORT", "CLIENT", "SINCE", "CHANNELS", "TO CLIENT", "FROM CLIENT", "LAST BACKUP")]
    for t in tunnels:
        rows.append((t["host"], str(t["port"]), t["client_address"], t["connected_since"] or "-",
                     str(t["channels_open"]), str(t["bytes_to_client"]),
                     str(t["bytes_from_client"]), str(t.get("last_backup") or "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
