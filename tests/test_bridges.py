"""
The two local ends of a channel, without sockets or processes: the rsync
ProcessProtocol (client) and BackupPC's TCP connection (server).
"""


from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.logger import globalLogPublisher, formatEvent

from bpctunnel.wire import framing
from bpctunnel.wire.mux import Multiplexer
from bpctunnel.client.rsync_daemon import (
    KILL_GRACE,
    RsyncLauncher,
    RsyncProcessProtocol,
    RsyncSocketProtocol,
    rsync_argv,
    user_log_file,
)
from bpctunnel.client.rsync_log import MAX_LOG_LINE, MAX_NAMES, TransferProblems, parse_log_line
from bpctunnel.server.backuppc_port import LocalConnectionProtocol
from tests.helpers import temp_dir
from tests.test_mux import Wire


class FakeProcessTransport:
    """What RsyncProcessProtocol uses of a process transport."""

    pid = 4242

    def __init__(self):
        self.signals = []

    def signalProcess(self, signal):
        self.signals.append(signal)


class HalfCloseTransport(StringTransport):
    """A StringTransport that records half-close and abort."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


class FakeSocketTransport(HalfCloseTransport):
    """Our end of the socket pair whose other end is rsync's stdin."""

    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False


def collect_logs(testcase):
    lines = []
    observer = lambda event: lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


