"""Tests for the client's INI file and the server's listen address option."""

import base64
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel import pki
from bpctunnel.client.protocol import (
    advice_for,
    client_endpoint,
    client_tls,
    refusal_from_close_reason,
    tls_advice,
)
from bpctunnel.client.config import (
    InlinePem,
    load_client_config,
    parse_server_url,
    pem_and_source,
)
from bpctunnel.errors import CertificateError, ConfigError
from bpctunnel.transport.http_connect import HTTPProxy
from bpctunnel.transport.listen_address import ListenAddress, parse_listen
from bpctunnel.testing.sandbox import Sandbox, free_port, make_sample_tree, start_client
from bpctunnel.transport.tls import server_tls_options
from tests import test_end_to_end
from tests.helpers import TIMEOUT, temp_dir
from tests.test_tls import handshake


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


def pem_block(pem: bytes) -> str:
    """PEM text as an INI multi-line value: on the next lines, indented."""
    return "\n" + "".join(f"    {line}\n" for line in pem.decode().splitlines())


def write_inline_config(files, server_url: str, rsync: str = "rsync", mode: int = 0o600,
                        inline=("ca", "cert", "key"), **settings) -> Path:
    """
    A client config next to C{files}' rsyncd.conf (from write_client_config)
    with the C{inline} keys' PEM in the file itself; the others are paths.
    """
    paths = {"ca": files.ca, "cert": files.cert, "key": files.key}
    lines = ["[bpctunnel]\n", f"server = {server_url}\n"]
    for key, path in paths.items():
        value = pem_block(path.read_bytes()) if key in inline else f" {path.name}\n"
        lines.append(f"{key} ={value}")
    lines += ["rsyncd_conf = rsyncd.conf\n", f"rsync = {rsync}\n"]
    lines += [f"{key} = {value}\n" for key, value in settings.items()]
    path = files.cert.parent / f"{files.host}-inline.conf"
    pki.write_private(path, "".join(lines).encode())
    path.chmod(mode)
    return path


