"""Timers for Autobahn's protocol timeouts (handshake, ping, close)."""

from __future__ import annotations


class ReactorTimer:
    """
    Stands in for Autobahn's per-factory batched timer (C{_batched_timer}):
    each timeout is a plain C{IDelayedCall} of the given clock.

    Autobahn's batched timer leaves a batch scheduled after its last timer
    is cancelled, so a stopped server or client would keep the reactor busy
    for up to a keepalive interval; Twisted's timer heap handles tens of
    thousands of plain timers without trouble.
    """

    def __init__(self, clock):
        self._clock = clock

    def call_later(self, delay, func, *args, **kwargs):
        return self._clock.callLater(delay, func, *args, **kwargs)


def cancel_close_timeout(protocol) -> None:
    """
    Cancel a WebSocket protocol's close-handshake timer once the connection
    is gone (Autobahn leaves it to fire, harmlessly, up to a second later).
    """
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None and call.active():
        call.cancel()
    protocol.closeHandshakeTimeoutCall = None
