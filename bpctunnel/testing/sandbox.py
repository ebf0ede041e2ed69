"""
A throwaway bpctunnel installation in one folder: a CA, a server
certificate, a BackupPC-style config folder, client bundles and rsyncd.conf
files; and helpers that start a server and clients in the running reactor.

Used by C{bpctunnel demo} and by the end-to-end tests, so both exercise the
same real parts (real TLS, real sockets on 127.0.0.1, real rsync).
"""

from __future__ import annotations

import socket
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred, succeed

from bpctunnel import pki
from bpctunnel.client.protocol import TunnelClientFactory, make_client_service
from bpctunnel.client.config import ClientConfig, load_client_config
from bpctunnel.client.rsync_auth import RsyncAuth
from bpctunnel.server.endpoints import tunnel_endpoint
from bpctunnel.server.protocol import ServerSettings, TunnelServerFactory
from bpctunnel.server.api import make_api_site
from bpctunnel.transport.listen_address import ListenAddress, listen_description
from bpctunnel.transport.tls import server_tls_options

HOSTS_HEADER = "host        dhcp    user    moreUsers\n"



def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for RsyncdClientPort)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_config_text(fingerprint: str | None, port: int | None, shares=("docs",),
                     auth: RsyncAuth | None = None) -> str:
    """A host config as C{register-client} writes it."""
    auth = auth or RsyncAuth.generate()
    lines = [
        "$Conf{XferMethod} = 'rsyncd';",
        "$Conf{ClientNameAlias} = ['127.0.0.1'];",
        f"$Conf{{RsyncdUserName}} = '{auth.user}';",
        f"$Conf{{RsyncdPasswd}} = '{auth.secret}';",
        "$Conf{RsyncShareName} = [" + ", ".join(f"'{s}'" for s in shares) + "];",
    ]
    if port is not None:
        lines.append(f"$Conf{{RsyncdClientPort}} = {port};")
    if fingerprint is not None:
        lines.append(f"$Conf{{ClientComment}} = 'TunnelCert:sha256:{fingerprint}';")
    return "\n".join(lines) + "\n"


def rsyncd_conf_text(modules: dict[str, Path], writable: tuple[str, ...] = ()) -> str:
    """An rsyncd.conf for running as an ordinary user over stdin/stdout."""
    out = ["use chroot = no", "log file = /dev/null", ""]
    for name, path in modules.items():
        out += [
            f"[{name}]",
            f"    path = {path}",
            f"    read only = {'no' if name in writable else 'yes'}",
            "",
        ]
    return "\n".join(out)


@attrs.frozen
class ClientFiles:
    """One client's certificate bundle."""

    host: str
    ca: Path
    cert: Path
    key: Path
    fingerprint: str