class RsyncBridgeTests(SynchronousTestCase):
    """RsyncProcessProtocol carries one channel to one rsync daemon."""

    def setUp(self):
        self.wire = Wire()
        self.clock = MemoryReactorClock()
        self.processes = []

        def accept(channel):
            protocol = RsyncProcessProtocol(channel, self.clock, "laptop1")
            process = FakeProcessTransport()
            protocol.makeConnection(process)
            socket = FakeSocketTransport()
            end = RsyncSocketProtocol(protocol)
            end.makeConnection(socket)
            channel.accept()
            self.processes.append((protocol, process, socket, end))

        self.wire.client._accept_channel = accept
        self.server_channel = self.wire.server.open_channel()
        from tests.test_mux import FakeLocalEnd

        self.backuppc = FakeLocalEnd()
        self.server_channel.attach(self.backuppc)
        self.wire.pump()
        self.rsync, self.process, self.socket, self.end = self.processes[0]

    def test_argv(self):
        """The only command ever run: rsync as an inetd-style daemon for one connection."""
        self.assertEqual(rsync_argv("/usr/bin/rsync", "/etc/r.conf"),
                         ["/usr/bin/rsync", "--daemon", "--config=/etc/r.conf"])

    def test_bytes_both_ways_and_eof(self):
        """The socket's bytes go to BackupPC, BackupPC's to the socket; EOF half-closes it."""
        self.assertIs(self.socket.producer, self.rsync.channel)
        self.server_channel.local_data(b"@RSYNCD: 31.0\n")
        self.server_channel.local_eof()
        self.end.dataReceived(b"@RSYNCD: 31.0\n")
        self.wire.pump()
        self.assertEqual(self.socket.value(), b"@RSYNCD: 31.0\n")
        self.assertTrue(self.socket.write_closed)
        self.assertFalse(self.socket.disconnecting)
        self.assertEqual(bytes(self.backuppc.received), b"@RSYNCD: 31.0\n")

    def test_module_logged(self):
        """The client logs one line per carried connection with module, bytes and duration."""
        lines = collect_logs(self)
        self.server_channel.local_data(b"@RSYNCD: 31.0\nMy Music\n")
        self.wire.pump()
        self.clock.advance(2.5)
        self.end.dataReceived(b"@RSYNCD: OK\n")
        self.rsync.processEnded(Failure(ProcessDone(0)))
        self.wire.pump()
        self.assertIn("rsync[4242] for channel 2 exited with status 0: module My Music, 12 bytes "
                      "sent, 23 bytes received in 2.5 s", lines)

    def test_stderr_logged_by_line(self):
        """rsync's stderr goes to the log one line at a time."""
        lines = collect_logs(self)
        self.rsync.childDataReceived(2, b"rsync: chdir failed\nsecond ")
        self.rsync.childDataReceived(2, b"line\n")
        self.assertEqual([l for l in lines if "rsync[4242]" in l],
                         ["rsync[4242] on channel 2: rsync: chdir failed",
                          "rsync[4242] on channel 2: second line"])

    def test_exit_with_status_is_clean_close(self):
        """rsync reports errors in its own protocol: exit 23 still ends the stream cleanly."""
        self.end.dataReceived(b"tail")
        self.end.readConnectionLost()
        self.rsync.processEnded(Failure(ProcessTerminated(exitCode=23)))
        self.wire.pump()
        self.assertEqual(bytes(self.backuppc.received), b"tail")
        self.assertTrue(self.backuppc.eof)
        self.assertTrue(self.backuppc.closed)
        self.assertIsNone(self.backuppc.aborted)

    def test_close_waits_for_the_socket(self):
        """
        rsync may exit before its last bytes are read from the socket: the
        channel closes only once the socket has ended too, so nothing is lost.
        """
        self.rsync.processEnded(Failure(ProcessDone(0)))
        self.wire.pump()
        self.assertFalse(self.backuppc.closed)
        self.end.dataReceived(b"last words")
        self.end.readConnectionLost()
        self.wire.pump()
        self.assertEqual(bytes(self.backuppc.received), b"last words")
        self.assertTrue(self.backuppc.closed)
        self.assertIsNone(self.backuppc.aborted)
        self.assertTrue(self.socket.disconnecting)

    def test_eof_after_the_socket_is_gone(self):
        """BackupPC's EOF arriving after rsync's socket closed touches no closed socket."""
        self.end.connectionLost(Failure(ConnectionDone()))
        self.rsync.write_eof()
        self.rsync.close()
        self.assertFalse(self.socket.write_closed)
        self.assertFalse(self.socket.disconnecting)

    def test_killed_by_signal_aborts(self):
        """rsync dying on a signal fails the channel: BackupPC's socket is aborted."""
        self.rsync.processEnded(Failure(ProcessTerminated(signal=11)))
        self.end.connectionLost(Failure(ConnectionDone()))
        self.wire.pump()
        self.assertEqual(self.backuppc.aborted, "rsync was killed by signal 11")

    def test_backuppc_gone_kills_after_grace(self):
        """When BackupPC closes, the socket closes, and rsync is killed if it lingers."""
        self.server_channel.local_closed()
        self.wire.pump()
        self.assertTrue(self.socket.disconnecting)
        self.assertEqual(self.process.signals, [])
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.process.signals, ["KILL"])

    def test_grace_timer_cancelled_on_exit(self):
        """rsync that exits in time is not killed."""
        self.server_channel.local_closed()
        self.wire.pump()
        self.rsync.processEnded(Failure(ProcessDone(0)))
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.process.signals, [])

    def test_tunnel_loss_kills(self):
        """When the tunnel goes, rsync is killed at once and the socket aborted."""
        self.wire.client.tunnel_lost("gone")
        self.assertEqual(self.process.signals, ["KILL"])
        self.assertTrue(self.socket.aborted)

    def test_flow_control(self):
        """A full socket pauses the channel's credit; reading pauses at zero credit."""
        self.rsync.channel.pauseProducing()
        self.server_channel.local_data(b"x" * (self.wire.client.window + 10))
        self.wire.pump()
        self.assertEqual(len(self.socket.value()), self.wire.client.window)
        self.end.dataReceived(b"y" * (self.wire.server.window + 1))
        self.assertTrue(self.socket.paused)

    def test_spawn_failure_resets_channel(self):
        """A launcher that cannot start rsync resets the channel with the reason."""

        class Reactor(MemoryReactorClock):
            def spawnProcess(self, *args, **kwargs):
                raise OSError(2, "No such file or directory")

        wire = Wire()
        conf = temp_dir(self) / "rsyncd.conf"
        conf.write_text("[documents]\npath = /tmp\n")
        wire.client._accept_channel = RsyncLauncher(Reactor(), "/nope/rsync", conf)
        channel = wire.server.open_channel()
        from tests.test_mux import FakeLocalEnd

        local = FakeLocalEnd()
        channel.attach(local)
        wire.pump()
        self.assertIn("could not start /nope/rsync", local.aborted)

    def test_launcher_gives_rsync_a_log_pipe(self):
        """Each daemon logs to /dev/fd/3, a pipe of ours (childFD 3: "r")."""
        spawned = []

        class Reactor(MemoryReactorClock):
            def spawnProcess(self, protocol, executable, args, env=None, childFDs=None, **kw):
                spawned.append((args, childFDs))
                raise OSError(2, "No such file or directory")  # enough: we saw the call

        conf = temp_dir(self) / "rsyncd.conf"
        conf.write_text("log file = /var/log/mine.log\n[documents]\npath = /tmp\n")
        from tests.test_mux import FakeLocalEnd

        wire = Wire()
        wire.client._accept_channel = RsyncLauncher(Reactor(), "/usr/bin/rsync", conf, euid=1000)
        wire.server.open_channel().attach(FakeLocalEnd())
        wire.pump()
        (args, child_fds), = spawned
        self.assertEqual(args[:3], ["/usr/bin/rsync", "--daemon", f"--config={conf}"])
        self.assertEqual(args[-1], "--dparam=logfile=/dev/fd/3")
        self.assertEqual(child_fds[3], "r")

    def test_transfer_report_at_exit(self):
        """
        Files the daemon's log says it could not read (or that vanished) are
        on the channel's summary line and go to the server as one
        transfer-report, before the channel's CLOSE.
        """
        lines = collect_logs(self)
        controls = []
        self.wire.server._on_control = controls.append
        self.server_channel.local_data(b"@RSYNCD: 31.0\ndocuments\n")
        self.wire.pump()
        prefix = b"2026/11/30 17:26:18 [5750] "
        self.rsync.childDataReceived(3, prefix + b"rsync on documents/ from UNKNOWN\n" + prefix
                                     + b'rsync: [sender] send_files failed to open "secret.txt" '
                                       b"(in documents): Permiss")
        self.rsync.childDataReceived(3, b"ion denied (13)\n" + prefix + b'rsync: [sender] opendir '
                                        b'"locked" (in documents) failed: Permission denied (13)\n'
                                     + prefix + b'file has vanished: "tmp/x" (in documents)')
        self.assertEqual(controls, [])
        self.end.readConnectionLost()
        self.rsync.processEnded(Failure(ProcessTerminated(exitCode=23)))
        self.wire.pump()
        self.assertEqual(controls, [{"type": "transfer-report", "module": "documents",
                                     "unreadable": ["secret.txt", "locked/"],
                                     "unreadable_count": 2, "vanished": ["tmp/x"],
                                     "vanished_count": 1}])
        summary = [line for line in lines if "exited with status 23" in line]
        self.assertEqual(len(summary), 1, lines)
        self.assertTrue(summary[0].endswith("; 2 files unreadable: secret.txt, locked/; "
                                            "1 file vanished: tmp/x"), summary)

    def test_user_log_file_still_written(self):
        """rsyncd.conf's own global log file gets every line the daemon logs."""
        folder = temp_dir(self)
        conf, log = folder / "rsyncd.conf", folder / "rsyncd.log"
        conf.write_text(f"log file = {log}\n[documents]\npath = /tmp\n")
        self.assertEqual(user_log_file(conf), log)
        self.rsync.log_file = log
        self.rsync.childDataReceived(3, b"first\nsecond")
        self.rsync.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(log.read_text(), "first\nsecond\n")

    def test_no_report_without_problems(self):
        """A clean transfer sends no transfer-report."""
        controls = []
        self.wire.server._on_control = controls.append
        self.rsync.childDataReceived(3, b"2026/11/30 17:26:18 [1] sent 5 bytes  received 3 bytes\n")
        self.end.readConnectionLost()
        self.rsync.processEnded(Failure(ProcessDone(0)))
        self.wire.pump()
        self.assertEqual(controls, [])

    def test_log_memory_is_bounded(self):
        """A line without end is cut at MAX_LOG_LINE; names kept stop at MAX_NAMES."""
        self.rsync.childDataReceived(3, b"x" * (MAX_LOG_LINE + 10))
        self.assertEqual(self.rsync._log_buffer, b"")
        for i in range(MAX_NAMES + 5):
            self.rsync.childDataReceived(
                3, f'send_files failed to open "f{i}" (in documents): Permission denied\n'.encode())
        report = self.rsync.problems.report("documents")
        self.assertEqual(report["unreadable_count"], MAX_NAMES + 5)
        self.assertEqual(report["unreadable"], [f"f{i}" for i in range(MAX_NAMES)])


