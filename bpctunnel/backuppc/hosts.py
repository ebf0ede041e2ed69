"""
BackupPC's hosts file and per-host configs, read the way BackupPC reads them,
and the decision whether a client certificate may open a tunnel for a host.

The Perl config reader itself lives in L{bpctunnel.backuppc.perlconf}; its public names
are re-exported here.  Nothing here touches the network or the reactor.

A client is authorized by L{authorize} in a fixed order, each failure with its
own L{Refused} subclass: a sane host name, the host listed in C{hosts}, a
C{TunnelCert:sha256:<fingerprint>} tag in the host's C{$Conf{ClientComment}}
matching the certificate, and a valid C{$Conf{RsyncdClientPort}} in the host's
own config file.  Only the host's own C{<host>.pl} counts, never C{config.pl}:
a tag or port there would apply to every host.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from attrs import frozen

from bpctunnel.errors import (
    ConfigError, FingerprintMismatch, HostConfigInvalid, UnknownHost,
)
from bpctunnel.backuppc.layout import ConfigLayout, config_layout
from bpctunnel.backuppc.perlconf import (
    Assignment, PerlConfig, PerlExpression, parse_perl_config, read_config_text,
    read_perl_config,
)

__all__ = [
    "Assignment", "HostEntry", "PerlConfig", "PerlExpression", "TUNNEL_CERT_RE",
    "ascii_lower",
    "AuthorizedHost", "authorize", "find_fingerprints", "find_host_config",
    "normalize_fingerprint", "parse_hosts", "parse_perl_config", "read_hosts",
    "read_perl_config", "tunnel_settings",
]

MAX_HOST_NAME = 255
#: Names whose C{<name>.pl} is not a host config: C{config.pl} is BackupPC's
#: global one, which applies to every host.
RESERVED_HOST_NAMES = frozenset({"config"})

# BackupPC reads the hosts file as bytes, so Perl's \s, \w and lc() are ASCII.
_HOST_LINE = re.compile(r"[\w.\\-]+\s+.*", re.ASCII)
_FIELD_SPLIT = re.compile(r"(?<!\\)\s+", re.ASCII)
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_HEX_FINGERPRINT = r"[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}"
TUNNEL_CERT_RE = re.compile(
    r"\bTunnelCert:sha256:(?P<fingerprint>" + _HEX_FINGERPRINT + r")"
    r"(?![0-9A-Fa-f]|:[0-9A-Fa-f])")
"""Finds C{TunnelCert:sha256:<fp>} in a comment; fp is 32 bytes of hex, any
case, with or without colons between the byte pairs."""

_FINGERPRINT = re.compile(_HEX_FINGERPRINT)
_PORT = re.compile(r"[1-9][0-9]{0,4}")


def ascii_lower(name):
    """Lower-case like Perl's C{lc} on bytes: only A-Z change."""
    return name.translate(_LOWER)


@frozen
class HostEntry:
    """One host line of BackupPC's C{hosts} file."""

    name: str
    dhcp: str
    user: str
    more_users: tuple[str, ...]


def parse_hosts(text, source="hosts"):
    """
    Parse a BackupPC C{hosts} file by the rules of BackupPC's C{HostInfoRead}.

    Each line loses its first run of CR/LF, everything from C{#} and trailing
    white space; lines that are then blank, or are not a host-name word
    (C{[\\w.\\\\-]+}) followed by white space and more, are skipped (so a line
    with only a name is ignored, as BackupPC does).  Fields are split on white
    space not preceded by a backslash, and C{\\ } becomes a space.  The first
    line read is the header; it must start with the column C{host}.

    @return: L{HostEntry} per host, keyed by the ASCII-lower-cased name; a
        later line for the same host replaces an earlier one.
    @raise ConfigError: there is no header, or it does not start with C{host}.
    """
    header = None
    hosts = {}
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if number < len(lines):
            line += "\n"       # Perl's <FH> keeps the newline the regexes see
        line = re.sub(r"[\n\r]+", "", line, count=1)
        line = re.sub(r"#.*", "", line, count=1)
        line = re.sub(r"\s+$", "", line, count=1, flags=re.ASCII)
        match = _HOST_LINE.match(line)
        if match is None:
            continue
        fields = [f for f in _FIELD_SPLIT.split(match.group(0)) if f]
        fields = [re.sub(r"\\(\s)", r"\1", f, flags=re.ASCII) for f in fields]
        if header is None:
            if fields[0] != "host":
                raise ConfigError(
                    f"{source}, line {number}: the header line must start with the column "
                    f"`host`, found {fields[0]!r}; BackupPC's header is "
                    f"`host dhcp user moreUsers`")
            header = fields
            continue
        row = dict(zip(header, fields))
        hosts[ascii_lower(fields[0])] = HostEntry(
            name=fields[0], dhcp=row.get("dhcp", ""), user=row.get("user", ""),
            more_users=tuple(u for u in row.get("moreUsers", "").split(",") if u))
    if header is None:
        raise ConfigError(f"{source} has no header line; its first entry must be "
                          f"`host dhcp user moreUsers`, as in BackupPC's own hosts file")
    return hosts


