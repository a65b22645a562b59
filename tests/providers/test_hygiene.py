"""Model text hygiene: reasoning, terminal control, line ends, and chunk independence."""

from __future__ import annotations

import random

import pytest

from critifusion_tui.providers.hygiene import StreamCleaner, clean_model_text

CASES = [
    # reasoning
    ("<think>plan the tags</think>\n\nfox, snow", "fox, snow"),
    ("<THINK>\nmulti\nline\n</Think>answer", "answer"),
    ("  \n<think>never closed, all of this is reasoning", ""),
    ("<think>a</think> <think>b never closed", ""),
    ("Answer first <think>unclosed in the middle stays", "Answer first <think>unclosed in the middle stays"),
    ("keep <think>hidden</think> this", "keep  this"),
    ("<think>a<think>nested</think>rest", "rest"),
    ("stray</think> close tag", "stray close tag"),
    ("a < b and c <thin k> d", "a < b and c <thin k> d"),
    ("<thinking>is not the tag</thinking>", "<thinking>is not the tag</thinking>"),
    # escape sequences
    ("\x1b[1;31mred\x1b[0m text", "red text"),
    ("\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"),
    ("title\x1b]0;pwned\x07 after", "title after"),
    ("link \x1b]8;;http://evil\x1b\\here\x1b]8;;\x1b\\", "link here"),
    ("dcs\x1bPq#0;2;0;0;0\x1b\\ done", "dcs done"),
    ("keys\x1b(Bcharset \x1b7saved\x1b8", "keyscharset saved"),
    ("c1 \x9b2Jcsi and \x9d0;t\x9cosc", "c1 csi and osc"),
    ("unterminated \x1b]0;title to the end", "unterminated"),
    ("lone escape at end \x1b", "lone escape at end"),
    # control characters and line ends
    ("a\r\nb\rc\n", "a\nb\nc"),
    ("nul\x00 bel\x07 bs\x08 del\x7f tab\tkept", "nul bel bs del tab\tkept"),
    ("\n\n  padded  \n", "padded"),
    # Rich markup is data, not markup: it passes through untouched
    ("[bold red]x[/] and [link=http://a]b[/link]", "[bold red]x[/] and [link=http://a]b[/link]"),
]


@pytest.mark.parametrize(("raw", "clean"), CASES)
def test_clean_model_text(raw: str, clean: str) -> None:
    assert clean_model_text(raw) == clean


@pytest.mark.parametrize(("raw", "clean"), CASES)
def test_every_split_point_gives_the_same_text(raw: str, clean: str) -> None:
    # Two chunks, cut at every position: tags and escape sequences split anywhere.
    for cut in range(len(raw) + 1):
        cleaner = StreamCleaner()
        streamed = cleaner.feed(raw[:cut]) + cleaner.feed(raw[cut:]) + cleaner.finish()
        assert streamed == clean, (cut, raw[:cut], raw[cut:])


def test_one_character_at_a_time() -> None:
    raw = "<think>x</think>\r\n\x1b[32mgreen\x1b[0m, [b]tag[/b]\r\n"
    cleaner = StreamCleaner()
    pieces = [cleaner.feed(ch) for ch in raw] + [cleaner.finish()]
    assert "".join(pieces) == clean_model_text(raw) == "green, [b]tag[/b]"
    assert all("\x1b" not in p and "think" not in p for p in pieces)


def test_partial_tag_and_escape_are_held_back_until_complete() -> None:
    cleaner = StreamCleaner()
    assert cleaner.feed("Hello <thi") == "Hello"  # "<thi" may begin a tag; the space waits too
    assert cleaner.feed("s is fine") == " <this is fine"
    assert cleaner.feed(" \x1b[3") == ""  # the space waits for more text, the CSI for its end
    assert cleaner.feed("1mred") == " red"
    assert cleaner.finish() == ""


# Fragments that make the state machines work: tags, halves of tags, escape pieces, line ends.
ALPHABET = [
    "<think>",
    "</think>",
    "<THINK>",
    "</Think>",
    "<thi",
    "nk>",
    "</",
    "<",
    ">",
    "think",
    "\x1b",
    "\x1b[",
    "31m",
    "\x1b]",
    "0;t",
    "\x07",
    "\x1b\\",
    "\x9b",
    "\x9c",
    "\x9d",
    "\r",
    "\n",
    "\r\n",
    "\t",
    " ",
    "  ",
    "a",
    "word",
    "[bold]",
    "[/]",
    "\x00",
    "\x7f",
    "é",
]


def test_random_texts_and_chunkings_agree() -> None:
    rng = random.Random(1234)
    for _ in range(600):
        raw = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 25)))
        whole = clean_model_text(raw)
        cleaner = StreamCleaner()
        out, i = [], 0
        while i < len(raw):
            step = rng.randint(1, 6)
            out.append(cleaner.feed(raw[i : i + step]))
            i += step
        out.append(cleaner.finish())
        assert "".join(out) == whole, repr(raw)
        # Whatever came in, what comes out is safe to put on a terminal.
        assert not any(ord(c) < 32 and c not in "\n\t" for c in whole)
        assert not any(0x7F <= ord(c) <= 0x9F for c in whole)
        assert whole == whole.strip()


def test_long_reasoning_is_cheap() -> None:
    raw = "<think>" + "step. " * 50_000 + "</think>final"
    cleaner = StreamCleaner()
    out = "".join(cleaner.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + cleaner.finish()
    assert out == "final"
