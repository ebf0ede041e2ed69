"""
The server's Prometheus metrics (C{GET /metrics}), via C{prometheus-client}.

Byte and channel counts are read from the live tunnels when scraped, plus
what closed tunnels had carried, so the data path never touches a metric.

No label value comes from what a peer sent: refusal reasons are the codes of
L{bpctunnel.refusals.Refusal}, host names those of authorized tunnels (names
listed in BackupPC's hosts file), results a fixed pair.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bpctunnel.refusals import Refusal


class ServerMetrics:
    """One server's metrics, in a registry of their own."""

    def __init__(self, tunnels):
        self.tunnels = tunnels
        self.registry = CollectorRegistry()
        self.handshakes = Counter("bpctunnel_handshakes", "Tunnels opened.", registry=self.registry)
        #: Count refusals with L{refused}: its labels are L{Refusal} codes only.
        self.refusals = Counter("bpctunnel_refusals", "Tunnels refused, by reason.", ["reason"],
                                registry=self.registry)
        self.ping_rtt = Histogram(
            "bpctunnel_ping_rtt_seconds", "Round trips to clients through their tunnels.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry)
        self.backups = Counter("bpctunnel_backup_results", "Backups reported by BackupPC.",
                               ["result"], registry=self.registry)
        self._closed_bytes: dict[tuple[str, str], int] = {}
        self._closed_channels = 0
        self._closed_window_peak = 0
        self.registry.register(self)

    def refused(self, refusal: Refusal) -> None:
        """Count one refusal; its C{reason} label is the member's code."""
        if not isinstance(refusal, Refusal):
            raise TypeError(f"refusals are counted by Refusal member, not {refusal!r}")
        self.refusals.labels(refusal.code).inc()

    def tunnel_closed(self, tunnel) -> None:
        """Keep what a closing tunnel carried in the totals."""
        if tunnel.mux is None:
            return
        for direction, count in (("to_client", tunnel.mux.bytes_out),
                                 ("from_client", tunnel.mux.bytes_in)):
            key = (tunnel.host, direction)
            self._closed_bytes[key] = self._closed_bytes.get(key, 0) + count
        self._closed_channels += tunnel.mux.channels_opened
        self._closed_window_peak = max(self._closed_window_peak, tunnel.mux.window_peak)

    def collect(self):
        """The prometheus-client Collector interface: the metrics read at scrape time."""
        live = [t for t in self.tunnels if t.mux is not None and not t.mux.lost]
        connected = GaugeMetricFamily("bpctunnel_tunnels_connected", "Tunnels connected now.")
        connected.add_metric([], len(live))
        yield connected
        totals = dict(self._closed_bytes)
        channels = self._closed_channels
        for tunnel in live:
            for direction, count in (("to_client", tunnel.mux.bytes_out),
                                     ("from_client", tunnel.mux.bytes_in)):
                totals[(tunnel.host, direction)] = totals.get((tunnel.host, direction), 0) + count
            channels += tunnel.mux.channels_opened
        carried = CounterMetricFamily("bpctunnel_bytes", "Payload bytes carried.",
                                      labels=["host", "direction"])
        for (host, direction), count in sorted(totals.items()):
            carried.add_metric([host, direction], count)
        yield carried
        opened = CounterMetricFamily("bpctunnel_channels_opened", "Connections carried.")
        opened.add_metric([], channels)
        yield opened
        peak = GaugeMetricFamily("bpctunnel_window_peak_bytes",
                                 "The largest receive window a carried connection reached.")
        peak.add_metric([], max([self._closed_window_peak]
                                + [tunnel.mux.window_peak for tunnel in live]))
        yield peak
