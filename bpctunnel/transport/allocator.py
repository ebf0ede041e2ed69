"""
glibc's malloc, tuned for a process that moves bulk data (issue 8).

The tunnel reads 256 KiB at a time and joins buffers of up to a few hundred
KiB.  By default glibc serves each allocation of 128 KiB or more with its own
mmap() and hands freed memory at the top of the heap back to the kernel once
128 KiB of it is free.  It raises both thresholds when it sees large blocks
freed, but not always far enough: then every read lands in memory the kernel
must fault in again, page by page.  In C{bench/throughput.py} that was
27,000 page faults a second in the server and 20-40% more CPU per GB, in
some runs and not others.  Fixed thresholds keep buffers of up to
L{MMAP_THRESHOLD} on the heap and up to L{TRIM_THRESHOLD} of freed heap in
the process.

Called once by the twistd plugins (the tunnel's long-running processes),
never by library code.  Elsewhere than glibc, or when the administrator set
glibc's own MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, it does nothing.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt() parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 2 * 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024

_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_bulk_buffers(environ=os.environ) -> bool:
    """
    Set glibc's mmap and trim thresholds for bulk buffers; C{True} if they
    were set.
    """
    if any(name in environ for name in _ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
