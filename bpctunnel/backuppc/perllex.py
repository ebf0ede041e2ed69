"""
The tokenizer behind L{bpctunnel.backuppc.perlconf}: just enough of Perl's lexical
rules to find where strings, comments, heredocs and statements end.

It never evaluates anything.  Quoted strings are decoded when that is exact
(single quotes, and double quotes without interpolation); everything else is
an opaque token whose source text is kept.
"""

from __future__ import annotations

import re
from bisect import bisect_right

from bpctunnel.errors import ConfigError

__all__ = ["PAIRS", "Token", "tokenize"]


def tokenize(text, source):
    """
    Split Perl source C{text} into L{Token}s; C{source} names it in errors.

    @raise ConfigError: an unterminated string, quote-like operator or
        heredoc, or a character that cannot start a Perl token.
    """
    return _Lexer(text, source).tokens()


class Token:
    """A lexical token: kind is str, num, word, var, op, qw or quote."""

    __slots__ = ("kind", "text", "value", "start", "end", "line", "body")

    def __init__(self, kind, text, value, start, end, line):
        self.kind, self.text, self.value = kind, text, value
        self.start, self.end, self.line = start, end, line
        self.body = None   # a heredoc's (body start, end of terminator line)

    def is_op(self, *texts):
        return self.kind == "op" and self.text in texts

    def is_term(self):
        """Whether this token ends a term, so a following C{/} divides."""
        if self.kind == "word":
            return self.text not in _NON_TERM_WORDS
        return self.kind != "op" or self.text in (")", "]", "}")


_DIGITS = frozenset("0123456789")
_POD = re.compile(r"=(?:pod|head[1-6]|over|item|back|begin|end|for|encoding|cut)\b")
_POD_END = re.compile(r"^=cut\b.*$", re.M)
_LETTERS = re.compile(r"[A-Za-z]*")
_WHITESPACE = re.compile(r"\s*")
PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_QUOTE_WORDS = {"q", "qq", "qw", "qr", "m", "s", "tr", "y"}
_NON_TERM_WORDS = {
    "and", "or", "not", "xor", "if", "unless", "while", "until", "return", "split",
    "grep", "map", "join", "push", "unshift", "lt", "gt", "le", "ge", "eq", "ne",
    "cmp", "x", "when",
}
_SPACE = re.compile(r"[ \t\r\f\v\ufeff]+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*(?:::[A-Za-z_0-9]+)*(?:::)?")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|"
                     r"(?:[0-9][0-9_]*(?:\.(?!\.)[0-9_]*)?|\.[0-9][0-9_]*)"
                     r"(?:[eE][+-]?[0-9][0-9_]*)?")
_VAR = re.compile(r"(?:\$#|[$@%&])\$*(?:::)?(?:[A-Za-z_][A-Za-z_0-9]*(?:::[A-Za-z_0-9]+)*"
                  r"|\^[A-Z]|[0-9]+)")
_SPECIAL_VAR = re.compile(r"\$[^\w\s{]")
_HEREDOC = re.compile(r"<<(~?)(?:\"([^\"\n]*)\"|'([^'\n]*)'|([A-Za-z_][A-Za-z_0-9]*))")
_OPERATOR = re.compile(
    r"<=>|\*\*=|\|\|=|&&=|//=|\.\.\.|<<=|>>=|=>|->|==|!=|<=|>=|=~|!~|\.=|\+=|-=|\*=|/=|"
    r"%=|\|=|&=|\^=|\|\||&&|//|\.\.|::|\+\+|--|\*\*|<<|>>|[-=+*/.<>!~\\?:,;()\[\]{}|&^%@$]")
_SQ_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'", re.S)
_DQ_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_BACKTICK = re.compile(r"`((?:[^`\\]|\\.)*)`", re.S)
_HEX_ESCAPE = re.compile(r"\{([0-9A-Fa-f]{1,6})\}|[0-9A-Fa-f]{0,2}")
_OCTAL_ESCAPE = re.compile(r"[0-7]{1,3}")
_DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "a": "\a", "e": "\x1b"}


def _decode_sq(body, delimiters="'"):
    """Undo the only escapes of a single-quoted string: backslash, delimiter."""
    pattern = "\\\\([\\\\" + re.escape(delimiters) + "])"
    return re.sub(pattern, lambda m: m.group(1), body)


