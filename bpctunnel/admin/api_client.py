"""
The command-line side of the status API (C{bpctunnel status}, C{ping},
C{revoke}).  A short-lived command, so plain blocking HTTP is fine here.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from bpctunnel.errors import BpcTunnelError, ConfigError

DEFAULT_API = "http://127.0.0.1:8444"


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


def call(method: str, base: str, path: str, token: str | None = None, timeout: float = 30):
    """One API request; returns the decoded JSON answer."""
    request = urllib.request.Request(base.rstrip("/") + path, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            message = e.reason
        raise (NotFound if e.code == 404 else ApiError)(message) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ApiError(f"cannot reach the bpctunnel server's API at {base} ({reason}); is the "
                       f"server running, and is --api-listen where --api points?") from None


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
