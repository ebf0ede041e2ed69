"""
C{bpctunnel demo}: the whole product in one command, on one machine.

A throwaway CA, a BackupPC-style config folder, a tunnel server and a client
(in this process, over real TLS on 127.0.0.1), then a real C{rsync} pull of
a module through the tunnel, checked file by file; then everything is
cleaned up.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from bpctunnel.client.config import find_rsync
from bpctunnel.client.rsync_auth import RsyncAuth
from bpctunnel.errors import BpcTunnelError
from bpctunnel.testing.sandbox import (
    Sandbox,
    free_port,
    make_sample_tree,
    start_client,
    start_server,
    tree_digest,
)

HOST = "demo-laptop"
TIMEOUT = 60


class DemoFailed(BpcTunnelError):
    """A step of the demo did not do what it should."""


def rsync_pull(reactor, rsync: str, port: int, module: str, dest: Path,
               auth: RsyncAuth | None = None):
    """
    Pull C{module} from the rsync daemon behind 127.0.0.1:C{port} into
    C{dest}, as BackupPC does: with the host's secret, if it has one.
    """
    env = {"PATH": "/usr/bin:/bin"}
    user = ""
    if auth is not None:
        env["RSYNC_PASSWORD"] = auth.secret
        user = f"{auth.user}@"
    args = ["-a", f"rsync://{user}127.0.0.1:{port}/{module}/", str(dest) + "/"]
    return getProcessOutputAndValue(rsync, args, env=env, reactor=reactor)


async def run_demo(reactor, out=sys.stdout, keep: bool = False) -> int:
    """Run the demo, printing each step; returns the exit status."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        rsync = find_rsync("rsync")
    except BpcTunnelError as e:
        say(f"bpctunnel demo needs rsync: {e}")
        return 2
    root = Path(tempfile.mkdtemp(prefix="bpctunnel-demo-"))
    server = client = None
    try:
        say(f"1. Throwaway CA, server certificate and BackupPC config in {root}")
        sandbox = Sandbox.create(root)
        files = sandbox.issue_client(HOST)
        port = free_port()
        sandbox.register(HOST, port, files.fingerprint)
        say(f"   {HOST}: certificate CN={HOST}, TunnelCert:sha256:{files.fingerprint[:16]}..., "
            f"RsyncdClientPort {port}")

        source = make_sample_tree(root / "laptop-files", large_file_bytes=5 * 1024 * 1024)
        say(f"2. The laptop's files: {len(tree_digest(source))} entries in {source}")

        server = await start_server(reactor, sandbox)
        say(f"3. Server listening on {server.url} (mutual TLS, TLS 1.3)")

        config = sandbox.write_client_config(files, server.url, {"documents": source}, rsync)
        client = start_client(reactor, config)
        await client.events.next("open").addTimeout(TIMEOUT, reactor)
        say(f"4. Client connected; the server now listens on 127.0.0.1:{port} for BackupPC")

        dest = root / "backuppc-copy"
        dest.mkdir()
        say(f"5. rsync -a {sandbox.rsync_url(port, 'documents/')} {dest}/ (with {HOST}'s "
            f"rsync secret, as BackupPC sends it)")
        stdout, stderr, code = await rsync_pull(reactor, rsync, port, "documents", dest,
                                                sandbox.auth_for(port)).addTimeout(
            TIMEOUT, reactor)
        if code != 0:
            raise DemoFailed(f"rsync exited with status {code}: {stderr.decode(errors='replace')}")

        want, got = await deferToThread(tree_digest, source), await deferToThread(tree_digest, dest)
        if want != got:
            missing = sorted(set(want) - set(got))
            differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            raise DemoFailed(f"the copy differs: missing {missing}, different {differ}")
        size = sum(v[1] for v in want.values() if v[0] == "file")
        say(f"6. All {len(want)} entries ({size:,} bytes) arrived byte-identical")

        down = Deferred()
        server.factory.observers.append(lambda event, tunnel: event == "closed" and down.callback(None))
        await client.stop()
        await down.addTimeout(TIMEOUT, reactor)
        client = None
        try:
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        except ConnectionRefusedError:
            say(f"7. Client stopped; the server closed 127.0.0.1:{port} again")
        else:
            raise DemoFailed(f"127.0.0.1:{port} still accepts connections after the client left")
        say("Demo succeeded.")
        return 0
    except BpcTunnelError as e:
        say(f"Demo failed: {e}")
        return 1
    finally:
        if client is not None:
            await client.stop()
        if server is not None:
            await server.stop()
        if keep:
            say(f"Kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _start_logging(verbose: bool) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info if verbose else LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(reactor, keep: bool = False, verbose: bool = False):
    """Entry point for C{task.react}: exits with the demo's status."""
    _start_logging(verbose)

    def exit_with(code: int) -> None:
        if code:
            raise SystemExit(code)

    return ensureDeferred(run_demo(reactor, keep=keep)).addCallback(exit_with)
