"""Tag rules of CritiFusion (SPEC.md sections 1 and 5): presets, style hints, splitting,
de-duplication, bucket ordering, the quality floor, and the merge of a critique with tags.

Everything here is a pure function over strings: no I/O, no model calls. The only dependency
is the CLIP token counter, for the final CLIP-77 truncation.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

from critifusion_tui.engine.tokens import CLIP_MAX_TOKENS, clip77_strict, count_tokens

# The presets are data that the configuration validates too; they live in a module that
# imports nothing, and stay importable from here (this module is the method's public API).
from critifusion_tui.presets import DEFAULT_NEGATIVE, DEFAULT_PRESET, PRESETS, QUALITY_FLOOR, Preset

__all__ = [
    "BUCKETS",
    "DEFAULT_NEGATIVE",
    "DEFAULT_PRESET",
    "PRESETS",
    "QUALITY_FLOOR",
    "STYLE_RULES",
    "Preset",
    "UnknownPresetError",
    "bucket_of",
    "cleanup_commas",
    "dedup_keep_order",
    "fallback_tags",
    "fit_tags",
    "get_preset",
    "merge_critique_with_tags",
    "negative_tags",
    "order_tags",
    "positive_prompt",
    "postprocess_tags",
    "refinement_prompt",
    "seed_tags",
    "split_outside_quotes",
    "split_tags",
    "strip_emphasis",
    "style_hints",
    "tag_key",
]


# --------------------------------------------------------------------------------------------
# Presets, quality floor, default negative
# --------------------------------------------------------------------------------------------


class UnknownPresetError(KeyError, ValueError):
    """A preset name that is not in PRESETS. Catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError's default str() would quote the whole message
        return str(self.args[0]) if self.args else ""


