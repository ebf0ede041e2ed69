"""
Tests for L{bpctunnel.backuppc.hosts} and the Perl config reader it re-exports from
L{bpctunnel.backuppc.perlconf}: BackupPC's real files, hosts-file rules, Perl value
shapes, malformed input, fingerprints and the order of authorization checks.
"""

import re
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.backuppc import hosts as backuppc
from bpctunnel.backuppc.layout import config_layout
from bpctunnel.backuppc.hosts import (
    HostEntry, PerlExpression, TUNNEL_CERT_RE, AuthorizedHost, authorize,
    find_fingerprints, find_host_config, normalize_fingerprint, parse_hosts,
    parse_perl_config, read_hosts, read_perl_config, tunnel_settings,
)
from bpctunnel.errors import (
    AlreadyConnected, BpcTunnelError, ConfigError, FingerprintMismatch,
    HostConfigInvalid, PortUnavailable, Refused, UnknownHost,
)

DATA = Path(__file__).parent / "data" / "backuppc"
FP1 = "3f1c5be8a9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b"
FP2_HAND = "1" * 64
FP2_WEB = "9b2e7d4c1a0f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5"
OTHER_FP = "ab" * 32


def colons(fp):
    """Write a fingerprint as colon-separated byte pairs."""
    return ":".join(fp[i:i + 2] for i in range(0, 64, 2))


class TempDirMixin:
    """A fresh temporary directory per test, removed afterwards."""

    def tempdir(self):
        path = Path(tempfile.mkdtemp(prefix="bpctunnel-test-"))
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        return path


# --- the real BackupPC files -----------------------------------------------

class RealHostsFileTests(SynchronousTestCase):
    """The hosts file exactly as Debian's backuppc package installs it."""

    def test_only_localhost(self):
        """The header (with its trailing comment) and commented examples are
        not hosts; localhost is."""
        hosts = read_hosts(DATA / "hosts")
        self.assertEqual(hosts, {"localhost": HostEntry("localhost", "0", "backuppc", ())})


class RealConfigTests(SynchronousTestCase):
    """BackupPC's own config.pl, with every value shape BackupPC uses."""

    @classmethod
    def setUpClass(cls):
        cls.config = read_perl_config(DATA / "config.pl")

    def test_source(self):
        """The config remembers the path it was read from."""
        self.assertEqual(self.config.source, str(DATA / "config.pl"))

    def test_every_setting_read(self):
        """All 161 $Conf assignments are found, plus chomp($Conf{ServerHost})."""
        self.assertEqual(len(self.config.assignments), 162)
        self.assertEqual(len({a.name for a in self.config.assignments}), 161)

    def test_scalars(self):
        """Numbers keep their source text; undef is None; strings are decoded."""
        c = self.config
        self.assertEqual(c.get("RsyncdClientPort"), "873")
        self.assertIsNone(c.get("ClientComment"))
        self.assertIn("ClientComment", c)
        self.assertEqual(c.get("ServerPort"), "-1")
        self.assertEqual(c.get("UmaskMode"), "027")
        self.assertEqual(c.get("FullPeriod"), "6.97")
        self.assertEqual(c.get("SmbShareName"), "C$")
        self.assertEqual(c.get("DfCmd"), "$dfPath $topDir")
        self.assertEqual(c.get("RsyncBackupPCPath"), "/usr/libexec/backuppc-rsync/rsync_bpc")
        self.assertEqual(c.get("CgiHeaders"),
                         '<meta http-equiv="pragma" content="no-cache">')

    def test_arrays(self):
        """Arrays on one line and over many lines, empty ones too."""
        c = self.config
        self.assertEqual(c.get("WakeupSchedule"), [str(n) for n in range(1, 24)])
        self.assertEqual(c.get("RsyncSshArgs"), ["-e", "$sshPath -l root"])
        self.assertEqual(c.get("DHCPAddressRanges"), [])
        args = c.get("RsyncArgs")
        self.assertEqual(len(args), 17)
        self.assertEqual(args[0], "--super")
        self.assertEqual(args[-2:], ["--log-format=log: %o %i %B %8U,%8G %9l %f%L", "--stats"])

    def test_hashes(self):
        """Hashes with bare-word keys, nested in arrays, with comments inside."""
        c = self.config
        self.assertEqual(c.get("BlackoutPeriods"), [
            {"hourBegin": "7.0", "hourEnd": "19.5", "weekDays": ["1", "2", "3", "4", "5"]}])
        self.assertEqual(c.get("CgiNavBarLinks")[0],
                         {"link": "?action=view&type=docs", "lname": "Documentation"})
        self.assertEqual(c.get("CgiNavBarLinks")[2]["name"], "Homepage")
        colors = c.get("CgiStatusHilightColor")
        self.assertEqual(colors["Reason_backup_failed"], "#ffcccc")
        self.assertEqual(len(colors), 7)
        self.assertEqual(c.get("CgiUserConfigEdit")["RsyncdClientPort"], "1")
        self.assertEqual(c.get("ClientShareName2Path"), {})

    def test_expressions(self):
        """Computed values are kept as their source text, not evaluated."""
        c = self.config
        self.assertEqual(c.get("CgiURL"), PerlExpression(
            "'http://'.$Conf{ServerHost}.'/backuppc/index.cgi'", 2104))
        self.assertEqual(c.get("SshPath"), PerlExpression(
            "'/usr/bin/ssh' if -x '/usr/bin/ssh'", 1585))
        self.assertEqual(c.get("SmbClientRestoreCmd"),
                         "$smbClientPath \\\\$host\\$shareName $I_option -U $userName -E "
                         "-d 5 -c tarmode\\ full -mSMB3 -Tx -")
        full = c.get("SmbClientFullCmd")
        self.assertIsInstance(full, PerlExpression)
        self.assertTrue(full.text.startswith("'$smbClientPath"))
        self.assertEqual(full.line, 1012)

    def test_heredoc(self):
        """A heredoc value is an expression; its span covers the body."""
        [a] = self.config.assignments_of("EMailHeaders")
        self.assertIsInstance(a.value, PerlExpression)
        self.assertIn("MIME-Version: 1.0", a.value.text)
        self.assertEqual(self.config.text[a.start:a.end],
                         '$Conf{EMailHeaders} = <<EOF;\nMIME-Version: 1.0\n'
                         'Content-Type: text/plain; charset="utf-8"\nEOF')

    def test_chomp_counts_as_assignment(self):
        """chomp($Conf{ServerHost}) changes ServerHost, so it is the last value."""
        first, second = self.config.assignments_of("ServerHost")
        self.assertEqual(first.value, PerlExpression("`hostname`", 46))
        self.assertEqual(second.value, PerlExpression("chomp($Conf{ServerHost})", 47))
        self.assertEqual(second.line, 47)

    def test_spans(self):
        """Every span is a whole statement ending in ;, in file order."""
        text = self.config.text
        ends = 0
        for a in self.config.assignments:
            stmt = text[a.start:a.end]
            self.assertTrue(stmt.startswith(("$Conf{", "chomp(")), stmt)
            self.assertTrue(stmt.endswith(";") or a.name == "EMailHeaders", stmt)
            self.assertEqual(text.count("\n", 0, a.start) + 1, a.line)
            self.assertGreaterEqual(a.start, ends)
            ends = a.end


