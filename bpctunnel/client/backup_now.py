"""
C{bpctunnel backup-now}: the laptop's user asks for a backup, watches it
run, and learns from BackupPC itself whether it worked.

It connects to the server with the client's own config.  If no tunnel for
this host is up, its connection is the tunnel (it runs rsync for BackupPC
until the backup ends); if the long-running client has the tunnel, the
server lets this connection follow it.  The server asks BackupPC for the
backup, reports progress every second, and passes on the result that
BackupPC's C{$Conf{DumpPostUserCmd}} (C{bpctunnel backup-done}) reports.

Exit statuses: 0 BackupPC reports success and the laptop's rsync read every
file; 1 BackupPC reports a failure, the tunnel broke, or BackupPC reports
success but the laptop's rsync could not read some files (the backup is
incomplete: an admin must not take it for a full one; the output names
them); 2 the request could not be made (refused, unreachable, BackupPC
declined it or, after taking it, did not start the backup: no ping, ping too
slow, nothing due; the output gives BackupPC's reason); 3 no result in time.
Files that vanished during the backup are named but keep status 0.
"""

from __future__ import annotations

from typing import TextIO

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from bpctunnel.wire import framing
from bpctunnel.client.protocol import (
    TunnelClientFactory, TunnelClientProtocol, advice_for, client_endpoint, duration, tls_advice,
)
from bpctunnel.client.retry import TunnelNotOpened, TunnelService

#: Exit statuses.
OK, FAILED, NOT_STARTED, TIMED_OUT = 0, 1, 2, 3
#: Seconds to wait for the closing handshake once the outcome is known.
CLOSE_WAIT = 10.0


@attrs.frozen
class Outcome:
    """How a backup-now run ended: its exit status and the reason, in words."""

    status: int
    message: str