def get_preset(name: str | Preset) -> Preset:
    """The preset called `name` (a Preset passes through unchanged)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise UnknownPresetError(f"unknown tag preset {name!r}; known presets: {known}") from None


# --------------------------------------------------------------------------------------------
# Style hints
# --------------------------------------------------------------------------------------------


def _words(*words: str) -> str:
    # Whole words with an optional plural "s". The reference binds \b only to the first and last
    # alternative of a row (a precedence slip), so "toilet", "soil" or "profile" would trigger
    # painterly or cinematic hints; anchoring each word fixes that while "oil-painted",
    # "movies" or "neon-lit" still match.
    return r"\b(?:" + "|".join(words) + r")s?\b"


# (pattern on the lower-cased prompt, hints), checked in this order (SPEC 1, style hints).
STYLE_RULES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (
        # Exactly SPEC's first row: "photo", "photograph", "photoreal", "photo realistic",
        # "portrait", "realistic" as whole words; "photographer" and "photos" do not match.
        re.compile(r"\bphoto(?:graph|real| realistic)?\b|\bportrait\b|\brealistic\b"),
        ("photorealistic", "dslr look"),
    ),
    (
        re.compile(_words("painting", "oil", "canvas", "brush", "painterly")),
        ("painterly", "brush strokes"),
    ),
    (
        re.compile(_words("poster", "cinematic", "film", "movie")),
        ("cinematic composition", "matte painting"),
    ),
    (re.compile(_words("anime", "manga", "chibi", "kawaii")), ("clean line art", "illustration")),
    (re.compile(_words("watercolor")), ("watercolor",)),
    (re.compile(_words("cyberpunk", "neon")), ("neon lights", "cyberpunk")),
)
_MAX_STYLE_HINTS = 2


def style_hints(prompt: str) -> list[str]:
    """At most two style hints for `prompt`, rows in table order, both hints of a row in order."""
    lowered = prompt.lower()
    hints: list[str] = []
    for pattern, row_hints in STYLE_RULES:
        if len(hints) >= _MAX_STYLE_HINTS:
            break
        if pattern.search(lowered):
            for hint in row_hints:
                if len(hints) < _MAX_STYLE_HINTS and hint not in hints:
                    hints.append(hint)
    return hints


# --------------------------------------------------------------------------------------------
# Splitting, de-duplication, ordering, commas
# --------------------------------------------------------------------------------------------

# A list marker at the start of a line: "1.", "2)", "(3)", "-", "*", "•", "·", "+", "–", "—",
# followed by white space. "8k" or "3.5mm" are untouched (no space after the marker).
_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.)]|[-*•·+–—])\s+")
# A markdown heading ("## Tags"): a title over the answer, never part of it.
_HEADING = re.compile(r"^\s*#{1,6}\s+\S")
# A label at the start of a line, after an optional "Sure!": "Tags:", "Final merged tag list:",
# "Positive prompt:", "Refined:", "Output:", "Here are the tags:" (up to three words before a
# known label noun, or any short "here is/are ..." sentence), optionally in markdown bold; also
# the labels of our own user messages ("Idea:", "Reply:", "Seed tags:", "Description:"), which
# small models copy. Checked on every line: a model that writes "Idea: ..." on one line and
# "Tags: ..." on the next has labelled both. "style: anime" is not a label (no label noun).
_LEAD_LABEL = re.compile(
    r"""^\s*(?:(?:sure|okay|ok|certainly)\b[!,.]?\s*)?\**\s*(?:
        here(?:'s|\s+is|\s+are)\b[^:\n]{0,80}
      | (?:[\w-]+\s+){0,3}
        (?:tags?|tag\s+list|lists?|prompts?|positives?|outputs?|answers?|results?|refined
          |idea|reply|description|keywords?|qualit(?:y|ies))
    )\s*\**\s*:(?:\s+|$)\**""",
    re.IGNORECASE | re.VERBOSE,
)
_CODE_FENCE = re.compile(r"^\s*```[\w-]*\s*$")
# Markdown emphasis around words: **bold**, __bold__, *italic*, _italic_ (the markers go, the
# words stay). Single markers need a non-space right inside them, so "a * b" is left alone.
_EMPHASIS = (
    re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"),
    re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])"),
    re.compile(r"(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=[^\s_])_(?![\w_])"),
)
# Quote-like characters stripped from either end of a tag when unpaired: a model that quotes
# its whole list leaves one on the first and one on the last tag.
_LOOSE_QUOTES = '"“”„«»`*'
# Single quotes are stripped only when they enclose the tag ('a cat'), so that a tag such as
# "the painters'" keeps its apostrophe.
_SINGLE_QUOTES = "'‘’"
# Quotes that hold a phrase together: separators inside them do not split ("a sign reading
# "OPEN 24/7, NO REFUNDS"" is one tag). Opening character -> closing character.
_QUOTE_PAIRS = {'"': '"', "“": "”", "„": "“", "«": "»", "「": "」", "『": "』"}
# Tag separators: the comma, the full-width comma and the ideographic comma (Japanese and
# Chinese lists use "、" where English uses ",").
TAG_SEPARATORS = ",，、"
_TAG_SEPARATORS = re.compile(f"[{TAG_SEPARATORS}]")
_WS = re.compile(r"\s+")


def split_outside_quotes(text: str, separators: str = TAG_SEPARATORS) -> list[str]:
    """`text` split on any of `separators`, except inside a quoted phrase.

    A quote that never closes holds nothing together: the text is then split everywhere, so
    one stray quote mark cannot glue a whole list into one tag.
    """
    parts: list[str] = []
    current: list[str] = []
    closing: str | None = None
    for ch in text:
        if closing is not None:
            current.append(ch)
            if ch == closing:
                closing = None
        elif ch in _QUOTE_PAIRS:
            current.append(ch)
            closing = _QUOTE_PAIRS[ch]
        elif ch in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    if closing is not None:
        return re.split(f"[{re.escape(separators)}]", text)
    return parts


def strip_emphasis(text: str) -> str:
    """Markdown emphasis removed, words kept: "a **red** fox" -> "a red fox"."""
    for pattern in _EMPHASIS:
        text = pattern.sub(lambda m: m.group(m.lastindex or 1), text)
    return text


def _unwrap_whole_quote(line: str) -> str:
    """A line that is one quoted span ("a cat, rim light, 8k") is a quoted list: unwrap it."""
    stripped = line.strip()
    if len(stripped) >= 2 and stripped[0] in _QUOTE_PAIRS:
        closing = _QUOTE_PAIRS[stripped[0]]
        inner = stripped[1:-1]
        if stripped[-1] == closing and closing not in inner and stripped[0] not in inner:
            return inner
    return line


def split_tags(text: str) -> list[str]:
    """Split a model's answer into tags: on commas and newlines, stripped, empties dropped.

    That is SPEC's rule; on top of it, for what models really answer:
    - HTML entities are unescaped (twice, for double-escaped text): "&amp;" -> "&";
    - lines that are only a code fence (```) are dropped;
    - on every line, a leading label is removed ("Tags:", "Final tag list:", "Positive
      prompt:", "Refined:", "Here are the tags:", and our own "Idea:", "Reply:", "Seed tags:");
    - markdown headings ("## Tags") are dropped, and a list marker at the start of a line is
      removed ("1. ", "2) ", "(3) ", "- ", "* ", "• ");
    - markdown emphasis is removed ("a **red** fox" -> "a red fox");
    - the full-width comma "，" and the ideographic comma "、" split like ",";
    - a quoted phrase is kept whole, commas and all ('a sign reading "OPEN, NO REFUNDS"'),
      while a line that is one quoted span is a quoted list and is split;
    - per tag: white-space runs become one space; unpaired quote characters (" “ ” „ « » `
      *) are stripped from both ends, paired ones when they enclose the whole tag and no
      comma needs them, single quotes (' ‘ ’) only when they enclose the tag; trailing
      periods and "…" are removed.
    Nothing else is touched: weights such as "(best quality:1.2)" and brackets stay.
    """
    text = html.unescape(html.unescape(text))
    tags: list[str] = []
    for line in text.splitlines():
        if _CODE_FENCE.match(line) or _HEADING.match(line):
            continue
        line = strip_emphasis(line)
        line = _LEAD_LABEL.sub("", line, count=1)
        line = _LIST_MARKER.sub("", line, count=1)
        line = _unwrap_whole_quote(line)
        for piece in split_outside_quotes(line):
            tag = _clean_tag(piece)
            if tag:
                tags.append(tag)
    return tags


def _unpaired(tag: str, ch: str) -> bool:
    """Whether the quote character `ch` at an end of `tag` has no partner in it."""
    if ch in "`*":
        return True  # never a phrase quote here: always stripped from the ends
    partners = {o: c for o, c in _QUOTE_PAIRS.items()}
    partners.update({c: o for o, c in _QUOTE_PAIRS.items()})
    partner = partners.get(ch, ch)
    if partner == ch:
        return tag.count(ch) % 2 == 1
    return tag.count(ch) != tag.count(partner)


def _clean_tag(piece: str) -> str:
    tag = _WS.sub(" ", piece).strip()
    while True:
        before = tag
        if len(tag) >= 2 and tag[0] in _QUOTE_PAIRS and tag[-1] == _QUOTE_PAIRS[tag[0]]:
            inner = tag[1:-1]
            # The quotes enclose the whole tag; they only matter when a comma sits inside.
            if tag[0] not in inner and tag[-1] not in inner and not _TAG_SEPARATORS.search(inner):
                tag = inner.strip()
        if tag and tag[0] in _LOOSE_QUOTES and _unpaired(tag, tag[0]):
            tag = tag[1:].strip()
        if tag and tag[-1] in _LOOSE_QUOTES and _unpaired(tag, tag[-1]):
            tag = tag[:-1].strip()
        if len(tag) >= 2 and tag[0] in _SINGLE_QUOTES and tag[-1] in _SINGLE_QUOTES:
            tag = tag[1:-1].strip()
        tag = tag.rstrip(".…").strip()
        if tag == before:
            return tag


def tag_key(tag: str) -> str:
    """A tag's identity for de-duplication: lower case, white-space runs folded to one space."""
    return _WS.sub(" ", tag.lower()).strip()


def dedup_keep_order(tags: Iterable[str]) -> list[str]:
    """Tags without repeats (by `tag_key`), first occurrence wins, stripped, empties dropped."""
    seen: set[str] = set()
    out: list[str] = []
    for tag in tags:
        key = tag_key(tag)
        if key and key not in seen:
            seen.add(key)
            out.append(tag.strip())
    return out


# Buckets in output order after the subject; a tag goes to the first bucket one of whose
# keywords is a substring of the lower-cased tag (SPEC 1, buckets). "other" takes the rest.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "style",
        (
            "style",
            "painterly",
            "illustration",
            "photorealistic",
            "neon",
            "poster",
            "matte painting",
            "watercolor",
            "cyberpunk",
        ),
    ),
    (
        "composition",
        ("composition", "rule of thirds", "centered", "symmetry", "balanced composition"),
    ),
    (
        "lighting",
        (
            "lighting",
            "light",
            "glow",
            "glowing",
            "aura",
            "rim",
            "sunset",
            "sunrise",
            "golden hour",
            "global illumination",
            "cinematic",
        ),
    ),
    (
        "color",
        ("color", "palette", "vibrant", "muted", "monochrome", "pastel", "warm", "cool", "balanced contrast"),
    ),
    (
        "detail",
        (
            "detailed",
            "hyperdetailed",
            "texture",
            "textured",
            "intricate",
            "high detail",
            "highly detailed",
            "sharp focus",
            "uhd",
            "8k",
        ),
    ),
)


