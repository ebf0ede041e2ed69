"""
C{bpctunnel list} and C{bpctunnel check}: every tunnel host at a glance, and
every misconfiguration explained in plain words.

A host "uses the tunnel" when its config holds a TunnelCert, sets
C{ClientNameAlias} to 127.0.0.1, or bpctunnel issued it a certificate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import attrs

from bpctunnel import pki
from bpctunnel.backuppc.paths import (
    RENEW_WITHIN_DAYS,
    RSYNCD_PASSWD_PLACEHOLDER,
    TUNNEL_PING_MAX_MSEC,
    Paths,
    backuppc_setting,
    backuppc_user,
    host_config_files,
    read_host_config,
)
from bpctunnel.backuppc.hosts import find_fingerprints, read_hosts
from bpctunnel.backuppc.layout import config_layout
from bpctunnel.errors import BpcTunnelError
from bpctunnel.backuppc.permissions import Account, unreadable_reason

#: BackupPC's own default for $Conf{PingMaxMsec}.
BACKUPPC_PING_MAX_MSEC = 20


@attrs.frozen
class Problem:
    """One misconfiguration of one host."""

    host: str
    message: str
    #: What it is about, where a reader needs to tell: "certificate" (its
    #: expiry, which the dashboard knows better from a live tunnel), or "".
    kind: str = ""
    #: Other hosts the message names (a shared port's other holders).
    others: tuple[str, ...] = ()

    def text_for(self, sees: Callable[[str], bool] | None = None) -> str:
        """The message, with each other host C{sees} rejects named only "another host"."""
        message = self.message
        for other in self.others:
            if sees is not None and not sees(other):
                message = re.sub(rf"(?<![\w.-]){re.escape(other)}(?![\w.-])", "another host",
                                 message)
        return message


@attrs.frozen
class HostReport:
    """A tunnel host's settings, as read from its files, and its problems."""

    host: str
    config_path: object
    port: str
    fingerprints: tuple[str, ...]
    expires: str
    shares: tuple[str, ...]
    problems: tuple[Problem, ...]
    #: $Conf{PingMaxMsec} as BackupPC sees it for this host (None: not a number).
    ping_max_msec: float | None = None
    #: When the certificate last issued to the host expires, ISO 8601 (None: unknown).
    not_after: str | None = None


def _secret_problems(host: str, path: Path, config) -> list[Problem]:
    """
    Whether the host has a secret of its own (RsyncdUserName and
    RsyncdPasswd, L{bpctunnel.client.rsync_auth}) that only BackupPC and
    its web interface's group can read.
    """
    user, passwd = config.get("RsyncdUserName"), config.get("RsyncdPasswd")
    if not (isinstance(passwd, str) and passwd):
        return [Problem(host, f"$Conf{{RsyncdPasswd}} is empty in {path.name}: BackupPC 4 "
                              f"refuses to start an rsyncd backup without one; run "
                              f"`bpctunnel register-client {host}` and install the new bundle")]
    if passwd == RSYNCD_PASSWD_PLACEHOLDER or not (isinstance(user, str) and user):
        return [Problem(host, f"{host} relies on its port alone: any local user of this "
                              f"server, and a BackupPC user who points another host at its "
                              f"port, can read the laptop's files; run `bpctunnel "
                              f"register-client {host}` and install the new bundle (its "
                              f"rsyncd.secrets makes the laptop ask for {host}'s own secret)")]
    try:
        mode = path.stat().st_mode
    except OSError:
        return []
    if mode & 0o004:
        return [Problem(host, f"{path} holds {host}'s rsync secret and every local user can "
                              f"read it: chmod o-rwx {path}")]
    return []


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _cert_expiry(paths: Paths, host: str, fingerprints) -> tuple[str, float | None, str | None]:
    """(expiry date or "unknown", days left, expiry in ISO 8601) of the host's issued certificate."""
    path = paths.issued_cert(host)
    try:
        cert = pki.load_cert(path)
    except BpcTunnelError:
        return "unknown", None, None
    if pki.fingerprint_sha256(cert) not in fingerprints:
        return "unknown", None, None
    expires = pki.not_after(cert)
    return (expires.strftime("%Y-%m-%d"), pki.days_left(cert),
            expires.isoformat(timespec="seconds"))


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def readers(paths: Paths, server_user: str | None = None) -> list[Account]:
    """
    The accounts that must read BackupPC's and the server's files: BackupPC's
    user and the server's (C{server_user}, by default BackupPC's too).
    """
    names = dict.fromkeys([backuppc_user(paths), server_user or backuppc_user(paths)])
    return [account for account in map(Account.named, names) if account is not None]


