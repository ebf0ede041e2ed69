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

A server that closes the tunnel saying it is restarting
(L{bpctunnel.refusals.Notice.SERVER_RESTARTING}) is no failure: the laptop
logs it as news, and its first L{RESTART_ATTEMPTS} attempts each wait only
the first delay (with jitter), so it is back about a second after the
server is; only then does the backoff grow.
"""

from __future__ import annotations

import random
from typing import Callable

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.interfaces import (
    ILoggingContext, IProtocol, IProtocolFactory, IStreamClientEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from bpctunnel.errors import BpcTunnelError
from bpctunnel.refusals import Notice, needs_admin

__all__ = ["RESTART_ATTEMPTS", "RetryPolicy", "TunnelNotOpened", "TunnelService", "needs_admin"]

#: Attempts that wait only the first delay after the server said it is
#: restarting (a restart takes a few seconds; ten tries cover it).
RESTART_ATTEMPTS = 10


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
    @ivar restarting: the server closed the last tunnel saying it is
        restarting, and no tunnel has opened since.
    """

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    random: Callable[[], float] = random.random
    admin_refusal: str | None = None
    restarting: bool = False

    def __call__(self, attempt: int) -> float:
        attempt = max(attempt, 1)
        if self.admin_refusal is not None:
            base = self.maximum
        elif self.restarting and attempt <= RESTART_ATTEMPTS:
            base = self.initial
        else:
            if self.restarting:
                attempt -= RESTART_ATTEMPTS  # the backoff starts over after the quick tries
            # Twisted's backoff without its (additive) jitter: ours scales.
            delay = backoffPolicy(self.initial, self.maximum, self.factor, jitter=lambda: 0.0)
            base = delay(attempt - 1)
        return base * (0.5 + 0.5 * self.random())

    def tunnel_opened(self) -> None:
        """A tunnel came up: the next wait is the first delay."""
        self.admin_refusal = None
        self.restarting = False

    def tunnel_closed(self, refusal: str | None) -> None:
        """A tunnel closed, refused if C{refusal}: wait the cap if only the admin can help."""
        self.admin_refusal = refusal if needs_admin(refusal) else None
        if refusal is not None:
            self.restarting = False  # the server is back, and says something else

    def server_restarting(self) -> None:
        """The server closed the tunnel because it is restarting: come back soon."""
        self.admin_refusal = None
        self.restarting = True


class TunnelService(ClientService):
    """
    A C{ClientService} whose connections are tunnels: one is made when its
    WebSocket opens, and C{whenConnected} fires with the open tunnel's
    protocol, or (with C{failAfterFailures}) fails with L{TunnelNotOpened} or
    the connection's error.

    @param factory: makes protocols with C{when_open()} (a Deferred that fires
        once the WebSocket is open, or fails with L{TunnelNotOpened}) and
        C{tunnel_protocol} (the protocol itself); its C{retry_policy} says
        how long to wait between attempts, and its C{observers} (callables
        C{(event, protocol, detail)}) hear of each tunnel that C{"closed"}
        with its refusal or close reason as C{detail}.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamClientEndpoint, factory, clock):
        super().__init__(_UntilOpenEndpoint(endpoint), factory, retryPolicy=factory.retry_policy,
                         clock=clock, prepareConnection=lambda proxy: proxy.when_open())
        self._retry_policy = factory.retry_policy
        # Told after the protocol gave the policy the refusal, if any, and
        # before ClientService asks the policy how long to wait.
        factory.observers.append(self._tunnel_event)

    def _tunnel_event(self, event: str, _protocol, detail) -> None:
        if event != "closed" or Notice.from_text(detail) is not Notice.SERVER_RESTARTING:
            return
        # The protocol has said so in its close line.
        self._retry_policy.server_restarting()


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
