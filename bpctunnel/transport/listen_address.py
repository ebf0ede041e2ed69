"""
The server's C{--listen}: C{[ADDRESS:]PORT}, or a Twisted endpoint
description, as the endpoint description the wss listener is built from.

TLS is always bpctunnel's own (mutual TLS with the certificates in
C{--certs}), on top of the endpoint: so the endpoint is a plain one, C{tcp:},
C{tcp6:} or C{systemd:} (a socket systemd passes, for socket activation),
optionally under C{haproxy:} (a PROXY protocol header before TLS).
"""

from __future__ import annotations

import ipaddress
import re

import attrs
from twisted.internet.endpoints import quoteStringArgument

from bpctunnel.errors import ConfigError

#: The endpoint types TLS may go on.
PLAIN_TYPES = ("tcp", "tcp6", "systemd")
#: The endpoint type that reads a PROXY protocol header first.
PROXY_TYPE = "haproxy"

_FORMS = ("use PORT, ADDRESS:PORT or [IPV6-ADDRESS]:PORT, e.g. 8443 or 0.0.0.0:8443 or [::]:8443, "
          "or an endpoint: tcp:8443, haproxy:tcp:8443, systemd:domain=INET:index=0")
_ENDPOINT_TYPE = re.compile(r"([A-Za-z][A-Za-z0-9]*):")


@attrs.frozen
class ListenAddress:
    """An interface (C{""} for all IPv4 interfaces) and a TCP port (0: any free one)."""

    interface: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.interface}]" if ":" in self.interface else (self.interface or "*")
        return f"{host}:{self.port}"

    @property
    def description(self) -> str:
        """As a Twisted endpoint description: C{tcp:8443:interface=127.0.0.1}."""
        if not self.interface:
            return f"tcp:{self.port}"
        return f"tcp:{self.port}:interface={quoteStringArgument(self.interface)}"


def parse_listen(text: str) -> ListenAddress:
    """
    Parse C{PORT}, C{ADDRESS:PORT} or C{[IPv6]:PORT}.

    @raise ConfigError: naming the bad value and the accepted forms.
    """
    text = text.strip()
    interface = ""
    port_text = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ConfigError(f"bad listen address {text!r}: {_FORMS}")
        interface, port_text = text[1:close], text[close + 2 :]
        version = 6
    elif ":" in text:
        interface, _, port_text = text.rpartition(":")
        version = 4
    if interface:
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            raise ConfigError(f"bad listen address {text!r}: {interface!r} is not an IP address; "
                              f"{_FORMS}") from None
        if address.version != version:
            raise ConfigError(f"bad listen address {text!r}: put IPv6 addresses in brackets; {_FORMS}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad listen address {text!r}: {port_text!r} is not a port number; "
                          f"{_FORMS}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bad listen address {text!r}: port {port} is outside 0-65535")
    return ListenAddress(interface, port)


def listen_description(text: str, proxy_protocol: bool = False) -> str:
    """
    The endpoint description of C{--listen TEXT}: an endpoint description
    as given, C{[ADDRESS:]PORT} as C{tcp:PORT:interface=ADDRESS}; with
    C{proxy_protocol} (C{--proxy-protocol}), under C{haproxy:}.

    @raise ConfigError: for a bad address, or an endpoint TLS cannot go on.
    """
    text = text.strip()
    inner = text
    while inner.startswith(f"{PROXY_TYPE}:"):
        inner = inner[len(PROXY_TYPE) + 1:]
    kind = _ENDPOINT_TYPE.match(inner)
    if kind is None or kind.group(1).lower() not in PLAIN_TYPES + ("ssl",):
        if inner != text:
            raise ConfigError(f"bad listen endpoint {text!r}: {PROXY_TYPE}: goes around a "
                              f"tcp:, tcp6: or systemd: endpoint, e.g. haproxy:tcp:8443")
        description = parse_listen(text).description
    elif kind.group(1).lower() == "ssl":
        raise ConfigError(f"bad listen endpoint {text!r}: the server's TLS is its own mutual TLS "
                          f"(the certificates in --certs); give the TCP endpoint under it, e.g. "
                          f"tcp:8443")
    else:
        description = text
    if proxy_protocol and not description.startswith(f"{PROXY_TYPE}:"):
        description = f"{PROXY_TYPE}:{description}"
    return description
