"""
The admin tools: init-ca, register-client, request-cert, revoke, renew,
list and check; as functions, and end to end through the `bpctunnel`
command with a real server, client and rsync.
"""

from __future__ import annotations

import getpass
import os
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bpctunnel.admin import commands as admin
from bpctunnel.backuppc import checks as health
from bpctunnel import pki
from bpctunnel.admin.commands import AdminError, Paths
from bpctunnel.backuppc.hosts import authorize, read_hosts, read_perl_config
from bpctunnel.backuppc.layout import config_layout
from bpctunnel.client.config import find_rsync
from bpctunnel.client.rsync_auth import RsyncAuth
from bpctunnel.admin.demo import rsync_pull
from bpctunnel.backuppc.checks import format_table, inspect_hosts
from bpctunnel.testing.sandbox import HOSTS_HEADER, make_sample_tree, start_client, start_server, tree_digest
from tests.helpers import TIMEOUT, LogCapture, run_cli, temp_dir


def fresh_paths(testcase) -> Paths:
    """An initialised CA and an empty BackupPC config folder."""
    root = temp_dir(testcase)
    paths = Paths(root / "certs", root / "backuppc")
    paths.conf.mkdir()
    paths.hosts.write_text(HOSTS_HEADER + "localhost   0   backuppc\n")
    admin.init_ca(paths, "127.0.0.1", server_url="wss://127.0.0.1:8443/tunnel")
    return paths


class InitCaTests(SynchronousTestCase):
    """init-ca writes the CA, the server certificate and server.conf."""

    def test_files_and_modes(self):
        paths = fresh_paths(self)
        for name, mode in [("ca.crt", 0o644), ("ca.key", 0o600), ("server.crt", 0o644),
                           ("server.key", 0o600)]:
            self.assertEqual(stat.S_IMODE((paths.certs / name).stat().st_mode), mode, name)
        server = pki.load_cert(paths.certs / "server.crt")
        pki.load_cert(paths.ca_cert)
        self.assertEqual(pki.common_name(server), "127.0.0.1")
        self.assertEqual(admin.server_url(paths), "wss://127.0.0.1:8443/tunnel")

    def test_server_key_belongs_to_the_server_user(self):
        """The server runs as BackupPC's user: init-ca gives it server.key, never ca.key."""
        root = temp_dir(self)
        paths = Paths(root / "certs", root)
        admin.init_ca(paths, "backup.example.org", server_user="nobody")
        import pwd

        nobody = pwd.getpwnam("nobody")
        key = (paths.certs / "server.key").stat()
        self.assertEqual((key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)),
                         (nobody.pw_uid, nobody.pw_gid, 0o600))
        self.assertEqual((paths.ca_key.stat().st_uid, stat.S_IMODE(paths.ca_key.stat().st_mode)),
                         (os.geteuid(), 0o600))
        e = self.assertRaises(AdminError, admin.init_ca, paths, "x", force=True,
                              server_user="no-such-user-here")
        self.assertIn("no such user", str(e))

    def test_refuses_to_overwrite(self):
        paths = fresh_paths(self)
        before = paths.ca_cert.read_bytes()
        e = self.assertRaises(AdminError, admin.init_ca, paths, "other")
        self.assertIn("already exists", str(e))
        self.assertIn("--force", str(e))
        self.assertEqual(paths.ca_cert.read_bytes(), before)
        admin.init_ca(paths, "other", force=True)
        self.assertNotEqual(paths.ca_cert.read_bytes(), before)

    def test_default_url(self):
        root = temp_dir(self)
        paths = Paths(root / "certs", root)
        admin.init_ca(paths, "backup.example.org")
        self.assertEqual(admin.server_url(paths), "wss://backup.example.org:8443/tunnel")
        admin.init_ca(paths, "::1", force=True)
        self.assertEqual(admin.server_url(paths), "wss://[::1]:8443/tunnel")


