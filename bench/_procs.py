"""
Processes for the benchmarks: start them (each in its own session), always
stop them (at exit, on errors, SIGTERM and Ctrl-C too), and read their CPU
time and RSS from /proc; and how busy other processes keep the machine.

Linux only (/proc).
"""

from __future__ import annotations

import atexit
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: The bpctunnel tree whose server and client are measured (this one unless
#: BPCTUNNEL_BENCH_PROJECT names another checkout, for before/after runs).
PROJECT_ROOT = Path(os.environ.get("BPCTUNNEL_BENCH_PROJECT")
                    or Path(__file__).resolve().parent.parent).resolve()
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Something did not work; the benchmark exits non-zero."""


# -- processes -----------------------------------------------------------------

_running: list = []


def cleanup() -> None:
    for item in reversed(_running):
        try:
            item.stop()
        except Exception as e:  # cleanup must reach every process
            print(f"cleanup: {e}", file=sys.stderr)
    _running.clear()


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop everything we started at exit, including on SIGTERM/SIGHUP/Ctrl-C."""
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def project_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit to C{wanted} (root may pass the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Proc:
    """
    A child process in its own session, output (stdout and stderr) to
    C{log_path}; stopped (with everything it spawned) at exit.
    """

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None,
                 nofile: int | None = None, cwd: Path | None = None):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self._log = self.log_path.open("ab")
        if nofile:
            raise_nofile(nofile)  # the child inherits it (no preexec_fn: we have threads)
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True)
        self.pid = self.popen.pid
        _running.append(self)

    def text(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = 60, start: int = 0) -> re.Match:
        """The first match of regex C{pattern} in the output (from offset C{start})."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.text(), start)
            if match:
                return match
            if self.popen.poll() is not None:
                raise BenchError(f"{self.argv[0]} exited ({self.popen.returncode}) before "
                                 f"printing {pattern!r}; see {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"no {pattern!r} from {' '.join(self.argv[:6])} within "
                                 f"{timeout} s; see {self.log_path}:\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def tree(self) -> list[int]:
        """This process and its descendants."""
        return [self.pid] + descendants(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        """Signal the whole session, wait, then kill what is left."""
        if self in _running:
            _running.remove(self)
        pids = self.tree()
        if self.popen.poll() is None:
            _signal_group(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.pid, signal.SIGKILL)
        for pid in pids[1:]:  # children that left the session (sshd's)
            _kill(pid)
        if self.popen.poll() is None:
            self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def twistd(plugin: str, args: list, log_path: Path, nofile: int | None = None) -> Proc:
    """C{twistd --nodaemon PLUGIN ARGS} with our Python, the project on PYTHONPATH."""
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logfile=-", plugin, *args]
    # Not from the current folder: "-c" puts it first on sys.path.
    return Proc(argv, log_path, env=project_env(), nofile=nofile, cwd=PROJECT_ROOT)


# -- /proc -----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (not its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) of a process: since it started or L{reset_peak_rss}."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for process {pid}")


def reset_peak_rss(pid: int) -> bool:
    """
    Start a process's VmHWM afresh from its current RSS (C{clear_refs} 5,
    Linux 4.0+, the process's owner or root); whether that worked.
    """
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_listening(port: int) -> bool:
    """Whether something listens on TCP 127.0.0.1:C{port} (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return True
    return False


def wait_listening(port: int, proc: Proc | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not is_listening(port):
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(f"{proc.argv[0]} exited before listening on {port}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
        time.sleep(0.02)


# -- other load on the machine --------------------------------------------------

def _all_processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far), for every process."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return found


class OtherLoad:
    """
    Samples, in a thread, the CPU time of every process that is not this one
    or its descendants: other work on a shared machine skews any benchmark.
    """

    def __init__(self, interval: float = 0.5):
        self._seen: dict[int, float] = {}
        self.other_seconds = 0.0
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._sample(first=True)
        threading.Thread(target=self._run, args=(interval,), daemon=True).start()

    def _sample(self, first: bool = False) -> None:
        table = _all_processes()
        ours = {os.getpid()}
        changed = True
        while changed:  # our descendants, from the same snapshot
            grown = {pid for pid, (ppid, _) in table.items() if ppid in ours}
            changed = not grown <= ours
            ours |= grown
        for pid, (_, cpu) in table.items():
            if pid not in ours:
                before = self._seen.get(pid, cpu if first else 0.0)
                self.other_seconds += max(0.0, cpu - before)
            self._seen[pid] = cpu

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._sample()

    def share(self) -> float:
        """Other processes' CPU time so far, as a share of all CPUs' time."""
        self._sample()
        return self.other_seconds / ((time.monotonic() - self._started) * os.cpu_count())

    def stop(self) -> None:
        self._stop.set()
