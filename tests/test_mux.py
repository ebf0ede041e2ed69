"""
Tests for L{bpctunnel.wire.mux}: the channel life cycle, half-close and flow
control, with two multiplexers wired back to back in memory (no sockets).
"""

from collections import deque

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from bpctunnel.wire import framing
from bpctunnel.errors import ProtocolError
from bpctunnel.wire.mux import MAX_DATA, Channel, ILocalEnd, Multiplexer


@implementer(ILocalEnd)
class FakeLocalEnd:
    """Records what a channel does to its local end."""

    def __init__(self):
        self.received = bytearray()
        self.eof = False
        self.closed = False
        self.aborted = None
        self.paused = False
        self.pause_count = 0

    def write(self, data):
        self.received += data

    def write_eof(self):
        self.eof = True

    def close(self):
        self.closed = True

    def abort(self, reason):
        self.aborted = reason

    def pause_reading(self):
        self.paused = True
        self.pause_count += 1

    def resume_reading(self):
        self.paused = False


class Wire:
    """Two multiplexers whose messages wait in queues until pumped."""

    def __init__(self, window=4096, accept=True, max_channels=8):
        self.to_client = deque()
        self.to_server = deque()
        self.client_channels = []
        self.server = Multiplexer(self.to_client.append, is_server=True, window=window, name="laptop1")
        self.client = Multiplexer(
            self.to_server.append,
            is_server=False,
            window=window,
            accept_channel=self._accept if accept else None,
            max_channels=max_channels,
            name="laptop1",
        )

    def _accept(self, channel):
        local = FakeLocalEnd()
        channel.attach(local)
        channel.accept()
        self.client_channels.append((channel, local))

    def pump(self):
        """Deliver queued messages both ways until nothing is left."""
        while self.to_client or self.to_server:
            while self.to_client:
                self.client.message_received(self.to_client.popleft())
            while self.to_server:
                self.server.message_received(self.to_server.popleft())

    def open(self):
        """Open a channel from the server, as a BackupPC connection does."""
        channel = self.server.open_channel({"peer": "127.0.0.1:40000"})
        local = FakeLocalEnd()
        channel.attach(local)
        self.pump()
        client_channel, client_local = self.client_channels[-1]
        return channel, local, client_channel, client_local