class RegisterTests(SynchronousTestCase):
    """register-client writes the host config, hosts entry and bundle."""

    def setUp(self):
        self.paths = fresh_paths(self)
        self.out = temp_dir(self)

    def register(self, host, **kwargs):
        kwargs.setdefault("out", self.out / host)
        kwargs.setdefault("add_host", True)
        kwargs.setdefault("bpctunnel", "/opt/bpctunnel/bin/bpctunnel")
        return admin.register_client(self.paths, host, **kwargs)

    def test_config_refused_before_writing(self):
        """register-client config would rewrite BackupPC's global config.pl."""
        config_pl = self.paths.config_pl
        config_pl.write_text("$Conf{XferMethod} = 'rsync';\n")
        before = (config_pl.read_bytes(), self.paths.hosts.read_bytes())
        e = self.assertRaises(admin.AdminError, self.register, "config")
        self.assertIn("config.pl is BackupPC's global configuration", str(e))
        self.assertEqual((config_pl.read_bytes(), self.paths.hosts.read_bytes()), before)
        e = self.assertRaises(admin.AdminError, admin.request_cert, "Config", self.out)
        self.assertIn("not a usable BackupPC host name", str(e))
        self.assertEqual(list(self.out.iterdir()), [])

    def test_name_too_long_for_a_certificate(self):
        """Refused before the hosts file or a host config is written."""
        before = self.paths.hosts.read_bytes()
        e = self.assertRaises(admin.AdminError, self.register, "a" * 65)
        self.assertIn("longer than 64 characters", str(e))
        self.assertEqual(self.paths.hosts.read_bytes(), before)
        self.assertEqual([p.name for p in self.paths.conf.glob("a*.pl")], [])
        self.assertEqual(self.register("a" * 64).host, "a" * 64)

    def test_own_ping_cmd_kept(self):
        """A host that has a PingCmd of its own keeps it; one without gets ours."""
        self.paths.conf.joinpath("laptop1.pl").write_text(
            "$Conf{PingCmd} = '/usr/local/bin/my-ping $host';\n")
        result = self.register("laptop1")
        self.assertEqual(read_perl_config(result.config_path).get("PingCmd"),
                         "/usr/local/bin/my-ping $host")
        self.assertEqual(admin.bpctunnel_path().rsplit("/", 1)[-1], "bpctunnel")

    def test_settings_written(self):
        result = self.register("laptop1", shares=("docs", "My Music"))
        config = read_perl_config(result.config_path)
        self.assertEqual(config.get("XferMethod"), "rsyncd")
        self.assertEqual(config.get("ClientNameAlias"), ["127.0.0.1"])
        self.assertEqual(config.get("RsyncdClientPort"), "64701")
        self.assertEqual(config.get("RsyncShareName"), ["docs", "My Music"])
        secret = (result.bundle / "rsyncd.secrets").read_text()
        self.assertEqual(secret, f"backuppc:{config.get('RsyncdPasswd')}\n")
        self.assertEqual(config.get("RsyncdUserName"), "backuppc")
        self.assertGreaterEqual(len(config.get("RsyncdPasswd")), 32)
        self.assertEqual(stat.S_IMODE((result.bundle / "rsyncd.secrets").stat().st_mode), 0o600)
        self.assertIn("rsync_secrets = rsyncd.secrets", (result.bundle / "client.conf").read_text())
        self.assertEqual(config.get("ClientComment"), f"TunnelCert:sha256:{result.fingerprint}")
        self.assertEqual(config.get("PingCmd"), "/opt/bpctunnel/bin/bpctunnel ping laptop1")
        self.assertEqual(config.get("DumpPostUserCmd"),
                         "/opt/bpctunnel/bin/bpctunnel backup-done $client $xferOK")
        self.assertIn("laptop1", read_hosts(self.paths.hosts))
        cert = pki.load_cert(result.bundle / "laptop1.crt")
        self.assertEqual(pki.fingerprint_sha256(cert), result.fingerprint)
        settings = authorize(self.paths.conf, "laptop1", result.fingerprint)
        self.assertEqual(settings.port, 64701)
        self.assertEqual(stat.S_IMODE((result.bundle / "laptop1.key").stat().st_mode), 0o600)
        self.assertIn("server = wss://127.0.0.1:8443/tunnel",
                      (result.bundle / "client.conf").read_text())
        template = (result.bundle / "rsyncd.conf").read_text()
        self.assertIn("[My Music]", template)
        self.assertIn("read only = yes", template)

    def test_own_dump_post_user_cmd_kept(self):
        """A DumpPostUserCmd of the host's or of config.pl is not replaced."""
        self.paths.config_pl.write_text("$Conf{DumpPostUserCmd} = '/usr/local/bin/notify';\n")
        result = self.register("laptop1")
        self.assertIsNone(read_perl_config(result.config_path).get("DumpPostUserCmd"))

    def test_ping_max_msec_for_distant_laptops(self):
        """BackupPC's default PingMaxMsec (20 ms) would skip a laptop 30 ms away forever."""
        result = self.register("laptop1")
        self.assertEqual(read_perl_config(result.config_path).get("PingMaxMsec"),
                         str(admin.TUNNEL_PING_MAX_MSEC))
        self.paths.conf.joinpath("laptop2.pl").write_text("$Conf{PingMaxMsec} = 500;\n")
        result = self.register("laptop2")
        self.assertEqual(read_perl_config(result.config_path).get("PingMaxMsec"), "500")

    def test_new_host_config_is_like_config_pl(self):
        """A new host config gets config.pl's owner, group and mode, so BackupPC can read it."""
        config_pl = self.paths.config_pl
        config_pl.write_text("$Conf{BackupPCUser} = 'backuppc';\n")
        os.chmod(config_pl, 0o604)
        os.chown(config_pl, 4242, 4343)
        result = self.register("laptop1")
        st = result.config_path.stat()
        # ... less what others could read: it holds the host's rsync secret.
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (4242, 4343, 0o600))
        # An existing file keeps its own.
        os.chmod(result.config_path, 0o640)
        self.register("laptop1", shares=("other",))
        self.assertEqual(stat.S_IMODE(result.config_path.stat().st_mode), 0o640)

    def test_added_share_says_what_the_laptop_must_serve(self):
        self.register("laptop1", shares=("documents",))
        result = self.register("laptop1", shares=("documents", "music"))
        advice = [m for m in result.messages if "music" in m]
        self.assertEqual(len(advice), 1, result.messages)
        self.assertIn("[music]", advice[0])
        self.assertIn("Unknown module", advice[0])
        self.assertIn("bpctunnel check laptop1", advice[0])
        again = self.register("laptop1", shares=("documents", "music"))
        self.assertFalse([m for m in again.messages if "expects module" in m])

    def test_add_host_reloads_backuppc(self):
        """--add-host asks BackupPC to reread its hosts file, or says how to."""
        import pwd

        me = pwd.getpwuid(os.geteuid()).pw_name
        self.paths.config_pl.write_text(f"$Conf{{BackupPCUser}} = '{me}';\n")
        fake = self.out / "BackupPC_serverMesg"
        fake.write_text("#!/bin/sh\necho \"$@\" >> \"$0.args\"\necho 'Got reply: ok'\n")
        fake.chmod(0o755)
        result = self.register("laptop1", server_mesg=str(fake))
        self.assertIn("BackupPC read the new hosts file (BackupPC_serverMesg server reload)",
                      result.messages)
        self.assertEqual(Path(f"{fake}.args").read_text(), "server reload\n")
        result = self.register("laptop2")
        self.assertIn("server reload", result.messages[-1])
        self.assertIn(f"sudo -u {me} ", result.messages[-1])

    def test_failure_writes_nothing(self):
        """A name that fails at the certificate leaves the hosts file as it was."""
        before = self.paths.hosts.read_text()
        self.assertRaises(Exception, self.register, "a" * 70)
        self.assertEqual(self.paths.hosts.read_text(), before)
        self.assertFalse(list(self.paths.conf.glob("a*.pl")))

    def test_not_in_hosts_without_add_host(self):
        e = self.assertRaises(AdminError, self.register, "laptop1", add_host=False)
        self.assertIn("laptop1 is not in", str(e))
        self.assertIn("--add-host", str(e))
        self.assertFalse((self.paths.conf / "laptop1.pl").exists())

    def test_second_run_changes_nothing(self):
        """The same command twice: the second run rewrites no file."""
        self.register("laptop1", shares=("docs",))
        files = [self.paths.hosts, self.paths.conf / "laptop1.pl", *sorted((self.out / "laptop1").iterdir())]
        before = {f: (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes()) for f in files}
        result = self.register("laptop1", shares=("docs",))
        after = {f: (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes()) for f in files}
        self.assertEqual(after, before)
        self.assertEqual(result.messages, ("laptop1 is already registered with this bundle; "
                                           "nothing changed",))

    def test_fifty_hosts_get_distinct_ports(self):
        """Automatic ports never collide, and a hand-written host's port is skipped."""
        (self.paths.conf / "handmade.pl").write_text("$Conf{RsyncdClientPort} = 64703;\n")
        ports = [self.register(f"laptop{i}", out=self.out / f"b{i}").port for i in range(50)]
        self.assertEqual(len(set(ports)), 50)
        self.assertNotIn(64703, ports)
        self.assertEqual(ports[:3], [64701, 64702, 64704])

    def test_port_clash_refused(self):
        self.register("laptop1", port=64800)
        e = self.assertRaises(AdminError, self.register, "laptop2", port=64800)
        self.assertIn("port 64800 is already RsyncdClientPort of laptop1", str(e))

    def test_keeps_existing_port(self):
        (self.paths.conf / "laptop1.pl").write_text("$Conf{RsyncdClientPort} = 64999;\n")
        self.assertEqual(self.register("laptop1").port, 64999)

    def test_bad_host_name(self):
        for bad in ["../etc/passwd", "two words", "", "a#b"]:
            self.assertRaises(AdminError, self.register, bad)

    def test_csr_path(self):
        """With --csr the private key stays on the laptop: no copy on the server side."""
        laptop = temp_dir(self)
        admin.request_cert("laptop1", laptop)
        key = (laptop / "laptop1.key").read_bytes()
        result = self.register("laptop1", csr=laptop / "laptop1.csr")
        self.assertFalse((result.bundle / "laptop1.key").exists())
        cert = pki.load_cert(result.bundle / "laptop1.crt")
        self.assertTrue(pki.csr_matches_cert((laptop / "laptop1.csr").read_bytes(), cert))
        key_body = b"".join(key.splitlines()[1:-1])
        for folder in (self.paths.certs, self.paths.conf, result.bundle):
            for path in folder.rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    self.assertNotIn(key_body, b"".join(data.splitlines()), str(path))
        # Registering the same CSR again reuses the certificate.
        again = self.register("laptop1", csr=laptop / "laptop1.csr")
        self.assertEqual(again.fingerprint, result.fingerprint)

    def test_csr_for_other_host_refused(self):
        laptop = temp_dir(self)
        admin.request_cert("laptop2", laptop)
        self.assertRaises(Exception, self.register, "laptop1", csr=laptop / "laptop2.csr")
        self.assertFalse((self.paths.conf / "laptop1.pl").exists())

    def test_revoke_and_renew(self):
        first = self.register("laptop1")
        self.assertIn("revoked laptop1", admin.revoke(self.paths, "laptop1")[0])
        from bpctunnel.errors import FingerprintMismatch

        self.assertRaises(FingerprintMismatch, authorize, self.paths.conf, "laptop1",
                          first.fingerprint)
        self.assertIn("nothing to revoke", admin.revoke(self.paths, "laptop1")[0])
        e = self.assertRaises(AdminError, admin.renew, self.paths, "laptop1", out=self.out / "r")
        self.assertIn("not registered", str(e))
        second = self.register("laptop1")
        renewed = admin.renew(self.paths, "laptop1", out=self.out / "laptop1")
        self.assertNotEqual(renewed.fingerprint, second.fingerprint)
        self.assertEqual(renewed.port, second.port)
        self.assertRaises(FingerprintMismatch, authorize, self.paths.conf, "laptop1",
                          second.fingerprint)
        self.assertEqual(authorize(self.paths.conf, "laptop1", renewed.fingerprint).port,
                         second.port)


