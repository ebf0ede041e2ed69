#!/usr/bin/env python3
"""
Build the Debian package ``bpctunnel`` (amd64) from this checkout.

    python3 packaging/build-deb.py --out DIR

prints the path of the .deb it wrote.  The package carries its own Python
environment, the way dh-virtualenv does it: a virtualenv for Debian's
``/usr/bin/python3.11`` is assembled in a staging root at
``STAGE/opt/bpctunnel``, this checkout's wheel and its dependencies (from the
package index pip is configured for) are installed into it, and since a
virtualenv is not relocatable every absolute staging path is then rewritten to
``/opt/bpctunnel`` (script shebangs, ``activate*``, ``pyvenv.cfg``); byte code
is compiled with the installed paths, and the build fails if any staging path
is left in any file.

Needs (Debian 12): python3.11, python3-venv (ensurepip), dpkg (dpkg-deb), and
access to PyPI or a mirror.  This script itself runs under any Python >= 3.9.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGE = "bpctunnel"
PREFIX = "/opt/bpctunnel"
HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
# Files of the package that are not in the virtualenv: (source in checkout, target).
UNIT_TARGETS = {
    "share/bpctunnel/systemd/system/bpctunnel-server.service": "lib/systemd/system/bpctunnel-server.service",
    "share/bpctunnel/systemd/system/bpctunnel-client.service": "lib/systemd/system/bpctunnel-client.service",
    "share/bpctunnel/systemd/user/bpctunnel-client.service": "usr/lib/systemd/user/bpctunnel-client.service",
}
EXAMPLES = ["etc/haproxy-bpctunnel.cfg", "etc/nginx-bpctunnel.conf", "etc/apache-bpctunnel.conf"]
DOC = "usr/share/doc/bpctunnel"


class BuildError(Exception):
    pass


def log(message: str) -> None:
    print(f"build-deb: {message}", file=sys.stderr, flush=True)


def clean_env() -> dict:
    """The environment for the tools we run: no Python or venv of the caller leaks in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PIP_USER",
                        "PYTHONUSERBASE", "PIP_REQUIRE_VIRTUALENV")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONNOUSERSITE"] = "1"
    env["LC_ALL"] = "C.UTF-8"
    return env


def run(argv, **kwargs) -> str:
    argv = [str(a) for a in argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), **kwargs)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found; on Debian 12: apt-get install python3.11 python3-venv dpkg")
    if result.returncode:
        raise BuildError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def copy_source(dest: Path) -> None:
    """Copy the checkout's files (tracked or new, not ignored) so the build never writes into it."""
    files = None
    if (CHECKOUT / ".git").exists() and shutil.which("git"):
        try:
            out = subprocess.run(["git", "-C", str(CHECKOUT), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=True).stdout
            files = [f for f in out.decode().split("\0") if f]
        except subprocess.CalledProcessError:
            files = None
    if files is None:
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache"}
        files = [str(p.relative_to(CHECKOUT)) for p in CHECKOUT.rglob("*")
                 if p.is_file() and not (set(p.relative_to(CHECKOUT).parts) & skip)
                 and not any(part.endswith(".egg-info") for part in p.parts)]
    for name in files:
        src = CHECKOUT / name
        if src.is_file():  # deleted but still tracked files are skipped
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def debian_version(version: str) -> str:
    """PEP 440 to Debian: pre- and dev releases sort before the release (1.0rc1 -> 1.0~rc1)."""
    public, _, local = version.partition("+")
    public = re.sub(r"[.-]?(dev|rc|a|b)(\d*)", r"~\1\2", public)
    return public + (f"+{local}" if local else "")


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def rewrite_staging_paths(venv: Path) -> list[str]:
    """Replace the staging path of the venv by PREFIX in every text file; returns those changed."""
    old = str(venv).encode()
    changed = []
    for path in sorted(venv.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix == ".pyc":
            continue
        data = path.read_bytes()
        if old not in data:
            continue
        if is_elf(path):
            raise BuildError(f"{path} (a binary) contains the staging path {venv}")
        path.write_bytes(data.replace(old, PREFIX.encode()))
        changed.append(str(path.relative_to(venv)))
    return changed


def find_leftovers(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            target = os.readlink(path).encode()
            if any(n in target for n in needles):
                found.append(f"{path.relative_to(root)} -> {target.decode()}")
        elif path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path.relative_to(root)))
    return found


def bundled_distributions(site_packages: Path) -> list[tuple[str, str, str]]:
    """(name, version, licence) of every distribution installed in the venv."""
    rows = []
    for meta in sorted(site_packages.glob("*.dist-info/METADATA")):
        msg = email.parser.Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        licence = (msg.get("License-Expression") or msg.get("License") or "").strip()
        if not licence or "\n" in licence or len(licence) > 60:
            classifiers = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or []
                           if c.startswith("License ::")]
            licence = ", ".join(classifiers) or "see its dist-info"
        rows.append((msg["Name"], msg["Version"], licence))
    return rows


