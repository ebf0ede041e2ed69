"""
Protocol violations are bounded (issue 16): a peer's flood of bad messages
writes a handful of log lines, gets a handful of answers and then loses its
tunnel, while messages a peer sent before it heard that a channel closed
cost nothing.  All on a Clock, without sockets.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.errors import ProtocolError
from bpctunnel.wire import framing
from bpctunnel.wire.mux import (
    ANSWERED_UNKNOWN, DEFAULT_WINDOW, LATE_MESSAGES, MAX_DATA, RECENTLY_CLOSED, Multiplexer,
)
from bpctunnel.wire.violations import BUDGET, LOG_BURST, WINDOW, ViolationCounter
from tests.test_mux import FakeLocalEnd


class Lines:
    """The log lines bpctunnel writes while a test runs."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_namespace", "").startswith("bpctunnel"):
            self.events.append(event)

    @property
    def text(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def matching(self, words: str) -> list[str]:
        return [line for line in self.text if words in line]


UNKNOWN_TYPE = b"\x70" + b"from a newer version"


def data(channel_id: int, payload: bytes = b"x") -> bytes:
    return framing.encode(framing.Data(channel_id, payload))


class ServerMux:
    """A server-side multiplexer on a Clock, whose sent messages are kept decoded."""

    def __init__(self, **kwargs):
        self.clock = Clock()
        self.sent = []
        self.mux = Multiplexer(lambda m: self.sent.append(framing.decode(m)), is_server=True,
                               name="laptop1", clock=self.clock, **kwargs)

    def closes(self) -> list[framing.Close]:
        return [m for m in self.sent if isinstance(m, framing.Close)]


class FloodTests(SynchronousTestCase):
    """What 10,000 bad messages a second cost."""

    def setUp(self):
        self.lines = Lines(self)
        self.server = ServerMux()

    def flood(self, message: bytes, count: int, per_second: int) -> tuple[int, ProtocolError]:
        """
        Deliver C{count} messages at C{per_second}; the first error and when
        it came.  The session ends the tunnel at once then, as
        L{bpctunnel.server.session} does; until it has, the mux drops what comes.
        """
        errors = []
        for i in range(count):
            try:
                self.server.mux.message_received(message)
            except ProtocolError as e:
                errors.append((i, e))
                self.server.mux.message_received(message)  # no second error
                self.server.mux.tunnel_lost(f"protocol error: {e}")
            self.server.clock.advance(1 / per_second)
        self.assertLessEqual(len(errors), 1)
        return errors[0] if errors else (None, None)

    def test_unknown_types_flood(self):
        """
        100,000 messages of an unknown type at 10,000 a second: LOG_BURST
        lines at once, then the 1,001st within 10 s raises ProtocolError with
        the kind and the count, and when the tunnel goes the rest are summed
        up in one line: a handful of lines in all.
        """
        index, error = self.flood(UNKNOWN_TYPE, 100_000, 10_000)
        self.assertEqual(index, BUDGET)
        self.assertEqual(str(error), "1,001 bad messages within 10 s, more than the 1,000 "
                                     "allowed: 1,001 messages of unknown types")
        self.assertEqual(self.server.mux.failed, str(error))
        # What was held back is summed up when the tunnel goes.
        self.assertEqual(self.lines.text, ["ignoring unknown message type 0x70 from laptop1"]
                         * LOG_BURST + [f"... and {BUDGET + 1 - LOG_BURST:,} more messages of "
                                        f"unknown types from laptop1 in the last 0.1 s"])
        self.assertEqual(self.server.clock.getDelayedCalls(), [])
        # Nothing was answered, and nothing is, once the tunnel failed.
        self.server.mux.message_received(framing.encode(framing.Ping(b"late")))
        self.assertEqual(self.server.sent, [])

    def test_slow_flood_one_line_per_window(self):
        """
        Just under the budget (99 a second) for a minute the tunnel stays up,
        the log has LOG_BURST lines and then one line per 10 s with the
        count, and a flood on 3 channel ids is answered 3 times.
        """
        ids = [1001, 1003, 1005]
        clock = self.server.clock
        for i in range(60 * 99):
            clock.advance(i / 99 - clock.seconds())
            self.server.mux.message_received(data(ids[i % 3]))
        self.assertIsNone(self.server.mux.failed)
        lines = self.lines.text
        self.assertEqual(lines[:LOG_BURST], [
            f"message for unknown channel {ids[i % 3]} from laptop1: Data"
            for i in range(LOG_BURST)])
        summaries = lines[LOG_BURST:]
        self.assertEqual(len(summaries), 5)  # at 10, 20, ... 50 s
        self.assertEqual(summaries[0], f"... and {990 - LOG_BURST} more messages for unknown "
                                       f"channels from laptop1 in the last 10 s")
        self.assertEqual(summaries[1], "... and 990 more messages for unknown channels from "
                                       "laptop1 in the last 10 s")
        self.assertEqual(self.server.closes(), [
            framing.Close(cid, framing.CLOSE_ERROR, "unknown channel") for cid in ids])
        self.server.mux.tunnel_lost("done")
        self.assertEqual(self.lines.text[LOG_BURST + 5:], [
            "... and 990 more messages for unknown channels from laptop1 in the last 10 s"])
        self.assertEqual(self.server.clock.getDelayedCalls(), [])

    def test_answers_remembered_within_bounds(self):
        """One CLOSE per unknown channel id; the ids remembered are bounded."""
        self.server.mux.violations.budget = 10**9
        for cid in range(ANSWERED_UNKNOWN + 100):
            for _ in range(3):
                self.server.mux.message_received(framing.encode(framing.Eof(cid)))
        self.assertEqual(len(self.server.closes()), ANSWERED_UNKNOWN + 100)
        self.assertEqual(len(self.server.mux._answered_unknown), ANSWERED_UNKNOWN)
        # The oldest was forgotten: it is answered again, the newest not.
        self.server.mux.message_received(framing.encode(framing.Eof(0)))
        self.server.mux.message_received(framing.encode(framing.Eof(ANSWERED_UNKNOWN + 99)))
        self.assertEqual(self.server.closes()[-1].channel_id, 0)
        self.assertEqual(len(self.server.closes()), ANSWERED_UNKNOWN + 101)

    def test_opens_on_a_side_that_accepts_none(self):
        """Each is refused, logged within bounds and counted: a flood closes the tunnel."""
        error = None
        for cid in range(1, 2 * (BUDGET + 1) + 1, 2):
            try:
                self.server.mux.message_received(framing.encode(framing.Open(cid, 65536)))
            except ProtocolError as e:
                error = e
        self.assertIn("1,001 channels opened on a side that accepts none", str(error))
        self.assertEqual(len(self.server.closes()), BUDGET)
        self.assertEqual(self.server.mux.channels, {})
        self.assertEqual(len(self.lines.matching("this side accepts no channels")), LOG_BURST)

    def test_channel_rule_breaking_counted(self):
        """DATA after EOF over and over on one channel: bounded lines, then the tunnel goes."""
        channel = self.server.mux.open_channel()
        channel.attach(FakeLocalEnd())
        cid = channel.channel_id
        self.server.mux.message_received(framing.encode(framing.Accept(cid, 4096)))
        self.server.mux.message_received(framing.encode(framing.Eof(cid)))
        index, error = self.flood(data(cid), 5000, 10_000)
        self.assertEqual(index, BUDGET)
        self.assertIn("1,001 messages that broke a channel's rules", str(error))
        self.assertEqual(len(self.lines.matching(f"resetting channel {cid} of laptop1: DATA "
                                                 f"after EOF")), LOG_BURST)
        self.assertEqual(self.lines.text[LOG_BURST:], [
            f"... and {BUDGET + 1 - LOG_BURST} more messages that broke a channel's rules from "
            f"laptop1 in the last 0.1 s"])

    def test_kinds_counted_together(self):
        """The budget is the tunnel's: the error names every kind, the largest first."""
        error = None
        try:
            for i in range(BUDGET + 1):
                message = UNKNOWN_TYPE if i % 3 else data(7)
                self.server.mux.message_received(message)
        except ProtocolError as e:
            error = e
        self.assertEqual(str(error), "1,001 bad messages within 10 s, more than the 1,000 "
                                     "allowed: 667 messages of unknown types, 334 messages for "
                                     "unknown channels")
        # Each kind has its own lines.
        self.assertEqual(len(self.lines.text), 2 * LOG_BURST)


class RaceTests(SynchronousTestCase):
    """What a peer sent before it heard of our CLOSE closes nothing and logs nothing."""

    def setUp(self):
        self.lines = Lines(self)

    def test_in_flight_data_after_local_reset(self):
        """
        The server resets a channel (say, --idle-timeout) while the laptop
        has a whole window of DATA, EOF and CLOSE on the way: they are taken
        quietly, the channel ends on both sides, the tunnel carries on.
        """
        clock = Clock()
        to_client, to_server = deque(), deque()
        accepted = []

        def accept(channel):
            channel.attach(FakeLocalEnd())
            channel.accept()
            accepted.append(channel)

        server = Multiplexer(to_client.append, is_server=True, name="laptop1", clock=clock)
        client = Multiplexer(to_server.append, is_server=False, accept_channel=accept,
                             name="laptop1", clock=clock)
        channel = server.open_channel()
        local = FakeLocalEnd()
        channel.attach(local)
        while to_client:
            client.message_received(to_client.popleft())
        client_channel, = accepted
        client_channel.local_data(b"r" * DEFAULT_WINDOW)
        client_channel.local_closed()
        self.assertEqual([m[0] for m in to_server],
                         [framing.ACCEPT] + [framing.DATA] * (DEFAULT_WINDOW // MAX_DATA)
                         + [framing.EOF, framing.CLOSE])
        channel.reset("idle for more than 900 seconds (--idle-timeout)")
        clock.advance(0.05)
        while to_client or to_server:
            while to_server:
                server.message_received(to_server.popleft())
            while to_client:
                client.message_received(to_client.popleft())
        self.assertEqual(self.lines.text, [])
        self.assertEqual((server.violations.total, server.failed), (0, None))
        self.assertEqual((server.channels, client.channels), ({}, {}))
        self.assertEqual(local.aborted, "idle for more than 900 seconds (--idle-timeout)")
        self.assertEqual(local.received, b"")

    def forgotten_channel(self, server: ServerMux) -> int:
        """A channel the server opened, the peer accepted, and both closed (then forgot)."""
        channel = server.mux.open_channel()
        channel.attach(FakeLocalEnd())
        cid = channel.channel_id
        server.mux.message_received(framing.encode(framing.Accept(cid, DEFAULT_WINDOW)))
        channel.reset("gone")
        server.mux.message_received(framing.encode(framing.Close(cid, framing.CLOSE_ERROR, "")))
        self.assertNotIn(cid, server.mux.channels)
        return cid

    def test_forgotten_channel_takes_what_was_in_flight(self):
        """
        Once a channel is forgotten, DATA up to the credit the peer still had
        (one window) and LATE_MESSAGES others for it are dropped quietly;
        beyond that they count, as messages for a closed channel.
        """
        server = ServerMux()
        cid = self.forgotten_channel(server)
        for _ in range(DEFAULT_WINDOW // MAX_DATA):
            server.mux.message_received(data(cid, b"d" * MAX_DATA))
        for _ in range(LATE_MESSAGES // 2):
            server.mux.message_received(framing.encode(framing.Credit(cid, 65536)))
            server.mux.message_received(framing.encode(framing.Eof(cid)))
        server.mux.message_received(framing.encode(framing.Close(cid)))
        self.assertEqual((self.lines.text, server.mux.violations.total, server.sent[-1]),
                         ([], 0, framing.Close(cid, framing.CLOSE_ERROR, "gone")))
        server.mux.message_received(data(cid, b"one byte too many"))
        server.mux.message_received(framing.encode(framing.Eof(cid)))
        self.assertEqual(self.lines.text, [
            f"message for closed channel {cid} from laptop1: Data",
            f"message for closed channel {cid} from laptop1: Eof"])
        self.assertEqual(server.mux.violations.total, 2)
        # Not answered: the peer has had our CLOSE.
        self.assertEqual(server.sent[-1], framing.Close(cid, framing.CLOSE_ERROR, "gone"))

    def test_memory_of_closed_channels_is_bounded(self):
        """Only the last RECENTLY_CLOSED channels are remembered."""
        server = ServerMux()
        first = self.forgotten_channel(server)
        for _ in range(RECENTLY_CLOSED):
            last = self.forgotten_channel(server)
        self.assertEqual(len(server.mux._recently_closed), RECENTLY_CLOSED)
        server.mux.message_received(data(last))
        self.assertEqual(self.lines.text, [])
        server.mux.message_received(data(first))
        self.assertEqual(self.lines.text, [f"message for unknown channel {first} from laptop1: "
                                           f"Data"])

    def test_refused_channel_remembered(self):
        """The opener's EOF sent before our refusal arrived is not a violation."""
        server = ServerMux()
        server.mux.message_received(framing.encode(framing.Open(1, 65536)))
        self.assertEqual(server.closes(), [
            framing.Close(1, framing.CLOSE_ERROR, "this side accepts no channels")])
        self.lines.events.clear()
        server.mux.message_received(framing.encode(framing.Eof(1)))
        server.mux.message_received(framing.encode(framing.Close(1)))
        self.assertEqual((self.lines.text, len(server.closes())), ([], 1))
        self.assertEqual(server.mux.violations.total, 1)  # the OPEN itself


class ViolationMethodTests(SynchronousTestCase):
    """Multiplexer.violation: what the session reports (unknown CONTROL types)."""

    def setUp(self):
        self.lines = Lines(self)

    def test_reported_in_one_line_and_counted(self):
        server = ServerMux()
        server.mux.violation("unknown control messages",
                             "ignoring control message 'x\nforged line'")
        self.assertEqual(self.lines.text,
                         ["ignoring control message 'x\\nforged line' from laptop1"])
        self.assertEqual(self.lines.events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.lines.events[0]["violation"], "unknown control messages")

    def test_raised_from_on_control_closes_the_tunnel(self):
        """From the on_control callback, the budget's error reaches message_received's caller."""
        server = ServerMux(on_control=lambda body: server.mux.violation(
            "unknown control messages", f"ignoring control message {body['type']!r}"))
        message = framing.encode(framing.Control({"type": "from-the-future"}))
        for _ in range(BUDGET):
            server.mux.message_received(message)
        with self.assertRaises(ProtocolError) as raised:
            server.mux.message_received(message)
        self.assertIn("1,001 unknown control messages", str(raised.exception))
        server.mux.message_received(message)  # dropped: the tunnel is closing
        server.mux.message_received(framing.encode(framing.Ping(b"?")))
        self.assertEqual(server.sent, [])
        self.assertEqual(len(self.lines.text), LOG_BURST)


class ViolationCounterTests(SynchronousTestCase):
    """The counter on its own."""

    def setUp(self):
        self.lines = Lines(self)
        self.clock = Clock()
        self.counter = ViolationCounter(self.clock, "laptop1", budget=50)

    def violate(self, count: int, kind: str = "odd messages"):
        for i in range(count):
            self.counter.count(kind, "odd message {n} from {client_name}", n=i)

    def test_quiet_window_forgets(self):
        """After a window without suppressed lines, the next one is logged at once."""
        self.violate(1)
        self.clock.advance(WINDOW)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.violate(1)
        self.assertEqual(self.lines.text, ["odd message 0 from laptop1"] * 2)

    def test_busy_kind_stays_summed_up(self):
        """A kind still busy after its summary gets no single lines, only summaries."""
        self.violate(LOG_BURST + 2)
        self.clock.advance(WINDOW)
        self.violate(3)
        self.clock.advance(WINDOW)
        self.clock.advance(WINDOW)
        self.assertEqual(self.lines.text[LOG_BURST:], [
            "... and 2 more odd messages from laptop1 in the last 10 s",
            "... and 3 more odd messages from laptop1 in the last 10 s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_budget_per_window(self):
        """The budget counts one window: 50 now and 50 after it are fine, 51 at once are not."""
        self.violate(50)
        self.clock.advance(WINDOW)
        self.violate(50)
        self.assertRaises(ProtocolError, self.violate, 1)

    def test_stop(self):
        """stop() says what was still unsaid and leaves no timer; later counts are ignored."""
        self.violate(LOG_BURST + 4)
        self.clock.advance(2.5)
        self.counter.stop()
        self.assertEqual(self.lines.text[-1], "... and 4 more odd messages from laptop1 in the "
                                              "last 2.5 s")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.violate(100)
        self.assertEqual(len(self.lines.text), LOG_BURST + 1)

    def test_without_clock(self):
        """
        Without a clock time stands still: lines stay bounded, and there is
        no budget (it would span the tunnel's whole life).
        """
        counter = ViolationCounter(None, "laptop1", budget=50)
        for _ in range(10_000):
            counter.count("odd messages", "odd from {client_name}")
        self.assertEqual(self.lines.text, ["odd from laptop1"] * LOG_BURST)
        mux = Multiplexer(lambda m: None, is_server=True, name="laptop1")
        for _ in range(10_000):
            mux.message_received(UNKNOWN_TYPE)
        self.assertEqual(len(self.lines.text), 2 * LOG_BURST)
        mux.tunnel_lost("gone")
        self.assertEqual(self.lines.text[-1], "... and 9,995 more messages of unknown types from "
                                              "laptop1 in the last 0 s")
