"""Parsing of C{[ADDRESS:]PORT} listen options."""

from __future__ import annotations

import ipaddress

import attrs

from bpctunnel.errors import ConfigError


@attrs.frozen
class ListenAddress:
    """An interface (C{""} for all IPv4 interfaces) and a TCP port (0: any free one)."""

    interface: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.interface}]" if ":" in self.interface else (self.interface or "*")
        return f"{host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """
    Parse C{PORT}, C{ADDRESS:PORT} or C{[IPv6]:PORT}.

    @raise ConfigError: naming the bad value and the accepted forms.
    """
    forms = "use PORT, ADDRESS:PORT or [IPV6-ADDRESS]:PORT, e.g. 8443 or 0.0.0.0:8443 or [::]:8443"
    text = text.strip()
    interface = ""
    port_text = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ConfigError(f"bad listen address {text!r}: {forms}")
        interface, port_text = text[1:close], text[close + 2 :]
        version = 6
    elif ":" in text:
        interface, _, port_text = text.rpartition(":")
        version = 4
    if interface:
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            raise ConfigError(f"bad listen address {text!r}: {interface!r} is not an IP address; {forms}") from None
        if address.version != version:
            raise ConfigError(f"bad listen address {text!r}: put IPv6 addresses in brackets; {forms}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad listen address {text!r}: {port_text!r} is not a port number; {forms}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bad listen address {text!r}: port {port} is outside 0-65535")
    return ListenAddress(interface, port)