class RealHostConfigTests(SynchronousTestCase):
    """Host configs as BackupPC's web editor and an admin write them."""

    def test_laptop1(self):
        """The web editor's file: escaped quote, quoted numbers, sorted keys."""
        c = read_perl_config(DATA / "laptop1.pl")
        self.assertEqual(c.get("ClientComment"),
                         f"Alice's laptop TunnelCert:sha256:{FP1}")
        self.assertEqual(c.get("ClientNameAlias"), ["127.0.0.1"])
        self.assertEqual(c.get("RsyncShareName"), ["documents", "photos", "My Music"])
        self.assertEqual(c.get("RsyncdClientPort"), "64701")
        self.assertEqual(c.get("RsyncdPasswd"), "unused")
        self.assertEqual(c.get("RsyncdUserName"), "")
        self.assertEqual(c.get("XferMethod"), "rsyncd")
        self.assertEqual([a.name for a in c.assignments], [
            "ClientComment", "ClientNameAlias", "RsyncShareName", "RsyncdClientPort",
            "RsyncdPasswd", "RsyncdUserName", "XferMethod"])
        [port] = c.assignments_of("RsyncdClientPort")
        self.assertEqual(c.text[port.start:port.end], "$Conf{RsyncdClientPort} = '64701';")
        self.assertEqual(port.line, 10)
        shares = c.assignments_of("RsyncShareName")[0]
        self.assertEqual(c.text[shares.start:shares.end],
                         "$Conf{RsyncShareName} = [\n  'documents',\n  'photos',\n"
                         "  'My Music'\n];")

    def test_handwritten(self):
        """Double quotes, trailing comments, a commented-out TunnelCert that is
        not an assignment, comments in an array, and the last port wins."""
        c = read_perl_config(DATA / "laptop2.handwritten.pl")
        self.assertEqual(c.get("XferMethod"), "rsyncd")
        self.assertEqual(c.get("ClientNameAlias"), ["127.0.0.1"])
        [comment] = c.assignments_of("ClientComment")
        self.assertEqual(comment.value, f"TunnelCert:sha256:{FP2_HAND}")
        self.assertEqual(comment.line, 9)
        self.assertEqual([a.value for a in c.assignments_of("RsyncdClientPort")],
                         ["64799", "64702"])
        self.assertEqual(c.get("RsyncdClientPort"), "64702")
        self.assertEqual(c.get("RsyncShareName"), ["home", "etc"])
        self.assertEqual(find_fingerprints(c.get("ClientComment")), {FP2_HAND})

    def test_after_web_edit(self):
        """The same host after the web editor saved a new fingerprint and port."""
        c = read_perl_config(DATA / "laptop2.after-web-edit.pl")
        self.assertEqual(c.get("ClientComment"), f"TunnelCert:sha256:{FP2_WEB}")
        self.assertEqual([a.value for a in c.assignments_of("RsyncdClientPort")],
                         ["64702", "64702"])
        self.assertEqual(c.get("RsyncShareName"), ["home", "etc"])
        self.assertEqual(c.get("ClientNameAlias"), ["127.0.0.1"])


class RealFilesAuthorizeTests(TempDirMixin, SynchronousTestCase):
    """authorize() on a conf dir built from the real files."""

    def setUp(self):
        self.conf = self.tempdir()
        hosts = (DATA / "hosts").read_text()
        (self.conf / "hosts").write_text(hosts + "laptop1 0 alice\nlaptop2 0 bob\n")
        shutil.copy(DATA / "config.pl", self.conf / "config.pl")
        shutil.copy(DATA / "laptop1.pl", self.conf / "laptop1.pl")
        shutil.copy(DATA / "laptop2.handwritten.pl", self.conf / "laptop2.pl")

    def test_laptop1(self):
        """Alice's certificate opens her tunnel on port 64701."""
        self.assertEqual(authorize(self.conf, "laptop1", FP1), AuthorizedHost(
            "laptop1", self.conf / "laptop1.pl", frozenset({FP1}), 64701))

    def test_laptop2_last_port(self):
        """Bob's tunnel uses the port of the last assignment."""
        self.assertEqual(authorize(self.conf, "laptop2", FP2_HAND).port, 64702)

    def test_commented_out_fingerprint(self):
        """The old fingerprint in a comment authorizes nobody."""
        e = self.assertRaises(FingerprintMismatch, authorize, self.conf, "laptop2", "0" * 64)
        self.assertEqual(str(e), "fingerprint mismatch for laptop2: the certificate "
                                 "does not match TunnelCert in laptop2.pl")

    def test_main_config_is_not_a_host_config(self):
        """localhost is listed but has no <host>.pl: config.pl does not count."""
        e = self.assertRaises(FingerprintMismatch, authorize, self.conf, "localhost", FP1)
        self.assertTrue(str(e).startswith("fingerprint mismatch for localhost: no host config "
                                          "for localhost: BackupPC reads "), str(e))
        self.assertTrue(str(e).endswith(f"{self.conf}/localhost.pl"), str(e))


# --- hosts file rules ----------------------------------------------------------

HEADER = "host dhcp user moreUsers\n"


