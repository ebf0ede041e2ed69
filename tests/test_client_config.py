"""Tests for the client's INI file and the server's listen address option."""

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.client import advice_for, refusal_from_close_reason, tls_advice
from bpctunnel.client_config import load_client_config, parse_server_url
from bpctunnel.errors import ConfigError
from bpctunnel.listen_address import ListenAddress, parse_listen
from bpctunnel.sandbox import Sandbox
from tests.helpers import temp_dir


class ClientConfigTests(SynchronousTestCase):
    """load_client_config reads the INI file, resolves paths, applies overrides."""

    def setUp(self):
        self.root = temp_dir(self)
        self.sandbox = Sandbox.create(self.root / "sandbox")
        self.files = self.sandbox.issue_client("laptop1")
        self.path = self.sandbox.write_client_config(
            self.files, "wss://backup.example.org:8443/tunnel", {"docs": self.root})

    def test_relative_paths_and_host(self):
        """Relative paths are relative to the file's folder; the CN is the host name."""
        config = load_client_config(self.path)
        self.assertEqual(config.cert, self.files.cert)
        self.assertEqual(config.rsyncd_conf, self.files.cert.parent / "rsyncd.conf")
        self.assertEqual((config.server_host, config.server_port), ("backup.example.org", 8443))
        self.assertEqual(config.host, "laptop1")
        self.assertTrue(Path(config.rsync).is_absolute())

    def test_override(self):
        """A command-line value wins over the file."""
        config = load_client_config(self.path, {"server": "wss://10.0.0.1/tunnel", "ca": None})
        self.assertEqual((config.server_host, config.server_port), ("10.0.0.1", 443))

    def assertConfigError(self, words, *args):
        e = self.assertRaises(ConfigError, load_client_config, *args)
        self.assertIn(words, str(e))

    def test_missing_file(self):
        self.assertConfigError("cannot read client config", self.root / "nope.conf")

    def test_no_section(self):
        path = self.root / "bad.conf"
        path.write_text("[other]\nserver = wss://x/tunnel\n")
        self.assertConfigError("has no [bpctunnel] section", path)

    def test_not_ini(self):
        path = self.root / "bad.conf"
        path.write_text("server = wss://x/tunnel\n")
        self.assertConfigError("is not a valid INI file", path)

    def test_unknown_key(self):
        path = self.root / "bad.conf"
        path.write_text(self.path.read_text() + "sever = typo\n")
        self.assertConfigError("unknown keys: sever", path)

    def test_missing_key(self):
        path = self.path.parent / "short.conf"
        path.write_text("[bpctunnel]\nserver = wss://x/tunnel\n")
        self.assertConfigError("missing setting ca, cert, key, rsyncd_conf", path)

    def test_missing_referenced_file(self):
        self.files.key.unlink()
        self.assertConfigError("key = laptop1.key", self.path)

    def test_missing_rsync(self):
        self.assertConfigError("rsync binary 'no-such-rsync' not found", self.path,
                               {"rsync": "no-such-rsync"})

    def test_writable_module_refused(self):
        """A writable module stops the client unless restores are allowed on purpose."""
        path = self.sandbox.write_client_config(
            self.files, "wss://b:8443/tunnel", {"docs": self.root, "restore": self.root},
            writable=("restore",))
        self.assertConfigError("has writable module(s) restore (read only = no)", path)
        allowed = self.sandbox.write_client_config(
            self.files, "wss://b:8443/tunnel", {"restore": self.root}, writable=("restore",),
            allow_restore="yes")
        self.assertTrue(load_client_config(allowed).allow_restore)

    def test_global_read_only_no(self):
        """'read only = no' in the global section makes every module writable."""
        conf = self.files.cert.parent / "rsyncd.conf"
        conf.write_text("read only = no\n[docs]\n    path = /tmp\n[etc]\n    path = /etc\n"
                        "    read only = yes\n")
        self.assertConfigError("writable module(s) docs (read only", self.path)

    def test_timing_settings(self):
        path = self.files.cert.parent / "t.conf"
        path.write_text(self.path.read_text() + "keepalive = 5\nretry_max = 60\n")
        config = load_client_config(path)
        self.assertEqual((config.keepalive, config.retry_max, config.retry_initial), (5.0, 60.0, 1.0))
        path.write_text(self.path.read_text() + "keepalive = soon\n")
        self.assertConfigError("keepalive = soon in", path)
        path.write_text(self.path.read_text() + "keepalive = 0.1\n")
        self.assertConfigError("must be at least 1.0 seconds", path)
        path.write_text(self.path.read_text() + "allow_restore = maybe\n")
        self.assertConfigError("must be yes or no", path)

    def test_server_url_forms(self):
        self.assertEqual(parse_server_url("wss://[::1]:9/tunnel"), ("::1", 9))
        for bad, words in [("ws://x/tunnel", "must be a wss:// URL"),
                           ("wss://x:99999/tunnel", "invalid port"),
                           ("wss:///tunnel", "names no host")]:
            e = self.assertRaises(ConfigError, parse_server_url, bad)
            self.assertIn(words, str(e))


class RefusalTextTests(SynchronousTestCase):
    """The client turns Autobahn's close reason back into the server's words."""

    def test_refusal_parsed(self):
        reason = ('connection was closed uncleanly ("WebSocket connection upgrade failed [403]: '
                  'fingerprint mismatch for laptop1: the certificate does not match TunnelCert '
                  'in laptop1.pl")')
        self.assertEqual(
            refusal_from_close_reason(reason),
            (403, "fingerprint mismatch for laptop1: the certificate does not match "
                  "TunnelCert in laptop1.pl"),
        )
        self.assertIsNone(refusal_from_close_reason("peer dropped the TCP connection"))

    def test_advice(self):
        self.assertIn("hosts file", advice_for("unknown host for x: y"))
        self.assertIn("renew", advice_for("fingerprint mismatch for x: y"))
        self.assertEqual(advice_for("something new"), "see the server's log")
        self.assertIn("not issued by the server's CA", tls_advice("tlsv1 alert unknown ca"))
        self.assertIsNone(tls_advice("connection refused"))


class ListenAddressTests(SynchronousTestCase):
    """--listen [ADDRESS:]PORT."""

    def test_forms(self):
        self.assertEqual(parse_listen("8443"), ListenAddress("", 8443))
        self.assertEqual(parse_listen("127.0.0.1:0"), ListenAddress("127.0.0.1", 0))
        self.assertEqual(parse_listen("[::]:443"), ListenAddress("::", 443))
        self.assertEqual(str(parse_listen("[::1]:5")), "[::1]:5")

    def test_errors(self):
        for bad, words in [
            ("http", "'http' is not a port number"),
            ("1.2.3:80", "'1.2.3' is not an IP address"),
            ("::1:80", "put IPv6 addresses in brackets"),
            ("[::1]80", "bad listen address"),
            ("[127.0.0.1]:80", "put IPv6 addresses in brackets"),
            ("70000", "outside 0-65535"),
        ]:
            e = self.assertRaises(ConfigError, parse_listen, bad)
            self.assertIn(words, str(e))
