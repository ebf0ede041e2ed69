"""
The deployment an admin does, under real systemd: README's "Deployment"
steps, run as they are written, in a Debian 12 booted with systemd as PID 1,
with Debian's own ``backuppc`` package and its default ``config.pl``, the
package built from this checkout, and the shipped units unchanged.

The laptop is the same machine in a network namespace of its own
(``/run/netns/laptop``, loopback only): the client unit joins it through a
drop-in (``NetworkNamespacePath=``), and ``tests/system/relay.py`` is its only
way to the server, delaying each direction (150 ms, then 30 ms round trip).
``backup.example.org`` names 127.0.0.1: on the server's side the server, on
the laptop's side the relay.  The laptop's rsync is Debian 12's 3.2.7.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import nspawn

PROJECT = Path(__file__).resolve().parents[2]
SERVER_MESG = "/usr/share/backuppc/bin/BackupPC_serverMesg"
TOP_DIR = "/var/lib/backuppc"
#: The laptop's own files: a module folder holding a file only its owner may read.
DOCUMENTS = "/home/alice/Documents"


def readme_steps(role: str) -> list[str]:
    """The commands of README's ``.. deployment: ROLE`` block, in order."""
    text = (PROJECT / "README.rst").read_text()
    marker = f".. deployment: {role}\n\n::\n\n"
    assert marker in text, f"README.rst has no '.. deployment: {role}' block"
    block = text.split(marker, 1)[1]
    steps = []
    for line in block.splitlines():
        if not line.startswith("    "):
            break
        steps.append(line.strip())
    assert steps, f"README's {role} block is empty"
    return steps


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The Debian package, built from this checkout with packaging/build-deb.py."""
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run([sys.executable, str(PROJECT / "packaging" / "build-deb.py"),
                             "--out", str(out), "--compress", "gzip"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    debs = list(out.glob("bpctunnel_*_amd64.deb"))
    assert len(debs) == 1, debs
    return debs[0]


class Site:
    """The container, with the admin's and the laptop's shells."""

    def __init__(self, ct: nspawn.Container):
        self.ct = ct

    def admin(self, command: str, timeout: float = 300, check: bool = True):
        """A command as the admin types it, as root in /root."""
        return self.ct.run(["sh", "-ec", command], cwd="/root", timeout=timeout, check=check)

    def laptop(self, command: str, timeout: float = 300, check: bool = True, user=None):
        """A command on the laptop: inside its network namespace."""
        argv = ["ip", "netns", "exec", "laptop", "sh", "-ec", command]
        if user is not None:
            argv = ["ip", "netns", "exec", "laptop", "setpriv", f"--reuid={user}",
                    f"--regid={user}", "--init-groups", "sh", "-ec", command]
        return self.ct.run(argv, cwd="/root", timeout=timeout, check=check)

    def mesg(self, *args: str) -> str:
        """BackupPC_serverMesg as BackupPC's user, as the CGI runs it."""
        result = self.ct.run(["runuser", "-u", "backuppc", "--", SERVER_MESG, *args],
                             timeout=60)
        return result.stdout

    def now(self) -> str:
        return self.ct.run(["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()

    def set_round_trip(self, ms: int) -> str:
        """(Re)start the laptop's relay with C{ms} round trip; returns when it began."""
        since = self.now()
        self.ct.run(["systemctl", "stop", "relay-laptop"], check=False)
        self.ct.run(["systemd-run", "--unit=relay-laptop", "--collect", "python3",
                     "/usr/local/bin/relay.py", "--listen", "127.0.0.1:8443",
                     "--listen-netns", "/run/netns/laptop", "--to", "127.0.0.1:8443",
                     "--delay-ms", str(ms / 2)])
        self.ct.wait_journal("relay-laptop", r"relay: 127\.0\.0\.1:8443 ->", timeout=30)
        return since

    def wait_tunnel(self, since: str, unit: str = "bpctunnel-client", user_unit=False,
                    timeout: float = 120) -> None:
        """Wait for the client's "tunnel up" logged at or after C{since}."""
        self.ct.wait_journal(unit, r"tunnel up to wss://backup\.example\.org:8443/tunnel",
                             user_unit=user_unit, since=since, timeout=timeout)

    def backups(self, host: str) -> list[dict]:
        """BackupPC's own record of HOST's backups (its ``backups`` file)."""
        text = self.ct.read_file(f"{TOP_DIR}/pc/{host}/backups")
        names = ["num", "type", "start", "end", "files", "size", "files_exist", "size_exist",
                 "files_new", "size_new", "xfer_errs", "xfer_bad_file", "xfer_bad_share"]
        return [dict(zip(names, line.split("\t"))) for line in text.splitlines() if line]

    def backed_up_files(self, host: str, num: str, share: str) -> str:
        return self.ct.run(["runuser", "-u", "backuppc", "--",
                            "/usr/share/backuppc/bin/BackupPC_ls", "-h", host, "-n", num,
                            "-s", share, "-R", "/"], timeout=60).stdout


@pytest.fixture(scope="module")
def site(debian_container, package) -> Site:
    """README's server steps done, the laptop's network made (not yet its steps)."""
    ct = debian_container
    site = Site(ct)
    ct.wait_for_path("/run/backuppc/BackupPC.sock", timeout=60)
    # What the admin has: the package file, and a name for the server.
    ct.copy_in(package, f"/root/{package.name}")
    ct.sh("echo '127.0.0.1 backup.example.org' >> /etc/hosts")
    # The laptop's network: a namespace of its own, reached through the relay.
    ct.copy_in(PROJECT / "tests" / "system" / "relay.py", "/usr/local/bin/relay.py")
    ct.sh("ip netns add laptop && ip -n laptop link set lo up")
    ct.write_file("/etc/systemd/system/bpctunnel-client.service.d/laptop-netns.conf",
                  "[Service]\nNetworkNamespacePath=/run/netns/laptop\n")
    # The laptop's files: alice's, one only she may read.
    ct.sh(f"install -d -o alice -g alice -m 0700 {DOCUMENTS}/letters && "
          f"echo 'for alice only' > {DOCUMENTS}/secret.txt && "
          f"chown alice:alice {DOCUMENTS}/secret.txt && chmod 0600 {DOCUMENTS}/secret.txt && "
          f"head -c 3000000 /dev/urandom > {DOCUMENTS}/letters/big.bin && "
          f"chown -R alice:alice {DOCUMENTS}")
    site.said = {step: site.admin(step).stdout for step in readme_steps("server")}
    return site


def test_server_runs_as_shipped(site):
    """The shipped server unit, unchanged, runs as backuppc and reads its key."""
    ct = site.ct
    assert ct.run(["systemctl", "is-active", "bpctunnel-server"]).stdout.strip() == "active"
    user = ct.run(["systemctl", "show", "-p", "User", "--value", "bpctunnel-server"]).stdout
    assert user.strip() == "backuppc"
    assert ct.run(["systemctl", "cat", "bpctunnel-server"]).stdout.count("[Service]") == 1
    key = ct.run(["stat", "-c", "%U:%G %a", "/etc/bpctunnel/server.key"]).stdout.strip()
    assert key == "backuppc:backuppc 600"
    conf = ct.run(["stat", "-c", "%U:%G %a", "/etc/backuppc/laptop1.pl"]).stdout.strip()
    # config.pl's owner and group, without access for others: it holds laptop1's rsync secret.
    owner, mode = ct.run(["stat", "-c", "%U:%G %a", "/etc/backuppc/config.pl"]).stdout.split()
    assert conf == f"{owner} {int(mode, 8) & ~0o007:o}"
    # register-client --add-host told BackupPC to read its hosts file again.
    [registered] = [out for step, out in site.said.items() if "register-client" in step]
    assert "BackupPC read the new hosts file (BackupPC_serverMesg server reload)" in registered
    # BackupPC's own default stays 20 ms: only the tunnel host gets more.
    assert "$Conf{PingMaxMsec} = 20;" in ct.read_file("/etc/backuppc/config.pl")


def test_full_then_incremental_far_away(site):
    """
    README's laptop steps with the laptop 150 ms away: backup-now asks for
    a backup (BackupPC makes it a full, its first) and exits 0; then at 30 ms
    BackupPC_serverMesg asks for an incremental as BackupPC's CGI does.  Both
    with 0 transfer errors, alice's 0600 file included.
    """
    ct = site.ct
    since = site.set_round_trip(150)
    steps = readme_steps("laptop")
    assert steps[-1].startswith("bpctunnel backup-now"), steps
    for step in steps[:-1]:
        site.laptop(step)
    site.wait_tunnel(since)
    ct.wait_journal("bpctunnel-client", r"rsync 3\.2\.7 \(protocol \d+\) at /usr/bin/rsync", timeout=30)
    ct.wait_journal("bpctunnel-client", r"module documents reads files as root", timeout=30)
    ping = ct.run(["runuser", "-u", "backuppc", "--", "bpctunnel", "ping", "laptop1"]).stdout
    print(f"bpctunnel ping laptop1 at 150 ms, as BackupPC runs it:\n{ping}")
    avg = float(re.search(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/", ping).group(1))
    assert 140 <= avg < 1000, ping
    done = site.laptop(steps[-1], timeout=600)
    assert "BackupPC reports the backup succeeded" in done.stdout, done.stdout
    [full] = site.backups("laptop1")
    assert (full["type"], full["xfer_errs"], full["xfer_bad_file"]) == ("full", "0", "0"), full

    since = site.set_round_trip(30)
    site.wait_tunnel(since)
    log = f"{TOP_DIR}/pc/laptop1/LOG.{ct.run(['date', '+%m%Y']).stdout.strip()}"
    assert "ok" in site.mesg("backup", "laptop1", "laptop1", "backuppc", "0")
    line = ct.wait_file_line(log, r"incr backup 1 complete|backup failed|dump failed|"
                                  r"ping too slow|no ping", timeout=600)
    assert "incr backup 1 complete" in line, ct.read_file(log)
    full, incr = site.backups("laptop1")
    assert (incr["type"], incr["xfer_errs"], incr["xfer_bad_file"]) == ("incr", "0", "0"), incr
    listing = site.backed_up_files("laptop1", "1", "documents")
    assert "secret.txt" in listing and "big.bin" in listing, listing
    status = site.mesg("status", "host(laptop1)")
    assert "Reason_backup_done" in status, status


def test_user_unit_backs_up_the_users_files(site):
    """The same laptop's client as alice's own user unit: her files, as her."""
    ct = site.ct
    ct.run(["systemctl", "disable", "--now", "bpctunnel-client"])
    ct.run(["mkdir", "-p", "-m", "0700", "/home/alice/.config/bpctunnel"], user="alice")
    ct.sh("cp /etc/bpctunnel/client.conf /etc/bpctunnel/laptop1.crt /etc/bpctunnel/laptop1.key "
          "/etc/bpctunnel/ca.crt /etc/bpctunnel/rsyncd.conf /etc/bpctunnel/rsyncd.secrets "
          "/home/alice/.config/bpctunnel/ && "
          "chown -R alice:alice /home/alice/.config/bpctunnel")
    ct.enable_user_manager("alice")
    since = site.now()
    ct.run_user_systemctl("alice", "enable", "--now", "bpctunnel-client")
    site.wait_tunnel(since, unit="bpctunnel-client.service", user_unit=True)
    ct.wait_journal("bpctunnel-client.service", r"module documents reads files as alice",
                    user_unit=True, timeout=30)
    number = 1 + max(int(b["num"]) for b in site.backups("laptop1"))
    done = ct.run(["bpctunnel", "backup-now", "--full", "--config",
                   "/home/alice/.config/bpctunnel/client.conf"], user="alice", timeout=600)
    assert "BackupPC reports the backup succeeded" in done.stdout, done.stdout
    # DumpPostUserCmd (backup-done) runs before BackupPC has closed the
    # backup's record: its "complete" line in the host's LOG comes after.
    log = f"{TOP_DIR}/pc/laptop1/LOG.{ct.run(['date', '+%m%Y']).stdout.strip()}"
    line = ct.wait_file_line(log, rf"full backup {number} complete|backup failed|dump failed",
                             timeout=120)
    assert f"full backup {number} complete" in line, ct.read_file(log)
    latest = site.backups("laptop1")[-1]
    assert latest["num"] == str(number), latest
    assert (latest["type"], latest["xfer_errs"]) == ("full", "0"), latest
    assert "secret.txt" in site.backed_up_files("laptop1", latest["num"], "documents")


def test_check_names_a_share_the_laptop_lacks(site):
    """A share added on the server alone: check, with the tunnel up, names it."""
    live = site.admin("bpctunnel status --json").stdout
    assert '"laptop1"' in live, live
    added = site.admin("bpctunnel register-client laptop1 --share documents --share music "
                       "--out laptop1-bundle").stdout
    assert "BackupPC now expects module(s) music from laptop1" in added, added
    check = site.admin("bpctunnel check laptop1", check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "expects module(s) music that the laptop does not serve" in check.stdout, check.stdout


def test_demo_with_the_packaged_bpctunnel(site):
    """`bpctunnel demo` as root with this machine's rsync 3.2.7."""
    assert "version 3.2.7 " in site.ct.run(["rsync", "--version"]).stdout
    demo = site.admin("bpctunnel demo", timeout=300)
    assert "Demo succeeded." in demo.stdout, demo.stdout + demo.stderr
