"""Reading a model's answer the way a person would, before any stage uses it.

Small local models answer in shapes the method never asked for: they repeat our instructions,
copy the example's ``"..."`` placeholder, wrap JSON in prose or code, write sentences instead
of tags, label every line. Each reader here takes one stage's answer and returns a
:class:`Reading`: what is usable in it, a ``problem`` when nothing is (the answer is then
treated like a failed model: marked unusable with that reason, the stage goes on with the
others), and ``notes`` for what was dropped or is out of the asked range (shown and recorded,
the answer still used).

Pure functions over strings, like ``prompts.py``: no I/O, no model calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from critifusion_tui.engine.prompts import prose_lines, split_sentences, split_tags, strip_emphasis
from critifusion_tui.providers.hygiene import clean_decoded

# Stage 1 asks for 16 to 26 tags; stage 2 for 3 to 6 components (SPEC 1, 2).
TAGS_RANGE = (16, 26)
COMPONENTS_RANGE = (3, 6)
MAX_ISSUES = 5
# A tag is a short phrase. Past this many words it is prose, whatever its punctuation.
MAX_TAG_WORDS = 12
# Fewer words than this in common with our instructions is coincidence ("sharp focus" is both
# an instruction and a good tag); this many in a row is an echo.
ECHO_MIN_WORDS = 4
# What the instruction's own example holds, and what small models copy from it or from a
# JSON schema, instead of content.
PLACEHOLDERS = frozenset(
    {
        "",
        "...",
        "…",
        "string",
        "str",
        "text",
        "tag",
        "tags",
        "component",
        "components",
        "<component>",
        "<tag>",
        "item",
        "example",
        "n/a",
        "none",
        "null",
        "todo",
        "xxx",
    }
)

_WORD = re.compile(r"\w+", re.UNICODE)
# Sentence punctuation followed by more text: "The fox sits. It is red" is two sentences.
_SENTENCE_BREAK = re.compile(r"[.!?。！？]\s*\S")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
# A fenced code block and its language word (```python ... ```).
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_JSON_LANGS = frozenset({"", "json", "json5", "jsonc", "javascript", "js"})
_TEXT_LANGS = frozenset({"", "text", "txt", "plaintext", "markdown", "md", "csv"})


# The shapes asked for as JSON schemas, for backends that constrain output to one (Ollama's
# ``format``, OpenAI-compatible ``response_format``): small models then answer in shape.
COMPONENTS_SCHEMA = {
    "type": "object",
    "properties": {"components": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 6}},
    "required": ["components"],
}
CRITIQUE_SCHEMA = {
    "type": "object",
    "properties": {
        "issues": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_ISSUES},
        "refined": {"type": "string"},
        "alignment": {"type": "number", "minimum": 0, "maximum": 100},
    },
    "required": ["issues", "refined"],
}


@dataclass(frozen=True)
class Reading:
    """What one answer gave. ``problem`` set: nothing in it can be used, and why."""

    items: tuple[str, ...] = ()  # tags, components, or a critic's issues
    refined: str = ""  # a critique's refined prompt
    problem: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def usable(self) -> bool:
        return self.problem is None


# --- echoes of our own instructions ---------------------------------------------------------


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class EchoGuard:
    """Tells an answer that repeats our instructions from one that answers them.

    ``instructions`` is the fixed wording we sent (templates without their placeholders);
    ``data`` is what we filled in (the prompt, seed tags, other models' answers). A piece of
    the answer echoes when ECHO_MIN_WORDS or more of its words appear in a row in the
    instructions and not in the data: a prompt that happens to share words with the
    instructions is the user's, not an echo.
    """

    def __init__(self, instructions: Iterable[str], data: Iterable[str] = ()) -> None:
        self._instructions = [" " + " ".join(_words(t)) + " " for t in instructions]
        self._data = " " + " | ".join(" ".join(_words(t)) for t in data) + " "

    def echo_in(self, piece: str) -> str | None:
        """The longest run of words of ``piece`` that repeats the instructions, or None."""
        words = _words(piece)
        best: str | None = None
        for start in range(len(words)):
            for end in range(len(words), start + ECHO_MIN_WORDS - 1, -1):
                run = " ".join(words[start:end])
                if best is not None and len(run) <= len(best):
                    break
                needle = f" {run} "
                if needle not in self._data and any(needle in t for t in self._instructions):
                    best = run
                    break
        return best


NO_GUARD = EchoGuard(())


def _echo_problem(echo: str, what: str = "it") -> str:
    return f'{what} repeats our instructions ("{_short(echo)}") instead of answering'


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_placeholder(text: str) -> bool:
    """Whether ``text`` is a placeholder rather than content ("...", "string", "<tag>")."""
    stripped = text.strip().strip("\"'`*").strip()
    return stripped.lower() in PLACEHOLDERS or not _WORD.search(stripped)


def word_count(text: str) -> int:
    """Words in ``text``; CJK text has no spaces, so two of its characters count as a word."""
    cjk = len(_CJK.findall(text))
    return len(_WORD.findall(_CJK.sub(" ", text))) + (cjk + 1) // 2


def is_prose(tag: str) -> bool:
    """Whether a "tag" is really a sentence: too many words, or sentences inside it."""
    return word_count(tag) > MAX_TAG_WORDS or bool(_SENTENCE_BREAK.search(tag))


def _count_note(kind: str, count: int, asked: tuple[int, int]) -> str | None:
    low, high = asked
    if low <= count <= high:
        return None
    return f"{count} {kind} (asked for {low} to {high})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- stage 1: a tag list ----------------------------------------------------------------------


def _without_code(text: str) -> str:
    """The answer with code blocks in a programming language removed (a fenced block of plain
    text or of no language keeps its content: models fence their tag lists too)."""
    return _FENCE.sub(lambda m: m.group(0) if m.group(1).lower() in _TEXT_LANGS else "\n", text)


def read_tags(
    text: str, guard: EchoGuard = NO_GUARD, *, prompt: str = "", asked: tuple[int, int] = TAGS_RANGE
) -> Reading:
    """A tag-list answer (SPEC 1): comma-separated short phrases.

    Split as ``split_tags`` does (every separator, labels on every line, emphasis, quotes);
    code blocks in a programming language are skipped; a JSON object with a "tags" list is
    read as that list. Placeholders and sentences are dropped (noted), except the user's own
    `prompt` or a part of it, however long. Any tag that repeats our instructions makes the
    whole answer unusable: a model that echoes has not answered.
    """
    prompt_key = " ".join(_words(prompt))
    from_json = _json_list(text, ("tags", "tag_list", "keywords"))
    pieces = list(from_json) if from_json is not None else split_tags(_without_code(text))
    tags: list[str] = []
    prose = placeholders = 0
    for piece in pieces:
        if not isinstance(piece, str):
            continue
        echo = guard.echo_in(piece)
        if echo:
            return Reading(tuple(pieces), problem=_echo_problem(echo))
        if is_placeholder(piece):
            placeholders += 1
        elif is_prose(piece) and not (prompt_key and " ".join(_words(piece)) in prompt_key):
            prose += 1
        else:
            tags.append(piece)
    notes = []
    if prose:
        notes.append(f"{_plural(prose, 'sentence')} dropped (not tags)")
    if placeholders:
        notes.append(f"{_plural(placeholders, 'placeholder')} dropped")
    if not tags:
        if prose:
            return Reading(problem="it is prose, not a comma-separated tag list", notes=tuple(notes))
        return Reading(problem="it holds no tags", notes=tuple(notes))
    count = _count_note("tags", len(tags), asked)
    if count:
        notes.append(count)
    return Reading(tuple(tags), notes=tuple(notes))


# --- stage 1 in the prose style: a short description ---------------------------------------

# The prose style asks for two or three sentences of at most 60 words.
PROSE_MAX_WORDS = 60


def read_prose(
    text: str, guard: EchoGuard = NO_GUARD, *, prompt: str = "", max_words: int = PROSE_MAX_WORDS
) -> Reading:
    """A prose answer (the "prose" instructions style): one short description in sentences.

    Sentences are the answer here, not a flaw: labels on every line, list markers, emphasis,
    enclosing quotes and code in a programming language are removed, and placeholder
    sentences dropped (noted). A sentence that repeats our instructions makes the answer
    unusable, as in the tag style. A tag list is accepted too (a model may still answer in
    tags). ``items`` are the sentences, ``refined`` the description they make.
    """
    sentences = split_sentences(" ".join(prose_lines(_without_code(text))))
    kept: list[str] = []
    placeholders = 0
    for sentence in sentences:
        echo = guard.echo_in(sentence)
        if echo:
            return Reading(tuple(sentences), problem=_echo_problem(echo))
        if is_placeholder(sentence.rstrip(".!?。")):
            placeholders += 1
        else:
            kept.append(sentence)
    notes = [f"{_plural(placeholders, 'placeholder')} dropped"] if placeholders else []
    if not kept:
        return Reading(problem="it holds no description", notes=tuple(notes))
    description = " ".join(kept)
    words = word_count(description)
    if words > max_words:
        notes.append(f"{words} words (asked for at most {max_words})")
    return Reading(tuple(kept), refined=description, notes=tuple(notes))


# --- stage 2: a components object -------------------------------------------------------------


def _json_values(text: str) -> Iterable[object]:
    """Every JSON value a person would read as the answer: fenced JSON blocks first, then the
    whole text, then each object that starts at a "{" outside code in another language."""
    decoder = json.JSONDecoder()
    for match in _FENCE.finditer(text):
        if match.group(1).lower() in _JSON_LANGS:
            try:
                yield clean_decoded(json.loads(match.group(2)))
            except (ValueError, RecursionError):
                pass  # not JSON after all: the next reading below may still find the answer
    try:
        yield clean_decoded(json.loads(text))
    except (ValueError, RecursionError):
        pass  # prose around the JSON: look for objects inside it below
    outside = _FENCE.sub(lambda m: m.group(0) if m.group(1).lower() in _JSON_LANGS else "\n", text)
    index = outside.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(outside, index)
        except (ValueError, RecursionError):
            index = outside.find("{", index + 1)
            continue
        yield clean_decoded(value)
        index = outside.find("{", end)


def _json_list(text: str, keys: tuple[str, ...]) -> list | None:
    """The first list under one of ``keys`` (any case) in the answer's JSON objects, or None."""
    for value in _json_values(text):
        if isinstance(value, dict):
            lowered = {str(k).lower(): v for k, v in value.items()}
            for key in keys:
                found = lowered.get(key)
                if isinstance(found, list):
                    return found
    return None


_NAME_KEYS = ("name", "component", "entity", "object", "label", "title")
_DESCRIPTION_KEYS = ("description", "details", "detail", "text", "relation", "value")


def component_text(item: object) -> str:
    """A component as text: a string as is; an object from its name and description."""
    if isinstance(item, str):
        return " ".join(strip_emphasis(item).split())
    if not isinstance(item, dict):
        return ""
    lowered = {str(k).lower(): v for k, v in item.items()}
    name = next((str(lowered[k]).strip() for k in _NAME_KEYS if isinstance(lowered.get(k), str)), "")
    description = next((str(lowered[k]).strip() for k in _DESCRIPTION_KEYS if isinstance(lowered.get(k), str)), "")
    if name and description and name.lower() not in description.lower():
        return f"{name}: {description}"
    return " ".join((description or name).split())


def read_components(text: str, guard: EchoGuard = NO_GUARD, *, asked: tuple[int, int] = COMPONENTS_RANGE) -> Reading:
    """A components answer (SPEC 2): a JSON object with a "components" list of strings.

    The object may sit in a fenced JSON block or in prose; objects inside code in another
    language and objects without a "components" list (a JSON schema, say) are not it. Items
    given as objects are read from their name and description. Placeholders ("...", "string")
    and repeats are dropped; more than six are cut to six; fewer than three is noted.
    """
    items = _json_list(text, ("components",))
    if items is None:
        return Reading(problem='it holds no JSON object with a "components" list')
    components: list[str] = []
    seen: set[str] = set()
    placeholders = 0
    for item in items:
        value = component_text(item)
        if is_placeholder(value):
            placeholders += 1 if isinstance(item, str) else 0
            continue
        echo = guard.echo_in(value)
        if echo:
            return Reading(tuple(components), problem=_echo_problem(echo))
        if value.lower() not in seen:
            seen.add(value.lower())
            components.append(value)
    notes = []
    if placeholders:
        notes.append(f"{_plural(placeholders, 'placeholder')} dropped")
    if not components:
        if placeholders:
            return Reading(problem="it holds only the instruction's placeholder, no components", notes=tuple(notes))
        return Reading(problem="its components list is empty", notes=tuple(notes))
    low, high = asked
    if len(components) > high:
        notes.append(f"{len(components)} components, cut to {high}")
        components = components[:high]
    elif len(components) < low:
        notes.append(_count_note("components", len(components), asked) or "")
    return Reading(tuple(components), notes=tuple(n for n in notes if n))


# --- stage 4: a critique ----------------------------------------------------------------------


def extract_tag(text: str, tag: str) -> str | None:
    """The content of `<tag>...</tag>`, also when the model HTML-escaped the brackets."""
    pattern = re.compile(rf"<\s*{tag}\s*>(.*?)<\s*/\s*{tag}\s*>", re.S | re.I)
    for candidate in (text, text.replace("&lt;", "<").replace("&gt;", ">")):
        match = pattern.search(candidate)
        if match:
            return match.group(1).strip()
    return None


_BULLET = re.compile(r"^\s*(?:[-*•·+–—]|\d{1,2}[.)])\s*")
_LABEL = re.compile(r"^\s*(?:refined(?:\s+prompt)?|prompt|issues?)\s*:\s*", re.I)


def issue_lines(text: str, limit: int = MAX_ISSUES) -> list[str]:
    """Issues split on newlines and semicolons, bullets stripped, at most `limit`."""
    lines = []
    for part in re.split(r"[\n;]+", text):
        line = strip_emphasis(_BULLET.sub("", part)).strip()
        if line:
            lines.append(line)
    return lines[:limit]


def clean_refined(text: str) -> str:
    """A refined prompt without a label, emphasis, enclosing quotes or line breaks."""
    text = strip_emphasis(_LABEL.sub("", text.strip()))
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“`":
        text = text[1:-1].strip()
    return text


def read_critique(text: str, guard: EchoGuard = NO_GUARD, *, need_refined: bool = False) -> Reading:
    """A critique (SPEC 4): ``<issues>`` and ``<refined>``.

    Unusable when neither tag is there, when both hold only the example's placeholder, or when
    the refined prompt repeats our instructions (an echoed "<refined>one prompt of at most 70
    words...</refined>" must never become the refinement's subject). Issue lines that are
    placeholders or echoes are dropped. ``need_refined``: the aggregator's answer is only
    usable with a refined prompt.
    """
    issues_text = extract_tag(text, "issues")
    refined_text = extract_tag(text, "refined")
    if issues_text is None and refined_text is None:
        # Constrained output (CRITIQUE_SCHEMA) answers the same as JSON.
        found = next((v for v in _json_values(text) if isinstance(v, dict) and "refined" in v), None)
        if found is None:
            return Reading(problem="it holds neither <issues> nor <refined>")
        raw_issues = found.get("issues")
        issues_text = "\n".join(str(i) for i in raw_issues) if isinstance(raw_issues, list) else str(raw_issues or "")
        refined_text = str(found.get("refined") or "")
    refined = clean_refined(refined_text or "")
    if is_placeholder(refined):
        refined = ""
    if refined:
        echo = guard.echo_in(refined)
        if echo:
            return Reading(problem=_echo_problem(echo, "its <refined>"))
    issues: list[str] = []
    dropped = 0
    for line in issue_lines(issues_text or "", limit=100):
        if is_placeholder(line) or guard.echo_in(line):
            dropped += 1
        else:
            issues.append(line)
    notes = [f"{_plural(dropped, 'issue line')} dropped (placeholder or echo)"] if dropped else []
    if len(issues) > MAX_ISSUES:
        notes.append(f"{len(issues)} issues, cut to {MAX_ISSUES}")
        issues = issues[:MAX_ISSUES]
    if need_refined and not refined:
        return Reading(tuple(issues), problem="it holds no usable <refined>", notes=tuple(notes))
    if not refined and not issues:
        return Reading(problem="its <issues> and <refined> hold only placeholders", notes=tuple(notes))
    return Reading(tuple(issues), refined=refined, notes=tuple(notes))
