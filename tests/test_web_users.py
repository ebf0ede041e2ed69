"""
Who asks the status API and what BackupPC lets them see and do
(L{bpctunnel.server.web_users}): BackupPC's own C{CheckPermission} rules
over files in a folder, a fake group database and a fake clock; no sockets.
"""

from __future__ import annotations

import io
import os
import pwd
import sys

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.errors import ConfigError
from bpctunnel.server.service import Options
from bpctunnel.server.web_users import (
    DEFAULT_WEB_PROXY_USER, GROUP_MAX_AGE, ROOT, TOKEN_HOLDER, Viewer, WebUserMissing, WebUsers,
    viewer_for, web_proxy_uid, web_user_name,
)
from bpctunnel.testing.sandbox import Sandbox
from tests.helpers import temp_dir

PROXY_UID = 33
HOSTS = """\
host        dhcp    user    moreUsers
laptop1     0       alice
Laptop2     0       bob     alice,carol
laptop3     0       backuppc
"""


class WebUsersTestCase(SynchronousTestCase):
    def setUp(self):
        self.conf = temp_dir(self)
        (self.conf / "hosts").write_text(HOSTS)
        self.config_writes = 0
        self.write_config("backuppc", "")
        self.groups: dict[str, list[str]] = {}
        self.group_lookups: list[str] = []
        self.clock = Clock()
        self.web_users = WebUsers(self.conf, self.clock, PROXY_UID, self.members)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def members(self, group):
        self.group_lookups.append(group)
        return self.groups.get(group)

    def write_config(self, users, groups):
        path = self.conf / "config.pl"
        path.write_text(f"$Conf{{CgiAdminUsers}} = '{users}';\n"
                        f"$Conf{{CgiAdminUserGroup}} = '{groups}';\n")
        # A new modification time, however fast: FileCache parses it again.
        self.config_writes += 1
        os.utime(path, ns=(0, self.config_writes))

    def viewer(self, name: str) -> Viewer:
        return viewer_for(PROXY_UID, [name.encode()], self.web_users)


class AdminTests(WebUsersTestCase):
    """BackupPC's admins: $Conf{CgiAdminUsers} and $Conf{CgiAdminUserGroup}."""

    def test_admin_users_list(self):
        self.write_config("craig celia", "")
        self.assertEqual(self.viewer("celia"), Viewer("celia", admin=True, hosts=None, web=True))
        self.assertTrue(self.viewer("craig").admin)
        alice = self.viewer("alice")
        self.assertFalse(alice.admin)
        self.assertIn("alice is not one of BackupPC's admins", alice.drop_refusal())

    def test_word_not_substring(self):
        """As BackupPC's /\\b$User\\b/: 'back' is not 'backuppc', nor 'pc'."""
        self.write_config("backuppc", "")
        for name in ["back", "pc", "ackup", "backuppc2"]:
            self.assertFalse(self.viewer(name).admin, name)
        self.assertTrue(self.viewer("backuppc").admin)

    def test_star(self):
        self.write_config("*", "")
        self.assertTrue(self.viewer("anyone").admin)
        self.write_config("* ", "")
        self.assertFalse(self.viewer("anyone").admin)  # BackupPC: eq "*", exactly

    def test_admin_group(self):
        """A member of a group in $Conf{CgiAdminUserGroup} (the group database's list)."""
        self.write_config("", "admin wheel")
        self.groups = {"admin": ["craig"], "wheel": ["dora", "eve"]}
        self.assertTrue(self.viewer("dora").admin)
        self.assertTrue(self.viewer("craig").admin)
        self.assertFalse(self.viewer("do").admin)
        self.assertFalse(self.viewer("alice").admin)
        self.assertFalse(self.viewer("wheel").admin)

    def test_missing_group(self):
        self.write_config("", "nosuchgroup")
        self.assertFalse(self.viewer("alice").admin)

    def test_group_lookups_reused(self):
        """The dashboard polls every 2 s: a group is looked up once a minute at most."""
        self.write_config("", "wheel")
        self.groups = {"wheel": ["dora"]}
        for _ in range(10):
            self.assertTrue(self.viewer("dora").admin)
        self.assertEqual(self.group_lookups, ["wheel"])
        self.groups = {"wheel": []}
        self.clock.advance(GROUP_MAX_AGE)
        self.assertFalse(self.viewer("dora").admin)
        self.assertEqual(self.group_lookups, ["wheel", "wheel"])

    def test_config_changes_apply(self):
        self.assertFalse(self.viewer("alice").admin)
        self.write_config("alice", "")
        self.assertTrue(self.viewer("alice").admin)

    def test_ldap_dn(self):
        """As BackupPC's CGI: REMOTE_USER uid=alice,ou=... is alice."""
        self.write_config("alice", "")
        viewer = self.viewer("uid=alice,ou=people,dc=example,dc=org")
        self.assertEqual((viewer.name, viewer.admin), ("alice", True))


