"""
Boot a real Debian 12 (bookworm) with systemd as PID 1, for system tests.

Two pieces:

``ensure_rootfs()``
    Makes, once, a Debian 12 root file system and caches it.  The recipe is
    ``debootstrap --variant=minbase bookworm`` and then, inside it (run by
    ``systemd-nspawn`` without ``-b``, with a ``policy-rc.d`` that forbids
    starting services), ``apt-get install --no-install-recommends`` of
    ``PACKAGES``: systemd, dbus, Debian's own ``backuppc`` (which pulls
    apache2 and exim4) with its direct recommends (smbclient...: BackupPC's
    default config refuses to start without it), rsync, python3 3.11...  An
    ordinary user ``alice`` (uid 1000) is created, the host name is
    ``bpctest``, ``/etc/machine-id`` is left empty (each boot gets its own)
    and ``policy-rc.d`` is removed again.  The container's apt sources are
    **bookworm main only** (no bookworm-security, no bookworm-updates), so
    its rsync is 3.2.7, as on a laptop that never installed updates.

    Cache: ``/var/cache/bpctunnel-tests/rootfs-<hash>/`` (a directory, about
    510 MB), where ``<hash>`` covers ``RECIPE_VERSION``, ``SUITE``,
    ``PACKAGES``, ``HOSTNAME`` and the setup script, so changing any of them
    builds a new one.  The build takes about a minute with a fast mirror; it
    happens under a file lock (``.lock``: parallel runs wait for one
    builder) into ``rootfs-<hash>.partial-<pid>``, renamed into place only
    once complete, so a partial build never counts as cached (an interrupted
    one is deleted by the next build).  Caches of other recipes unused for
    ``PRUNE_AFTER_DAYS`` are deleted when a new one is built.  Environment:
    ``BPCTUNNEL_TEST_CACHE=/some/dir`` moves the cache,
    ``BPCTUNNEL_TEST_MIRROR=http://...`` picks the Debian mirror,
    ``BPCTUNNEL_TEST_WORKDIR`` the folder of the per-container copies
    (default ``/var/tmp``).

    Force a rebuild: ``python3 -m tests.system.nspawn --rebuild`` from the
    checkout (not while tests run: running containers use the cache as
    their lower layer), or ``rm -rf /var/cache/bpctunnel-tests``.
    ``python3 -m tests.system.nspawn`` alone builds the cache if missing and
    prints its path (to warm a CI machine); ``--boot`` boots it once too.

``Container``
    Mounts a fresh writable copy of the cached rootfs (overlayfs: the cache
    as the read-only lower layer, the changes in a temporary folder under
    ``/var/tmp``; a plain ``cp -a`` if overlayfs is refused) and boots it
    with ``systemd-nspawn -b --register=no --keep-unit --private-network``.
    Its own network namespace: its 127.0.0.1 never collides with the host's
    or another run's ports (8443...), and it has **no network** beyond its
    loopback (which systemd brings up): whatever a test installs there must
    be in ``PACKAGES`` or be copied in (``dpkg -i`` of a package whose
    dependencies are all installed needs no network; ``apt-get -f install``
    that must download does).  ``Container(private_network=False)`` shares
    the host's network instead.

    It learns the container's PID 1 and its readiness from nspawn's own
    ``sd_notify`` messages (``X_NSPAWN_LEADER_PID=``, and ``READY=1`` with
    ``--notify-ready=yes``), then checks ``systemctl is-system-running
    --wait``; "degraded" is accepted and the failed units are reported
    (``Container.failed_units``, printed to stderr).  Commands run inside
    with ``nsenter -t <PID 1> -a``, as root or (``user=``) as any user via
    ``setpriv``.  ``stop()`` (or leaving the ``with`` block) powers it off
    (SIGTERM to nspawn, which it turns into SIGRTMIN+3 for the container's
    systemd), kills it if it does not stop within ``stop_timeout``, and
    always removes the copy.  nspawn gets SIGTERM too if the thread that
    started it dies (PR_SET_PDEATHSIG): start containers from the main
    thread, as the fixtures do.

Nothing here sleeps: it waits on processes, sockets, pidfds and inotify,
each with a bounded timeout.  The calls block: from Twisted code, call them
in a thread (``deferToThread``) or outside the reactor.  Missing host tools
(``systemd-nspawn``, ``debootstrap``, ``nsenter``) raise ``MissingTool``
with the ``apt-get install`` line to run; the fixtures turn that into a
test failure, never a skip.  Everything here needs root.

Host packages: ``systemd-container`` (systemd-nspawn), ``debootstrap``;
``util-linux`` (nsenter, mount), ``coreutils`` and ``tar`` are essential.

Parallel containers (several pytest runs at once) are fine: each nspawn
gets a cgroup of its own (see ``_own_cgroups``; without it, containers
started with ``--keep-unit`` share one cgroup tree and break each other's
units), a unique machine name and its own network namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import re
import select
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SUITE = "bookworm"

#: Bump to force every machine to rebuild its cache (also hashed: PACKAGES and
#: the setup script, so editing either rebuilds too).
RECIPE_VERSION = 1

#: Installed with ``apt-get install --no-install-recommends`` (apt adds the
#: dependencies: apache2, exim4, perl...).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "dbus-user-session",  # a user bus, for systemd-run --user & co.
    "libpam-systemd",
    "backuppc",
    # backuppc's Recommends, which `apt-get install backuppc` brings on a
    # real server (their own recommends are left out: gnupg, X11 libs...).
    # Without smbclient, BackupPC's default config makes it exit at start:
    # "$Conf{SmbClientPath} = '/usr/bin/smbclient' is not a valid executable".
    "libio-dirent-perl",
    "openssh-client",
    "rrdtool",
    "samba-common-bin",
    "smbclient",
    "rsync",
    "python3",
    "ca-certificates",
    "iproute2",
    "procps",
    "util-linux",
    "openssl",
)

#: The container's host name, fixed at build time (backuppc's postinst records
#: it) and at every boot.
HOSTNAME = "bpctest"

#: An ordinary user, for tests of per-user units.
USER = "alice"
USER_UID = 1000

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = "/var/cache/bpctunnel-tests"

#: Run inside the debootstrapped tree (by ``systemd-nspawn`` without ``-b``,
#: which gives it /proc, /dev and the host's network, and leaves no mounts
#: behind).  ``$PACKAGES`` is set by the caller.
SETUP_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
apt-get update -q
apt-get install -y -q --no-install-recommends $PACKAGES
useradd --create-home --uid __UID__ --user-group --shell /bin/bash __USER__
apt-get clean
# A booted container must behave as a real machine: services start again.
rm -f /usr/sbin/policy-rc.d
# Each boot gets its own machine id (nspawn supplies one when this is empty).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
: > /etc/resolv.conf
""".replace("__UID__", str(USER_UID)).replace("__USER__", USER)

_INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_USER_PATH = "/usr/local/bin:/usr/bin:/bin"


class MissingTool(RuntimeError):
    """A host program the system tests need is not installed."""


class ContainerError(RuntimeError):
    """The container did not boot, or did not stop, or a command failed."""


def _log(message: str) -> None:
    print(f"[nspawn] {message}", file=sys.stderr, flush=True)


def require_tools(*names: str) -> dict[str, str]:
    """Return {name: path} for host programs; raise MissingTool otherwise."""
    packages = {
        "systemd-nspawn": "systemd-container",
        "debootstrap": "debootstrap",
        "nsenter": "util-linux",
        "tar": "tar",
        "cp": "coreutils",
    }
    found, missing = {}, []
    for name in names:
        path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        need = sorted({packages.get(n, n) for n in missing})
        raise MissingTool(
            f"the system tests need {', '.join(missing)} on the host (not "
            f"found): run `apt-get install -y {' '.join(need)}`"
        )
    if os.geteuid() != 0:
        raise MissingTool("the system tests boot containers and must run as root")
    return found


# ---------------------------------------------------------------------------
# The cached root file system
# ---------------------------------------------------------------------------


def recipe_hash() -> str:
    recipe = {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "hostname": HOSTNAME,
        "script": SETUP_SCRIPT,
    }
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("BPCTUNNEL_TEST_CACHE", DEFAULT_CACHE))


