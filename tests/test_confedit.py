"""
Tests for L{bpctunnel.backuppc.confedit}: edits of BackupPC's real files checked
against golden files, line by line and by BackupPC's own Perl reader;
refusals; line endings; atomic writes; a property test through Perl.

A missing C{perl} or BackupPC fails these tests (CI installs it:
C{apt-get install -y --no-install-recommends backuppc}).
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from attrs import frozen
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bpctunnel.backuppc import confedit
from bpctunnel.backuppc.hosts import HostEntry, parse_hosts
from bpctunnel.backuppc.confedit import (
    add_host, perl_literal, remove_tunnel_cert, set_setting, set_tunnel_cert,
    write_atomically,
)
from bpctunnel.errors import ConfigError, EditRefused
from bpctunnel.backuppc.perlconf import PerlExpression, parse_perl_config, read_config_text

DATA = Path(__file__).parent / "data" / "backuppc"
GOLDEN = Path(__file__).parent / "data" / "confedit"
BACKUPPC_LIB = Path("/usr/share/backuppc/lib")
INSTALL_HINT = "apt-get install -y --no-install-recommends backuppc"

NEW_FP = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
NEW_FP_GIVEN = ":".join(NEW_FP[i:i + 2] for i in range(0, 64, 2)).upper()
NEW_TAG = f"TunnelCert:sha256:{NEW_FP}"
LAPTOP1_FP = "3f1c5be8a9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b"
TAG_A, TAG_B = "TunnelCert:sha256:" + "a" * 64, "TunnelCert:sha256:" + "b" * 64

EDITS = {
    "set-tunnel-cert": ("ClientComment", lambda t, s: set_tunnel_cert(t, NEW_FP_GIVEN, s)),
    "remove-tunnel-cert": ("ClientComment", lambda t, s: remove_tunnel_cert(t, s)[0]),
    "set-port": ("RsyncdClientPort", lambda t, s: set_setting(t, "RsyncdClientPort", 64710, s)),
    "set-xfer": ("XferMethod", lambda t, s: set_setting(t, "XferMethod", "rsync", s)),
    "set-shares": ("RsyncShareName",
                   lambda t, s: set_setting(t, "RsyncShareName", ["documents", "photos"], s)),
    "add-user-name": ("RsyncdUserName", lambda t, s: set_setting(t, "RsyncdUserName", "", s)),
    "add-host": (None, lambda t, s: add_host(t, "laptop3", "backuppc", s)[0]),
}


@frozen
class GoldenCase:
    """One edit of one file: the setting's new value, the lines it may touch."""

    source: str
    edit: str
    value: object
    old_lines: tuple[int, ...]   # lines of the input the diff replaces
    new_lines: tuple[int, ...]   # lines of the output the diff writes

    @property
    def golden(self):
        stem, dot, ext = self.source.rpartition(".")
        return GOLDEN / (f"{stem}.{self.edit}.{ext}" if dot and ext == "pl"
                         else f"{self.source}.{self.edit}")


CASES = {(c.source, c.edit): c for c in [
    GoldenCase("laptop1.pl", "set-tunnel-cert", f"Alice's laptop {NEW_TAG}", (1,), (1,)),
    GoldenCase("laptop1.pl", "remove-tunnel-cert", "Alice's laptop", (1,), (1,)),
    GoldenCase("laptop1.pl", "set-port", "64710", (10,), (10,)),
    GoldenCase("laptop1.pl", "set-xfer", "rsync", (13,), (13,)),
    GoldenCase("laptop1.pl", "set-shares", ["documents", "photos"], (5, 6, 7, 8, 9), (5,)),
    GoldenCase("laptop2.handwritten.pl", "set-tunnel-cert", NEW_TAG, (9,), (9,)),
    GoldenCase("laptop2.handwritten.pl", "remove-tunnel-cert", "", (9,), (9,)),
    GoldenCase("laptop2.handwritten.pl", "set-xfer", "rsync", (4,), (4,)),
    GoldenCase("laptop2.handwritten.pl", "add-user-name", "", (), (20,)),
    GoldenCase("laptop2.after-web-edit.pl", "set-tunnel-cert", NEW_TAG, (8,), (8,)),
    GoldenCase("laptop2.after-web-edit.pl", "remove-tunnel-cert", "", (8,), (8,)),
    GoldenCase("laptop2.after-web-edit.pl", "set-xfer", "rsync", (4,), (4,)),
    GoldenCase("config.pl", "set-tunnel-cert", NEW_TAG, (1903,), (1903,)),
    GoldenCase("config.pl", "set-port", "64710", (1257,), (1257,)),
    GoldenCase("config.pl", "set-xfer", "rsync", (873,), (873,)),
    GoldenCase("hosts", "add-host", HostEntry("laptop3", "0", "backuppc", ()), (), (58,)),
]}