def _decode_dq(body):
    """
    Decode a double-quoted string body, or return None if Perl would
    interpolate a variable into it or it uses an escape we don't evaluate.
    """
    out, i, n = [], 0, len(body)
    while i < n:
        c = body[i]
        if c == "$":
            return None        # "$x", "${x}", "$$", and Perl's "Final $" error
        if c == "@" and i + 1 < n and (body[i + 1].isalnum() or body[i + 1] in "_{$:"):
            return None
        if c != "\\":
            out.append(c)
            i += 1
            continue
        d = body[i + 1] if i + 1 < n else ""
        if d in _DQ_ESCAPES:
            out.append(_DQ_ESCAPES[d])
            i += 2
        elif d == "x":
            m = _HEX_ESCAPE.match(body, i + 2)
            digits = m.group(1) if m.group(1) is not None else m.group(0)
            code = int(digits, 16) if digits else 0
            if body.startswith("{", i + 2) != (m.group(1) is not None) or code > 0x10FFFF:
                return None    # \x{...} that Python can't hold; leave it to Perl
            out.append(chr(code))
            i = m.end()
        elif d and d in "01234567":
            m = _OCTAL_ESCAPE.match(body, i + 1)
            out.append(chr(int(m.group(0), 8)))
            i = m.end()
        elif not d or d.isalnum() or d == "_":
            return None        # \u \L \Q \E \N{...} \c? ...: not evaluated here
        else:
            out.append(d)
            i += 2
    return "".join(out)