def _unreadable(path, readers, what: str, like) -> list[str]:
    """Why each of C{readers} cannot read C{path}, and how to fix it."""
    found = []
    for account in readers:
        reason = unreadable_reason(path, account)
        if reason:
            fix = (f"; run: chown --reference={like} {path} && chmod --reference={like} {path}"
                   if like is not None and like.exists() else "")
            found.append(f"{reason}: {what}{fix}")
    return found


def inspect_server(paths: Paths, readers=()) -> list[Problem]:
    """What keeps the server's user (or BackupPC's) from reading its files."""
    problems = []
    for path, what in [(paths.hosts, "the tunnel refuses every laptop as 'unknown host'"),
                       (paths.ca_cert, "the server cannot start"),
                       (paths.certs / "server.crt", "the server cannot start"),
                       (paths.certs / "server.key", "the server cannot start")]:
        for message in _unreadable(path, readers, what, None):
            problems.append(Problem("server", message))
    return problems


def inspect_hosts(paths: Paths, readers=()) -> list[HostReport]:
    """
    A report for every host that uses the tunnel, sorted by name;
    C{readers} are the L{Account}s that must read each host config
    (BackupPC's user, the server's).
    """
    global_ping_max = backuppc_setting(paths, "PingMaxMsec", str(BACKUPPC_PING_MAX_MSEC))
    try:
        listed = read_hosts(paths.hosts)
        hosts_problem = None
    except BpcTunnelError as e:
        listed, hosts_problem = {}, str(e)
    reports = []
    port_owner: dict[str, list[str]] = {}
    raw = []
    layout = config_layout(paths.conf)
    # Each host once, with the config BackupPC reads (copies it ignores are
    # reported with it).
    read = {host: layout.host_config(host) for host in host_config_files(paths.conf).values()}
    for host, path in sorted(read.items()):
        problems = []
        try:
            _, config = read_host_config(path)
        except BpcTunnelError as e:
            if paths.issued_cert(host).exists():
                raw.append((host, path, None, [Problem(host, f"{path.name} cannot be read: {e}")]))
            continue
        comment = config.get("ClientComment")
        fingerprints = find_fingerprints(comment) if isinstance(comment, str) else frozenset()
        alias = [a for a in _as_list(config.get("ClientNameAlias")) if isinstance(a, str)]
        if not (fingerprints or "127.0.0.1" in alias or paths.issued_cert(host).exists()):
            continue
        raw.append((host, path, config, problems))

    for host, path, config, problems in raw:
        if config is None:
            reports.append(HostReport(host, path, "?", (), "unknown", (), tuple(problems)))
            continue
        comment = config.get("ClientComment")
        fingerprints = find_fingerprints(comment) if isinstance(comment, str) else frozenset()
        if hosts_problem:
            problems.append(Problem(host, hosts_problem))
        elif host not in listed:
            problems.append(Problem(host, f"{host} is not in {paths.hosts}: BackupPC won't back "
                                          f"it up and the tunnel refuses it as 'unknown host'"))
        xfer = config.get("XferMethod")
        if xfer != "rsyncd":
            problems.append(Problem(host, f"$Conf{{XferMethod}} is {xfer!r} in {path.name}, not "
                                          f"'rsyncd': BackupPC won't use the tunnel"))
        alias = _as_list(config.get("ClientNameAlias"))
        if alias != ["127.0.0.1"]:
            problems.append(Problem(host, f"$Conf{{ClientNameAlias}} is {alias!r} in {path.name}, "
                                          f"not ['127.0.0.1']: BackupPC would not connect to "
                                          f"the tunnel's port"))
        port = config.get("RsyncdClientPort")
        if port is None:
            problems.append(Problem(host, f"$Conf{{RsyncdClientPort}} is missing in {path.name}"))
            port = "?"
        elif not (isinstance(port, str) and port.isdigit() and 1 <= int(port) <= 65535):
            problems.append(Problem(host, f"$Conf{{RsyncdClientPort}} is {port!r} in {path.name}, "
                                          f"outside 1-65535"))
            port = str(port)
        else:
            port_owner.setdefault(str(int(port)), []).append(host)
        if not fingerprints:
            problems.append(Problem(host, f"{path.name} has no TunnelCert:sha256:... in "
                                          f"$Conf{{ClientComment}}: every client is refused "
                                          f"(run `bpctunnel register-client {host}`)"))
        expires, days, not_after = _cert_expiry(paths, host, fingerprints)
        if days is not None and days < RENEW_WITHIN_DAYS:
            when = "expired" if days < 0 else f"expires in {int(days)} days"
            problems.append(Problem(host, f"the certificate of {host} {when} ({expires}); run "
                                          f"`bpctunnel renew {host}`", kind="certificate"))
        problems += _secret_problems(host, path, config)
        for copy in layout.ignored_copies(host):
            problems.append(Problem(host, f"{copy} is a config of {host} that BackupPC never "
                                          f"reads (it reads {path}): merge what it should say "
                                          f"into {path.name} and remove it"))
        ping = " ".join(p for p in _as_list(config.get("PingCmd")) if isinstance(p, str))
        if "bpctunnel" in ping and "$host" in ping:
            problems.append(Problem(host, f"$Conf{{PingCmd}} in {path.name} passes $host, which "
                                          f"BackupPC sets to the ClientNameAlias 127.0.0.1: "
                                          f"name the host instead (bpctunnel ping {host})"))
        for message in _unreadable(path, readers, "BackupPC fails every backup with \"Can't "
                                   "read PC's config file\" and the tunnel refuses the laptop",
                                   paths.config_pl):
            problems.append(Problem(host, message))
        own_ping_max = config.get("PingMaxMsec")
        ping_max = _number(global_ping_max if own_ping_max is None else own_ping_max)
        if ping_max is not None and ping_max <= BACKUPPC_PING_MAX_MSEC:
            problems.append(Problem(host, f"$Conf{{PingMaxMsec}} is {ping_max:g} ms for {host}: "
                                          f"BackupPC skips it whenever its round trip through "
                                          f"the tunnel is longer (\"ping too slow\"), which "
                                          f"is any laptop beyond a LAN; set "
                                          f"$Conf{{PingMaxMsec}} = {TUNNEL_PING_MAX_MSEC}; in "
                                          f"{path.name}"))
        shares = tuple(s for s in _as_list(config.get("RsyncShareName")) if isinstance(s, str))
        reports.append(HostReport(host, path, str(port), tuple(sorted(fingerprints)), expires,
                                  shares, tuple(problems), ping_max, not_after))

    for port, owners in port_owner.items():
        if len(owners) > 1:
            for report_index, report in enumerate(reports):
                if report.host in owners:
                    others = ", ".join(o for o in owners if o != report.host)
                    problem = Problem(report.host, f"port {port} is also RsyncdClientPort of "
                                                   f"{others}: only one tunnel can listen on it",
                                      others=tuple(o for o in owners if o != report.host))
                    reports[report_index] = attrs.evolve(report,
                                                         problems=report.problems + (problem,))
    return sorted(reports, key=lambda r: r.host)