class LifeCycleTests(SynchronousTestCase):
    """Open, data, half-close and close."""

    def test_local_end_interface(self):
        """The fake honours the interface the real local ends implement."""
        verifyObject(ILocalEnd, FakeLocalEnd())

    def test_source_paused_until_accepted(self):
        """The opener reads nothing from BackupPC until the peer accepted."""
        wire = Wire()
        channel = wire.server.open_channel()
        local = FakeLocalEnd()
        channel.attach(local)
        self.assertTrue(local.paused)
        wire.pump()
        self.assertFalse(local.paused)
        self.assertTrue(channel.accepted)

    def test_metadata_reaches_peer(self):
        """OPEN's metadata is visible on the accepting side."""
        wire = Wire()
        _, _, client_channel, _ = wire.open()
        self.assertEqual(client_channel.metadata, {"peer": "127.0.0.1:40000"})
        self.assertEqual(client_channel.channel_id % 2, 0)

    def test_data_both_ways(self):
        """Bytes arrive in order in both directions."""
        wire = Wire()
        server_channel, server_local, client_channel, client_local = wire.open()
        server_channel.local_data(b"@RSYNCD: 31.0\n")
        server_channel.local_data(b"module\n")
        client_channel.local_data(b"@RSYNCD: OK\n")
        wire.pump()
        self.assertEqual(bytes(client_local.received), b"@RSYNCD: 31.0\nmodule\n")
        self.assertEqual(bytes(server_local.received), b"@RSYNCD: OK\n")
        self.assertEqual((server_channel.bytes_out, server_channel.bytes_in), (21, 12))

    def test_half_close_each_direction(self):
        """EOF ends one direction only; the other keeps flowing."""
        wire = Wire()
        server_channel, server_local, client_channel, client_local = wire.open()
        server_channel.local_eof()
        wire.pump()
        self.assertTrue(client_local.eof)
        self.assertFalse(server_local.eof)
        client_channel.local_data(b"still talking")
        wire.pump()
        self.assertEqual(bytes(server_local.received), b"still talking")

    def test_clean_close(self):
        """A local end that finishes sends EOF then CLOSE; both sides free the id."""
        wire = Wire()
        server_channel, server_local, client_channel, client_local = wire.open()
        client_channel.local_data(b"last words")
        client_channel.local_closed()
        wire.pump()
        self.assertEqual(bytes(server_local.received), b"last words")
        self.assertTrue(server_local.eof)
        self.assertTrue(server_local.closed)
        self.assertIsNone(server_local.aborted)
        self.assertEqual(wire.server.channels, {})
        self.assertEqual(wire.client.channels, {})

    def test_error_close_aborts_peer(self):
        """A failed channel aborts the peer's local end: no silent truncation."""
        wire = Wire()
        server_channel, server_local, client_channel, client_local = wire.open()
        client_channel.local_data(b"partial")
        client_channel.local_closed(error="rsync was killed by signal 9")
        wire.pump()
        self.assertEqual(server_local.aborted, "rsync was killed by signal 9")
        self.assertFalse(server_local.closed)
        self.assertEqual(wire.server.channels, {})

    def test_refused_channel(self):
        """A side that accepts no channels resets them with a reason."""
        wire = Wire(accept=False)
        channel = wire.server.open_channel()
        local = FakeLocalEnd()
        channel.attach(local)
        wire.pump()
        self.assertEqual(local.aborted, "this side accepts no channels")
        self.assertEqual(wire.server.channels, {})

    def test_accept_failure_resets(self):
        """An exception while accepting (say, rsync won't start) resets only that channel."""
        wire = Wire()

        def broken(channel):
            raise OSError("no such file: /usr/bin/rsync")

        wire.client._accept_channel = broken
        channel = wire.server.open_channel()
        local = FakeLocalEnd()
        channel.attach(local)
        wire.pump()
        self.assertIn("no such file: /usr/bin/rsync", local.aborted)
        self.flushLoggedErrors(OSError)

    def test_tunnel_lost_aborts_all(self):
        """When the WebSocket goes, every carried connection is aborted."""
        wire = Wire()
        opened = [wire.open() for _ in range(3)]
        wire.server.tunnel_lost("gone")
        self.assertEqual([o[1].aborted for o in opened], ["gone"] * 3)
        self.assertEqual(wire.server.channels, {})
        self.assertRaises(ProtocolError, wire.server.open_channel)

    def test_too_many_channels(self):
        """Channels beyond the limit are reset, the others carry on."""
        wire = Wire(max_channels=2)
        wire.open()
        wire.open()
        channel = wire.server.open_channel()
        local = FakeLocalEnd()
        channel.attach(local)
        wire.pump()
        self.assertEqual(local.aborted, "too many channels: at most 2 at once")
        self.assertEqual(len(wire.client.channels), 2)


