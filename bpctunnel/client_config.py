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

Relative paths are relative to the file's folder.  Command-line options may
override any key.
"""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import attrs
from attrs.validators import ge, instance_of, le

from bpctunnel.errors import ConfigError
from bpctunnel.pki import common_name, load_cert
from bpctunnel.rsyncd_conf import writable_modules

SECTION = "bpctunnel"
KEYS = ("server", "ca", "cert", "key", "rsyncd_conf", "rsync", "keepalive", "retry_initial",
        "retry_max", "allow_restore")
REQUIRED = ("server", "ca", "cert", "key", "rsyncd_conf")


@attrs.frozen
class ClientConfig:
    """A client's settings, with paths resolved and files checked."""

    server: str = attrs.field(validator=instance_of(str))
    server_host: str = attrs.field(validator=instance_of(str))
    server_port: int = attrs.field(validator=[instance_of(int), ge(1), le(65535)])
    ca: Path = attrs.field(validator=instance_of(Path))
    cert: Path = attrs.field(validator=instance_of(Path))
    key: Path = attrs.field(validator=instance_of(Path))
    rsyncd_conf: Path = attrs.field(validator=instance_of(Path))
    rsync: str = attrs.field(validator=instance_of(str))
    host: str = attrs.field(default="", validator=instance_of(str))
    #: Seconds between WebSocket pings; a server silent for two is dead.
    keepalive: float = attrs.field(default=30.0, validator=[instance_of(float), ge(1.0)])
    retry_initial: float = attrs.field(default=1.0, validator=[instance_of(float), ge(0.1)])
    retry_max: float = attrs.field(default=300.0, validator=[instance_of(float), ge(1.0)])
    #: Whether rsyncd.conf may have writable modules (for restores).
    allow_restore: bool = attrs.field(default=False, validator=instance_of(bool))


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


def load_client_config(path: Path | None, overrides: dict | None = None) -> ClientConfig:
    """
    Read the client's INI file (if any) and apply C{overrides}, a mapping of
    the keys in L{KEYS} to values given on the command line.
    """
    values: dict[str, str] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        base = path.absolute().parent
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with path.open(encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as e:
            raise ConfigError(f"cannot read client config {path}: {e.strerror}") from None
        except (configparser.Error, UnicodeDecodeError) as e:
            raise ConfigError(f"client config {path} is not a valid INI file: {e}") from None
        if not parser.has_section(SECTION):
            raise ConfigError(f"client config {path} has no [{SECTION}] section")
        unknown = set(parser[SECTION]) - set(KEYS)
        if unknown:
            raise ConfigError(
                f"client config {path} has unknown keys: {', '.join(sorted(unknown))}; "
                f"known keys are {', '.join(KEYS)}"
            )
        values.update(parser[SECTION])
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = str(value)
    where = f"in {path}" if path is not None else "on the command line"
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise ConfigError(f"missing setting {', '.join(missing)} {where}")

    def resolve(key: str) -> Path:
        p = Path(values[key]).expanduser()
        return p if p.is_absolute() else base / p

    host, port = parse_server_url(values["server"])
    files = {k: resolve(k) for k in ("ca", "cert", "key", "rsyncd_conf")}
    for key, file in files.items():
        if not file.is_file():
            raise ConfigError(f"{key} = {values[key]} {where}: no such file {file}")
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
        host=common_name(load_cert(files["cert"])),
        allow_restore=allow_restore,
        **numbers,
        **files,
    )
