"""
How long the client waits before it tries the server again.

Twisted's C{ClientService} counts failed TCP connections, but a tunnel the
server refuses is a TCP connection that succeeded; so the policy also counts
tunnels that closed before they opened.  A refusal only the BackupPC admin can
fix (a L{bpctunnel.refusals.Refusal} that C{needs_admin}) backs off to the cap at
once: hammering the server would not help.  Jitter (each wait is between half
and all of its delay) spreads a fleet's reconnections after a server restart,
and never takes a wait past the cap.
"""

from __future__ import annotations

import random
from typing import Callable

import attrs

from bpctunnel.refusals import needs_admin

__all__ = ["RetryPolicy", "needs_admin"]


@attrs.define
class RetryPolicy:
    """
    A C{retryPolicy} for C{ClientService}: C{policy(attempt) -> seconds}.

    @ivar initial: the first delay, in seconds.
    @ivar maximum: the cap, in seconds.
    """

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    random: Callable[[], float] = random.random
    failed_tunnels: int = 0
    admin_refusal: str | None = None

    def __call__(self, attempt: int) -> float:
        if self.admin_refusal is not None:
            base = self.maximum
        else:
            n = max(attempt, self.failed_tunnels, 1)
            base = min(self.initial * self.factor ** min(n - 1, 64), self.maximum)
        return base * (0.5 + 0.5 * self.random())

    def tunnel_opened(self) -> None:
        """A tunnel came up: start from the first delay next time."""
        self.failed_tunnels = 0
        self.admin_refusal = None

    def tunnel_failed(self, refusal: str | None) -> None:
        """A tunnel closed before it opened (refused, or TLS failed)."""
        self.failed_tunnels += 1
        self.admin_refusal = refusal if needs_admin(refusal) else None
