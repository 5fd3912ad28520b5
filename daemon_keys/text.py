"""Text from outside, made safe for one line of a terminal or a log. Imports only ``re``.

Names, SANs, file names in a spool or a config dir, and what a command printed
are chosen by others (in the least-privilege layout, by the unprivileged ACME
user). Printed raw, a newline in one forges a line of its own in root's journal
(``[postfix] published: ...``) and an ESC byte drives the terminal. Every line
either command prints or logs goes through :func:`escape` (by :func:`say`):

- C0 controls, DEL and C1 controls as ``\\n``, ``\\r``, ``\\t`` or ``\\xNN``;
- bytes that were not UTF-8 (a file name read with ``surrogateescape``) as ``\\xNN``;
- the Unicode line and paragraph separators and the bidirectional overrides
  (which reorder what a terminal shows) as ``\\uNNNN``.
"""
from __future__ import annotations

import re
import sys
from typing import TextIO

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _one(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every character that could break or forge a line shown escaped."""
    return _UNSAFE.sub(_one, text)


def say(line: str, file: TextIO | None = None) -> None:
    """Print one line, escaped (stdout unless ``file``)."""
    print(escape(line), file=sys.stdout if file is None else file)