class ParseHostsTests(SynchronousTestCase):
    """parse_hosts() follows BackupPC's HostInfoRead line by line."""

    def test_crlf(self):
        """CR LF line ends are removed."""
        hosts = parse_hosts("host dhcp user moreUsers\r\nlaptop1 0 alice\r\n")
        self.assertEqual(hosts, {"laptop1": HostEntry("laptop1", "0", "alice", ())})

    def test_inline_comment(self):
        """Everything from # is removed, even mid-line."""
        hosts = parse_hosts(HEADER + "laptop1 1 alice # bob,carol\n")
        self.assertEqual(hosts["laptop1"], HostEntry("laptop1", "1", "alice", ()))

    def test_escaped_space(self):
        """A backslash-escaped space belongs to the name and is unescaped."""
        hosts = parse_hosts(HEADER + "craigs\\ pc 0 craig\n")
        self.assertEqual(hosts, {"craigs pc": HostEntry("craigs pc", "0", "craig", ())})

    def test_upper_case(self):
        """Hosts are keyed lower-case; the entry keeps the spelling."""
        hosts = parse_hosts(HEADER + "LapTop1 0 alice\n")
        self.assertEqual(list(hosts), ["laptop1"])
        self.assertEqual(hosts["laptop1"].name, "LapTop1")

    def test_non_ascii_names_skipped(self):
        """BackupPC matches names on bytes, where \\w is ASCII: such lines are
        skipped; lower-casing (Perl's lc on bytes) changes only A-Z."""
        hosts = parse_hosts(HEADER + "PC-\u00c4RGER 0 x\n\u00c4pc 0 x\nPC\\ \u00c4 0 x\n")
        self.assertEqual(list(hosts), ["pc \u00c4"])
        self.assertEqual(backuppc.ascii_lower("\u00c4Bc"), "\u00c4bc")

    def test_more_users(self):
        """moreUsers is a comma-separated list."""
        hosts = parse_hosts(HEADER + "laptop1 0 alice bob,carol,\n")
        self.assertEqual(hosts["laptop1"].more_users, ("bob", "carol"))

    def test_extra_columns(self):
        """Fields beyond the header are dropped; missing ones are empty."""
        hosts = parse_hosts(HEADER + "a 0 alice bob extra more\nb 1\n")
        self.assertEqual(hosts["a"], HostEntry("a", "0", "alice", ("bob",)))
        self.assertEqual(hosts["b"], HostEntry("b", "1", "", ()))

    def test_header_extra_column(self):
        """A header may name more columns than BackupPC's four."""
        hosts = parse_hosts("host dhcp user moreUsers notes\na 0 alice bob n\n")
        self.assertEqual(hosts["a"], HostEntry("a", "0", "alice", ("bob",)))

    def test_skipped_lines(self):
        """Lines with only a name, indented lines and lines not starting with
        a host-name character are skipped, as BackupPC skips them."""
        hosts = parse_hosts(HEADER + "lonely\n  indented 0 x\n*star 0 x\n\n\t\nok 0 x\n")
        self.assertEqual(list(hosts), ["ok"])

    def test_duplicate_last_wins(self):
        """A later line for the same host replaces the earlier one."""
        hosts = parse_hosts(HEADER + "a 0 alice bob\nA 1 carol\n")
        self.assertEqual(hosts, {"a": HostEntry("A", "1", "carol", ())})

    def test_first_line_is_header(self):
        """The first non-comment line is the header, whatever it holds."""
        e = self.assertRaises(ConfigError, parse_hosts, "laptop1 0 alice\n", "/etc/hosts.x")
        self.assertEqual(str(e), "/etc/hosts.x, line 1: the header line must start with "
                                 "the column `host`, found 'laptop1'; BackupPC's header is "
                                 "`host dhcp user moreUsers`")

    def test_no_header(self):
        """A file of comments only has no header."""
        e = self.assertRaises(ConfigError, parse_hosts, "# nothing\n\n", "/c/hosts")
        self.assertEqual(str(e), "/c/hosts has no header line; its first entry must be "
                                 "`host dhcp user moreUsers`, as in BackupPC's own hosts file")

    def test_empty(self):
        """An empty file has no header."""
        e = self.assertRaises(ConfigError, parse_hosts, "")
        self.assertTrue(str(e).startswith("hosts has no header line"))

    def test_header_only(self):
        """A header and no hosts is an empty, valid hosts file."""
        self.assertEqual(parse_hosts(HEADER), {})


class ReadFileTests(TempDirMixin, SynchronousTestCase):
    """read_hosts() and read_perl_config() explain why a file can't be read."""

    def test_missing(self):
        path = self.tempdir() / "hosts"
        e = self.assertRaises(ConfigError, read_hosts, path)
        self.assertEqual(str(e), f"hosts file {path} does not exist; check the BackupPC "
                                 f"config directory (Debian: /etc/backuppc)")

    def test_missing_config(self):
        path = self.tempdir() / "x.pl"
        e = self.assertRaises(ConfigError, read_perl_config, path)
        self.assertTrue(str(e).startswith(f"BackupPC config {path} does not exist"))

    def test_directory(self):
        path = self.tempdir()
        e = self.assertRaises(ConfigError, read_hosts, path)
        self.assertEqual(str(e), f"hosts file {path} is a directory, not a file")

    def test_permission(self):
        """Permission errors say whom to give access (simulated: tests may run as root)."""
        path = self.tempdir() / "hosts"
        path.write_text(HEADER)

        def denied(self):
            raise PermissionError(13, "Permission denied", str(self))

        self.patch(Path, "read_bytes", denied)
        for read, what in [(read_hosts, "hosts file"), (read_perl_config, "BackupPC config")]:
            e = self.assertRaises(ConfigError, read, path)
            self.assertEqual(str(e), f"cannot read {what} {path}: permission denied; make "
                                     f"it readable by the user bpctunnel runs as (for "
                                     f"example add that user to group backuppc)")

    def test_other_os_error(self):
        """Other errors name the file and the system's reason."""
        path = self.tempdir() / "file" / "hosts"
        path.parent.write_text("not a directory")
        e = self.assertRaises(ConfigError, read_hosts, path)
        self.assertEqual(str(e), f"cannot read hosts file {path}: Not a directory")

    def test_latin1_fallback(self):
        """Bytes that are not UTF-8 are read as latin-1."""
        path = self.tempdir() / "hosts"
        path.write_bytes(HEADER.encode() + b"laptop1 0 jos\xe9\n")
        self.assertEqual(read_hosts(path)["laptop1"].user, "jos\xe9")

    def test_utf8(self):
        """UTF-8 is decoded as UTF-8."""
        path = self.tempdir() / "x.pl"
        path.write_bytes("$Conf{A} = 'jos\u00e9';\n".encode())
        self.assertEqual(read_perl_config(path).get("A"), "jos\u00e9")

    def test_no_newline_translation(self):
        """CR LF is kept, so spans index the file's real text."""
        path = self.tempdir() / "x.pl"
        path.write_bytes(b"# c\r\n$Conf{A} = 1;\r\n")
        [a] = read_perl_config(path).assignments
        self.assertEqual((a.start, a.end, a.line), (5, 18, 2))


# --- Perl values ---------------------------------------------------------------

def parse(text):
    return parse_perl_config(text, "test.pl")


