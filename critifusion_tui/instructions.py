"""Every message CritiCore sends to a model, as named templates a user may replace.

The wording is ours (SPEC.md asks for the content, not the words); the numbers in it are the
method's. A template is plain text with ``{placeholder}`` slots; each template accepts only
the placeholders listed for it, and anything else of the form ``{word}`` is a mistake the
configuration reports (a literal JSON example such as ``{"components": [...]}`` is not of
that form, so it needs no escaping).

Two presets exist: ``tags`` (SDXL comma-separated tag lists, the method's own style) and
``prose`` (short descriptive sentences, for text encoders that read sentences). The prose
preset only changes the tag-expansion wording; the other stages ask the same in both.

The answer checks (``engine/answers.py``) also read these templates: an answer that repeats
their fixed wording is an echo of our instructions, not an answer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Template:
    """One message template: its text, the placeholders it may use, and what it is for."""

    name: str
    text: str
    placeholders: tuple[str, ...]
    doc: str


_TAGS_RULES = """- Put the subject phrase first.
- Give composition, lighting, colour and detail tags before any style tag.
- Use no more than two style tags."""

_KEEP_FLOOR = '- Keep the tags "high detailed", "sharp focus", "8k" and "UHD".'

_DEFAULTS: tuple[Template, ...] = (
    Template(
        "tags_system",
        f"""You write prompts for Stable Diffusion XL.
Turn the user's idea into ONE comma-separated list of SDXL tags.
{_TAGS_RULES}
- Write 16 to 26 short tags in all.
- Separate tags with commas only: no sentences, no "and", no full stop at the end.
{_KEEP_FLOOR}
Reply with the tag list and nothing else.""",
        (),
        "stage 1, system turn of every candidate",
    ),
    Template(
        "tags_user",
        "Idea: {prompt}\nSeed tags: {seed_tags}\nReply: one comma-separated tag list.",
        ("prompt", "seed_tags"),
        "stage 1, user turn of every candidate: {prompt} the user's prompt, {seed_tags} the"
        " preset's tags and style hints, comma-separated",
    ),
    Template(
        "tags_agg_system",
        f"""You merge several SDXL tag lists written for the same idea into ONE
comma-separated list of 16 to 26 short tags.
{_TAGS_RULES}
- Separate tags with commas only: no sentences, no "and", no full stop at the end.
{_KEEP_FLOOR}
Reply with the merged list and nothing else.""",
        (),
        "stage 1, system turn of the aggregator",
    ),
    Template(
        "tags_agg_user",
        "Idea: {prompt}\nCandidate lists:\n{answers}",
        ("prompt", "answers"),
        "stage 1, user turn of the aggregator: {prompt}, and {answers} the candidates' checked"
        " tag lists separated by a line of three dashes",
    ),
    Template(
        "components_system",
        """Break the user's description of an image into 3 to 6 concrete visual
components that a person could verify by looking at the picture: the things in it, what they
do to each other, and where they are relative to each other.
Reply with JSON only, in the form {"components": ["...", "..."]}.""",
        (),
        "stage 2, system turn of every candidate",
    ),
    Template("components_user", "{prompt}", ("prompt",), "stage 2, user turn: {prompt}"),
    Template(
        "components_agg_system",
        """Each answer below lists visual components of the same image
description as JSON. Merge them into one list of 3 to 6 distinct components that can be
checked by looking at the picture.
Reply with JSON only, in the form {"components": ["...", "..."]}.""",
        (),
        "stage 2, system turn of the aggregator",
    ),
    Template(
        "components_agg_user",
        "Description: {prompt}\nAnswers:\n{answers}",
        ("prompt", "answers"),
        "stage 2, user turn of the aggregator: {prompt}, and {answers} the candidates' checked"
        ' lists as {"components": [...]} JSON separated by a line of three dashes',
    ),
    Template(
        "critic_system",
        """You are a precise critic who judges an image only by what can be seen in it.
Reply with exactly the tags you are asked for and nothing else.""",
        (),
        "stage 4, system turn of every vision model",
    ),
    Template(
        "critic_user",
        """The attached image was generated from this prompt:
