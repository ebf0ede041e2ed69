"""
The wss listener: the endpoint C{--listen} describes (see
L{bpctunnel.transport.listen_address}), with the server's mutual TLS on top.

Twisted parses the description (C{serverFromString}): C{tcp:} and C{tcp6:}
listen, C{systemd:} adopts the socket systemd passed (socket activation), and
C{haproxy:} reads a PROXY protocol header (v1 or v2, as HAProxy's
C{send-proxy-v2} or nginx's C{proxy_protocol on} send it) so that the
client's real address is the one logged and reported.  The PROXY header
comes before the TLS handshake, so it is read on plain TCP and TLS starts
after it: TLS stays end to end.
"""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from bpctunnel.errors import ConfigError
from bpctunnel.transport.tls_bulk import wrap_server_tls


def plain_endpoint(reactor, description: str) -> IStreamServerEndpoint:
    """
    The endpoint C{description} names, without TLS.  Parsing uses no
    reactor: C{reactor=None} checks a description.

    @raise ConfigError: naming the description and what is wrong with it.
    """
    try:
        return serverFromString(reactor, description)
    except (IndexError, KeyError):
        # systemd: the index or name of a socket systemd did not pass.
        raise ConfigError(
            f"--listen {description}: systemd passed no such socket (LISTEN_FDS); start the "
            f"server from its .socket unit, or listen on tcp:PORT") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"bad listen endpoint {description!r}: {e}") from None


def tunnel_endpoint(reactor, description: str, tls) -> IStreamServerEndpoint:
    """The wss listener: C{tls} (the server's TLS options) on the endpoint C{description}."""
    return wrap_server_tls(tls, plain_endpoint(reactor, description), reactor)
