"""
A stand-in for C{rsync --daemon} run inetd-style that moves raw bytes as
fast as its socket allows, so that the benchmarks measure the transport and
not rsync.

Its stdin is a socket used both ways, as inetd gives rsync's daemon one:
the bpctunnel client starts it as it starts rsync (one end of a socket pair
on fd 0), and the ssh and direct baselines start it on each accepted TCP
socket.  Like rsync's daemon protocol, the connecting side (BackupPC's
stand-in) speaks first, with one line:

    send NBYTES      write NBYTES to the socket, then exit 0 (laptop -> server);
                     NBYTES may be huge: a reader that goes away ends it.
    receive NBYTES   read NBYTES from the socket, then write
                     "received NBYTES SECONDS\\n" and exit 0 (server -> laptop).

Only the standard library: the client gives it a minimal environment.
"""

from __future__ import annotations

import os
import sys
import time

BUFFER = 1 << 20
#: The socket, read and written (stdout is not it under bpctunnel).
SOCKET = 0


def read_command() -> tuple[str, int, bytes]:
    """The command line, and whatever bytes came after it in the same read."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(SOCKET, 65536)
        if not chunk:
            raise SystemExit("stand-in: stdin ended before a command")
        data += chunk
    line, rest = data.split(b"\n", 1)
    verb, count = line.decode().split()
    return verb, int(count), rest


def send(nbytes: int) -> None:
    block = memoryview(os.urandom(BUFFER))
    left = nbytes
    try:
        while left:
            left -= os.write(SOCKET, block[:min(left, BUFFER)])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the reader stopped early (latency.py does so on purpose)


def receive(nbytes: int, already: bytes) -> None:
    started = time.monotonic()
    got = len(already)
    buffer = bytearray(BUFFER)
    while got < nbytes:
        n = os.readv(SOCKET, [buffer])
        if not n:
            break
        got += n
    reply = f"received {got} {time.monotonic() - started:.3f}\n".encode()
    os.write(SOCKET, reply)


def main() -> int:
    verb, nbytes, rest = read_command()
    if verb == "send":
        send(nbytes)
    elif verb == "receive":
        receive(nbytes, rest)
    else:
        raise SystemExit(f"stand-in: unknown command {verb!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
