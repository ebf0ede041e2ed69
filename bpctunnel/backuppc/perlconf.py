"""
Read BackupPC's Perl configuration files without running Perl.

BackupPC's C{config.pl} and per-host C{<host>.pl} files are Perl source that
BackupPC runs with C{do}.  bpctunnel only needs the plain settings in them,
so L{parse_perl_config} reads a file as a sequence of statements and turns
each C{$Conf{Name} = VALUE;} into an L{Assignment}.  A VALUE made only of
literals (quoted strings, numbers, C{undef}, C{[...]}, C{{...}}, C{qw(...)}
inside a list) becomes Python data: C{str}, C{None}, C{list}, C{dict}.
Numbers stay strings holding their source text (C{'64799'}, C{'027'}), as
BackupPC's own web editor writes them quoted anyway.

Anything the reader does not evaluate becomes a L{PerlExpression} holding the
raw source text, so an odd setting elsewhere in the file does not make the
whole file unusable; only a caller that needs that setting has to refuse it.
This covers computed values (C{'a' . $Conf{B}}, backticks, heredocs,
C{... if -x '/usr/bin/ssh'}) and every statement that changes a setting other
than by a plain C{=}: per-key assignments (C{$Conf{Name}{Key} = 1},
C{$Conf{Name}->{Key} = 1}), C{.=}, C{=~ s///}, C{push @{$Conf{Name}}, ...},
C{chomp($Conf{Name})}, and assignments inside C{if} blocks.  Each of these is
recorded as an assignment of a L{PerlExpression} (the whole statement's text)
to that setting, so it wins over earlier plain values as it would in Perl.

Other statements that do not touch C{%Conf} (C{$ENV{PATH} = ...},
C{delete @ENV{...}}, C{1;}, C{if} blocks) are accepted and skipped, because
the stock C{config.pl} has some.  Statements using C{%Conf} in a way the
reader cannot follow (C{%Conf = (...)}, C{@Conf{...}} slices, C{$Conf{$name}})
and anything that is not Perl the reader recognises raise L{ConfigError}
naming the file, the line and what was expected.

The tokenizer is L{bpctunnel.backuppc.perllex}; this module groups its tokens into
statements and values.
"""

from __future__ import annotations

import re
from pathlib import Path

from attrs import field, frozen

from bpctunnel.errors import ConfigError
from bpctunnel.backuppc.perllex import PAIRS, tokenize

__all__ = [
    "Assignment", "PerlConfig", "PerlExpression", "parse_perl_config",
    "read_config_text", "read_perl_config",
]

MAX_NESTING = 100


@frozen
class PerlExpression:
    """A value the reader does not evaluate: its raw Perl source and line."""

    text: str
    line: int


@frozen
class Assignment:
    """
    One statement that sets C{$Conf{name}}.

    C{start}/C{end} are character offsets into the parsed text covering the
    whole statement from C{$Conf} through its C{;} (and through the body of a
    heredoc it uses), so an editor can replace exactly this statement.
    """

    name: str
    value: object
    line: int
    start: int
    end: int


@frozen
class PerlConfig:
    """
    The C{$Conf} assignments of one file, in file order.

    Values are plain Python data shared with the caller; treat them as
    read-only.  C{text} is the exact text the offsets refer to.
    """

    source: str
    assignments: tuple[Assignment, ...]
    text: str = field(default="", repr=False)

    def get(self, name, default=None):
        """Return the value of the last assignment to C{name} (Perl's rule)."""
        for assignment in reversed(self.assignments):
            if assignment.name == name:
                return assignment.value
        return default

    def __contains__(self, name):
        return any(a.name == name for a in self.assignments)

    def assignments_of(self, name):
        """Return every assignment to C{name}, in file order."""
        return tuple(a for a in self.assignments if a.name == name)


