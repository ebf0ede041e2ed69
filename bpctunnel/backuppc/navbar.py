"""
Add a link to BackupPC's navigation bar (C{$Conf{CgiNavBarLinks}} in
C{config.pl}), keeping every other byte of the file.

C{CgiNavBarLinks} is a list of hashes (C{link}, C{name} or C{lname}, C{priv});
L{bpctunnel.backuppc.confedit.set_setting} writes no hashes, and rewriting
the whole list would drop the comments in it, so L{add_nav_link} inserts one
entry before the list's closing C{]}.  The result is parsed again and must
hold the old entries plus the new one, with every other setting unchanged.
Pure text -> text: writing the file is L{bpctunnel.backuppc.confedit.write_atomically}'s job.
"""

from __future__ import annotations

from bpctunnel.backuppc.confedit import perl_literal
from bpctunnel.backuppc.perlconf import PerlExpression, parse_perl_config
from bpctunnel.backuppc.perllex import tokenize
from bpctunnel.errors import EditRefused

__all__ = ["SETTING", "add_nav_link"]

SETTING = "CgiNavBarLinks"


def _entry(link: str, name: str) -> dict:
    # priv: shown to BackupPC's admins only, like its own admin links.
    return {"link": link, "name": name, "priv": 1}


def _literal(entry: dict) -> str:
    return "{" + ", ".join(f"{k} => {perl_literal(v)}" for k, v in entry.items()) + "}"


def _others(config):
    return [(a.name, a.value.text if isinstance(a.value, PerlExpression) else a.value)
            for a in config.assignments if a.name != SETTING]


def _current_links(config, source):
    """The plain list C{CgiNavBarLinks} holds (undef or unset: []) and its assignment."""
    found = config.assignments_of(SETTING)
    if len(found) > 1:
        lines = ", ".join(str(a.line) for a in found)
        raise EditRefused(f"{source} assigns $Conf{{{SETTING}}} on lines {lines}; edit it by "
                          f"hand so that it is assigned once")
    if not found:
        return [], None
    value = found[0].value
    if value is None:
        return [], found[0]
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise EditRefused(f"{source}, line {found[0].line}: $Conf{{{SETTING}}} is not a plain "
                          f"list of {{link => ..., name => ...}} hashes; add the link by hand")
    return value, found[0]


def _insert(text, assignment, source, literal):
    """C{text} with C{literal} added as the last item of C{assignment}'s list."""
    tokens = [t for t in tokenize(text, source) if assignment.start <= t.start < assignment.end]
    closing = next(i for i in range(len(tokens) - 1, -1, -1) if tokens[i].is_op("]"))
    before, end = tokens[closing - 1], tokens[closing].start
    comma = "" if before.is_op("[", ",") else ","
    line_start = text.rfind("\n", 0, end) + 1
    if text[line_start:end].strip() == "" and before.end < line_start:
        # `]` alone on its line: the new entry goes on a line of its own above it.
        newline = "\r\n" if text[line_start - 2:line_start] == "\r\n" else "\n"
        insert = f"    {literal},{newline}"
        at = line_start
    else:
        insert, at = (" " if comma or before.is_op(",") else "") + literal, end
    return text[:before.end] + comma + text[before.end:at] + insert + text[at:]


def add_nav_link(text: str, link: str, name: str, source: str) -> tuple[str, bool]:
    """
    Return C{(text, False)} if C{config.pl}'s C{text} already has a
    navigation bar link to C{link}, else C{text} with an entry
    C{{link => LINK, name => NAME, priv => 1}} added after the others, and True.

    @raise EditRefused: C{CgiNavBarLinks} is assigned several times, computed,
        not a list of hashes, or already has a link named C{name} to another URL.
    @raise ConfigError: C{text} is not a config file L{parse_perl_config} reads.
    """
    config = parse_perl_config(text, source)
    links, assignment = _current_links(config, source)
    for entry in links:
        if entry.get("link") == link:
            return text, False
        if entry.get("name") == name:
            raise EditRefused(f"{source}: $Conf{{{SETTING}}} already has a link named {name!r}, "
                              f"to {entry.get('link')!r}; remove it first, or name that URL")
    entry = _entry(link, name)
    if assignment is not None and assignment.value is not None:
        new_text = _insert(text, assignment, source, _literal(entry))
    else:
        statement = f"$Conf{{{SETTING}}} = [{_literal(entry)}];"
        if assignment is not None:
            new_text = text[:assignment.start] + statement + text[assignment.end:]
        else:
            newline = "\r\n" if "\r\n" in text.split("\n", 1)[0] + "\n" else "\n"
            separator = newline if text and not text.endswith("\n") else ""
            new_text = text + separator + statement + newline
    after = parse_perl_config(new_text, source)
    # The reader gives numbers as their text.
    if after.get(SETTING) != [*links, {k: str(v) for k, v in entry.items()}] or _others(after) != _others(config):
        raise EditRefused(f"{source}: the navigation bar link would not read back as intended; "
                          f"nothing was changed, add {_literal(entry)} to $Conf{{{SETTING}}} "
                          f"by hand")
    return new_text, True
