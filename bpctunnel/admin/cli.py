"""
The C{bpctunnel} command: C{bpctunnel demo} and the admin tools.

Each subcommand prints what it did; errors are one line on stderr and a
non-zero exit status.
"""

from __future__ import annotations

import getopt
import sys
from pathlib import Path

from twisted.python import usage

import bpctunnel
from bpctunnel.admin.api_client import DEFAULT_API
from bpctunnel.errors import BpcTunnelError


class _Command(usage.Options):
    """
    A subcommand whose options may follow its arguments, as admins type them
    (`register-client HOST --port N`); plain getopt would stop at HOST.
    """

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"bpctunnel {bpctunnel.__version__}")
        sys.exit(0)

    def parseOptions(self, options=None):
        options = sys.argv[1:] if options is None else options
        try:
            opts, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        takes_value = {f"--{name[:-1]}" for name in self.longOpt if name.endswith("=")}
        takes_value |= {f"-{c}" for c, nxt in zip(self.shortOpt, self.shortOpt[1:] + " ") if nxt == ":"}
        ordered = []
        for name, value in opts:
            ordered += [name, value] if name in takes_value else [name]
        super().parseOptions(ordered + ["--"] + args)


class _Paths(_Command):
    optParameters = [
        ["certs", "c", "/etc/bpctunnel", "Folder of the CA and server certificates."],
        ["backuppc-conf", "b", "/etc/backuppc", "BackupPC's configuration folder."],
    ]

    def paths(self):
        from bpctunnel.admin.commands import Paths

        return Paths(Path(self["certs"]), Path(self["backuppc-conf"]))


class _Api(_Command):
    optParameters = [
        ["api", "a", DEFAULT_API, "The server's status API: unix:PATH (its --api-socket) or "
                                  "http://HOST:PORT (its --api-listen, with a token)."],
        ["api-token-file", None, None, "File with the API token (or set BPCTUNNEL_API_TOKEN)."],
    ]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive number")
    return number


class DemoOptions(_Command):
    """Options of C{bpctunnel demo}."""

    synopsis = "[--keep] [--verbose]"
    longdesc = (
        "Makes a throwaway CA and BackupPC config, starts a tunnel server and client on "
        "127.0.0.1, pulls a module through the tunnel with the real rsync, checks every "
        "file arrived intact, and cleans up.  Exits 0 on success."
    )
    optFlags = [
        ["keep", "k", "Keep the temporary folder for a look afterwards."],
        ["verbose", "v", "Show the server's and client's log as well."],
    ]


class InitCaOptions(_Command):
    synopsis = "[--certs DIR] SERVER_NAME [--days N] [--force]"
    longdesc = ("Makes the CA (ca.crt, ca.key), the server's certificate for SERVER_NAME "
                "(a DNS name or IP address laptops connect to) and server.conf with the URL "
                "client bundles will use.  Keys are written with mode 0600.")
    optParameters = [
        ["certs", "c", "/etc/bpctunnel", "Where to write them."],
        ["days", "d", 3650, "Validity of the CA in days.", _positive],
        ["server-url", "u", None, "URL for client bundles (default wss://SERVER_NAME:8443/tunnel)."],
        ["backuppc-conf", "b", "/etc/backuppc", "BackupPC's configuration folder (for its user)."],
        ["server-user", None, None, "The user the server runs as, who gets server.key (default: "
                                    "BackupPC's $Conf{BackupPCUser}, when run as root)."],
    ]
    optFlags = [["force", "f", "Replace an existing CA (every client must be registered again)."]]

    def parseArgs(self, server_name):
        self["server_name"] = server_name