class HostsTests(WebUsersTestCase):
    """Anyone else sees the hosts whose user or moreUsers they are."""

    def test_user_and_more_users(self):
        self.assertEqual(self.viewer("alice").hosts, {"laptop1", "laptop2"})
        self.assertEqual(self.viewer("bob").hosts, {"laptop2"})
        self.assertEqual(self.viewer("carol").hosts, {"laptop2"})
        self.assertEqual(self.viewer("car").hosts, frozenset())
        self.assertEqual(self.viewer("dave").hosts, frozenset())

    def test_admin_sees_all(self):
        viewer = self.viewer("backuppc")
        self.assertEqual((viewer.admin, viewer.hosts), (True, None))
        self.assertTrue(viewer.sees("anything"))
        self.assertIsNone(viewer.drop_refusal())

    def test_refusals(self):
        carol = self.viewer("carol")
        self.assertIsNone(carol.host_refusal("laptop2"))
        self.assertEqual(carol.host_refusal("laptop1"),
                         "BackupPC does not let carol see laptop1: only its user and moreUsers "
                         "(BackupPC's hosts file) and BackupPC's admins may")
        # The same words for a host that does not exist: nothing is given away.
        self.assertEqual(carol.host_refusal("nohost"),
                         carol.host_refusal("laptop1").replace("laptop1", "nohost"))

    def test_visible(self):
        """The body of /api/v1/hosts: only the viewer's hosts, and who they are."""
        body = {"generated_at": "now", "hosts": [{"host": h} for h in
                                                 ["laptop1", "laptop2", "laptop3", "roaming"]],
                "server_problems": ["backuppc cannot read /etc/bpctunnel/server.key"]}
        self.assertEqual(self.viewer("carol").visible(body),
                         {"generated_at": "now", "hosts": [{"host": "laptop2"}],
                          "server_problems": [],
                          "viewer": {"name": "carol", "admin": False}})
        admin = self.viewer("backuppc").visible(body)
        self.assertEqual(len(admin["hosts"]), 4)
        self.assertEqual(admin["server_problems"], body["server_problems"])
        self.assertIs(ROOT.visible(body), body)
        self.assertIs(viewer_for(108, None, self.web_users).visible(body), body)


class UnreadableTests(WebUsersTestCase):
    """If BackupPC's files cannot be read, a web user sees nothing (logged), never more."""

    def assert_sees_nothing(self, name, reason):
        viewer = self.viewer(name)
        self.assertEqual(viewer, Viewer(name, admin=False, hosts=frozenset(), web=True))
        [event] = [e for e in self.events if e.get("web_user") == name]
        self.assertIn(reason, event["error"])
        self.assertEqual(event["log_format"],
                         "cannot tell what {web_user} may see, so they see no host: {error}")

    def test_missing_config(self):
        (self.conf / "config.pl").unlink()
        self.assert_sees_nothing("backuppc", "config.pl does not exist")

    def test_config_not_parsable(self):
        (self.conf / "config.pl").write_text("$Conf{CgiAdminUsers} = ;\n")
        self.assert_sees_nothing("backuppc", "config.pl")

    def test_admin_list_not_a_string(self):
        (self.conf / "config.pl").write_text("$Conf{CgiAdminUsers} = 'a' . $ENV{X};\n")
        self.assert_sees_nothing("alice", "$Conf{CgiAdminUsers}")

    def test_hosts_unreadable(self):
        (self.conf / "hosts").unlink()
        (self.conf / "hosts").mkdir()
        self.assert_sees_nothing("alice", "is a directory")

    def test_log_bounded(self):
        """A broken file and a poll every 2 s: five lines, then a sum every 10 s."""
        (self.conf / "hosts").unlink()
        for _ in range(100):
            self.viewer("alice")
        self.assertEqual(len([e for e in self.events if e.get("web_user") == "alice"]), 5)
        self.clock.advance(10)
        [summary] = [e for e in self.events if "suppressed" in e]
        self.assertEqual(summary["suppressed"], 95)


