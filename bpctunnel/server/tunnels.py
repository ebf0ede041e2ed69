"""
At most one tunnel per host, and what happens when a second one arrives.

A laptop that wakes up on another network reconnects while its old
connection may still look open on the server (the NAT or Wi-Fi that carried
it is gone, and no FIN ever came).  Rather than lock it out until keepalive
notices, the server probes the old tunnel: if it answers in time it wins and
the newcomer is told C{already connected}; if not, it is dropped and the
newcomer takes its place.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from bpctunnel.errors import AlreadyConnected


class TunnelRegistry:
    """The live tunnels, by host name."""

    log = Logger()

    def __init__(self, probe_timeout: float = 5.0):
        self.probe_timeout = probe_timeout
        self._tunnels: dict = {}
        self._probing: set[str] = set()

    def claim(self, host: str, tunnel) -> Deferred:
        """
        Fires when C{tunnel} owns C{host}; fails with L{AlreadyConnected} if
        a tunnel that answers a probe has it.

        The old tunnel must offer C{probe(timeout) -> Deferred[bool]} and
        C{replace(reason) -> Deferred} (fires once its port is closed).
        """
        old = self._tunnels.get(host)
        if old is None:
            self._tunnels[host] = tunnel
            return succeed(None)
        if host in self._probing:
            return fail(AlreadyConnected(host, "another connection for this host is being "
                                               "checked right now"))
        self._probing.add(host)

        def decided(alive: bool):
            self._probing.discard(host)
            current = self._tunnels.get(host)
            if current is not None and current is not old:
                raise AlreadyConnected(host, "another connection took this host's place")
            if current is old and alive:
                raise AlreadyConnected(
                    host, "a tunnel for this host is up and answering; the newer connection "
                          "was refused")
            self._tunnels[host] = tunnel
            if current is old:
                self.log.warn(
                    "replacing the tunnel of {client_name}: the old connection did not answer "
                    "within {timeout} seconds",
                    client_name=host, timeout=self.probe_timeout)
                return old.replace("a new connection from the same host replaced it")
            return None

        def probe_failed(failure):
            self._probing.discard(host)
            return failure

        return old.probe(self.probe_timeout).addCallbacks(decided, probe_failed)

    def release(self, host: str, tunnel) -> None:
        """Forget C{tunnel}, if it is the one registered for C{host}."""
        if self._tunnels.get(host) is tunnel:
            del self._tunnels[host]

    def get(self, host: str):
        return self._tunnels.get(host)

    def __iter__(self):
        return iter(list(self._tunnels.values()))

    def __len__(self) -> int:
        return len(self._tunnels)
