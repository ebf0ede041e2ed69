"""
A real, isolated BackupPC 4 (Debian 12's C{backuppc} package, 4.4.0) in a
temporary folder, for tests that run real backups through the tunnel.

Debian's BackupPC reads its config only from C{/etc/backuppc} and its code
only from C{/usr/share/backuppc/lib}, whatever it is told.  So each instance
gets its own copy of C{/usr/share/backuppc/bin} and C{lib} (about 2 MB) with
those built-in paths rewritten to the instance's folders, and its own
C{config.pl}: Debian's default one followed by the settings of an isolated,
non-scheduling server (see L{fixture_settings}).  Nothing under C{/etc}, no
Apache and no C{backuppc} user is involved: BackupPC runs as the current user.

BackupPC's programs (the server daemon, C{BackupPC_dump}, C{BackupPC_restore},
C{BackupPC_tarCreate}, C{BackupPC_ls}, C{BackupPC_zcat}) run as child
processes of the reactor, each in a process group of its own, each with a
bounded time, and L{IsolatedBackupPC.stop} kills whatever is left.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import tarfile
import time
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

#: Where Debian's package puts BackupPC's programs, libraries and default config.
DEBIAN_INSTALL_DIR = Path("/usr/share/backuppc")
#: BackupPC's rsync (package C{backuppc-rsync}).
RSYNC_BPC = Path("/usr/libexec/backuppc-rsync/rsync_bpc")
INSTALL_HINT = "apt-get install -y --no-install-recommends backuppc"

#: Built-in paths in Debian's BackupPC code; each is rewritten in the copy.
_BUILT_IN = ("/etc/backuppc", "/usr/share/backuppc", "/var/lib/backuppc")

#: Upper bound for one BackupPC program run (a 100 MB full backup takes a few s).
PROGRAM_TIMEOUT = 120
#: How long the server daemon may take to start or to stop.
DAEMON_TIMEOUT = 30

_SAFE_PATH = re.compile(r"[A-Za-z0-9_./-]+")


class BackupPCUnavailable(AssertionError):
    """BackupPC 4 is not installed here; tests needing it fail (never skip)."""


class BackupPCProgramError(AssertionError):
    """A BackupPC program timed out, or died in a way no test expects."""


def check_installed() -> None:
    """
    @raise BackupPCUnavailable: Debian's C{backuppc} package (with
        C{backuppc-rsync}) is not installed.
    """
    needed = [DEBIAN_INSTALL_DIR / "bin" / "BackupPC", DEBIAN_INSTALL_DIR / "bin" / "BackupPC_dump",
              DEBIAN_INSTALL_DIR / "lib" / "BackupPC" / "Lib.pm",
              DEBIAN_INSTALL_DIR / "conf" / "config.pl", RSYNC_BPC]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise BackupPCUnavailable(
            f"BackupPC 4 is not installed ({', '.join(missing)} missing); these tests run "
            f"Debian 12's BackupPC for real: run `{INSTALL_HINT}`")


def perl_string(text: str) -> str:
    """A Perl single-quoted string literal for C{text}."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _safe_path(path: Path) -> str:
    text = str(path)
    if not _SAFE_PATH.fullmatch(text):
        raise ValueError(f"{text!r} cannot be written into BackupPC's Perl code; "
                         f"use a folder whose path has only letters, digits and _./-")
    return text