def read_hosts(path):
    """Read and parse a BackupPC C{hosts} file; see L{parse_hosts}."""
    return parse_hosts(read_config_text(path, "hosts file"), str(path))


def normalize_fingerprint(fingerprint):
    """
    Return a SHA-256 fingerprint as 64 lower-case hex digits without colons.

    @raise ConfigError: it is not 64 hex digits or 32 colon-separated pairs.
    """
    if isinstance(fingerprint, str) and _FINGERPRINT.fullmatch(fingerprint.strip()):
        return fingerprint.strip().replace(":", "").lower()
    shown = repr(fingerprint)
    shown = shown if len(shown) <= 100 else shown[:97] + "..."
    raise ConfigError(f"{shown} is not a SHA-256 fingerprint; expected 64 hex digits, "
                      f"optionally written as 32 colon-separated pairs (AB:CD:...)")


def find_fingerprints(comment):
    """Return every C{TunnelCert:sha256:} fingerprint in C{comment}, normalized."""
    return frozenset(normalize_fingerprint(m.group("fingerprint"))
                     for m in TUNNEL_CERT_RE.finditer(comment))


@frozen
class AuthorizedHost:
    """What the tunnel server needs to know about one authorized host."""

    host: str
    config_path: Path
    fingerprints: frozenset[str]
    port: int


def _host_name_problem(name):
    """Why C{name} cannot be a BackupPC host name used in a path, or None."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name) > MAX_HOST_NAME:
        return f"it is longer than {MAX_HOST_NAME} characters"
    if "/" in name:
        return "it contains '/'"
    if "\0" in name:
        return "it contains a NUL character"
    if name.startswith("."):
        return "it starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character"
    if ascii_lower(name) in RESERVED_HOST_NAMES:
        return f"{ascii_lower(name)}.pl is BackupPC's global configuration, not a host's"
    return None


def _shown(name):
    """A one-line, bounded rendering of an untrusted name for messages."""
    shown = repr(name)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def find_host_config(conf_dir, host, layout: ConfigLayout | None = None):
    """
    The config BackupPC reads for C{host} (L{bpctunnel.backuppc.layout}),
    if it exists, else None.

    @raise ConfigError: C{host} could not be a file name in C{conf_dir}.
    """
    problem = _host_name_problem(host)
    if problem:
        raise ConfigError(f"{_shown(host)} is not a valid BackupPC host name ({problem})")
    path = (layout or config_layout(conf_dir)).host_config(host)
    return path if path.exists() else None


def _load_host_config(conf_dir, host, read_config=None):
    """Find and parse the config of C{host}, refusing it if that fails."""
    layout = config_layout(conf_dir)
    path = find_host_config(conf_dir, host, layout)
    if path is None:
        places = " or ".join(str(p) for p in layout.candidates(host))
        raise FingerprintMismatch(host, f"no host config for {host}: BackupPC reads {places}")
    try:
        return path, (read_config or read_perl_config)(path)
    except ConfigError as e:
        raise HostConfigInvalid(host, str(e)) from None


def _describe(value):
    if value is None:
        return "undef"
    if isinstance(value, PerlExpression):
        return f"the Perl expression {value.text[:60]!r} (line {value.line})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a hash"
    return repr(value)


def _fingerprints(host, path, config):
    """The TunnelCert fingerprints of a host config; refuse if there are none."""
    missing = f"{path.name} has no TunnelCert:sha256:... in $Conf{{ClientComment}}"
    if "ClientComment" not in config:
        raise FingerprintMismatch(host, f"{missing} (it does not set $Conf{{ClientComment}})")
    comment = config.get("ClientComment")
    if not isinstance(comment, str):
        raise FingerprintMismatch(host, f"{missing} (it is {_describe(comment)}, "
                                        f"not a quoted string)")
    fingerprints = find_fingerprints(comment)
    if not fingerprints:
        raise FingerprintMismatch(host, missing)
    return fingerprints


def _port(host, path, config):
    """The C{$Conf{RsyncdClientPort}} set in the host's own config file."""
    if "RsyncdClientPort" not in config:
        raise HostConfigInvalid(host, f"$Conf{{RsyncdClientPort}} is missing in {path.name}; "
                                      f"set it to the port the tunnel should listen on")
    value = config.get("RsyncdClientPort")
    if isinstance(value, str) and _PORT.fullmatch(value) and int(value) <= 65535:
        return int(value)
    raise HostConfigInvalid(host, f"$Conf{{RsyncdClientPort}} in {path.name} is "
                                  f"{_describe(value)}, not a port number from 1 to 65535")


