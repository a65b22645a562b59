"""Make model text safe to parse and show: no hidden reasoning, no terminal control.

A model's answer is data from the network. Before anything parses it or puts it on screen it
passes through one cleaner that

1. normalises line ends (CRLF and a lone CR become LF: a bare CR would let text overwrite the
   line it sits on),
2. removes terminal escape sequences: CSI (``ESC [`` ... final byte), OSC / DCS / SOS / PM / APC
   strings (terminated by BEL or ST, or cut off at the end of the text), two- and three-byte
   ``ESC`` sequences, and their 8-bit C1 forms (U+009B CSI, U+009D OSC, ...),
3. removes every other control character except newline and tab,
4. removes reasoning: ``<think>...</think>`` blocks (case-insensitive, across lines), a stray
   ``</think>`` tag, and an unclosed ``<think>`` that starts the answer (everything from it to
   the end). An unclosed ``<think>`` in the middle of an answer is kept as text: there is no
   reason to believe the rest is reasoning,
5. strips white space at both ends.

Rich markup such as ``[bold]`` is left alone on purpose: it is plain data here, and the display
shows model text as ``rich.text.Text``, never as markup.

One character-driven state machine does all of it, for a whole text and for a stream alike, so
a stream cut into any chunks yields exactly ``clean_model_text(whole)``: a tag or an escape
sequence split across two chunks is held back until it is complete.
"""

from __future__ import annotations

import re

ESC = "\x1b"
BEL = "\x07"
_C1_CSI, _C1_ST = "\x9b", "\x9c"
# 8-bit introducers of a control *string* (DCS, SOS, OSC, PM, APC): swallowed up to ST/BEL.
_C1_STRINGS = frozenset("\x90\x98\x9d\x9e\x9f")
# After ESC, these open a control string (DCS P, SOS X, OSC ], PM ^, APC _).
_ESC_STRINGS = frozenset("PX]^_")

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# re.ASCII: the same ASCII-only case folding as _ci_startswith below.
_CLOSE_RE = re.compile(re.escape(CLOSE_TAG), re.IGNORECASE | re.ASCII)


def clean_model_text(text: str) -> str:
    """The cleaned form of one whole answer (see the module docstring for the rules)."""
    cleaner = StreamCleaner()
    return cleaner.feed(text) + cleaner.finish()


class StreamCleaner:
    """Incremental :func:`clean_model_text`: ``feed`` each delta, then ``finish`` once.

    The concatenation of everything returned equals ``clean_model_text`` of the concatenated
    input, however the input was chunked. Text that might still change meaning (a partial
    escape sequence or tag, an open ``<think>`` block, trailing white space) is held back.
    """

    def __init__(self) -> None:
        self._controls = _ControlFilter()
        self._think = _ThinkFilter()

    def feed(self, chunk: str) -> str:
        return self._think.feed(self._controls.feed(chunk))

    def finish(self) -> str:
        return self._think.feed(self._controls.finish()) + self._think.finish()


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


class _ControlFilter:
    """Steps 1 to 3: line ends, escape sequences, control characters."""

    # States of the escape-sequence parser.
    TEXT, CR, ESC_SEEN, ESC_INTERMEDIATE, CSI, STRING, STRING_ESC = range(7)

    def __init__(self) -> None:
        self._state = self.TEXT

    def feed(self, chunk: str) -> str:
        # Fast path: plain printable text in the plain state needs no per-character work.
        if self._state == self.TEXT and not _CONTROL.search(chunk):
            return chunk
        out: list[str] = []
        for ch in chunk:
            self._step(ch, out)
        return "".join(out)

    def finish(self) -> str:
        # A lone CR at the very end is still a line end; an unfinished sequence is dropped.
        out = "\n" if self._state == self.CR else ""
        self._state = self.TEXT
        return out

    def _step(self, ch: str, out: list[str]) -> None:
        state = self._state
        if state == self.CR:
            self._state = self.TEXT
            out.append("\n")
            if ch == "\n":
                return  # CRLF: one line end
            state = self.TEXT
        if state == self.TEXT:
            self._text(ch, out)
        elif state == self.ESC_SEEN:
            if ch == "[":
                self._state = self.CSI
            elif ch in _ESC_STRINGS:
                self._state = self.STRING
            elif "\x20" <= ch <= "\x2f":
                self._state = self.ESC_INTERMEDIATE  # nF sequence, e.g. ESC ( B
            elif "\x30" <= ch <= "\x7e":
                self._state = self.TEXT  # two-byte sequence, e.g. ESC 7, ESC c
            else:
                # Not a sequence after all: drop the ESC, read the character afresh.
                self._state = self.TEXT
                self._text(ch, out)
        elif state == self.ESC_INTERMEDIATE:
            if "\x20" <= ch <= "\x2f":
                return
            self._state = self.TEXT
            if not "\x30" <= ch <= "\x7e":
                self._text(ch, out)
        elif state == self.CSI:
            if "\x30" <= ch <= "\x3f" or "\x20" <= ch <= "\x2f":
                return  # parameter and intermediate bytes
            self._state = self.TEXT
            if not "\x40" <= ch <= "\x7e":
                # A malformed sequence ends at the first byte that cannot belong to it.
                self._text(ch, out)
        elif state == self.STRING:
            if ch in (BEL, _C1_ST):
                self._state = self.TEXT
            elif ch == ESC:
                self._state = self.STRING_ESC
        elif state == self.STRING_ESC:
            # ESC \ is ST; any other ESC inside the string is swallowed with the string.
            self._state = self.TEXT if ch == "\\" else self.STRING

    def _text(self, ch: str, out: list[str]) -> None:
        if not _is_control(ch) or ch in "\n\t":
            out.append(ch)
        elif ch == "\r":
            self._state = self.CR
        elif ch == ESC:
            self._state = self.ESC_SEEN
        elif ch == _C1_CSI:
            self._state = self.CSI
        elif ch in _C1_STRINGS:
            self._state = self.STRING
        # Any other control character is dropped.