class PerlValueTests(SynchronousTestCase):
    """Each Perl value shape becomes the expected Python value."""

    def assertValue(self, perl, expected):
        self.assertEqual(parse(f"$Conf{{X}} = {perl};").get("X"), expected)

    def test_single_quotes(self):
        """Only \\\\ and \\' are escapes in single quotes."""
        self.assertValue(r"'a\\b\'c\n$d@e'", "a\\b'c\\n$d@e")

    def test_double_quotes(self):
        self.assertValue(r'"a\\b\"c\$d\@e\n\t\r"', 'a\\b"c$d@e\n\t\r')
        self.assertValue(r'"\x41\x{263A}\101\0\e\{"', "A\u263aA\0\x1b{")
        self.assertValue('"user at example.com 100%"', "user at example.com 100%")
        for perl in [r'"\x{110000}"', r'"\x{1234567}"', r'"\N{U+263A}"', r'"\Uup"']:
            self.assertValue(perl, PerlExpression(perl, 1))

    def test_interpolation_is_expression(self):
        """An unescaped $ or @name in double quotes would interpolate."""
        for perl in ['"a $b"', '"${b}c"', '"mail@example.com"', '"x\\u$y"', '"end$"']:
            self.assertValue(perl, PerlExpression(perl, 1))

    def test_numbers(self):
        for perl in ["64799", "-1", "0.5", "1e3", "027", "0x1F", "1_000", ".5", "+3"]:
            self.assertValue(perl, perl)

    def test_undef(self):
        self.assertValue("undef", None)

    def test_arrays(self):
        self.assertValue("[]", [])
        self.assertValue("[1, 'a', undef, [2, []],]", ["1", "a", None, ["2", []]])
        self.assertValue("[\n  'a',  # first\n  # between\n  'b' # last\n]", ["a", "b"])
        self.assertValue("[1,,2,]", ["1", "2"])

    def test_hashes(self):
        self.assertValue("{}", {})
        self.assertValue("{ a => 1, 'b c' => [2], \"d\" => { e => undef }, }",
                         {"a": "1", "b c": ["2"], "d": {"e": None}})
        self.assertValue("{ 'a', 1, 'b', 2 }", {"a": "1", "b": "2"})
        self.assertValue("{ a => 1, a => 2 }", {"a": "2"})
        self.assertValue("{ undef => 1, q => 2, s => 3, x => 4, 10 => 5 }",
                         {"undef": "1", "q": "2", "s": "3", "x": "4", "10": "5"})

    def test_hash_edge_cases_are_expressions(self):
        """Odd lists, computed keys and non-canonical number keys are not guessed."""
        for perl in ["{ 'a' }", "{ a, 1 }", "{ 1.0 => 'x' }", "{ [1] => 2 }", "{ undef, 1 }"]:
            self.assertValue(perl, PerlExpression(perl, 1))

    def test_qw(self):
        """qw() lists flatten into the surrounding array or hash."""
        self.assertValue("[qw(a b  c)]", ["a", "b", "c"])
        self.assertValue("[ qw[x y], qw{z}, qw/w/, 'v' ]", ["x", "y", "z", "w", "v"])
        self.assertValue("{ qw(a 1 b 2) }", {"a": "1", "b": "2"})
        self.assertValue("[ ('a', ('b')), () ]", ["a", "b"])

    def test_top_level_lists_are_expressions(self):
        """A list in scalar context is not an array; leave it to Perl."""
        self.assertValue("qw(a b)", PerlExpression("qw(a b)", 1))
        self.assertValue("('a', 'b')", PerlExpression("('a', 'b')", 1))

    def test_q_and_qq(self):
        self.assertValue(r"q(it's (nested) \) ok)", "it's (nested) ) ok")
        self.assertValue(r"qq{a\tb}", "a\tb")
        self.assertValue("q!x!", "x")

    def test_expressions(self):
        """Anything computed keeps its raw text and line."""
        for perl in ["$Conf{B} . \"x\"", "lc('A')", "`hostname`", "'a' . 'b'", "1 + 2",
                     "sub { 1; }", "do { 'x' }", "'x' =~ s/x/y/r", "$x", "foo"]:
            self.assertValue(perl, PerlExpression(perl, 1))

    def test_expression_line(self):
        """The expression's line is where its text starts."""
        c = parse("$Conf{X} =\n\n  $y;")
        self.assertEqual(c.get("X"), PerlExpression("$y", 3))
        self.assertEqual(c.assignments[0].line, 1)

    def test_quoted_name(self):
        c = parse("$Conf{'A'} = 1; $Conf{\"B\"} = 2; $Conf{ C } = 3;")
        self.assertEqual([(a.name, a.value) for a in c.assignments],
                         [("A", "1"), ("B", "2"), ("C", "3")])


class PerlStatementTests(SynchronousTestCase):
    """Statements, comments and the order of assignments."""

    def test_several_per_line_and_spanning_lines(self):
        text = "$Conf{A} = 1; $Conf{B}\n  =\n  'b' ;# c\n$Conf{C} = [ # x\n 1 ];"
        c = parse(text)
        self.assertEqual([(a.name, a.value, a.line) for a in c.assignments],
                         [("A", "1", 1), ("B", "b", 1), ("C", ["1"], 4)])
        self.assertEqual(text[c.assignments[1].start:c.assignments[1].end],
                         "$Conf{B}\n  =\n  'b' ;")

    def test_last_wins(self):
        c = parse("$Conf{A} = 1;\n$Conf{B} = 2;\n$Conf{A} = 3;\n")
        self.assertEqual(c.get("A"), "3")
        self.assertEqual([a.value for a in c.assignments_of("A")], ["1", "3"])
        self.assertEqual(c.assignments_of("Z"), ())

    def test_get_default_and_contains(self):
        c = parse("$Conf{A} = undef;")
        self.assertIsNone(c.get("A", "dflt"))
        self.assertEqual(c.get("B", "dflt"), "dflt")
        self.assertIn("A", c)
        self.assertNotIn("B", c)

    def test_comments(self):
        """# starts a comment outside strings only; a commented-out
        assignment is no assignment."""
        c = parse("#$Conf{A} = 'no';\n$Conf{B} = 'x # y'; # $Conf{C} = 1;\n"
                  "$Conf{D} = \"#\";")
        self.assertEqual([(a.name, a.value) for a in c.assignments],
                         [("B", "x # y"), ("D", "#")])

    def test_empty(self):
        self.assertEqual(parse("").assignments, ())
        self.assertEqual(parse("# only\n\n;;\n").assignments, ())

    def test_other_statements(self):
        """Statements not touching %Conf are accepted and skipped."""
        c = parse("$ENV{'PATH'} = '/bin';\ndelete @ENV{'IFS', 'CDPATH'};\nmy $x = 1;\n"
                  "use strict;\n$Conf{A} = 1;\n1;\n")
        self.assertEqual([(a.name, a.value) for a in c.assignments], [("A", "1")])

    def test_end_and_pod(self):
        """POD is skipped; __END__ ends the code."""
        c = parse("=pod\n$Conf{A} = 1;\n=cut\n$Conf{B} = 2;\n__END__\n$Conf{C} = 'x\n")
        self.assertEqual([a.name for a in c.assignments], ["B"])

    def test_per_key_assignment(self):
        """$Conf{Name}{Key} = v makes the setting an expression (the whole statement)."""
        for stmt in ["$Conf{H}{b} = 2", "$Conf{H}->{b} = 2", "$Conf{H}[0] = 2"]:
            c = parse(f"$Conf{{H}} = {{ a => 1 }};\n{stmt};")
            self.assertEqual(c.get("H"), PerlExpression(stmt, 2))
            self.assertEqual(c.assignments_of("H")[0].value, {"a": "1"})

    def test_modifications(self):
        """Statements that may change a setting make it an expression."""
        for stmt in ["$Conf{A} .= 'x'", "$Conf{A} =~ s/a/b/", "push @{$Conf{A}}, 'x'",
                     "chomp($Conf{A})", "delete $Conf{A}{k}", "$Conf{B} = $Conf{A} = 2",
                     "if ($x) { $Conf{A} = 1; }", "undef $Conf{A}", "$Conf{A}++"]:
            c = parse(f"$Conf{{A}} = 'a';\n{stmt};")
            self.assertEqual(c.get("A"), PerlExpression(stmt, 2), stmt)

    def test_reads_do_not_change(self):
        """Reading a setting elsewhere leaves it alone."""
        c = parse("$Conf{A} = 'a';\n$Conf{B} = $Conf{A} . 'b';\n"
                  "if ($Conf{A} eq 'a') { $x = 1; }\n$ENV{X} = $Conf{A};")
        self.assertEqual(c.get("A"), "a")
        self.assertEqual(len(c.assignments), 2)

    def test_block_statement_ends_at_brace(self):
        c = parse("if ($x) {\n  $y = 1;\n} else { $y = 2 }\n$Conf{A} = 1;\n"
                  "sub f { return 1; }\n$Conf{B} = 2;")
        self.assertEqual([a.name for a in c.assignments], ["A", "B"])

    def test_heredoc_span(self):
        text = "$Conf{A} = <<'EOT'; # c\nline $x\nEOT\n$Conf{B} = 2;\n"
        c = parse(text)
        a = c.assignments_of("A")[0]
        self.assertEqual(a.value, PerlExpression("<<'EOT'\nline $x\nEOT", 1))
        self.assertEqual(text[a.start:a.end], "$Conf{A} = <<'EOT'; # c\nline $x\nEOT")
        self.assertEqual(c.get("B"), "2")

    def test_unreadable_uses_of_conf(self):
        """Whole-hash changes and computed names are refused, with the line."""
        for stmt, shown in [("%Conf = ()", "%Conf"), ("@Conf{'A', 'B'} = (1, 2)", "@Conf"),
                            ("$Conf{$name} = 1", "$Conf"), ("$Conf{A . 'B'} = 1", "$Conf")]:
            e = self.assertRaises(ConfigError, parse, f"$Conf{{A}} = 1;\n{stmt};")
            self.assertEqual(str(e), f"test.pl, line 2: {shown} is used in a way this reader "
                                     f"cannot follow; set each value as $Conf{{Name}} = value;")

    def test_division_and_regex(self):
        """/ after a term divides; elsewhere it starts a pattern."""
        c = parse("$Conf{A} = 10 / 2; $Conf{B} = 'x' =~ /;'#/; $Conf{C} = 1;")
        self.assertEqual(c.get("A"), PerlExpression("10 / 2", 1))
        self.assertEqual(c.get("B"), PerlExpression("'x' =~ /;'#/", 1))
        self.assertEqual(c.get("C"), "1")


