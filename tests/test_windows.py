"""
Receive windows that size themselves (issue 17, acceptance 1), without
sockets: two multiplexers joined by a simulated link with a delay and a
rate, on a Clock.  The laptop's rsync sends (an endless source); BackupPC's
side reads, fast or slow.
"""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.wire import framing
from bpctunnel.wire.mux import DEFAULT_WINDOW, Multiplexer
from bpctunnel.wire.windows import WindowBudget, WindowSizer

MiB = 1024 * 1024
CHUNK = 256 * 1024


class Direction:
    """One direction of the link: in order, after a delay, at a rate (bytes/s; 0: no limit)."""

    def __init__(self, clock: Clock, delay: float, rate: float, deliver, jitter=None):
        self.clock, self.delay, self.rate = clock, delay, rate
        self.deliver = deliver
        self.jitter = jitter
        self.busy_until = 0.0
        self.last_arrival = 0.0
        self.in_flight = 0

    def send(self, payload: bytes) -> None:
        payload = bytes(payload)
        now = self.clock.seconds()
        start = max(now, self.busy_until)
        done = start + (len(payload) / self.rate if self.rate else 0.0)
        self.busy_until = done
        extra = self.jitter() if self.jitter is not None else 0.0
        # In order, as over TCP: never before the message sent before it.
        arrival = max(done + self.delay + extra, self.last_arrival)
        self.last_arrival = arrival
        self.in_flight += 1
        self.clock.callLater(arrival - now, self._arrive, payload)

    def _arrive(self, payload: bytes) -> None:
        self.in_flight -= 1
        self.deliver(payload)


class Source:
    """The laptop's rsync: produces data whenever the channel lets it read."""

    def __init__(self, clock: Clock, total: int):
        self.clock, self.total = clock, total
        self.produced = 0
        self.paused = False
        self.channel = None
        self._scheduled = False

    def start(self, channel) -> None:
        self.channel = channel
        channel.attach(self)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.clock.callLater(0, self._produce)

    def _produce(self) -> None:
        self._scheduled = False
        while not self.paused and self.produced < self.total:
            size = min(CHUNK, self.total - self.produced)
            self.produced += size
            self.channel.local_data(b"x" * size)
        if self.produced >= self.total and not self.paused:
            self.channel.local_eof()

    # ILocalEnd
    def write(self, data): pass
    def write_eof(self): pass
    def close(self): pass
    def abort(self, reason): raise AssertionError(reason)

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False
        self._schedule()


class Sink:
    """
    BackupPC's side: takes what arrives at C{rate} bytes/s (0: at once),
    pausing the channel while more than C{buffer} bytes wait.
    """

    def __init__(self, clock: Clock, rate: float = 0, buffer: int = 256 * 1024):
        self.clock, self.rate, self.buffer = clock, rate, buffer
        self.received = 0
        self.waiting = 0
        self.most_waiting = 0
        self.eof = False
        self.aborted = None
        self.channel = None
        self._paused = False
        self._draining = False

    def write(self, data) -> None:
        self.received += len(data)
        if not self.rate:
            return
        self.waiting += len(data)
        self.most_waiting = max(self.most_waiting, self.waiting)
        if self.waiting > self.buffer and not self._paused:
            self._paused = True
            self.channel.pauseProducing()
        if not self._draining:
            self._draining = True
            self.clock.callLater(0.01, self._drain)

    def _drain(self) -> None:
        self.waiting = max(0, self.waiting - int(self.rate * 0.01))
        if self._paused and self.waiting <= self.buffer // 2:
            self._paused = False
            self.channel.resumeProducing()
        if self.waiting:
            self.clock.callLater(0.01, self._drain)
        else:
            self._draining = False

    def write_eof(self):
        # BackupPC has it all: it closes its connection, as rsync does.
        self.eof = True
        self.clock.callLater(0, self.channel.local_closed)

    def close(self): pass

    def abort(self, reason):
        self.aborted = reason
    def pause_reading(self): pass
    def resume_reading(self): pass


