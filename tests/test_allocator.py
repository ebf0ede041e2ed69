"""
Tests for L{bpctunnel.transport.allocator}, each in a fresh Python process (malloc's
settings are per process and cannot be undone).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.transport.allocator import MMAP_THRESHOLD, keep_bulk_buffers

PROJECT = Path(__file__).resolve().parent.parent

#: Allocates a buffer of 1.5 MiB and frees it; reports where glibc put it
#: (mallinfo2: hblkhd is memory in mmap()ed blocks) and how much freed heap
#: the process kept.
PROBE = """
import ctypes, json, sys
from bpctunnel.transport.allocator import keep_bulk_buffers
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
tuned = keep_bulk_buffers() if sys.argv[1] == "tuned" else False
buffer = bytearray(1536 * 1024)
mapped = libc.mallinfo2().hblkhd
del buffer
print(json.dumps({"tuned": tuned, "mapped": mapped, "free_kept": libc.mallinfo2().fordblks}))
"""


def probe(mode: str) -> dict:
    output = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=PROJECT, check=True,
                            capture_output=True, text=True, timeout=60).stdout
    return json.loads(output)


class KeepBulkBuffersTests(SynchronousTestCase):
    def test_buffers_stay_on_the_heap(self):
        """Tuned, a 1.5 MiB buffer comes from the heap and stays there once freed."""
        result = probe("tuned")
        self.assertTrue(result["tuned"])
        self.assertLess(result["mapped"], 1536 * 1024)
        self.assertGreaterEqual(result["free_kept"], 1536 * 1024)
        self.assertLess(1536 * 1024, MMAP_THRESHOLD)

    def test_default_maps_the_same_buffer(self):
        """Without it glibc gives the same buffer its own mmap() (what the tuning avoids)."""
        result = probe("default")
        self.assertGreaterEqual(result["mapped"], 1536 * 1024)

    def test_administrator_setting_wins(self):
        """glibc's own environment variables, if set, are left to rule."""
        self.assertFalse(keep_bulk_buffers({"MALLOC_TRIM_THRESHOLD_": "131072"}))
        self.assertFalse(keep_bulk_buffers({"MALLOC_MMAP_THRESHOLD_": "131072"}))