def changed_lines(old, new):
    """The 1-based line numbers a line diff replaces in C{old} and writes in C{new}."""
    matcher = difflib.SequenceMatcher(None, old.splitlines(True), new.splitlines(True),
                                      autojunk=False)
    removed, added = [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            removed.extend(range(i1 + 1, i2 + 1))
            added.extend(range(j1 + 1, j2 + 1))
    return tuple(removed), tuple(added)


def comparable(config, without):
    """Every assignment except those to C{without}, PerlExpression lines dropped."""
    return [(a.name, a.value.text if isinstance(a.value, PerlExpression) else a.value)
            for a in config.assignments if a.name != without]


# --- BackupPC's own reader ---------------------------------------------------

_PERL_READER = r"""
use strict;
use JSON::PP;
use BackupPC::Storage::Text;
my ($conf_dir, @hosts) = @ARGV;
my $store = BackupPC::Storage::Text->new({}, {
    ConfDir => $conf_dir, TopDir => "$conf_dir/no-top-dir", useFHS => 0});
sub plain {   # every leaf as a string, as BackupPC compares them
    my $v = shift;
    return {map { ($_ => plain($v->{$_})) } keys %$v} if ref $v eq 'HASH';
    return [map { plain($_) } @$v] if ref $v eq 'ARRAY';
    return defined $v ? "$v" : undef;
}
my %out;
for my $host (@hosts) {
    my ($error, $conf) = $store->ConfigDataRead($host);
    $out{$host} = {error => $error, conf => plain($conf)};
}
$out{'hosts file'} = plain($store->HostInfoRead()) if -f "$conf_dir/hosts";
print JSON::PP->new->canonical->ascii->encode(\%out);
"""


def _from_perl(value):
    """Perl read the files as bytes; JSON gave them as code points 0-255."""
    if isinstance(value, dict):
        return {k: _from_perl(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_perl(v) for v in value]
    return value.encode("latin-1").decode("utf-8") if isinstance(value, str) else value


def backuppc_read(testcase, configs, hosts=None):
    """
    Run BackupPC::Storage::Text's ConfigDataRead on each C{configs} text
    (name -> text, read as host C{name}) and HostInfoRead on C{hosts}.

    @return: C{{name: {"error": ..., "conf": {...}}}}, plus C{"hosts file"}.
    """
    perl = shutil.which("perl")
    if perl is None or not (BACKUPPC_LIB / "BackupPC" / "Storage" / "Text.pm").exists():
        testcase.fail(f"perl or BackupPC 4 (in {BACKUPPC_LIB}) is missing; install it: "
                      f"{INSTALL_HINT}")
    conf_dir = Path(tempfile.mkdtemp(prefix="bpctunnel-perl-"))
    testcase.addCleanup(shutil.rmtree, conf_dir, True)
    for name, text in configs.items():
        (conf_dir / f"{name}.pl").write_bytes(text.encode("utf-8"))
    if hosts is not None:
        (conf_dir / "hosts").write_bytes(hosts.encode("utf-8"))
    result = subprocess.run([perl, f"-I{BACKUPPC_LIB}", "-e", _PERL_READER, str(conf_dir),
                             *configs], capture_output=True, timeout=120)
    testcase.assertEqual(result.returncode, 0, result.stderr.decode("utf-8", "replace"))
    return _from_perl(json.loads(result.stdout))


# --- golden files ---------------------------------------------------------------

class GoldenFileTests(SynchronousTestCase):
    """
    Each edit of each real BackupPC file gives its golden file, touches only
    the edited statement's lines, is idempotent, and reads back (by our
    reader and by BackupPC's) with the new value and everything else as before.
    """

    def check(self, source, edit):
        case = CASES[source, edit]
        setting, apply = EDITS[edit]
        old = read_config_text(DATA / source)
        new = apply(old, source)
        self.assertEqual(new, read_config_text(case.golden))
        self.assertEqual(changed_lines(old, new), (case.old_lines, case.new_lines))
        self.assertEqual(apply(new, source), new)
        if setting is None:
            self.check_hosts(case, old, new)
            return
        before, after = parse_perl_config(old, source), parse_perl_config(new, source)
        self.assertEqual(after.get(setting), case.value)
        self.assertEqual(comparable(after, setting), comparable(before, setting))
        perl = backuppc_read(self, {"old": old, "new": new})
        self.assertEqual((perl["old"]["error"], perl["new"]["error"]), (None, None))
        old_conf, new_conf = perl["old"]["conf"], perl["new"]["conf"]
        self.assertEqual(new_conf.pop(setting), case.value)
        old_conf.pop(setting, None)
        self.assertEqual(new_conf, old_conf)

    def check_hosts(self, case, old, new):
        hosts = parse_hosts(new)
        self.assertEqual(hosts.pop("laptop3"), case.value)
        self.assertEqual(hosts, parse_hosts(old))
        perl = backuppc_read(self, {}, hosts=new)["hosts file"]
        # A hash slice over the header's columns: moreUsers exists, undefined.
        self.assertEqual(perl, {
            "localhost": {"host": "localhost", "dhcp": "0", "user": "backuppc",
                          "moreUsers": None},
            "laptop3": {"host": "laptop3", "dhcp": "0", "user": "backuppc", "moreUsers": None}})

    def test_laptop1_set_tunnel_cert(self):
        self.check("laptop1.pl", "set-tunnel-cert")

    def test_laptop1_remove_tunnel_cert(self):
        self.check("laptop1.pl", "remove-tunnel-cert")

    def test_laptop1_set_port(self):
        self.check("laptop1.pl", "set-port")

    def test_laptop1_set_xfer(self):
        self.check("laptop1.pl", "set-xfer")

    def test_laptop1_multi_line_list(self):
        self.check("laptop1.pl", "set-shares")

    def test_handwritten_set_tunnel_cert(self):
        self.check("laptop2.handwritten.pl", "set-tunnel-cert")

    def test_handwritten_remove_tunnel_cert(self):
        self.check("laptop2.handwritten.pl", "remove-tunnel-cert")

    def test_handwritten_set_xfer(self):
        self.check("laptop2.handwritten.pl", "set-xfer")

    def test_handwritten_append(self):
        self.check("laptop2.handwritten.pl", "add-user-name")

    def test_web_edited_set_tunnel_cert(self):
        self.check("laptop2.after-web-edit.pl", "set-tunnel-cert")

    def test_web_edited_remove_tunnel_cert(self):
        self.check("laptop2.after-web-edit.pl", "remove-tunnel-cert")

    def test_web_edited_set_xfer(self):
        self.check("laptop2.after-web-edit.pl", "set-xfer")

    def test_config_set_tunnel_cert(self):
        self.check("config.pl", "set-tunnel-cert")

    def test_config_set_port(self):
        self.check("config.pl", "set-port")

    def test_config_set_xfer(self):
        self.check("config.pl", "set-xfer")

    def test_hosts_add_host(self):
        self.check("hosts", "add-host")

    def test_every_golden_file_is_checked(self):
        """No golden file is left over from a case that no longer exists."""
        self.assertEqual(sorted(p.name for p in GOLDEN.iterdir()),
                         sorted(c.golden.name for c in CASES.values()))


class UnchangedTests(SynchronousTestCase):
    """Edits that are already true return the very same text."""

    def assertUnchanged(self, source, edit):
        text = read_config_text(DATA / source)
        self.assertIs(edit(text), text)

    def test_same_string_other_quotes(self):
        """"rsyncd" (double quotes, hand-written) equals 'rsyncd'."""
        for source in ("laptop1.pl", "laptop2.handwritten.pl", "laptop2.after-web-edit.pl"):
            self.assertUnchanged(source, lambda t: set_setting(t, "XferMethod", "rsyncd", source))

    def test_number_equals_quoted_number(self):
        """BackupPC's writer quotes numbers: '64701' equals 64701."""
        self.assertUnchanged("laptop1.pl", lambda t: set_setting(t, "RsyncdClientPort", 64701, "x"))
        self.assertUnchanged("laptop1.pl",
                             lambda t: set_setting(t, "RsyncdClientPort", "64701", "x"))

    def test_same_list_over_several_lines(self):
        self.assertUnchanged("laptop1.pl",
                             lambda t: set_setting(t, "ClientNameAlias", ["127.0.0.1"], "x"))
        self.assertUnchanged("laptop2.handwritten.pl",
                             lambda t: set_setting(t, "RsyncShareName", ("home", "etc"), "x"))

    def test_two_equal_assignments(self):
        """Both assignments already hold the value: nothing to do, no refusal."""
        self.assertUnchanged("laptop2.after-web-edit.pl",
                             lambda t: set_setting(t, "RsyncdClientPort", 64702, "x"))

    def test_same_fingerprint_other_spelling(self):
        self.assertUnchanged("laptop1.pl", lambda t: set_tunnel_cert(t, LAPTOP1_FP.upper(), "x"))

    def test_remove_without_tag(self):
        """config.pl's ClientComment is undef: nothing removed, text unchanged."""
        text = read_config_text(DATA / "config.pl")
        new, removed = remove_tunnel_cert(text, "config.pl")
        self.assertIs(new, text)
        self.assertFalse(removed)

    def test_host_already_listed(self):
        """Host names compare lower-cased, as BackupPC does."""
        text = read_config_text(DATA / "hosts")
        for host in ("localhost", "LocalHost"):
            new, added = add_host(text, host)
            self.assertIs(new, text)
            self.assertFalse(added)


# --- refusals -------------------------------------------------------------------

class RefusalTests(SynchronousTestCase):
    """
    Rule: a setting assigned several times is edited only if every assignment
    already holds the new value (then nothing changes); otherwise the edit is
    refused, even for the value Perl reads now (the last one), because the
    earlier ones disagree and would win if the last were deleted.
    """

    def test_two_different_assignments(self):
        text = read_config_text(DATA / "laptop2.handwritten.pl")
        for port in (64710, 64702, 64799):
            e = self.assertRaises(EditRefused, set_setting, text, "RsyncdClientPort", port,
                                  "laptop2.pl")
            self.assertEqual(str(e), "laptop2.pl assigns $Conf{RsyncdClientPort} on lines 11 "
                                     "and 19; edit it by hand so that it is assigned once")

    def test_two_equal_assignments_new_value(self):
        text = read_config_text(DATA / "laptop2.after-web-edit.pl")
        e = self.assertRaises(EditRefused, set_setting, text, "RsyncdClientPort", 64710, "w.pl")
        self.assertIn("w.pl assigns $Conf{RsyncdClientPort} on lines 10 and 18", str(e))

    def test_three_assignments(self):
        text = "$Conf{A} = 1;\n$Conf{A} = 2;\n\n$Conf{A} = 2;\n"
        e = self.assertRaises(EditRefused, set_setting, text, "A", 2, "h.pl")
        self.assertIn("on lines 1, 2 and 4", str(e))

    def test_comment_built_with_perl_code(self):
        text = f"$Conf{{XferMethod}} = 'rsyncd';\n$Conf{{ClientComment}} = 'x ' . '{TAG_A}';\n"
        for edit in (lambda: set_tunnel_cert(text, NEW_FP, "h.pl"),
                     lambda: remove_tunnel_cert(text, "h.pl"),
                     lambda: set_setting(text, "ClientComment", "x", "h.pl")):
            e = self.assertRaises(EditRefused, edit)
            self.assertTrue(str(e).startswith("h.pl, line 2: $Conf{ClientComment} is set by "
                                              "Perl code or per key ("), str(e))
            self.assertIn("edit it by hand", str(e))

    def test_per_key_assignment(self):
        text = "$Conf{XferMethod} = 'rsyncd';\n\n$Conf{BackupFilesExclude}{'/home'} = ['/tmp'];\n"
        e = self.assertRaises(EditRefused, set_setting, text, "BackupFilesExclude", None, "h.pl")
        self.assertIn("h.pl, line 3: $Conf{BackupFilesExclude} is set by Perl code or per key "
                      "(\"$Conf{BackupFilesExclude}{'/home'} = ['/tmp']\")", str(e))

    def test_appended_to_by_perl_code(self):
        """A plain assignment followed by .= counts as two assignments."""
        text = f"$Conf{{ClientComment}} = '{TAG_A}';\n$Conf{{ClientComment}} .= ' x';\n"
        e = self.assertRaises(EditRefused, set_tunnel_cert, text, NEW_FP, "h.pl")
        self.assertIn("h.pl, line 2: $Conf{ClientComment} is set by Perl code", str(e))
        e = self.assertRaises(EditRefused, set_setting, text, "ClientComment", "y", "h.pl")
        self.assertIn("h.pl assigns $Conf{ClientComment} on lines 1 and 2", str(e))

    def test_comment_not_a_string(self):
        text = "$Conf{ClientComment} = ['a'];\n"
        for edit in (lambda: set_tunnel_cert(text, NEW_FP, "h.pl"),
                     lambda: remove_tunnel_cert(text, "h.pl")):
            e = self.assertRaises(EditRefused, edit)
            self.assertEqual(str(e), "h.pl, line 1: $Conf{ClientComment} is a list, not a "
                                     "quoted string; edit it by hand")

    def test_bad_fingerprint(self):
        self.assertRaises(ConfigError, set_tunnel_cert, "", "abc", "h.pl")

    def test_bad_setting_name(self):
        for name in ("", "a b", "A}", "$x", None):
            self.assertRaises(ConfigError, set_setting, "", name, "v", "h.pl")

    def test_unreadable_config(self):
        self.assertRaises(ConfigError, set_setting, "$Conf{A} = ;\n", "A", "v", "h.pl")

    def test_bad_host_names(self):
        text = read_config_text(DATA / "hosts")
        for host in ("", "a b", "a\tb", "a#b", "#a", "a/b", "a\0b", ".a", "-a", "a\\ b",
                     "\\a", "a\nb", "caf\u00e9", "x" * 256, None):
            e = self.assertRaises(ConfigError, add_host, text, host)
            self.assertIn("cannot be written to hosts as a host name", str(e))
        for user in ("", "a b", "a#b", "a,b"):
            e = self.assertRaises(ConfigError, add_host, text, "laptop3", user)
            self.assertIn("as a user name", str(e))

    def test_hosts_without_header(self):
        self.assertRaises(ConfigError, add_host, "# only comments\n", "laptop3")


# --- smaller edits --------------------------------------------------------------

class TunnelCertTests(SynchronousTestCase):
    """The TunnelCert tag inside ClientComment; other text is kept."""

    def edit(self, comment, fingerprint=NEW_FP):
        text = f"$Conf{{ClientComment}} = {perl_literal(comment)};\n"
        return parse_perl_config(set_tunnel_cert(text, fingerprint, "h.pl"), "h").get(
            "ClientComment")

    def remove(self, comment):
        text = f"$Conf{{ClientComment}} = {perl_literal(comment)};\n"
        new, removed = remove_tunnel_cert(text, "h.pl")
        return parse_perl_config(new, "h").get("ClientComment"), removed

    def test_set(self):
        self.assertEqual(self.edit(""), NEW_TAG)
        self.assertEqual(self.edit("Bob's PC"), f"Bob's PC {NEW_TAG}")
        self.assertEqual(self.edit("Bob's PC "), f"Bob's PC {NEW_TAG}")
        self.assertEqual(self.edit(f"a {TAG_A} b {TAG_B} c"), f"a {NEW_TAG} b c")
        self.assertEqual(self.edit(f"{TAG_A} {TAG_B}"), NEW_TAG)
        self.assertEqual(self.edit(f"{TAG_A}, {TAG_B}, c"), f"{NEW_TAG}, , c")

    def test_set_creates_and_replaces_undef(self):
        self.assertEqual(set_tunnel_cert("", NEW_FP, "h.pl"),
                         f"$Conf{{ClientComment}} = '{NEW_TAG}';\n")
        self.assertEqual(set_tunnel_cert("$Conf{ClientComment} = undef; # none\n", NEW_FP, "h"),
                         f"$Conf{{ClientComment}} = '{NEW_TAG}'; # none\n")

    def test_remove(self):
        self.assertEqual(self.remove(f"a {TAG_A} b {TAG_B} c"), ("a b c", True))
        self.assertEqual(self.remove(f"{TAG_A} {TAG_B}"), ("", True))
        self.assertEqual(self.remove(f" x {TAG_A}"), ("x", True))
        self.assertEqual(self.remove(f"{TAG_A} x"), ("x", True))
        self.assertEqual(self.remove("TunnelCert:sha256:abc x"), ("TunnelCert:sha256:abc x",
                                                                  False))

    def test_remove_when_not_set(self):
        for text in ("", "$Conf{ClientComment} = undef;\n", "$Conf{ClientComment} = '';\n"):
            self.assertEqual(remove_tunnel_cert(text, "h.pl"), (text, False))

    def test_tag_only_in_earlier_assignment(self):
        """Perl reads the last assignment; the earlier tag authorizes nobody."""
        text = f"$Conf{{ClientComment}} = '{TAG_A}';\n$Conf{{ClientComment}} = 'x';\n"
        self.assertEqual(remove_tunnel_cert(text, "h.pl"), (text, False))


class LiteralTests(SynchronousTestCase):
    """perl_literal() writes what BackupPC's Perl reads back."""

    def test_values(self):
        self.assertEqual(perl_literal("it's"), "'it\\'s'")
        self.assertEqual(perl_literal("a\\b\\'"), "'a\\\\b\\\\\\''")
        self.assertEqual(perl_literal(64710), "64710")
        self.assertEqual(perl_literal(-1), "-1")
        self.assertEqual(perl_literal(["a", "b"]), "['a', 'b']")
        self.assertEqual(perl_literal(("a", 1, None, [])), "['a', 1, undef, []]")
        self.assertEqual(perl_literal(None), "undef")
        self.assertEqual(perl_literal('a\r\n"$x@y\\'), '"a\\r\n\\"\\$x\\@y\\\\"')

    def test_other_types(self):
        for value in (True, 1.5, {"a": 1}, b"x", object()):
            self.assertRaises(TypeError, perl_literal, value)
            self.assertRaises(TypeError, set_setting, "", "A", value, "h.pl")

    def test_number_looking_string_is_rewritten(self):
        """A bare 0x10 parses like the string '0x10' but Perl reads 16."""
        self.assertEqual(set_setting("$Conf{A} = 0x10;\n", "A", "0x10", "h.pl"),
                         "$Conf{A} = '0x10';\n")
        self.assertEqual(set_setting("$Conf{A} = \"1.50\";\n", "A", "1.50", "h.pl"),
                         "$Conf{A} = '1.50';\n")
        text = "$Conf{A} = '1.50';\n$Conf{A} = '1.50';\n"
        self.assertIs(set_setting(text, "A", "1.50", "h.pl"), text)


class LayoutTests(SynchronousTestCase):
    """Line endings, missing final newlines and trailing comments survive."""

    def test_crlf_replace(self):
        text = read_config_text(DATA / "laptop1.pl").replace("\n", "\r\n")
        golden = read_config_text(CASES["laptop1.pl", "set-tunnel-cert"].golden)
        self.assertEqual(set_tunnel_cert(text, NEW_FP, "h.pl"), golden.replace("\n", "\r\n"))

    def test_crlf_append(self):
        text = "$Conf{XferMethod} = 'rsyncd';\r\n"
        self.assertEqual(set_setting(text, "RsyncdClientPort", 64710, "h.pl"),
                         text + "$Conf{RsyncdClientPort} = 64710;\r\n")
        # Without any line ending to follow, LF is used.
        self.assertEqual(set_setting(text.rstrip(), "RsyncdClientPort", 1, "h.pl"),
                         text.rstrip() + "\n$Conf{RsyncdClientPort} = 1;\n")

    def test_crlf_hosts(self):
        text = read_config_text(DATA / "hosts").replace("\n", "\r\n")
        new, added = add_host(text, "laptop3")
        self.assertEqual(new, text + "laptop3    0    backuppc\r\n")
        self.assertTrue(added)

    def test_no_final_newline(self):
        text = "# host\n$Conf{XferMethod} = 'smb';"
        self.assertEqual(set_setting(text, "XferMethod", "rsyncd", "h.pl"),
                         "# host\n$Conf{XferMethod} = 'rsyncd';")
        self.assertEqual(set_setting(text, "RsyncdClientPort", 64710, "h.pl"),
                         text + "\n$Conf{RsyncdClientPort} = 64710;\n")
        hosts = "host dhcp user\nlocalhost 0 backuppc"
        self.assertEqual(add_host(hosts, "Laptop3", "admin"),
                         (hosts + "\nLaptop3    0    admin\n", True))

    def test_comment_without_final_newline(self):
        text = "$Conf{XferMethod} = 'smb';\n# end"
        self.assertEqual(set_setting(text, "RsyncdPasswd", "x", "h.pl"),
                         text + "\n$Conf{RsyncdPasswd} = 'x';\n")

    def test_trailing_comment_kept(self):
        text = read_config_text(DATA / "laptop2.handwritten.pl")
        new = set_setting(text, "ClientNameAlias", ["127.0.0.2"], "h.pl")
        self.assertEqual(new, text.replace("$Conf{ClientNameAlias} = ['127.0.0.1'];   #",
                                           "$Conf{ClientNameAlias} = ['127.0.0.2'];   #"))

    def test_append_after_end_marker_is_refused(self):
        """Perl ignores text after __END__; the read-back check catches it."""
        text = "$Conf{XferMethod} = 'smb';\n__END__\n"
        self.assertRaises(EditRefused, set_setting, text, "RsyncdClientPort", 1, "h.pl")

    def test_appended_undef_read_by_backuppc(self):
        """A file ending in an undef assignment still reads without error."""
        text = set_setting("$Conf{XferMethod} = 'rsyncd';\n", "ClientComment", None, "h.pl")
        self.assertEqual(text, "$Conf{XferMethod} = 'rsyncd';\n$Conf{ClientComment} = undef;\n")
        perl = backuppc_read(self, {"h": text})["h"]
        self.assertEqual(perl["error"], None)
        self.assertEqual((perl["conf"]["ClientComment"], perl["conf"]["XferMethod"]),
                         (None, "rsyncd"))


# --- property test through Perl ---------------------------------------------------

_AWKWARD = st.sampled_from(["'", "\\", '"', "$", "@", "{", "}", "#", "\n", "\r", "\r\n",
                            " ", ";", "__END__", "\x00", "\x04", "\x1a", "\u00e9", "\u20ac",
                            "\U0001f600", "\ufeff", "\u2028"])
_STRINGS = st.one_of(st.text(), st.lists(_AWKWARD | st.text(max_size=3)).map("".join))


class RoundTripPropertyTests(SynchronousTestCase):
    """Any string set_setting writes is read back as that string, by us and by Perl."""

    def test_strings_round_trip(self):
        written = []

        @settings(max_examples=300, deadline=None, database=None)
        @given(_STRINGS, st.booleans())
        def check(value, crlf):
            base = "# h\n$Conf{XferMethod} = 'rsyncd';\n$Conf{ClientComment} = 'old';\n"
            base = base.replace("\n", "\r\n") if crlf else base
            new = set_setting(base, "ClientComment", value, "h.pl")
            self.assertEqual(parse_perl_config(new, "h.pl").get("ClientComment"), value)
            self.assertIs(set_setting(new, "ClientComment", value, "h.pl"), new)
            written.append((value, new))

        check()
        perl = backuppc_read(self, {f"h{i}": new for i, (_, new) in enumerate(written)})
        read = [(perl[f"h{i}"]["error"], perl[f"h{i}"]["conf"].get("ClientComment"))
                for i in range(len(written))]
        self.assertEqual(read, [(None, value) for value, _ in written])


# --- write_atomically -------------------------------------------------------------

class WriteAtomicallyTests(SynchronousTestCase):
    """Temporary file, same mode/owner/group, fsync, rename; nothing half-done."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="bpctunnel-test-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "laptop1.pl"
        self.old = "$Conf{XferMethod} = 'smb';\r\n"
        self.path.write_bytes(self.old.encode())
        # Another owner than ours when we can (as root); ours otherwise.
        root = os.geteuid() == 0
        self.uid, self.gid = (1, 1) if root else (os.getuid(), os.getgid())

    def listing(self):
        return sorted(p.name for p in self.dir.iterdir())

    def test_keeps_mode_owner_group(self):
        os.chown(self.path, self.uid, self.gid)
        os.chmod(self.path, 0o604)
        before = self.path.stat()
        self.assertTrue(write_atomically(self.path, "new\r\n", self.old))
        after = self.path.stat()
        self.assertEqual(self.path.read_bytes(), b"new\r\n")
        self.assertEqual((stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid),
                         (0o604, self.uid, self.gid))
        self.assertNotEqual(after.st_ino, before.st_ino)   # replaced, not rewritten in place
        self.assertEqual(self.listing(), ["laptop1.pl"])

    def test_new_file(self):
        os.chown(self.dir, -1, self.gid)
        path = self.dir / "laptop3.pl"
        self.assertTrue(write_atomically(path, "$Conf{A} = 1;\n", None))
        st_ = path.stat()
        self.assertEqual((stat.S_IMODE(st_.st_mode), st_.st_gid), (0o640, self.gid))
        self.assertEqual(path.read_bytes(), b"$Conf{A} = 1;\n")

    def test_unchanged_is_not_written(self):
        os.utime(self.path, ns=(10**18, 10**18))
        before = self.path.stat()
        self.assertFalse(write_atomically(self.path, self.old, self.old))
        after = self.path.stat()
        self.assertEqual((after.st_ino, after.st_mtime_ns), (before.st_ino, 10**18))
        self.assertEqual(self.listing(), ["laptop1.pl"])

    def assertFailsCleanly(self, exception=ConfigError):
        self.assertRaises(exception, write_atomically, self.path, "new\n", self.old)
        self.assertEqual(self.path.read_bytes(), self.old.encode())
        self.assertEqual(self.listing(), ["laptop1.pl"])

    def test_rename_fails(self):
        def replace(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        self.patch(confedit.os, "replace", replace)
        self.assertFailsCleanly()

    def test_write_fails(self):
        def fsync(fd):
            raise OSError(errno.EIO, "Input/output error")
        self.patch(confedit.os, "fsync", fsync)
        self.assertFailsCleanly()

    def test_owner_cannot_be_kept(self):
        """Not root, and the file is someone else's: refused, not written as ours."""
        real_fstat = os.fstat

        def fstat(fd):   # the temporary file looks like another user's
            fields = list(real_fstat(fd))
            fields[stat.ST_UID] += 1
            return os.stat_result(fields)

        def fchown(fd, uid, gid):
            raise OSError(errno.EPERM, "Operation not permitted")
        self.patch(confedit.os, "fstat", fstat)
        self.patch(confedit.os, "fchown", fchown)
        e = self.assertRaises(ConfigError, write_atomically, self.path, "new\n", self.old)
        self.assertIn("with its owner, group and mode: Operation not permitted", str(e))
        self.assertFailsCleanly()

    def test_interrupted(self):
        def fsync(fd):
            raise KeyboardInterrupt()
        self.patch(confedit.os, "fsync", fsync)
        self.assertFailsCleanly(KeyboardInterrupt)

    def test_changed_meanwhile(self):
        """Someone saved the file after we read it: their version is kept."""
        for old in ("$Conf{XferMethod} = 'tar';\r\n", None):
            e = self.assertRaises(EditRefused, write_atomically, self.path, "new\n", old)
            self.assertIn("changed while it was being edited", str(e))
        self.assertRaises(EditRefused, write_atomically, self.dir / "gone.pl", "new\n", "old")
        self.assertEqual(self.path.read_bytes(), self.old.encode())
        self.assertEqual(self.listing(), ["laptop1.pl"])

    def test_symlink_target_is_replaced(self):
        link = self.dir / "link.pl"
        link.symlink_to(self.path.name)
        self.assertTrue(write_atomically(link, "new\n", self.old))
        self.assertTrue(link.is_symlink())
        self.assertEqual(self.path.read_bytes(), b"new\n")

    def test_latin1_file_stays_latin1(self):
        self.path.write_bytes(b"# caf\xe9\n$Conf{XferMethod} = 'smb';\n")
        old = read_config_text(self.path)
        new = set_setting(old, "XferMethod", "rsyncd", str(self.path))
        self.assertTrue(write_atomically(self.path, new, old))
        self.assertEqual(self.path.read_bytes(), b"# caf\xe9\n$Conf{XferMethod} = 'rsyncd';\n")
        e = self.assertRaises(ConfigError, write_atomically, self.path, new + "\u20ac", new)
        self.assertIn("latin-1", str(e))
        self.assertEqual(self.listing(), ["laptop1.pl"])

    def test_explicit_encoding(self):
        self.assertTrue(write_atomically(self.path, "caf\u00e9\n", self.old, encoding="utf-8"))
        self.assertEqual(self.path.read_bytes(), b"caf\xc3\xa9\n")