class WhoAsksTests(WebUsersTestCase):
    """The header is trusted from the web server's uid only, and required from it."""

    def test_missing_header_refused(self):
        for values in [None, [], [b""], [b"  "]]:
            error = self.assertRaises(WebUserMissing, viewer_for, PROXY_UID, values,
                                      self.web_users)
            self.assertIn("a request from the web server (uid 33) names no BackupPC user",
                          str(error))
            self.assertIn('RequestHeader set X-BackupPC-User "expr=%{REMOTE_USER}"', str(error))

    def test_two_headers_refused(self):
        error = self.assertRaises(WebUserMissing, viewer_for, PROXY_UID, [b"alice", b"backuppc"],
                                  self.web_users)
        self.assertIn("names 2 BackupPC users", str(error))

    def test_header_from_others_ignored(self):
        """Root, BackupPC's user and TCP (its token) are who they are, whatever they send."""
        self.assertIs(viewer_for(0, [b"alice"], self.web_users), ROOT)
        self.assertIs(viewer_for(None, [b"alice"], self.web_users), TOKEN_HOLDER)
        other = viewer_for(108, [b"backuppc"], self.web_users)
        self.assertEqual(other, Viewer("uid 108", admin=False, hosts=None))
        self.assertEqual(other.drop_refusal(), "only root may drop a tunnel")
        self.assertIsNone(other.host_refusal("laptop1"))

    def test_no_web_proxy(self):
        """Without --web-proxy-user, the web server's uid is any other socket peer."""
        self.assertEqual(viewer_for(PROXY_UID, None, None),
                         Viewer(f"uid {PROXY_UID}", admin=False, hosts=None))
        off = WebUsers(self.conf, self.clock, None)
        self.assertFalse(viewer_for(PROXY_UID, [b"backuppc"], off).web)

    def test_names(self):
        self.assertEqual(web_user_name([b"alice"], 33), "alice")
        self.assertEqual(web_user_name([b"j\xc3\xa9r\xc3\xb4me"], 33), "j\u00e9r\u00f4me")
        self.assertEqual(web_user_name([b"j\xe9r\xf4me"], 33), "j\u00e9r\u00f4me")  # latin-1
        viewer = self.viewer("a\x1b[2Jb")
        self.assertEqual(viewer.who, "BackupPC user a\\x1b[2Jb (through the web server)")


class WebProxyUserOptionTests(SynchronousTestCase):
    """C{--web-proxy-user}."""

    def test_none(self):
        self.assertIsNone(web_proxy_uid("none"))

    def test_default(self):
        """www-data if it exists here, else off (no error)."""
        try:
            expected = pwd.getpwnam(DEFAULT_WEB_PROXY_USER).pw_uid
        except KeyError:
            expected = None
        self.assertEqual(web_proxy_uid(None), expected)

    def test_named_and_numeric(self):
        nobody = pwd.getpwnam("nobody").pw_uid
        self.assertEqual(web_proxy_uid("nobody"), nobody)
        self.assertEqual(web_proxy_uid(str(nobody)), nobody)
        self.assertEqual(web_proxy_uid("4242"), 4242)

    def test_missing_user(self):
        error = self.assertRaises(ConfigError, web_proxy_uid, "no-such-web-user")
        self.assertEqual(str(error), "--web-proxy-user 'no-such-web-user': there is no such user "
                                     "on this machine; name the user the web server runs as "
                                     "(Debian's Apache: www-data), or pass --web-proxy-user none")

    def test_root(self):
        for choice in ["root", "0"]:
            error = self.assertRaises(ConfigError, web_proxy_uid, choice)
            self.assertIn("is root", str(error))

    def parse(self, *extra) -> tuple[Options | None, str]:
        """The server's options with C{extra}, or None and the one line twistd prints."""
        sandbox = Sandbox.create(temp_dir(self))
        options = Options()
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        try:
            options.parseOptions(["--certs", str(sandbox.certs_dir), "--backuppc-conf",
                                  str(sandbox.conf_dir), "--api-socket", "none",
                                  "--state-dir", "none", *extra])
        except SystemExit as e:
            self.assertEqual(e.code, 2)
            return None, stderr.getvalue()
        return options, stderr.getvalue()

    def test_server_option(self):
        """The server's --web-proxy-user: a usage error for a user that is not there."""
        options, _ = self.parse()
        self.assertEqual(options["web_proxy_uid"], web_proxy_uid(None))
        options, _ = self.parse("--web-proxy-user", "none")
        self.assertIsNone(options["web_proxy_uid"])
        options, _ = self.parse("--web-proxy-user", "nobody")
        self.assertEqual(options["web_proxy_uid"], pwd.getpwnam("nobody").pw_uid)
        options, error = self.parse("--web-proxy-user", "no-such-web-user")
        self.assertIsNone(options)
        self.assertEqual(error.splitlines()[0],
                         "twistd bpctunnel-server: --web-proxy-user 'no-such-web-user': there is "
                         "no such user on this machine; name the user the web server runs as "
                         "(Debian's Apache: www-data), or pass --web-proxy-user none")

    def test_not_backuppc(self):
        """BackupPC's own user calls the API naming no web user: it cannot be the web proxy."""
        pwd.getpwnam("backuppc")   # Debian's BackupPC, which CI installs
        options, error = self.parse("--web-proxy-user", "backuppc")
        self.assertIsNone(options)
        self.assertIn("--web-proxy-user 'backuppc' is BackupPC's own user (backuppc)", error)