class FlowControlTests(SynchronousTestCase):
    """Credit windows bound what is in flight and pause the sources."""

    def test_sender_stops_at_window(self):
        """With the receiver's sink paused, the sender sends one window, then pauses."""
        wire = Wire(window=4096)
        server_channel, server_local, client_channel, client_local = wire.open()
        client_channel.pauseProducing()  # rsync's stdin pipe is full
        server_channel.local_data(b"a" * 10000)
        wire.pump()
        self.assertEqual(len(client_local.received), 4096)
        self.assertTrue(server_local.paused)
        wire.pump()
        self.assertEqual(len(client_local.received), 4096)
        client_channel.resumeProducing()
        wire.pump()
        self.assertEqual(bytes(client_local.received), b"a" * 10000)
        self.assertFalse(server_local.paused)

    def test_data_beyond_credit_resets_channel(self):
        """A peer that ignores its credit gets the channel reset, not the tunnel."""
        wire = Wire(window=100)
        server_channel, server_local, client_channel, client_local = wire.open()
        other = wire.open()
        wire.client.message_received(framing.encode(framing.Data(server_channel.channel_id, b"x" * 101)))
        self.assertIn("with only 100 bytes of credit", client_local.aborted)
        wire.pump()
        self.assertIsNotNone(server_local.aborted)
        other[0].local_data(b"fine")
        wire.pump()
        self.assertEqual(bytes(other[3].received), b"fine")

    def test_large_writes_are_chunked(self):
        """No DATA message carries more than MAX_DATA bytes."""
        wire = Wire(window=1 << 20)
        server_channel, _, _, client_local = wire.open()
        server_channel.local_data(b"z" * (MAX_DATA * 2 + 5))
        sizes = [len(m) - 5 for m in wire.to_client if m[0] == framing.DATA]
        self.assertEqual(sizes, [MAX_DATA, MAX_DATA, 5])
        wire.pump()
        self.assertEqual(len(client_local.received), MAX_DATA * 2 + 5)

    def test_data_goes_down_in_pieces(self):
        """With send_pieces, a DATA message's header and payload are not joined."""
        pieces, whole = [], []
        mux = Multiplexer(whole.append, send_pieces=pieces.append, is_server=True)
        channel = mux.open_channel()
        mux.message_received(framing.encode(framing.Accept(channel.channel_id, 1 << 20)))
        payload = b"p" * 1000
        channel.local_data(payload)
        self.assertEqual(len(pieces), 1)
        header, sent = pieces[0]
        self.assertIs(sent, payload)
        self.assertEqual(header + sent, framing.encode(framing.Data(channel.channel_id, payload)))
        self.assertEqual([framing.decode(m).__class__ for m in whole], [framing.Open])

    def test_credit_is_batched(self):
        """Credit goes back in quarter-window batches, not per message."""
        wire = Wire(window=4000)
        server_channel, _, _, _ = wire.open()
        for _ in range(10):
            server_channel.local_data(b"y" * 100)
            wire.pump()
        credits = [m for m in wire.to_server if m[0] == framing.CREDIT]
        self.assertEqual(credits, [])
        # After 1000 bytes (a quarter of the window) one CREDIT of 1000 went back.
        self.assertEqual(server_channel._credit, 4000)

    def test_pending_flushed_after_local_close(self):
        """Data read before the local end closed is still delivered, then EOF."""
        wire = Wire(window=10)
        server_channel, _, client_channel, client_local = wire.open()
        client_channel.pauseProducing()
        server_channel.local_data(b"0123456789abcdef")
        server_channel.local_closed()
        wire.pump()
        self.assertEqual(bytes(client_local.received), b"0123456789")
        client_channel.resumeProducing()
        wire.pump()
        self.assertEqual(bytes(client_local.received), b"0123456789abcdef")
        self.assertTrue(client_local.eof)
        self.assertTrue(client_local.closed)

    def test_tunnel_pause_pauses_all_sources(self):
        """When the WebSocket transport is full, every channel stops reading."""
        wire = Wire()
        locals_ = [wire.open()[1] for _ in range(3)]
        wire.server.pauseProducing()
        self.assertEqual([l.paused for l in locals_], [True] * 3)
        wire.server.resumeProducing()
        self.assertEqual([l.paused for l in locals_], [False] * 3)


class ProtocolErrorTests(SynchronousTestCase):
    """Bad messages from the peer."""

    def test_unknown_channel(self):
        """DATA for a channel never opened is answered with CLOSE, and logged."""
        wire = Wire()
        wire.server.message_received(framing.encode(framing.Data(99, b"?")))
        self.assertEqual(
            framing.decode(wire.to_client.popleft()),
            framing.Close(99, framing.CLOSE_ERROR, "unknown channel"),
        )

    def test_wrong_parity_open(self):
        """The client may not open an even (server-owned) channel id."""
        wire = Wire()
        self.assertRaises(
            ProtocolError, wire.client.message_received, framing.encode(framing.Open(1, 10))
        )

    def test_garbage_raises(self):
        """Undecodable bytes raise ProtocolError for the caller to close the tunnel."""
        wire = Wire()
        self.assertRaises(ProtocolError, wire.server.message_received, b"\x03\x00")

    def test_unknown_type_ignored(self):
        """A message type from a newer version is skipped."""
        wire = Wire()
        wire.server.message_received(b"\x70hello")
        self.assertEqual(list(wire.to_client), [])

    def test_ping_answered(self):
        """PING is answered with a PONG carrying the same payload."""
        wire = Wire()
        pongs = []
        wire.server._on_pong = pongs.append
        wire.server.send(framing.Ping(b"t=1"))
        wire.pump()
        self.assertEqual(pongs, [b"t=1"])

    def test_data_after_eof(self):
        """DATA after EOF resets the channel."""
        wire = Wire()
        server_channel, server_local, client_channel, client_local = wire.open()
        cid = server_channel.channel_id
        wire.client.message_received(framing.encode(framing.Eof(cid)))
        wire.client.message_received(framing.encode(framing.Data(cid, b"late")))
        self.assertEqual(client_local.aborted, f"DATA after EOF on channel {cid}")

    def test_channel_repr(self):
        """Channels describe themselves for logs."""
        wire = Wire()
        channel = wire.open()[0]
        self.assertIsInstance(channel, Channel)
        self.assertEqual(repr(channel), f"<Channel {channel.channel_id} in=0 out=0>")
