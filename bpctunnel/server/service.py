"""
twistd plugin for the tunnel server: C{twistd -n bpctunnel-server [options]}.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from bpctunnel.transport.allocator import keep_bulk_buffers
from bpctunnel.backuppc.server_mesg import DEFAULT_SERVER_MESG, BackupRequest, BackupTrigger
from bpctunnel.backuppc.hosts import read_hosts, read_perl_config
from bpctunnel.errors import BpcTunnelError, ConfigError
from bpctunnel.transport.listen_address import listen_description
from bpctunnel.server.endpoints import plain_endpoint, tunnel_endpoint
from bpctunnel.server.protocol import ServerSettings, TunnelServerFactory
from bpctunnel.server.api import make_api_site
from bpctunnel.server.web_users import WebUsers, web_proxy_uid
from bpctunnel.server.server_state import STOP_GRACE, ServerState
from bpctunnel.transport.tls import server_tls_options
from bpctunnel.twistd_options import PluginOptions

MiB = 1024 * 1024

LONGDESC = """\
Accepts laptops' tunnels over WebSocket with mutual TLS (TLS 1.3) and, while
a laptop is connected, listens on 127.0.0.1:<RsyncdClientPort> so that
BackupPC's rsyncd transfer reaches the laptop's rsync through the tunnel.

Files:
  CERTS/ca.crt        the CA that signs client certificates
  CERTS/server.crt    the server's certificate, and
  CERTS/server.key    its private key
  CONF/hosts          BackupPC's hosts file: a client's certificate CN must be listed
  CONF/HOST.pl or CONF/pc/HOST.pl
                      the host's config: $Conf{ClientComment} holds
                      TunnelCert:sha256:<fingerprint>, $Conf{RsyncdClientPort}
                      the port to listen on.
The BackupPC files are read afresh for every new tunnel.

--listen takes [ADDRESS:]PORT or a Twisted endpoint for the TLS to go on:
  tcp:8443:interface=192.0.2.1   tcp6:8443   as [ADDRESS:]PORT does
  systemd:domain=INET:index=0    the socket systemd passes (socket activation)
  haproxy:tcp:8443               a PROXY protocol header first (as --proxy-protocol)
