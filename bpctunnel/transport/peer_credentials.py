"""
Which local user opened a TCP connection to us over loopback.

A Unix socket tells its peer's uid (C{SO_PEERCRED}); a TCP connection does
not, but on Linux the kernel lists every TCP socket of this network
namespace with its owner's uid in C{/proc/net/tcp} and C{/proc/net/tcp6}.
The connecting socket of a connection accepted from C{CLIENT} on our
C{SERVER} address is the row whose local address is C{CLIENT} and whose
remote address is C{SERVER}; its owner is the uid we want.  (Our own
accepted socket is the mirror row, owned by us.)

Reading the table is a read of kernel memory, no disk: a few milliseconds
for thousands of sockets, once per connection from BackupPC.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

PROC_NET = Path("/proc/net")
#: The state column's value for an established connection.
_ESTABLISHED = "01"
#: /proc/net/tcp rows are a few hundred bytes; a bound on what we read.
MAX_TABLE_BYTES = 64 * 1024 * 1024


def _address(field: str) -> tuple[str, int]:
    """C{("127.0.0.1", 8080)} from C{"0100007F:1F90"} (tcp) or its tcp6 form."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word of the address in host byte order.
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = struct.pack(f">{len(words)}I", *words)
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def _normal(host: str, port: int) -> tuple[str, int]:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), port


def owner_in_table(text: str, client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid column of the established row from C{client} to C{server}, if any."""
    client, server = _normal(*client), _normal(*server)
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != _ESTABLISHED:
            continue
        try:
            if _address(fields[1]) == client and _address(fields[2]) == server:
                return int(fields[7])
        except (ValueError, struct.error):
            continue
    return None


def tcp_connection_owner(client: tuple[str, int], server: tuple[str, int],
                         proc_net: Path = PROC_NET) -> int | None:
    """
    The uid of the local process socket that connected from C{client} to
    our C{server} address; None if it is not in the tables (gone already,
    another network namespace, not Linux).
    """
    for name in ("tcp", "tcp6"):
        try:
            with open(proc_net / name, encoding="ascii", errors="replace") as f:
                text = f.read(MAX_TABLE_BYTES)
        except OSError:
            continue
        uid = owner_in_table(text, client, server)
        if uid is not None:
            return uid
    return None