class CheckTests(SynchronousTestCase):
    """check explains each misconfiguration; list shows the hosts."""

    def setUp(self):
        self.paths = fresh_paths(self)
        self.out = temp_dir(self)
        self.result = admin.register_client(self.paths, "laptop1", add_host=True,
                                            out=self.out / "l1", shares=("docs",))
        self.config = self.result.config_path

    def problems(self):
        return [p.message for r in inspect_hosts(self.paths) for p in r.problems]

    def replace(self, old, new):
        text = self.config.read_text()
        self.assertIn(old, text)
        self.config.write_text(text.replace(old, new))

    def assertProblem(self, words):
        problems = self.problems()
        self.assertEqual(len([p for p in problems if words in p]), 1, problems)

    def test_clean(self):
        self.assertEqual(self.problems(), [])

    def test_unreadable_for_backuppc(self):
        """Run as root, check still sees what BackupPC's user cannot read."""
        from bpctunnel.backuppc.permissions import Account

        nobody = Account.named("nobody")
        os.chmod(self.config, 0o640)
        os.chown(self.config, 0, 0)
        os.chmod(self.paths.conf, 0o755)
        os.chmod(self.paths.conf.parent, 0o755)
        os.chmod(self.paths.certs, 0o755)
        for folder in self.paths.conf.parents:
            self.assertEqual(os.stat(folder).st_mode & 0o001, 0o001, folder)
        problems = [p.message for r in inspect_hosts(self.paths, [nobody]) for p in r.problems]
        self.assertEqual(len(problems), 1, problems)
        self.assertIn(f"nobody cannot read {self.config} (root:root 0640)", problems[0])
        self.assertIn("Can't read PC's config file", problems[0])
        os.chown(self.config, nobody.uid, 0)    # readable by it, not by everyone
        self.assertEqual([p for r in inspect_hosts(self.paths, [nobody]) for p in r.problems], [])
        os.chmod(self.paths.certs / "server.key", 0o600)
        server = [p.message for p in health.inspect_server(self.paths, [nobody])]
        self.assertEqual(len(server), 1, server)
        self.assertIn("server.key", server[0])

    def test_ping_max_msec(self):
        """BackupPC's 20 ms default is flagged; so is a live round trip above the setting."""
        self.replace("$Conf{PingMaxMsec} = 2000;", "")
        self.assertProblem("$Conf{PingMaxMsec} is 20 ms for laptop1")
        self.paths.config_pl.write_text("$Conf{PingMaxMsec} = 300;\n")
        self.assertEqual(self.problems(), [])
        report = inspect_hosts(self.paths)[0]
        self.assertEqual(health.live_problems(report, {"modules": ["docs"]}, 120.0), [])
        slow = health.live_problems(report, {"modules": ["docs"]}, 350.0)
        self.assertEqual(len(slow), 1)
        self.assertIn("round trip through laptop1's tunnel is 350 ms, above its "
                      "$Conf{PingMaxMsec} of 300 ms", slow[0].message)

    def test_missing_module(self):
        report = inspect_hosts(self.paths)[0]
        self.assertEqual(health.live_problems(report, {"modules": None}, None), [])
        missing = health.live_problems(report, {"modules": ["photos"]}, None)
        self.assertEqual(len(missing), 1)
        self.assertIn("expects module(s) docs that the laptop does not serve (it serves: photos)",
                      missing[0].message)

    def test_missing_from_hosts(self):
        self.paths.hosts.write_text(HOSTS_HEADER)
        self.assertProblem("laptop1 is not in")

    def test_xfer_method(self):
        self.replace("'rsyncd'", "'rsync'")
        self.assertProblem("$Conf{XferMethod} is 'rsync'")

    def test_client_name_alias(self):
        self.replace("['127.0.0.1']", "['laptop1.lan']")
        self.assertProblem("$Conf{ClientNameAlias} is ['laptop1.lan']")

    def test_two_hosts_one_port(self):
        admin.register_client(self.paths, "laptop2", add_host=True, out=self.out / "l2")
        path = self.paths.conf / "laptop2.pl"
        path.write_text(path.read_text().replace("64702", "64701"))
        problems = self.problems()
        self.assertIn("port 64701 is also RsyncdClientPort of laptop2: only one tunnel can "
                      "listen on it", problems)
        self.assertIn("port 64701 is also RsyncdClientPort of laptop1: only one tunnel can "
                      "listen on it", problems)

    def test_port_out_of_range(self):
        self.replace("= 64701;", "= 70000;")
        self.assertProblem("$Conf{RsyncdClientPort} is '70000' in laptop1.pl, outside 1-65535")

    def test_fingerprint_missing(self):
        admin.revoke(self.paths, "laptop1")
        self.assertProblem("has no TunnelCert:sha256:")

    def test_expiring_certificate(self):
        ca = admin._load_ca(self.paths)
        short = pki.make_client_cert(ca, "laptop1", days=10)
        pki.write_public(self.paths.issued_cert("laptop1"), short.cert_pem)
        self.replace(self.result.fingerprint, pki.fingerprint_sha256(short.cert_pem))
        self.assertProblem("the certificate of laptop1 expires in 9 days")

    def test_ping_cmd_with_host_variable(self):
        self.config.write_text(self.config.read_text().replace(
            "ping laptop1'", "ping $host'"))
        self.assertProblem("$Conf{PingCmd} in laptop1.pl passes $host, which BackupPC sets to "
                           "the ClientNameAlias 127.0.0.1: name the host instead (bpctunnel "
                           "ping laptop1)")

    def test_port_alone(self):
        """A host registered before secrets (the placeholder) relies on its port alone."""
        secret = read_perl_config(self.config).get("RsyncdPasswd")
        self.replace(f"'{secret}'", f"'{admin.RSYNCD_PASSWD_PLACEHOLDER}'")
        self.assertProblem("laptop1 relies on its port alone")

    def test_empty_rsync_password(self):
        secret = read_perl_config(self.config).get("RsyncdPasswd")
        self.replace(f"'{secret}'", "''")
        self.assertProblem("$Conf{RsyncdPasswd} is empty in laptop1.pl")

    def test_secret_readable_by_everyone(self):
        os.chmod(self.config, 0o644)
        self.assertProblem(f"{self.config} holds laptop1's rsync secret and every local user "
                           f"can read it")

    def test_list_table(self):
        table = format_table(inspect_hosts(self.paths)).splitlines()
        self.assertEqual(table[0].split(), ["HOST", "PORT", "FINGERPRINT", "EXPIRES", "SHARES",
                                            "PROBLEMS"])
        self.assertEqual(table[1].split()[:3], ["laptop1", "64701", self.result.fingerprint[:16]])
        self.assertEqual(table[1].split()[4:], ["docs", "none"])