class RegisterOptions(_Paths):
    synopsis = ("HOST [--port N] [--share NAME ...] [--add-host] "
                "[--csr FILE] [--out DIR]")
    longdesc = ("Issues a client certificate (CN = HOST) and writes HOST's tunnel settings into "
                "its BackupPC host config (TunnelCert in ClientComment, XferMethod rsyncd, "
                "ClientNameAlias 127.0.0.1, RsyncdClientPort, a RsyncdPasswd placeholder, "
                "RsyncShareName, PingMaxMsec 2000 (BackupPC's 20 ms would skip any distant "
                "laptop), and unless it has them a PingCmd 'bpctunnel ping HOST' and a "
                "DumpPostUserCmd 'bpctunnel backup-done $client $xferOK'), keeping every other "
                "line; a new host config gets config.pl's owner, group and mode.  With "
                "--add-host, asks BackupPC to reread its hosts file.  Writes a client bundle: "
                "client.conf, "
                "ca.crt, HOST.crt, HOST.key (unless --csr) and an rsyncd.conf template.  "
                "Running it again with a bundle that is still good changes nothing.")
    optParameters = [
        ["port", "p", None, "RsyncdClientPort (default: keep the host's, or the lowest free "
                            "port of --port-range).", int],
        ["port-range", None, "64701-65000", "Range for automatic ports."],
        ["csr", None, None, "Sign this CSR (from `bpctunnel request-cert`) instead of making a key."],
        ["out", "o", None, "Folder for the client bundle (default ./HOST-bundle)."],
        ["days", "d", 825, "Validity of the certificate in days.", _positive],
        ["user", None, "backuppc", "Owner written to the hosts file with --add-host."],
        ["server-url", "u", None, "URL for the bundle (default: from server.conf)."],
        ["bpctunnel", None, None, "This command's path as BackupPC's PingCmd runs it "
                                  "(default: the path it was run by)."],
        ["backuppc-server-mesg", None, None,
         "BackupPC_serverMesg, to make BackupPC read a hosts file --add-host changed (default: "
         "Debian's, when --backuppc-conf is /etc/backuppc; 'none' to leave BackupPC alone)."],
    ]
    optFlags = [["add-host", None, "Add HOST to BackupPC's hosts file if missing."]]

    def __init__(self):
        super().__init__()
        self["share"] = []

    def opt_share(self, name):
        """A share (rsync module) to back up; repeat for several."""
        self["share"].append(name)

    def parseArgs(self, host):
        self["host"] = host

    def postOptions(self):
        try:
            low, high = (int(p) for p in self["port-range"].split("-"))
        except ValueError:
            raise usage.UsageError(f"--port-range {self['port-range']!r} must look like 64701-65000")
        self["port_range"] = (low, high)


class RenewOptions(RegisterOptions):
    synopsis = "HOST [--csr FILE] [--out DIR]"
    longdesc = "A new certificate (and key) for HOST, same port and shares; the old one stops working."


class HostOptions(_Paths):
    def parseArgs(self, host):
        self["host"] = host


class RevokeOptions(HostOptions):
    synopsis = "HOST"
    longdesc = ("Removes HOST's TunnelCert from its host config: its client is refused from now "
                "on, and a live tunnel is dropped within seconds.  Asks the running server "
                "(--api) whether HOST's tunnel is live.")
    optParameters = _Api.optParameters


class RequestCertOptions(_Command):
    synopsis = "HOST [--out DIR]"
    longdesc = ("On the laptop: makes a private key that never leaves it and a certificate "
                "signing request for the admin's `bpctunnel register-client HOST --csr FILE`.")
    optParameters = [["out", "o", ".", "Where to write HOST.key and HOST.csr."]]

    def parseArgs(self, host):
        self["host"] = host


class ListOptions(_Paths):
    synopsis = "[--json]"
    longdesc = ("A table of the hosts with tunnel settings, from BackupPC's files: port, "
                "fingerprint, expiry, shares, problems (`bpctunnel status` adds what the "
                "running server knows: connected, last seen, last backup, traffic).")
    optFlags = [["json", "j", "Print JSON, for scripts."]]


class CheckOptions(_Paths):
    synopsis = "[HOST]"
    longdesc = ("Explains every misconfiguration of the tunnel hosts (or of HOST) in plain "
                "words; exits 1 if there is any.  Checks that BackupPC's user and the "
                "server's can read what they must, and, for each host whose tunnel is up "
                "(asked of the server's API), that the laptop serves every module BackupPC "
                "expects and that its round trip is within PingMaxMsec.")
    optParameters = _Api.optParameters + [
        ["server-user", None, None, "The user the server runs as (default: BackupPC's)."],
    ]
    optFlags = [["offline", None, "Do not ask the running server about live tunnels."]]

    def parseArgs(self, host=None):
        self["host"] = host