def copyright_text(rows) -> str:
    lines = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        "Upstream-Name: bpctunnel",
        "",
        "Files: *",
        "Copyright: the bpctunnel authors",
        "License: MIT",
        "",
        f"Files: {PREFIX}/lib/python3.11/site-packages/*",
        "Copyright: the authors of each bundled Python distribution",
        "License: various",
        " The Python environment in /opt/bpctunnel bundles these distributions, each",
        " under its own licence; its full licence text is in its *.dist-info folder:",
        " .",
    ]
    lines += [f" {name} {version}: {licence}" for name, version, licence in rows]
    lines += [
        "",
        "License: MIT",
        " Permission is hereby granted, free of charge, to any person obtaining a copy",
        " of this software and associated documentation files (the \"Software\"), to deal",
        " in the Software without restriction, including without limitation the rights",
        " to use, copy, modify, merge, publish, distribute, sublicense, and/or sell",
        " copies of the Software, and to permit persons to whom the Software is",
        " furnished to do so, subject to the following conditions:",
        " .",
        " The above copyright notice and this permission notice shall be included in",
        " all copies or substantial portions of the Software.",
        " .",
        " THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR",
        " IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,",
        " FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE",
        " AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER",
        " LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,",
        " OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE",
        " SOFTWARE.",
        "",
    ]
    return "\n".join(lines)


def control_text(version: str, installed_kib: int, python_dep: str) -> str:
    return f"""\
Package: {PACKAGE}
Version: {version}
Architecture: amd64
Maintainer: bpctunnel maintainers <root@localhost>
Installed-Size: {installed_kib}
Depends: {python_dep}, rsync
Suggests: backuppc
Section: admin
Priority: optional
Homepage: https://pypi.org/project/bpctunnel/
Description: reverse tunnel that lets BackupPC back up machines it cannot reach
 bpctunnel lets a BackupPC server back up laptops behind NAT, hosts with
 dynamic addresses and networks with no inbound ports: the client opens one
 outbound WebSocket over mutual TLS to the server, which gives BackupPC a local
 rsyncd port for it.
 .
 One package, two roles.  On the BackupPC server: bpctunnel-server.service
 (runs as the backuppc user) and the bpctunnel admin command.  On a laptop:
 bpctunnel-client.service (system-wide, as root) or the user unit
 bpctunnel-client.service (systemctl --user).  No unit is enabled on install.
 .
 The package carries its own Python environment in {PREFIX}, built for
 Debian's python3.11.
"""


