"""The tunnel server's configuration (built once by C{bpctunnel.server.service})."""

from __future__ import annotations

from pathlib import Path

import attrs
from attrs.validators import ge, instance_of


@attrs.frozen
class ServerSettings:
    """
    The server's configuration.

    @ivar keepalive: seconds between WebSocket pings; a client silent for two
        intervals is dead and its port is freed.
    @ivar probe_timeout: how long an old tunnel has to answer when a new
        connection claims its host.
    @ivar check_interval: seconds between checks of idle tunnels (revocation,
        changed port, channel timeouts).
    @ivar idle_timeout: a carried connection with no data either way for this
        long is closed.
    @ivar max_connection_time: no carried connection lasts longer.
    @ivar max_channels: carried connections one client may have at once.
    @ivar max_unauthenticated: connections one address may have open before
        they have authenticated.
    @ivar handshake_timeout: seconds a connection may take to finish its TLS
        and WebSocket handshakes.
    @ivar max_handshakes: connections, from all addresses, that may be in
        their handshakes at once; more are dropped at once and their clients
        retry with backoff.  A fleet reconnecting after a server restart then
        gets through at the server's full speed, instead of every handshake
        slowing down until they all time out.
    @ivar local_uids: the local users (uids) who may connect to a laptop's
        port, by the connecting socket's owner; None: any local user (the
        host's rsync secret is then the only wall).
    """

    backuppc_conf: Path = attrs.field(converter=Path)
    keepalive: float = attrs.field(default=30.0, validator=[instance_of(float), ge(0.1)])
    probe_timeout: float = attrs.field(default=5.0, validator=[instance_of(float), ge(0.01)])
    check_interval: float = attrs.field(default=5.0, validator=[instance_of(float), ge(0.01)])
    idle_timeout: float = attrs.field(default=3600.0, validator=[instance_of(float), ge(1.0)])
    max_connection_time: float = attrs.field(default=4 * 3600.0,
                                             validator=[instance_of(float), ge(1.0)])
    max_channels: int = attrs.field(default=16, validator=[instance_of(int), ge(1)])
    max_unauthenticated: int = attrs.field(default=16, validator=[instance_of(int), ge(1)])
    #: Seconds from TCP accept to a finished WebSocket opening handshake (TLS included).
    handshake_timeout: float = attrs.field(default=30.0, validator=[instance_of(float), ge(0.1)])
    max_handshakes: int = attrs.field(default=1024, validator=[instance_of(int), ge(1)])
    #: The most a carried connection's receive window may grow to, and the
    #: growth all tunnels together may have (see L{bpctunnel.wire.windows}).
    max_window: int = attrs.field(default=32 * 1024 * 1024,
                                  validator=[instance_of(int), ge(64 * 1024)])
    window_budget: int = attrs.field(default=256 * 1024 * 1024,
                                     validator=[instance_of(int), ge(0)])
    local_uids: frozenset[int] | None = attrs.field(
        default=None, converter=attrs.converters.optional(frozenset))
    #: Where the hosts' history lasts across restarts (L{bpctunnel.server.history});
    #: None: kept in memory only.
    state_dir: Path | None = attrs.field(default=None,
                                         converter=attrs.converters.optional(Path))
    #: The folder of the server's certificates, with the copies of those
    #: issued to clients (C{clients/HOST.crt}); None: unknown (the
    #: dashboard then shows no C{bpctunnel check} findings).
    certs: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
