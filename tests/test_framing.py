"""Tests for L{bpctunnel.wire.framing}: bytes in, messages out, and back."""

import struct

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.wire import framing
from bpctunnel.errors import BadFrame

channel_ids = st.integers(0, framing.MAX_CHANNEL_ID)
u32 = st.integers(0, 2**32 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
messages = st.one_of(
    st.builds(framing.Open, channel_ids, u32, st.dictionaries(st.text(max_size=10), json_values, max_size=4)),
    st.builds(framing.Accept, channel_ids, u32),
    st.builds(framing.Data, channel_ids, st.binary(max_size=300)),
    st.builds(framing.Eof, channel_ids),
    st.builds(framing.Close, channel_ids, st.integers(0, 255), st.text(max_size=50)),
    st.builds(framing.Credit, channel_ids, u32),
    st.builds(framing.Ping, st.binary(max_size=framing.MAX_PING_PAYLOAD)),
    st.builds(framing.Pong, st.binary(max_size=framing.MAX_PING_PAYLOAD)),
    st.builds(
        lambda t, extra: framing.Control({**extra, "type": t}),
        st.text(max_size=10),
        st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    ),
)


class EncodingTests(SynchronousTestCase):
    """The exact bytes of each message type."""

    def test_data_layout(self):
        """DATA is the type byte, a big-endian channel id, then the payload."""
        self.assertEqual(framing.encode(framing.Data(258, b"xyz")), b"\x03\x00\x00\x01\x02xyz")

    def test_open_layout(self):
        """OPEN carries the window and, if any, metadata as a JSON object."""
        self.assertEqual(
            framing.encode(framing.Open(2, 65536, {"peer": "127.0.0.1:5"})),
            b"\x01\x00\x00\x00\x02\x00\x01\x00\x00" + b'{"peer":"127.0.0.1:5"}',
        )
        self.assertEqual(framing.encode(framing.Open(2, 1)), b"\x01" + struct.pack(">II", 2, 1))

    def test_close_layout(self):
        """CLOSE carries a code byte and a UTF-8 reason."""
        self.assertEqual(
            framing.encode(framing.Close(7, framing.CLOSE_ERROR, "rsync fehlt ü")),
            b"\x05\x00\x00\x00\x07\x01" + "rsync fehlt ü".encode(),
        )

    def test_control_needs_type(self):
        """A control message without a string type cannot be encoded."""
        self.assertRaises(ValueError, framing.encode, framing.Control({"x": 1}))

    def test_reason_is_truncated(self):
        """An overlong reason is cut to MAX_REASON_BYTES when encoded."""
        encoded = framing.encode(framing.Close(1, 1, "x" * 5000))
        self.assertEqual(len(encoded), 6 + framing.MAX_REASON_BYTES)


class DecodingTests(SynchronousTestCase):
    """Malformed input raises L{BadFrame} with a specific message."""

    def assertBad(self, data, words):
        e = self.assertRaises(BadFrame, framing.decode, data)
        self.assertIn(words, str(e))

    def test_empty(self):
        self.assertBad(b"", "empty message")

    def test_truncated_data(self):
        self.assertBad(b"\x03\x00\x00", "DATA message too short")

    def test_credit_wrong_size(self):
        self.assertBad(b"\x06\x00\x00\x00\x01\x00", "CREDIT message must be 9 bytes")
        self.assertBad(b"\x06" + b"\x00" * 9, "CREDIT message must be 9 bytes")

    def test_open_bad_json(self):
        self.assertBad(b"\x01" + b"\x00" * 8 + b"{nope", "OPEN carries invalid JSON")
        self.assertBad(b"\x01" + b"\x00" * 8 + b"[1]", "not an object")

    def test_close_bad_utf8(self):
        self.assertBad(b"\x05\x00\x00\x00\x01\x01\xff", "not UTF-8")

    def test_control_without_type(self):
        self.assertBad(b"\x09{}", "no string 'type'")

    def test_ping_too_long(self):
        self.assertBad(b"\x07" + b"x" * 65, "exceeds 64")

    def test_unknown_type(self):
        """An unknown type byte has its own exception, so callers may skip it."""
        e = self.assertRaises(framing.UnknownMessageType, framing.decode, b"\x7fabc")
        self.assertEqual(e.kind, 0x7F)
        self.assertEqual(str(e), "unknown message type 0x7f")

    @given(messages)
    @settings(max_examples=300, deadline=None)
    def test_round_trip(self, message):
        """Every message decodes to itself."""
        self.assertEqual(framing.decode(framing.encode(message)), message)

    @given(messages)
    @settings(max_examples=300, deadline=None)
    def test_round_trip_from_memoryview(self, message):
        """A view of a received frame's payload decodes as its bytes do."""
        decoded = framing.decode(memoryview(framing.encode(message)))
        self.assertEqual(decoded, message)
        if isinstance(decoded, framing.Data):
            self.assertIsInstance(decoded.payload, bytes)

    @given(channel_ids, st.binary(max_size=300))
    def test_data_header(self, channel_id, payload):
        """A DATA message is its header followed by the payload."""
        self.assertEqual(framing.data_header(channel_id) + payload,
                         framing.encode(framing.Data(channel_id, payload)))

    @given(st.binary(max_size=100))
    @settings(max_examples=500, deadline=None)
    def test_garbage_is_bad_frame(self, data):
        """Arbitrary bytes either decode or raise BadFrame, nothing else."""
        try:
            message = framing.decode(data)
        except BadFrame:
            return
        self.assertEqual(framing.decode(framing.encode(message)), message)