def human_bytes(count: float) -> str:
    """C{1536} -> '1.5 KB' (powers of 1000, as rsync and BackupPC print them)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def clock_time(seconds: float) -> str:
    """C{75} -> '0:01:15'."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    """
    Shows progress: one line rewritten in place on a terminal (C{live}),
    else a plain line when the module changes and every C{every} seconds.
    """

    def __init__(self, stream: TextIO, clock, live: bool, every: float = 10.0):
        self.stream = stream
        self.clock = clock
        self.live = live
        self.every = every
        self.started = clock.seconds()
        self._last = (None, 0.0)  # (bytes, time) of the previous update, for the rate
        self._printed_at: float | None = None
        self._printed_modules = None
        self._width = 0

    def say(self, text: str) -> None:
        """A line of its own (ending any live line)."""
        self._end_live_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, body: dict) -> None:
        """A C{backup-progress} message from the server."""
        now = self.clock.seconds()
        sent = int(body.get("bytes_from_client") or 0)
        previous, then = self._last
        rate = (sent - previous) / (now - then) if previous is not None and now > then else 0.0
        self._last = (sent, now)
        line = self.progress_line(body, sent, rate, now - self.started)
        modules = tuple(body.get("modules") or ())
        if self.live:
            padding = " " * max(0, self._width - len(line))
            self.stream.write("\r" + line + padding)
            self.stream.flush()
            self._width = len(line)
        elif (modules != self._printed_modules or self._printed_at is None
              or now - self._printed_at >= self.every):
            self.stream.write(line + "\n")
            self.stream.flush()
            self._printed_at, self._printed_modules = now, modules

    @staticmethod
    def progress_line(body: dict, sent: int, rate: float, elapsed: float) -> str:
        host = body.get("host", "")
        if not body.get("tunnel"):
            return f"{host}: waiting for the tunnel to come back, {clock_time(elapsed)}"
        modules = ", ".join(body.get("modules") or ())
        if not modules and not sent:
            return f"{host}: waiting for BackupPC to start the backup, {clock_time(elapsed)}"
        what = f"module {modules}" if modules else "between modules"
        return (f"{host}: backing up {what}, {human_bytes(sent)} sent, "
                f"{human_bytes(rate)}/s, {clock_time(elapsed)}")

    def finish(self) -> None:
        self._end_live_line()

    def _end_live_line(self) -> None:
        if self.live and self._width:
            self.stream.write("\n")
            self._width = 0


class BackupNow:
    """
    One run: connect, ask for the backup, follow it, and end with an
    L{Outcome} (C{result} fires with it once the connection has closed).

    @param service: a L{TunnelService} of C{role="backup-now"} tunnels, not yet
        started; one attempt is made (C{whenConnected(failAfterFailures=1)}).
    @param timeout: seconds from the request to BackupPC's result.
    @param start_timeout: seconds BackupPC may take to start carrying the
        backup after it took the request.
    """

    log = Logger()

    def __init__(self, reactor, config, service, display: ProgressDisplay, *, full: bool = False,
                 timeout: float = 6 * 3600.0, start_timeout: float = 600.0):
        self.reactor = reactor
        self.config = config
        self.service = service
        self.display = display
        self.full = full
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.result = Deferred()
        self._tunnel: TunnelClientProtocol | None = None
        self._outcome: Outcome | None = None
        self._timers = []
        self._started = False
        self._start_timer = None
        self._closed = False

    def run(self) -> Deferred:
        """Start; returns L{result}."""
        self.display.say(f"connecting to {self.config.server} as {self.config.host}")
        self._after(self.timeout, TIMED_OUT,
                    f"BackupPC reported no result within {duration(self.timeout)}; the backup "
                    f"may still be running: see BackupPC's log for {self.config.host}")
        connected = self.service.whenConnected(failAfterFailures=1)
        self.service.startService()
        connected.addCallbacks(self._opened, self._not_opened).addErrback(self._broken)
        return self.result

    def _after(self, seconds: float, status: int, message: str):
        call = self.reactor.callLater(seconds, self._finish, status, message)
        self._timers.append(call)
        return call

    def _opened(self, protocol: TunnelClientProtocol) -> None:
        if self._outcome is not None:
            return  # too late (timed out): stopping the service closes it
        self._tunnel = protocol
        protocol.control_listener = self._control
        protocol.when_closed().addCallback(self._tunnel_closed)
        kind = "a full" if self.full else "an incremental"
        self.display.say(f"tunnel up; asking BackupPC for {kind} backup of {self.config.host}")
        protocol.mux.send(framing.Control({"type": "backup-request", "full": self.full}))

    def _not_opened(self, failure) -> None:
        if failure.check(CancelledError):
            return  # we stopped the service: the outcome is known
        if failure.check(TunnelNotOpened):
            # Refused, or TLS failed.
            reason = failure.value.reason
            advice = tls_advice(reason) or advice_for(reason)
            message = f"could not open the tunnel: {reason}; {advice}"
        else:
            message = f"cannot reach {self.config.server}: {failure.getErrorMessage()}"
        self._finish(NOT_STARTED, message, closed=True)

    def _broken(self, failure) -> None:
        self.log.failure("backup-now failed", failure)
        self._finish(FAILED, f"backup-now failed: {failure.getErrorMessage()}")

    def _control(self, body: dict) -> None:
        kind = body.get("type")
        message = str(body.get("message") or "")
        if kind == "backup-requested":
            if not body.get("ok"):
                self._finish(NOT_STARTED, f"BackupPC did not take the request: {message}")
                return
            self.display.say(f"BackupPC took the request: {message}")
            self._start_timer = self._after(
                self.start_timeout, TIMED_OUT,
                f"BackupPC did not start the backup within {duration(self.start_timeout)} (it "
                f"may be busy with other hosts, or found nothing to do): see its log")
        elif kind == "backup-progress":
            if not self._started and (body.get("connections") or body.get("bytes_from_client")):
                self._started = True
                if self._start_timer is not None and self._start_timer.active():
                    self._start_timer.cancel()
            self.display.update(body)
        elif kind == "backup-done":
            self._backup_done(body)

    def _backup_done(self, body: dict) -> None:
        detail = str(body.get("detail") or "")
        if body.get("started") is False:
            # BackupPC ran its job and backed nothing up; detail is its reason.
            status = NOT_STARTED if body.get("reason") in DECLINED else FAILED
            self._finish(status, f"{detail or 'BackupPC did not start the backup'}; "
                                 f"see BackupPC's log for {self.config.host}")
            return
        modules = ", ".join(str(m) for m in body.get("modules") or ())
        if modules:
            sent = human_bytes(int(body.get("bytes_from_client") or 0))
            self.display.say(f"{self.config.host}: {sent} sent from module(s) {modules}")
        unreadable = files_line(body, "unreadable")
        vanished = files_line(body, "vanished")
        if vanished:
            self.display.say(f"{self.config.host}: during the backup, {vanished}")
        if body.get("ok") and unreadable:
            self._finish(FAILED, "BackupPC reports the backup succeeded"
                                 + (f" ({detail})" if detail else "")
                                 + f" with {unreadable}; the laptop's rsync could not read "
                                   f"them, so the backup is incomplete")
        elif body.get("ok"):
            self._finish(OK, "BackupPC reports the backup succeeded"
                             + (f": {detail}" if detail else ""))
        else:
            self._finish(FAILED, "BackupPC reports the backup failed"
                                 + (f": {detail}" if detail else "")
                                 + (f", with {unreadable}" if unreadable else "")
                                 + f"; see BackupPC's log for {self.config.host}")

    def _tunnel_closed(self, reason: str) -> None:
        self._closed = True
        if self._outcome is None:
            self._finish(FAILED, f"the tunnel closed before BackupPC reported the result: "
                                 f"{reason}")
        else:
            self._done()

    def _finish(self, status: int, message: str, closed: bool = False) -> None:
        if self._outcome is not None:
            return
        self._outcome = Outcome(status, message)
        self._cancel_timers()
        self.display.finish()
        self._closed = self._closed or closed
        if not self._closed and self._tunnel is not None:
            self._tunnel.close_tunnel("backup-now is done")
            # The closing handshake ends in when_closed; do not wait forever.
            self._timers.append(self.reactor.callLater(CLOSE_WAIT, self._done))
        else:
            self._done()

    def _cancel_timers(self) -> None:
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers = []

    def _done(self) -> None:
        self._cancel_timers()
        if self.result.called:
            return
        # On the next turn: this may run inside ClientService's own callbacks.
        self.reactor.callLater(0, self._stop_service)
        self.result.callback(self._outcome)

    def _stop_service(self) -> None:
        # No retry, no wait for another connection.
        self.service.stopService().addErrback(
            lambda failure: self.log.failure("stopping backup-now's connection", failure))


#: C{backup-done} reasons of a backup BackupPC decided not to run.
DECLINED = ("no_ping", "nothing_to_do")


def files_line(body: dict, kind: str) -> str:
    """
    C{'3 files unreadable: a, b, c'} from a C{backup-done}'s C{kind}
    (C{unreadable} or C{vanished}) names and count; C{''} if none.
    """
    count = body.get(f"{kind}_count")
    names = [str(n) for n in body.get(kind) or () if isinstance(n, str)]
    if not isinstance(count, int) or isinstance(count, bool) or count < len(names):
        count = len(names)
    if not count:
        return ""
    line = f"{count} file{'s' if count != 1 else ''} {kind}"
    if names:
        line += ": " + ", ".join(names)
        if count > len(names):
            line += f" and {count - len(names)} more"
    return line


def stream_is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def main(reactor, config, full: bool, timeout: float, start_timeout: float, stream) -> Deferred:
    """For C{task.react}: fires with the exit status."""
    display = ProgressDisplay(stream, reactor, live=stream_is_terminal(stream))
    factory = TunnelClientFactory(reactor, config, role="backup-now")
    service = TunnelService(client_endpoint(reactor, config), factory, reactor)
    run = BackupNow(reactor, config, service, display, full=full, timeout=timeout,
                    start_timeout=start_timeout)
    started = reactor.seconds()

    def report(outcome: Outcome) -> int:
        display.say(f"{outcome.message} ({clock_time(reactor.seconds() - started)})")
        return outcome.status

    return run.run().addCallback(report)