def tunnel_settings(conf_dir, host):
    """
    Read the tunnel settings of C{host} from its config in C{conf_dir}.

    This does not consult the hosts file; L{authorize} does.

    @raise UnknownHost: C{host} is not a usable host name.
    @raise FingerprintMismatch: there is no host config, or no TunnelCert in it.
    @raise HostConfigInvalid: the host config is unreadable, malformed, or
        lacks a valid C{$Conf{RsyncdClientPort}}.
    """
    host = _checked_host(host)
    path, config = _load_host_config(conf_dir, host)
    return AuthorizedHost(host, path, _fingerprints(host, path, config),
                          _port(host, path, config))


def _checked_host(common_name):
    # The name comes from a client certificate and becomes part of a file
    # path, so anything that could leave conf_dir is refused before any use.
    problem = _host_name_problem(common_name)
    if problem:
        shown = _shown(common_name)
        raise UnknownHost(shown, f"{shown} is not a valid BackupPC host name ({problem})")
    return ascii_lower(common_name)


def authorize(conf_dir, common_name, cert_sha256, *, read_hosts_file=None, read_config=None):
    """
    Decide whether a client certificate may open a tunnel, and for which port.

    Checks, in this order: the host name is sane; it is listed in
    C{<conf_dir>/hosts}; its config holds a TunnelCert equal to
    C{cert_sha256}; its config sets a valid C{$Conf{RsyncdClientPort}}.

    @param common_name: the certificate's common name, i.e. the host name.
    @param cert_sha256: the SHA-256 of the certificate (any accepted format).
    @raise UnknownHost, FingerprintMismatch, HostConfigInvalid: refused.
    @raise ConfigError: the hosts file is missing or unreadable, or
        C{cert_sha256} is malformed (both are server-side problems).

    C{read_hosts_file} and C{read_config} replace L{read_hosts} and
    L{read_perl_config}, e.g. with caching versions.
    """
    conf_dir = Path(conf_dir)
    host = _checked_host(common_name)
    if host not in (read_hosts_file or read_hosts)(conf_dir / "hosts"):
        raise UnknownHost(host, f"it is not listed in {conf_dir / 'hosts'}; add it there "
                                f"(or run `bpctunnel register-client {host} --add-host`)")
    presented = normalize_fingerprint(cert_sha256)
    path, config = _load_host_config(conf_dir, host, read_config)
    fingerprints = _fingerprints(host, path, config)
    # Compare against every fingerprint, so timing does not reveal which matched.
    matches = [hmac.compare_digest(presented, fp) for fp in sorted(fingerprints)]
    if not any(matches):
        raise FingerprintMismatch(host, f"the certificate does not match TunnelCert "
                                        f"in {path.name}")
    return AuthorizedHost(host, path, fingerprints, _port(host, path, config))