class WebLinkOptions(_Paths):
    synopsis = "[--url URL] [--name NAME]"
    longdesc = ("Adds a link to the tunnel dashboard to BackupPC's navigation bar "
                "($Conf{CgiNavBarLinks} in config.pl, shown to BackupPC's admins), keeping "
                "the other links and the file's owner, group and mode; running it again "
                "changes nothing.  The URL is where Apache serves the dashboard (see "
                "apache-bpctunnel.conf).")
    optParameters = [
        ["url", None, "/backuppc/tunnels/dashboard/", "The dashboard's URL."],
        ["name", None, "Tunnels", "The link's text."],
    ]


class StatusOptions(_Api):
    synopsis = "[--json]"
    longdesc = ("Every tunnel host, connected or not, from the running server's status API "
                "(GET /api/v1/hosts): connected since or last seen, address, round trip, "
                "bytes today, last backup; then each host's problems.")
    optFlags = [["json", "j", "Print the API's JSON, for scripts."]]


class PingOptions(_Api):
    synopsis = "HOST [--count N]"
    longdesc = ("A round trip to HOST through its tunnel, for BackupPC's $Conf{PingCmd} "
                "('/usr/bin/bpctunnel ping HOST' in HOST's own config: BackupPC's "
                "$host is the ClientNameAlias, 127.0.0.1): prints time=... and rtt min/avg/max/mdev "
                "lines and exits 0 when the tunnel is up; says why and exits 1 when it is not, "
                "so that BackupPC treats the host as offline.")
    optParameters = [["count", "n", 3, "Round trips to measure.", int],
                     ["timeout", "t", 5.0, "Seconds to wait for each answer.", float]]

    def parseArgs(self, host):
        self["host"] = host


class BackupDoneOptions(_Api):
    synopsis = "HOST STATUS [--detail TEXT]"
    longdesc = ("For BackupPC's $Conf{DumpPostUserCmd} ('/usr/bin/bpctunnel backup-done $client "
                "$xferOK'; $host is 127.0.0.1): tells the server how HOST's backup ended (STATUS 1: success, 0: "
                "failure); the server counts it and passes it to the laptop.")
    optParameters = [["detail", "d", "", "A few words on the outcome."]]

    def parseArgs(self, host, status):
        if status not in ("0", "1"):
            raise usage.UsageError(f"STATUS must be 1 (success) or 0 (failure), not {status!r}")
        self["host"], self["status"] = host, status


class BackupNowOptions(_Command):
    synopsis = "--config FILE [--full] [--timeout SECONDS]"
    longdesc = ("On a laptop: ask BackupPC for a backup of this host now, show its progress "
                "(module, bytes sent, rate, elapsed time), and exit with BackupPC's verdict: "
                "0 when BackupPC reports success and every file was read, 1 when it reports "
                "failure, the tunnel closed before it did, or the laptop's rsync could not "
                "read some files (named: the backup is incomplete), 2 when the request could "
                "not be made (refused, server unreachable, BackupPC declined it or did not "
                "start it: no ping, ping too slow, nothing due, in BackupPC's words), 3 on a "
                "timeout.  Uses the client's config; "
                "works whether or not the client service is running.  BackupPC must report "
                "results: $Conf{DumpPostUserCmd} = '/usr/bin/bpctunnel backup-done $client "
                "$xferOK' (see README).")
    optFlags = [["full", None, "Ask for a full backup (default: incremental)."]]
    optParameters = [
        ["config", "f", "/etc/bpctunnel/client.conf", "The client's INI file."],
        ["timeout", "t", 6 * 3600.0, "Seconds to wait for BackupPC's result.", float],
        ["start-timeout", None, 600.0, "Seconds BackupPC may take to start the backup.", float],
    ]


