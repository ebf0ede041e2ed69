"""
When the client tries the server again, and how long it waits.

Twisted's C{ClientService} keeps the tunnel up: it counts the failed attempts
in a row and asks its C{retryPolicy} how long to wait after each.  A tunnel the
server refuses is a TCP connection that succeeded, so L{TunnelService} counts a
connection as made only once its WebSocket is open (C{prepareConnection}): a
tunnel that closed before it opened (refused, TLS failed, no handshake in
time) is one more failed attempt, and the delay grows as it does for a server
that cannot be reached.

A refusal only the BackupPC admin can fix (a L{bpctunnel.refusals.Refusal}
that C{needs_admin}) backs off to the cap at once: hammering the server would
not help.  Jitter (each wait is between half and all of its delay) spreads a
fleet's reconnections after a server restart, and never takes a wait past the
cap.
"""

from __future__ import annotations

import random
from typing import Callable

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.interfaces import (
    ILoggingContext, IProtocol, IProtocolFactory, IStreamClientEndpoint,
)
from zope.interface import implementer

from bpctunnel.errors import BpcTunnelError
from bpctunnel.refusals import needs_admin

__all__ = ["RetryPolicy", "TunnelNotOpened", "TunnelService", "needs_admin"]


class TunnelNotOpened(BpcTunnelError):
    """
    A tunnel closed before its WebSocket opened.

    @ivar refusal: the server's refusal, in its words, if it refused.
    @ivar reason: why it closed, in words (the refusal, a TLS alert, ...).
    """

    def __init__(self, refusal: str | None, reason: str):
        super().__init__(f"the tunnel closed before it opened: {reason}")
        self.refusal = refusal
        self.reason = reason


@attrs.define
class RetryPolicy:
    """
    A C{retryPolicy} for C{ClientService}: C{policy(attempt) -> seconds}, where
    C{attempt} is how many attempts in a row have failed (1 after the first).

    @ivar initial: the first delay, in seconds.
    @ivar maximum: the cap, in seconds.
    @ivar admin_refusal: the refusal that closed the last tunnel, if only the
        admin can fix it.
    """

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    random: Callable[[], float] = random.random
    admin_refusal: str | None = None

    def __call__(self, attempt: int) -> float:
        if self.admin_refusal is not None:
            base = self.maximum
        else:
            # Twisted's backoff without its (additive) jitter: ours scales.
            delay = backoffPolicy(self.initial, self.maximum, self.factor, jitter=lambda: 0.0)
            base = delay(max(attempt, 1) - 1)
        return base * (0.5 + 0.5 * self.random())

    def tunnel_opened(self) -> None:
        """A tunnel came up: the next wait is the first delay."""
        self.admin_refusal = None

    def tunnel_closed(self, refusal: str | None) -> None:
        """A tunnel closed, refused if C{refusal}: wait the cap if only the admin can help."""
        self.admin_refusal = refusal if needs_admin(refusal) else None


class TunnelService(ClientService):
    """
    A C{ClientService} whose connections are tunnels: one is made when its
    WebSocket opens, and C{whenConnected} fires with the open tunnel's
    protocol, or (with C{failAfterFailures}) fails with L{TunnelNotOpened} or
    the connection's error.

    @param factory: makes protocols with C{when_open()} (a Deferred that fires
        once the WebSocket is open, or fails with L{TunnelNotOpened}) and
        C{tunnel_protocol} (the protocol itself); its C{retry_policy} says
        how long to wait between attempts.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, factory, clock):
        super().__init__(_UntilOpenEndpoint(endpoint), factory, retryPolicy=factory.retry_policy,
                         clock=clock, prepareConnection=lambda proxy: proxy.when_open())


@implementer(IStreamClientEndpoint)
class _UntilOpenEndpoint:
    """
    C{endpoint}, with each connection's protocol behind an L{_UntilOpen}.
    C{ClientService} passes a factory of proxies of the tunnel protocol and
    expects a proxy back.
    """

    def __init__(self, endpoint: IStreamClientEndpoint):
        self._endpoint = endpoint

    def __repr__(self) -> str:
        # ClientService logs it: "Scheduling retry 2 to connect <endpoint> in 4 seconds."
        return repr(self._endpoint)

    def connect(self, factory):
        return self._endpoint.connect(_UntilOpenFactory(factory)).addCallback(
            lambda gate: gate.proxy)


@implementer(IProtocolFactory, ILoggingContext)
class _UntilOpenFactory:
    """Puts an L{_UntilOpen} in front of each protocol C{factory} builds."""

    def __init__(self, factory):
        self._factory = factory

    def buildProtocol(self, addr):
        proxy = self._factory.buildProtocol(addr)
        return None if proxy is None else _UntilOpen(proxy)

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()

    def logPrefix(self) -> str:
        return self._factory.logPrefix()


@implementer(IProtocol, ILoggingContext)
class _UntilOpen:
    """
    The connection's protocol: C{ClientService}'s proxy of the tunnel protocol,
    but for the loss of a connection whose tunnel never opened.  That went
    to the tunnel protocol only: C{ClientService} counted the attempt as
    failed when C{prepareConnection} failed, and its state machine has no
    transition for the loss of a connection it never took (automat's
    C{NoTransition}, raised into the transport).
    """

    def __init__(self, proxy):
        self.proxy = proxy
        self._tunnel = proxy.tunnel_protocol
        self._open = False
        proxy.when_open().addCallbacks(self._opened, lambda failure: None)

    def _opened(self, _protocol) -> None:
        self._open = True

    def makeConnection(self, transport) -> None:
        self.proxy.makeConnection(transport)

    def connectionMade(self) -> None:
        pass  # makeConnection passes the connection on

    def dataReceived(self, data: bytes) -> None:
        self._tunnel.dataReceived(data)

    def connectionLost(self, reason) -> None:
        (self.proxy if self._open else self._tunnel).connectionLost(reason)

    def logPrefix(self) -> str:
        return self._tunnel.logPrefix()