def _ci_startswith(text: str, prefix: str) -> bool:
    """ASCII-only case-insensitive ``text.startswith(prefix)`` (``prefix`` is lower case).

    Deliberately not ``str.lower()``: some characters change length when lowered, and the
    Kelvin sign lowers to "k"; neither should make a tag.
    """
    if len(text) < len(prefix):
        return False
    return all(c == p or (c.isascii() and c.lower() == p) for c, p in zip(text, prefix))


class _ThinkFilter:
    """Steps 4 and 5: reasoning blocks and the outer white space."""

    NORMAL, LEADING_THINK, INNER_THINK = range(3)

    def __init__(self) -> None:
        self._mode = self.NORMAL
        self._pending = ""  # NORMAL: a possible start of a tag, held back
        self._held = ""  # INNER_THINK: the block so far, shown verbatim if it never closes
        self._window = ""  # LEADING_THINK: the last few characters, to find the closing tag
        self._started = False  # a non-space character has been emitted
        self._spaces = ""  # trailing white space, emitted only when more text follows

    def feed(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if self._mode != self.NORMAL:
                # Inside a block: jump to its closing tag, if it is in sight.
                i = n - len(self._skip_block(text[i:]))
                continue
            if not self._pending:
                # Nothing is held: everything before the next "<" cannot be a tag.
                cut = text.find("<", i)
                if cut < 0:
                    self._emit(text[i:], out)
                    break
                self._emit(text[i:cut], out)
                i = cut
            self._step(text[i], out)
            i += 1
        return "".join(out)

    def _skip_block(self, text: str) -> str:
        """Consume ``text`` inside a think block; return what follows its closing tag."""
        seen = self._window + text
        match = _CLOSE_RE.search(seen)
        if match is None:
            # Keep just enough to recognise a closing tag split across chunks.
            self._window = seen[-(len(CLOSE_TAG) - 1) :]
            if self._mode == self.INNER_THINK:
                self._held += text
            return ""
        used = match.end() - len(self._window)  # characters of ``text`` up to the tag's end
        self._mode, self._window, self._held = self.NORMAL, "", ""
        return text[used:]

    def finish(self) -> str:
        out: list[str] = []
        if self._mode == self.NORMAL:
            self._emit(self._pending, out)
        elif self._mode == self.INNER_THINK:
            self._emit(self._held, out)  # unclosed in mid-answer: keep it as text
        # LEADING_THINK never closed: the whole rest was reasoning; drop it.
        # Trailing white space (self._spaces) is dropped with the reset.
        self.__init__()  # type: ignore[misc]  # ready for another answer
        return "".join(out)

    def _step(self, ch: str, out: list[str]) -> None:
        # Emit from the front until what is left could still be (or begin) a tag.
        pending = self._pending + ch
        start = 0
        while start < len(pending) and not _could_begin_tag(pending[start:]):
            start += 1
        self._emit(pending[:start], out)
        rest, self._pending = pending[start:], ""
        if _is_tag(rest, OPEN_TAG):
            if self._started:
                self._mode, self._held, self._window = self.INNER_THINK, rest, ""
            else:
                self._mode, self._window = self.LEADING_THINK, ""
        elif not _is_tag(rest, CLOSE_TAG):  # a stray closing tag is dropped
            self._pending = rest

    def _emit(self, text: str, out: list[str]) -> None:
        """Pass text on without leading white space; hold trailing white space back."""
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
        body = text.rstrip()
        if not body:
            self._spaces += text
            return
        out.append(self._spaces + body)
        self._spaces = text[len(body) :]


def _could_begin_tag(text: str) -> bool:
    return any(len(text) <= len(tag) and _ci_startswith(text, tag[: len(text)]) for tag in (OPEN_TAG, CLOSE_TAG))


def _is_tag(text: str, tag: str) -> bool:
    return len(text) == len(tag) and _ci_startswith(text, tag)


# --- Text from outside that is not an answer ------------------------------------------------
# The same cleaner serves every text that comes from outside the program: an answer's strings
# after JSON decoding (``"\u001b"`` in JSON is an escape only once decoded), model names from
# a catalogue, error bodies, model references and prompts read from files or run folders.


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character other than newline and tab."""
    return any(_is_control(ch) and ch not in "\n\t" for ch in text)


def clean_outside(text: object, *, limit: int | None = None) -> str:
    """Outside text as one clean line: no escapes or control characters, white space folded,
    at most ``limit`` characters (cut with an ellipsis)."""
    line = " ".join(clean_model_text(str(text)).split())
    if limit is not None and len(line) > limit:
        line = line[: max(0, limit - 1)] + "…"
    return line


def clean_decoded(value: object) -> object:
    """A decoded JSON value with every string in it cleaned (keys too)."""
    if isinstance(value, str):
        return clean_model_text(value)
    if isinstance(value, list):
        return [clean_decoded(v) for v in value]
    if isinstance(value, dict):
        return {clean_model_text(k) if isinstance(k, str) else k: clean_decoded(v) for k, v in value.items()}
    return value
