"""
Deployment: the systemd units pass systemd-analyze verify and are hardened
(systemd-analyze security), and a wheel built from this tree carries them and
installs in a fresh virtualenv with working twistd plugins.
"""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import bpctunnel
from tests.helpers import PROJECT_ROOT, temp_dir

UNITS = ["bpctunnel-server.service", "bpctunnel-client.service", "user/bpctunnel-client.service"]
INSTALLED_TWISTD = "/opt/bpctunnel/bin/twistd"
#: Where the wheel puts each unit, relative to the environment's prefix.
WHEEL_UNITS = {
    "bpctunnel-server.service": "share/bpctunnel/systemd/system/bpctunnel-server.service",
    "bpctunnel-client.service": "share/bpctunnel/systemd/system/bpctunnel-client.service",
    "user/bpctunnel-client.service": "share/bpctunnel/systemd/user/bpctunnel-client.service",
}


def unit_directives(name: str) -> dict[str, list[str]]:
    """The unit's directives, each with its values in order (comments left out)."""
    directives: dict[str, list[str]] = {}
    for line in (PROJECT_ROOT / "etc" / name).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def clean_env() -> dict:
    """Our environment without the project on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


class SystemdUnitTests(SynchronousTestCase):
    """Acceptance 4: systemd-analyze verify accepts the units."""

    def test_units_verify(self):
        """Each unit, pointed at this machine's twistd instead of /opt/bpctunnel, verifies."""
        twistd = Path(sys.executable).parent / "twistd"
        self.assertTrue(twistd.exists(), f"{twistd} missing: pip install -e . first")
        folder = temp_dir(self)
        for name in UNITS:
            text = (PROJECT_ROOT / "etc" / name).read_text()
            self.assertIn(INSTALLED_TWISTD, text)
            target = folder / Path(name).name.replace(".service", f"-{len(name)}.service")
            target.write_text(text.replace(INSTALLED_TWISTD, str(twistd)))
            result = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True,
                                    text=True, timeout=120)
            self.assertEqual((result.returncode, result.stderr.strip()), (0, ""), name)

    def test_server_unit_hardening(self):
        """It runs as backuppc; MemoryDenyWriteExecute= is left out, with the reason."""
        text = (PROJECT_ROOT / "etc" / "bpctunnel-server.service").read_text()
        for line in ["User=backuppc\n", "Group=backuppc\n", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                     "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n",
                     "StateDirectory=bpctunnel\n", "RuntimeDirectory=bpctunnel\n",
                     "LimitNOFILE=65536", "Restart=on-failure",
                     "ExecStart=/opt/bpctunnel/bin/twistd --nodaemon --pidfile= --logfile=- "
                     "bpctunnel-server --listen 8443 --certs /etc/bpctunnel --backuppc-conf /etc/backuppc\n",
                     "# No MemoryDenyWriteExecute=yes: "]:
            self.assertIn(line, text)
        self.assertNotIn("User=bpctunnel", text)
        for name in UNITS:
            directives = unit_directives(name)
            self.assertNotIn("MemoryDenyWriteExecute", directives, name)
            self.assertIn("MemoryError: Cannot allocate write+execute memory for ffi.callback()",
                          (PROJECT_ROOT / "etc" / name).read_text(), name)
            self.assertEqual(directives.get("NoNewPrivileges"), ["yes"], name)
        for name in UNITS[1:]:
            self.assertIn("Restart=always", (PROJECT_ROOT / "etc" / name).read_text())

    def test_client_unit_hardening(self):
        """Root, but only the capabilities rsync needs; the file system read-only, /home visible."""
        directives = unit_directives("bpctunnel-client.service")
        self.assertNotIn("User", directives)
        self.assertEqual(set(directives["CapabilityBoundingSet"][0].split()),
                         {"CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID", "CAP_SYS_CHROOT",
                          "CAP_DAC_OVERRIDE", "CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID"})
        self.assertEqual(directives["ProtectSystem"], ["strict"])
        self.assertEqual(directives["ProtectHome"], ["read-only"])
        self.assertEqual(directives["RestrictAddressFamilies"], ["AF_INET AF_INET6 AF_UNIX"])
        self.assertIn("chroot", directives["SystemCallFilter"][0].split())
        self.assertIn("--config /etc/bpctunnel/client.conf", directives["ExecStart"][0])
        self.assertIn("--config %h/.config/bpctunnel/client.conf",
                      unit_directives("user/bpctunnel-client.service")["ExecStart"][0])

    def test_security_exposure(self):
        """systemd-analyze security: before this hardening server 3.7, client 9.2, user unit 9.8."""
        folder = temp_dir(self)
        limits = {"bpctunnel-server.service": 1.5, "bpctunnel-client.service": 3.0,
                  "user/bpctunnel-client.service": 6.5}
        for name, limit in limits.items():
            target = folder / name.replace("/", "-")
            target.write_text((PROJECT_ROOT / "etc" / name).read_text())
            argv = ["systemd-analyze", "security", "--offline=true", "--no-pager", str(target)]
            if name.startswith("user/"):
                argv.insert(2, "--user")
            runtime = folder / "runtime"
            runtime.mkdir(exist_ok=True)
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
            match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
            self.assertIsNotNone(match, f"{name}: {result.stdout}{result.stderr}")
            self.assertLessEqual(float(match.group(1)), limit, name)


class WheelTests(SynchronousTestCase):
    """Acceptance 5: the wheel installs in a fresh venv; twistd finds the plugins."""

    def run_ok(self, argv, **kwargs) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                                env=clean_env(), **kwargs)
        self.assertEqual(result.returncode, 0, f"{argv}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def test_wheel_in_fresh_venv(self):
        root = temp_dir(self)
        self.run_ok([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir",
                     str(root / "dist"), str(PROJECT_ROOT)])
        wheels = list((root / "dist").glob("bpctunnel-*.whl"))
        sdists = list((root / "dist").glob("bpctunnel-*.tar.gz"))
        self.assertEqual((len(wheels), len(sdists)), (1, 1))
        # The units travel in the wheel (built from the sdist) as data files.
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = wheel.namelist()
            for unit, target in WHEEL_UNITS.items():
                member = f"bpctunnel-{bpctunnel.__version__}.data/data/{target}"
                self.assertIn(member, names)
                self.assertEqual(wheel.read(member).decode(), (PROJECT_ROOT / "etc" / unit).read_text())
        self.run_ok([sys.executable, "-m", "venv", str(root / "venv")])
        bin_dir = root / "venv" / "bin"
        self.run_ok([str(bin_dir / "pip"), "install", "-q", str(wheels[0])])
        help_text = self.run_ok([str(bin_dir / "twistd"), "bpctunnel-server", "--help"], cwd=root)
        self.assertIn("--backuppc-conf", help_text)
        client_help = self.run_ok([str(bin_dir / "twistd"), "bpctunnel-client", "--help"], cwd=root)
        self.assertIn("--rsyncd-conf", client_help)
        version = self.run_ok([str(bin_dir / "bpctunnel"), "--version"], cwd=root)
        self.assertEqual(version, f"bpctunnel {bpctunnel.__version__}\n")
        for unit, target in WHEEL_UNITS.items():
            self.assertEqual((root / "venv" / target).read_text(),
                             (PROJECT_ROOT / "etc" / unit).read_text())
