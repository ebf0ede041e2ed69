"""
The client reads rsyncd.conf exactly as rsync does (bpctunnel.client.rsyncd_conf):
spellings of booleans, continuations, comments, merged and reopened sections,
checked against what real rsync daemons (the host's and 3.2.7) let a client write.
"""

import subprocess

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.client.rsync_daemon import RsyncLauncher
from bpctunnel.client.rsyncd_conf import parse_rsyncd_conf, writable_modules
from bpctunnel.errors import ConfigError
from tests.helpers import temp_dir
from tests.test_mux import FakeLocalEnd, Wire
from tests.old_rsync import rsync_3_2_7
from tests.test_rsync_auth import serve_once

#: (name, rsyncd.conf after the module's path line or around it, writable?)
CASES = [
    ("plain no", "[docs]\n{path}\nread only = no\n", True),
    ("spaced no", "[docs]\n{path}\nread only = n o\n", True),
    ("upper NO", "[docs]\n{path}\nREAD ONLY = NO\n", True),
    ("squeezed key", "[docs]\n{path}\nreadonly=false\n", True),
    ("spaced key", "[docs]\n{path}\nr e a d o n l y = 0\n", True),
    ("off is no boolean", "[docs]\n{path}\nread only = off\n", False),
    ("badly formed keeps no", "[docs]\n{path}\nread only = no\nread only = maybe\n", True),
    ("global default", "read only = no\n[docs]\n{path}\n", True),
    ("later global only for later modules",
     "read only = no\n[docs]\n{path}\n[global]\nread only = yes\n", True),
    ("later global does not reach back",
     "[docs]\n{path}\n[global]\nread only = no\n", False),
    ("merged sections", "[docs]\n{path}\nread only = yes\n[ D O C S ]\nread only = no\n", True),
    ("comment does not continue", "[docs]\n{path}\n# note \\\nread only = no\n", True),
    ("value continues", "[docs]\n{path}\nread only = \\\n  no\n", True),
    ("key continues", "[docs]\n{path}\nread \\\n only = no\n", True),
    ("read only yes", "[docs]\n{path}\nread only = yes\n", False),
    ("default", "[docs]\n{path}\n", False),
]


class ParseTests(SynchronousTestCase):
    def test_cases(self):
        for name, text, writable in CASES:
            _, modules = parse_rsyncd_conf(text.format(path="path = /tmp"), name)
            self.assertEqual(len(modules), 1, name)
            (settings,) = modules.values()
            self.assertEqual(settings.get("readonly") == "no", writable, name)

    def test_include_refused(self):
        for directive in ("&include /etc/rsyncd.d", "&merge /etc/rsyncd.d"):
            e = self.assertRaises(ConfigError, parse_rsyncd_conf,
                                  f"[docs]\npath = /tmp\n{directive}\n", "rsyncd.conf")
            self.assertIn("line 3: " + directive.split()[0], str(e))

    def test_module_keeps_first_spelling(self):
        _, modules = parse_rsyncd_conf("[My  Docs]\npath = /a\n[my docs]\nlist = no\n", "f")
        self.assertEqual(modules, {"My Docs": {"path": "/a", "list": "no"}})


class RealRsyncTests(SynchronousTestCase):
    """What each real rsync lets a client write, against what we read."""

    def writable_by(self, rsync, conf_text):
        root = temp_dir(self)
        (root / "docs").mkdir()
        (root / "upload.txt").write_text("from a hostile server\n")
        conf = root / "rsyncd.conf"
        conf.write_text("use chroot = no\n" + conf_text.format(path=f"path = {root / 'docs'}"))
        port, daemon = serve_once(rsync, conf, None)
        subprocess.run(["rsync", str(root / "upload.txt"), f"rsync://127.0.0.1:{port}/docs/"],
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        daemon.wait(timeout=60)
        return (root / "docs" / "upload.txt").exists(), writable_modules(conf) == ["docs"]

    def check(self, rsync):
        for name, text, expected in CASES:
            rsync_wrote, we_say = self.writable_by(rsync, text)
            self.assertEqual((rsync_wrote, we_say), (expected, expected), name)

    def test_host_rsync(self):
        self.check("/usr/bin/rsync")

    def test_rsync_3_2_7(self):
        self.check(str(rsync_3_2_7()))


class EditWhileRunningTests(SynchronousTestCase):
    """The writable-module guard reads rsyncd.conf again for every channel."""

    def launch(self, conf, allow_restore):
        spawned = []

        class Reactor(MemoryReactorClock):
            def spawnProcess(self, *args, **kwargs):
                spawned.append(args)
                raise OSError(2, "No such file or directory")   # enough: it was started

        wire = Wire()
        wire.client._accept_channel = RsyncLauncher(Reactor(), "/usr/bin/rsync", conf, euid=1000,
                                                    allow_restore=allow_restore)
        local = FakeLocalEnd()
        wire.server.open_channel().attach(local)
        wire.pump()
        return spawned, local.aborted

    def test_edit_noticed(self):
        conf = temp_dir(self) / "rsyncd.conf"
        conf.write_text("[docs]\npath = /tmp\nread only = yes\n")
        spawned, aborted = self.launch(conf, False)
        self.assertEqual(len(spawned), 1)
        conf.write_text("[docs]\npath = /tmp\nread only = n o\n")
        spawned, aborted = self.launch(conf, False)
        self.assertEqual(spawned, [])
        self.assertIn("now has writable module(s) docs", aborted)
        spawned, aborted = self.launch(conf, True)
        self.assertEqual(len(spawned), 1)
