"""
A TCP relay that delays each direction, in the reactor: a laptop at a
distance for tests (this kernel has no netem).  Every chunk read is written
on after the delay, in order, without slowing the reading: the relay keeps a
bandwidth-delay product in flight, as a long line does.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol


class _Half(Protocol):
    """One side of a relayed connection: what it reads reaches the other side later."""

    def __init__(self, relay: DelayRelay):
        self.relay = relay
        self.other: _Half | None = None
        self._queue: deque[tuple[float, bytes]] = deque()
        self._timer = None
        self._early: list[bytes] = []
        self._closing = False

    def dataReceived(self, data: bytes) -> None:
        self._queue.append((self.relay.clock.seconds() + self.relay.delay, data))
        if self._timer is None:
            self._timer = self.relay.clock.callLater(self.relay.delay, self._deliver)

    def _deliver(self) -> None:
        self._timer = None
        now = self.relay.clock.seconds()
        while self._queue and self._queue[0][0] <= now + 1e-6:
            _, data = self._queue.popleft()
            if self.other is not None and self.other.transport is not None:
                self.other.transport.write(data)
        if self._queue:
            self._timer = self.relay.clock.callLater(self._queue[0][0] - now, self._deliver)
        elif self._closing and self.other is not None:
            self.other.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self._closing = True
        if not self._queue and self._timer is None and self.other is not None \
                and self.other.transport is not None:
            self.other.transport.loseConnection()


class DelayRelay:
    """
    Listens on 127.0.0.1 (L{port} once L{start} fired) and relays each
    connection to C{target_port}, each direction C{delay} seconds late.
    """

    def __init__(self, reactor, target_port: int, delay: float):
        self.reactor = self.clock = reactor
        self.target_port = target_port
        self.delay = delay
        self.listening = None
        self.connections: list[_Half] = []

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    def start(self):
        return TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(self._accepted)).addCallback(self._listening)

    def _listening(self, port):
        self.listening = port
        return self

    def _accepted(self) -> _Half:
        near = _Half(self)
        self.connections.append(near)
        far = _Half(self)
        near.other, far.other = far, near

        def connected(_):
            near.transport.resumeProducing()

        def failed(_):
            near.transport.loseConnection()

        original = near.connectionMade

        def made():
            original()
            near.transport.pauseProducing()  # nothing read until the far side is there
            connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.target_port),
                            far).addCallbacks(connected, failed)

        near.connectionMade = made
        return near

    def stop(self):
        for half in self.connections:
            for side in (half, half.other):
                if side is not None and side._timer is not None and side._timer.active():
                    side._timer.cancel()
                if side is not None and side.transport is not None:
                    side.transport.abortConnection()
        return self.listening.stopListening() if self.listening is not None else None
