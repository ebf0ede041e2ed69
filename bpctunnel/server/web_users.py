"""
Who asks the status API and the dashboard, and what BackupPC lets them see
and do: a L{Viewer} per request.

On the API's Unix socket the server knows the asking process's uid
(C{SO_PEERCRED}).  Root may do everything; any other process the socket
lets in (BackupPC's user: its C{PingCmd}, its C{DumpPostUserCmd}) may read
and ping every host, not drop a tunnel.  On TCP whoever holds the API's
token may do everything.

One local user is different: the web server that serves the dashboard under
BackupPC's URL and login (C{--web-proxy-user}, Debian's Apache: www-data).
Every BackupPC web user reaches the socket as that uid, so the uid alone
says nothing.  The web server names the signed-in user in the
L{WEB_USER_HEADER} request header, which it sets itself, overwriting any the
browser sent (C{etc/apache-bpctunnel.conf}); the header is trusted from that
uid only and ignored from every other peer.  Its user then gets what
BackupPC's own web interface gives them (C{CheckPermission} in BackupPC's
C{CGI/Lib.pm}):

  - an admin (named in C{$Conf{CgiAdminUsers}}, which may be C{*} for
    everyone, or a member of a group in C{$Conf{CgiAdminUserGroup}}) sees
    every host, may ping and drop;
  - anyone else sees the hosts whose C{user} or C{moreUsers} (BackupPC's
    C{hosts} file) names them, may ping those, and may drop none.

If C{config.pl} or C{hosts} cannot be read, the web user sees nothing
(logged within bounds), never more.  Nothing here touches a socket.
"""

from __future__ import annotations

import grp
import math
import pwd
import re
from pathlib import Path
from typing import Callable, Sequence

from attrs import frozen

from bpctunnel.backuppc.filecache import FileCache
from bpctunnel.backuppc.hosts import read_hosts, read_perl_config
from bpctunnel.errors import BpcTunnelError, ConfigError
from bpctunnel.wire.peer_text import peer_text
from bpctunnel.wire.violations import ViolationCounter

#: The request header in which the web server names the signed-in BackupPC user.
WEB_USER_HEADER = b"x-backuppc-user"
#: The web server's user when C{--web-proxy-user} is not given (Debian's Apache).
DEFAULT_WEB_PROXY_USER = "www-data"
#: Seconds a group's member list (C{$Conf{CgiAdminUserGroup}}) is reused:
#: the dashboard polls every 2 s, and a lookup may go to LDAP.
GROUP_MAX_AGE = 60.0
#: The most characters of a web user's name shown in logs and answers.
MAX_SHOWN_NAME = 80

# BackupPC's CGI (Lib.pm) takes an LDAP DN's uid=: "uid=alice,ou=people" is alice.
_LDAP_UID = re.compile(r"uid=([^,]+)", re.IGNORECASE)


class WebUserMissing(BpcTunnelError):
    """The web server sent a request without naming the BackupPC user it is for."""


