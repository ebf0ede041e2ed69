"""
The Debian package built by packaging/build-deb.py, checked with dpkg-deb:
its fields, its files, no build path left in any of them, and its Python
environment runs from wherever it is extracted.  (Installing it with dpkg -i
on a Debian 12 under systemd is tests/system's job.)
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import bpctunnel
from tests.helpers import PROJECT_ROOT

BUILD_SCRIPT = PROJECT_ROOT / "packaging" / "build-deb.py"
PYTHON = "/usr/bin/python3.11"
PREFIX = "opt/bpctunnel"
SITE = f"{PREFIX}/lib/python3.11/site-packages"
#: mkdtemp's prefix for the build folder, hence in every staging path.
STAGING_MARK = "bpctunnel-deb-"
UNITS = {
    "lib/systemd/system/bpctunnel-server.service": "etc/bpctunnel-server.service",
    "lib/systemd/system/bpctunnel-client.service": "etc/bpctunnel-client.service",
    "usr/lib/systemd/user/bpctunnel-client.service": "etc/user/bpctunnel-client.service",
}
FILES = [f"{PREFIX}/bin/bpctunnel", f"{PREFIX}/bin/twistd", f"{PREFIX}/pyvenv.cfg",
         f"{SITE}/bpctunnel/__init__.py", f"{SITE}/twisted/plugins/bpctunnel_plugins.py",
         f"{SITE}/twisted/plugins/dropin.cache",
         f"{SITE}/bpctunnel/server/dashboard_files/index.html",
         f"{SITE}/bpctunnel/server/dashboard_files/dashboard.js",
         f"{SITE}/bpctunnel/server/dashboard_files/dashboard.css",
         "usr/share/doc/bpctunnel/copyright",
         "usr/share/doc/bpctunnel/examples/haproxy-bpctunnel.cfg",
         "usr/share/doc/bpctunnel/examples/nginx-bpctunnel.conf",
         "usr/share/doc/bpctunnel/examples/apache-bpctunnel.conf", *UNITS]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def need_tools() -> None:
    missing = [tool for tool in ("dpkg-deb", "grep") if not shutil.which(tool, path=clean_env()["PATH"])]
    if missing:
        raise AssertionError(f"{', '.join(missing)} not found: apt-get install dpkg grep")
    if not Path(PYTHON).exists():
        raise AssertionError(f"{PYTHON} not found: apt-get install python3.11 python3-venv")


def debian_version(version: str) -> str:
    """The build script's own PEP 440 to Debian conversion."""
    spec = importlib.util.spec_from_file_location("build_deb", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.debian_version(version)


class DebianPackageTests(SynchronousTestCase):
    """One build (about 30 s) shared by the tests of this class."""

    @classmethod
    def setUpClass(cls):
        need_tools()
        cls.folder = Path(tempfile.mkdtemp(prefix="bpctunnel-test-deb-"))
        try:
            result = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--out", str(cls.folder / "out")],
                                    capture_output=True, text=True, timeout=600, env=clean_env(),
                                    cwd=cls.folder)
            if result.returncode:
                raise AssertionError(f"build-deb.py failed:\n{result.stdout}{result.stderr}")
            cls.deb = Path(result.stdout.strip().splitlines()[-1])
            if not cls.deb.is_file():
                raise AssertionError(f"build-deb.py printed {cls.deb}, which is no file")
            cls.root = cls.folder / "root"
            subprocess.run(["dpkg-deb", "-x", str(cls.deb), str(cls.root)], check=True, timeout=120)
        except BaseException:
            shutil.rmtree(cls.folder, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.folder, ignore_errors=True)

    def dpkg_deb(self, *args) -> str:
        result = subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_name(self):
        self.assertEqual(self.deb.name, f"bpctunnel_{debian_version(bpctunnel.__version__)}_amd64.deb")

    def test_fields(self):
        fields = {}
        for line in self.dpkg_deb("--field", str(self.deb), "Package", "Architecture", "Version",
                                  "Depends", "Installed-Size").splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        self.assertEqual(fields["Package"], "bpctunnel")
        self.assertEqual(fields["Architecture"], "amd64")
        self.assertEqual(fields["Version"], debian_version(bpctunnel.__version__))
        depends = [d.strip().split(" ")[0] for d in fields["Depends"].split(",")]
        self.assertIn("python3.11", depends)
        self.assertIn("rsync", depends)
        self.assertGreater(int(fields["Installed-Size"]), 10_000)
        # dpkg-deb --info reads the same control file and lists the maintainer scripts.
        info = self.dpkg_deb("--info", str(self.deb))
        for name in ("postinst", "prerm", "postrm"):
            self.assertIn(name, info)

    def test_contents(self):
        listing = self.dpkg_deb("--contents", str(self.deb))
        entries = {}
        for line in listing.splitlines():
            perms, owner, *_ = line.split()
            path = line.split(" ./", 1)[1] if " ./" in line else ""
            name, _, target = path.partition(" -> ")
            entries[name.rstrip("/")] = (perms, owner, target)
        for name in FILES:
            self.assertIn(name, entries)
            self.assertTrue(entries[name][0].startswith("-"), name)
        self.assertEqual(entries["usr/bin/bpctunnel"][0][0], "l")
        self.assertEqual(entries["usr/bin/bpctunnel"][2], "/opt/bpctunnel/bin/bpctunnel")
        self.assertEqual(entries[f"{PREFIX}/bin/python3.11"][2], PYTHON)
        self.assertEqual({owner for _, owner, _ in entries.values()}, {"root/root"})
        self.assertFalse([n for n in entries if n.startswith(f"{SITE}/pip")], "pip is in the package")
        self.assertFalse([n for n in entries if n.startswith("etc/")], "the package ships /etc files")
        for name, source in UNITS.items():
            self.assertEqual((self.root / name).read_text(), (PROJECT_ROOT / source).read_text(), name)

    def test_no_staging_path(self):
        """Nothing in the package names the build folder or the checkout (grep -r)."""
        for needle in (STAGING_MARK, str(PROJECT_ROOT)):
            result = subprocess.run(["grep", "-r", "-l", "-a", "-F", needle, str(self.root)],
                                    capture_output=True, text=True, timeout=120)
            self.assertEqual((result.returncode, result.stdout), (1, ""), f"{needle} found")
        links = [p for p in self.root.rglob("*") if p.is_symlink()
                 and (STAGING_MARK in os.readlink(p) or str(PROJECT_ROOT) in os.readlink(p))]
        self.assertEqual(links, [])
        bin_dir = self.root / PREFIX / "bin"
        for script in bin_dir.iterdir():
            if script.is_file() and not script.is_symlink() and os.access(script, os.X_OK):
                self.assertEqual(script.read_text().splitlines()[0], "#!/opt/bpctunnel/bin/python",
                                 script.name)
        self.assertIn("VIRTUAL_ENV=/opt/bpctunnel\n", (bin_dir / "activate").read_text())
        self.assertIn(f"executable = {PYTHON}", (self.root / PREFIX / "pyvenv.cfg").read_text())
        # Byte code names the installed source files, as tracebacks will show them.
        pyc = self.root / SITE / "bpctunnel" / "__pycache__" / "__init__.cpython-311.pyc"
        code = marshal.loads(pyc.read_bytes()[16:])
        self.assertEqual(code.co_filename, f"/{SITE}/bpctunnel/__init__.py")

    def test_extracted_environment_runs(self):
        """
        The venv's python is a symlink to /usr/bin/python3.11 and finds its
        site-packages next to its pyvenv.cfg, so the extracted tree runs as is.
        It writes nothing there: byte code and Twisted's plugin cache are
        current (under systemd /opt is read-only for the units).
        """
        venv = self.root / PREFIX
        python = venv / "bin" / "python"
        self.assertEqual(os.path.realpath(python), os.path.realpath(PYTHON))
        before = sorted((str(p), p.stat().st_mtime_ns) for p in venv.rglob("*") if not p.is_symlink())

        def run(*argv) -> str:
            result = subprocess.run([str(python), *argv], capture_output=True, text=True, timeout=120,
                                    env=clean_env(), cwd=self.folder)
            self.assertEqual(result.returncode, 0, f"{argv}:\n{result.stdout}{result.stderr}")
            return result.stdout

        out = run("-c", "import sys, bpctunnel, twisted, autobahn, OpenSSL, cryptography; "
                        "print(sys.prefix); print(bpctunnel.__file__); print(OpenSSL.__file__)")
        prefix, module, openssl = out.splitlines()
        self.assertEqual(prefix, str(venv))
        self.assertEqual(module, str(self.root / SITE / "bpctunnel" / "__init__.py"))
        self.assertTrue(openssl.startswith(str(self.root / SITE)), openssl)
        self.assertEqual(run("-m", "bpctunnel", "--version"), f"bpctunnel {bpctunnel.__version__}\n")
        self.assertIn("--backuppc-conf", run(str(venv / "bin" / "twistd"), "bpctunnel-server", "--help"))
        self.assertIn("--rsyncd-conf", run(str(venv / "bin" / "twistd"), "bpctunnel-client", "--help"))
        after = sorted((str(p), p.stat().st_mtime_ns) for p in venv.rglob("*") if not p.is_symlink())
        self.assertEqual(before, after)

    def test_maintainer_scripts(self):
        control = self.folder / "control"
        subprocess.run(["dpkg-deb", "--control", str(self.deb), str(control)], check=True, timeout=60)
        for name in ("postinst", "prerm", "postrm"):
            script = control / name
            self.assertTrue(os.access(script, os.X_OK), name)
            result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
            self.assertEqual((result.returncode, result.stderr), (0, ""), name)
            text = script.read_text()
            # The admin enables the units after init-ca/register-client.
            self.assertNotIn("systemctl enable", text)
            self.assertNotIn("systemctl start", text)
            self.assertNotIn("deb-systemd-helper", text)
        postinst = (control / "postinst").read_text()
        for line in ["mkdir -p \"$dir\"", "chown root:backuppc", "chmod 0750", "chown root:root",
                     "chmod 0755", "fix_dir /etc/bpctunnel\n", "fix_dir /etc/bpctunnel/clients",
                     "[ -d /run/systemd/system ]", "systemctl daemon-reload"]:
            self.assertIn(line, postinst)
        # md5sums covers every file (debsums, dpkg --verify).
        md5sums = (control / "md5sums").read_text()
        self.assertIn(f"  {PREFIX}/bin/bpctunnel\n", md5sums)
        self.assertIn("  lib/systemd/system/bpctunnel-server.service\n", md5sums)
