"""
Text a peer sent (a refusal's reason, a CONTROL message's detail), made safe
for our log and the user's terminal: one line, control characters escaped,
bounded in length.  A newline or an ESC sequence from a hostile peer must
not forge log lines or repaint a terminal.
"""

from __future__ import annotations

#: The most characters of a peer's text we show.
MAX_PEER_TEXT = 300


def _escaped(char: str) -> str:
    code = ord(char)
    if char in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
    if code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029):
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    if char == "\\":
        return "\\\\"
    return char


def peer_text(text, limit: int = MAX_PEER_TEXT) -> str:
    """C{text} from a peer as one printable line of at most C{limit} characters (plus "...")."""
    if not isinstance(text, str):
        text = "" if text is None else repr(text)
    shown = "".join(_escaped(char) for char in text[:limit * 4])
    return shown if len(shown) <= limit else shown[:limit] + "..."


def peer_values(value, _depth: int = 0):
    """C{value} (a decoded CONTROL body) with every string in it made L{peer_text}."""
    if isinstance(value, str):
        return peer_text(value)
    if _depth > 8:
        return None
    if isinstance(value, dict):
        return {peer_text(str(k), 64): peer_values(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [peer_values(v, _depth + 1) for v in value]
    return value