class MalformedPerlTests(SynchronousTestCase):
    """Malformed configs raise ConfigError naming file, line and what's expected."""

    def assertError(self, text, message):
        e = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(str(e), message)

    def test_unterminated_single_quote(self):
        self.assertError("$Conf{A} = 1;\n$Conf{B} = 'abc;\n$Conf{C} = 2;\n",
                         "test.pl, line 2: unterminated single-quoted string starting here; "
                         "add the closing '")

    def test_unterminated_double_quote(self):
        self.assertError("$Conf{A} = \"abc;\n",
                         "test.pl, line 1: unterminated double-quoted string starting "
                         "here; add the closing \"")

    def test_unterminated_q(self):
        self.assertError("$Conf{A} = q(abc;\n",
                         "test.pl, line 1: unterminated q(...) starting here; add the "
                         "closing )")

    def test_missing_semicolon(self):
        self.assertError("$Conf{A} = 'a'\n$Conf{B} = 'b';\n",
                         "test.pl, line 1: missing ; at the end of the statement that "
                         "starts on line 1 (a new statement starts on line 2); add ;")

    def test_missing_semicolon_after_multiline_value(self):
        self.assertError("$Conf{A} = [\n  1,\n]\n\n$Conf{B} = 'b';\n",
                         "test.pl, line 3: missing ; at the end of the statement that "
                         "starts on line 1 (a new statement starts on line 5); add ;")

    def test_missing_semicolon_at_end(self):
        self.assertError("$Conf{A} = 1;\n$Conf{B} = 'b'\n# end\n",
                         "test.pl, line 2: missing ; at the end of the statement that "
                         "starts on line 2 (found end of file); add ;")

    def test_unclosed_bracket(self):
        self.assertError("$Conf{A} = [\n  'a',\n  'b';\n",
                         "test.pl, line 3: ; inside the [ opened on line 1; close it "
                         "with ] first")
        self.assertError("$Conf{A} = {\n a => [1, 2],\n",
                         "test.pl, line 1: { opened here is never closed; add the "
                         "matching }")

    def test_extra_closing_bracket(self):
        self.assertError("$Conf{A} = [1];\n];\n",
                         "test.pl, line 2: ] without a matching opening bracket")

    def test_mismatched_bracket(self):
        self.assertError("$Conf{A} = [1, {a => 2];\n",
                         "test.pl, line 1: ] does not close the { opened on line 1; "
                         "add } before it")

    def test_garbage_line(self):
        self.assertError("$Conf{A} = 1;\nthis is not perl;\n",
                         "test.pl, line 2: expected a statement like $Conf{Name} = value; "
                         "found 'this'")
        self.assertError("$Conf{A} = 1;\n'orphan';\n",
                         "test.pl, line 2: expected a statement like $Conf{Name} = value; "
                         "found \"'orphan'\"")

    def test_garbage_without_semicolon(self):
        self.assertError("garbage here\n$Conf{A} = 1;\n",
                         "test.pl, line 1: missing ; at the end of the statement that "
                         "starts on line 1 (a new statement starts on line 2); add ;")

    def test_binary_junk(self):
        self.assertError("$Conf{A} = 1;\n\x00\x01\xff;\n",
                         "test.pl, line 2: unexpected character '\\x00'; expected Perl "
                         "code such as $Conf{Name} = 'value';")

    def test_missing_value(self):
        self.assertError("$Conf{A} = ;", "test.pl, line 1: expected a value after $Conf{A} =")

    def test_missing_equals(self):
        self.assertError("$Conf{A} 'x';", "test.pl, line 1: expected = after $Conf{A}, "
                                          "found \"'x'\"")
        self.assertError("$Conf{A};", "test.pl, line 1: expected = after $Conf{A}, found ;")

    def test_missing_comma(self):
        self.assertError("$Conf{A} = [\n  'home'\n  'etc'\n];",
                         "test.pl, line 3: expected , between \"'home'\" and \"'etc'\"")
        self.assertError("$Conf{A} = 'a' 'b';",
                         "test.pl, line 1: expected an operator or ; between \"'a'\" and "
                         "\"'b'\"")

    def test_unterminated_heredoc(self):
        self.assertError("$Conf{A} = <<EOF;\ntext\n",
                         "test.pl, line 1: heredoc <<EOF has no end line; add a line "
                         "containing only EOF")

    def test_lone_punctuation(self):
        """Found by fuzzing: a lone . at the end of the text."""
        self.assertError(".", "test.pl, line 1: missing ; at the end of the statement "
                              "that starts on line 1 (found end of file); add ;")

    def test_deep_nesting(self):
        self.assertError("$Conf{A} = " + "[" * 101 + "]" * 101 + ";",
                         "test.pl, line 1: brackets nested more than 100 levels deep")


# --- fingerprints --------------------------------------------------------------

