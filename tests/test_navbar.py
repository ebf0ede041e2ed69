"""
L{bpctunnel.backuppc.navbar}: the dashboard's link in BackupPC's navigation
bar, and `bpctunnel web-link`, which writes it into config.pl.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from bpctunnel.backuppc.navbar import add_nav_link
from bpctunnel.backuppc.perlconf import parse_perl_config
from bpctunnel.errors import EditRefused
from tests.helpers import run_cli, temp_dir

LINK = "/backuppc/tunnels/dashboard/"
NEW = "{link => '/backuppc/tunnels/dashboard/', name => 'Tunnels', priv => 1}"
STOCK = Path("/usr/share/backuppc/conf/config.pl")
STOCK_LIST = """\
$Conf{CgiNavBarLinks} = [
    {
        link  => "?action=view&type=docs",
        lname => "Documentation",            # actually displays $Lang->{Documentation}
    },
    {
        link => "https://github.com/backuppc/backuppc/wiki",
        name => "Wiki",                                        # displays literal "Wiki"
    },
];
"""


def add(text):
    return add_nav_link(text, LINK, "Tunnels", "config.pl")


class AddNavLinkTests(TestCase):
    """Text in, text out: one entry added, every other byte kept."""

    def test_appended_after_existing_links(self):
        """The new entry goes on its own line before `]`; the comments stay."""
        new, added = add("# top\n" + STOCK_LIST + "$Conf{X} = 1;\n")
        self.assertTrue(added)
        self.assertEqual(new, "# top\n" + STOCK_LIST.replace("];", f"    {NEW},\n];")
                         + "$Conf{X} = 1;\n")
        links = parse_perl_config(new, "c").get("CgiNavBarLinks")
        self.assertEqual([link.get("name") for link in links], [None, "Wiki", "Tunnels"])

    def test_idempotent(self):
        """A second run changes nothing."""
        once, _ = add(STOCK_LIST)
        self.assertEqual(add(once), (once, False))

    def test_one_line_lists(self):
        """Commas are added where Perl needs them."""
        cases = {
            "$Conf{CgiNavBarLinks} = [];\n": f"$Conf{{CgiNavBarLinks}} = [{NEW}];\n",
            "$Conf{CgiNavBarLinks} = [{link => 'a', name => 'b'}];\n":
                f"$Conf{{CgiNavBarLinks}} = [{{link => 'a', name => 'b'}}, {NEW}];\n",
            "$Conf{CgiNavBarLinks} = [{link => 'a', name => 'b'},];\n":
                f"$Conf{{CgiNavBarLinks}} = [{{link => 'a', name => 'b'}}, {NEW}];\n",
            "$Conf{CgiNavBarLinks} = [\r\n  {link => 'a', name => 'b'} # c\r\n];\r\n":
                f"$Conf{{CgiNavBarLinks}} = [\r\n  {{link => 'a', name => 'b'}}, # c\r\n"
                f"    {NEW},\r\n];\r\n",
        }
        for before, after in cases.items():
            self.assertEqual(add(before), (after, True), before)

    def test_unset_or_undef(self):
        """No list yet: one is written (appended, or in place of undef)."""
        self.assertEqual(add("$Conf{X} = 1;"),
                         (f"$Conf{{X}} = 1;\n$Conf{{CgiNavBarLinks}} = [{NEW}];\n", True))
        self.assertEqual(add("$Conf{CgiNavBarLinks} = undef; # none\n"),
                         (f"$Conf{{CgiNavBarLinks}} = [{NEW}]; # none\n", True))

    def test_refusals(self):
        """Anything it cannot edit unambiguously is left for the admin, with the reason."""
        for text, words in [
            ("$Conf{CgiNavBarLinks} = [];\n$Conf{CgiNavBarLinks} = [];\n", "lines 1, 2"),
            ("$Conf{CgiNavBarLinks} = 'x';\n", "not a plain list"),
            ("push @{$Conf{CgiNavBarLinks}}, {link => 'a'};\n", "not a plain list"),
            ("$Conf{CgiNavBarLinks} = [{link => '/other/', name => 'Tunnels'}];\n",
             "already has a link named 'Tunnels', to '/other/'"),
        ]:
            error = self.assertRaises(EditRefused, add, text)
            self.assertIn(words, str(error))

    def test_stock_config(self):
        """Debian's own config.pl: the link is added, nothing else changes."""
        text = STOCK.read_text("latin-1")
        new, added = add(text)
        self.assertTrue(added)
        self.assertEqual(new.replace(f"    {NEW},\n", "", 1), text)


class WebLinkCommandTests(TestCase):
    """`bpctunnel web-link` against a config.pl on disk."""

    @inlineCallbacks
    def test_keeps_mode_and_is_idempotent(self):
        conf = temp_dir(self)
        config_pl = conf / "config.pl"
        config_pl.write_text(STOCK_LIST)
        os.chmod(config_pl, 0o640)
        code, out = yield run_cli(self, "web-link", "--backuppc-conf", str(conf))
        self.assertEqual(code, 0, out)
        self.assertIn(f"added 'Tunnels' -> {LINK} to $Conf{{CgiNavBarLinks}} in {config_pl}", out)
        self.assertIn(NEW, config_pl.read_text())
        self.assertEqual(os.stat(config_pl).st_mode & 0o777, 0o640)
        code, out = yield run_cli(self, "web-link", "--backuppc-conf", str(conf))
        self.assertEqual((code, out.strip()),
                         (0, f"BackupPC's navigation bar already links to {LINK} ({config_pl})"))
