"""
Smoke test of the system-test container (see nspawn.py): a Debian 12 booted
with systemd as PID 1, Debian's backuppc running, bookworm's rsync 3.2.7,
an ordinary user with a working ``systemctl --user``, a private loopback.
"""

import json
import os
import tempfile

from . import nspawn


def test_systemd_is_pid_1(debian_container):
    ct = debian_container
    assert ct.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert ct.state in ("running", "degraded"), ct.state
    # Nothing of ours may fail at boot; report what did if it does.
    assert ct.failed_units == [], ct.failed_units
    os_release = ct.read_file("/etc/os-release")
    assert 'VERSION_CODENAME=bookworm' in os_release


def test_backuppc_service_is_active(debian_container):
    ct = debian_container
    assert ct.systemctl("is-enabled", "backuppc.service").stdout.strip() == "enabled"
    if ct.systemctl("is-active", "backuppc.service", check=False).returncode:
        ct.systemctl("start", "backuppc.service")  # blocks until started
    assert ct.systemctl("is-active", "backuppc.service").stdout.strip() == "active"
    assert "backuppc.service" in ct.journal("backuppc.service")
    # Type=simple: "active" comes before BackupPC opens its socket.
    ct.wait_for_path("/run/backuppc/BackupPC.sock")
    status = ct.run(["/usr/share/backuppc/bin/BackupPC_serverMesg", "status",
                     "info"], user="backuppc")
    assert "Version" in status.stdout, status.stdout


def test_rsync_is_bookworm_main_327(debian_container):
    ct = debian_container
    first = ct.run(["rsync", "--version"]).stdout.splitlines()[0]
    assert "version 3.2.7 " in first, first
    sources = ct.read_file("/etc/apt/sources.list").split()
    assert "bookworm" in sources and "main" in sources
    assert "bookworm-security" not in " ".join(sources)
    assert ct.run(["python3", "-c", "import sys; print(sys.version_info[:2])"]
                  ).stdout.strip() == "(3, 11)"


def test_user_alice(debian_container):
    ct = debian_container
    assert ct.run(["id", "-u", nspawn.USER]).stdout.strip() == str(nspawn.USER_UID)
    res = ct.run(["sh", "-c", 'echo "$(id -un) $HOME $(pwd)"'], user=nspawn.USER)
    assert res.stdout.split() == [nspawn.USER, "/home/alice", "/home/alice"]
    # write_file with owner and mode, read back as alice, refused to others.
    ct.write_file("/home/alice/secret.txt", "hush\n", mode=0o600, owner="alice")
    assert ct.run(["cat", "secret.txt"], user="alice").stdout == "hush\n"
    assert ct.run(["cat", "/home/alice/secret.txt"], user="backuppc",
                  check=False).returncode != 0


def test_copy_in(debian_container):
    ct = debian_container
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(f"{tmp}/d/sub")
        with open(f"{tmp}/d/sub/f.txt", "w") as f:
            f.write("content\n")
        with open(f"{tmp}/run.sh", "w") as f:
            f.write("#!/bin/sh\necho ran\n")
        os.chmod(f"{tmp}/run.sh", 0o755)
        ct.copy_in(f"{tmp}/d", "/srv/copied", owner="alice")
        ct.copy_in(f"{tmp}/run.sh", "/usr/local/bin/ran")
    assert ct.run(["cat", "/srv/copied/sub/f.txt"], user="alice").stdout == "content\n"
    assert ct.run(["stat", "-c", "%U", "/srv/copied/sub/f.txt"]).stdout.strip() == "alice"
    assert ct.run(["ran"]).stdout == "ran\n"


def test_private_loopback(debian_container):
    ct = debian_container
    links = json.loads(ct.run(["ip", "-j", "link", "show"]).stdout)
    assert [link["ifname"] for link in links] == ["lo"]  # --private-network
    assert "UP" in links[0]["flags"]
    script = (
        "import socket\n"
        "srv = socket.create_server(('127.0.0.1', 8443))\n"
        "c = socket.create_connection(('127.0.0.1', 8443), timeout=10)\n"
        "s, _ = srv.accept()\n"
        "c.sendall(b'ping')\n"
        "print(s.recv(4).decode())\n"
    )
    assert ct.run(["python3", "-c", script], user="alice").stdout == "ping\n"


def test_user_systemd_manager(debian_container):
    ct = debian_container
    res = ct.run_user_systemctl(nspawn.USER, "is-system-running", "--wait",
                                check=False)
    assert res.stdout.strip() in ("running", "degraded"), res
    env = ct.run_user_systemctl(nspawn.USER, "show-environment").stdout
    assert "HOME=/home/alice" in env
    # A transient user unit runs as alice and logs to the journal.  Its
    # one line comes from a process that exits at once, which journald may
    # store without the unit's name: match its identifier too.
    ct.run(["systemd-run", "--user", "--wait", "--unit=hello", "--quiet",
            "-p", "SyslogIdentifier=hello-test",
            "sh", "-c", "echo hello from $(id -un)"], user=nspawn.USER)
    ct.wait_journal("hello.service", r"hello-test\[[0-9]+\]: hello from alice$",
                    user_unit=True, identifier="hello-test", timeout=30)
    assert "Started hello.service" in ct.journal("hello.service", user_unit=True)