class FingerprintTests(SynchronousTestCase):
    """TunnelCert tags and fingerprint normalization."""

    def test_normalize(self):
        for written in [FP1, FP1.upper(), colons(FP1), colons(FP1.upper()), f" {FP1}\n"]:
            self.assertEqual(normalize_fingerprint(written), FP1)

    def test_normalize_rejects(self):
        for bad in [FP1[:-1], FP1 + "a", colons(FP1)[:-1], "g" * 64, "", FP1[:2] + ":" + FP1[2:],
                    None, b"a" * 64]:
            e = self.assertRaises(ConfigError, normalize_fingerprint, bad)
            self.assertIn("is not a SHA-256 fingerprint; expected 64 hex digits, optionally "
                          "written as 32 colon-separated pairs (AB:CD:...)", str(e))

    def test_normalize_message_is_bounded(self):
        e = self.assertRaises(ConfigError, normalize_fingerprint, "x" * 1000)
        self.assertLess(len(str(e)), 250)

    def test_formats_in_comment(self):
        for comment in [f"TunnelCert:sha256:{FP1.upper()}", f"TunnelCert:sha256:{colons(FP1)}",
                        f"Alice (laptop) TunnelCert:sha256:{FP1}, renewed 2026",
                        f"x\nTunnelCert:sha256:{colons(FP1).upper()}\n"]:
            self.assertEqual(find_fingerprints(comment), {FP1}, comment)

    def test_wrong_length(self):
        for comment in [f"TunnelCert:sha256:{FP1[:-1]}", f"TunnelCert:sha256:{FP1}0",
                        f"TunnelCert:sha256:{colons(FP1)}:00", f"TunnelCert:sha256:{FP1}:ab",
                        f"TunnelCert:sha256:{colons(FP1)[:-3]}", f"xTunnelCert:sha256:{FP1}",
                        f"TunnelCert:sha1:{FP1}", f"tunnelcert:sha256:{FP1}"]:
            self.assertEqual(find_fingerprints(comment), frozenset(), comment)
            self.assertIsNone(TUNNEL_CERT_RE.search(comment), comment)

    def test_two_tags(self):
        comment = f"TunnelCert:sha256:{FP1} TunnelCert:sha256:{colons(OTHER_FP)}"
        self.assertEqual(find_fingerprints(comment), {FP1, OTHER_FP})

    def test_regex_group(self):
        m = TUNNEL_CERT_RE.search(f"a TunnelCert:sha256:{colons(FP1)}: b")
        self.assertEqual(m.group("fingerprint"), colons(FP1))


# --- authorization ---------------------------------------------------------------

def host_config(fp=FP1, port="'64701'", extra=""):
    return (f"$Conf{{ClientComment}} = 'TunnelCert:sha256:{fp}';\n"
            f"$Conf{{RsyncdClientPort}} = {port};\n{extra}")