"{prompt}"
Components to check: {components}
1. List the concrete visual problems you see, each with a brief correction.
2. Write a refined prompt that fixes them while keeping the prompt's original intent.
Reply with exactly these tags:
<issues>...</issues>
<refined>...</refined>""",
        ("prompt", "components"),
        "stage 4, user turn of every vision model (the image rides on it): {prompt} the prompt"
        " the image was made from, {components} the components as a JSON list",
    ),
    Template(
        "critic_alignment",
        """
Also rate how well the image matches the prompt, from 0 (not at all) to 100 (perfectly):
<alignment>...</alignment>""",
        (),
        "stage 4, appended to critic_user in adaptive SpecFusion mode",
    ),
    Template(
        "critic_history",
        """
This image is round {round} of a step-by-step refinement. Earlier rounds reported:
{history}
In <issues>, list only what is still wrong or newly wrong; leave out what is now fixed.""",
        ("round", "history"),
        "critique rounds (loop.rounds > 1), appended to critic_user from round 2 on: {round}"
        " the round whose image is attached, {history} the issues earlier rounds reported, one"
        " line each, led by [round N]",
    ),
    Template(
        "critic_agg_system",
        """You merge the reports of several image critics into one.
Reply only with these tags:
<issues>at most 5 bullet points</issues>
<refined>one prompt of at most 70 words, with no camera, lens, gear or resolution jargon</refined>""",
        (),
        "stage 4, system turn of the aggregator",
    ),
    Template(
        "critic_agg_user",
        "Issues:\n{issues}\n\n----\n\nRefined prompts:\n{refined}",
        ("issues", "refined"),
        "stage 4, user turn of the aggregator: {issues} every critic's issues and {refined}"
        " every critic's refined prompt, one per line, each line led by [model]",
    ),
)

DEFAULTS: Mapping[str, Template] = MappingProxyType({t.name: t for t in _DEFAULTS})
NAMES: tuple[str, ...] = tuple(DEFAULTS)

# The prose preset: sentences for text encoders that read them (and for people who prefer
# them), at the same length budget. Only stage 1's wording changes.
_PROSE = {
    "tags_system": """You write prompts for an image generator that reads plain sentences.
Turn the user's idea into ONE short descriptive prompt of two or three sentences (at most 60
words): the subject first, then composition, lighting, colour and detail, then at most two
style words. No lists, no labels, no quotation marks around the prompt.
Reply with the prompt and nothing else.""",
    "tags_user": (
        "Idea: {prompt}\nUseful qualities: {seed_tags}\nReply: one short descriptive prompt in plain sentences."
    ),
    "tags_agg_system": """You merge several image prompts written for the same idea into ONE
short descriptive prompt of two or three sentences (at most 60 words): the subject first,
then composition, lighting, colour and detail, then at most two style words.
Reply with the merged prompt and nothing else.""",
    "tags_agg_user": "Idea: {prompt}\nCandidate prompts:\n{answers}",
}
PRESETS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"tags": MappingProxyType({}), "prose": MappingProxyType(_PROSE)}
)


class InstructionError(ValueError):
    """A template override that cannot be used (unknown name or placeholder)."""


# A value of ``[criticore.instructions]`` that is one line ending in one of these is the path
# of a file holding the template, not the template itself.
TEMPLATE_FILE_SUFFIXES = (".txt", ".md")


def is_template_path(value: str) -> bool:
    """Whether a configured template value names a file (``tags_system = "tags.txt"``)."""
    value = value.strip()
    return bool(value) and "\n" not in value and value.lower().endswith(TEMPLATE_FILE_SUFFIXES)


def read_template_file(path: Path) -> str:
    """A template file's text; InstructionError when it cannot be read or is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstructionError(f"no such template file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InstructionError(f"cannot read template file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text.strip():
        raise InstructionError(f"template file {path} is empty")
    return text.strip("\n")


def unknown_placeholders(name: str, text: str) -> list[str]:
    """The placeholders of ``text`` that the template ``name`` may not use."""
    allowed = DEFAULTS[name].placeholders
    return [p for p in placeholders_in(text) if p not in allowed]


