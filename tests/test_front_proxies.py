"""
bpctunnel behind real HAProxy and nginx on a shared TLS port (SNI
passthrough), with the PROXY protocol, using the example configs in etc/.
"""

from __future__ import annotations

import shutil

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from bpctunnel import pki
from bpctunnel.testing.sandbox import free_port, make_sample_tree
from tests.helpers import PROJECT_ROOT, TIMEOUT, spawn, temp_dir
from tests.test_end_to_end import TunnelTestCase
from tests.test_listen_endpoints import assert_bulk_socket


def binary(name: str, package: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise AssertionError(f"{name} is not installed: apt-get install {package}")
    return path


class FrontProxyTestCase(TunnelTestCase):
    """Clients reach the server as wss://localhost:<front port>/tunnel."""

    server_name = "localhost"

    def client_through_front(self, host, modules, front_port, **kwargs):
        return self.connected_client(host, modules, url=f"wss://localhost:{front_port}/tunnel",
                                     retry_initial=0.2, retry_max=1, **kwargs)

    def client_address(self, client) -> str:
        """The address of the client's own socket: what the server should report."""
        local = client.factory.current.transport.getHost()
        return f"127.0.0.1:{local.port}"

    @inlineCallbacks
    def assert_reported_address(self, client, host):
        from tests.test_status import http_pool
        import json

        import treq

        expected = self.client_address(client)
        line = yield self.logs.wait_for(f"tunnel up for {host} from ")
        self.assertIn(f"tunnel up for {host} from {expected},", line)
        response = yield treq.get(f"{self.server.api_url}/api/v1/tunnels/{host}",
                                  pool=http_pool(self)).addTimeout(TIMEOUT, reactor)
        info = json.loads((yield response.content()))
        self.assertEqual(info["client_address"], expected)

    @inlineCallbacks
    def assert_foreign_certificate_refused(self, front_port):
        """The client certificate is still checked end to end, behind the proxy."""
        foreign = self.sandbox.issue_client("intruder", ca=pki.make_ca("another CA"))
        self.sandbox.register("intruder", free_port(), foreign.fingerprint)
        client, _, _ = self.add_client("intruder", {"m": self.root}, register=False, files=foreign,
                                       url=f"wss://localhost:{front_port}/tunnel", retry_max=300)
        reason = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        yield client.stop()
        self.assertIn("unknown ca", reason)


class HAProxyTests(FrontProxyTestCase):
    """HAProxy, mode tcp, req_ssl_sni, send-proxy-v2 (etc/haproxy-bpctunnel.cfg)."""

    server_settings = {"proxy_protocol": True}

    def start_haproxy(self) -> int:
        front = free_port()
        server_port = self.server.port.getHost().port
        text = (PROJECT_ROOT / "etc" / "haproxy-bpctunnel.cfg").read_text()
        for old, new in [("bind :443", f"bind 127.0.0.1:{front}"),
                         ("127.0.0.1:8443", f"127.0.0.1:{server_port}"),
                         ("backup.example.org", "localhost"),
                         ("127.0.0.1:8080", f"127.0.0.1:{free_port()}")]:
            self.assertIn(old, text)
            text = text.replace(old, new)
        config = temp_dir(self) / "haproxy.cfg"
        config.write_text(text)
        spawn(self, [binary("haproxy", "haproxy"), "-db", "-f", str(config)])
        return front

    @inlineCallbacks
    def test_transfer_through_haproxy(self):
        front = self.start_haproxy()
        source = make_sample_tree(self.root / "src", large_file_bytes=2_000_000)
        client, port, _ = yield self.client_through_front("laptop1", {"m": source}, front)
        yield self.pull_and_compare(port, "m", source)
        yield self.assert_reported_address(client, "laptop1")
        # Under the PROXY protocol's wrapper, the server's socket is the one tuned.
        assert_bulk_socket(self, self.server.factory.tunnels.get("laptop1").transport)
        yield self.assert_foreign_certificate_refused(front)


class NginxTests(FrontProxyTestCase):
    """nginx stream, ssl_preread, proxy_protocol on (etc/nginx-bpctunnel.conf)."""

    server_settings = {"proxy_protocol": True}

    def start_nginx(self) -> int:
        front = free_port()
        server_port = self.server.port.getHost().port
        stream = (PROJECT_ROOT / "etc" / "nginx-bpctunnel.conf").read_text()
        for old, new in [("listen 443;", f"listen 127.0.0.1:{front};"),
                         ("127.0.0.1:8443", f"127.0.0.1:{server_port}"),
                         ("backup.example.org", "localhost"),
                         ("127.0.0.1:8080", f"127.0.0.1:{free_port()}")]:
            self.assertIn(old, stream)
            stream = stream.replace(old, new)
        prefix = temp_dir(self)
        module = "/usr/lib/nginx/modules/ngx_stream_module.so"
        config = prefix / "nginx.conf"
        config.write_text(f"load_module {module};\ndaemon off;\nmaster_process off;\n"
                          f"pid {prefix}/nginx.pid;\n"
                          f"error_log stderr;\nevents {{}}\n{stream}")
        spawn(self, [binary("nginx", "nginx libnginx-mod-stream"), "-p", str(prefix),
                     "-c", str(config)])
        return front

    @inlineCallbacks
    def test_transfer_through_nginx(self):
        front = self.start_nginx()
        source = make_sample_tree(self.root / "src", large_file_bytes=2_000_000)
        client, port, _ = yield self.client_through_front("laptop1", {"m": source}, front)
        yield self.pull_and_compare(port, "m", source)
        yield self.assert_reported_address(client, "laptop1")
        # Under the PROXY protocol's wrapper, the server's socket is the one tuned.
        assert_bulk_socket(self, self.server.factory.tunnels.get("laptop1").transport)
        yield self.assert_foreign_certificate_refused(front)


class NoProxyHeaderTests(TunnelTestCase):
    """A server expecting the PROXY header drops connections that lack one."""

    server_settings = {"proxy_protocol": True}

    @inlineCallbacks
    def test_direct_client_without_header_fails(self):
        client, _, _ = self.add_client("laptop1", {"m": self.root}, retry_max=300)
        reason = yield client.events.next("closed").addTimeout(TIMEOUT, reactor)
        self.assertNotIn("refused by server", reason)
        self.assertEqual(self.server_events, [])
