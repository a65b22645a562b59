"""Text from a model, a user or a file, made safe to put on screen.

Everything a widget shows that it did not write itself goes through `safe_text`: terminal escape
sequences and control characters are removed (newline and tab stay; a CR becomes a line end) and
the result is a `rich.text.Text`, so square brackets are never read as Rich or Textual markup.

The engine already cleans model text (providers.hygiene); this is the display's own guard, for
errors, paths and anything else that reaches a widget by another road.
"""

from __future__ import annotations

import re

from rich.text import Text

__all__ = ["safe_str", "safe_text"]

# A control character anywhere means the slow path; most text has none.
_ANY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SEQUENCES = re.compile(
    r"""
      (?:\x1b\[|\x9b) [0-?]* [\x20-/]* [@-~]?                   # CSI ... final byte
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]) .*? (?:\x07|\x1b\\|\x9c|\Z)  # OSC/DCS/SOS/PM/APC
    | \x1b [\x20-/]* [0-~]?                                      # other ESC sequences
    """,
    re.VERBOSE | re.DOTALL,
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def safe_str(text: str) -> str:
    """`text` without escape sequences or control characters (newline and tab are kept)."""
    if not _ANY_CONTROL.search(text):
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def safe_text(text: str, style: str = "") -> Text:
    """`text` as plain `rich.text.Text`: never parsed as markup, no terminal control."""
    return Text(safe_str(text), style=style)
