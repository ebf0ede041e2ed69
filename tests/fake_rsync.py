#!/usr/bin/env python3
"""
A stand-in for C{rsync --daemon} (inetd mode) that pushes or swallows a known
byte stream, for the backpressure tests (tests/test_backpressure.py).

The client starts it exactly as it starts rsync, with one end of a socket
pair as stdin, which carries the bytes both ways.  Like rsync's daemon
protocol, the connecting side speaks first, with one line:

    send NBYTES
        Write NBYTES of the pattern to the socket as fast as it takes
        them, never read again, and exit 0.
    receive NBYTES RATE
        Read NBYTES from the socket, checking them against the pattern, at no
        more than RATE bytes per second (a deliberately slow reader: it
        sleeps between reads); then write
        "received NBYTES ok ELAPSED_SECONDS\\n" (or "mismatch ...") to
        the socket and exit 0.

The pattern is a running counter: every 8 KiB block starts with its own
64-bit block number, followed by fixed pseudo-random filler, so any lost,
repeated or reordered piece of the stream is detected.

Only the standard library is used: the client runs this with a minimal
environment.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import time

#: The counter's granularity.
BLOCK = 8 * 1024
#: Pattern chunks (and the unit of checking).
CHUNK = 64 * 1024
_BLOCKS_PER_CHUNK = CHUNK // BLOCK
_FILLER = random.Random(20240601).randbytes(BLOCK - 8)


def pattern_chunk(index: int) -> bytes:
    """Chunk C{index} (CHUNK bytes) of the pattern stream."""
    first = index * _BLOCKS_PER_CHUNK
    return b"".join(struct.pack(">Q", n) + _FILLER for n in range(first, first + _BLOCKS_PER_CHUNK))


class PatternChecker:
    """
    Checks a stream, fed in pieces of any size, against the pattern.

    C{error} is C{None} while everything matches, else what went wrong.
    """

    def __init__(self, total: int):
        if total % CHUNK:
            raise ValueError(f"the stream length must be a multiple of {CHUNK}, not {total}")
        self.total = total
        self.received = 0
        self.error: str | None = None
        self._buffer = bytearray()
        self._index = 0

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.received += len(data)
        if self.received > self.total:
            self.error = f"{self.received - self.total} bytes more than the {self.total} expected"
            return
        self._buffer += data
        while len(self._buffer) >= CHUNK:
            expected = pattern_chunk(self._index)
            if not self._buffer.startswith(expected):
                offset = next(i for i in range(CHUNK) if self._buffer[i] != expected[i])
                where = self._index * CHUNK + offset
                self.error = (f"mismatch at byte {where} (block {where // BLOCK}): the stream "
                              f"was corrupted, reordered or lost bytes")
                return
            del self._buffer[:CHUNK]
            self._index += 1

    @property
    def complete(self) -> bool:
        """All C{total} bytes arrived, and matched."""
        return self.error is None and self.received == self.total and not self._buffer


#: rsync's stdin in inetd mode: one end of a socket pair, read and written.
SOCKET = 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_header() -> tuple[list[str], bytes]:
    data = b""
    while b"\n" not in data:
        more = os.read(SOCKET, 65536)
        if not more:
            raise SystemExit(f"fake rsync: the socket ended before the command line: {data!r}")
        data += more
    line, rest = data.split(b"\n", 1)
    return line.decode("ascii").split(), rest


def send(total: int) -> None:
    for index in range(total // CHUNK):
        _write_all(SOCKET, pattern_chunk(index))


def receive(total: int, rate: float, first: bytes) -> None:
    checker = PatternChecker(total)
    start = time.monotonic()
    checker.feed(first)
    while checker.received < total and checker.error is None:
        data = os.read(SOCKET, 65536)
        if not data:
            break
        checker.feed(data)
        # The deliberately slow reader: stay at or below RATE bytes/second.
        ahead = start + checker.received / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - start
    if checker.complete:
        reply = f"received {checker.received} ok {elapsed:.3f}\n"
    else:
        reply = f"received {checker.received} of {total}: {checker.error or 'stream ended early'}\n"
    _write_all(SOCKET, reply.encode("ascii"))


def main(argv: list[str]) -> int:
    options = argv[2:]   # the client's --dparam overrides, which a stand-in ignores
    if (len(argv) < 2 or argv[0] != "--daemon" or not argv[1].startswith("--config=")
            or not all(o.startswith("--dparam=") for o in options)):
        print(f"fake rsync: unexpected arguments {argv!r}", file=sys.stderr)
        return 2
    words, rest = _read_header()
    match words:
        case ["send", nbytes]:
            send(int(nbytes))
        case ["receive", nbytes, rate]:
            receive(int(nbytes), float(rate), rest)
        case _:
            print(f"fake rsync: unknown command {words!r}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