def bucket_of(tag: str) -> str:
    """The bucket of a non-subject tag: style, composition, lighting, color, detail or other."""
    lowered = tag.lower()
    for name, keywords in BUCKETS:
        if any(k in lowered for k in keywords):
            return name
    return "other"


def order_tags(subject: str | Iterable[str], rest: Iterable[str]) -> list[str]:
    """Subject tags first, then `rest` by bucket (style, composition, lighting, color, detail,
    other).

    Order within a bucket is kept. A str `subject` is one tag ("" means no subject). Nothing is
    de-duplicated or dropped here.
    """
    subjects = ([subject] if subject else []) if isinstance(subject, str) else list(subject)
    buckets: dict[str, list[str]] = {name: [] for name, _ in BUCKETS}
    buckets["other"] = []
    for tag in rest:
        buckets[bucket_of(tag)].append(tag)
    return subjects + [tag for tags in buckets.values() for tag in tags]


def cleanup_commas(text: str) -> str:
    """ ", " between tags; no empty tags (", ,", ",,"), no leading or trailing commas or spaces.

    A comma inside a quoted phrase is part of the phrase, not a tag boundary.
    """
    return ", ".join(part.strip() for part in split_outside_quotes(text, ",") if part.strip())


# --------------------------------------------------------------------------------------------
# Stage 1: seed, post-processing, fallback, negative
# --------------------------------------------------------------------------------------------


