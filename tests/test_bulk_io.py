"""
Tests for L{bpctunnel.transport.sockets}: closing a socket whose producer is paused,
over real loopback sockets (the behaviour at stake is Twisted's transport's).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from bpctunnel.transport.sockets import SEND_SIZE, release_and_close, tune_for_bulk

#: Well over what a socket buffer and Twisted's bufferSize hold, so that the
#: writer's producer is paused when the close is asked for.
PAYLOAD = b"b" * (8 * 1024 * 1024)


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class Writer(Protocol):
    """Registers a producer, writes PAYLOAD, and closes at once."""

    def __init__(self, half: bool, seen: list) -> None:
        self.half, self.seen = half, seen

    def connectionMade(self) -> None:
        producer = Producer()
        self.transport.registerProducer(producer, True)
        self.transport.write(PAYLOAD)
        self.seen.append(producer.paused)
        release_and_close(self.transport, half=self.half)


@implementer(IHalfCloseableProtocol)
class Reader(Protocol):
    def __init__(self) -> None:
        self.received = 0
        self.ended = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def readConnectionLost(self) -> None:
        self.ended.callback(self.received)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        if not self.ended.called:
            self.ended.callback(self.received)


class ReleaseAndCloseTests(TestCase):
    @inlineCallbacks
    def check(self, half: bool):
        paused_at_close = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Writer(half, paused_at_close)))
        self.addCleanup(port.stopListening)
        reader = Reader()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), reader)
        self.addCleanup(lambda: reader.transport.abortConnection())
        received = yield reader.ended.addTimeout(30, reactor)  # 8 MiB: milliseconds
        self.assertEqual(paused_at_close, [True])
        self.assertEqual(received, len(PAYLOAD))

    def test_close_with_paused_producer(self):
        """The reader gets everything, then the end, though the producer was paused."""
        return self.check(half=False)

    def test_half_close_with_paused_producer(self):
        """The same for a half-close (the channel's EOF)."""
        return self.check(half=True)


class TuneTests(SynchronousTestCase):
    def test_sizes(self):
        transport = StringTransport()
        tune_for_bulk(transport, 12345)
        self.assertEqual((transport.bufferSize, transport.SEND_LIMIT), (12345, SEND_SIZE))
