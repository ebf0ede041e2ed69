"""
Issue 18: the dashboard shows the problems C{bpctunnel check} reports
(L{bpctunnel.server.config_checks}), read in a thread and kept for
L{CHECK_MAX_AGE} seconds; a host that never connected shows the expiry of
the certificate issued to it.
"""

from __future__ import annotations

import datetime
import os
import re

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel import pki
from bpctunnel.admin.api_client import format_hosts
from bpctunnel.backuppc.checks import inspect_hosts
from bpctunnel.backuppc.paths import RSYNCD_PASSWD_PLACEHOLDER, Paths
from bpctunnel.backuppc.permissions import Account
from bpctunnel.server.config_checks import CHECK_MAX_AGE, ConfigChecks
from bpctunnel.server.server_state import ServerState
from bpctunnel.server.settings import ServerSettings
from bpctunnel.testing.sandbox import Sandbox
from tests.helpers import temp_dir

START = 1_700_000_000.0


@attrs.define(eq=False)
class FakeMux:
    lost: bool = False
    bytes_in: int = 0
    bytes_out: int = 0


@attrs.define(eq=False)
class FakeTunnel:
    """What the hosts view reads of a live tunnel."""

    host: str
    served_modules: tuple[str, ...] | None = None
    peer_address: str = "192.0.2.7:50000"
    connected_at: float = START
    certificate_expires: datetime.datetime | None = None
    mux: FakeMux = attrs.Factory(FakeMux)

    def check(self, now):
        """The server's periodic check: nothing to do here."""


class ThreadRuns:
    """A stand-in for the thread pool: holds each call until the test runs it."""

    def __init__(self):
        self.calls: list[tuple[object, Deferred]] = []

    def __call__(self, f):
        d = Deferred()
        self.calls.append((f, d))
        return d

    def finish(self):
        f, d = self.calls.pop(0)
        try:
            result = f()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


class ConfigChecksTestCase(SynchronousTestCase):
    def setUp(self):
        self.sandbox = Sandbox.create(temp_dir(self))
        self.paths = Paths(self.sandbox.certs_dir, self.sandbox.conf_dir)
        self.clock = Clock()
        self.clock.advance(START)

    def register(self, host: str, port: int, mode: int = 0o640, fingerprint: str = "ab" * 32):
        path = self.sandbox.register(host, port, fingerprint)
        with path.open("a") as f:
            f.write("$Conf{PingMaxMsec} = 2000;\n")     # as register-client writes it
        os.chmod(path, mode)
        return path

    def state(self, accounts=(), run=None) -> ServerState:
        state = ServerState(self.clock, ServerSettings(self.sandbox.conf_dir,
                                                       certs=self.sandbox.certs_dir))
        state.config_checks = ConfigChecks(self.clock, self.paths, accounts,
                                           run or (lambda f: succeed(f())))
        return state

    def hosts(self, state) -> dict:
        return {h["host"]: h for h in state.hosts_view.body()["hosts"]}