@frozen
class Viewer:
    """
    Who asks, and what they may see and do.

    @ivar name: as logs and answers name them (C{root}, C{uid 108}, a
        BackupPC user's name).
    @ivar admin: may drop tunnels (and sees every host).
    @ivar hosts: the hosts they may see and ping, or None: every host.
    @ivar web: a BackupPC web user, asking through the web server (which
        may reach only the dashboard and C{/api/v1/hosts}).
    """

    name: str
    admin: bool
    hosts: frozenset[str] | None
    web: bool = False

    @property
    def who(self) -> str:
        """The asker, for a log line: one line, bounded."""
        if self.web:
            return f"BackupPC user {peer_text(self.name, MAX_SHOWN_NAME)} (through the web server)"
        return self.name

    def sees(self, host: str) -> bool:
        """Whether this viewer may see (and ping) C{host}."""
        return self.hosts is None or host in self.hosts

    def host_refusal(self, host: str) -> str | None:
        """Why this viewer may not see or ping C{host} (the same words if none exists), or None."""
        if self.sees(host):
            return None
        return (f"BackupPC does not let {peer_text(self.name, MAX_SHOWN_NAME)} see "
                f"{peer_text(host, MAX_SHOWN_NAME)}: only its user and moreUsers (BackupPC's "
                f"hosts file) and BackupPC's admins may")

    def drop_refusal(self) -> str | None:
        """Why this viewer may not drop a tunnel, or None."""
        if self.admin:
            return None
        if self.web:
            return (f"{peer_text(self.name, MAX_SHOWN_NAME)} is not one of BackupPC's admins "
                    f"($Conf{{CgiAdminUsers}}, $Conf{{CgiAdminUserGroup}}): only they may drop "
                    f"a tunnel")
        return "only root may drop a tunnel"

    def visible(self, body: dict) -> dict:
        """The body of C{/api/v1/hosts} with only the hosts this viewer may see."""
        if self.hosts is None and not self.web:
            return body
        shown = {**body, "hosts": [h for h in body["hosts"] if self.sees(h["host"])]}
        if not self.admin and "server_problems" in body:
            # The server's own files are its admins' business.
            shown["server_problems"] = []
        if self.web:
            # The dashboard says who is signed in (text only).
            shown["viewer"] = {"name": self.name, "admin": self.admin}
        return shown


#: Root on the API's socket.
ROOT = Viewer("root", admin=True, hosts=None)
#: Whoever the API's TCP listener let in: the holder of its token.
TOKEN_HOLDER = Viewer("the API token's holder", admin=True, hosts=None)


def _group_members(group: str) -> Sequence[str] | None:
    try:
        return grp.getgrnam(group).gr_mem
    except KeyError:
        return None


def _word_in(name: str, text: str) -> bool:
    # BackupPC's own test, /\b\Q$User\E\b/: "back" is not in "backuppc".
    return re.search(r"\b" + re.escape(name) + r"\b", text, re.ASCII) is not None


def _setting(config, name: str, path: Path) -> str:
    """A space-separated list setting of config.pl, as a string ('' for undef or unset)."""
    value = config.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"$Conf{{{name}}} in {path} is not a quoted string, so bpctunnel "
                          f"cannot tell who BackupPC's admins are; write it as a plain "
                          f"'user1 user2' string")
    return value


class WebUsers:
    """
    What BackupPC's web users may see and do, from BackupPC's C{config.pl}
    (C{$Conf{CgiAdminUsers}}, C{$Conf{CgiAdminUserGroup}}) and C{hosts}
    file in C{conf_dir}, each parsed again only when it changes.

    @param clock: an C{IReactorTime}: when group lookups are reused until,
        and the bounds of the log.
    @param proxy_uid: the web server's uid (C{--web-proxy-user}), or None.
    @param group_members: C{group name -> member names} (None: no such
        group); the system's group database by default.
    """

    def __init__(self, conf_dir: Path, clock, proxy_uid: int | None,
                 group_members: Callable[[str], Sequence[str] | None] = _group_members):
        self.conf_dir = Path(conf_dir)
        self.clock = clock
        self.proxy_uid = proxy_uid
        self._group_members = group_members
        self._groups: dict[str, tuple[float, str]] = {}
        self._configs = FileCache(read_perl_config, max_entries=4)
        self._hosts = FileCache(read_hosts, max_entries=4)
        # The dashboard polls every 2 s: a broken file must not write a line each time.
        self.log = ViolationCounter(clock, "", budget=math.inf)

    def viewer(self, name: str) -> Viewer:
        """The L{Viewer} of BackupPC web user C{name}, by BackupPC's rules."""
        try:
            config_path = self.conf_dir / "config.pl"
            config = self._configs(config_path)
            if self.is_admin(name, config, config_path):
                return Viewer(name, admin=True, hosts=None, web=True)
            hosts = self._hosts(self.conf_dir / "hosts")
        except ConfigError as e:
            self.log.count("unreadable BackupPC settings",
                           "cannot tell what {web_user} may see, so they see no host: {error}",
                           web_user=peer_text(name, MAX_SHOWN_NAME), error=str(e))
            return Viewer(name, admin=False, hosts=frozenset(), web=True)
        mine = frozenset(host for host, entry in hosts.items()
                         if entry.user == name or name in entry.more_users)
        return Viewer(name, admin=False, hosts=mine, web=True)

    def is_admin(self, name: str, config, path: Path) -> bool:
        """BackupPC's C{CheckPermission}: C{name} is one of its admins."""
        users = _setting(config, "CgiAdminUsers", path)
        if users == "*" or _word_in(name, users):
            return True
        groups = _setting(config, "CgiAdminUserGroup", path)
        return any(_word_in(name, self._members(group)) for group in groups.split())

    def _members(self, group: str) -> str:
        """The members of C{group}, space-separated as Perl's getgrnam gives them."""
        now = self.clock.seconds()
        cached = self._groups.get(group)
        if cached is not None and 0 <= now - cached[0] < GROUP_MAX_AGE:
            return cached[1]
        members = " ".join(self._group_members(group) or ())
        if len(self._groups) > 1000:
            self._groups.clear()
        self._groups[group] = (now, members)
        return members


