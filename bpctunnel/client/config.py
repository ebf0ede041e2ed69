"""
The client's configuration: an INI file with a C{[bpctunnel]} section.

    [bpctunnel]
    server = wss://backup.example.org:8443/tunnel
    ca = ca.crt
    cert = laptop1.crt
    key = laptop1.key
    rsyncd_conf = rsyncd.conf
    # rsync = /usr/bin/rsync
    # keepalive = 30          (seconds between pings; a peer silent for two is dead)
    # retry_initial = 1       (first reconnection delay, seconds)
    # retry_max = 300         (longest reconnection delay, seconds)
    # allow_restore = no      (yes: rsyncd.conf may have writable modules)
    # proxy = http://proxy.example.org:3128   (an HTTP CONNECT proxy; or none)
    rsync_secrets = rsyncd.secrets   (user:secret BackupPC must send; mode 600)

Relative paths are relative to the file's folder.  Command-line options may
override any key.

C{ca}, C{cert} and C{key} may hold the PEM text itself instead of a path
(one file to hand to a user), indented under the key:

    cert =
        -----BEGIN CERTIFICATE-----
        MIIB...
        -----END CERTIFICATE-----

A file with an inline C{key} must be readable by its owner only (mode 600).

Without a C{proxy} key the client uses C{https_proxy} (or C{HTTPS_PROXY})
from the environment, unless the server is this machine or C{no_proxy} (or
C{NO_PROXY}) exempts it; C{proxy = none} connects directly.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import attrs
from attrs.validators import ge, instance_of, le, optional

from bpctunnel.errors import ConfigError
from bpctunnel.transport.http_connect import HTTPProxy, parse_proxy_url
from bpctunnel.pki import common_name, load_cert, parse_certs, parse_key, read_file
from bpctunnel.client.rsync_auth import RsyncAuth, read_secrets
from bpctunnel.client.rsyncd_conf import writable_modules

SECTION = "bpctunnel"
KEYS = ("server", "ca", "cert", "key", "rsyncd_conf", "rsync", "keepalive", "retry_initial",
        "retry_max", "allow_restore", "proxy", "rsync_secrets")
REQUIRED = ("server", "ca", "cert", "key", "rsyncd_conf")
#: The keys that take a path or the PEM text itself.
PEM_KEYS = ("ca", "cert", "key")
#: What makes a value PEM text rather than a path.
PEM_MARKER = "-----BEGIN"


@attrs.frozen
class InlinePem:
    """PEM text given in the config itself instead of a file's path."""

    pem: bytes = attrs.field(validator=instance_of(bytes), repr=False)
    #: How messages name it, e.g. "cert in /etc/bpctunnel/laptop1.conf".
    source: str = attrs.field(validator=instance_of(str))


def is_inline_pem(value: str) -> bool:
    """Whether a C{ca}/C{cert}/C{key} value is PEM text rather than a path."""
    return PEM_MARKER in value


def inline_pem(value: str, key: str, where: str) -> InlinePem:
    """An L{InlinePem} from a config value, without the INI indentation."""
    text = "\n".join(line.strip() for line in value.strip().splitlines()) + "\n"
    try:
        pem = text.encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{key} {where} is not a PEM block: it has non-ASCII characters; paste the "
            f"-----BEGIN ... -----END block unchanged") from None
    return InlinePem(pem, f"{key} {where}")


def pem_and_source(value: Path | InlinePem) -> tuple[bytes, str]:
    """The PEM bytes of a C{ca}/C{cert}/C{key} setting and how to name it in errors."""
    if isinstance(value, InlinePem):
        return value.pem, value.source
    return read_file(value), str(value)


