"""Text from a run folder, made safe to print: a folder name, an override or a status that
someone else wrote can hold terminal escapes (ESC [ 2 J clears the screen, ESC ] 0 sets the
window title), a bell, right-to-left overrides that reorder what is shown, or a newline
that fakes a row of a table. Each such character is printed as its escape (\\x1b, \\u202e,
\\n) instead; expkit's own output uses none of them but newlines and tabs."""

from __future__ import annotations

import unicodedata


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _unsafe(ch: str, keep: str) -> bool:
    # Cc: control characters (C0, DEL, C1); Cf: format characters (bidi overrides, zero width);
    # Cs: lone surrogates (a file name that is not UTF-8), which printing cannot encode
    return ch not in keep and unicodedata.category(ch) in ("Cc", "Cf", "Cs")


def printable(text: object, keep: str = "\n\t") -> str:
    """`text` with every control and format character but those in `keep` escaped. A value
    going into one line or one cell: keep="" (its newlines escaped too)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(_escape(ch) if _unsafe(ch, keep) else ch for ch in text)


def cell(text: object) -> str:
    """A value for one cell of a table or one line of a report."""
    return printable(text, keep="")