class _Lexer:
    """Split Perl source into L{Token}s, skipping comments, POD and heredoc bodies."""

    def __init__(self, text, source):
        self.text, self.source = text, source
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.out = []
        self.heredocs = []     # heredocs whose body starts after the next newline

    def line_of(self, pos):
        return bisect_right(self.line_starts, pos)

    def error(self, pos, message):
        return ConfigError(f"{self.source}, line {self.line_of(pos)}: {message}")

    def prev_is_term(self):
        return bool(self.out) and self.out[-1].is_term()

    def add(self, kind, start, end, value=None):
        token = Token(kind, self.text[start:end], value, start, end, self.line_of(start))
        self.out.append(token)
        return token

    def tokens(self):
        text, n, pos = self.text, len(self.text), 0
        pos = self.skip_pod(pos)
        while pos < n:
            c = text[pos]
            if c == "\n":
                pos = self.skip_pod(self.heredoc_bodies(pos + 1))
            elif c in " \t\r\f\v\ufeff":
                pos = _SPACE.match(text, pos).end()
            elif c == "#":
                end = text.find("\n", pos)
                pos = n if end < 0 else end
            elif c in "'\"`":
                pos = self.quoted(pos, c)
            elif c.isascii() and (c.isalpha() or c == "_"):
                pos = self.word(pos)
                if pos is None:
                    break      # __END__ / __DATA__: the rest is not code
            elif c in _DIGITS or (c == "." and pos + 1 < n and text[pos + 1] in _DIGITS
                                  and not self.prev_is_term()):
                end = _NUMBER.match(text, pos).end()
                self.add("num", pos, end)
                pos = end
            else:
                pos = self.punctuation(pos, c)
        if self.heredocs:
            raise self.heredoc_missing(self.heredocs[0])
        return self.out

    def skip_pod(self, pos):
        """Skip POD (C{=head1} ... C{=cut}) at the line start C{pos}, where
        Perl looks for it: where a statement may start (C{}} is a guess)."""
        at_statement_start = not self.out or self.out[-1].is_op(";", "{", "}")
        if at_statement_start and _POD.match(self.text, pos):
            m = _POD_END.search(self.text, pos)
            return len(self.text) if m is None else m.end()
        return pos

    def quoted(self, pos, quote):
        regex = {"'": _SQ_STRING, '"': _DQ_STRING, "`": _BACKTICK}[quote]
        m = regex.match(self.text, pos)
        if m is None:
            kind = {"'": "single-quoted string", '"': "double-quoted string",
                    "`": "backtick command"}[quote]
            raise self.error(pos, f"unterminated {kind} starting here; add the closing {quote}")
        if quote == "'":
            self.add("str", pos, m.end(), _decode_sq(m.group(1)))
        elif quote == '"':
            self.add("str", pos, m.end(), _decode_dq(m.group(1)))
        else:
            self.add("quote", pos, m.end())
        return m.end()

    def word(self, pos):
        text = self.text
        end = _WORD.match(text, pos).end()
        word = text[pos:end]
        if word in ("__END__", "__DATA__") and (not self.out or self.out[-1].is_op(";", "}")):
            return None        # only where a statement could start, not as a hash key
        if word in _QUOTE_WORDS and self.starts_quote(pos, end):
            return self.quote_like(pos, word, end)
        self.add("word", pos, end)
        return end

    def starts_quote(self, pos, end):
        """Whether C{q}, C{qw}, C{s}... at C{pos} is a quote-like operator."""
        prev = self.out[-1] if self.out else None
        if prev is not None and (prev.is_op("->") or (prev.is_op("-") and prev.end == pos)):
            return False       # a method name, or a file test such as -s
        rest = self.text[end:end + 200]
        stripped = rest.lstrip(" \t")
        if stripped.startswith("=>") or not stripped:
            return False       # a hash key: { s => 1 }
        if len(stripped) != len(rest):
            return stripped[0] in "([{</|!'\""
        return not (rest[0].isalnum() or rest[0].isspace() or rest[0] in "_,;)]}=>")

    def quote_like(self, pos, word, end):
        text = self.text
        space = _SPACE.match(text, end)
        open_pos = space.end() if space else end
        body, end = self.delimited(open_pos, word)
        opener = text[open_pos]
        if word in ("s", "tr", "y"):
            if opener in PAIRS:                 # s{...}{...}: a second delimiter
                second = _WHITESPACE.match(text, end).end()
                if second >= len(text):
                    raise self.error(pos, f"{word}{opener}...{PAIRS[opener]} has no "
                                          f"replacement part; add it")
                _, end = self.delimited(second, word)
            else:                                # s/.../.../: reuse the delimiter
                _, end = self.delimited(end - 1, word)
        end = _LETTERS.match(text, end).end()
        delimiters = opener + PAIRS.get(opener, "")
        if word == "q":
            self.add("str", pos, end, _decode_sq(body, delimiters))
        elif word == "qq":
            self.add("str", pos, end, _decode_dq(body))
        elif word == "qw":
            words = re.split(r"[ \t\n\r\f\v]+", _decode_sq(body, delimiters))
            self.add("qw", pos, end, [w for w in words if w])
        else:
            self.add("quote", pos, end)
        return end

    def delimited(self, pos, word):
        """Scan a delimited body whose opening delimiter is at C{pos}."""
        text, n = self.text, len(self.text)
        if pos >= n:
            raise self.error(pos - 1, f"{word} needs a delimiter, found end of file")
        opener = text[pos]
        closer = PAIRS.get(opener, opener)
        depth, i = 1, pos + 1
        while i < n:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == closer:
                depth -= 1
                if depth == 0:
                    return text[pos + 1:i], i + 1
            elif c == opener:
                depth += 1
            i += 1
        what = f"{word}{opener}...{closer}" if word else "regular expression"
        raise self.error(pos, f"unterminated {what} starting here; add the closing {closer}")

    def punctuation(self, pos, c):
        text = self.text
        if c == "<" and (m := _HEREDOC.match(text, pos)) and (
                not self.prev_is_term() or m.group(4) is None):
            token = self.add("quote", pos, m.end())
            terminator = next(g for g in m.group(2, 3, 4) if g is not None)
            self.heredocs.append((token, terminator, bool(m.group(1))))
            return m.end()
        if c == "/" and not self.prev_is_term():
            _, end = self.delimited(pos, "")
            end = _LETTERS.match(text, end).end()
            self.add("quote", pos, end)
            return end
        if c in "$@" or (c in "%&" and not self.prev_is_term()):
            m = _VAR.match(text, pos) or (c == "$" and _SPECIAL_VAR.match(text, pos))
            if m:
                self.add("var", pos, m.end())
                return m.end()
        m = _OPERATOR.match(text, pos)
        if m is None:
            raise self.error(pos, f"unexpected character {c!r}; expected Perl code "
                                  f"such as $Conf{{Name}} = 'value';")
        self.add("op", pos, m.end())
        return m.end()

    def heredoc_bodies(self, pos):
        """Consume the bodies of heredocs started on the line that just ended."""
        text = self.text
        for token, terminator, indented in self.heredocs:
            pattern = (r"^[ \t]*" if indented else "^") + re.escape(terminator) + r"\r?$"
            m = re.compile(pattern, re.M).search(text, pos)
            if m is None:
                raise self.heredoc_missing((token, terminator, indented))
            token.body = (pos, m.end())
            pos = min(m.end() + 1, len(text))
        self.heredocs = []
        return pos

    def heredoc_missing(self, heredoc):
        token, terminator, _ = heredoc
        return self.error(token.start, f"heredoc {token.text} has no end line; add a "
                                       f"line containing only {terminator}")
