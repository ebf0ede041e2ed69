#!/usr/bin/env python3
"""
A TCP relay that delays each direction by a fixed time: a laptop far from
its BackupPC server, on a kernel without C{tc netem}.

    relay.py --listen 127.0.0.1:8443 --listen-netns /run/netns/laptop \
             --to 127.0.0.1:8443 --delay-ms 15

Each chunk read on one side is written to the other C{--delay-ms} later,
in order, so a round trip through the relay takes twice that on top of the
real one.  With C{--listen-netns}, the listening socket is made inside that
network namespace and the outgoing connections in the relay's own: a laptop
in a namespace of its own reaches the server's 127.0.0.1 only through the
relay, with no address but loopback on either side.  Each direction holds at most C{--buffer} bytes in flight before
it stops reading (TCP's own flow control then slows the sender).  Standard
library only: it runs inside the test container with Debian's python3.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Pipe:
    """One direction: reads from C{reader}, writes to C{writer} C{delay} seconds later."""

    def __init__(self, reader, writer, delay: float, limit: int):
        self.reader, self.writer = reader, writer
        self.delay, self.limit = delay, limit
        self.queue: collections.deque = collections.deque()
        self.queued = 0
        self.more = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.room.wait()
            data = await self.reader.read(256 * 1024)
            self.queue.append((loop.time() + self.delay, data))
            self.queued += len(data)
            if self.queued >= self.limit:
                self.room.clear()
            self.more.set()
            if not data:
                return

    async def write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.more.clear()
                await self.more.wait()
            due, data = self.queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(data)
            await self.writer.drain()
            self.queued -= len(data)
            if self.queued < self.limit:
                self.room.set()


def listening_socket(listen, netns: str | None) -> socket.socket:
    """A socket listening on C{listen}, made inside the namespace C{netns} if given."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY) if netns else None
    try:
        if netns:
            target = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(target, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(target)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(listen)
        sock.listen(128)
        return sock
    finally:
        if own is not None:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
            os.close(own)


async def serve(listen, target, delay: float, limit: int, netns: str | None = None) -> None:
    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError as e:
            print(f"relay: cannot reach {target}: {e}", file=sys.stderr, flush=True)
            client_writer.close()
            return
        pipes = [Pipe(client_reader, server_writer, delay, limit),
                 Pipe(server_reader, client_writer, delay, limit)]
        tasks = [asyncio.ensure_future(coro) for p in pipes for coro in (p.read(), p.write())]
        try:
            await asyncio.gather(*tasks)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_writer, server_writer):
                writer.close()

    server = await asyncio.start_server(handle, sock=listening_socket(listen, netns))
    print(f"relay: {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}, "
          f"{delay * 1000:g} ms each way", flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--listen-netns", help="make the listening socket in this namespace")
    parser.add_argument("--to", type=_address, required=True)
    parser.add_argument("--delay-ms", type=float, required=True, help="delay each way")
    parser.add_argument("--buffer", type=int, default=16 * 1024 * 1024)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.to, args.delay_ms / 1000, args.buffer,
                      args.listen_netns))


if __name__ == "__main__":
    main()