TLS is always the server's own, with the certificates in CERTS.
"""


class Options(PluginOptions):
    command = "bpctunnel-server"

    """Command-line options of C{twistd bpctunnel-server}."""

    longdesc = LONGDESC
    optFlags = [
        ["backup-on-connect", None, "Ask BackupPC for a backup when a laptop connects."],
        ["no-backup-now", None, "Refuse laptops' requests for a backup now "
                                "(bpctunnel backup-now)."],
        ["proxy-protocol", None, "Expect a PROXY protocol header (v1 or v2) before TLS, from "
                                 "HAProxy or nginx in front of the server (as --listen "
                                 "haproxy:...)."],
    ]
    optParameters = [
        ["listen", "l", "8443", "[ADDRESS:]PORT for the wss listener (IPv6 in brackets), or an "
                                "endpoint: tcp:, tcp6:, systemd:, haproxy:... (see below)."],
        ["certs", "c", "/etc/bpctunnel", "Folder holding ca.crt, server.crt and server.key."],
        ["backuppc-conf", "b", "/etc/backuppc", "BackupPC's configuration folder."],
        ["keepalive", None, 30.0, "Seconds between pings; a client silent for two is dropped.",
         float],
        ["idle-timeout", None, 3600.0, "Close a carried connection idle this many seconds.", float],
        ["max-connection-time", None, 14400.0, "Close a carried connection open this long.", float],
        ["probe-timeout", None, 5.0, "Seconds an old tunnel has to answer when its host "
                                      "reconnects, before it is replaced.", float],
        ["max-channels", None, 16, "Connections one client may carry at once.", int],
        ["handshake-timeout", None, 30.0, "Seconds a client may take for its TLS and WebSocket "
                                          "handshakes.", float],
        ["max-handshakes", None, 1024, "Connections that may be in their handshakes at once; "
                                      "more are dropped and retry later.", int],
        ["max-window", None, 32, "MiB a carried connection's receive window may grow to, on a "
                                 "long fast line while BackupPC keeps up.", int],
        ["window-budget", None, 256, "MiB of window growth all tunnels together may have.",
         int],
        ["backuppc-server-mesg", None, DEFAULT_SERVER_MESG,
         "Command for BackupPC_serverMesg (may start with 'sudo -u backuppc')."],
        ["backup-user", None, "bpctunnel", "User name BackupPC records for backups we request."],
        ["backup-type", None, "-1", "-1: whatever BackupPC finds due; 0: incremental; 1: full."],
        ["local-users", None, "backuppc",
         "Who may connect to a laptop's port on 127.0.0.1: 'backuppc' (root and BackupPC's "
         "user, $Conf{BackupPCUser}; others are cut off and logged), or 'any'."],
        ["api-socket", None, "/run/bpctunnel/api.sock",
         "Unix socket for the status API (mode 660, BackupPC's group: root, BackupPC's "
         "user and --web-proxy-user may use it; root and BackupPC's admins through the web "
         "server may drop tunnels), or none."],
        ["web-proxy-user", None, None,
         "The user (name or uid) the web server that serves the dashboard under BackupPC's "
         "login runs as (default www-data, if it exists), or none.  Its requests on the API "
         "socket are for the BackupPC user it names in X-BackupPC-User, who gets what "
         "BackupPC's web interface gives them ($Conf{CgiAdminUsers}, the hosts file)."],
        ["api-listen", None, "none",
         "Endpoint of the status API and /metrics; 'none' disables it."],
        ["api-token-file", None, None, "File holding the API's bearer token (required when the "
                                       "API listens beyond loopback)."],
        ["state-dir", None, "/var/lib/bpctunnel",
         "Folder for the hosts' history (state.json: last seen, last backup, traffic), kept "
         "across restarts; 'none' keeps it in memory only."],
    ]

    def postOptions(self) -> None:
        try:
            self["listen_description"] = listen_description(self["listen"],
                                                            self["proxy-protocol"])
            plain_endpoint(None, self["listen_description"])  # a bad one fails here
            self["tls"] = server_tls_options(Path(self["certs"]))
            conf = Path(self["backuppc-conf"])
            if not conf.is_dir():
                raise BpcTunnelError(f"BackupPC config folder {conf} does not exist (--backuppc-conf)")
            read_hosts(conf / "hosts")
            self["settings"] = ServerSettings(
                backuppc_conf=conf, keepalive=self["keepalive"], idle_timeout=self["idle-timeout"],
                max_connection_time=self["max-connection-time"],
                probe_timeout=self["probe-timeout"], max_channels=self["max-channels"],
                handshake_timeout=self["handshake-timeout"],
                max_handshakes=self["max-handshakes"],
                max_window=self["max-window"] * MiB, window_budget=self["window-budget"] * MiB,
                local_uids=local_uids(self["local-users"], conf),
                state_dir=state_folder(self["state-dir"]), certs=Path(self["certs"]))
            self["api_token"] = None
            if self["api-socket"] != "none":
                api_socket_folder(Path(self["api-socket"]))
                account = backuppc_account(conf)
                self["api_group"] = account.pw_gid if account else None
            self["web_proxy_uid"] = checked_web_proxy_uid(self["web-proxy-user"], conf)
            if self["api-listen"] != "none":
                if self["api-token-file"]:
                    self["api_token"] = read_api_token(self["api-token-file"])
                require_api_token(self["api-listen"], self["api_token"])
            self["backup_request"] = BackupRequest.from_command_line(
                self["backuppc-server-mesg"], self["backup-user"], self["backup-type"])
        except BpcTunnelError as e:
            raise usage.UsageError(str(e)) from None
        except ValueError as e:
            raise usage.UsageError(f"bad option value: {e}") from None


def backuppc_account(conf: Path) -> pwd.struct_passwd | None:
    """The account BackupPC runs as (C{$Conf{BackupPCUser}}, else backuppc), if it exists."""
    try:
        user = read_perl_config(conf / "config.pl").get("BackupPCUser")
    except ConfigError:
        user = None
    try:
        return pwd.getpwnam(user if isinstance(user, str) and user else "backuppc")
    except KeyError:
        return None


def checked_web_proxy_uid(choice: str | None, conf: Path) -> int | None:
    """
    C{--web-proxy-user} (L{web_proxy_uid}), which may not be BackupPC's own
    user: its C{PingCmd} and C{DumpPostUserCmd} name no web user.
    """
    uid = web_proxy_uid(choice)
    account = backuppc_account(conf) if uid is not None else None
    if account is not None and account.pw_uid == uid:
        if choice is None:
            return None     # BackupPC runs as www-data: the default is off
        raise ConfigError(f"--web-proxy-user {choice!r} is BackupPC's own user "
                          f"({account.pw_name}), whose calls to the API name no web user and "
                          f"would be refused; name the user the web server runs as, or pass "
                          f"--web-proxy-user none")
    return uid


def local_uids(choice: str, conf: Path) -> frozenset[int] | None:
    """
    C{--local-users}: C{any} (None), or C{backuppc}, root and the user
    BackupPC runs as (C{$Conf{BackupPCUser}} in config.pl, else backuppc).
    """
    if choice == "any":
        return None
    if choice != "backuppc":
        raise ConfigError(f"--local-users {choice!r}: say 'backuppc' or 'any'")
    account = backuppc_account(conf)
    if account is None:
        raise ConfigError("BackupPC's user ($Conf{BackupPCUser}) does not exist on this "
                          "machine, so only root could reach a laptop's port; fix config.pl, "
                          "or pass --local-users any")
    return frozenset({0, account.pw_uid})


@implementer(IStreamServerEndpoint)
class ApiSocketEndpoint:
    """
    The API's Unix socket: mode 660, in the group of BackupPC's user, so that
    root and BackupPC (its PingCmd and DumpPostUserCmd) may use it and other
    local users may not.  A socket left by a server that died is replaced.
    """

    def __init__(self, reactor, path: Path, group: int | None):
        self.reactor, self.path, self.group = reactor, path, group

    def listen(self, factory) -> Deferred:
        endpoint = UNIXServerEndpoint(self.reactor, str(self.path), mode=0o660, wantPID=True)

        def owned(port):
            if self.group is not None:
                os.chown(self.path, -1, self.group)
            return port

        return endpoint.listen(factory).addCallback(owned)


def state_folder(option: str) -> Path | None:
    """
    C{--state-dir}: the folder, made if missing (systemd makes
    /var/lib/bpctunnel: StateDirectory=), or None for C{none}.

    @raise ConfigError: it cannot be made or written.
    """
    if option == "none":
        return None
    path = Path(option)
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {path} for --state-dir: {e.strerror}; create it "
                          f"(writable by the server's user), or pass --state-dir none") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--state-dir {path} is not writable by this user; fix its owner, or "
                          f"pass --state-dir none")
    return path


def api_socket_folder(path: Path) -> None:
    """Make the folder of C{--api-socket} if it is missing (systemd makes /run/bpctunnel)."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {path.parent} for --api-socket: {e.strerror}; create "
                          f"it, or pass --api-socket none") from None