def read_config_text(path, what="file"):
    """
    Read a BackupPC text file exactly, without newline translation.

    The bytes are decoded as UTF-8, falling back to latin-1: BackupPC itself
    reads these files as bytes, and latin-1 maps every byte to one character,
    so no file is refused for its encoding and the ASCII syntax is unchanged.

    @raise ConfigError: the file is missing, unreadable or a directory.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; check the BackupPC "
                          f"config directory (Debian: /etc/backuppc)") from None
    except PermissionError:
        raise ConfigError(f"cannot read {what} {path}: permission denied; make it "
                          f"readable by the user bpctunnel runs as (for example "
                          f"add that user to group backuppc)") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_perl_config(path):
    """Read and parse a BackupPC Perl config file; see L{parse_perl_config}."""
    return parse_perl_config(read_config_text(path, "BackupPC config"), str(path))


def parse_perl_config(text, source):
    """
    Parse BackupPC Perl config C{text}; C{source} names it in error messages.

    @raise ConfigError: the text is not a valid config file; the message
        names C{source}, the line and what was expected there.
    """
    parser = _Parser(text, source, tokenize(text, source))
    return PerlConfig(source, tuple(parser.assignments()), text)


class _NotLiteral(Exception):
    """The value is valid Perl but not made only of literals."""


_BLOCK_STATEMENT_WORDS = {
    "if", "unless", "while", "until", "for", "foreach", "sub", "package",
    "BEGIN", "END", "INIT", "CHECK", "UNITCHECK",
}
_BLOCK_AFTER_WORDS = {
    "sub", "do", "eval", "else", "continue", "map", "grep", "sort",
    "BEGIN", "END", "INIT", "CHECK", "UNITCHECK",
}
_STATEMENT_WORDS = _BLOCK_STATEMENT_WORDS | {
    "my", "our", "local", "use", "no", "require", "do", "eval", "delete", "chomp",
    "chop", "push", "pop", "shift", "unshift", "splice", "undef", "print", "printf",
    "warn", "die", "return", "umask", "binmode",
}
_MODIFYING_WORDS = {"chomp", "chop", "push", "pop", "shift", "unshift", "splice",
                    "delete", "undef", "local"}
_MODIFYING_OPS = {"=", ".=", "+=", "-=", "*=", "/=", "%=", "**=", "||=", "&&=",
                  "//=", "|=", "&=", "^=", "<<=", ">>=", "=~", "++", "--"}
_CONF_VARS = {f"{sigil}{prefix}Conf" for sigil in "$@%" for prefix in ("", "::", "main::")}
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


class _Parser:
    """Group tokens into statements and turn C{$Conf} statements into assignments."""

    def __init__(self, text, source, tokens):
        self.text, self.source, self.toks = text, source, tokens
        self.closer = {}       # index of an opening bracket -> index of its closer

    def error(self, line, message):
        return ConfigError(f"{self.source}, line {line}: {message}")

    def line_at(self, pos):
        return self.text.count("\n", 0, pos) + 1

    def assignments(self):
        out = []
        for first, last, semicolon in self.statements():
            out.extend(self.statement(first, last, semicolon))
        return out

    def statements(self):
        """Yield (first, last, semicolon token or None) for each statement."""
        toks, stack, first = self.toks, [], None
        block_statement = False
        for i, t in enumerate(toks):
            if first is None:
                if t.is_op(";"):
                    continue
                first = i
                block_statement = t.is_op("{") or (
                    t.kind == "word" and t.text in _BLOCK_STATEMENT_WORDS)
            elif not stack and self.starts_conf_assignment(i) and toks[i - 1].is_term() \
                    and self.at_line_start(t):
                prev_line = self.line_at(toks[i - 1].end - 1)
                raise self.error(prev_line, f"missing ; at the end of the statement that "
                                            f"starts on line {toks[first].line} (a new "
                                            f"statement starts on line {t.line}); add ;")
            if t.kind != "op":
                continue
            if t.text in "([{":
                stack.append((i, t.text == "{" and self.opens_block(i, first, stack,
                                                                       block_statement)))
                if len(stack) > MAX_NESTING:
                    raise self.error(t.line, f"brackets nested more than {MAX_NESTING} "
                                             f"levels deep")
            elif t.text in ")]}":
                if not stack:
                    raise self.error(t.line, f"{t.text} without a matching opening bracket")
                j, is_block = stack.pop()
                if PAIRS[toks[j].text] != t.text:
                    raise self.error(t.line, f"{t.text} does not close the {toks[j].text} "
                                             f"opened on line {toks[j].line}; add "
                                             f"{PAIRS[toks[j].text]} before it")
                self.closer[j] = i
                if t.text == "}" and not stack and block_statement and is_block:
                    nxt = toks[i + 1] if i + 1 < len(toks) else None
                    if not (nxt and nxt.kind == "word" and
                            nxt.text in ("elsif", "else", "continue")):
                        yield first, i, None
                        first = None
            elif t.text == ";":
                if not stack:
                    yield first, i - 1, t
                    first = None
                    continue
                j, is_block = stack[-1]
                before = toks[j - 1] if j > 0 else None
                for_loop = toks[j].text == "(" and before is not None and (
                    before.kind == "word" and before.text in ("for", "foreach"))
                if not (is_block or for_loop):
                    raise self.error(t.line, f"; inside the {toks[j].text} opened on line "
                                             f"{toks[j].line}; close it with "
                                             f"{PAIRS[toks[j].text]} first")
        if stack:
            j = stack[-1][0]
            raise self.error(toks[j].line, f"{toks[j].text} opened here is never closed; "
                                           f"add the matching {PAIRS[toks[j].text]}")
        if first is not None:
            raise self.error(self.line_at(toks[-1].end - 1),
                             f"missing ; at the end of the statement that starts on line "
                             f"{toks[first].line} (found end of file); add ;")

    def at_line_start(self, t):
        """Whether only white space precedes token C{t} on its line."""
        line_start = self.text.rfind("\n", 0, t.start) + 1
        return self.text[line_start:t.start].strip(" \t\r\f\v\ufeff") == ""

    def opens_block(self, i, first, stack, block_statement):
        """Whether the C{{} at index C{i} opens a code block (not a hash)."""
        toks = self.toks
        if i == first or (block_statement and not stack):
            return True
        prev = toks[i - 1]
        if prev.is_op(")", ";"):
            return True
        if prev.is_op("{") and stack and stack[-1][0] == i - 1 and stack[-1][1]:
            return True
        if prev.kind == "word":
            if prev.text in _BLOCK_AFTER_WORDS:
                return True
            before = toks[i - 2] if i >= 2 else None
            return before is not None and before.kind == "word" and before.text in (
                "sub", "package")
        return False

    def conf_name(self, i):
        """The setting name if tokens at C{i} are C{$Conf{Name}}, else None."""
        toks = self.toks
        if toks[i].text != "$Conf" or i + 3 >= len(toks) or not toks[i + 1].is_op("{") \
                or not toks[i + 3].is_op("}"):
            return None
        key = toks[i + 2]
        if key.kind == "word" and "::" not in key.text:
            return key.text
        if key.kind == "str" and key.value is not None:
            return key.value
        return None

    def starts_conf_assignment(self, i):
        return self.conf_name(i) is not None and i + 4 < len(self.toks) \
            and self.toks[i + 4].is_op("=")

    def statement(self, first, last, semicolon):
        """Return the assignments one statement makes."""
        toks = self.toks
        start = toks[first].start
        end = max([semicolon.end if semicolon else toks[last].end] +
                  [t.body[1] for t in toks[first:last + 1] if t.body])
        line = toks[first].line
        whole = None
        refs = []
        for j in range(first, last + 1):
            if toks[j].kind == "var" and toks[j].text in _CONF_VARS:
                name = self.conf_name(j)
                if name is None:
                    raise self.error(toks[j].line, f"{toks[j].text} is used in a way this "
                                                   f"reader cannot follow; set each value "
                                                   f"as $Conf{{Name}} = value;")
                refs.append((j, name))

        out = []
        if refs and refs[0][0] == first:
            name = refs[0][1]
            nxt = toks[first + 4] if first + 4 <= last else None
            if nxt is not None and nxt.is_op("="):
                if first + 5 > last:
                    raise self.error(nxt.line, f"expected a value after $Conf{{{name}}} =")
                value = self.value(first + 5, last)
                out.append(Assignment(name, value, line, start, end))
                refs = [(j, n) for j, n in refs if j > first + 4]
            elif nxt is not None and (nxt.is_op("{", "[", "->") or
                                      (nxt.kind == "op" and nxt.text in _MODIFYING_OPS)):
                whole = PerlExpression(self.source_text(first, last), line)
                out.append(Assignment(name, whole, line, start, end))
                refs = refs[1:]
            else:
                found = f"{nxt.text!r}" if nxt is not None else ";"
                raise self.error(line, f"expected = after $Conf{{{name}}}, found {found}")
        else:
            t = toks[first]
            allowed = (t.kind == "var" or t.is_op("{")
                       or (t.kind == "word" and t.text in _STATEMENT_WORDS)
                       or (t.kind == "num" and first == last))
            if not allowed:
                raise self.error(line, f"expected a statement like $Conf{{Name}} = value; "
                                       f"found {t.text[:40]!r}")
        for j, name in refs:
            if self.modifies(j, first, last):
                whole = whole or PerlExpression(self.source_text(first, last), line)
                out.append(Assignment(name, whole, line, start, end))
        return out

    def modifies(self, j, first, last):
        """Whether the C{$Conf{Name}} at C{j} may be changed by its statement."""
        toks, k = self.toks, j + 4
        while k <= last and (toks[k].is_op("->", "{", "[")):
            k = self.closer[k] + 1 if k in self.closer else k + 1
        if k <= last and toks[k].kind == "op" and toks[k].text in _MODIFYING_OPS:
            return True
        p = j - 1
        if p >= first and toks[p].is_op("\\", "++", "--"):
            return True
        while p >= first and toks[p].is_op("(", "{", "@", "%", "$", "\\"):
            p -= 1
        return p >= first and toks[p].kind == "word" and toks[p].text in _MODIFYING_WORDS

    def source_text(self, first, last):
        """The raw text of tokens C{first}..C{last}, plus any heredoc bodies."""
        toks = self.toks
        text = self.text[toks[first].start:toks[last].end]
        for t in toks[first:last + 1]:
            if t.body:
                text += "\n" + self.text[t.body[0]:t.body[1]]
        return text

    def value(self, first, last):
        """A literal value of tokens C{first}..C{last}, else a L{PerlExpression}."""
        try:
            value, k = self.literal(first, last, 0)
            if k > last:
                return value
            self.check_separated(k - 1, k, "an operator or ;")
        except _NotLiteral:
            pass
        return PerlExpression(self.source_text(first, last), self.toks[first].line)

    def check_separated(self, prev, k, expected):
        """Perl refuses two literals in a row: report the missing separator."""
        t = self.toks[k]
        if t.kind in ("str", "num", "qw") or t.is_op("[", "{"):
            raise self.error(t.line, f"expected {expected} between "
                                     f"{self.toks[prev].text[-40:]!r} and {t.text[:40]!r}")

    def literal(self, i, last, depth):
        """Parse one literal at C{i}; return (value, index after it)."""
        if i > last:
            raise _NotLiteral()
        t = self.toks[i]
        if t.kind == "str" and t.value is not None:
            return t.value, i + 1
        if t.kind == "num":
            return t.text, i + 1
        if t.is_op("-", "+") and i < last and self.toks[i + 1].kind == "num":
            return t.text + self.toks[i + 1].text, i + 2
        if t.kind == "word" and t.text == "undef":
            return None, i + 1
        if t.is_op("[", "{"):
            if depth >= MAX_NESTING:
                raise self.error(t.line, f"values nested more than {MAX_NESTING} levels deep")
            items, numbers, k = self.elements(i + 1, last, PAIRS[t.text], depth + 1)
            if t.text == "[":
                return items, k
            return self.hash(items, numbers), k
        raise _NotLiteral()

    def elements(self, i, last, close, depth):
        """Parse a list up to C{close}; return (items, indexes of number keys, next)."""
        toks, items, numbers = self.toks, [], set()
        while True:
            if i > last:
                raise _NotLiteral()
            t = toks[i]
            if t.is_op(close):
                return items, numbers, i + 1
            if t.kind == "word" and i < last and toks[i + 1].is_op("=>"):
                items.append(t.text)
                i += 1
            elif t.kind == "qw":
                items.extend(t.value)
                i += 1
            elif t.is_op("("):
                inner, _, i = self.elements(i + 1, last, ")", depth)
                items.extend(inner)
            else:
                value, k = self.literal(i, last, depth)
                if k == i + 1 and t.kind == "num" and not _CANONICAL_INT.fullmatch(t.text) \
                        or k == i + 2 and not _CANONICAL_INT.fullmatch(t.text + toks[i + 1].text):
                    numbers.add(len(items))   # Perl would use its numeric value as key
                items.append(value)
                i = k
            if i > last:
                raise _NotLiteral()
            if toks[i].is_op(",", "=>"):
                while i <= last and toks[i].is_op(",", "=>"):
                    i += 1
            elif not toks[i].is_op(close):
                self.check_separated(i - 1, i, ",")
                raise _NotLiteral()

    def hash(self, items, numbers):
        if len(items) % 2:
            raise _NotLiteral()
        result = {}
        for n in range(0, len(items), 2):
            key = items[n]
            if not isinstance(key, str) or n in numbers:
                raise _NotLiteral()
            result[key] = items[n + 1]
        return result