class InlinePemConfigTests(SynchronousTestCase):
    """ca, cert and key may hold the PEM text itself, indented under the key."""

    def setUp(self):
        self.root = temp_dir(self)
        self.sandbox = Sandbox.create(self.root / "sandbox")
        self.files = self.sandbox.issue_client("laptop1")
        self.sandbox.write_client_config(self.files, "wss://127.0.0.1:8443/tunnel",
                                         {"docs": self.root})
        self.path = write_inline_config(self.files, "wss://127.0.0.1:8443/tunnel")

    def test_all_inline(self):
        """The PEM is read from the file, without the indentation; the CN is the host."""
        config = load_client_config(self.path, environ={})
        for key in ("ca", "cert", "key"):
            value = getattr(config, key)
            self.assertIsInstance(value, InlinePem)
            self.assertEqual(value.pem, getattr(self.files, key).read_bytes())
            self.assertEqual(value.source, f"{key} in {self.path}")
            self.assertEqual(pem_and_source(value), (value.pem, value.source))
        self.assertNotIn("PRIVATE", repr(config.key))
        self.assertEqual(config.host, "laptop1")
        self.assertEqual(config.rsyncd_conf, self.files.cert.parent / "rsyncd.conf")

    def test_inline_config_connects(self):
        """client_tls of an inline config completes mutual TLS with the server's options."""
        config = load_client_config(self.path, environ={})
        server, client = handshake(server_tls_options(self.sandbox.certs_dir), client_tls(config))
        self.assertTrue(client.handshake_done)
        self.assertEqual(server.peer_der, x509.load_pem_x509_certificate(
            self.files.cert.read_bytes()).public_bytes(serialization.Encoding.DER))

    def test_mixed_inline_and_paths(self):
        """Only the certificates inline, the key a file: the key never has to be copied."""
        path = write_inline_config(self.files, "wss://127.0.0.1:8443/tunnel", mode=0o644,
                                   inline=("ca", "cert"))
        config = load_client_config(path, environ={})
        self.assertIsInstance(config.cert, InlinePem)
        self.assertEqual(config.key, self.files.key)
        self.assertEqual(pem_and_source(config.key),
                         (self.files.key.read_bytes(), str(self.files.key)))
        server, client = handshake(server_tls_options(self.sandbox.certs_dir), client_tls(config))
        self.assertTrue(client.handshake_done)

    def test_paths_use_client_tls_options(self):
        """A config of paths only still names the files in TLS errors."""
        self.files.key.write_bytes(pki.make_client_cert(self.sandbox.ca, "other").key_pem)
        path = self.files.cert.parent / "laptop1.conf"
        config = load_client_config(path, environ={})
        e = self.assertRaises(CertificateError, client_tls, config)
        self.assertIn(f"{self.files.key} does not belong to {self.files.cert}", str(e))

    def replace_block(self, key: str, pem: bytes) -> None:
        text = self.path.read_text()
        old = pem_block(getattr(self.files, key).read_bytes())
        self.assertIn(old, text)
        self.path.write_text(text.replace(old, pem_block(pem)))

    def test_not_a_certificate(self):
        """A key where the certificate belongs is named by its key and file."""
        self.replace_block("cert", self.files.key.read_bytes())
        e = self.assertRaises(CertificateError, load_client_config, self.path, environ={})
        self.assertTrue(str(e).startswith(f"cert in {self.path} is not a PEM certificate"),
                        str(e))

    def test_ca_not_a_certificate(self):
        self.replace_block("ca", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
        e = self.assertRaises(CertificateError, load_client_config, self.path, environ={})
        self.assertTrue(str(e).startswith(f"ca in {self.path} is not a PEM certificate"), str(e))

    def test_not_a_key(self):
        self.replace_block("key", self.files.cert.read_bytes())
        e = self.assertRaises(CertificateError, load_client_config, self.path, environ={})
        self.assertTrue(str(e).startswith(f"key in {self.path} is not a PEM private key"), str(e))

    def test_key_of_another_certificate(self):
        """The mismatch is reported when TLS options are made, naming both keys."""
        self.replace_block("key", pki.make_client_cert(self.sandbox.ca, "other").key_pem)
        config = load_client_config(self.path, environ={})
        e = self.assertRaises(CertificateError, client_tls, config)
        self.assertTrue(str(e).startswith(
            f"key in {self.path} does not belong to cert in {self.path}; "), str(e))

    def test_readable_by_others_refused(self):
        """An inline private key in a file others may read: refused, saying how to fix it."""
        for mode in (0o644, 0o640, 0o604, 0o620):
            self.path.chmod(mode)
            e = self.assertRaises(ConfigError, load_client_config, self.path, environ={})
            self.assertEqual(
                str(e), f"client config {self.path} holds a private key (key = -----BEGIN ...) "
                        f"but other users may read it (mode {mode:03o}); "
                        f"run chmod 600 {self.path}")
        self.path.chmod(0o600)
        self.assertIsInstance(load_client_config(self.path, environ={}).key, InlinePem)
        self.path.chmod(0o400)
        self.assertIsInstance(load_client_config(self.path, environ={}).key, InlinePem)

    def test_unindented_block(self):
        """PEM lines at the start of a line break the INI file; the error says to indent."""
        self.path.write_text(self.path.read_text().replace("\n    MII", "\nMII", 1))
        e = self.assertRaises(ConfigError, load_client_config, self.path, environ={})
        self.assertIn("is not a valid INI file", str(e))
        self.assertTrue(str(e).endswith("; the lines of an inline PEM block (ca, cert, key) "
                                        "must be indented under their key"), str(e))

    def test_pem_on_the_command_line(self):
        """An override may be PEM text too; messages then say so."""
        path = self.files.cert.parent / "laptop1.conf"
        config = load_client_config(path, {"cert": self.files.cert.read_text()}, environ={})
        self.assertEqual(config.cert.source, "cert on the command line")
        self.assertEqual(config.key, self.files.key)
        e = self.assertRaises(CertificateError, load_client_config, path,
                              {"ca": "-----BEGIN CERTIFICATE-----\nxx\n"}, environ={})
        self.assertTrue(str(e).startswith("ca on the command line is not a PEM certificate"))

    def test_non_ascii_pem(self):
        self.replace_block("ca", "-----BEGIN CERTIFICATE-----\nGrüße\n-----END CERTIFICATE-----"
                           .encode())
        e = self.assertRaises(ConfigError, load_client_config, self.path, environ={})
        self.assertTrue(str(e).startswith(f"ca in {self.path} is not a PEM block: it has "
                                          f"non-ASCII characters"), str(e))


class ProxyConfigTests(SynchronousTestCase):
    """The proxy key, and https_proxy/no_proxy from the environment."""

    def setUp(self):
        self.root = temp_dir(self)
        sandbox = Sandbox.create(self.root / "sandbox")
        self.files = sandbox.issue_client("laptop1")
        self.base = sandbox.write_client_config(
            self.files, "wss://backup.example.org:8443/tunnel", {"docs": self.root})

    def config_with(self, *lines: str) -> Path:
        path = self.base.parent / "proxy.conf"
        path.write_text(self.base.read_text() + "".join(f"{line}\n" for line in lines))
        return path

    def test_no_proxy_by_default(self):
        self.assertIsNone(load_client_config(self.base, environ={}).proxy)

    def test_proxy_key(self):
        config = load_client_config(self.config_with("proxy = http://proxy.example:3128"),
                                    environ={"https_proxy": "http://other:1"})
        self.assertEqual(config.proxy, HTTPProxy("proxy.example", 3128))

    def test_proxy_with_credentials(self):
        config = load_client_config(self.config_with("proxy = http://me:pw@proxy.example:3128"),
                                    environ={})
        self.assertEqual(config.proxy.authorization, "Basic " + base64.b64encode(b"me:pw").decode())
        self.assertNotIn(config.proxy.authorization[6:], repr(config))

    def test_bad_proxy_key(self):
        path = self.config_with("proxy = https://proxy.example:3128")
        e = self.assertRaises(ConfigError, load_client_config, path, environ={})
        self.assertTrue(str(e).startswith(
            f"proxy = https://proxy.example:3128 in {path} must be an http:// URL"), str(e))
        path = self.config_with("proxy = http://proxy.example")
        e = self.assertRaises(ConfigError, load_client_config, path, environ={})
        self.assertIn(f"proxy = http://proxy.example in {path} has no port", str(e))

    def test_environment(self):
        env = {"https_proxy": "http://envproxy:8080"}
        self.assertEqual(load_client_config(self.base, environ=env).proxy,
                         HTTPProxy("envproxy", 8080))
        self.assertIsNone(load_client_config(self.config_with("proxy = none"), environ=env).proxy)
        self.assertIsNone(load_client_config(
            self.base, environ={**env, "no_proxy": "localhost,.example.org"}).proxy)
        self.assertIsNone(load_client_config(
            self.base, environ={**env, "NO_PROXY": "backup.example.org"}).proxy)

    def test_bad_environment_value_names_the_way_out(self):
        e = self.assertRaises(ConfigError, load_client_config, self.base,
                              environ={"https_proxy": "socks5h://p:1080"})
        self.assertIn(f"set proxy = none in {self.base} to connect directly", str(e))
        self.assertIsNone(load_client_config(self.config_with("proxy = none"),
                                             environ={"https_proxy": "socks5h://p:1080"}).proxy)

    def test_client_endpoint_connects_to_proxy(self):
        """With a proxy, the client's TCP connection goes to the proxy and asks for the server."""
        config = load_client_config(self.config_with("proxy = http://10.9.8.7:3128"), environ={})
        memory = MemoryReactorClock()
        client_endpoint(memory, config).connect(Factory.forProtocol(Protocol))
        _, port, factory, _, _ = memory.tcpClients[0]
        self.assertEqual(port, 3128)
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        self.assertEqual(transport.value(), b"CONNECT backup.example.org:8443 HTTP/1.1\r\n"
                                            b"Host: backup.example.org:8443\r\n\r\n")


class InlinePemEndToEndTests(test_end_to_end.TunnelTestCase):
    """A client whose one config file holds everything connects, and a pull works."""

    @inlineCallbacks
    def test_inline_bundle_pull(self):
        files = self.sandbox.issue_client("laptop1")
        port = free_port()
        self.sandbox.register("laptop1", port, files.fingerprint)
        source = make_sample_tree(self.root / "src")
        self.sandbox.write_client_config(files, self.server.url, {"docs": source}, self.rsync)
        path = write_inline_config(files, self.server.url, self.rsync)
        for pem_file in (files.ca, files.cert, files.key):
            pem_file.unlink()  # the config file is all there is
        client = start_client(reactor, path)
        self.addCleanup(client.stop)
        yield client.events.next("open").addTimeout(TIMEOUT, reactor)
        self.assertIsInstance(client.config.key, InlinePem)
        yield self.pull_and_compare(port, "docs", source)
        self.assertEqual(self.server_events, [("open", "laptop1")])