def rootfs_path() -> Path:
    """Where the cached rootfs for the current recipe lives (or would)."""
    return cache_dir() / f"rootfs-{recipe_hash()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(path) or point.startswith(prefix):
                found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf that never crosses into a mount (e.g. a leftover /proc)."""
    if not os.path.lexists(path):
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def _run_logged(argv: list[str], *, timeout: float, **kw) -> None:
    """Run a build step with its output on our stderr (progress)."""
    _log("$ " + shlex.join(argv))
    sys.stderr.flush()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=2, stderr=2,
                          timeout=timeout, **kw)
    if proc.returncode != 0:
        raise ContainerError(f"rootfs build step failed ({proc.returncode}): "
                             f"{shlex.join(argv)}")


def _build(target: Path, tools: dict[str, str]) -> None:
    mirror = os.environ.get("BPCTUNNEL_TEST_MIRROR", DEFAULT_MIRROR)
    _run_logged([tools["debootstrap"], "--variant=minbase", SUITE, str(target),
                 mirror], timeout=1800)
    (target / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
    for extra in (target / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    policy = target / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# no service starts while building\nexit 101\n")
    policy.chmod(0o755)
    (target / "etc/hostname").write_text(HOSTNAME + "\n")
    (target / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n")
    _run_logged([
        tools["systemd-nspawn"], "--quiet", "--register=no", "--keep-unit",
        "--console=pipe", f"--hostname={HOSTNAME}", "--resolv-conf=copy-host",
        "--timezone=off", "--link-journal=no",
        f"--setenv=PACKAGES={' '.join(PACKAGES)}", "-D", str(target),
        "/bin/sh", "-c", SETUP_SCRIPT,
    ], timeout=3600)
    if (target / "usr/sbin/policy-rc.d").exists():
        raise ContainerError("setup script did not finish")


def ensure_rootfs(*, rebuild: bool = False) -> Path:
    """Return the cached rootfs for the current recipe, building it if needed.

    Safe to call from parallel processes: one builds, the others wait on the
    lock and then reuse its result.  ``rebuild=True`` discards the cached
    copy first.
    """
    tools = require_tools("debootstrap", "systemd-nspawn")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = rootfs_path()
    if final.is_dir() and not rebuild:
        os.utime(final)  # "last used", for _prune_unused
        return final
    with open(cache / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process building {final}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        # Leftovers of builds whose process died.
        for stale in cache.glob("rootfs-*.partial-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                _log(f"removing an interrupted build: {stale}")
                remove_tree(stale)
        if rebuild and final.is_dir():
            _log(f"discarding {final}")
            old = final.with_name(final.name + f".partial-{os.getpid()}")
            final.rename(old)
            remove_tree(old)
        elif final.is_dir():
            return final  # someone else built it while we waited
        partial = final.with_name(final.name + f".partial-{os.getpid()}")
        remove_tree(partial)
        started = time.monotonic()
        _log(f"building the Debian {SUITE} rootfs into {final} (a few minutes, "
             "done once per recipe)")
        try:
            _build(partial, tools)
            partial.rename(final)
        except BaseException:
            remove_tree(partial)
            raise
        _log(f"rootfs built in {time.monotonic() - started:.0f} s: {final}")
        _prune_unused(cache, keep=final)
        return final


#: A cached rootfs of another recipe unused for this long is deleted when a
#: new one is built.  (Not at once: another checkout may still use it, even
#: as the lower layer of a running container.)
PRUNE_AFTER_DAYS = 7


def _prune_unused(cache: Path, *, keep: Path) -> None:
    limit = time.time() - PRUNE_AFTER_DAYS * 86400
    for old in cache.glob("rootfs-*"):
        if old == keep or ".partial-" in old.name or not old.is_dir():
            continue
        if old.stat().st_mtime < limit:
            _log(f"removing {old}, unused for {PRUNE_AFTER_DAYS} days")
            remove_tree(old)


# ---------------------------------------------------------------------------
# A booted container
# ---------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _nspawn_preexec(cgroups: list[Path]):
    def preexec() -> None:  # runs in the child, before exec
        # Into the container's own cgroups (see _own_cgroups).
        for cg in cgroups:
            with open(cg / "cgroup.procs", "w") as f:
                f.write("0")
        # If the test process dies, nspawn gets SIGTERM, which powers the
        # container off (nspawn turns it into SIGRTMIN+3 for the
        # container's systemd).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return preexec


def _own_cgroups(name: str) -> list[Path]:
    """Make a fresh cgroup per hierarchy nspawn uses; return their paths.

    With ``--keep-unit`` nspawn runs the container in the cgroup it was
    started in (creating ``payload``/``supervisor`` under it).  Without a
    cgroup of their own, parallel containers share one tree and their
    systemds trample on each other's cgroups ("Failed at step CGROUP ...
    No such file or directory", stuck shutdowns).  So each nspawn is moved
    (before exec) into ``<our cgroup>/bpctunnel-<name>``: in the
    ``name=systemd`` and the unified hierarchy (hybrid host, as here), or
    in the cgroup2 tree (pure v2 host).  Best effort: where they cannot be
    made, containers still boot but must not run in parallel.
    """
    root = Path("/sys/fs/cgroup")
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    if (root / "cgroup.controllers").exists():  # pure cgroup v2
        candidates = [(root, own.get("", "/"))]
    else:
        candidates = [(root / "systemd", own.get("name=systemd", "/")),
                      (root / "unified", own.get("", "/"))]
    made = []
    for base, path in candidates:
        if not (base / "cgroup.procs").exists():
            continue
        cg = base / path.lstrip("/") / f"bpctunnel-{name}"
        try:
            cg.mkdir()
        except OSError as e:
            _log(f"cannot make cgroup {cg} ({e}): parallel containers may "
                 "interfere")
            continue
        made.append(cg)
    return made


def _remove_cgroup(cg: Path) -> None:
    """rmdir a cgroup and what the container left under it (bottom-up)."""
    if not cg.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(cg), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError as e:
            _log(f"cannot remove cgroup {dirpath}: {e}")


def _kill_and_wait(pid: int, *, timeout: float) -> None:
    """SIGKILL ``pid`` (not our child) and wait until it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        # A pidfd becomes readable when its process has terminated.
        if not select.select([pidfd], [], [], timeout)[0]:
            _log(f"PID {pid} still there {timeout:.0f} s after SIGKILL")
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _sweep_leftover_copies(parent: Path) -> None:
    for old in parent.glob("bpctunnel-ct-*"):
        m = re.match(r"bpctunnel-ct-(\d+)-", old.name)
        if m and not _pid_alive(int(m.group(1))):
            remove_tree(old)