def web_user_name(values: Sequence[bytes] | None, proxy_uid: int) -> str:
    """
    The BackupPC user the web server names in L{WEB_USER_HEADER} (its raw
    values), as BackupPC's CGI takes it from C{REMOTE_USER}.

    @raise WebUserMissing: there is none, an empty one, or more than one.
    """
    fix = ("the web server must name the signed-in BackupPC user in X-BackupPC-User, as "
           "etc/apache-bpctunnel.conf does (RequestHeader set X-BackupPC-User "
           "\"expr=%{REMOTE_USER}\")")
    if not values or not values[0].strip():
        raise WebUserMissing(f"a request from the web server (uid {proxy_uid}) names no "
                             f"BackupPC user: {fix}")
    if len(values) > 1:
        raise WebUserMissing(f"a request from the web server (uid {proxy_uid}) names "
                             f"{len(values)} BackupPC users: {fix}, once")
    raw = values[0].strip()
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        name = raw.decode("latin-1")   # as BackupPC's files are read
    ldap = _LDAP_UID.search(name)
    return ldap.group(1) if ldap else name


def viewer_for(peer_uid: int | None, header_values: Sequence[bytes] | None,
               web_users: WebUsers | None) -> Viewer:
    """
    The L{Viewer} of a request: C{peer_uid} is its peer's uid on the Unix
    socket (None on TCP, where the token was checked), C{header_values} the
    raw values of its L{WEB_USER_HEADER}, trusted only from the web server.

    @raise WebUserMissing: the web server did not name one user.
    """
    if peer_uid is None:
        return TOKEN_HOLDER
    if peer_uid == 0:
        return ROOT
    if web_users is not None and peer_uid == web_users.proxy_uid:
        return web_users.viewer(web_user_name(header_values, peer_uid))
    return Viewer(f"uid {peer_uid}", admin=False, hosts=None)


def web_proxy_uid(choice: str | None) -> int | None:
    """
    C{--web-proxy-user}: the uid of the web server's user, named or by
    number; C{none} (or not given, when L{DEFAULT_WEB_PROXY_USER} does not
    exist here): None.

    @raise ConfigError: a user named explicitly does not exist, or is root.
    """
    if choice == "none":
        return None
    name = DEFAULT_WEB_PROXY_USER if choice is None else choice
    try:
        uid = int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
    except KeyError:
        if choice is None:
            return None
        raise ConfigError(f"--web-proxy-user {name!r}: there is no such user on this machine; "
                          f"name the user the web server runs as (Debian's Apache: www-data), "
                          f"or pass --web-proxy-user none") from None
    if uid == 0:
        raise ConfigError(f"--web-proxy-user {name!r} is root, who may do everything on the API "
                          f"socket; name the user the web server runs as (Debian's Apache: "
                          f"www-data)")
    return uid