class DaemonLogParserTests(SynchronousTestCase):
    """parse_log_line: rsync daemon log lines (3.2.x and 3.5.0 wording) about files."""

    def test_problem_lines(self):
        prefix = "2026/11/30 17:26:18 [5750] "
        self.assertEqual(
            [parse_log_line(prefix + line) for line in [
                'rsync: [sender] send_files failed to open "secret.txt" (in documents): '
                'Permission denied (13)',
                'rsync: [sender] send_files failed to open "a (b)/c.txt" (in my docs): '
                'Permission denied (13)',
                'rsync: send_files failed to open "old.txt" (in documents): Permission denied (13)',
                'rsync: [sender] opendir "private" (in documents) failed: Permission denied (13)',
                'rsync: [sender] link_stat "gone" (in documents) failed: No such file or '
                'directory (2)',
                'rsync: [sender] read errors mapping "disk.img" (in documents): Input/output '
                'error (5)',
                'file has vanished: "tmp/lock" (in documents)',
                # A daemon in a chroot names files from its root.
                'rsync: [sender] send_files failed to open "/sub/x.txt" (in documents): '
                'Permission denied (13)',
            ]],
            [("unreadable", "documents", "secret.txt"),
             ("unreadable", "my docs", "a (b)/c.txt"),
             ("unreadable", "documents", "old.txt"),
             ("unreadable", "documents", "private/"),
             ("unreadable", "documents", "gone"),
             ("unreadable", "documents", "disk.img"),
             ("vanished", "documents", "tmp/lock"),
             ("unreadable", "documents", "sub/x.txt")])

    def test_other_lines(self):
        for line in ["2026/11/30 17:26:18 [5750] connect from localhost (127.0.0.1)",
                     "2026/11/30 17:26:18 [5750] rsync on documents/ from localhost (127.0.0.1)",
                     "2026/11/30 17:26:18 [5750] sent 569 bytes  received 105 bytes  total size 13",
                     '2026/11/30 17:26:18 [5750] rsync: [sender] write error: Broken pipe (32)',
                     ""]:
            self.assertIsNone(parse_log_line(line), line)

    def test_long_names_cut(self):
        problems = TransferProblems()
        self.assertTrue(problems.add_line(
            'send_files failed to open "' + "n" * 1000 + '" (in m): Permission denied'))
        self.assertEqual(len(problems.names["unreadable"][0]), 256)
        self.assertTrue(problems.names["unreadable"][0].endswith("..."))