@attrs.frozen
class ClientConfig:
    """A client's settings, with paths resolved and files checked."""

    server: str = attrs.field(validator=instance_of(str))
    server_host: str = attrs.field(validator=instance_of(str))
    server_port: int = attrs.field(validator=[instance_of(int), ge(1), le(65535)])
    #: Each a file's path, or the PEM text given in the config itself.
    ca: Path | InlinePem = attrs.field(validator=instance_of((Path, InlinePem)))
    cert: Path | InlinePem = attrs.field(validator=instance_of((Path, InlinePem)))
    key: Path | InlinePem = attrs.field(validator=instance_of((Path, InlinePem)))
    rsyncd_conf: Path = attrs.field(validator=instance_of(Path))
    rsync: str = attrs.field(validator=instance_of(str))
    host: str = attrs.field(default="", validator=instance_of(str))
    #: Seconds between WebSocket pings; a server silent for two is dead.
    keepalive: float = attrs.field(default=30.0, validator=[instance_of(float), ge(1.0)])
    retry_initial: float = attrs.field(default=1.0, validator=[instance_of(float), ge(0.1)])
    retry_max: float = attrs.field(default=300.0, validator=[instance_of(float), ge(1.0)])
    #: Whether rsyncd.conf may have writable modules (for restores).
    allow_restore: bool = attrs.field(default=False, validator=instance_of(bool))
    #: The HTTP proxy the tunnel goes through, if any.
    proxy: HTTPProxy | None = attrs.field(default=None, validator=optional(instance_of(HTTPProxy)))
    #: The secret the laptop's rsync daemon asks BackupPC for; None: the
    #: daemon asks for none (a bundle from before secrets, or none wanted).
    rsync_auth: RsyncAuth | None = attrs.field(default=None,
                                               validator=optional(instance_of(RsyncAuth)))


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether C{host} is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = host.lower().rstrip(".")
    ip = _ip(host)
    if ip is not None:
        return ip.is_loopback
    return host == "localhost" or host.endswith(".localhost")


