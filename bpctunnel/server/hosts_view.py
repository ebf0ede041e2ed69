"""
The fleet at a glance: every tunnel host BackupPC knows and every connected
one, with its state, history and problems; the body of C{GET /api/v1/hosts},
which the dashboard polls and C{bpctunnel status} prints.

A host's problems are those C{bpctunnel check} reports (from the last
L{bpctunnel.server.config_checks} findings, and from its live tunnel), and
what only the server knows: never seen, silent for days, its last backup
failed, its certificate (the live one if connected) expiring.
"""

from __future__ import annotations

import datetime
from typing import Callable

from bpctunnel.backuppc.checks import HostReport, live_problems
from bpctunnel.server.config_checks import Findings
from bpctunnel.server.state_file import iso

#: Seconds the list of BackupPC's tunnel hosts is reused between polls.
KNOWN_HOSTS_MAX_AGE = 5.0
#: A certificate that expires sooner is a problem.
CERTIFICATE_WARNING_DAYS = 30
#: A host not seen for longer is a problem.
SILENT_DAYS = 7
DAY = 86400.0


class HostsView:
    """
    Builds C{/api/v1/hosts} from a L{bpctunnel.server.server_state.ServerState}.

    BackupPC's host files are asked (cached, L{HostAuthorization.tunnel_hosts})
    at most every L{KNOWN_HOSTS_MAX_AGE} seconds, however often it is polled.
    """

    def __init__(self, state):
        self.state = state
        self._known: tuple[float, set[str]] | None = None

    def known_hosts(self, now: float) -> set[str]:
        if self._known is None or not 0 <= now - self._known[0] < KNOWN_HOSTS_MAX_AGE:
            self._known = (now, self.state.authorization.tunnel_hosts())
        return self._known[1]

    def backup_done(self, host: str, ok: bool, detail: str) -> None:
        """
        BackupPC reports a backup of C{host}: into its history if the host
        is BackupPC's tunnel host or was seen (so the history holds no
        names that only the API's callers made up).
        """
        history = self.state.history
        if host in history.records or host in self.known_hosts(self.state.clock.seconds()):
            history.backup_done(host, ok, detail)

    def findings(self) -> Findings:
        checks = self.state.config_checks
        return checks.latest() if checks is not None else Findings()

    def body(self, sees: Callable[[str], bool] | None = None) -> dict:
        """
        The fleet, or only the hosts C{sees} accepts (a web user's own: the
        others cost nothing to leave out).
        """
        now = self.state.clock.seconds()
        findings = self.findings()
        live = {t.host: t for t in self.state.tunnels if t.mux is not None and not t.mux.lost}
        hosts = sorted(self.known_hosts(now) | set(findings.reports) | set(live))
        if sees is not None:
            hosts = [host for host in hosts if sees(host)]
        return {"generated_at": iso(now),
                "checked_at": iso(findings.at),
                "server_problems": list(findings.server),
                "hosts": [self.host_info(host, live.get(host), now, findings.reports.get(host),
                                         sees) for host in hosts]}

    def host_info(self, host: str, tunnel, now: float, report: HostReport | None = None,
                  sees: Callable[[str], bool] | None = None) -> dict:
        history = self.state.history
        record = history.records.get(host)
        if tunnel is not None:
            expires = tunnel.certificate_expires
            expires = expires.isoformat(timespec="seconds") if expires else None
            last_seen = now
            address = tunnel.peer_address or None
        else:
            expires = record.certificate_expires if record else None
            # Never connected (or before history kept it): the copy issued.
            expires = expires or (report.not_after if report else None)
            seen = [t for t in (record.disconnected_at, record.connected_at)
                    if t is not None] if record else []
            last_seen = max(seen, default=None)
            address = record.address if record else None
        backup = record.last_backup if record else None
        info = {
            "host": host,
            "connected": tunnel is not None,
            "connected_since": iso(tunnel.connected_at) if tunnel is not None else None,
            "last_seen": iso(last_seen),
            "address": address,
            "rtt_ms": record.rtt_ms if record else None,
            "bytes_today": record.bytes_today(now) if record else 0,
            "throughput_bps": history.throughput(tunnel) if tunnel is not None else 0.0,
            "history": history.last_hour(host, now),
            "last_backup": ({"ok": backup.ok, "at": iso(backup.at), "detail": backup.detail}
                            if backup else None),
            "certificate_expires": expires,
        }
        info["problems"] = problems(info, last_seen, now) + checked_problems(report, tunnel, record,
                                                                             sees)
        return info


def checked_problems(report: HostReport | None, tunnel, record,
                     sees: Callable[[str], bool] | None = None) -> list[str]:
    """
    What C{bpctunnel check} reports for the host: from its files (but its
    certificate's expiry, which L{problems} tells from the live one), and
    from its live C{tunnel} (modules BackupPC expects, round trip).  Other
    hosts that C{sees} rejects are not named.
    """
    if report is None:
        return []
    found = [p.text_for(sees) for p in report.problems if p.kind != "certificate"]
    if tunnel is not None:
        served = tunnel.served_modules
        found += [p.message for p in live_problems(
            report, {"modules": list(served) if served is not None else None},
            record.rtt_ms if record else None)]
    return found


def problems(info: dict, last_seen: float | None, now: float) -> list[str]:
    """What the server knows is wrong with a host, from its history and live tunnel."""
    found = []
    expires = info["certificate_expires"]
    if expires:
        try:
            left = (datetime.datetime.fromisoformat(expires).timestamp() - now) / DAY
        except ValueError:
            left = None
        if left is not None and left < 0:
            found.append(f"its certificate expired on {expires[:10]}; run "
                         f"`bpctunnel renew {info['host']}`")
        elif left is not None and left < CERTIFICATE_WARNING_DAYS:
            found.append(f"its certificate expires in {int(left)} days ({expires[:10]}); run "
                         f"`bpctunnel renew {info['host']}`")
    if not info["connected"]:
        if last_seen is None:
            found.append("never seen by this server")
        elif now - last_seen > SILENT_DAYS * DAY:
            found.append(f"not seen for {int((now - last_seen) // DAY)} days")
    backup = info["last_backup"]
    if backup is not None and not backup["ok"]:
        found.append(f"its last backup failed ({backup['at']})"
                     + (f": {backup['detail']}" if backup["detail"] else ""))
    return found
