"""
The admin's tools: a CA, client registration, revocation, renewal.

Each command is a function that takes the folders it works on and returns
what it did, for L{bpctunnel.admin.cli} to print.  Certificates come from
L{bpctunnel.pki}; BackupPC's files are edited by L{bpctunnel.backuppc.confedit}, which
keeps every other byte of them.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import attrs

from bpctunnel.backuppc import confedit
from bpctunnel import pki
from bpctunnel.backuppc.hosts import (
    _host_name_problem,
    ascii_lower,
    find_fingerprints,
    find_host_config,
    parse_hosts,
    read_config_text,
)
from bpctunnel.errors import BpcTunnelError, ConfigError
from bpctunnel.backuppc.layout import config_layout
from bpctunnel.backuppc.paths import (
    DEFAULT_CONF,
    RENEW_WITHIN_DAYS,
    RSYNCD_PASSWD_PLACEHOLDER,
    TUNNEL_PING_MAX_MSEC,
    Paths,
    backuppc_setting,
    backuppc_user,
    host_config_files,
    read_host_config,
)
from bpctunnel.client.rsync_auth import DEFAULT_USER as DEFAULT_RSYNC_USER, RsyncAuth

DEFAULT_PORT_RANGE = (64701, 65000)
DEFAULT_SERVER_PORT = 8443
#: The bundle's client config: the name the client units and backup-now use.
CLIENT_CONF = "client.conf"
#: Where Debian's backuppc package puts BackupPC's command for its daemon.
BACKUPPC_SERVER_MESG = "/usr/share/backuppc/bin/BackupPC_serverMesg"

#: The bundle's file with the secret the laptop's rsync daemon asks for.
RSYNC_SECRETS = "rsyncd.secrets"


def bpctunnel_path() -> str:
    """This C{bpctunnel} command's path, for commands BackupPC runs (PingCmd)."""
    script = Path(sys.argv[0])
    if script.name == "bpctunnel" and script.is_file():
        return str(script.absolute())
    return shutil.which("bpctunnel") or "/usr/bin/bpctunnel"


class AdminError(BpcTunnelError):
    """An admin command cannot do what it was asked."""


# -- init-ca -------------------------------------------------------------------


def init_ca(paths: Paths, server_name: str, days: int = 3650, force: bool = False,
            server_url: str | None = None, server_user: str | None = None) -> list[str]:
    """
    Make the CA, the server's certificate and server.conf.  The server's key
    belongs to C{server_user} (the user the server runs as: BackupPC's),
    mode 0600; the CA's key stays with whoever runs this, mode 0600.
    """
    if paths.ca_cert.exists() and not force:
        raise AdminError(f"{paths.ca_cert} already exists; a new CA would invalidate every "
                         f"client certificate. Use --force if that is what you want")
    if days < 1:
        raise AdminError(f"--days must be at least 1, not {days}")
    paths.certs.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca(days=days)
    server = pki.make_server_cert(ca, server_name, days=min(days, 825))
    pki.write_private(paths.ca_key, ca.key_pem)
    pki.write_public(paths.ca_cert, ca.cert_pem)
    pki.write_private(paths.certs / "server.key", server.key_pem)
    pki.write_public(paths.certs / "server.crt", server.cert_pem)
    key_owner = _give_to(paths.certs / "server.key", server_user)
    host = f"[{server_name}]" if ":" in server_name else server_name
    url = server_url or f"wss://{host}:{DEFAULT_SERVER_PORT}/tunnel"
    pki.write_public(paths.server_conf,
                     f"[bpctunnel]\n# The URL laptops connect to.\nserver = {url}\n".encode())
    return [
        f"wrote {paths.ca_cert} and {paths.ca_key} (keep ca.key secret: it signs laptops' certificates)",
        f"wrote {paths.certs / 'server.crt'} and server.key for {server_name}{key_owner}",
        f"wrote {paths.server_conf}: client bundles will use {url}",
    ]


def _give_to(path: Path, user: str | None) -> str:
    """chown C{path} to C{user} (and its group); says so, for init-ca's message."""
    if not user:
        return ""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise AdminError(f"--server-user {user}: no such user on this machine") from None
    try:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    except OSError as e:
        raise AdminError(f"cannot give {path} to {user} ({e.strerror}); run init-ca as root, "
                         f"or as {user}") from None
    return f" (server.key belongs to {user}, who runs the server)"


def default_server_user(paths: Paths) -> str | None:
    """BackupPC's user, if this machine has it: the server runs as that user."""
    user = backuppc_user(paths)
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    return user if os.geteuid() == 0 else None


