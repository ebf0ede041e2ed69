"""
Deployment: the systemd units pass systemd-analyze verify, and a wheel built
from this tree installs in a fresh virtualenv with working twistd plugins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import bpctunnel
from tests.helpers import PROJECT_ROOT, temp_dir

UNITS = ["bpctunnel-server.service", "bpctunnel-client.service", "user/bpctunnel-client.service"]
INSTALLED_TWISTD = "/opt/bpctunnel/bin/twistd"


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
        text = (PROJECT_ROOT / "etc" / "bpctunnel-server.service").read_text()
        for line in ["User=bpctunnel", "Group=backuppc", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                     "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                     "LimitNOFILE=65536", "Restart=on-failure",
                     "--nodaemon --pidfile= --logfile=- bpctunnel-server"]:
            self.assertIn(line, text)
        for name in UNITS[1:]:
            self.assertIn("Restart=always", (PROJECT_ROOT / "etc" / name).read_text())


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
        self.run_ok([sys.executable, "-m", "venv", str(root / "venv")])
        bin_dir = root / "venv" / "bin"
        self.run_ok([str(bin_dir / "pip"), "install", "-q", str(wheels[0])])
        help_text = self.run_ok([str(bin_dir / "twistd"), "bpctunnel-server", "--help"], cwd=root)
        self.assertIn("--backuppc-conf", help_text)
        client_help = self.run_ok([str(bin_dir / "twistd"), "bpctunnel-client", "--help"], cwd=root)
        self.assertIn("--rsyncd-conf", client_help)
        version = self.run_ok([str(bin_dir / "bpctunnel"), "--version"], cwd=root)
        self.assertEqual(version, f"bpctunnel {bpctunnel.__version__}\n")