class AuthorizeTests(TempDirMixin, SynchronousTestCase):
    """authorize() checks name, hosts file, fingerprint, port, in that order."""

    def setUp(self):
        self.conf = self.tempdir()
        self.write("hosts", HEADER + "laptop1 0 alice\nLaptop3 0 carol\nother 0 x\n")
        self.write("config.pl", "$Conf{RsyncdClientPort} = 873;\n"
                                f"$Conf{{ClientComment}} = 'TunnelCert:sha256:{FP1}';\n")

    def write(self, name, text):
        path = self.conf / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def refused(self, cls, common_name="laptop1", fp=FP1):
        e = self.assertRaises(cls, authorize, self.conf, common_name, fp)
        self.assertIsInstance(e, Refused)
        return str(e)

    def test_authorized(self):
        path = self.write("laptop1.pl", host_config())
        settings = authorize(self.conf, "laptop1", FP1)
        self.assertEqual(settings, AuthorizedHost("laptop1", path, frozenset({FP1}), 64701))

    def test_case_and_format_insensitive(self):
        """The CN and the presented fingerprint may differ in case and colons."""
        path = self.write("laptop3.pl", host_config(fp=colons(FP1).upper(), port="64703"))
        self.assertEqual(authorize(self.conf, "LAPTOP3", colons(FP1)),
                         AuthorizedHost("laptop3", path, frozenset({FP1}), 64703))

    def elsewhere(self):
        """A temporary folder outside the config folder."""
        folder = Path(tempfile.mkdtemp(prefix="bpctunnel-test-"))
        self.addCleanup(shutil.rmtree, folder, True)
        return folder

    def layout(self, use_fhs, top_dir=None):
        """The layout of a BackupPC whose Lib.pm says C{useFHS} (None: no BackupPC)."""
        lib_pm = self.elsewhere() / f"Lib-{use_fhs}.pm"
        lib_pm.write_text(f"    my $useFHS = {int(bool(use_fhs))};\n"
                          f"    $topDir     = '{top_dir}'     if ( $topDir eq \"\" );\n")
        return config_layout(self.conf, [lib_pm] if use_fhs is not None else [])

    def test_the_config_backuppc_reads(self):
        """BackupPC's ConfigPath: FHS pc/<host>.pl; classic TopDir's config.pl, else <host>.pl."""
        top = self.elsewhere() / "top"
        (top / "pc" / "laptop1").mkdir(parents=True)
        flat = self.write("laptop1.pl", host_config(port="64712"))
        sub = self.write("pc/laptop1.pl", host_config(port="64711"))
        legacy = top / "pc" / "laptop1" / "config.pl"
        fhs, classic, unknown = self.layout(True), self.layout(False, top), self.layout(None)
        self.assertEqual(fhs.host_config("laptop1"), sub)
        self.assertEqual(fhs.ignored_copies("laptop1"), [flat])
        self.assertEqual(classic.host_config("laptop1"), flat)
        self.assertEqual(classic.ignored_copies("laptop1"), [sub])
        self.assertEqual(unknown.host_config("laptop1"), flat)
        legacy.write_text(host_config(port="64713"))
        self.assertEqual(classic.host_config("laptop1"), legacy)
        self.assertEqual(classic.ignored_copies("laptop1"), [flat, sub])
        self.assertEqual(fhs.host_config("laptop1"), sub)
        flat.unlink()
        self.assertEqual(unknown.host_config("laptop1"), sub)

    def test_classic_top_dir_from_config_pl(self):
        """config.pl's TopDir wins over Lib.pm's default."""
        self.write("config.pl", "$Conf{TopDir} = '/srv/backuppc';\n")
        self.assertEqual(self.layout(False, "/var/lib/backuppc").top_dir, Path("/srv/backuppc"))
        (self.conf / "config.pl").unlink()
        self.assertEqual(self.layout(False, "/var/lib/backuppc").top_dir,
                         Path("/var/lib/backuppc"))

    def test_new_config_goes_where_backuppc_reads(self):
        self.assertEqual(self.layout(True).host_config("new"), self.conf / "pc" / "new.pl")
        self.assertEqual(self.layout(False, "/nowhere").host_config("new"),
                         self.conf / "new.pl")

    def test_renewal_overlap(self):
        """Either of two TunnelCert tags authorizes."""
        self.write("laptop1.pl", host_config(fp=f"{FP1} TunnelCert:sha256:{OTHER_FP}"))
        self.assertEqual(authorize(self.conf, "laptop1", OTHER_FP).fingerprints,
                         {FP1, OTHER_FP})
        self.assertEqual(authorize(self.conf, "laptop1", FP1).port, 64701)

    def test_invalid_names(self):
        """Names that could escape conf_dir are refused before any file access."""
        cases = [("../etc/passwd", "'../etc/passwd' is not a valid BackupPC host name "
                                   "(it contains '/')"),
                 ("..", "'..' is not a valid BackupPC host name (it starts with '.')"),
                 (".hidden", "'.hidden' is not a valid BackupPC host name (it starts "
                             "with '.')"),
                 ("", "'' is not a valid BackupPC host name (it is empty)"),
                 ("a\0b", "'a\\x00b' is not a valid BackupPC host name (it contains a "
                          "NUL character)"),
                 ("a\nb", "'a\\nb' is not a valid BackupPC host name (it contains a "
                          "control character)")]
        shutil.rmtree(self.conf)     # no hosts file: proves nothing was read
        for name, detail in cases:
            message = self.refused(UnknownHost, name)
            self.assertEqual(message, f"unknown host for {detail.split(' is ')[0]}: {detail}")
        message = self.refused(UnknownHost, "a" * 256)
        self.assertTrue(message.endswith(
            "... is not a valid BackupPC host name (it is longer than 255 characters)"))
        self.assertLess(len(message), 250)

    def test_config_is_not_a_host(self):
        """CN=config would be authorized from BackupPC's global config.pl."""
        self.write("hosts", "host dhcp user\nconfig 0 backuppc\n")
        self.write("config.pl", host_config())
        for name in ("config", "CONFIG"):
            message = self.refused(UnknownHost, name)
            self.assertIn("config.pl is BackupPC's global configuration, not a host's", message)
        self.assertRaises(ConfigError, find_host_config, self.conf, "config")

    def test_long_name_allowed(self):
        """255 characters is still a name (then unknown)."""
        message = self.refused(UnknownHost, "a" * 255)
        self.assertIn("is not listed in", message)

    def test_unknown_host(self):
        message = self.refused(UnknownHost, "laptop9")
        self.assertEqual(message, f"unknown host for laptop9: it is not listed in "
                                  f"{self.conf}/hosts; add it there (or run `bpctunnel "
                                  f"register-client laptop9 --add-host`)")

    def test_unknown_host_wins_over_fingerprint(self):
        """A host config alone is not enough: the hosts file is checked first."""
        self.write("laptop9.pl", host_config())
        self.refused(UnknownHost, "laptop9", OTHER_FP)
        self.refused(UnknownHost, "laptop9", FP1)

    def test_missing_hosts_file(self):
        """A server-side problem is a ConfigError, not a refusal."""
        (self.conf / "hosts").unlink()
        e = self.assertRaises(ConfigError, authorize, self.conf, "laptop1", FP1)
        self.assertNotIsInstance(e, Refused)
        self.assertIn(f"hosts file {self.conf}/hosts does not exist", str(e))

    def test_no_host_config(self):
        message = self.refused(FingerprintMismatch)
        self.assertTrue(message.startswith("fingerprint mismatch for laptop1: no host config "
                                           "for laptop1: BackupPC reads "), message)
        self.assertTrue(message.endswith(f"{self.conf}/laptop1.pl"), message)

    def test_mismatch(self):
        self.write("laptop1.pl", host_config())
        message = self.refused(FingerprintMismatch, fp=OTHER_FP)
        self.assertEqual(message, "fingerprint mismatch for laptop1: the certificate does "
                                  "not match TunnelCert in laptop1.pl")

    def test_mismatch_wins_over_bad_port(self):
        self.write("laptop1.pl", host_config(port="'abc'"))
        self.refused(FingerprintMismatch, fp=OTHER_FP)

    def test_no_tunnel_cert(self):
        base = ("fingerprint mismatch for laptop1: laptop1.pl has no TunnelCert:sha256:... "
                "in $Conf{ClientComment}")
        cases = [("$Conf{ClientComment} = 'Alice';", ""),
                 ("$Conf{ClientComment} = 'TunnelCert:sha256:abc';", ""),
                 ("$Conf{XferMethod} = 'rsyncd';",
                  " (it does not set $Conf{ClientComment})"),
                 ("$Conf{ClientComment} = undef;", " (it is undef, not a quoted string)"),
                 ("$Conf{ClientComment} = ['TunnelCert:sha256:" + FP1 + "'];",
                  " (it is a list, not a quoted string)"),
                 ("$Conf{ClientComment} = \"TunnelCert:sha256:$fp\";",
                  " (it is the Perl expression '\"TunnelCert:sha256:$fp\"' (line 1), not a "
                  "quoted string)"),
                 (host_config() + "$Conf{ClientComment}{x} = 1;",
                  " (it is the Perl expression '$Conf{ClientComment}{x} = 1' (line 3), not "
                  "a quoted string)")]
        for text, suffix in cases:
            self.write("laptop1.pl", text + "\n$Conf{RsyncdClientPort} = 64701;\n")
            self.assertEqual(self.refused(FingerprintMismatch), base + suffix, text)

    def test_tunnel_cert_only_in_host_config(self):
        """config.pl's ClientComment is not inherited for authorization."""
        self.write("laptop1.pl", "$Conf{RsyncdClientPort} = 64701;\n")
        self.assertIn("(it does not set $Conf{ClientComment})",
                      self.refused(FingerprintMismatch))

    def test_host_config_invalid(self):
        """A host config that does not parse names the file and line."""
        path = self.write("laptop1.pl", host_config() + "$Conf{X} = 'oops;\n")
        message = self.refused(HostConfigInvalid)
        self.assertEqual(message, f"host config error for laptop1: {path}, line 3: "
                                  f"unterminated single-quoted string starting here; add "
                                  f"the closing '")

    def test_host_config_directory(self):
        (self.conf / "laptop1.pl").mkdir()
        message = self.refused(HostConfigInvalid)
        self.assertEqual(message, f"host config error for laptop1: BackupPC config "
                                  f"{self.conf}/laptop1.pl is a directory, not a file")

    def test_ports(self):
        for port, expected in [("'64701'", 64701), ("64701", 64701), ("1", 1),
                               ("65535", 65535), ('"8873"', 8873)]:
            self.write("laptop1.pl", host_config(port=port))
            self.assertEqual(authorize(self.conf, "laptop1", FP1).port, expected)

    def test_bad_ports(self):
        prefix = "host config error for laptop1: $Conf{RsyncdClientPort} in laptop1.pl is "
        suffix = ", not a port number from 1 to 65535"
        for port, shown in [("0", "'0'"), ("65536", "'65536'"), ("'abc'", "'abc'"),
                            ("-1", "'-1'"), ("'0873'", "'0873'"), ("' 873'", "' 873'"),
                            ("64701.0", "'64701.0'"), ("undef", "undef"),
                            ("[64701]", "a list"), ("{}", "a hash"),
                            ("64700 + 1", "the Perl expression '64700 + 1' (line 2)")]:
            self.write("laptop1.pl", host_config(port=port))
            self.assertEqual(self.refused(HostConfigInvalid), prefix + shown + suffix, port)

    def test_missing_port(self):
        """The port must be in the host config; config.pl's 873 does not count."""
        self.write("laptop1.pl", f"$Conf{{ClientComment}} = 'TunnelCert:sha256:{FP1}';\n")
        self.assertEqual(self.refused(HostConfigInvalid),
                         "host config error for laptop1: $Conf{RsyncdClientPort} is missing "
                         "in laptop1.pl; set it to the port the tunnel should listen on")

    def test_last_port_wins(self):
        self.write("laptop1.pl", host_config(port="'abc'", extra="$Conf{RsyncdClientPort} = 5;"))
        self.assertEqual(authorize(self.conf, "laptop1", FP1).port, 5)

    def test_malformed_presented_fingerprint(self):
        """The server computes the digest; a bad one is its own bug, not a refusal."""
        self.write("laptop1.pl", host_config())
        e = self.assertRaises(ConfigError, authorize, self.conf, "laptop1", "abc")
        self.assertNotIsInstance(e, Refused)

    def test_refusal_classes(self):
        """Each refusal has its reason, status, host and detail."""
        expected = [(Refused, "refused", 403), (UnknownHost, "unknown host", 403),
                    (FingerprintMismatch, "fingerprint mismatch", 403),
                    (HostConfigInvalid, "host config error", 403),
                    (AlreadyConnected, "already connected", 409),
                    (PortUnavailable, "port unavailable", 503)]
        for cls, reason, status in expected:
            e = cls("laptop1", "some detail")
            self.assertIsInstance(e, BpcTunnelError)
            self.assertEqual((cls.reason, cls.http_status, e.host, e.detail, str(e)),
                             (reason, status, "laptop1", "some detail",
                              f"{reason} for laptop1: some detail"))


