"""
Refused opening handshakes: what the client is told (an HTTP status and a
reason phrase that starts with the refusal's words, see
L{bpctunnel.refusals}), what the log says, and the count in the metrics.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure

from bpctunnel.errors import BpcTunnelError, Refused
from bpctunnel.refusals import Refusal
from bpctunnel.wire.violations import ViolationCounter


class HandshakeDenied(Exception):
    """The opening handshake is refused: the client gets C{http_status} and C{text}."""

    def __init__(self, refusal: Refusal, http_status: int, text: str):
        super().__init__(text)
        self.refusal = refusal
        self.http_status = http_status
        self.text = text


class HandshakeRefusals:
    """
    Turns why a handshake fails into a L{HandshakeDenied}, logged and counted.

    @param metrics: a L{bpctunnel.server.metrics.ServerMetrics}.
    @param bounded: where refusals are logged, within bounds per refusal
        (a client may retry as fast as it likes), or C{None}: every one.
    """

    log = Logger()

    def __init__(self, metrics, bounded: ViolationCounter | None = None):
        self.metrics = metrics
        self._bounded = bounded

    def _warn(self, refusal: Refusal, format: str, /, **fields) -> None:
        if self._bounded is None:
            self.log.warn(format, refusal_code=refusal.code, **fields)
        else:
            self._bounded.count(f"refusals ({refusal.code})", format,
                                refusal_code=refusal.code, **fields)

    def deny(self, peer: str, refusal: Refusal, reason: str) -> HandshakeDenied:
        """Refuse C{peer} for a fault in its request itself (its path, its protocols)."""
        # The reason may quote what the peer sent: it goes to the log and
        # back to the peer, never into a metric label.
        self._warn(refusal, "refused {peer}: {reason}", peer=peer, reason=reason)
        self.metrics.refused(refusal)
        return HandshakeDenied(refusal, refusal.http_status, reason)

    def refuse(self, peer: str, failure: Failure) -> HandshakeDenied:
        """
        Refuse C{peer} because its authorization failed with C{failure}: a
        L{Refused} is the client's to know; a broken server file or a bug is
        only named to it, and logged in full.
        """
        if failure.check(Refused):
            error = failure.value
            refusal = error.refusal or Refusal.INTERNAL_ERROR
            self.metrics.refused(refusal)
            self._warn(refusal, "refused {client_name} from {peer}: {reason}",
                       client_name=error.host, peer=peer, reason=str(error),
                       refusal=error.reason)
            return HandshakeDenied(refusal, error.http_status, str(error))
        if failure.check(BpcTunnelError):
            refusal = Refusal.SERVER_CONFIG_ERROR
            self.metrics.refused(refusal)
            self.log.error("cannot serve {peer}: {error}", peer=peer,
                           error=failure.getErrorMessage())
            return HandshakeDenied(refusal, refusal.http_status,
                                   f"{refusal.words}; the BackupPC admin must check the server log")
        refusal = Refusal.INTERNAL_ERROR
        self.metrics.refused(refusal)
        self.log.failure("unexpected error authorizing {peer}", failure, peer=peer)
        return HandshakeDenied(refusal, refusal.http_status, f"{refusal.words}; see the server log")
