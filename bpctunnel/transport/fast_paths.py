"""
Which fast paths are on (issue 15).

A fast path is an optimisation that relies on a library's internals.  Each
lives in one module, can be switched off here, is tested against the stock
path it replaces, and stays only while a same-run A/B
(C{bench/fast_paths_ab.py}) shows that it pays.

The switch is the C{BPCTUNNEL_FAST_PATHS} environment variable, read when
a connection starts, and checked when the server's listener or the
client's connector is built (never at import):

    unset              the default: every fast path this version has
    none               none: the libraries' stock code throughout
    websocket          a comma-separated list of the fast paths to use

The names: C{websocket} (L{bpctunnel.transport.websocket_fast}: binary
WebSocket frames parsed and written without Autobahn's per-message work).
A server and its clients may differ: the wire is the same.  (A C{tls} fast
path did not pay for itself and was removed; see
L{bpctunnel.transport.tls_bulk}.)
"""

from __future__ import annotations

import os
from typing import Mapping

from attrs import frozen

from bpctunnel.errors import ConfigError

#: The environment variable that switches the fast paths.
ENVIRONMENT_VARIABLE = "BPCTUNNEL_FAST_PATHS"


@frozen
class FastPaths:
    """
    Which fast paths are on.

    @ivar websocket: parse and write the tunnel's binary WebSocket frames in
        L{bpctunnel.transport.websocket_fast.FastBinaryMixin}; off, every
        frame goes through Autobahn's own C{sendMessage} and parser.
    """

    websocket: bool = True


#: The names C{BPCTUNNEL_FAST_PATHS} takes, one per field of L{FastPaths}.
NAMES: tuple[str, ...] = tuple(field.name for field in FastPaths.__attrs_attrs__)


def parse_fast_paths(text: str | None) -> FastPaths:
    """
    The L{FastPaths} that C{text}, a value of C{BPCTUNNEL_FAST_PATHS}, asks
    for: C{None} (unset) for the default, C{"none"}, or names separated by
    commas.  An unknown name is a L{ConfigError}.
    """
    if text is None:
        return FastPaths()
    words = [word.strip().lower() for word in text.split(",") if word.strip()]
    if words == ["none"]:
        return FastPaths(**{name: False for name in NAMES})
    unknown = sorted(set(words) - set(NAMES))
    if unknown or not words:
        raise ConfigError(
            f"{ENVIRONMENT_VARIABLE}={text!r}: "
            f"{'no fast path named ' + ', '.join(unknown) if unknown else 'empty'}; "
            f"set 'none' or a comma-separated list of {', '.join(NAMES)}, "
            f"or unset it for all of them")
    return FastPaths(**{name: name in words for name in NAMES})


def fast_paths_from_environment(environ: Mapping[str, str] | None = None) -> FastPaths:
    """
    The L{FastPaths} that C{BPCTUNNEL_FAST_PATHS} asks for in C{environ}, by
    default this process's environment as it is now.
    """
    environ = os.environ if environ is None else environ
    return parse_fast_paths(environ.get(ENVIRONMENT_VARIABLE))
