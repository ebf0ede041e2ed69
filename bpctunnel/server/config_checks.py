"""
What C{bpctunnel check} finds wrong in BackupPC's files and the server's
(L{bpctunnel.backuppc.checks}), for the dashboard: host configs every local
user can read, hosts that share a port or rely on it alone, settings
BackupPC won't tunnel with, files the server or BackupPC cannot read.

A check reads every host config and issued certificate, so it runs in a
thread, never on the reactor, and only while someone looks: the hosts view
asks for the L{ConfigChecks.latest} findings on each poll and gets the last
ones at once; a new check starts when they are older than
L{CHECK_MAX_AGE} seconds and none is running.
"""

from __future__ import annotations

import os
import pwd
from typing import Callable, Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bpctunnel.backuppc.checks import HostReport, inspect_hosts, inspect_server, readers
from bpctunnel.backuppc.paths import Paths
from bpctunnel.server.threads import in_thread

#: Seconds the findings of one check are shown before the next is started.
CHECK_MAX_AGE = 30.0


@attrs.frozen
class Findings:
    """One check's result."""

    #: Per tunnel host: its settings and problems.
    reports: Mapping[str, HostReport] = attrs.field(factory=dict)
    #: Problems of the server's own files (not of one host).
    server: tuple[str, ...] = ()
    #: When the check started (None: no check has finished yet).
    at: float | None = None


def server_user() -> str | None:
    """The name of the user this process runs as (None if it has no name)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


class ConfigChecks:
    """
    C{bpctunnel check}'s look at C{paths}, as the accounts C{accounts} (who
    must read the files: BackupPC's user and the server's), kept fresh while
    asked for.

    @param run: C{run(f) -> Deferred}, where the check runs (L{in_thread}).
    """

    log = Logger()

    def __init__(self, clock, paths: Paths, accounts=None,
                 run: Callable[..., Deferred] | None = None):
        self.clock = clock
        self.paths = paths
        self.accounts = readers(paths, server_user()) if accounts is None else list(accounts)
        self.run = run or in_thread(clock)
        self.findings = Findings()
        self._checking = False

    def latest(self) -> Findings:
        """The last findings; starts a new check if they are stale and none is running."""
        now = self.clock.seconds()
        stale = self.findings.at is None or not 0 <= now - self.findings.at < CHECK_MAX_AGE
        if stale and not self._checking:
            self._start(now)
        return self.findings

    def _start(self, now: float) -> None:
        def found(result):
            reports, server = result
            self.findings = Findings({r.host: r for r in reports},
                                     tuple(p.message for p in server), now)

        def failed(failure):
            # A check that breaks must not break the dashboard: say so there.
            self.log.failure("checking BackupPC's files for the dashboard failed", failure)
            self.findings = Findings(self.findings.reports, (
                f"the check of BackupPC's files failed: {failure.getErrorMessage()}",), now)

        def done(_):
            self._checking = False

        self._checking = True
        self.run(self._check).addCallbacks(found, failed).addBoth(done)

    def _check(self) -> tuple[list[HostReport], list]:
        """Read the files (in a thread)."""
        return (inspect_hosts(self.paths, self.accounts),
                inspect_server(self.paths, self.accounts))