def seed_tags(user_prompt: str, preset: str | Preset = DEFAULT_PRESET) -> list[str]:
    """SPEC 1.1: the preset's positives followed by at most two style hints of the prompt."""
    return dedup_keep_order([*get_preset(preset).positives, *style_hints(user_prompt)])


def negative_tags(preset: str | Preset = DEFAULT_PRESET) -> str:
    """SPEC 1.6: the preset's negatives joined with ", "."""
    return ", ".join(get_preset(preset).negatives)


def _prompt_subject(user_prompt: str) -> str:
    """The prompt as a subject tag: white space folded, trailing commas and periods removed."""
    return _WS.sub(" ", user_prompt).strip().rstrip(",.").strip()


def _finish(tags: list[str], max_tokens: int) -> str:
    """SPEC 1.4's tail: de-duplicate, add the missing quality floor, commas, CLIP-77 strict."""
    # Flatten first: a subject taken from a prompt with commas ("a cat, oil painting") is several
    # tags once joined, and the tags after it must not repeat them.
    flat = dedup_keep_order(part for tag in tags for part in split_outside_quotes(tag, ","))
    have = {tag_key(t) for t in flat}
    flat += [q for q in QUALITY_FLOOR if tag_key(q) not in have]
    text = clip77_strict(cleanup_commas(", ".join(flat)), max_tokens)
    # The cut falls between words, so it can leave a trailing comma ("..., 8k,"); dropping it only
    # removes a token, so the text stays CLIP-77 safe.
    return cleanup_commas(text)