class Options(usage.Options):
    """Top-level options of C{bpctunnel}."""

    synopsis = "bpctunnel COMMAND [options]"
    subCommands = [
        ["demo", None, DemoOptions, "Run the whole tunnel on this machine and show it works."],
        ["init-ca", None, InitCaOptions, "Make the CA and the server's certificate."],
        ["register-client", None, RegisterOptions, "Register a laptop; write its bundle."],
        ["request-cert", None, RequestCertOptions, "On a laptop: make a key and a CSR."],
        ["revoke", None, RevokeOptions, "Stop a laptop's certificate from working."],
        ["renew", None, RenewOptions, "Give a laptop a new certificate."],
        ["list", None, ListOptions, "List the tunnel hosts."],
        ["check", None, CheckOptions, "Explain every misconfiguration."],
        ["web-link", None, WebLinkOptions, "Link the dashboard from BackupPC's navigation bar."],
        ["status", None, StatusOptions, "Show every tunnel host's state (running server)."],
        ["ping", None, PingOptions, "Round trip to a host through its tunnel (for PingCmd)."],
        ["backup-done", None, BackupDoneOptions, "Report a backup's result (for DumpPostUserCmd)."],
        ["backup-now", None, BackupNowOptions, "On a laptop: back up now, show progress."],
    ]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"bpctunnel {bpctunnel.__version__}")
        sys.exit(0)

    opt_V = opt_version

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command; see bpctunnel --help")


def _register_kwargs(o) -> dict:
    return dict(port=o["port"], shares=tuple(o["share"]), csr=Path(o["csr"]) if o["csr"] else None,
                out=Path(o["out"]) if o["out"] else None, days=o["days"],
                port_range=o["port_range"], url=o["server-url"], bpctunnel=o["bpctunnel"])


def _live_tunnel_note(o) -> str:
    from bpctunnel.admin import api_client

    host = o["host"].lower()
    try:
        info = api_client.call("GET", o["api"], f"/api/v1/tunnels/{host}",
                               api_client.api_token(o["api-token-file"]), timeout=10)
    except api_client.NotFound:
        return f"no tunnel for {host} is up now"
    except api_client.ApiError as e:
        return f"could not ask the server whether {host} is connected: {e}"
    return (f"a tunnel for {host} is live (from {info['client_address']} since "
            f"{info['connected_since']}); the server drops it within 10 seconds")


def run(command: str, o) -> int:
    """Run one admin subcommand; returns the exit status."""
    from bpctunnel.admin import commands
    from bpctunnel.admin import api_client
    from bpctunnel.backuppc import checks

    if command == "init-ca":
        paths = commands.Paths(certs=Path(o["certs"]), conf=Path(o["backuppc-conf"]))
        lines = commands.init_ca(paths, o["server_name"], o["days"], o["force"], o["server-url"],
                                 o["server-user"] or commands.default_server_user(paths))
    elif command == "register-client":
        server_mesg = o["backuppc-server-mesg"]
        if server_mesg is None:
            server_mesg = commands.default_server_mesg(o.paths())
        result = commands.register_client(o.paths(), o["host"], add_host=o["add-host"],
                                          user=o["user"], server_mesg=None if server_mesg == "none"
                                          else server_mesg, **_register_kwargs(o))
        lines = list(result.messages)
    elif command == "renew":
        lines = list(commands.renew(o.paths(), o["host"], **_register_kwargs(o)).messages)
    elif command == "revoke":
        lines = commands.revoke(o.paths(), o["host"]) + [_live_tunnel_note(o)]
    elif command == "web-link":
        lines = commands.web_link(o.paths(), o["url"], o["name"])
    elif command == "status":
        answer = api_client.call("GET", o["api"], "/api/v1/hosts",
                                 api_client.api_token(o["api-token-file"]))
        if o["json"]:
            import json

            lines = [json.dumps(answer, indent=1)]
        else:
            lines = [api_client.format_hosts(answer)]
    elif command == "ping":
        host = o["host"].lower()
        try:
            answer = api_client.call(
                "POST", o["api"], f"/api/v1/tunnels/{host}/ping?count={o['count']}"
                                  f"&timeout={o['timeout']}",
                api_client.api_token(o["api-token-file"]), timeout=o["count"] * o["timeout"] + 10)
        except api_client.ApiError as e:
            print(f"{host} is not reachable through bpctunnel: {e}")
            return 1
        lines = api_client.ping_lines(answer)
    elif command == "backup-done":
        from urllib.parse import quote

        host = o["host"].lower()
        answer = api_client.call(
            "POST", o["api"], f"/api/v1/tunnels/{quote(host)}/backup-done?ok={o['status']}"
                              f"&detail={quote(o['detail'])}",
            api_client.api_token(o["api-token-file"]))
        lines = [f"told the server: backup of {host} "
                 f"{'succeeded' if o['status'] == '1' else 'failed'}"
                 + ("" if answer["delivered"] else f" (no tunnel for {host} is up to pass it on)")]
    elif command == "request-cert":
        lines = commands.request_cert(o["host"], Path(o["out"]))
    elif command == "list":
        reports = checks.inspect_hosts(o.paths())
        if o["json"]:
            import json

            lines = [json.dumps({"hosts": [checks.report_json(r) for r in reports]}, indent=1)]
        else:
            lines = [checks.format_table(reports)]
    elif command == "check":
        return _check(o)
    for line in lines:
        print(line)
    return 0