class Container:
    """A Debian 12 booted under systemd-nspawn, systemd as its PID 1.

    ::

        with Container(ensure_rootfs()) as ct:
            ct.systemctl("start", "backuppc")
            print(ct.run(["rsync", "--version"]).stdout)

    Attributes once started: ``root`` (its file tree on the host), ``leader``
    (host PID of its PID 1), ``name`` (machine name), ``state`` ("running" or
    "degraded"), ``failed_units`` (list of unit names), ``console_log`` (host
    path of nspawn's output: the boot messages).
    """

    #: Host folder for the per-container overlay (or copy, where overlayfs
    #: is refused).
    workdir = Path(os.environ.get("BPCTUNNEL_TEST_WORKDIR", "/var/tmp"))

    def __init__(self, rootfs: Path | str, *, private_network: bool = True,
                 boot_timeout: float = 120, stop_timeout: float = 60,
                 name: str | None = None):
        self.rootfs = Path(rootfs)
        self.private_network = private_network
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.name = name or f"bpct-{uuid.uuid4().hex[:12]}"
        self.tmp: Path | None = None
        self.root: Path | None = None
        self.leader: int | None = None
        self.state: str | None = None
        self.failed_units: list[str] = []
        self.console_log: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._notify: socket.socket | None = None
        self._users: dict[str, tuple[int, int, str]] = {}
        self._linger: set[str] = set()
        self._tools: dict[str, str] = {}
        self._overlay = False
        self._cgroups: list[Path] = []

    # -- life cycle ---------------------------------------------------------

    def __enter__(self) -> "Container":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._tools = require_tools("systemd-nspawn", "nsenter", "cp")
        if not (self.rootfs / "sbin/init").exists():
            raise ContainerError(f"{self.rootfs} is not a bootable rootfs")
        self.workdir.mkdir(parents=True, exist_ok=True)
        _sweep_leftover_copies(self.workdir)
        self.tmp = Path(tempfile.mkdtemp(
            prefix=f"bpctunnel-ct-{os.getpid()}-", dir=self.workdir))
        try:
            self._boot()
        except BaseException:
            self.stop()
            raise

    def _boot(self) -> None:
        assert self.tmp is not None
        started = time.monotonic()
        self.root = self.tmp / "root"
        self.root.mkdir()
        self._make_root()
        copied = time.monotonic()

        notify_path = self.tmp / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.setblocking(False)

        argv = [
            self._tools["systemd-nspawn"], "--quiet", "--boot",
            "--register=no", "--keep-unit", "-D", str(self.root),
            f"--machine={self.name}", f"--hostname={HOSTNAME}",
            "--notify-ready=yes", "--console=read-only", "--link-journal=no",
            "--timezone=off",
        ]
        if self.private_network:
            argv.append("--private-network")
        env = {"PATH": os.environ.get("PATH", _INNER_PATH),
               "NOTIFY_SOCKET": str(notify_path), "LANG": "C.UTF-8"}
        self.console_log = self.tmp / "console.log"
        self._cgroups = _own_cgroups(self.name)
        with open(self.console_log, "wb") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=env, preexec_fn=_nspawn_preexec(self._cgroups))
        self._wait_ready(time.monotonic() + self.boot_timeout)

        # READY=1 came from the container's systemd: its start-up job queue
        # is empty, so this returns at once with the final state.
        res = self.run(["systemctl", "is-system-running", "--wait"],
                       check=False, timeout=max(10.0, self.boot_timeout))
        self.state = res.stdout.strip()
        if self.state == "degraded":
            failed = self.systemctl("list-units", "--failed", "--plain",
                                    "--no-legend", check=False).stdout
            self.failed_units = [ln.split()[0] for ln in failed.splitlines()
                                 if ln.strip()]
            _log(f"container {self.name} is degraded; failed units: "
                 f"{', '.join(self.failed_units) or '(none listed)'}")
            for unit in self.failed_units:
                _log(self.journal(unit, lines=30))
        elif self.state != "running":
            raise ContainerError(
                f"container {self.name} booted into state {self.state!r}:\n"
                + self._diagnostics())
        _log(f"container {self.name} up (copy {copied - started:.1f} s, boot "
             f"{time.monotonic() - copied:.1f} s, PID 1 = host PID "
             f"{self.leader}, state {self.state})")

    def _make_root(self) -> None:
        """A writable copy of the rootfs at ``self.root``.

        An overlay mount (the cache as its read-only lower layer, the
        container's changes in ``tmp/upper``) costs nothing; where overlayfs
        is refused, a plain ``cp -a`` (a few seconds).
        """
        assert self.tmp is not None and self.root is not None
        upper, work = self.tmp / "upper", self.tmp / "work"
        upper.mkdir()
        work.mkdir()
        res = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.rootfs},upperdir={upper},workdir={work}",
             str(self.root)], capture_output=True, text=True, timeout=60)
        if res.returncode == 0:
            self._overlay = True
            return
        _log(f"overlayfs refused ({res.stderr.strip()}); copying the rootfs")
        subprocess.run([self._tools["cp"], "-a", "--reflink=auto",
                        f"{self.rootfs}/.", f"{self.root}/"], check=True,
                       timeout=600)

    def _wait_ready(self, deadline: float) -> None:
        """Wait for nspawn's X_NSPAWN_LEADER_PID and READY=1, or its death."""
        assert self._proc is not None and self._notify is not None
        pidfd = os.pidfd_open(self._proc.pid)
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._notify, selectors.EVENT_READ, "notify")
            sel.register(pidfd, selectors.EVENT_READ, "exit")
            ready = False
            while not (ready and self.leader):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ContainerError(
                        f"container {self.name} not ready after "
                        f"{self.boot_timeout:.0f} s:\n" + self._diagnostics())
                for key, _ in sel.select(remaining):
                    if key.data == "exit":
                        self._proc.wait()
                        raise ContainerError(
                            f"systemd-nspawn exited ({self._proc.returncode}) "
                            f"before the container was ready:\n"
                            + self._diagnostics())
                    try:
                        msg = self._notify.recv(65536).decode(errors="replace")
                    except BlockingIOError:
                        continue
                    for line in msg.splitlines():
                        if line.startswith("X_NSPAWN_LEADER_PID="):
                            self.leader = int(line.split("=", 1)[1])
                        elif line == "READY=1":
                            ready = True
        finally:
            sel.close()
            os.close(pidfd)

    def _console_tail(self, size: int = 4000) -> str:
        if self.console_log and self.console_log.exists():
            text = self.console_log.read_text(errors="replace")
            return "--- nspawn console (tail) ---\n" + text[-size:]
        return ""

    def _diagnostics(self) -> str:
        parts = [self._console_tail()]
        if self.leader and self._proc and self._proc.poll() is None:
            try:
                parts.append("--- systemctl --failed ---\n" + self.systemctl(
                    "list-units", "--failed", "--no-pager", check=False,
                    timeout=15).stdout)
            except Exception as e:  # noqa: BLE001 - best effort
                parts.append(f"(no systemctl: {e})")
        return "\n".join(parts)

    def stop(self) -> None:
        """Power off (bounded), kill if needed, remove the copy.  Idempotent."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                # nspawn forwards SIGTERM as SIGRTMIN+3: orderly poweroff.
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    _log(f"container {self.name} did not power off in "
                         f"{self.stop_timeout:.0f} s; killing it\n"
                         + self._console_tail())
                    if self.leader:
                        # SIGKILL to a PID namespace's init kills it all.
                        _kill_and_wait(self.leader, timeout=30)
                    proc.kill()
                    proc.wait(timeout=30)
        finally:
            if self._notify is not None:
                self._notify.close()
                self._notify = None
            self.leader = None
            for cg in self._cgroups:
                _remove_cgroup(cg)
            self._cgroups = []
            if self.tmp is not None:
                # remove_tree unmounts the overlay first (and anything else
                # left mounted under tmp), then deletes.
                remove_tree(self.tmp)
                self.tmp = None

    # -- commands -----------------------------------------------------------

    def _user(self, user: str) -> tuple[int, int, str]:
        if user not in self._users:
            res = self.run(["getent", "passwd", user], check=False)
            if res.returncode != 0:
                raise ContainerError(f"no user {user!r} in the container")
            f = res.stdout.strip().split(":")
            self._users[user] = (int(f[2]), int(f[3]), f[5])
        return self._users[user]

    def command(self, argv: list[str], *, user: str | None = None,
                env: dict[str, str] | None = None,
                cwd: str | None = None) -> list[str]:
        """The host argv that runs ``argv`` inside (see ``run``)."""
        if self.leader is None:
            raise ContainerError("the container is not running")
        if user is None or user == "root":
            base = {"PATH": _INNER_PATH, "HOME": "/root", "USER": "root",
                    "LOGNAME": "root", "SHELL": "/bin/bash"}
            prefix: list[str] = []
            home = "/"
        else:
            uid, gid, home = self._user(user)
            base = {"PATH": _USER_PATH, "HOME": home, "USER": user,
                    "LOGNAME": user, "SHELL": "/bin/bash",
                    "XDG_RUNTIME_DIR": f"/run/user/{uid}",
                    "DBUS_SESSION_BUS_ADDRESS":
                        f"unix:path=/run/user/{uid}/bus"}
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
                      "--init-groups", "--"]
        base.update({"LANG": "C.UTF-8", "TERM": "dumb", "SYSTEMD_PAGER": "",
                     "SYSTEMD_COLORS": "0", "PAGER": "cat"})
        base.update(env or {})
        inner = ["env", "-i", "-C", cwd or home,
                 *(f"{k}={v}" for k, v in base.items()), *argv]
        return [self._tools["nsenter"], "-t", str(self.leader), "-a", "--",
                *prefix, *inner]

    def run(self, argv: list[str], *, user: str | None = None,
            input: str | bytes | None = None, timeout: float = 120,
            check: bool = True, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the container and wait for it.

        As root by default, with a clean environment (PATH, HOME=/root,
        LANG=C.UTF-8); with ``user=``, as that user (``setpriv``, no PAM
        session) with HOME, USER, XDG_RUNTIME_DIR=/run/user/UID and
        DBUS_SESSION_BUS_ADDRESS set, in its home folder.  ``env`` adds
        variables, ``cwd`` sets the folder.  Output is text unless ``input``
        is bytes.  On timeout what it started is killed (see ``kill``) and
        ``subprocess.TimeoutExpired`` raised; with ``check`` a non-zero exit
        raises ``subprocess.CalledProcessError`` (its message includes
        stdout and stderr).
        """
        cmd = self.command(argv, user=user, env=env, cwd=cwd)
        text = not isinstance(input, bytes)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None
                                else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=text, start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            proc.communicate()
            raise
        res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and res.returncode != 0:
            raise _CommandFailed(res.returncode, argv, out, err,
                                 user=user or "root")
        return res

    def spawn(self, argv: list[str], *, user: str | None = None,
              env: dict[str, str] | None = None, cwd: str | None = None,
              **popen_kw) -> subprocess.Popen:
        """Start ``argv`` inside without waiting (same rules as ``run``).

        The caller owns the returned Popen: stop it with ``kill(p)``.
        """
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.command(argv, user=user, env=env, cwd=cwd),
                                start_new_session=True, **popen_kw)

    @staticmethod
    def kill(proc: subprocess.Popen, *, timeout: float = 30) -> None:
        """SIGKILL what ``spawn`` (or ``run``) started inside, and reap it.

        Not ``os.killpg``: if ``nsenter`` died with its child, the child,
        orphaned outside its own PID namespace, would stay a zombie that
        the container's systemd can't reap, and the container's shutdown
        would wait 10 s for it.  So the processes of the group inside the
        container are killed first; ``nsenter`` reaps its child and exits.
        """
        if proc.poll() is not None:
            return
        group = proc.pid  # spawned with start_new_session: pgid == pid
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == proc.pid:
                continue
            try:
                if os.getpgid(int(entry)) == group:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            proc.wait(timeout=timeout)

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        """``run(["sh", "-ec", script])``."""
        return self.run(["sh", "-ec", script], **kw)

    def write_file(self, path: str, content: str | bytes, *, mode: int = 0o644,
                   owner: str | None = None) -> None:
        """Write ``content`` to ``path`` inside (atomically, parents made).

        ``owner`` is ``user`` or ``user:group``; root's otherwise.
        """
        script = ('set -e; d=$(dirname "$1"); mkdir -p "$d"; '
                  't=$(mktemp "$1.XXXXXX"); cat > "$t"; chmod "$2" "$t"; '
                  'if [ -n "$3" ]; then chown "$3" "$t"; fi; mv -f "$t" "$1"')
        data = content.encode() if isinstance(content, str) else content
        self.run(["sh", "-c", script, "sh", path, f"{mode:o}", owner or ""],
                 input=data)

    def read_file(self, path: str) -> str:
        return self.run(["cat", "--", path]).stdout

    def copy_in(self, host_path: str | os.PathLike, container_path: str, *,
                owner: str | None = None) -> None:
        """Copy a host file or folder to ``container_path`` inside.

        A file becomes ``container_path`` (mode kept); a folder's contents
        go into ``container_path`` (created).  Files end up owned by root,
        or by ``owner`` (``user`` or ``user:group``, applied recursively).
        Goes through tar in the container's own namespaces, so symlinks and
        mounts inside (e.g. /run, /tmp) resolve as the container sees them.
        """
        src = Path(host_path)
        if src.is_dir():
            tar = subprocess.run(["tar", "-C", str(src), "-cf", "-", "."],
                                 check=True, stdout=subprocess.PIPE).stdout
            script = ('set -e; mkdir -p "$1"; tar --no-same-owner -xf - -C "$1"; '
                      'if [ -n "$2" ]; then chown -R "$2" "$1"; fi')
            self.run(["sh", "-c", script, "sh", container_path, owner or ""],
                     input=tar, timeout=600)
        else:
            self.write_file(container_path, src.read_bytes(),
                            mode=src.stat().st_mode & 0o7777, owner=owner)

    def wait_for_path(self, path: str, *, timeout: float = 60,
                      user: str | None = None) -> None:
        """Block until ``path`` exists inside (a file, socket, folder...).

        For what ``systemctl start`` cannot wait for, e.g. the socket a
        ``Type=simple`` service creates once running
        (``/run/backuppc/BackupPC.sock``).  No polling: a python3 inside
        watches the deepest existing parent with inotify and re-checks on
        each event, until the deadline.  Raises ``ContainerError`` on
        timeout.
        """
        res = self.run(["python3", "-c", _WAIT_FOR_PATH, path, str(timeout)],
                       user=user, check=False, timeout=timeout + 30)
        if res.returncode != 0:
            raise ContainerError(f"{path} did not appear in the container "
                                 f"within {timeout:.0f} s {res.stderr}")

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = 120) -> subprocess.CompletedProcess:
        """``systemctl ARGS`` as root inside (``start`` blocks until up)."""
        return self.run(["systemctl", *args], check=check, timeout=timeout)

    def journal(self, unit: str, *, user_unit: bool = False,
                identifier: str | None = None,
                lines: int | None = None) -> str:
        """This boot's journal of ``unit`` (a user unit with ``user_unit``,
        whichever user's manager runs it).

        Caveat (journald's, not ours): a process that exits right after
        writing may have its last lines stored *without* their unit
        fields (journald looks its cgroup up once it is gone), so they do
        not show here; nor, if a line is still in journald's socket
        buffer, even after ``journalctl --sync``.  Pass ``identifier``
        (the SYSLOG_IDENTIFIER: the program name, or the unit's
        ``SyslogIdentifier=``) to get those lines too, and prefer
        ``wait_journal`` for a line you expect.
        """
        self.run(["journalctl", "--sync"], check=False, timeout=30)
        argv = self._journal_argv(unit, user_unit, identifier)
        if lines is not None:
            argv += ["-n", str(lines)]
        return self.run(argv, check=False).stdout

    @staticmethod
    def _journal_argv(unit: str, user_unit: bool,
                      identifier: str | None) -> list[str]:
        argv = ["journalctl", "--no-pager", "-o", "short-precise", "-b"]
        if user_unit:
            # Not --user-unit: run as root it adds the match _UID=0.  These
            # are its output and what its user manager logs about it.
            argv += [f"_SYSTEMD_USER_UNIT={unit}", "+", f"USER_UNIT={unit}"]
        elif identifier:
            argv += [f"_SYSTEMD_UNIT={unit}", "+", f"UNIT={unit}"]
        else:
            return argv + ["-u", unit]
        if identifier:
            argv += ["+", f"SYSLOG_IDENTIFIER={identifier}"]
        return argv

    def wait_journal(self, unit: str, pattern: str, *, user_unit: bool = False,
                     identifier: str | None = None, since: str | None = None,
                     timeout: float = 60) -> str:
        """Block until ``unit``'s journal (this boot) has a line matching
        the regex ``pattern``; return that line.  ``since`` (a
        ``journalctl --since`` time) ignores older lines.

        ``journal()`` may miss a line written just before the call
        (journald reads stdout streams asynchronously, even after
        ``journalctl --sync``); this follows the journal (``journalctl
        -f``, inotify-driven) instead.  Raises
        ``ContainerError`` with what was seen on timeout.  See
        ``journal`` about ``identifier``: without it, the last line of a
        process that exits at once may never match.
        """
        argv = self._journal_argv(unit, user_unit, identifier) + [
            "-f", "-n", "all"] + (["--since", since] if since else [])
        return self.wait_output(argv, pattern, timeout=timeout,
                                what=f"the journal of {unit}")

    def wait_file_line(self, path: str, pattern: str, *,
                       timeout: float = 60) -> str:
        """Block until the file ``path`` inside (which may not exist yet)
        has a line matching ``pattern``, following it as ``tail -F`` does;
        return that line."""
        return self.wait_output(["tail", "-n", "+1", "-F", path], pattern,
                                timeout=timeout, what=path)

    def wait_output(self, argv: list[str], pattern: str, *,
                    timeout: float = 60, what: str = "") -> str:
        """Run ``argv`` inside until a line of its output matches the
        regex ``pattern`` (returned), then kill it; ``ContainerError``
        with what it printed if none does within ``timeout``."""
        regex = re.compile(pattern)
        proc = self.spawn(argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen, buf = [], b""
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select(
                        [proc.stdout], [], [], remaining)[0]:
                    break
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    seen.append(line)
                    if regex.search(line):
                        return line
        finally:
            self.kill(proc)
            proc.stdout.close()
        raise ContainerError(
            f"no line matching {pattern!r} in {what or argv} within "
            f"{timeout:.0f} s; it has:\n" + "\n".join(seen[-40:]))

    def enable_user_manager(self, user: str) -> None:
        """Lingering on, and wait until ``user@UID.service`` is up.

        Afterwards ``systemctl --user`` works for ``user`` (see
        ``run_user_systemctl``) with XDG_RUNTIME_DIR=/run/user/UID.
        """
        if user in self._linger:
            return
        uid, _, _ = self._user(user)
        self.run(["loginctl", "enable-linger", user])
        # Type=notify: returns once the user's manager is up.
        self.systemctl("start", f"user@{uid}.service")
        self._linger.add(user)

    def run_user_systemctl(self, user: str, *args: str, check: bool = True,
                           timeout: float = 120) -> subprocess.CompletedProcess:
        """``systemctl --user ARGS`` as ``user``, its manager started first."""
        self.enable_user_manager(user)
        return self.run(["systemctl", "--user", *args], user=user, check=check,
                        timeout=timeout)


#: Run by ``Container.wait_for_path`` with python3 inside the container.
_WAIT_FOR_PATH = r"""
import ctypes, os, select, sys, time
path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
assert fd >= 0
IN_EVENTS = 0x100 | 0x80 | 0x4 | 0x400 | 0x800  # CREATE MOVED_TO ATTRIB ...
while not os.path.exists(path):
    parent = os.path.dirname(path)
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    wd = libc.inotify_add_watch(fd, parent.encode(), IN_EVENTS)
    if os.path.exists(path):  # appeared before the watch
        break
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        sys.exit("timed out")
    os.read(fd, 65536)
    libc.inotify_rm_watch(fd, wd)
"""


class _CommandFailed(subprocess.CalledProcessError):
    def __init__(self, returncode, cmd, output, stderr, *, user):
        super().__init__(returncode, cmd, output, stderr)
        self.user = user

    def __str__(self) -> str:
        def show(x):
            if isinstance(x, bytes):
                x = x.decode(errors="replace")
            return (x or "").strip()[-3000:]
        return (f"in the container, as {self.user}: {shlex.join(self.cmd)} "
                f"exited {self.returncode}\n--- stdout ---\n{show(self.output)}"
                f"\n--- stderr ---\n{show(self.stderr)}")


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.system.nspawn",
        description="Build (if missing) the cached Debian rootfs of the "
                    "system tests and print its path.")
    parser.add_argument("--rebuild", action="store_true",
                        help="discard the cached rootfs and build it again")
    parser.add_argument("--boot", action="store_true",
                        help="then boot it once and print the state")
    args = parser.parse_args(argv)
    path = ensure_rootfs(rebuild=args.rebuild)
    print(path)
    if args.boot:
        with Container(path) as ct:
            print(ct.state, *ct.failed_units)
    return 0


if __name__ == "__main__":
    sys.exit(main())
