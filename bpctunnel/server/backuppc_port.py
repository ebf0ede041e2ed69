"""
The server's end of a channel: one TCP connection from BackupPC to
127.0.0.1:<RsyncdClientPort>.

Every local process can connect to that port, so besides the host's rsync
secret (L{bpctunnel.client.rsync_auth}) the port itself lets in only the
users of L{LocalUsers}: BackupPC's user and root, by the uid of the
connecting socket (L{bpctunnel.transport.peer_credentials}).  Anyone else
is cut off before a channel opens, with a log line naming the uid.

A tunnel that has carried no data from the laptop for a moment may have
died silently (a laptop that left the Wi-Fi): before BackupPC's connection
goes into it, the server probes it (C{--probe-timeout}), and if it does not
answer, BackupPC is told in seconds rather than after the keepalive's minute.
"""

from __future__ import annotations

import pwd
from typing import Callable

import attrs

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from bpctunnel.transport.peer_credentials import tcp_connection_owner
from bpctunnel.transport.sockets import release_and_close, tune_for_bulk
from bpctunnel.wire.rsync_greeting import ModuleSniffer
from bpctunnel.wire.mux import LOCAL_READ_SIZE, ILocalEnd
from bpctunnel.wire.violations import ViolationCounter


@attrs.frozen
class LocalUsers:
    """
    The local users who may connect to a laptop's port, by uid; C{None}:
    everyone (the check is off).
    """

    uids: frozenset[int] | None
    #: (client address, server address) -> uid of the connecting socket, or None.
    owner_of: Callable = attrs.field(default=tcp_connection_owner, eq=False, repr=False)

    @classmethod
    def backuppc(cls, user: str, owner_of: Callable = tcp_connection_owner) -> LocalUsers:
        """Root and BackupPC's user (C{$Conf{BackupPCUser}}), if it exists."""
        uids = {0}
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass
        return cls(frozenset(uids), owner_of)

    def refusal(self, client, server) -> str | None:
        """Why a connection from C{client} to C{server} is refused, or None."""
        if self.uids is None:
            return None
        uid = self.owner_of((client.host, client.port), (server.host, server.port))
        if uid is None:
            return ("the connecting process could not be identified (it is gone, or in "
                    "another network namespace)")
        if uid not in self.uids:
            return f"uid {uid} ({_user_name(uid)}) is neither root nor BackupPC's user"
        return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user"


@implementer(ILocalEnd, IHalfCloseableProtocol)
class LocalConnectionProtocol(Protocol):
    """
    One TCP connection from BackupPC, carried as one channel.

    Reading stays paused until the client has started rsync and granted
    credit, so the first bytes always have somewhere to go; into a silent
    tunnel, also until the client has answered a probe (the channel opens
    only then).
    """

    log = Logger()

    def __init__(self, tunnel, local_users: LocalUsers | None = None,
                 refusals: ViolationCounter | None = None):
        self.tunnel = tunnel
        self.local_users = local_users
        #: Where refused local connections are logged, within bounds.
        self.refusals = refusals
        self.channel = None
        self._greeting = ModuleSniffer()
        self._gone = False

    @property
    def module(self) -> str | None:
        """The rsyncd module BackupPC asked for, once known."""
        return self._greeting.module

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        refusal = self.local_users and self.local_users.refusal(peer, self.transport.getHost())
        if refusal:
            line = ("refused a local connection to the port of {client_name} from {peer}: "
                    "{refusal}")
            fields = dict(client_name=self.tunnel.host, peer=f"{peer.host}:{peer.port}",
                          refusal=refusal)
            if self.refusals is None:
                self.log.warn(line, **fields)
            else:
                self.refusals.count("refused local connections", line, **fields)
            self.transport.abortConnection()
            return
        tune_for_bulk(self.transport, LOCAL_READ_SIZE)
        # Nothing is read from BackupPC until the channel exists: what it
        # sends meanwhile waits in the socket.
        self.transport.pauseProducing()
        answered = self.tunnel.probe_if_silent()
        probed = not answered.called
        answered.addCallback(self._answered, probed).addErrback(self._failed)

    def _answered(self, alive: bool, probed: bool) -> None:
        if self._gone:
            return
        if not alive:
            if self.tunnel.mux is None or self.tunnel.mux.lost:
                self.log.info("closing BackupPC's connection to {client_name}: the tunnel "
                              "closed", client_name=self.tunnel.host)
            else:
                self.log.warn("{client_name} did not answer a probe within {timeout:g} "
                              "seconds; closing BackupPC's connection (the keepalive decides "
                              "about the tunnel)", client_name=self.tunnel.host,
                              timeout=self.tunnel.server.settings.probe_timeout)
            self.transport.abortConnection()
            return
        # While the probe was out, the tunnel may have been revoked or filled up.
        if probed and not self.tunnel.may_carry_connection():
            self.transport.abortConnection()
            return
        peer = self.transport.getPeer()
        self.channel = self.tunnel.mux.open_channel({"peer": f"{peer.host}:{peer.port}"})
        self.channel.attach(self)
        self.transport.registerProducer(self.channel, True)
        self.log.debug(
            "channel {channel_id} opened for {client_name}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
        )
        # The channel resumes reading once the client has accepted it.

    def _failed(self, failure) -> None:
        self.log.failure("opening a channel for {client_name} failed", failure,
                         client_name=self.tunnel.host)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.channel is None:
            return              # refused in connectionMade
        if not self._greeting.done:
            self._greeting.feed(data)
            if self._greeting.module is not None:
                self.tunnel.module_requested(self._greeting.module)
        self.channel.local_data(data)

    def readConnectionLost(self) -> None:
        if self.channel is None:
            return              # refused in connectionMade
        self.channel.local_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self._gone = True
        if self.channel is None:
            return              # refused, or lost before its channel opened
        error = None
        if reason is not None and not reason.check(ConnectionDone):
            error = f"BackupPC's connection failed: {reason.getErrorMessage()}"
        self.channel.local_closed(error)
        self.log.info(
            "channel {channel_id} of {client_name} closed: module {module}, {bytes_to_client} "
            "bytes to the client, {bytes_from_client} bytes from it{reason}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
            module=self.module or "(module list)",
            bytes_to_client=self.channel.bytes_out,
            bytes_from_client=self.channel.bytes_in,
            reason=f" ({self.channel.close_reason})" if self.channel.close_reason else "",
        )

    # ILocalEnd
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_eof(self) -> None:
        release_and_close(self.transport, half=True)

    def close(self) -> None:
        release_and_close(self.transport)

    def abort(self, reason: str) -> None:
        self.log.warn(
            "aborting BackupPC's connection on channel {channel_id} of {client_name}: {reason}",
            channel_id=self.channel.channel_id,
            client_name=self.tunnel.host,
            reason=reason,
        )
        self.transport.abortConnection()

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()


class LocalListenerFactory(Factory):
    """
    Makes a L{LocalConnectionProtocol} for each connection from BackupPC,
    after asking the tunnel whether it may carry one more (the client may
    have been revoked, or have too many connections open).
    """

    noisy = False

    def __init__(self, tunnel, local_users: LocalUsers | None = None,
                 refusals: ViolationCounter | None = None):
        self.tunnel = tunnel
        self.local_users = local_users
        self.refusals = refusals

    def buildProtocol(self, addr):
        if not self.tunnel.may_carry_connection():
            return None
        return LocalConnectionProtocol(self.tunnel, self.local_users, self.refusals)