class Link:
    """A server and a laptop's multiplexers over a simulated link."""

    def __init__(self, rtt: float, rate: float = 0, jitter=None, **server_options):
        self.clock = Clock()
        self.to_laptop = Direction(self.clock, rtt / 2, rate, self._at_laptop, jitter)
        self.to_server = Direction(self.clock, rtt / 2, rate, self._at_server, jitter)
        self.server = Multiplexer(self.to_laptop.send, is_server=True, name="laptop1",
                                  clock=self.clock, **server_options)
        self.sources: list[Source] = []
        self.laptop = Multiplexer(self.to_server.send, is_server=False, name="server",
                                  clock=self.clock, accept_channel=self._accept)
        self.total = 0

    def _at_laptop(self, payload):
        self.laptop.message_received(payload)

    def _at_server(self, payload):
        self.server.message_received(payload)

    def _accept(self, channel) -> None:
        source = Source(self.clock, self.total)
        self.sources.append(source)
        channel.accept()
        source.start(channel)

    def pull(self, total: int, sink: Sink):
        """BackupPC opens a channel and reads C{total} bytes from the laptop into C{sink}."""
        self.total = total
        channel = self.server.open_channel()
        sink.channel = channel
        channel.attach(sink)
        return channel

    def run_until(self, done, limit: float, step: float = 0.01) -> float:
        """Advance the clock until C{done()} (at most C{limit} simulated seconds)."""
        start = self.clock.seconds()
        while not done() and self.clock.seconds() - start < limit:
            self.clock.advance(step)
        return self.clock.seconds() - start


class GrowthTests(SynchronousTestCase):
    def pull_time(self, rtt: float, rate: float, total: int, **options) -> tuple[float, object]:
        link = Link(rtt, rate, **options)
        sink = Sink(link.clock)
        channel = link.pull(total, sink)
        elapsed = link.run_until(lambda: sink.eof, 120)
        self.assertTrue(sink.eof)
        self.assertEqual(sink.received, total)
        return elapsed, channel, link

    def test_window_grows_while_the_reader_keeps_up(self):
        """
        100 ms, 100 MiB/s: a fixed 1 MiB window moves 10 MiB/s; the window
        grows (to the bandwidth-delay product, 10 MiB, and a bit) and the
        pull takes a fraction of the time.
        """
        fixed, _, _ = self.pull_time(0.1, 100 * MiB, 64 * MiB, max_window=DEFAULT_WINDOW)
        grown, channel, link = self.pull_time(0.1, 100 * MiB, 64 * MiB)
        self.assertGreater(fixed, 6.0)  # one window per round trip: 64 MiB / 10 MiB/s
        self.assertLess(grown, fixed / 3)
        self.assertGreaterEqual(link.server.window_peak, 8 * MiB)
        self.assertLessEqual(link.server.window_peak, 32 * MiB)

    def test_no_growth_where_the_line_is_the_limit(self):
        """10 MiB/s at 10 ms: 1 MiB is ten times the line's BDP; the window stays."""
        _, _, link = self.pull_time(0.01, 10 * MiB, 16 * MiB)
        self.assertLessEqual(link.server.window_peak, 2 * DEFAULT_WINDOW)

    def test_cap_per_channel(self):
        _, _, link = self.pull_time(0.2, 200 * MiB, 64 * MiB, max_window=4 * MiB)
        self.assertEqual(link.server.window_peak, 4 * MiB)

    def test_budget_shared_by_channels(self):
        """Three channels at once draw on one budget (a server's): growth never exceeds it."""
        budget = WindowBudget(5 * MiB)
        link = Link(0.1, 100 * MiB, window_budget=budget)
        sinks = [Sink(link.clock) for _ in range(3)]
        most = 0
        for sink in sinks:
            link.pull(32 * MiB, sink)
        while not all(s.eof for s in sinks) and link.clock.seconds() < 60:
            link.clock.advance(0.01)
            most = max(most, budget.used)
            grown = sum(c.window - DEFAULT_WINDOW for c in link.server.channels.values())
            self.assertLessEqual(grown, budget.total)
        self.assertTrue(all(s.eof for s in sinks))
        self.assertGreater(most, 0)  # it did grow
        self.assertLessEqual(most, budget.total)
        link.run_until(lambda: not link.server.channels, 5)
        self.assertEqual(link.server.channels, {})
        self.assertEqual(budget.used, 0)  # all given back when the channels closed

    def test_budget_given_back_when_the_tunnel_goes(self):
        budget = WindowBudget(64 * MiB)
        link = Link(0.1, 100 * MiB, window_budget=budget)
        sink = Sink(link.clock)
        link.pull(512 * MiB, sink)
        link.run_until(lambda: budget.used > 0, 30)
        self.assertGreater(budget.used, 0)
        link.server.tunnel_lost("gone")
        self.assertEqual(sink.aborted, "gone")
        self.assertEqual(budget.used, 0)