def _load_ca(paths: Paths) -> pki.CertAndKey:
    for path in (paths.ca_cert, paths.ca_key):
        if not path.exists():
            raise AdminError(f"{path} does not exist; run `bpctunnel init-ca SERVER_NAME` first")
    ca = pki.CertAndKey(pki.read_file(paths.ca_cert), pki.read_file(paths.ca_key))
    pki.check_key_matches(pki.parse_certs(ca.cert_pem, str(paths.ca_cert))[0],
                          pki.parse_key(ca.key_pem, str(paths.ca_key)), paths.ca_cert, paths.ca_key)
    return ca


def server_url(paths: Paths) -> str:
    """The URL client bundles name, from server.conf."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(paths.server_conf.read_text())
        return parser["bpctunnel"]["server"]
    except (OSError, KeyError, configparser.Error) as e:
        raise AdminError(f"cannot read the server URL from {paths.server_conf} ({e}); "
                         f"run `bpctunnel init-ca` or pass --server-url") from None


# -- host configs --------------------------------------------------------------


def checked_host(host: str) -> str:
    """A host name safe to use in file names, lower-cased as BackupPC does."""
    problem = _host_name_problem(host)
    if problem is None and any(c.isspace() or c == "#" for c in host):
        problem = "it contains white space or '#'"
    if problem is None and len(host) > pki.MAX_COMMON_NAME:
        # Found now, before the hosts file or a host config is written.
        problem = (f"it is longer than {pki.MAX_COMMON_NAME} characters, the most a "
                   f"certificate's common name holds")
    if problem:
        raise AdminError(f"{host!r} is not a usable BackupPC host name ({problem})")
    return ascii_lower(host)


def ports_in_use(conf: Path, except_host: str | None = None) -> dict[int, list[str]]:
    """RsyncdClientPort of every host config (unreadable ones are skipped)."""
    used: dict[int, list[str]] = {}
    for path, host in host_config_files(conf).items():
        if host == except_host:
            continue
        try:
            _, config = read_host_config(path)
        except ConfigError:
            continue
        value = config.get("RsyncdClientPort")
        if isinstance(value, str) and value.isdigit():
            used.setdefault(int(value), []).append(host)
    return used


def pick_port(conf: Path, host: str, port_range=DEFAULT_PORT_RANGE) -> int:
    """The lowest port of C{port_range} that no other host config uses."""
    used = ports_in_use(conf, except_host=host)
    for port in range(port_range[0], port_range[1] + 1):
        if port not in used:
            return port
    raise AdminError(f"every port from {port_range[0]} to {port_range[1]} is taken; "
                     f"pass --port or a wider --port-range")


def edit_host_config(path: Path, edits, like: Path | None = None, private: bool = False) -> bool:
    """
    Apply C{edits} (text -> text functions) to a host config, atomically; a
    new one gets the owner, group and mode of C{like} (BackupPC's config.pl).
    C{private}: it holds the host's rsync secret, so others lose read access.
    """
    old = read_config_text(path, "host config") if path.exists() else None
    text = old if old is not None else ""
    for edit in edits:
        text = edit(text)
    return confedit.write_atomically(path, text, old, like=like, private=private)


def host_rsync_auth(config) -> RsyncAuth:
    """
    The host's rsync secret: the one its config holds, if it is one
    register-client could have written, else a new one.
    """
    user = config.get("RsyncdUserName") if config else None
    passwd = config.get("RsyncdPasswd") if config else None
    try:
        user = RsyncAuth(user, "x" * 16).user
    except ConfigError:
        user = DEFAULT_RSYNC_USER
    if passwd != RSYNCD_PASSWD_PLACEHOLDER:
        try:
            return RsyncAuth(user, passwd)
        except ConfigError:
            pass
    return RsyncAuth.generate(user)


def reload_backuppc(paths: Paths, server_mesg: str | None) -> str:
    """
    Ask the running BackupPC to read its hosts file again (as root, through
    BackupPC's own user: its socket admits no one else); says what happened.
    """
    manual = (f"BackupPC reads the new hosts file at its next wakeup; to make it read it now "
              f"run: sudo -u {backuppc_user(paths)} {server_mesg or BACKUPPC_SERVER_MESG} "
              f"server reload")
    if not server_mesg:
        return manual
    argv = [server_mesg, "server", "reload"]
    if os.geteuid() == 0 and shutil.which("runuser"):
        argv = ["runuser", "-u", backuppc_user(paths), "--"] + argv
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not ask BackupPC to reload ({e}); {manual}"
    # BackupPC_serverMesg prints the daemon's answer after "Got reply: ".
    if result.returncode != 0 or not result.stdout.removeprefix("Got reply: ").startswith("ok"):
        said = (result.stdout + result.stderr).strip().splitlines()
        return (f"BackupPC did not reload ({said[-1] if said else f'status {result.returncode}'}"
                f"); {manual}")
    return "BackupPC read the new hosts file (BackupPC_serverMesg server reload)"


def default_server_mesg(paths: Paths) -> str | None:
    """BackupPC_serverMesg, when C{paths} is the installed BackupPC's own config folder."""
    if Path(BACKUPPC_SERVER_MESG).is_file() and paths.conf.resolve() == DEFAULT_CONF.resolve():
        return BACKUPPC_SERVER_MESG
    return None


# -- register-client, renew, revoke -------------------------------------------


@attrs.frozen
class Registration:
    """What register-client or renew did."""

    host: str
    port: int
    fingerprint: str
    config_path: Path
    bundle: Path
    messages: tuple[str, ...]


def request_cert(host: str, out: Path) -> list[str]:
    """On the laptop: a private key that never leaves it, and a CSR for the admin."""
    host = checked_host(host)
    out.mkdir(parents=True, exist_ok=True)
    key_path, csr_path = out / f"{host}.key", out / f"{host}.csr"
    if key_path.exists():
        raise AdminError(f"{key_path} already exists; remove it to make a new key")
    pair = pki.make_csr(host)
    pki.write_private(key_path, pair.key_pem)
    pki.write_public(csr_path, pair.csr_pem)
    return [f"wrote {key_path} (keep it on this machine) and {csr_path}",
            f"send {csr_path.name} to the BackupPC admin, who runs: "
            f"bpctunnel register-client {host} --csr {csr_path.name}"]


def _reusable_cert(paths: Paths, ca: pki.CertAndKey, host: str, bundle: Path,
                   registered: frozenset[str], csr_pem: bytes | None) -> bytes | None:
    """The bundle's certificate if it is still good, so that a re-run changes nothing."""
    cert_path = bundle / f"{host}.crt"
    if not cert_path.exists() or (csr_pem is None and not (bundle / f"{host}.key").exists()):
        return None
    try:
        cert_pem = pki.read_file(cert_path)
        cert = pki.parse_certs(cert_pem, str(cert_path))[0]
        ca_cert = pki.parse_certs(ca.cert_pem, "ca")[0]
        cert.verify_directly_issued_by(ca_cert)
        if pki.common_name(cert) != host or pki.fingerprint_sha256(cert) not in registered:
            return None
        if csr_pem is not None and not pki.csr_matches_cert(csr_pem, cert):
            return None
        if pki.days_left(cert) < RENEW_WITHIN_DAYS:
            return None
        return cert_pem
    except (BpcTunnelError, ValueError, TypeError):
        return None


def register_client(paths: Paths, host: str, *, port: int | None = None, shares=(),
                    add_host: bool = False, csr: Path | None = None, out: Path | None = None,
                    days: int = 825, port_range=DEFAULT_PORT_RANGE, user: str = "backuppc",
                    url: str | None = None, renew: bool = False,
                    bpctunnel: str | None = None, server_mesg: str | None = None) -> Registration:
    """
    Issue (or reuse) a client certificate and write the host's tunnel
    settings; C{bpctunnel} is the command BackupPC's C{PingCmd} runs (by
    default this command's own path), written unless the host has a PingCmd.
    A host added to the hosts file is announced to BackupPC with
    C{server_mesg server reload} (BackupPC_serverMesg), if given.
    """
    host = checked_host(host)
    ca = _load_ca(paths)
    url = url or server_url(paths)
    messages = []
    added_host = False
    hosts_text = read_config_text(paths.hosts, "hosts file")
    if host not in parse_hosts(hosts_text, str(paths.hosts)):
        if not add_host:
            raise AdminError(f"{host} is not in {paths.hosts}; add it there or pass --add-host")
        new_hosts, _ = confedit.add_host(hosts_text, host, user, str(paths.hosts))
        added_host = True
        messages.append(f"added {host} to {paths.hosts}")
    config_path = config_layout(paths.conf).host_config(host)
    config = read_host_config(config_path)[1] if config_path.exists() else None
    current = config.get("ClientComment") if config else None
    registered = find_fingerprints(current) if isinstance(current, str) else frozenset()
    if port is None:
        existing = config.get("RsyncdClientPort") if config else None
        port = int(existing) if isinstance(existing, str) and existing.isdigit() else pick_port(
            paths.conf, host, port_range)
    if not 1 <= port <= 65535:
        raise AdminError(f"--port {port} is not a port number from 1 to 65535")
    clash = [h for h in ports_in_use(paths.conf, except_host=host).get(port, [])]
    if clash:
        raise AdminError(f"port {port} is already RsyncdClientPort of {', '.join(clash)}")

    bundle = out or Path.cwd() / f"{host}-bundle"
    csr_pem = pki.read_file(csr) if csr else None
    cert_pem = None if renew else _reusable_cert(paths, ca, host, bundle, registered, csr_pem)
    key_pem = None
    if cert_pem is None:
        if csr_pem is not None:
            cert_pem = pki.sign_client_csr(ca, csr_pem, days, expected_host=host)
        else:
            pair = pki.make_client_cert(ca, host, days)
            cert_pem, key_pem = pair.cert_pem, pair.key_pem
    fingerprint = pki.fingerprint_sha256(cert_pem)
    if added_host:
        # Only now that nothing can fail for a reason found before writing.
        confedit.write_atomically(paths.hosts, new_hosts, hosts_text)

    edits = [
        lambda t: confedit.set_tunnel_cert(t, fingerprint, str(config_path)),
        lambda t: confedit.set_setting(t, "XferMethod", "rsyncd", str(config_path)),
        lambda t: confedit.set_setting(t, "ClientNameAlias", ["127.0.0.1"], str(config_path)),
        lambda t: confedit.set_setting(t, "RsyncdClientPort", port, str(config_path)),
    ]
    auth = host_rsync_auth(config)
    edits.append(lambda t: confedit.set_setting(t, "RsyncdUserName", auth.user, str(config_path)))
    edits.append(lambda t: confedit.set_setting(t, "RsyncdPasswd", auth.secret, str(config_path)))
    old_shares = _share_list(config.get("RsyncShareName")) if config else []
    if shares:
        edits.append(lambda t: confedit.set_setting(t, "RsyncShareName", list(shares),
                                                    str(config_path)))
    if not (config and config.get("PingMaxMsec") is not None):
        edits.append(lambda t: confedit.set_setting(t, "PingMaxMsec", TUNNEL_PING_MAX_MSEC,
                                                    str(config_path)))
    if not (config and config.get("PingCmd")):
        # BackupPC's $host in PingCmd is the ClientNameAlias, 127.0.0.1: the
        # command must name the host itself.
        ping = f"{bpctunnel or bpctunnel_path()} ping {host}"
        edits.append(lambda t: confedit.set_setting(t, "PingCmd", ping, str(config_path)))
    if not (config and config.get("DumpPostUserCmd")) and not backuppc_setting(
            paths, "DumpPostUserCmd"):
        # How `bpctunnel backup-now` on the laptop learns BackupPC's verdict.
        done = f"{bpctunnel or bpctunnel_path()} backup-done $client $xferOK"
        edits.append(lambda t: confedit.set_setting(t, "DumpPostUserCmd", done, str(config_path)))
    if edit_host_config(config_path, edits, like=paths.config_pl, private=True):
        messages.append(f"updated {config_path}: TunnelCert:sha256:{fingerprint[:16]}..., "
                        f"RsyncdClientPort {port}")
    config = read_host_config(config_path)[1]
    shares = _share_list(config.get("RsyncShareName"))
    if _write_bundle(bundle, host, url, ca.cert_pem, cert_pem, key_pem, shares, auth):
        messages.append(f"wrote the client bundle to {bundle}")
    new_shares = [s for s in shares if s not in old_shares]
    if new_shares and registered:
        messages.append(_new_shares_advice(host, new_shares))
    if added_host:
        messages.append(reload_backuppc(paths, server_mesg))
    issued = paths.issued_cert(host)
    issued.parent.mkdir(parents=True, exist_ok=True)
    if not issued.exists() or issued.read_bytes() != cert_pem:
        pki.write_public(issued, cert_pem)
    if not messages:
        messages.append(f"{host} is already registered with this bundle; nothing changed")
    return Registration(host, port, fingerprint, config_path, bundle, tuple(messages))


def _share_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [s for s in value if isinstance(s, str)]


def _new_shares_advice(host: str, shares: list[str]) -> str:
    """What the laptop must add before BackupPC's next backup of C{host}."""
    modules = "\n".join(f"    [{name}]\n        path = /FOLDER/TO/BACK/UP\n        read only = yes"
                        for name in shares)
    return (f"BackupPC now expects module(s) {', '.join(shares)} from {host}: until the laptop "
            f"serves them, every backup of {host} fails with \"Unknown module\".  Add to the "
            f"laptop's rsyncd.conf (then `bpctunnel check {host}` while it is connected "
            f"compares the two):\n{modules}")


def rsyncd_conf_template(shares) -> str:
    """A read-only rsyncd.conf for the shares, for the laptop's owner to complete."""
    lines = [
        "# rsyncd.conf for bpctunnel: rsync runs as a daemon over the tunnel.",
        "# Set each module's path to the folder BackupPC should back up.",
        "# Modules are read-only: the client refuses writable ones unless",
        "# allow_restore = yes is set in its config.",
        "use chroot = no",
        "",
    ]
    for share in shares or []:
        lines += [f"[{share}]", f"    path = /CHANGE/ME/{share}", "    read only = yes", ""]
    return "\n".join(lines)


def _write_bundle(bundle: Path, host: str, url: str, ca_pem: bytes, cert_pem: bytes,
                  key_pem: bytes | None, shares, auth: RsyncAuth) -> bool:
    bundle.mkdir(parents=True, exist_ok=True)
    changed = False
    secrets = bundle / RSYNC_SECRETS
    if not secrets.exists() or secrets.read_bytes() != auth.secrets_line():
        pki.write_private(secrets, auth.secrets_line())
        changed = True
    files = {
        CLIENT_CONF: (f"[bpctunnel]\nserver = {url}\nca = ca.crt\ncert = {host}.crt\n"
                      f"key = {host}.key\nrsyncd_conf = rsyncd.conf\n"
                      f"rsync_secrets = {RSYNC_SECRETS}\n").encode(),
        "ca.crt": ca_pem,
        f"{host}.crt": cert_pem,
    }
    for name, data in files.items():
        path = bundle / name
        if not path.exists() or path.read_bytes() != data:
            pki.write_public(path, data)
            changed = True
    if key_pem is not None:
        pki.write_private(bundle / f"{host}.key", key_pem)
        changed = True
    template = bundle / "rsyncd.conf"
    if not template.exists():
        template.write_text(rsyncd_conf_template(shares))
        changed = True
    return changed


def revoke(paths: Paths, host: str) -> list[str]:
    """Remove every TunnelCert of C{host}: new tunnels are refused."""
    host = checked_host(host)
    path = find_host_config(paths.conf, host)
    if path is None:
        raise AdminError(f"{host} has no host config in {paths.conf}")
    text = read_config_text(path, "host config")
    new, removed = confedit.remove_tunnel_cert(text, str(path))
    confedit.write_atomically(path, new, text)
    if not removed:
        return [f"{host} has no TunnelCert in {path}; nothing to revoke"]
    return [f"revoked {host}: removed its TunnelCert from {path}; new tunnels are refused "
            f"with 'fingerprint mismatch'"]


def renew(paths: Paths, host: str, **kwargs) -> Registration:
    """A new certificate for C{host}, same port and shares; the old one stops working."""
    host = checked_host(host)
    path = find_host_config(paths.conf, host)
    comment = read_host_config(path)[1].get("ClientComment") if path else None
    if not (isinstance(comment, str) and find_fingerprints(comment)):
        raise AdminError(f"{host} is not registered; use `bpctunnel register-client {host}`")
    return register_client(paths, host, renew=True, **kwargs)


# -- web-link ------------------------------------------------------------------

#: Where etc/apache-bpctunnel.conf serves the dashboard, under BackupPC's own URL.
DEFAULT_WEB_LINK = "/backuppc/tunnels/dashboard/"
WEB_LINK_NAME = "Tunnels"


def web_link(paths: Paths, url: str = DEFAULT_WEB_LINK, name: str = WEB_LINK_NAME) -> list[str]:
    """
    Add a link C{name} to C{url} to BackupPC's navigation bar
    (C{$Conf{CgiNavBarLinks}} in config.pl, for BackupPC's admins), keeping
    the other links and the file's owner, group and mode.  Idempotent.
    """
    from bpctunnel.backuppc.navbar import SETTING, add_nav_link

    path = paths.config_pl
    text = read_config_text(path, "BackupPC config")
    new, added = add_nav_link(text, url, name, str(path))
    if not added:
        return [f"BackupPC's navigation bar already links to {url} ({path})"]
    confedit.write_atomically(path, new, text)
    return [f"added {name!r} -> {url} to $Conf{{{SETTING}}} in {path}; BackupPC's web "
            f"interface shows it to its admins from the next page on"]