def bypasses_proxy(host: str, no_proxy: str) -> bool:
    """
    Whether C{no_proxy} (comma-separated: C{*}, host names that match
    themselves and their subdomains, with or without a leading dot, IP
    addresses and networks such as 10.0.0.0/8; a C{:port} is ignored)
    exempts C{host} from the proxy.
    """
    host = host.lower().rstrip(".")
    ip = _ip(host)
    for entry in re.split(r"[,\s]+", no_proxy.lower()):
        if entry == "*":
            return True
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            network = None
        if network is not None:
            if ip is not None and ip in network:
                return True
            continue
        entry = re.sub(r":\d+$", "", entry).strip("[]")
        if _ip(entry) is not None:
            # "[::1]:22" and "10.0.0.1:80": an address with a port.
            if ip is not None and ip == _ip(entry):
                return True
            continue
        entry = entry.lstrip("*").lstrip(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def select_proxy(setting: str | None, server_host: str, environ: Mapping[str, str],
                 where: str = "") -> HTTPProxy | None:
    """
    The proxy for a tunnel to C{server_host}: C{setting} (the config's
    C{proxy} value) if given, where C{none} means a direct connection;
    otherwise C{https_proxy} or C{HTTPS_PROXY} from C{environ}, unless the
    server is this machine or C{no_proxy}/C{NO_PROXY} exempts it.  (An
    explicit C{proxy} is always used: it was set for this one server.)
    """
    in_where = f" {where}" if where else ""
    if setting is not None:
        if setting.strip().lower() == "none":
            return None
        if not setting.strip():
            raise ConfigError(f"proxy is empty{in_where}: give http://HOST:PORT, or none to "
                              f"connect directly")
        return parse_proxy_url(setting, "proxy", where)
    for name in ("https_proxy", "HTTPS_PROXY"):
        url = environ.get(name, "")
        if url.strip():
            break
    else:
        return None
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if is_loopback(server_host) or bypasses_proxy(server_host, no_proxy):
        return None
    return parse_proxy_url(
        url, name, "in the environment", scheme_optional=True,
        hint=f"; fix it, or set proxy = none{in_where} to connect directly")


def parse_server_url(url: str) -> tuple[str, int]:
    """The host and port of a C{wss://} URL; the path must be /tunnel."""
    parts = urlsplit(url)
    if parts.scheme != "wss":
        raise ConfigError(
            f"server = {url!r} must be a wss:// URL, such as wss://backup.example.org:8443/tunnel"
        )
    try:
        port = parts.port or 443
    except ValueError:
        raise ConfigError(f"server = {url!r} has an invalid port number") from None
    if not parts.hostname:
        raise ConfigError(f"server = {url!r} names no host")
    return parts.hostname, port


def find_rsync(rsync: str) -> str:
    """The absolute path of the rsync binary, or a L{ConfigError} saying how to fix it."""
    found = shutil.which(rsync)
    if found is None:
        raise ConfigError(
            f"rsync binary {rsync!r} not found; install rsync (apt-get install rsync) "
            f"or set rsync = /path/to/rsync in the client config"
        )
    return str(Path(found).absolute())


def _check_private(path: Path, mode: int) -> None:
    # An inline key makes the whole file a secret.  (Windows has no such
    # mode bits: there the folder's ACL protects it.)
    if os.name != "nt" and mode & 0o077:
        raise ConfigError(
            f"client config {path} holds a private key (key = -----BEGIN ...) but other users "
            f"may read it (mode {stat.S_IMODE(mode):03o}); run chmod 600 {path}")


def load_client_config(path: Path | None, overrides: dict | None = None,
                       environ: Mapping[str, str] | None = None) -> ClientConfig:
    """
    Read the client's INI file (if any) and apply C{overrides}, a mapping of
    the keys in L{KEYS} to values given on the command line.  C{environ}
    (default: C{os.environ}) supplies C{https_proxy} and C{no_proxy}.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        base = path.absolute().parent
        parser = configparser.ConfigParser(interpolation=None)
        text = ""
        try:
            with path.open(encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                text = f.read()
            parser.read_string(text, source=str(path))
        except OSError as e:
            raise ConfigError(f"cannot read client config {path}: {e.strerror}") from None
        except (configparser.Error, UnicodeDecodeError) as e:
            hint = ""
            if PEM_MARKER in text:
                hint = ("; the lines of an inline PEM block (ca, cert, key) must be indented "
                        "under their key")
            raise ConfigError(f"client config {path} is not a valid INI file: {e}{hint}") from None
        if not parser.has_section(SECTION):
            raise ConfigError(f"client config {path} has no [{SECTION}] section")
        unknown = set(parser[SECTION]) - set(KEYS)
        if unknown:
            raise ConfigError(
                f"client config {path} has unknown keys: {', '.join(sorted(unknown))}; "
                f"known keys are {', '.join(KEYS)}"
            )
        values.update(parser[SECTION])
        if is_inline_pem(values.get("key", "")):
            _check_private(path, mode)
    given = {key: str(value) for key, value in (overrides or {}).items() if value is not None}
    values.update(given)
    where = f"in {path}" if path is not None else "on the command line"
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise ConfigError(f"missing setting {', '.join(missing)} {where}")

    def resolve(key: str) -> Path:
        p = Path(values[key]).expanduser()
        return p if p.is_absolute() else base / p

    host, port = parse_server_url(values["server"])
    files: dict[str, Path | InlinePem] = {}
    for key in ("ca", "cert", "key", "rsyncd_conf"):
        if key in PEM_KEYS and is_inline_pem(values[key]):
            files[key] = inline_pem(
                values[key], key, "on the command line" if key in given else where)
            continue
        files[key] = resolve(key)
        if not files[key].is_file():
            raise ConfigError(f"{key} = {values[key]} {where}: no such file {files[key]}")
    # Inline PEM is checked now, so that a mistake is reported with its key.
    if isinstance(files["ca"], InlinePem):
        parse_certs(files["ca"].pem, files["ca"].source)
    if isinstance(files["key"], InlinePem):
        parse_key(files["key"].pem, files["key"].source)
    if isinstance(files["cert"], InlinePem):
        cert = parse_certs(files["cert"].pem, files["cert"].source)[0]
    else:
        cert = load_cert(files["cert"])
    numbers = {}
    for key, default, least in (("keepalive", 30.0, 1.0), ("retry_initial", 1.0, 0.1),
                                ("retry_max", 300.0, 1.0)):
        try:
            numbers[key] = float(values.get(key) or default)
        except ValueError:
            raise ConfigError(f"{key} = {values[key]} {where} is not a number of seconds") from None
        if numbers[key] < least:
            raise ConfigError(f"{key} = {values[key]} {where} must be at least {least} seconds")
    allow = (values.get("allow_restore") or "no").strip().lower()
    if allow not in ("yes", "no", "true", "false", "1", "0"):
        raise ConfigError(f"allow_restore = {values['allow_restore']} {where} must be yes or no")
    allow_restore = allow in ("yes", "true", "1")
    writable = writable_modules(files["rsyncd_conf"])
    if writable and not allow_restore:
        raise ConfigError(
            f"{files['rsyncd_conf']} has writable module(s) {', '.join(writable)} (read only = no): "
            f"a backup server that was broken into could overwrite this machine's files. Make "
            f"them read only = yes, or set allow_restore = yes {where} to allow restores"
        )
    rsync = values.get("rsync") or "rsync"
    if "/" in rsync or "\\" in rsync:
        rsync = str(resolve("rsync"))
    return ClientConfig(
        server=values["server"],
        server_host=host,
        server_port=port,
        rsync=find_rsync(rsync),
        host=common_name(cert),
        allow_restore=allow_restore,
        proxy=select_proxy(values.get("proxy"), host, environ, where),
        rsync_auth=read_secrets(resolve("rsync_secrets")) if values.get("rsync_secrets") else None,
        **numbers,
        **files,
    )
