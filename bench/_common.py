"""
What the benchmarks share besides processes and output: a bpctunnel server
and client as twistd processes in a throwaway sandbox, the raw-byte
stand-in for rsync (bench/_standin.py) for the tunnel and, inetd-style, for
the baselines, and BackupPC's end of a transfer.  Everything listens on
127.0.0.1.  Re-exports L{_procs} and L{_report}, so a benchmark imports
from here only.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from _procs import *  # noqa: F401,F403
from _procs import PROJECT_ROOT, BenchError, Proc, _running, twistd, wait_listening
from _report import *  # noqa: F401,F403

if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))  # "python bench/x.py" from anywhere

from bpctunnel.testing.sandbox import Sandbox, free_port  # noqa: E402,F401

STANDIN = Path(__file__).resolve().parent / "_standin.py"
SSHD = "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
MB = 1e6
GB = 1e9


# -- the tunnel and the stand-ins --------------------------------------------------

def standin_wrapper(folder: Path) -> Path:
    """An executable that runs the stand-in with our Python (the client's C{rsync = PATH})."""
    path = Path(folder) / "standin-rsync"
    path.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{STANDIN}' \"$@\"\n")
    path.chmod(0o755)
    return path


class Tunnel:
    """A bpctunnel server and one client, as twistd processes, in a fresh sandbox."""

    def __init__(self, work: Path, rsync: str, modules: dict[str, Path], host: str = "laptop1",
                 keepalive: float | None = None, server_args: tuple = (), via=None):
        """
        @param via: if given, maps the server's wss port to the port the
            client dials instead (a relay's, see bench/_relay.py).
        """
        self.host = host
        self.sandbox = Sandbox.create(work / "sandbox")
        files = self.sandbox.issue_client(host)
        self.port = free_port()  # BackupPC's side: RsyncdClientPort
        self.sandbox.register(host, self.port, files.fingerprint, shares=tuple(modules))
        extra = ["--keepalive", str(keepalive)] if keepalive else []
        self.server = twistd("bpctunnel-server", [
            "--listen", "127.0.0.1:0", "--certs", self.sandbox.certs_dir,
            "--backuppc-conf", self.sandbox.conf_dir,
            "--api-socket", str(work / "api.sock"), *extra, *server_args],
            work / "server.log")
        wss = self.server.wait_for(r"listening on 127\.0\.0\.1:(\d+) \(BackupPC")
        self.server.wait_for(r"\(status API")
        self.wss_port = int(wss.group(1))
        dialled = via(self.wss_port) if via else self.wss_port
        self.url = f"wss://127.0.0.1:{dialled}/tunnel"
        self.api_url = f"unix:{work / 'api.sock'}"
        settings = {"keepalive": keepalive} if keepalive else {}
        conf = self.sandbox.write_client_config(files, self.url, modules, rsync=str(rsync),
                                                **settings)
        self.client = twistd("bpctunnel-client", ["--config", conf], work / "client.log")
        self.server.wait_for(rf"tunnel up for {host} ")

    def tunnel_drops(self) -> int:
        """How often the tunnel closed (a starved keepalive closes it)."""
        return len(re.findall(rf"tunnel of {self.host} closed", self.server.text()))

    def stop(self) -> None:
        self.client.stop()
        self.server.stop()


class SshTunnel:
    """
    sshd on a loopback port with throwaway keys, and C{ssh -N -R PORT:127.0.0.1:TARGET}
    into it (aes128-gcm): BackupPC's side connects to C{.port}.  C{via}, if
    given, maps sshd's port to the port ssh dials instead (a relay's).
    """

    def __init__(self, work: Path, target: int, via=None):
        for tool in (SSHD, "ssh", "ssh-keygen"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found: apt-get install -y openssh-server "
                                 f"openssh-client (or run with --no-ssh)")
        folder = work / "ssh"
        folder.mkdir()
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", folder / name],
                           check=True)
        (folder / "authorized_keys").write_bytes((folder / "user_key.pub").read_bytes())
        try:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        except OSError as e:
            raise BenchError(f"sshd needs /run/sshd ({e}); run as root or with --no-ssh") from None
        ssh_port = free_port()
        (folder / "sshd_config").write_text("\n".join([
            f"Port {ssh_port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            f"Ciphers {CIPHER}", "AllowTcpForwarding yes", "LogLevel ERROR", ""]))
        self.sshd = Proc([SSHD, "-D", "-e", "-f", folder / "sshd_config"], work / "sshd.log")
        wait_listening(ssh_port, self.sshd)
        dialled = via(ssh_port) if via else ssh_port
        self.port = free_port()  # BackupPC's side, forwarded by sshd
        self.ssh = Proc(["ssh", "-N", "-R", f"{self.port}:127.0.0.1:{target}", "-c", CIPHER,
                         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                         "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                         "-o", "Compression=no", "-i", folder / "user_key", "-p", str(dialled),
                         f"{getpass.getuser()}@127.0.0.1"], work / "ssh.log")
        wait_listening(self.port, self.ssh)

    def server_pids(self) -> list[int]:
        return self.sshd.tree()

    def client_pids(self) -> list[int]:
        return [self.ssh.pid]

    def stop(self) -> None:
        self.ssh.stop()
        self.sshd.stop()


class StandinService:
    """
    Listens on 127.0.0.1 and runs the stand-in for each connection with the
    socket as its stdin and stdout, as inetd runs C{rsync --daemon}: the
    laptop's end for the ssh and direct baselines.
    """

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.children: list[subprocess.Popen] = []
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()
        _running.append(self)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.children.append(subprocess.Popen(
                    [sys.executable, str(STANDIN)], stdin=conn.fileno(), stdout=conn.fileno()))

    def stop(self) -> None:
        if self in _running:
            _running.remove(self)
        self._closed = True
        self.sock.close()
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()


def backuppc_pull(port: int, nbytes: int) -> float:
    """laptop -> server: ask for C{nbytes}, read them all; seconds taken."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.perf_counter()
        s.sendall(f"send {nbytes}\n".encode())
        view = memoryview(bytearray(1 << 20))
        got = 0
        while got < nbytes:
            n = s.recv_into(view)
            if not n:
                raise BenchError(f"the stream ended after {got} of {nbytes} bytes")
            got += n
        return time.perf_counter() - started


def backuppc_push(port: int, nbytes: int) -> float:
    """server -> laptop: send C{nbytes}, wait for the stand-in's receipt; seconds taken."""
    block = memoryview(os.urandom(1 << 20))
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.perf_counter()
        s.sendall(f"receive {nbytes}\n".encode())
        left = nbytes
        while left:
            n = min(left, len(block))
            s.sendall(block[:n])
            left -= n
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                raise BenchError(f"no receipt from the stand-in (got {reply!r})")
            reply += chunk
        elapsed = time.perf_counter() - started
    if reply.split()[:2] != [b"received", str(nbytes).encode()]:
        raise BenchError(f"the stand-in reports {reply!r}, expected {nbytes} bytes")
    return elapsed