class SlowReaderTests(SynchronousTestCase):
    def test_slow_reader_keeps_the_window(self):
        """
        BackupPC reads 1 MiB/s over a fast 100 ms link: the window never
        grows and what waits for the reader stays within the base window
        (plus the sink's own buffer).
        """
        link = Link(0.1, 100 * MiB)
        sink = Sink(link.clock, rate=1 * MiB)
        channel = link.pull(1 << 40, sink)
        link.run_until(lambda: False, 20)
        self.assertGreater(sink.received, 15 * MiB)
        self.assertEqual(channel.window, DEFAULT_WINDOW)
        self.assertLessEqual(sink.most_waiting, DEFAULT_WINDOW + CHUNK)

    def test_reader_that_slows_down_shrinks_the_window(self):
        """A fast reader grows the window; when it turns slow, the window goes back to the base."""
        link = Link(0.1, 100 * MiB)
        sink = Sink(link.clock)
        channel = link.pull(1 << 40, sink)
        link.run_until(lambda: channel.window >= 8 * MiB, 10)
        self.assertGreaterEqual(channel.window, 8 * MiB)
        sink.rate = 1 * MiB  # BackupPC's disk fills up, say
        link.run_until(lambda: channel.window == DEFAULT_WINDOW, 120)
        self.assertEqual(channel.window, DEFAULT_WINDOW)
        waiting_then = sink.waiting
        link.run_until(lambda: False, 20)
        self.assertEqual(channel.window, DEFAULT_WINDOW)
        self.assertLessEqual(sink.waiting, max(waiting_then, DEFAULT_WINDOW + CHUNK))


class OldPeerTests(SynchronousTestCase):
    def test_fixed_window_peer_still_works(self):
        """A laptop whose own windows never grow (max_window = base) talks to one whose do."""
        link = Link(0.05, 50 * MiB)
        link.laptop.max_window = DEFAULT_WINDOW
        sink = Sink(link.clock)
        link.pull(16 * MiB, sink)
        link.run_until(lambda: sink.eof, 60)
        self.assertEqual(sink.received, 16 * MiB)


class SizerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.budget = WindowBudget(10 * MiB)
        self.sizer = WindowSizer(MiB, 8 * MiB, [self.budget], self.clock.seconds)

    def test_grows_on_a_window_limited_round_trip(self):
        self.sizer.granted(received=256 * 1024, limit_before=MiB)
        self.clock.advance(0.1)
        self.assertEqual(self.sizer.received(MiB + 1), MiB)
        self.assertEqual((self.sizer.window, self.budget.used, self.sizer.min_rtt),
                         (2 * MiB, MiB, 0.1))

    def test_queued_round_trip_does_not_grow(self):
        self.sizer.granted(received=0, limit_before=MiB)
        self.clock.advance(0.1)
        self.sizer.received(MiB + 1)
        self.sizer.granted(received=MiB + 1, limit_before=4 * MiB)
        self.clock.advance(0.5)  # the grant's data came five times later than the link allows
        self.assertEqual(self.sizer.received(4 * MiB + 1), 0)

    def test_budget_limits_growth(self):
        self.budget.take(9 * MiB + MiB // 2)
        self.sizer.granted(received=0, limit_before=MiB)
        self.clock.advance(0.1)
        self.assertEqual(self.sizer.received(MiB + 1), MiB // 2)

    def test_long_pause_during_the_probe_spoils_it(self):
        """The reader held the channel for half the round trip: it is the limit, not the window."""
        self.sizer.granted(received=0, limit_before=MiB)
        self.sizer.reader_paused()
        self.clock.advance(0.05)
        self.sizer.reader_resumed()
        self.clock.advance(0.05)
        self.assertEqual(self.sizer.received(MiB + 1), 0)

    def test_brief_pause_during_the_probe_does_not(self):
        """A burst filled the socket's buffer for a moment: the reader still keeps up."""
        self.sizer.granted(received=0, limit_before=MiB)
        self.sizer.reader_paused()
        self.clock.advance(0.002)
        self.sizer.reader_resumed()
        self.clock.advance(0.098)
        self.assertEqual(self.sizer.received(MiB + 1), MiB)

    def test_long_pause_halves_and_withholds(self):
        self.sizer.granted(received=0, limit_before=MiB)
        self.clock.advance(0.1)
        self.sizer.received(MiB + 1)
        self.sizer.granted(received=MiB + 1, limit_before=3 * MiB)
        self.clock.advance(0.1)
        self.sizer.received(3 * MiB + 1)
        self.assertEqual(self.sizer.window, 4 * MiB)
        self.sizer.reader_paused()
        self.clock.advance(1.0)
        self.sizer.reader_resumed()
        self.assertEqual(self.sizer.withhold(MiB // 2), MiB // 2)
        self.assertEqual(self.sizer.withhold(4 * MiB), 3 * MiB // 2)
        self.assertEqual((self.sizer.window, self.budget.used), (2 * MiB, MiB))
        self.assertEqual(self.sizer.withhold(MiB), 0)


def _schedules():
    """Random link delays, jitter, rates, reader speeds and window sizes."""
    return st.tuples(
        st.floats(0.0, 0.2),                      # round trip
        st.sampled_from([0, 5 * MiB, 50 * MiB]),  # rate (0: no limit)
        st.lists(st.floats(0.0, 0.05), min_size=1, max_size=50),  # jitter pattern
        st.sampled_from([0, MiB // 2, 4 * MiB]),  # reader speed (0: at once)
        st.sampled_from([64 * 1024, 256 * 1024, MiB]),  # base window
        st.integers(1, 8),                        # max window, in base windows
    )


class InFlightProperty(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(_schedules())
    def test_in_flight_never_exceeds_the_announced_window(self, schedule):
        """
        Over any delivery schedule, the bytes the sender has sent and the
        receiver has not yet received never exceed the credit the receiver
        announced (its window), and every byte arrives.
        """
        rtt, rate, jitters, reader, base, factor = schedule
        pattern = deque(jitters)

        def jitter():
            pattern.rotate(1)
            return pattern[0]

        link = Link(rtt, rate, jitter=jitter, window=base, max_window=base * factor)
        link.laptop.window = base
        sink = Sink(link.clock, rate=reader, buffer=base // 2)
        total = 3 * MiB
        channel = link.pull(total, sink)
        announced = []

        real_received = link.server.message_received

        def observe(payload):
            message = framing.decode(bytes(payload))
            if isinstance(message, framing.Data):
                sent = link.sources[0].channel.bytes_out
                in_flight = sent - channel.bytes_in
                self.assertLessEqual(in_flight, channel._peer_may_send)
                announced.append(channel.window)
                self.assertLessEqual(channel.window, base * factor)
            real_received(payload)

        link.to_server.deliver = observe
        link.run_until(lambda: sink.eof, 600, step=0.05)
        self.assertTrue(sink.eof, (sink.received, total))
        self.assertEqual(sink.received, total)
        self.assertEqual(link.sources[0].channel.bytes_out, total)