class ThreeCommandSetupTests(TestCase):
    """
    From nothing to a backed-up laptop with the `bpctunnel` command: init-ca,
    register-client --add-host, then server and client from the generated
    files alone; then revoke and renew.
    """

    timeout = 300

    @inlineCallbacks
    def test_init_register_pull_revoke_renew(self):
        rsync = find_rsync("rsync")
        root = temp_dir(self)
        certs, conf, bundle = root / "certs", root / "backuppc", root / "bundle"
        conf.mkdir()
        (conf / "hosts").write_text(HOSTS_HEADER)
        # This BackupPC runs as the test's user, who reads these temporary folders.
        (conf / "config.pl").write_text(f"$Conf{{BackupPCUser}} = '{getpass.getuser()}';\n")
        logs = LogCapture(self)
        code, out = yield run_cli(self, "init-ca", "--certs", str(certs), "127.0.0.1")
        self.assertEqual(code, 0, out)

        server = yield start_server(reactor, certs_dir=certs, conf_dir=conf)
        self.addCleanup(server.stop)
        code, out = yield run_cli(self, "register-client", "laptop1", "--certs", str(certs),
                                  "--backuppc-conf", str(conf), "--add-host", "--share", "docs",
                                  "--out", str(bundle), "--server-url", server.url)
        self.assertEqual(code, 0, out)
        port = int(read_perl_config(conf / "laptop1.pl").get("RsyncdClientPort"))

        # The laptop's owner points the module at the folder to back up.
        source = make_sample_tree(root / "documents")
        rsyncd = bundle / "rsyncd.conf"
        rsyncd.write_text(rsyncd.read_text().replace("/CHANGE/ME/docs", str(source)))
        client = start_client(reactor, bundle / "client.conf")
        self.addCleanup(client.stop)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        # Without the host's secret the laptop serves nothing; with it, everything.
        wrong = RsyncAuth("backuppc", "not-the-secret-of-laptop1")
        _, err, code = yield rsync_pull(reactor, rsync, port, "docs", temp_dir(self),
                                        wrong).addTimeout(TIMEOUT, reactor)
        self.assertNotEqual(code, 0)
        self.assertIn(b"auth failed on module docs", err)
        config = read_perl_config(conf / "laptop1.pl")
        auth = RsyncAuth(config.get("RsyncdUserName"), config.get("RsyncdPasswd"))
        dest = temp_dir(self)
        _, err, code = yield rsync_pull(reactor, rsync, port, "docs", dest, auth).addTimeout(
            TIMEOUT, reactor)
        self.assertEqual(code, 0, err)
        self.assertEqual((yield deferToThread(tree_digest, dest)),
                         (yield deferToThread(tree_digest, source)))

        # A share the laptop does not serve: check names it while the tunnel is up.
        live = ["--certs", str(certs), "--backuppc-conf", str(conf), "--api", server.api_url]
        code, out = yield run_cli(self, "check", "laptop1", *live)
        self.assertEqual(code, 0, out)
        code, out = yield run_cli(self, "register-client", "laptop1", "--share", "docs",
                                  "--share", "music", "--out", str(bundle), *live[:4],
                                  "--server-url", server.url)
        self.assertEqual(code, 0, out)
        self.assertIn("BackupPC now expects module(s) music from laptop1", out)
        code, out = yield run_cli(self, "check", "laptop1", *live)
        self.assertEqual(code, 1, out)
        self.assertIn("BackupPC expects module(s) music that the laptop does not serve "
                      "(it serves: docs)", out)
        yield client.stop()

        # Revoked: refused with 'fingerprint mismatch'.
        code, out = yield run_cli(self, "revoke", "laptop1", "--certs", str(certs),
                                  "--backuppc-conf", str(conf))
        self.assertEqual(code, 0, out)
        old = start_client(reactor, bundle / "client.conf")
        self.addCleanup(old.stop)
        refusal = yield old.events.next("closed").addTimeout(TIMEOUT, reactor)
        yield old.stop()
        self.assertTrue(refusal.startswith("fingerprint mismatch for laptop1"), refusal)

        # Renewed: the new bundle works, the old certificate is refused.
        old_cert = (bundle / "laptop1.crt").read_bytes()
        old_key = (bundle / "laptop1.key").read_bytes()
        code, out = yield run_cli(self, "register-client", "laptop1", "--certs", str(certs),
                                  "--backuppc-conf", str(conf), "--out", str(bundle),
                                  "--server-url", server.url)
        self.assertEqual(code, 0, out)
        code, out = yield run_cli(self, "renew", "laptop1", "--certs", str(certs),
                                  "--backuppc-conf", str(conf), "--out", str(bundle),
                                  "--server-url", server.url)
        self.assertEqual(code, 0, out)
        self.assertNotEqual((bundle / "laptop1.crt").read_bytes(), old_cert)
        new = start_client(reactor, bundle / "client.conf")
        self.addCleanup(new.stop)
        yield new.events.next("open").addTimeout(TIMEOUT, reactor)
        yield new.stop()

        stale = root / "stale"
        stale.mkdir()
        for name, data in [("laptop1.crt", old_cert), ("laptop1.key", old_key)]:
            (stale / name).write_bytes(data)
        (stale / "ca.crt").write_bytes((bundle / "ca.crt").read_bytes())
        (stale / "rsyncd.conf").write_text(rsyncd.read_text())
        (stale / "client.conf").write_text((bundle / "client.conf").read_text())
        (stale / "rsyncd.secrets").write_bytes((bundle / "rsyncd.secrets").read_bytes())
        os.chmod(stale / "rsyncd.secrets", 0o600)
        os.chmod(stale / "laptop1.key", 0o600)
        stale_client = start_client(reactor, stale / "client.conf")
        self.addCleanup(stale_client.stop)
        refusal = yield stale_client.events.next("closed").addTimeout(TIMEOUT, reactor)
        self.assertTrue(refusal.startswith("fingerprint mismatch for laptop1"), refusal)
        yield logs.wait_for("refused laptop1 from 127.0.0.1:")

    @inlineCallbacks
    def test_cli_errors_are_one_line(self):
        root = temp_dir(self)
        code, out = yield run_cli(self, "register-client", "laptop1", "--certs", str(root),
                                  "--backuppc-conf", str(root))
        self.assertEqual(code, 1)
        self.assertEqual(out.count("\n"), 1, out)
        self.assertIn("does not exist; run `bpctunnel init-ca SERVER_NAME` first", out)
        code, out = yield run_cli(self, "check", "--certs", str(root), "--backuppc-conf", str(root))
        self.assertEqual(code, 0, out)
        self.assertIn("no problems found in 0 tunnel host(s)", out)


class IgnoredCopyTests(SynchronousTestCase):
    """check names a host config BackupPC never reads."""

    def test_copy_in_pc_folder(self):
        paths = fresh_paths(self)
        result = admin.register_client(paths, "laptop1", add_host=True,
                                       out=temp_dir(self) / "l1", shares=("docs",))
        layout = config_layout(paths.conf)
        self.assertEqual(result.config_path, layout.host_config("laptop1"))
        other = [p for p in layout.candidates("laptop1") + [paths.conf / "pc" / "laptop1.pl"]
                 if p != result.config_path][-1]
        other.parent.mkdir(parents=True, exist_ok=True)
        other.write_text(result.config_path.read_text())
        problems = [p.message for r in inspect_hosts(paths) for p in r.problems]
        self.assertEqual(problems, [f"{other} is a config of laptop1 that BackupPC never reads "
                                    f"(it reads {result.config_path}): merge what it should say "
                                    f"into {result.config_path.name} and remove it"])