def install_copy(dest: Path, conf_dir: Path, top_dir: Path) -> None:
    """
    Copy BackupPC's C{bin} and C{lib} to C{dest} and rewrite their built-in
    paths: C{/etc/backuppc} to C{conf_dir}, C{/usr/share/backuppc} to C{dest},
    C{/var/lib/backuppc} to C{top_dir}.

    @raise BackupPCUnavailable: a built-in path is left after rewriting (a
        BackupPC other than 4.4.0 may have more).
    """
    replacements = {
        "/etc/backuppc": _safe_path(conf_dir),
        "/usr/share/backuppc": _safe_path(dest),
        "/var/lib/backuppc": _safe_path(top_dir),
    }
    pattern = re.compile("|".join(re.escape(p) for p in _BUILT_IN))
    for part in ("bin", "lib"):
        shutil.copytree(DEBIAN_INSTALL_DIR / part, dest / part, symlinks=False)
    for path in sorted(dest.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if not any(p.encode() in data for p in _BUILT_IN):
            continue
        text = data.decode("latin-1")
        text = pattern.sub(lambda m: replacements[m.group(0)], text)
        path.write_bytes(text.encode("latin-1"))
    left = [str(p) for p in dest.rglob("*")
            if p.is_file() and any(b.encode() in p.read_bytes() for b in _BUILT_IN)]
    if left:
        raise BackupPCUnavailable(f"built-in paths left in the copy of BackupPC: {left}")


def fixture_settings(bpc: IsolatedBackupPC, wakeup_hour: int) -> dict[str, str]:
    """
    The settings appended to Debian's default C{config.pl} (Perl source of each
    value), making a BackupPC that runs as the current user in its own folders
    and never schedules anything by itself.
    """
    user = pwd.getpwuid(os.geteuid()).pw_name
    return {
        "TopDir": perl_string(str(bpc.top_dir)),
        "ConfDir": perl_string(str(bpc.conf_dir)),
        "LogDir": perl_string(str(bpc.log_dir)),
        "RunDir": perl_string(str(bpc.run_dir)),
        "InstallDir": perl_string(str(bpc.install_dir)),
        "CgiDir": "''",
        # We run as whoever runs the tests (root in CI), and BackupPC checks it.
        "BackupPCUser": perl_string(user),
        "BackupPCUserVerify": "1",
        # Only the unix socket <RunDir>/BackupPC.sock, no TCP port.
        "ServerHost": "'127.0.0.1'",
        "ServerPort": "-1",
        # The daemon must only answer BackupPC_dump, never start backups: they
        # are disabled (BackupPC_dump -f/-i still runs), and its one wakeup a
        # day is twelve hours away.
        "BackupsDisable": "1",
        "WakeupSchedule": f"[{wakeup_hour}]",
        # The daemon exits at start if one of these is set but not executable.
        "SmbClientPath": "''",
        "NmbLookupPath": "''",
        "PingPath": "''",
        "Ping6Path": "''",
        "SshPath": "''",
        "SendmailPath": "''",
        # 127.0.0.1 always answers; raw ping sockets may be denied in CI
        # containers.  Exit 0 with an output BackupPC parses as a round trip.
        "PingCmd": "['/bin/echo', 'time=0.1', 'ms']",
        # Name each file the transfer creates, changes or deletes in XferLOG.
        "XferLogLevel": "2",
    }


@attrs.frozen
class ProgramResult:
    """How one BackupPC program run ended."""

    argv: tuple[str, ...]
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes

    @property
    def output(self) -> str:
        """stdout then stderr, as text (for assertion messages and checks)."""
        return (self.stdout + self.stderr).decode("utf-8", "replace")

    def describe(self) -> str:
        return (f"{' '.join(self.argv)} exited {self.exit_code} (signal {self.signal}); "
                f"output:\n{self.output}")


class ProgramProtocol(ProcessProtocol):
    """
    One BackupPC program: keeps stderr, keeps stdout (or writes it to a
    file), and fires C{ended} with a L{ProgramResult}.
    """

    def __init__(self, argv, stdout_path: Path | None = None):
        self.argv = tuple(argv)
        self.stdout = b""
        self.stderr = b""
        self._stdout_file = stdout_path.open("wb") if stdout_path is not None else None
        self.ended = Deferred()
        self.pid = None
        self.running = False
        self.result: ProgramResult | None = None
        self.timed_out = False
        self._watchers: list[tuple[bytes, Deferred]] = []

    def connectionMade(self):
        self.pid = self.transport.pid
        self.running = True
        self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        if fd == 1 and self._stdout_file is not None:
            self._stdout_file.write(data)
            return
        if fd == 1:
            self.stdout += data
        else:
            self.stderr += data
        waiting, self._watchers = self._watchers, []
        for words, d in waiting:
            if words in self.stdout + self.stderr:
                d.callback(None)
            else:
                self._watchers.append((words, d))

    def wait_for_output(self, words: str) -> Deferred:
        """Fires once stdout or stderr contains C{words}; fails if the program ends first."""
        d = Deferred()
        if words.encode() in self.stdout + self.stderr:
            d.callback(None)
        elif self.result is not None:
            d.errback(BackupPCProgramError(f"{words!r} never appeared: {self.result.describe()}"))
        else:
            self._watchers.append((words.encode(), d))
        return d

    def processEnded(self, reason):
        self.running = False
        if self._stdout_file is not None:
            self._stdout_file.close()
        value = reason.value
        code = 0 if reason.check(ProcessDone) else getattr(value, "exitCode", None)
        self.result = ProgramResult(self.argv, code, getattr(value, "signal", None),
                                    self.stdout, self.stderr)
        waiting, self._watchers = self._watchers, []
        for words, d in waiting:
            d.errback(BackupPCProgramError(
                f"{words.decode()!r} never appeared: {self.result.describe()}"))
        self.ended.callback(self.result)

    def kill_group(self, sig=signal.SIGKILL) -> None:
        """
        Signal the program's whole process group (it and e.g. its rsync_bpc),
        while the program runs: only then is that group surely still ours.
        """
        if self.pid is None or not self.running:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


@attrs.define
class IsolatedBackupPC:
    """
    One BackupPC 4 server: config in C{conf_dir} (shared with the tunnel
    server, which reads the same C{hosts} and C{<host>.pl}), everything else
    under C{root}.
    """

    reactor: object
    root: Path
    conf_dir: Path
    daemon: ProgramProtocol | None = None
    _programs: list = attrs.field(factory=list)
    _restore_count: int = 0
    #: The L{ProgramResult} of the last L{tar_create} (its stderr has totals).
    last_tar_create: ProgramResult | None = None

    log = Logger()

    @property
    def install_dir(self) -> Path:
        return self.root / "install"

    @property
    def top_dir(self) -> Path:
        return self.root / "top"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def bin(self, program: str) -> str:
        return str(self.install_dir / "bin" / program)

    @classmethod
    def create(cls, reactor, root: Path, conf_dir: Path) -> IsolatedBackupPC:
        """
        Copy BackupPC into C{root} and write C{<conf_dir>/config.pl}; the
        C{hosts} file and host configs in C{conf_dir} are the caller's.
        """
        check_installed()
        root, conf_dir = Path(root), Path(conf_dir)
        bpc = cls(reactor, root, conf_dir)
        for folder in (bpc.top_dir, bpc.log_dir, bpc.run_dir, conf_dir):
            folder.mkdir(parents=True, exist_ok=True)
        install_copy(bpc.install_dir, conf_dir, bpc.top_dir)
        wakeup_hour = (time.localtime().tm_hour + 12) % 24
        settings = fixture_settings(bpc, wakeup_hour)
        text = (DEBIAN_INSTALL_DIR / "conf" / "config.pl").read_text("latin-1")
        text += "\n# Isolated BackupPC of bpctunnel's tests (tests/bpc_fixture.py)\n"
        text += "".join(f"$Conf{{{key}}} = {value};\n" for key, value in settings.items())
        (conf_dir / "config.pl").write_text(text, "latin-1")
        return bpc

    def create_pool_dirs(self) -> None:
        """
        Create the 128 x 128 folders of the compressed pool
        (C{<TopDir>/cpool/<xx>/<yy>}), as an established server has them.
        BackupPC 4.4 creates them on demand, and backups running at the same
        time into a fresh pool race on that (C{bpc_poolWrite_write: can't
        open/create .../cpool/... for writing}, then a folder missing from
        a backup that BackupPC calls complete) -- with or without a tunnel.
        """
        for first in range(0, 256, 2):
            for second in range(0, 256, 2):
                (self.top_dir / "cpool" / f"{first:02x}" / f"{second:02x}").mkdir(
                    parents=True, exist_ok=True)

    # Running programs

    def _environment(self) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        return env

    def spawn(self, program: str, *args: str, stdout_path: Path | None = None) -> ProgramProtocol:
        """Start one of BackupPC's programs; see L{spawn_argv}."""
        return self.spawn_argv([program, *args], ["/usr/bin/perl", self.bin(program), *args],
                               stdout_path)

    def spawn_argv(self, name, argv, stdout_path: Path | None = None) -> ProgramProtocol:
        """
        Start C{argv} (named C{name} in messages) in a new process group, so
        that it and its children can be killed together.
        """
        protocol = ProgramProtocol(name, stdout_path)
        # setsid(1) execs in place (the child of spawnProcess is no group
        # leader), so the group id is the pid we know.
        self.reactor.spawnProcess(protocol, "/usr/bin/setsid", ["setsid", *argv],
                                  env=self._environment(), path=str(self.root))
        self._programs.append(protocol)
        return protocol

    def finished(self, protocol: ProgramProtocol, timeout: float = PROGRAM_TIMEOUT) -> Deferred:
        """
        Fires with the L{ProgramResult} of C{protocol}; after C{timeout}
        seconds its process group is killed and this fails.
        """
        d = Deferred()

        def timed_out():
            protocol.timed_out = True
            protocol.kill_group()

        call = self.reactor.callLater(timeout, timed_out)

        def ended(result):
            if call.active():
                call.cancel()
            if protocol.timed_out:
                d.errback(BackupPCProgramError(
                    f"killed after {timeout} s without finishing: {result.describe()}"))
            else:
                d.callback(result)

        protocol.ended.addCallback(ended)
        return d

    def run(self, program: str, *args: str, timeout: float = PROGRAM_TIMEOUT,
            stdout_path: Path | None = None) -> Deferred:
        """Run one of BackupPC's programs to the end; fires with a L{ProgramResult}."""
        return self.finished(self.spawn(program, *args, stdout_path=stdout_path), timeout)

    @inlineCallbacks
    def run_ok(self, program: str, *args: str, timeout: float = PROGRAM_TIMEOUT,
               stdout_path: Path | None = None):
        """Like L{run}, but anything but exit status 0 fails."""
        result = yield self.run(program, *args, timeout=timeout, stdout_path=stdout_path)
        if result.exit_code != 0:
            raise BackupPCProgramError(result.describe())
        return result

    # The server daemon

    @inlineCallbacks
    def start(self):
        """
        Start the BackupPC server daemon in the foreground; fires once it
        listens on C{<RunDir>/BackupPC.sock} (it writes its pid file right
        after), fails with its output if it exits first.
        """
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath

        pid_file = self.run_dir / "BackupPC.pid"
        if pid_file.exists():
            pid_file.unlink()
        ready = Deferred()

        def changed(_watch, path, _mask):
            if path.basename() == b"BackupPC.pid" and not ready.called:
                ready.callback(None)

        notifier = inotify.INotify(self.reactor)
        notifier.startReading()
        try:
            notifier.watch(FilePath(bytes(self.run_dir)),
                           mask=inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO,
                           callbacks=[changed])
            self.daemon = self.spawn("BackupPC")

            def exited(result):
                if not ready.called:
                    ready.errback(BackupPCProgramError(
                        f"the BackupPC daemon exited at start: {result.describe()}\n"
                        f"LOG:\n{self.server_log()}"))
                return result

            self.daemon.ended.addCallback(exited)
            yield ready.addTimeout(DAEMON_TIMEOUT, self.reactor)
        finally:
            notifier.loseConnection()
        self.log.info("BackupPC daemon {pid} is up in {root}", pid=self.daemon.pid, root=str(self.root))

    def server_log(self) -> str:
        """The daemon's own log, C{<LogDir>/LOG}."""
        path = self.log_dir / "LOG"
        return path.read_text("utf-8", "replace") if path.exists() else "(no LOG file)"

    @inlineCallbacks
    def stop(self):
        """
        Stop the daemon by its pid (SIGTERM: it shuts down cleanly), then
        kill whatever else this instance started that still runs.
        """
        daemon = self.daemon
        if daemon is not None and daemon.running:
            daemon.transport.signalProcess("TERM")
            call = self.reactor.callLater(DAEMON_TIMEOUT, daemon.kill_group)
            yield daemon.ended
            if call.active():
                call.cancel()
        for protocol in self._programs:
            if protocol.running:
                protocol.kill_group()
                yield protocol.ended

    # Backups

    def dump(self, host: str, full: bool = True, timeout: float = PROGRAM_TIMEOUT) -> Deferred:
        """
        C{BackupPC_dump -f} (full) or C{-i} (incremental) C{-v host}, as the
        daemon runs it; fires with its L{ProgramResult} whatever its exit status.
        """
        return self.run("BackupPC_dump", "-f" if full else "-i", "-v", host, timeout=timeout)

    def start_dump(self, host: str, full: bool = True) -> ProgramProtocol:
        """Start C{BackupPC_dump}; see L{finished} to wait for it."""
        return self.spawn("BackupPC_dump", "-f" if full else "-i", "-v", host)

    @inlineCallbacks
    def _perl_json(self, expression: str, *args: str):
        """Evaluate C{expression} with a C{BackupPC::Lib} object C{$bpc}; fires with its JSON."""
        script = (
            f"use lib {perl_string(str(self.install_dir / 'lib'))};"
            "use BackupPC::Lib; use JSON::PP;"
            "my $bpc = BackupPC::Lib->new or die qq{BackupPC::Lib->new failed\\n};"
            f"print JSON::PP->new->canonical->encode({expression});"
        )
        protocol = self.spawn_argv(["perl", "-e", expression, *args],
                                   ["/usr/bin/perl", "-e", script, *args])
        result = yield self.finished(protocol)
        if result.exit_code != 0:
            raise BackupPCProgramError(result.describe())
        return json.loads(result.stdout)

    def backups(self, host: str) -> Deferred:
        """
        Fires with BackupPC's own record of C{host}'s backups
        (C{<TopDir>/pc/<host>/backups} as C{BackupInfoRead} reads it): a list
        of dicts with C{num}, C{type} (full, incr, partial), C{nFiles},
        C{xferErrs}, ...
        """
        return self._perl_json("[$bpc->BackupInfoRead($ARGV[0])]", host)

    def restores(self, host: str) -> Deferred:
        """Fires with BackupPC's record of C{host}'s restores (C{RestoreInfoRead})."""
        return self._perl_json("[$bpc->RestoreInfoRead($ARGV[0])]", host)

    def host_status(self, host: str) -> Deferred:
        """
        Fires with the daemon's status of C{host} (C{%StatusHost}, as
        C{BackupPC_serverMesg status host(HOST)} gives it): C{state},
        C{reason} (e.g. C{Reason_backup_done}, C{Reason_no_ping}), C{error},
        C{UserQueueOn} (a backup is queued), C{Job} (true while one runs),
        ...  The daemon keeps this in memory only.
        """
        return self._perl_json(
            "do { my $err = $bpc->ServerConnect($bpc->{Conf}{ServerHost}, $bpc->{Conf}{ServerPort});"
            " die qq{$err\\n} if $err ne ''; my %StatusHost;"
            " eval($bpc->ServerMesg('status host(' . $bpc->uriEsc($ARGV[0]) . ')'));"
            # Job holds the job's pipe (a glob, which JSON cannot encode).
            " $StatusHost{Job} = defined($StatusHost{Job}) ? 1 : 0; \\%StatusHost }", host)

    @staticmethod
    def idle(status: dict) -> bool:
        """C{status} (a L{host_status}) has no backup queued or running."""
        return not (status.get("Job") or status.get("UserQueueOn") or status.get("BgQueueOn"))

    def wait_for_host_status(self, host: str, done, timeout: float = PROGRAM_TIMEOUT,
                             interval: float = 0.2) -> Deferred:
        """
        Fires with C{host}'s L{host_status} once C{done(status)} is true.
        The daemon tells no one when it has taken in the end of a job it
        ran (it writes no file), so this asks it every C{interval} seconds,
        one question at a time, and fails after C{timeout} seconds with the
        last status it saw.
        """
        from twisted.internet.task import LoopingCall

        result = Deferred()
        seen = []

        def ask():
            def got(status):
                seen.append(status)
                if done(status) and not result.called:
                    finish(status)
            return self.host_status(host).addCallback(got)

        def finish(outcome):
            if loop.running:
                loop.stop()
            if call.active():
                call.cancel()
            if isinstance(outcome, Exception):
                result.errback(outcome)
            else:
                result.callback(outcome)

        def failed(failure):
            if not result.called:
                finish(failure.value)

        loop = LoopingCall(ask)
        loop.clock = self.reactor
        call = self.reactor.callLater(timeout, lambda: finish(BackupPCProgramError(
            f"{host}'s status never got there in {timeout} s; last status: "
            f"{seen[-1] if seen else None}\nLOG:\n{self.server_log()}")))
        loop.start(interval).addErrback(failed)
        return result

    def host_log(self, host: str) -> str:
        """C{host}'s own BackupPC log (C{<TopDir>/pc/<host>/LOG.<MMYYYY>}, this month's and older)."""
        texts = [p.read_text("utf-8", "replace")
                 for p in sorted((self.top_dir / "pc" / host).glob("LOG.[0-9]*")) if p.suffix != ".z"]
        return "".join(texts)

    @inlineCallbacks
    def xfer_log(self, host: str, name: str):
        """
        Fires with the text of C{<TopDir>/pc/<host>/<name>} (C{XferLOG.0.z},
        C{XferLOG.bad.z}, C{RestoreLOG.0.z}), uncompressed by C{BackupPC_zcat}.
        """
        result = yield self.run_ok("BackupPC_zcat", str(self.top_dir / "pc" / host / name))
        return result.stdout.decode("utf-8", "replace")

    @inlineCallbacks
    def ls(self, host: str, num: int, share: str, path: str = "/"):
        """
        Fires with C{BackupPC_ls -R} of C{path} in backup C{num} of C{host}'s
        C{share}: a dict from path (relative to C{path}) to its line's fields
        (mode, uid/gid, size, ...).
        """
        result = yield self.run_ok("BackupPC_ls", "-h", host, "-n", str(num), "-s", share, "-R", path)
        return parse_ls(result.stdout.decode("utf-8", "surrogateescape"), path)

    @inlineCallbacks
    def tar_create(self, host: str, num: int, share: str, dest: Path):
        """
        Extract backup C{num} of C{host}'s C{share} into C{dest}, as
        C{BackupPC_tarCreate} makes it; fires with C{dest}.
        """
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        archive = dest.parent / (dest.name + ".tar")
        result = yield self.run_ok("BackupPC_tarCreate", "-t", "-h", host, "-n", str(num),
                                   "-s", share, ".", stdout_path=archive)
        with tarfile.open(archive) as tar:
            # The "tar" filter (Python 3.11.4+; Debian 12's python3 is 3.11.2):
            # BackupPC's archive of our own test files, trusted either way.
            tar.extractall(dest, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        archive.unlink()
        self.last_tar_create = result
        return dest

    @inlineCallbacks
    def restore(self, host: str, num: int, share_src: str, share_dest: str,
                files=("/",), path_src="/", path_dest="/"):
        """
        Restore C{files} of backup C{num} of C{host}'s C{share_src} to
        C{share_dest} on the same host, with C{BackupPC_restore} as the web
        interface starts it (a request file in C{<TopDir>/pc/<host>}); fires
        with the L{ProgramResult}.
        """
        self._restore_count += 1
        name = f"restoreReq.{os.getpid()}.{self._restore_count}"
        fields = {
            "hostSrc": perl_string(host), "hostDest": perl_string(host),
            "num": str(int(num)),
            "shareSrc": perl_string(share_src), "shareDest": perl_string(share_dest),
            "pathHdrSrc": perl_string(path_src), "pathHdrDest": perl_string(path_dest),
            "fileList": "[" + ", ".join(perl_string(f) for f in files) + "]",
            "user": perl_string("bpctunnel-tests"), "reqTime": str(int(time.time())),
        }
        folder = self.top_dir / "pc" / host
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(
            "%RestoreReq = (\n" + "".join(f"  {k} => {v},\n" for k, v in fields.items()) + ");\n1;\n")
        result = yield self.run("BackupPC_restore", "-v", "127.0.0.1", host, name)
        return result


_LS_LINE = re.compile(
    r"^(?P<mode>[-lcbdps?x][-r][-w][-x][-r][-w][-x][-r][-w][-x]|\*deleted--)[+ ]\s+"
    r"(?P<owner>\d+/\d+)\s+(?P<size>\d+) (?P<mtime>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+"
    r"(?P<rest>/.*)$")
_LS_KIND = {"-": "file", "d": "dir", "l": "link"}


def parse_ls(text: str, top: str = "/") -> dict[str, dict]:
    """
    Parse C{BackupPC_ls -R} output into path relative to C{top} -> dict of
    C{kind} (file, dir, link, or the mode letter), C{mode}, C{owner},
    C{size}, C{mtime}, C{target} (links) and C{digest} (files and links).
    Folder headers (C{/path:}) are skipped: each line has the full path.
    """
    entries = {}
    for line in text.splitlines():
        match = _LS_LINE.match(line)
        if match is None:
            continue
        fields = match.groupdict()
        rest = fields.pop("rest")
        kind = "deleted" if fields["mode"].startswith("*") else _LS_KIND.get(fields["mode"][0],
                                                                           fields["mode"][0])
        digest = re.search(r" \(([0-9a-f]+)\)$", rest)
        if digest and kind != "dir":
            rest = rest[:digest.start()]
        target = None
        if kind == "dir":
            rest = rest[:-1] if rest.endswith("/") else rest
        elif kind == "link":
            rest, _, target = rest.partition("@ -> ")
        entries[os.path.relpath(rest, top)] = dict(
            fields, kind=kind, target=target, digest=digest.group(1) if digest else None)
    return entries