def postprocess_tags(
    merged_text: str,
    user_prompt: str,
    preset: str | Preset = DEFAULT_PRESET,
    *,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> str:
    """SPEC 1.4: the aggregator's answer -> the positive prompt of the full method.

    Split; drop empties; de-duplicate; find the prompt among the tags (case-insensitive, white
    space folded, trailing ",." ignored on both sides). The subject is the prompt: the matching
    tag moved to the front, as the model wrote it, or, when none matches, the prompt itself
    inserted first. (The reference keeps the model's first tag as subject even when the prompt
    sits further down, where bucketing can push it to the end and CLIP-77 cut it off; the
    user's own words must lead.) With an empty prompt the model's first tag is the subject.
    The other tags are ordered by bucket, missing quality-floor tags are appended, commas are
    normalised and the text is truncated to `max_tokens` CLIP ids.

    `preset` is accepted for symmetry with `fallback_tags` and validated; the rules of 1.4 do
    not depend on it.
    """
    get_preset(preset)
    tags = dedup_keep_order(split_tags(merged_text))
    subject = _prompt_subject(user_prompt)
    if not subject:
        ordered = order_tags(tags[:1], tags[1:])
    else:
        key = tag_key(subject)
        match = next((i for i, t in enumerate(tags) if tag_key(t.rstrip(",.")) == key), None)
        if match is None:
            ordered = order_tags([subject], tags)
        else:
            ordered = order_tags([tags[match]], tags[:match] + tags[match + 1 :])
    return _finish(ordered, max_tokens)


def fallback_tags(
    user_prompt: str,
    preset: str | Preset = DEFAULT_PRESET,
    *,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> str:
    """SPEC 1.5, when no tag model answered: the prompt, then the seed tags, then the quality
    floor, comma clean-up and CLIP-77 truncation. No bucket ordering; repeats are dropped."""
    subject = _prompt_subject(user_prompt)
    return _finish([subject, *seed_tags(user_prompt, preset)], max_tokens)


# --------------------------------------------------------------------------------------------
# Stage 5: merge the critique's refined prompt with the stage-1 tags
# --------------------------------------------------------------------------------------------


def merge_critique_with_tags(
    refined: str,
    tags: str,
    *,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> str:
    """SPEC 5: the refinement prompt.

    The refined text's first tag is the subject; the rest is its other tags followed by the
    stage-1 tags, ordered by bucket; then de-duplicated (so the refined wording wins within a
    bucket), empties dropped, commas normalised, CLIP-77 strict. With an empty refined text the
    first stage-1 tag (the prompt) is the subject. No quality floor is added here.
    """
    refined_tags = split_tags(refined)
    stage1_tags = split_tags(tags)
    if refined_tags:
        subject, rest = refined_tags[:1], refined_tags[1:] + stage1_tags
    else:
        subject, rest = stage1_tags[:1], stage1_tags[1:]
    merged = dedup_keep_order(order_tags(subject, rest))
    text = clip77_strict(cleanup_commas(", ".join(merged)), max_tokens)
    return cleanup_commas(text)


# --------------------------------------------------------------------------------------------
# Fitting CLIP-77 by importance (what the engine uses; the SPEC functions above cut the end)
# --------------------------------------------------------------------------------------------


def _flat(tags: Iterable[str]) -> list[str]:
    return dedup_keep_order(part for tag in tags for part in split_outside_quotes(tag, ","))


def fit_tags(
    head: Iterable[str],
    ranked: Iterable[str],
    *,
    protect: Iterable[str] = (),
    append: Iterable[str] = (),
    ordered: bool = True,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> str:
    """Join tags into a CLIP-77 safe prompt, dropping the least important tags to make room.

    SPEC's "truncate CLIP-77 strict" cuts whatever comes last, and after bucket ordering that is
    the quality floor (appended last) or the user's own prompt (bucketed into "other"). Here
    the cut falls on importance instead:
    - `head` leads and is never dropped (the subject, the user's prompt);
    - `ranked` follows, most important first (the model's own order); from its end, tags are
      dropped one at a time until the text fits, except those whose key is in `protect`;
    - `append` is added at the end and never dropped (the missing quality floor).
    With `ordered`, head and the kept tags are put in bucket order (`order_tags`). Repeats are
    dropped, commas normalised. Only when the protected tags alone are too long does the
    CLIP-77 cut fall, at the end, as SPEC's rule would.
    """
    head = _flat(head)
    head_keys = {tag_key(t) for t in head}
    kept = [t for t in _flat(ranked) if tag_key(t) not in head_keys]
    protected = {tag_key(t) for t in protect}
    tail = list(append)

    def render() -> str:
        body = order_tags(head, kept) if ordered else head + kept
        return cleanup_commas(", ".join(dedup_keep_order(body + tail)))

    text = render()
    while count_tokens(text) > max_tokens:
        droppable = [i for i, t in enumerate(kept) if tag_key(t) not in protected]
        if not droppable:
            break
        del kept[droppable[-1]]
        text = render()
    # The last-resort cut falls between words and can leave a trailing comma; dropping it only
    # removes a token, so the text stays CLIP-77 safe.
    return cleanup_commas(clip77_strict(text, max_tokens))


def _subject_and_rest(tags: list[str], user_prompt: str) -> tuple[list[str], list[str]]:
    """The prompt as subject (the matching tag as the model wrote it, or the prompt itself)."""
    subject = _prompt_subject(user_prompt)
    if not subject:
        return tags[:1], tags[1:]
    key = tag_key(subject)
    match = next((i for i, t in enumerate(tags) if tag_key(t.rstrip(",.")) == key), None)
    if match is None:
        return [subject], tags
    return [tags[match]], tags[:match] + tags[match + 1 :]


def positive_prompt(
    merged_text: str,
    user_prompt: str,
    preset: str | Preset = DEFAULT_PRESET,
    *,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> str:
    """SPEC 1.4 as the engine runs it: `postprocess_tags`, except for the CLIP-77 cut.

    When the tags are too long, the model's last tags are dropped (models are asked to put the
    important ones first) rather than the end of the bucket-ordered text: the prompt and the
    quality floor always stay.
    """
    get_preset(preset)
    tags = dedup_keep_order(split_tags(merged_text))
    head, rest = _subject_and_rest(tags, user_prompt)
    have = {tag_key(t) for t in _flat(head + rest)}
    missing = [q for q in QUALITY_FLOOR if tag_key(q) not in have]
    return fit_tags(head, rest, protect=QUALITY_FLOOR, append=missing, max_tokens=max_tokens)


def refinement_prompt(
    refined: str,
    tags: str,
    user_prompt: str = "",
    *,
    max_tokens: int = CLIP_MAX_TOKENS,
) -> str:
    """SPEC 5 as the engine runs it: `merge_critique_with_tags`, keeping the user's prompt.

    The refined text's first tag is the subject; the user's own prompt follows it (unless the
    subject already holds it), so bucket ordering and the CLIP-77 cut can never push it out;
    then the refined text's other tags and the stage-1 tags, in bucket order. When too long,
    the last of those go first; quality-floor tags among them stay.
    """
    refined_tags = split_tags(refined)
    stage1_tags = split_tags(tags)
    if refined_tags:
        subject, rest = refined_tags[:1], refined_tags[1:] + stage1_tags
    else:
        subject, rest = stage1_tags[:1], stage1_tags[1:]
    prompt = _prompt_subject(user_prompt)
    head = list(subject)
    if prompt and not (subject and tag_key(prompt) in tag_key(subject[0])):
        head += [p for p in (_clean_tag(x) for x in split_outside_quotes(prompt, ",")) if p]
    return fit_tags(head, rest, protect=QUALITY_FLOOR, max_tokens=max_tokens)


# --- The prose style: sentences instead of tags (instructions style "prose") ------------------

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def prose_lines(text: str) -> list[str]:
    """A prose answer's lines without labels, list markers, headings, fences or emphasis."""
    lines = []
    for line in text.splitlines():
        if _CODE_FENCE.match(line) or _HEADING.match(line):
            continue
        line = _LEAD_LABEL.sub("", strip_emphasis(_LIST_MARKER.sub("", line))).strip()
        if len(line) >= 2 and line[0] in _QUOTE_PAIRS and line[-1] == _QUOTE_PAIRS[line[0]]:
            line = line[1:-1].strip()
        if line:
            lines.append(line)
    return lines


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, in order (a tag list with no full stop is one "sentence")."""
    return [s.strip() for s in _SENTENCE_END.split(_WS.sub(" ", text).strip()) if s.strip()]


def prose_prompt(text: str, user_prompt: str = "", *, max_tokens: int = CLIP_MAX_TOKENS) -> str:
    """The positive (or refinement) prompt of the prose style.

    The model's sentences, led by the user's prompt when they do not already hold it, then
    the quality-floor tags they lack. When too long for CLIP-77, whole sentences are dropped
    from the end (the model puts the subject first); the user's prompt and the floor stay.
    """
    sentences = split_sentences(" ".join(prose_lines(text)))
    prompt = _prompt_subject(user_prompt)
    joined = tag_key(" ".join(sentences))
    head = [prompt + "."] if prompt and tag_key(prompt) not in joined else []
    floor = [q for q in QUALITY_FLOOR if tag_key(q) not in joined]

    def render(kept: list[str]) -> str:
        body = " ".join(head + kept).strip()
        if floor:  # "... lights its fur, high detailed, 8k": the floor reads as a tail of tags
            body = body.rstrip(" .")
        return cleanup_commas(", ".join(([body] if body else []) + floor))

    kept = list(sentences)
    result = render(kept)
    while count_tokens(result) > max_tokens and kept:
        kept.pop()
        result = render(kept)
    return cleanup_commas(clip77_strict(result, max_tokens))