def read_api_token(token_file: str) -> str:
    """
    The status API's bearer token, from C{token_file} (C{--api-token-file}
    of the server and of the C{bpctunnel} command alike).

    @raise ConfigError: the file cannot be read, or its token is too short.
    """
    try:
        token = Path(token_file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read --api-token-file {token_file}: {e.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"the token in {token_file} is shorter than 16 characters")
    return token


def require_api_token(listen: str, token: str | None) -> None:
    """
    The API on TCP needs a token: every local user can reach even a loopback
    port (the Unix socket, C{--api-socket}, is for local use).

    @raise ConfigError: it listens on TCP without one.
    """
    if token is None:
        raise ConfigError(f"--api-listen {listen} needs --api-token-file: anyone who can reach "
                          f"the port, every local user included, could otherwise drop tunnels "
                          f"(local tools use the Unix socket, --api-socket)")


@implementer(IStreamServerEndpoint)
class LoggingEndpoint:
    """
    An endpoint that logs where it listens once it does (so that tests and
    admins can read the port), and otherwise is C{endpoint}.
    """

    log = Logger()

    def __init__(self, endpoint, description: str):
        self.endpoint = endpoint
        self.description = description

    def listen(self, factory):
        return self.endpoint.listen(factory).addCallback(self._listening)

    def _listening(self, port):
        address = port.getHost()
        if hasattr(address, "port"):
            self.log.info("bpctunnel server listening on {host}:{port} ({description})",
                          host=address.host, port=address.port, description=self.description)
        else:
            name = address.name.decode() if isinstance(address.name, bytes) else address.name
            self.log.info("bpctunnel server listening on {path} ({description})",
                          path=name, description=self.description)
        return port


class RestartNoticeService(Service):
    """
    Tells every open tunnel that the server is stopping (twistd on SIGTERM
    stops the services), so that laptops log a restart, not a failure, and
    come back at once; the stop waits for that at most C{grace} seconds
    (L{ServerState.close_for_stop}).
    """

    def __init__(self, state: ServerState, grace: float = STOP_GRACE):
        self.state = state
        self.grace = grace

    def stopService(self) -> Deferred:
        super().stopService()

        def save(result):
            # Last: the closed tunnels' disconnections are in the history too.
            # The write runs in the reactor's thread pool, which stops only
            # after the services have: wait until it is on disk.
            return self.state.history.stop().addCallback(lambda _: result)

        return self.state.close_for_stop(self.grace).addBoth(save)


def makeService(options: Options, reactor=None):
    """Build the server's service from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor
    keep_bulk_buffers()
    conf = Path(options["backuppc-conf"])
    trigger = BackupTrigger(reactor, options["backup_request"])
    factory = TunnelServerFactory(reactor, options["settings"],
                                  backup_trigger=None if options["no-backup-now"] else trigger)
    if options["backup-on-connect"]:
        factory.observers.append(trigger)
    endpoint = tunnel_endpoint(reactor, options["listen_description"], options["tls"])
    top = MultiService()
    StreamServerEndpointService(LoggingEndpoint(endpoint, f"BackupPC config in {conf}"),
                                factory).setServiceParent(top)
    if options["api-socket"] != "none":
        api = ApiSocketEndpoint(reactor, Path(options["api-socket"]), options["api_group"])
        web_users = None if options["web_proxy_uid"] is None else \
            WebUsers(conf, reactor, options["web_proxy_uid"])
        StreamServerEndpointService(LoggingEndpoint(api, "status API and /metrics"),
                                    make_api_site(factory, web_users=web_users)
                                    ).setServiceParent(top)
    if options["api-listen"] != "none":
        api = serverFromString(reactor, options["api-listen"])
        StreamServerEndpointService(LoggingEndpoint(api, "status API and /metrics"),
                                    make_api_site(factory, options["api_token"])
                                    ).setServiceParent(top)
    # Stopped in the same turn of the reactor as the listeners: no new
    # connection arrives once the notice has gone out.
    RestartNoticeService(factory.state).setServiceParent(top)
    return top