POSTINST = r"""#!/bin/sh
# bpctunnel postinst: make /etc/bpctunnel and /etc/bpctunnel/clients.
#  - laptop (no backuppc group): root:root 0755;
#  - BackupPC server (group backuppc exists): root:backuppc 0750, so that the
#    server, which runs as user backuppc, reads its certificate and key there
#    and nobody else lists the folder.
# A dpkg-statoverride on either folder wins.  No unit is enabled or started:
# the admin runs `bpctunnel init-ca` / `register-client` first.
set -e

fix_dir() {
    dir="$1"
    [ -d "$dir" ] || mkdir -p "$dir"
    if dpkg-statoverride --list "$dir" >/dev/null 2>&1; then
        return 0
    fi
    if getent group backuppc >/dev/null 2>&1; then
        chown root:backuppc "$dir"
        chmod 0750 "$dir"
    else
        chown root:root "$dir"
        chmod 0755 "$dir"
    fi
}

case "$1" in
    configure)
        fix_dir /etc/bpctunnel
        fix_dir /etc/bpctunnel/clients
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload >/dev/null 2>&1 || true
            if [ -n "$2" ]; then
                # An upgrade: running units get the new code.
                systemctl try-restart bpctunnel-server.service bpctunnel-client.service >/dev/null 2>&1 || true
            fi
        fi
        ;;
esac
exit 0
"""

PRERM = r"""#!/bin/sh
# bpctunnel prerm: on removal, stop the units (their code is about to go).
set -e
case "$1" in
    remove|deconfigure)
        if [ -d /run/systemd/system ]; then
            systemctl stop bpctunnel-server.service bpctunnel-client.service >/dev/null 2>&1 || true
        fi
        ;;
esac
exit 0
"""