@attrs.define
class Sandbox:
    """A CA, server certificate and BackupPC config folder under C{root}."""

    root: Path
    ca: pki.CertAndKey
    server_name: str = "127.0.0.1"
    #: Each registered host's rsync secret, by host name.
    auths: dict = attrs.field(factory=dict)
    #: The host registered on each port.
    hosts_by_port: dict = attrs.field(factory=dict)

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def conf_dir(self) -> Path:
        return self.root / "backuppc"

    @classmethod
    def create(cls, root: Path, server_name: str = "127.0.0.1") -> Sandbox:
        """Make the CA, the server's certificate and an empty BackupPC config."""
        root = Path(root)
        sandbox = cls(root, pki.make_ca("bpctunnel sandbox CA"), server_name)
        sandbox.certs_dir.mkdir(parents=True, exist_ok=True)
        (sandbox.conf_dir / "pc").mkdir(parents=True, exist_ok=True)
        server = pki.make_server_cert(sandbox.ca, server_name)
        pki.write_public(sandbox.certs_dir / "ca.crt", sandbox.ca.cert_pem)
        pki.write_public(sandbox.certs_dir / "server.crt", server.cert_pem)
        pki.write_private(sandbox.certs_dir / "server.key", server.key_pem)
        (sandbox.conf_dir / "hosts").write_text(HOSTS_HEADER + "localhost   0       backuppc\n")
        return sandbox

    def issue_client(self, host: str, ca: pki.CertAndKey | None = None,
                     days: int = 825) -> ClientFiles:
        """
        A client certificate for C{host} (from another CA if C{ca} is given),
        valid for C{days}, in a folder of its own so that several bundles for
        one host can exist.
        """
        folder = self.root / "clients" / host
        n = 1
        while folder.exists():
            n += 1
            folder = self.root / "clients" / f"{host}-{n}"
        folder.mkdir(parents=True)
        issuer = ca or self.ca
        bundle = pki.make_client_cert(issuer, host, days)
        files = ClientFiles(host, folder / "ca.crt", folder / f"{host}.crt", folder / f"{host}.key",
                            pki.fingerprint_sha256(bundle.cert_pem))
        pki.write_public(files.ca, self.ca.cert_pem)
        pki.write_public(files.cert, bundle.cert_pem)
        pki.write_private(files.key, bundle.key_pem)
        return files

    def register(self, host: str, port: int | None, fingerprint: str | None,
                 in_hosts: bool = True, shares=("docs",)) -> Path:
        """Add C{host} to the hosts file and write its host config."""
        if in_hosts:
            with (self.conf_dir / "hosts").open("a") as f:
                f.write(f"{host}   0       backuppc\n")
        path = self.conf_dir / f"{host}.pl"
        auth = self.auths.setdefault(host, RsyncAuth.generate())
        path.write_text(host_config_text(fingerprint, port, shares, auth))
        if port is not None:
            self.hosts_by_port[port] = host
        return path

    def auth_for(self, port: int) -> RsyncAuth | None:
        """The rsync secret BackupPC sends to the laptop behind C{port}."""
        return self.auths.get(self.hosts_by_port.get(port))

    def rsync_url(self, port: int, path: str = "") -> str:
        """C{rsync://USER@127.0.0.1:PORT/PATH}, as BackupPC names the laptop behind C{port}."""
        auth = self.auth_for(port)
        return f"rsync://{auth.user + '@' if auth else ''}127.0.0.1:{port}/{path}"

    def rsync_env(self, port: int, env: dict | None = None) -> dict:
        """C{env} plus the secret (C{RSYNC_PASSWORD}) of the laptop behind C{port}."""
        auth = self.auth_for(port)
        return {**(env or {}), **({"RSYNC_PASSWORD": auth.secret} if auth else {})}

    def write_client_config(self, files: ClientFiles, server_url: str,
                            modules: dict[str, Path], rsync: str = "rsync",
                            writable: tuple[str, ...] = (), **settings) -> Path:
        """
        The client's INI file and rsyncd.conf, next to its certificate;
        C{settings} become more C{key = value} lines.
        """
        folder = files.cert.parent
        (folder / "rsyncd.conf").write_text(rsyncd_conf_text(modules, writable))
        auth = self.auths.get(files.host)
        if auth is not None and "rsync_secrets" not in settings:
            pki.write_private(folder / "rsyncd.secrets", auth.secrets_line())
            settings = {"rsync_secrets": "rsyncd.secrets", **settings}
        path = folder / f"{files.host}.conf"
        path.write_text(
            "[bpctunnel]\n"
            f"server = {server_url}\n"
            f"ca = {files.ca.name}\n"
            f"cert = {files.cert.name}\n"
            f"key = {files.key.name}\n"
            "rsyncd_conf = rsyncd.conf\n"
            f"rsync = {rsync}\n"
            + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        return path


@attrs.define
class RunningServer:
    """A tunnel server listening in this process."""

    factory: TunnelServerFactory
    port: object
    api_port: object = None

    @property
    def url(self) -> str:
        address = self.port.getHost()
        return f"wss://{address.host}:{address.port}/tunnel"

    @property
    def api_url(self) -> str:
        address = self.api_port.getHost()
        return f"http://{address.host}:{address.port}"

    def stop(self) -> Deferred:
        for tunnel in self.factory.tunnels:
            tunnel.dropConnection(abort=True)
        if self.api_port is not None:
            self.api_port.stopListening()
        return self.port.stopListening()


def start_server(reactor, sandbox: Sandbox | None = None, interface: str = "127.0.0.1", *,
                 certs_dir: Path | None = None, conf_dir: Path | None = None, port: int = 0,
                 api_token: str | None = None, proxy_protocol: bool = False,
                 backup_trigger=None, **settings) -> Deferred:
    """
    Listen on C{interface}:C{port} (any free port by default) with the
    sandbox's files (or the given folders); C{settings} are more
    L{ServerSettings}; C{backup_trigger} takes laptops' backup requests.  The
    status API listens on 127.0.0.1, port 0.  Fires with a L{RunningServer}.
    """
    certs_dir = certs_dir or sandbox.certs_dir
    conf_dir = conf_dir or sandbox.conf_dir
    settings.setdefault("certs", certs_dir)
    factory = TunnelServerFactory(reactor, ServerSettings(backuppc_conf=conf_dir, **settings),
                                  backup_trigger=backup_trigger)
    description = listen_description(ListenAddress(interface, port).description, proxy_protocol)
    endpoint = tunnel_endpoint(reactor, description, server_tls_options(certs_dir))

    def listening(port):
        api = reactor.listenTCP(0, make_api_site(factory, api_token), interface="127.0.0.1")
        return RunningServer(factory, port, api)

    return endpoint.listen(factory).addCallback(listening)


class TunnelEvents:
    """
    Turns a client factory's open/closed events into Deferreds, for code
    that waits for "the tunnel is up" or "the client was refused".
    """

    def __init__(self, factory: TunnelClientFactory, clock):
        self.clock = clock
        self.history: list[tuple[str, object]] = []
        self._waiting: list[tuple[str, Deferred]] = []
        factory.observers.append(self._event)

    def _event(self, kind: str, protocol, detail) -> None:
        self.history.append((kind, detail))
        waiting, self._waiting = self._waiting, []
        for wanted, d in waiting:
            if wanted == kind:
                # On the next turn: waiters must not run inside the protocol's
                # (or ClientService's) own callbacks.
                self.clock.callLater(0, d.callback, detail if kind == "closed" else protocol)
            else:
                self._waiting.append((wanted, d))

    def next(self, kind: str) -> Deferred:
        """Fires at the next C{kind} event ("open" or "closed")."""
        d = Deferred()
        self._waiting.append((kind, d))
        return d


@attrs.define
class RunningClient:
    """A tunnel client running in this process."""

    config: ClientConfig
    service: object
    factory: TunnelClientFactory
    events: TunnelEvents
    clock: object

    def stop(self) -> Deferred:
        """
        Stop the client (once; later calls do nothing).  Fires on a later
        reactor turn, so that whoever waits may stop it again or start anew
        without re-entering ClientService's state machine.
        """
        if not self.service.running:
            return succeed(None)
        d = Deferred()
        self.service.stopService().addBoth(lambda r: self.clock.callLater(0, d.callback, None))
        return d


def start_client(reactor, config_path: Path) -> RunningClient:
    """Start a client from its INI file; wait on C{.events.next("open")}."""
    config = load_client_config(config_path)
    factory = TunnelClientFactory(reactor, config)
    events = TunnelEvents(factory, reactor)
    service = make_client_service(reactor, config, factory)
    service.startService()
    return RunningClient(config, service, factory, events, reactor)


def tree_digest(root: Path) -> dict[str, tuple]:
    """
    Every entry below C{root}: relative path -> (kind, content digest or link
    target, mode bits), for comparing a copied tree with its source.
    """
    import hashlib
    import os
    import stat

    result = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir",)
            else:
                digest = hashlib.sha256()
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                result[rel] = ("file", st.st_size, digest.hexdigest())
    return result


def make_sample_tree(root: Path, large_file_bytes: int = 0, seed: int = 1) -> Path:
    """
    A tree with nested folders, empty files, odd names (spaces, UTF-8,
    quotes, a leading dash) and optionally one large file of random bytes.
    """
    import random

    root = Path(root)
    rng = random.Random(seed)
    (root / "a" / "b" / "c").mkdir(parents=True, exist_ok=True)
    (root / "empty dir").mkdir(exist_ok=True)
    files = {
        "readme.txt": b"hello through the tunnel\n",
        "a/notes.md": b"# notes\n" * 100,
        "a/b/c/deep.bin": rng.randbytes(70_000),
        "a/b/empty": b"",
        "name with spaces.txt": b"spaces\n",
        "Grüße – ünïcödé ✓.txt": "UTF-8 name\n".encode(),
        "quote's \"double\".txt": b"quotes\n",
        "-leading-dash": b"dash\n",
        "empty": b"",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    if large_file_bytes:
        with (root / "large.bin").open("wb") as f:
            left = large_file_bytes
            while left:
                n = min(left, 1 << 22)
                f.write(rng.randbytes(n))
                left -= n
    return root
