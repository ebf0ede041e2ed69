"""
A laptop at a distance (issue 17, acceptance 2): real TLS, real sockets, the
real rsync, through a relay that delays each direction by half a round
trip.  With a fixed window a channel moves at most one window per round
trip, so the pull below could not take less than SIZE x RTT / WINDOW (9.6 s)
whatever the machine; the server's window grows, and it does.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from bpctunnel.wire.mux import DEFAULT_WINDOW
from tests.delay_relay import DelayRelay
from tests.test_end_to_end import TunnelTestCase

RTT = 0.2
SIZE = 48 * 1024 * 1024


def write_random_file(folder, size: int) -> None:
    folder.mkdir()
    with open(folder / "disk.img", "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))


class LongLinkTests(TunnelTestCase):
    @inlineCallbacks
    def test_pull_faster_than_one_window_per_round_trip(self):
        relay = yield DelayRelay(reactor, self.server.port.getHost().port, RTT / 2).start()
        self.addCleanup(relay.stop)
        source = self.root / "laptop1-files"
        yield deferToThread(write_random_file, source, SIZE)
        _, port, _ = yield self.connected_client(
            "laptop1", {"m": source}, url=f"wss://127.0.0.1:{relay.port}/tunnel")
        started = reactor.seconds()
        yield self.pull_and_compare(port, "m", source)
        elapsed = reactor.seconds() - started
        fixed_window_minimum = SIZE * RTT / DEFAULT_WINDOW
        self.assertLess(elapsed, fixed_window_minimum,
                        f"{SIZE >> 20} MiB in {elapsed:.1f} s: no faster than a fixed "
                        f"{DEFAULT_WINDOW >> 20} MiB window allows at {RTT * 1000:.0f} ms")
        tunnel = self.server.factory.tunnels.get("laptop1")
        self.assertGreater(tunnel.mux.window_peak, DEFAULT_WINDOW)
        registry = self.server.factory.metrics.registry
        self.assertEqual(registry.get_sample_value("bpctunnel_window_peak_bytes"),
                         tunnel.mux.window_peak)