class LocalConnectionTests(SynchronousTestCase):
    """BackupPC's TCP connection on the server, on a StringTransport."""

    def setUp(self):
        self.sent = []
        tunnel = type("Tunnel", (), {})()
        tunnel.host = "laptop1"
        self.modules = []
        tunnel.module_requested = self.modules.append
        tunnel.probe_if_silent = lambda: succeed(True)  # a tunnel that is carrying data
        tunnel.mux = Multiplexer(self.sent.append, is_server=True, window=100)
        self.mux = tunnel.mux
        self.protocol = LocalConnectionProtocol(tunnel)
        self.transport = HalfCloseTransport()
        self.protocol.makeConnection(self.transport)
        self.channel = self.protocol.channel

    def messages(self):
        return [framing.decode(m) for m in self.sent]

    def test_paused_until_accepted(self):
        """BackupPC is not read from until the client's rsync is running."""
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.messages()[0].channel_id, 2)
        self.assertEqual(self.messages()[0].metadata["peer"].split(":")[0], "192.168.1.1")
        self.mux.message_received(framing.encode(framing.Accept(2, 100)))
        self.assertEqual(self.transport.producerState, "producing")

    def test_half_close_and_close(self):
        """BackupPC's half-close becomes EOF; the peer's EOF half-closes our side."""
        self.mux.message_received(framing.encode(framing.Accept(2, 100)))
        self.protocol.dataReceived(b"hello")
        self.protocol.readConnectionLost()
        self.assertEqual(self.messages()[1:], [framing.Data(2, b"hello"), framing.Eof(2)])
        self.mux.message_received(framing.encode(framing.Data(2, b"reply")))
        self.mux.message_received(framing.encode(framing.Eof(2)))
        self.assertEqual(self.transport.value(), b"reply")
        self.assertTrue(self.transport.write_closed)
        self.assertFalse(self.transport.disconnecting)

    def test_peer_failure_aborts(self):
        """A failed channel aborts BackupPC's connection instead of closing it."""
        self.assertFalse(self.transport.aborted)
        self.mux.message_received(framing.encode(framing.Close(2, framing.CLOSE_ERROR, "boom")))
        self.assertTrue(self.transport.aborted)

    def test_reset_by_backuppc_is_error(self):
        """A connection reset by BackupPC fails the channel; a clean close does not."""
        self.mux.message_received(framing.encode(framing.Accept(2, 100)))
        self.protocol.connectionLost(Failure(ConnectionLost("reset")))
        close = self.messages()[-1]
        self.assertEqual((close.code, close.reason.startswith("BackupPC's connection failed")),
                         (framing.CLOSE_ERROR, True))

    def test_clean_close(self):
        """BackupPC closing normally ends the channel with EOF and a clean CLOSE."""
        self.mux.message_received(framing.encode(framing.Accept(2, 100)))
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.messages()[-2:], [framing.Eof(2), framing.Close(2)])

    def test_module_reported_once(self):
        """The module BackupPC names in its greeting is reported to the tunnel once."""
        self.mux.message_received(framing.encode(framing.Accept(2, 100)))
        self.protocol.dataReceived(b"@RSYNCD: 31.0\ndocu")
        self.assertEqual(self.modules, [])
        self.protocol.dataReceived(b"ments\n--server\n")
        self.protocol.dataReceived(b"more\n")
        self.assertEqual((self.modules, self.protocol.module), (["documents"], "documents"))