def allowed_placeholders(name: str) -> str:
    """The placeholders ``name`` may use, as a person reads them ("{prompt}, {seed_tags}")."""
    return ", ".join("{" + p + "}" for p in DEFAULTS[name].placeholders) or "none"


def line_of_placeholder(text: str, placeholder: str) -> int:
    """The 1-based line of ``text`` where ``{placeholder}`` first appears."""
    index = text.find("{" + placeholder + "}")
    return text.count("\n", 0, max(index, 0)) + 1


def placeholders_in(text: str) -> list[str]:
    """The ``{placeholder}`` names in ``text``, in order, without repeats."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def literal_parts(text: str) -> list[str]:
    """The fixed wording of a template: its text split at the placeholders."""
    return [part for part in PLACEHOLDER.split(text)[::2] if part.strip()]


def render(text: str, **values: str) -> str:
    """Fill the placeholders of ``text``; other braces are left as they are."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def check_template(name: str, text: str) -> None:
    """Raise InstructionError for an unknown template name or an unknown placeholder."""
    if name not in DEFAULTS:
        raise InstructionError(f"unknown instruction {name!r}; known: {', '.join(NAMES)}")
    unknown = unknown_placeholders(name, text)
    if unknown:
        raise InstructionError(
            f"unknown placeholder {{{unknown[0]}}} in instruction {name!r};"
            f" placeholders it may use: {allowed_placeholders(name)}"
        )


def digest(text: str) -> str:
    """A short, stable fingerprint of a template's text (the manifest records it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Instructions:
    """The templates in use: the defaults, a preset's wording, then the user's overrides."""

    def __init__(self, overrides: Mapping[str, str] | None = None, *, preset: str = "tags") -> None:
        if preset not in PRESETS:
            raise InstructionError(f"unknown instruction preset {preset!r}; known: {', '.join(PRESETS)}")
        self.preset = preset
        self._texts = {name: t.text for name, t in DEFAULTS.items()}
        self._texts.update(PRESETS[preset])
        for name, text in (overrides or {}).items():
            check_template(name, text)
            self._texts[name] = text

    def text(self, name: str) -> str:
        return self._texts[name]

    def render(self, name: str, **values: str) -> str:
        return render(self._texts[name], **values)

    def fixed_wording(self, names: Iterable[str]) -> list[str]:
        """The literal parts of the named templates (what an echo would repeat)."""
        return [part for name in names for part in literal_parts(self._texts[name])]

    def overridden(self) -> list[str]:
        """Names whose text differs from the built-in default."""
        return [name for name in NAMES if self._texts[name] != DEFAULTS[name].text]

    def record(self, names: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """For the manifest: each template's fingerprint, and the text of those that differ."""
        out: dict[str, dict[str, str]] = {}
        for name in names or NAMES:
            text = self._texts[name]
            entry = {"sha256": digest(text)}
            if text != DEFAULTS[name].text:
                entry["text"] = text
            out[name] = entry
        return out

    @classmethod
    def from_config(cls, config, base: Path | None = None) -> Instructions:
        """The templates a ``[criticore.instructions]`` section asks for: its ``style`` and each
        non-empty template value (text, or the path of a file, relative to ``base``)."""
        if config is None:
            return cls()
        overrides: dict[str, str] = {}
        for name in NAMES:
            value = getattr(config, name, "") or ""
            if not value.strip():
                continue
            if is_template_path(value):
                path = Path(value.strip()).expanduser()
                value = read_template_file(path if path.is_absolute() else (base or Path.cwd()) / path)
            overrides[name] = value
        return cls(overrides, preset=getattr(config, "style", "tags"))

    def describe(self) -> str:
        """One line for ``doctor``: the style, and which templates differ from it."""
        changed = [n for n in NAMES if self._texts[n] != PRESETS[self.preset].get(n, DEFAULTS[n].text)]
        return f"style {self.preset}; " + (f"overridden: {', '.join(changed)}" if changed else "no template overridden")


DEFAULT_INSTRUCTIONS = Instructions()
