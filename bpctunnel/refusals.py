"""
Every reason the server refuses a tunnel, in one place.

A refusal travels to the client as text: the reason phrase of the HTTP error
that ends the opening handshake, or the close reason of a tunnel the server
drops because its certificate was revoked.  That text starts with the
refusal's fixed words, e.g. C{"unknown host for laptop1: it is not listed in
..."}, and those words are what old clients and old servers understand, so
they never change; L{Refusal.from_text} turns a text from any server version
back into its member.

Each member also carries a stable C{code} (the C{reason} label of
C{bpctunnel_refusals_total}: metrics labels come only from these codes, never
from what a peer sent), the HTTP status of the refused handshake, whether only
the BackupPC admin can fix it (the client then retries at its slowest), and
the advice shown to the laptop's user.

No other module holds these words: the server builds its texts from the
members, the client's advice and retry policy read them.

L{Notice} holds the same for a tunnel the server closes without refusing
the laptop (it is stopping): its WebSocket close code, its words, and what
the laptop does about it.
"""

from __future__ import annotations

import enum


class Refusal(enum.Enum):
    """
    One reason for refusing a tunnel.

    @ivar code: stable identifier: metrics label, and name in logs.
    @ivar words: the fixed phrase the refusal's text starts with (C{None}: the
        client is never told, the connection is dropped before TLS).
    @ivar http_status: the status of the refused opening handshake.
    @ivar needs_admin: whether only the BackupPC admin can fix it, so that
        retrying soon cannot help.
    @ivar advice: what the laptop's user can do about it.
    """

    UNKNOWN_HOST = (
        "unknown_host", "unknown host", 403, True,
        "ask the BackupPC admin to add this host to BackupPC's hosts file")
    FINGERPRINT_MISMATCH = (
        "fingerprint_mismatch", "fingerprint mismatch", 403, True,
        "this certificate is not (or no longer) registered; ask the BackupPC admin "
        "for a new bundle (bpctunnel renew HOST)")
    HOST_CONFIG_ERROR = (
        "host_config_error", "host config error", 403, True,
        "ask the BackupPC admin to fix the host's config on the server")
    BAD_CERTIFICATE = (
        "bad_certificate", "bad certificate", 403, True,
        "ask the BackupPC admin for a new bundle (bpctunnel register-client HOST): the "
        "certificate must name this laptop's BackupPC host as its common name")
    PORT_SHARED = (
        "port_shared", "port shared", 403, True,
        "ask the BackupPC admin to give each host its own RsyncdClientPort (bpctunnel check "
        "names the hosts that share one)")
    TOO_MANY_WATCHERS = (
        "too_many_watchers", "too many backup-now connections", 429, False,
        "other backup-now commands for this laptop are waiting already; try again when "
        "they are done")
    ALREADY_CONNECTED = (
        "already_connected", "already connected", 409, False,
        "another client with this certificate is connected; retrying in case it is "
        "this laptop's old connection")
    PORT_UNAVAILABLE = (
        "port_unavailable", "port unavailable", 503, False,
        "the server cannot open this host's port; retrying")
    UNSUPPORTED_PROTOCOL = (
        "unsupported_protocol", "unsupported protocol version", 426, True,
        "install the bpctunnel version the server runs")
    WRONG_PATH = (
        "wrong_path", "no tunnel at", 404, True,
        "see the server's log")
    SERVER_CONFIG_ERROR = (
        "server_config_error", "server configuration error", 503, False,
        "see the server's log")
    INTERNAL_ERROR = (
        "internal_error", "internal server error", 500, False,
        "see the server's log")
    #: More unauthenticated connections from one address than allowed:
    #: dropped before TLS, the client only sees the connection close.
    TOO_MANY_FROM_ONE_ADDRESS = (
        "too_many_from_one_address", None, 503, False,
        "see the server's log")
    #: --max-handshakes reached: dropped before TLS, the client retries.
    BUSY = ("busy", None, 503, False, "see the server's log")

    def __init__(self, code: str, words: str | None, http_status: int, needs_admin: bool,
                 advice: str):
        self.code = code
        self.words = words
        self.http_status = http_status
        self.needs_admin = needs_admin
        self.advice = advice

    def text(self, host: str, detail: str) -> str:
        """The refusal of C{host} as the client reads it: C{"WORDS for HOST: DETAIL"}."""
        return f"{self.words} for {host}: {detail}"

    @classmethod
    def from_code(cls, code: str) -> Refusal | None:
        """The member whose code is C{code}, or C{None}."""
        return _BY_CODE.get(code)

    @classmethod
    def from_text(cls, text: str | None) -> Refusal | None:
        """
        The member a refusal's text (from this or an older server) starts
        with, or C{None} for text that is no known refusal.
        """
        if not text:
            return None
        text = text.lstrip()
        for member in _BY_WORDS:
            if text.startswith(member.words):
                return member
        return None


_BY_CODE = {member.code: member for member in Refusal}
# Longest words first, so that no phrase is shadowed by a shorter prefix.
_BY_WORDS = sorted((m for m in Refusal if m.words is not None), key=lambda m: -len(m.words))

#: Advice for text that names no known refusal.
UNKNOWN_ADVICE = "see the server's log"


def advice_for(text: str | None) -> str:
    """What the laptop's user can do about a refusal's text."""
    refusal = Refusal.from_text(text)
    return refusal.advice if refusal is not None else UNKNOWN_ADVICE


def needs_admin(text: str | None) -> bool:
    """Whether a refusal's text says that only the BackupPC admin can fix it."""
    refusal = Refusal.from_text(text)
    return refusal is not None and refusal.needs_admin


class Notice(enum.Enum):
    """
    A reason the server closes an open tunnel that is no refusal: the laptop
    may come back, and soon.  The tunnel closes with C{close_code} and a
    reason that starts with C{words}, as a refusal's text does.

    @ivar code: stable identifier, the name in logs.
    @ivar close_code: the WebSocket close code (Autobahn sends 1000 and
        3000-4999 only, so not 1001, "going away").
    @ivar words: the fixed phrase the close reason starts with.
    @ivar advice: what the laptop's log says it does.
    """

    #: SIGTERM: twistd stops the server, most often to start it again.
    SERVER_RESTARTING = ("server_restarting", 4004, "server restarting",
                         "the server is restarting; reconnecting")

    def __init__(self, code: str, close_code: int, words: str, advice: str):
        self.code = code
        self.close_code = close_code
        self.words = words
        self.advice = advice

    def text(self, detail: str) -> str:
        """The close reason as the client reads it: C{"WORDS: DETAIL"}."""
        return f"{self.words}: {detail}"

    @classmethod
    def from_text(cls, text: str | None) -> Notice | None:
        """The member a close reason starts with, or C{None}."""
        text = (text or "").lstrip()
        for member in cls:
            if text.startswith(member.words):
                return member
        return None