class TunnelSettingsTests(TempDirMixin, SynchronousTestCase):
    """tunnel_settings() and find_host_config() on their own."""

    def test_settings(self):
        conf = self.tempdir()
        (conf / "laptop1.pl").write_text(host_config(port="64799"))
        self.assertEqual(tunnel_settings(conf, "Laptop1"), AuthorizedHost(
            "laptop1", conf / "laptop1.pl", frozenset({FP1}), 64799))

    def test_refusals(self):
        conf = self.tempdir()
        self.assertRaises(FingerprintMismatch, tunnel_settings, conf, "laptop1")
        (conf / "laptop1.pl").write_text(host_config(port="'x'"))
        self.assertRaises(HostConfigInvalid, tunnel_settings, conf, "laptop1")
        self.assertRaises(UnknownHost, tunnel_settings, conf, "../laptop1")

    def test_find_host_config(self):
        conf = self.tempdir()
        self.assertIsNone(find_host_config(conf, "laptop1"))
        e = self.assertRaises(ConfigError, find_host_config, conf, "../x")
        self.assertEqual(str(e), "'../x' is not a valid BackupPC host name (it contains '/')")


# --- properties ------------------------------------------------------------------

PERLISH = st.sampled_from([
    "$Conf{", "}", "{", "[", "]", "(", ")", "'", '"', "\\", ";", "#", "\n", " ", "=", "=>",
    ",", "<<EOF", "EOF\n", "q(", "qw/", "s{", "__END__", "=pod\n", "\n=cut\n", "$", "@",
    "%Conf", "/", "1", "undef", "-", "if", "sub", "`", "A", "x", "\r\n", "\x00", "\ufeff",
    ".", ".5", "->", "${", "@{", "chomp(", "<<'E'", "\nE\n", "\\x{", "=head1\n", "é",
])


class PropertyTests(SynchronousTestCase):
    """The reader never fails with anything but ConfigError, and reads back
    whatever a renderer writes."""

    @settings(max_examples=200, deadline=None)
    @given(st.one_of(st.text(), st.lists(PERLISH | st.text(max_size=3)).map("".join)))
    def test_arbitrary_text(self, text):
        try:
            config = parse_perl_config(text, "fuzz.pl")
        except ConfigError as e:
            self.assertTrue(str(e).startswith("fuzz.pl, line "), str(e))
        else:
            for a in config.assignments:
                self.assertTrue(0 <= a.start < a.end <= len(text))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                              st.deferred(lambda: VALUES)), min_size=1, max_size=4),
           st.randoms(use_true_random=False))
    def test_round_trip(self, settings_, rnd):
        text = "# generated\n" + "".join(
            f"$Conf{{{name}}}{ws(rnd)}={ws(rnd)}{render(value, rnd)}{ws(rnd)};{ws(rnd)}\n"
            for name, value in settings_)
        config = parse_perl_config(text, "gen.pl")
        self.assertEqual([(a.name, a.value) for a in config.assignments],
                         [(name, expected(value)) for name, value in settings_])
        for a in config.assignments:
            self.assertEqual(text[a.start:a.start + 6], "$Conf{")
            self.assertEqual(text[a.end - 1], ";")


class Num(str):
    """A number in the generated data: rendered bare, read back as its text."""


NUMBERS = st.from_regex(r"-?(0|[1-9][0-9]{0,8})(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
                        fullmatch=True).map(Num)
VALUES = st.recursive(
    st.none() | st.text(max_size=12) | NUMBERS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
BAREWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def ws(rnd):
    """Random white space, sometimes with a comment."""
    return rnd.choice(["", " ", "  ", "\n", "\t", " # note\n", "\r\n  "])


def render(value, rnd):
    """Write a value as Perl source, choosing among equivalent spellings."""
    if value is None:
        return "undef"
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, str):
        if rnd.random() < 0.5:
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        escaped = value.translate({ord("\\"): "\\\\", ord('"'): '\\"', ord("$"): "\\$",
                                   ord("@"): "\\@", ord("\n"): "\\n", ord("\t"): "\\t",
                                   ord("\r"): "\\r"})
        return '"' + escaped + '"'
    if isinstance(value, list):
        items = [ws(rnd) + render(v, rnd) + ws(rnd) for v in value]
        trailing = "," if items and rnd.random() < 0.5 else ""
        return "[" + ",".join(items) + trailing + ws(rnd) + "]"
    pairs = []
    for key, v in value.items():
        shown = key if BAREWORD.fullmatch(key) and rnd.random() < 0.7 else render(key, rnd)
        sep = "=>" if shown == key or rnd.random() < 0.5 else ","
        pairs.append(f"{ws(rnd)}{shown}{ws(rnd)}{sep}{ws(rnd)}{render(v, rnd)}")
    return "{" + ",".join(pairs) + ws(rnd) + "}"


def expected(value):
    """What the reader returns for a generated value."""
    if isinstance(value, list):
        return [expected(v) for v in value]
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    return None if value is None else str(value)


class ModuleTests(SynchronousTestCase):
    """The module stays pure."""

    def test_no_reactor(self):
        """Importing the module must not pull in the global reactor."""
        import bpctunnel.backuppc.perlconf as perlconf
        import bpctunnel.backuppc.perllex as perllex
        for module in (backuppc, perlconf, perllex):
            source = Path(module.__file__).read_text()
            self.assertNotIn("twisted.internet", source)
