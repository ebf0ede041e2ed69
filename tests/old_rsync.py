"""
rsync 3.2.7, as laptops without updates run it (Debian 12's main suite,
Ubuntu 22.04/24.04), beside the machine's own newer rsync.

Debian's mirror keeps 3.2.7 in bookworm's main suite; the security suite's
3.5.0 is what C{apt-get install rsync} gives.  C{apt-get download} fetches
the 3.2.7 package, and its binary, unpacked under
C{/var/cache/bpctunnel-tests/rsync-3.2.7/}, runs with the libraries the
newer rsync already pulled in.  Made once per machine (under a lock).
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path("/var/cache/bpctunnel-tests")
VERSION = "3.2.7"


def _candidate() -> str:
    """The exact Debian version string of rsync 3.2.7 the mirror offers."""
    out = subprocess.run(["apt-cache", "madison", "rsync"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        version = line.split("|")[1].strip()
        if version.startswith(f"{VERSION}-"):
            return version
    raise RuntimeError(f"no rsync {VERSION} in apt's lists (apt-cache madison rsync:\n{out});"
                       f" run apt-get update with bookworm's main suite enabled")


def rsync_3_2_7() -> Path:
    """The path of an rsync 3.2.7 binary (downloaded and unpacked on first use)."""
    folder = CACHE / f"rsync-{VERSION}"
    binary = folder / "usr" / "bin" / "rsync"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"rsync-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            subprocess.run(["apt-get", "download", f"rsync={_candidate()}"], cwd=work,
                           check=True, capture_output=True, timeout=300)
            deb = next(Path(work).glob("rsync_*.deb"))
            unpacked = Path(work) / "root"
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=120)
            shutil.rmtree(folder, ignore_errors=True)
            unpacked.rename(folder)
    return binary