class ProblemsTests(ConfigChecksTestCase):
    """What `bpctunnel check` reports, the dashboard shows."""

    def test_check_problems_on_dashboard(self):
        self.register("laptop1", 64701, mode=0o644)        # its secret, readable by all
        self.register("laptop2", 64702)
        self.register("laptop3", 64702)                    # laptop2's port
        config = self.register("laptop4", 64704)
        config.write_text(config.read_text().replace(
            self.sandbox.auths["laptop4"].secret, RSYNCD_PASSWD_PLACEHOLDER))
        self.register("laptop5", 64705)                    # nothing wrong

        hosts = self.hosts(self.state())

        self.assertIn(f"{config.parent / 'laptop1.pl'} holds laptop1's rsync secret and every "
                      f"local user can read it: chmod o-rwx", " ".join(hosts["laptop1"]["problems"]))
        self.assertIn("port 64702 is also RsyncdClientPort of laptop3: only one tunnel can "
                      "listen on it", hosts["laptop2"]["problems"])
        self.assertIn("port 64702 is also RsyncdClientPort of laptop2: only one tunnel can "
                      "listen on it", hosts["laptop3"]["problems"])
        self.assertRegex(" ".join(hosts["laptop4"]["problems"]),
                         r"laptop4 relies on its port alone: any local user")
        # And nothing else: the offline hosts are "never seen" besides.
        self.assertEqual(hosts["laptop5"]["problems"], ["never seen by this server"])
        for host, report in [(r.host, r) for r in inspect_hosts(self.paths)]:
            self.assertEqual(hosts[host]["problems"][1:],
                             [p.message for p in report.problems], host)

    def test_only_the_hosts_asked_for(self):
        """A web user's view builds their own hosts only."""
        for n in range(1, 4):
            self.register(f"laptop{n}", 64700 + n)
        body = self.state().hosts_view.body(sees=lambda host: host == "laptop2")
        self.assertEqual([h["host"] for h in body["hosts"]], ["laptop2"])

    def test_others_not_named_to_who_cannot_see_them(self):
        """A shared port's other holder is "another host" to a user who may not see it."""
        self.register("laptop1", 64701)
        self.register("laptop1-old", 64701)
        state = self.state()
        [mine] = state.hosts_view.body(sees=lambda host: host == "laptop1")["hosts"]
        self.assertIn("port 64701 is also RsyncdClientPort of another host: only one tunnel "
                      "can listen on it", mine["problems"])
        self.assertNotIn("laptop1-old", " ".join(mine["problems"]))
        everyone = {h["host"]: h for h in state.hosts_view.body()["hosts"]}
        self.assertIn("port 64701 is also RsyncdClientPort of laptop1-old: only one tunnel "
                      "can listen on it", everyone["laptop1"]["problems"])

    def test_host_with_config_but_no_tunnel_cert(self):
        """A host `check` knows (ClientNameAlias 127.0.0.1) that could never connect is listed."""
        config = self.register("laptop1", 64701)
        config.write_text(config.read_text().replace("$Conf{ClientComment}", "$Conf{Other}"))
        hosts = self.hosts(self.state())
        self.assertIn("laptop1.pl has no TunnelCert:sha256:... in $Conf{ClientComment}: every "
                      "client is refused (run `bpctunnel register-client laptop1`)",
                      hosts["laptop1"]["problems"])

    def test_live_tunnel_problems(self):
        """A connected laptop that does not serve what BackupPC expects is flagged."""
        self.register("laptop1", 64701)
        state = self.state()
        tunnel = FakeTunnel("laptop1", served_modules=("photos",))
        state.tunnels._tunnels["laptop1"] = tunnel
        state.notify("open", tunnel)
        [problem] = self.hosts(state)["laptop1"]["problems"]
        self.assertRegex(problem, r"^BackupPC expects module\(s\) docs that the laptop does not "
                                  r"serve \(it serves: photos\)")

    def test_server_files_unreadable(self):
        """The server's own files that its readers cannot read are the dashboard's too."""
        self.register("laptop1", 64701)
        key = self.sandbox.certs_dir / "server.key"
        for folder in [self.sandbox.root, self.sandbox.certs_dir, self.sandbox.conf_dir]:
            os.chmod(folder, 0o755)
        os.chmod(key, 0o600)
        stranger = Account("stranger", 54321, frozenset({54321}))
        body = self.state(accounts=[stranger]).hosts_view.body()
        [problem] = body["server_problems"]
        self.assertRegex(problem, rf"^stranger cannot read {re.escape(str(key))} \(\S+:\S+ 0600\): "
                                  rf"the server cannot start$")
        self.assertEqual(body["checked_at"], "2023-11-14T22:13:20+00:00")
        # bpctunnel status prints them too.
        self.assertEqual(format_hosts(body).splitlines()[-1], f"server: {problem}")

    def test_certificate_of_never_connected_host(self):
        """Its expiry comes from certs/clients/HOST.crt, flagged once (not by check and us)."""
        bundle = pki.make_client_cert(self.sandbox.ca, "laptop1", 10)
        issued = self.paths.issued_cert("laptop1")
        issued.parent.mkdir(parents=True, exist_ok=True)
        pki.write_public(issued, bundle.cert_pem)
        self.register("laptop1", 64701, fingerprint=pki.fingerprint_sha256(bundle.cert_pem))
        self.clock.advance(pki.now().timestamp() - self.clock.seconds())

        [host] = self.hosts(self.state()).values()

        expires = pki.not_after(bundle.cert_pem)
        self.assertEqual(host["certificate_expires"], expires.isoformat(timespec="seconds"))
        certificate = [p for p in host["problems"] if "certificate" in p]
        self.assertEqual(certificate, [f"its certificate expires in 9 days "
                                       f"({expires:%Y-%m-%d}); run `bpctunnel renew laptop1`"])


class ScheduleTests(ConfigChecksTestCase):
    """The check runs in a thread, at most every CHECK_MAX_AGE seconds, one at a time."""

    def test_off_the_reactor_and_cached(self):
        self.register("laptop1", 64701, mode=0o644)
        runs = ThreadRuns()
        state = self.state(run=runs)

        first = self.hosts(state)["laptop1"]["problems"]
        # The poll did not wait for the files: the check is still "in the thread".
        self.assertEqual(first, ["never seen by this server"])
        self.assertEqual(len(runs.calls), 1)
        self.hosts(state)
        self.assertEqual(len(runs.calls), 1, "a second check started while one runs")
        runs.finish()
        self.assertEqual(len(self.hosts(state)["laptop1"]["problems"]), 2)

        self.clock.advance(CHECK_MAX_AGE - 1)
        self.hosts(state)
        self.assertEqual(runs.calls, [])
        (self.sandbox.conf_dir / "laptop1.pl").chmod(0o640)
        self.clock.advance(1)
        self.assertEqual(len(self.hosts(state)["laptop1"]["problems"]), 2, "stale, until rechecked")
        runs.finish()
        self.assertEqual(self.hosts(state)["laptop1"]["problems"], ["never seen by this server"])

    def test_failed_check_is_shown(self):
        """A check that breaks leaves the dashboard up, saying so; the next one may succeed."""
        self.register("laptop1", 64701)
        runs = ThreadRuns()
        state = self.state(run=runs)
        state.config_checks._check = lambda: 1 / 0
        state.hosts_view.body()
        runs.finish()
        body = state.hosts_view.body()
        self.assertEqual(body["server_problems"],
                         ["the check of BackupPC's files failed: division by zero"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([h["host"] for h in body["hosts"]], ["laptop1"])