POSTRM = r"""#!/bin/sh
# bpctunnel postrm.  Purge keeps /etc/bpctunnel if anything is in it: it may
# hold the CA's private key and the clients' certificates.
set -e
case "$1" in
    remove)
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload >/dev/null 2>&1 || true
        fi
        ;;
    purge)
        rmdir /etc/bpctunnel/clients 2>/dev/null || true
        rmdir /etc/bpctunnel 2>/dev/null || true
        ;;
esac
exit 0
"""


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build(out: Path, python: str, keep: bool, compress: str) -> Path:
    started = time.monotonic()
    os.umask(0o022)
    if not Path(python).exists():
        raise BuildError(f"{python} not found: apt-get install python3.11 python3-venv")
    for tool in ("dpkg-deb",):
        if not shutil.which(tool, path=clean_env()["PATH"]):
            raise BuildError(f"{tool} not found: apt-get install dpkg")
    work = Path(tempfile.mkdtemp(prefix="bpctunnel-deb-"))
    try:
        src, dist, stage = work / "src", work / "dist", work / "root"
        venv = stage / PREFIX.lstrip("/")
        log(f"copying the checkout {CHECKOUT}")
        copy_source(src)

        log(f"creating the virtualenv for {python}")
        run([python, "-m", "venv", venv])
        vpython = venv / "bin" / "python"
        log("building the wheel")
        run([vpython, "-m", "pip", "wheel", "-q", "--use-pep517", "--no-deps", "-w", dist, src], cwd=work)
        wheels = list(dist.glob("bpctunnel-*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"expected one bpctunnel wheel in {dist}, found {wheels}")
        log(f"installing {wheels[0].name} and its dependencies")
        run([vpython, "-m", "pip", "install", "-q", "--no-compile", wheels[0]], cwd=work)
        # No pip (nor setuptools, which nothing requires) in the package:
        # /opt/bpctunnel changes only with the package.
        run([vpython, "-m", "pip", "uninstall", "-q", "-y", "setuptools", "pip"], cwd=work)

        site_packages = venv / "lib" / "python3.11" / "site-packages"
        if not site_packages.is_dir():
            raise BuildError(f"{site_packages} missing: is {python} a Python 3.11?")
        # direct_url.json records the temporary wheel's path; it means nothing installed.
        for direct in site_packages.glob("bpctunnel-*.dist-info/direct_url.json"):
            direct.unlink()
            record = direct.parent / "RECORD"
            record.write_text("".join(line for line in record.read_text().splitlines(True)
                                      if not line.startswith(f"{direct.parent.name}/direct_url.json,")))
        version = run([vpython, "-c", "import bpctunnel; print(bpctunnel.__version__)"], cwd=work).strip()
        # Twisted's plugin cache: written now, since site-packages is read-only
        # for the server (user backuppc, ProtectSystem=strict).
        run([vpython, "-B", "-c", "from twisted.plugin import IPlugin, getPlugins; "
             "from twisted.application.service import IServiceMaker; "
             "names = {p.tapname for p in getPlugins(IServiceMaker)}; "
             "assert {'bpctunnel-server', 'bpctunnel-client'} <= names, names; "
             "list(getPlugins(IPlugin))"], cwd=work)

        changed = rewrite_staging_paths(venv)
        log(f"rewrote the staging path in {len(changed)} files: {', '.join(changed)}")
        # Byte code, with /opt/bpctunnel/... as each module's file name (any
        # byte code compiled before, e.g. by ensurepip, names the staging path).
        for cache in list(venv.rglob("__pycache__")):
            shutil.rmtree(cache)
        run([vpython, "-B", "-m", "compileall", "-q", "-j0", "-s", stage, "-p", "/", venv / "lib"], cwd=work)

        # Units (from the venv: the wheel carries them), the command on PATH, docs.
        for source, target in UNIT_TARGETS.items():
            unit = venv / source
            if not unit.is_file():
                raise BuildError(f"the wheel did not install {source}")
            (stage / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(unit, stage / target)
        (stage / "usr/bin").mkdir(parents=True)
        (stage / "usr/bin/bpctunnel").symlink_to(f"{PREFIX}/bin/bpctunnel")
        doc = stage / DOC
        (doc / "examples").mkdir(parents=True)
        for example in EXAMPLES:
            shutil.copyfile(src / example, doc / "examples" / Path(example).name)
        shutil.copyfile(src / "README.rst", doc / "README.rst")
        write(doc / "copyright", copyright_text(bundled_distributions(site_packages)))

        leftovers = find_leftovers(stage, [str(work).encode(), str(CHECKOUT).encode()])
        if leftovers:
            raise BuildError("staging or checkout paths left in: " + ", ".join(leftovers))

        # Every directory 0755, every file 0644 or 0755 (owner root via --root-owner-group).
        for path in [stage, *stage.rglob("*")]:
            if path.is_symlink():
                continue
            if path.is_dir():
                path.chmod(0o755)
            else:
                path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)

        debian = stage / "DEBIAN"
        debian.mkdir()
        md5 = []
        size = 0
        for path in sorted(stage.rglob("*")):
            rel = path.relative_to(stage)
            if rel.parts[0] == "DEBIAN":
                continue
            size += 1 if path.is_symlink() or path.is_dir() else (path.stat().st_size + 1023) // 1024
            if path.is_file() and not path.is_symlink():
                md5.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
        write(debian / "md5sums", "".join(md5))
        deb_version = debian_version(version)
        python_dep = f"{Path(python).name}"
        write(debian / "control", control_text(deb_version, size, python_dep))
        write(debian / "postinst", POSTINST, 0o755)
        write(debian / "prerm", PRERM, 0o755)
        write(debian / "postrm", POSTRM, 0o755)

        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{PACKAGE}_{deb_version}_amd64.deb"
        log(f"packing {deb}")
        run(["dpkg-deb", "--root-owner-group", f"-Z{compress}", "--build", stage, deb])
        log(f"done in {time.monotonic() - started:.0f} s, {deb.stat().st_size / 1e6:.1f} MB")
        return deb.resolve()
    finally:
        if keep:
            log(f"kept the build folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build the bpctunnel .deb from this checkout; "
                                                 "prints the path of the .deb.")
    parser.add_argument("--out", default=".", help="folder for the .deb (default: the current one)")
    parser.add_argument("--python", default="/usr/bin/python3.11",
                        help="the interpreter the package's virtualenv uses (default: %(default)s)")
    parser.add_argument("--compress", default="xz", choices=["xz", "gzip", "zstd", "none"],
                        help="dpkg-deb compression (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the build folder, for debugging")
    args = parser.parse_args(argv)
    try:
        deb = build(Path(args.out).resolve(), args.python, args.keep, args.compress)
    except BuildError as e:
        print(f"build-deb: error: {e}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