def format_table(reports: list[HostReport]) -> str:
    """The C{bpctunnel list} table."""
    rows = [("HOST", "PORT", "FINGERPRINT", "EXPIRES", "SHARES", "PROBLEMS")]
    for r in reports:
        fp = ",".join(f[:16] for f in r.fingerprints) or "-"
        rows.append((r.host, r.port, fp, r.expires, ",".join(r.shares) or "-",
                     str(len(r.problems)) if r.problems else "none"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def report_json(report: HostReport) -> dict:
    """A L{HostReport} as C{bpctunnel list --json} prints it."""
    return {"host": report.host, "config": str(report.config_path), "port": report.port,
            "fingerprints": list(report.fingerprints), "expires": report.expires,
            "shares": list(report.shares),
            "problems": [problem.message for problem in report.problems]}


def live_problems(report: HostReport, tunnel: dict | None,
                  round_trip_ms: float | None) -> list[Problem]:
    """
    What a live tunnel shows wrong: BackupPC expects a module the laptop does
    not serve, or its round trip exceeds the host's PingMaxMsec.  C{tunnel}
    is the API's view of the host's tunnel (None when it is down).
    """
    problems = []
    served = (tunnel or {}).get("modules")
    if served is not None:
        missing = [share for share in report.shares if share not in served]
        if missing:
            problems.append(Problem(
                report.host,
                f"BackupPC expects module(s) {', '.join(missing)} that the laptop does not serve "
                f"(it serves: {', '.join(served) or 'none'}): every backup of {report.host} "
                f"fails with \"Unknown module\"; add them to the laptop's rsyncd.conf, or remove "
                f"them from $Conf{{RsyncShareName}}"))
    if (round_trip_ms is not None and report.ping_max_msec is not None
            and round_trip_ms > report.ping_max_msec):
        problems.append(Problem(
            report.host,
            f"the round trip through {report.host}'s tunnel is {round_trip_ms:.0f} ms, above its "
            f"$Conf{{PingMaxMsec}} of {report.ping_max_msec:g} ms: BackupPC skips it as \"ping "
            f"too slow\"; raise PingMaxMsec in {report.config_path}"))
    return problems