def _readers(o) -> list:
    """The accounts that must read BackupPC's and the server's files."""
    from bpctunnel.backuppc import checks

    return checks.readers(o.paths(), o["server-user"])


def _live(o, report):
    """(the API's view of the host's tunnel, its round trip in ms), or Nones."""
    from bpctunnel.admin import api_client

    token = api_client.api_token(o["api-token-file"])
    try:
        tunnel = api_client.call("GET", o["api"], f"/api/v1/tunnels/{report.host}", token,
                                 timeout=10)
    except api_client.NotFound:
        return None, None
    try:
        ping = api_client.call("POST", o["api"], f"/api/v1/tunnels/{report.host}/ping?count=3",
                               token, timeout=30)
        round_trip = ping.get("max")
    except api_client.ApiError:
        round_trip = None
    return tunnel, round_trip


def _check(o) -> int:
    from bpctunnel.admin import api_client
    from bpctunnel.backuppc import checks

    readers = _readers(o)
    reports = checks.inspect_hosts(o.paths(), readers)
    problems = checks.inspect_server(o.paths(), readers)
    if o["host"] is not None:
        reports = [r for r in reports if r.host == o["host"].lower()]
        if not reports:
            print(f"bpctunnel: {o['host']} has no tunnel settings in {o['backuppc-conf']}",
                  file=sys.stderr)
            return 1
    live = not o["offline"]
    for report in reports:
        problems += report.problems
        if not live:
            continue
        try:
            problems += checks.live_problems(report, *_live(o, report))
        except api_client.ApiError as e:
            print(f"bpctunnel check: live tunnels not checked: {e}", file=sys.stderr)
            live = False
    for problem in problems:
        print(f"{problem.host}: {problem.message}")
    if not problems:
        print(f"no problems found in {len(reports)} tunnel host(s)")
    return 1 if problems else 0


def _backup_now(o) -> None:
    from twisted.internet import task

    from bpctunnel.client import backup_now
    from bpctunnel.client.config import load_client_config

    try:
        config = load_client_config(Path(o["config"]))
    except BpcTunnelError as e:
        print(f"bpctunnel backup-now: {e}", file=sys.stderr)
        sys.exit(backup_now.NOT_STARTED)

    def run(reactor):
        d = backup_now.main(reactor, config, bool(o["full"]), o["timeout"], o["start-timeout"],
                            sys.stdout)
        return d.addCallback(lambda status: status and sys.exit(status))

    task.react(run)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"bpctunnel: {e}", file=sys.stderr)
        sys.exit(2)
    if options.subCommand == "demo":
        from twisted.internet import task

        from bpctunnel.admin.demo import main as demo_main

        task.react(demo_main, (options.subOptions["keep"], options.subOptions["verbose"]))
        return
    if options.subCommand == "backup-now":
        _backup_now(options.subOptions)
        return
    try:
        status = run(options.subCommand, options.subOptions)
    except (BpcTunnelError, OSError) as e:
        print(f"bpctunnel {options.subCommand}: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status)


if __name__ == "__main__":
    main()
