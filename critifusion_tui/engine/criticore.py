"""CritiCore: the four text stages of the method (SPEC 1, 2, 4, 5) over a provider router.

Every stage asks its models in parallel, records each model's answer, error and time, then
asks the aggregator (the first of its list that answers) to merge them. A failing model never
stops a stage: it is recorded, shown through an event, and the stage goes on with the others,
down to the method's own fallbacks when nobody answered. Every stage can be re-run alone with
edited inputs, and `only=` re-asks some models while keeping the other answers of a previous
result, so one failed candidate can be retried without paying for the rest.

The system prompts below are our own words for what SPEC.md asks of each call; the numbers
(temperatures, token limits, counts) are the method's.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from critifusion_tui.engine.events import (
    CandidateDelta,
    CandidateFinished,
    CandidateStarted,
    Emit,
    Notice,
    ignore,
)
from critifusion_tui.engine.prompts import (
    dedup_keep_order,
    merge_critique_with_tags,
    negative_tags,
    postprocess_tags,
    seed_tags,
)
from critifusion_tui.engine.tokens import clip77_strict
from critifusion_tui.providers.base import ModelRef, ProviderError, system, user
from critifusion_tui.providers.rules import rules_components, rules_critique, rules_tags

# --- The method's numbers (SPEC 1, 2, 4) ---------------------------------------------------

TAGS_TEMPERATURE, TAGS_MAX_TOKENS = 0.7, 220
TAGS_AGG_TEMPERATURE, TAGS_AGG_MAX_TOKENS = 0.2, 240
COMPONENTS_TEMPERATURE, COMPONENTS_MAX_TOKENS = 0.4, 256
COMPONENTS_AGG_TEMPERATURE, COMPONENTS_AGG_MAX_TOKENS = 0.2, 256
CRITIC_TEMPERATURE, CRITIC_MAX_TOKENS = 0.2, 420
CRITIC_AGG_TEMPERATURE, CRITIC_AGG_MAX_TOKENS = 0.2, 420
MAX_COMPONENTS = 6
MAX_ISSUES = 5
DIVIDER = "\n---\n"

# --- What each call asks (our wording of SPEC's requests) ----------------------------------

TAGS_SYSTEM = """You write prompts for Stable Diffusion XL.
Turn the user's idea into ONE comma-separated list of SDXL tags.
- Put the subject phrase first.
- Give composition, lighting, colour and detail tags before any style tag.
- Use no more than two style tags.
- Write 16 to 26 short tags in all.
- Separate tags with commas only: no sentences, no "and", no full stop at the end.
- Keep the tags "high detailed", "sharp focus", "8k" and "UHD".
Reply with the tag list and nothing else."""

TAGS_AGG_SYSTEM = """You merge several SDXL tag lists written for the same idea into ONE
comma-separated list of 16 to 26 short tags.
- Put the subject phrase first.
- Give composition, lighting, colour and detail tags before any style tag.
- Use no more than two style tags.
- Separate tags with commas only: no sentences, no "and", no full stop at the end.
- Keep the tags "high detailed", "sharp focus", "8k" and "UHD".
Reply with the merged list and nothing else."""

COMPONENTS_SYSTEM = """Break the user's description of an image into 3 to 6 concrete visual
components that a person could verify by looking at the picture: the things in it, what they
do to each other, and where they are relative to each other.
Reply with JSON only, in the form {"components": ["...", "..."]}."""

COMPONENTS_AGG_SYSTEM = """Each answer below lists visual components of the same image
description as JSON. Merge them into one list of 3 to 6 distinct components that can be
checked by looking at the picture.
Reply with JSON only, in the form {"components": ["...", "..."]}."""

CRITIC_SYSTEM = """You are a precise critic who judges an image only by what can be seen in it.
Reply with exactly the tags you are asked for and nothing else."""

CRITIC_USER = """The attached image was generated from this prompt:
"{prompt}"
Components to check: {components}
1. List the concrete visual problems you see, each with a brief correction.
2. Write a refined prompt that fixes them while keeping the prompt's original intent.
Reply with exactly these tags:
<issues>...</issues>
<refined>...</refined>"""

CRITIC_ALIGNMENT = """
Also rate how well the image matches the prompt, from 0 (not at all) to 100 (perfectly):
<alignment>...</alignment>"""

CRITIC_AGG_SYSTEM = """You merge the reports of several image critics into one.
Reply only with these tags:
<issues>at most 5 bullet points</issues>
<refined>one prompt of at most 70 words, with no camera, lens, gear or resolution jargon</refined>"""


# --- Results -------------------------------------------------------------------------------


@dataclass
class Answer:
    """One model's part in a stage: what it said, or why it said nothing."""

    model: str
    role: str  # candidate, aggregator or vlm
    text: str = ""
    error: str | None = None
    error_code: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "text": self.text, "error": self.error, "seconds": round(self.seconds, 3)}


@dataclass
class TagsResult:
    """Stage 1: the positive and negative prompts of the full method."""

    prompt: str
    preset: str
    candidates: list[Answer]
    aggregator: list[Answer]  # every aggregator tried, in order; the last ok one won
    aggregated: str  # the merged text the positive was made from
    positive: str
    negative: str
    source: str  # aggregator, candidates (no aggregator answered) or fallback (none answered)
    seconds: float = 0.0

    @property
    def aggregated_by(self) -> str | None:
        """The aggregator whose answer was used, or None when none was."""
        return _winner(self.aggregator)

    def positive_from(self, model: str) -> str:
        """The positive prompt as if `model`'s answer had been the aggregate (a user's pick)."""
        model = _ref(model)
        answer = next((a for a in self.candidates if a.model == model), None)
        if answer is None:
            raise ValueError(f"{model} is not a candidate of this result")
        if not answer.ok:
            raise ValueError(f"{model} has no answer to take: {answer.error}")
        return postprocess_tags(answer.text, self.prompt, self.preset)

    def record(self) -> dict[str, Any]:
        return {
            "candidates": [a.record() for a in self.candidates],
            "aggregator": [a.record() for a in self.aggregator],
            "aggregated_by": self.aggregated_by,
            "aggregated": self.aggregated,
            "positive": self.positive,
            "negative": self.negative,
            "source": self.source,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ComponentsResult:
    """Stage 2: 3 to 6 checkable visual components of the prompt."""

    prompt: str
    candidates: list[Answer]
    aggregator: list[Answer]
    components: list[str]
    source: str  # aggregator, candidates (no aggregator answer parsed) or fallback (the prompt's clauses)
    seconds: float = 0.0

    @property
    def aggregated_by(self) -> str | None:
        """The aggregator whose answer was used, or None when none was."""
        return _winner(self.aggregator)

    def record(self) -> dict[str, Any]:
        return {
            "candidates": [a.record() for a in self.candidates],
            "aggregator": [a.record() for a in self.aggregator],
            "aggregated_by": self.aggregated_by,
            "components": list(self.components),
            "source": self.source,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Critic:
    """One VLM's critique, parsed."""

    answer: Answer
    issues: list[str] = field(default_factory=list)
    refined: str = ""
    alignment: float | None = None

    def record(self) -> dict[str, Any]:
        return {
            "model": self.answer.model,
            "text": self.answer.text,
            "issues": list(self.issues),
            "refined": self.refined,
            "alignment": self.alignment,
            "error": self.answer.error,
            "seconds": round(self.answer.seconds, 3),
        }


@dataclass
class CritiqueResult:
    """Stage 4: what the critics saw and the refined prompt they agree on."""

    image_prompt: str  # the prompt the criticised image was made from
    components: list[str]
    critics: list[Critic]
    aggregator: list[Answer]
    issues: list[str]
    refined: str
    alignment: float | None
    source: str  # aggregator, critic (no aggregator answered) or none (no critic answered)
    seconds: float = 0.0

    @property
    def aggregated_by(self) -> str | None:
        """The aggregator whose answer was used, or None when none was."""
        return _winner(self.aggregator)

    def record(self) -> dict[str, Any]:
        record = {
            "prompt": self.image_prompt,
            "components": list(self.components),
            "candidates": [c.record() for c in self.critics],
            "aggregator": [a.record() for a in self.aggregator],
            "aggregated_by": self.aggregated_by,
            "issues": list(self.issues),
            "refined": self.refined,
            "source": self.source,
            "seconds": round(self.seconds, 3),
        }
        if self.alignment is not None:
            record["alignment"] = self.alignment
        return record


# --- Parsing -------------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*•·+–—]|\d{1,2}[.)])\s*")


def extract_tag(text: str, tag: str) -> str | None:
    """The content of `<tag>...</tag>`, also when the model HTML-escaped the brackets."""
    pattern = re.compile(rf"<\s*{tag}\s*>(.*?)<\s*/\s*{tag}\s*>", re.S | re.I)
    for candidate in (text, text.replace("&lt;", "<").replace("&gt;", ">")):
        match = pattern.search(candidate)
        if match:
            return match.group(1).strip()
    return None


def issue_lines(text: str, limit: int = MAX_ISSUES) -> list[str]:
    """Issues split on newlines and semicolons, bullets stripped, at most `limit`."""
    lines = []
    for part in re.split(r"[\n;]+", text):
        line = _BULLET.sub("", part).strip()
        if line:
            lines.append(line)
    return lines[:limit]


def parse_alignment(text: str) -> float | None:
    """The first number of an <alignment> tag (its sign kept), clamped to 0..100; None when
    the tag is missing or holds no number. The rating is model output: never trusted as is."""
    found = extract_tag(text, "alignment")
    match = re.search(r"-?\d+(?:\.\d+)?", found or "")
    return min(100.0, max(0.0, float(match.group()))) if match else None


def parse_components(text: str) -> list[str]:
    """SPEC 2: JSON, else the span from the first "{" to the last "}"; non-empty strings, <= 6.

    Raises ValueError when neither parses into an object with a components list.
    """
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        items = data.get("components") if isinstance(data, dict) else None
        if isinstance(items, list):
            return [c.strip() for c in items if isinstance(c, str) and c.strip()][:MAX_COMPONENTS]
    raise ValueError('no JSON object with a "components" list in the answer')


NO_CRITIC_TAGS = "the answer holds neither <issues> nor <refined>"
NO_REFINED_TAG = "the answer holds no <refined>"


def check_critic(text: str) -> None:
    """Raise ValueError when a critic's answer has none of the tags it was asked for."""
    if extract_tag(text, "issues") is None and extract_tag(text, "refined") is None:
        raise ValueError(NO_CRITIC_TAGS)


def check_merged_critique(text: str) -> None:
    """Raise ValueError when the critique aggregator's answer has no usable <refined>."""
    if not extract_tag(text, "refined"):
        raise ValueError(NO_REFINED_TAG)


def parse_critic(answer: Answer, fallback_refined: str, *, alignment: bool = True) -> Critic:
    """SPEC 4: issues (<= 5 lines) and refined (CLIP-77 strict) from one critic's answer.

    `alignment`: read the <alignment> rating too (only when the critic was asked for one).
    """
    issues_text = extract_tag(answer.text, "issues")
    refined = extract_tag(answer.text, "refined")
    if issues_text is None and refined is None:
        bad = replace(answer, error=NO_CRITIC_TAGS, error_code="unusable_answer")
        return Critic(bad)
    return Critic(
        answer,
        issues=issue_lines(issues_text or ""),
        refined=clip77_strict(refined or fallback_refined),
        alignment=parse_alignment(answer.text) if alignment else None,
    )


# --- The stages ----------------------------------------------------------------------------

Ask = Callable[[], Awaitable[str]]


class CritiCore:
    """The text stages of one session. Holds the router, the roles and the event sink."""

    def __init__(
        self,
        router,
        *,
        candidates: Sequence[str],
        aggregator: Sequence[str],
        vlms: Sequence[str],
        preset: str = "hq_preference",
        emit: Emit = ignore,
    ) -> None:
        self.router = router
        self.candidates = [str(ModelRef.parse(r)) for r in candidates]
        self.aggregators = [str(ModelRef.parse(r)) for r in aggregator]
        self.vlms = [str(ModelRef.parse(r)) for r in vlms]
        self.preset = preset
        self.emit = emit

    @classmethod
    def from_settings(cls, router, settings, emit: Emit = ignore) -> CritiCore:
        core = settings.criticore
        return cls(
            router, candidates=core.candidates, aggregator=core.aggregator, vlms=core.vlms,
            preset=core.preset, emit=emit,
        )

    # ---------------------------------------------------------------- one call

    async def _call(
        self, stage: str, role: str, model: str, ask: Ask, check: Callable[[str], object] | None = None
    ) -> Answer:
        """Run one model's call, timing it and turning any failure into a recorded error.

        `check` raises ValueError for an answer that came but cannot be used (no JSON, no
        tags): the answer is then recorded as an ``unusable_answer`` error, text kept, and the
        finished event already says so.
        """
        self.emit(CandidateStarted(stage, role=role, model=model))
        started = time.perf_counter()
        try:
            text = await ask()
            if check is not None:
                try:
                    check(text)
                except ValueError as exc:
                    raise _Unusable(text, str(exc)) from None
        except _Unusable as exc:
            answer = Answer(model, role, text=exc.text, error=f"{model}: {exc.reason}", error_code="unusable_answer")
        except ProviderError as exc:
            answer = Answer(model, role, error=str(exc), error_code=exc.code)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug or an unexpected client error: visible, not fatal
            answer = Answer(model, role, error=f"{type(exc).__name__}: {exc}", error_code="unexpected")
        else:
            answer = Answer(model, role, text=text)
        answer.seconds = time.perf_counter() - started
        self.emit(
            CandidateFinished(stage, role=role, model=model, text=answer.text, error=answer.error, seconds=answer.seconds)
        )
        return answer

    def _offline(self, stage: str, role: str, text: str) -> Ask:
        """An Ask for the offline ``rules`` model: answers at once, as one streamed piece."""

        async def ask() -> str:
            if text:
                self.emit(CandidateDelta(stage, role=role, model="rules", text=text))
            return text

        return ask

    def _chat(self, stage: str, role: str, model: str, messages, *, temperature, max_tokens, image=None) -> Ask:
        """An Ask that chats with `model`, streaming each cleaned piece as an event."""

        async def ask() -> str:
            chat_model = self.router.model(model)
            result = await chat_model.chat(
                messages,
                temperature=temperature,
                max_tokens=max_tokens,
                image=image,
                on_delta=lambda piece: self.emit(CandidateDelta(stage, role=role, model=model, text=piece)),
            )
            return result.text

        return ask

    async def _gather(
        self, stage: str, role: str, models: Sequence[str], make_ask: Callable[[str], Ask],
        previous: Sequence[Answer] | None, only: Iterable[str] | None,
        check: Callable[[str], object] | None = None,
    ) -> list[Answer]:
        """Ask `models` in parallel; with `only`, re-ask just those and keep the rest of `previous`."""
        kept = {a.model: a for a in previous or []}
        if isinstance(only, str):
            only = [only]
        redo = {_ref(m) for m in only} if only is not None else set(models)
        unknown = redo - set(models)
        if unknown:
            raise ValueError(f"not a {role} of this stage: {', '.join(sorted(unknown))}")
        todo = [m for m in models if m in redo or m not in kept]
        fresh = await asyncio.gather(*(self._call(stage, role, m, make_ask(m), check) for m in todo))
        by_model = {**kept, **dict(zip(todo, fresh))}
        return [by_model[m] for m in models]

    async def _aggregate(
        self, stage: str, make_ask: Callable[[str], Ask], check: Callable[[str], object] | None = None
    ) -> list[Answer]:
        """Try the aggregators in order until one answers usably; every attempt is kept."""
        attempts = []
        for model in self.aggregators:
            answer = await self._call(stage, "aggregator", model, make_ask(model), check)
            attempts.append(answer)
            if answer.ok:
                break
            self.emit(Notice(stage, "warning", f"aggregator {model} failed: {answer.error}"))
        return attempts

    def _report_failures(self, stage: str, answers: Sequence[Answer], role: str) -> None:
        failed = [a for a in answers if not a.ok]
        if failed:
            who = ", ".join(f"{a.model} ({a.error_code})" for a in failed)
            self.emit(
                Notice(stage, "warning", f"{len(failed)} of {len(answers)} {role}s failed: {who}; going on with the others")
            )

    # ---------------------------------------------------------------- stage 1: tags

    async def tags(self, prompt: str, *, previous: TagsResult | None = None, only: Iterable[str] | None = None) -> TagsResult:
        started = time.perf_counter()
        seeds = seed_tags(prompt, self.preset)
        messages = [system(TAGS_SYSTEM), user(f"Idea: {prompt}\nSeed tags: {', '.join(seeds)}\nReply: one comma-separated tag list.")]

        def make_ask(model: str) -> Ask:
            if model == "rules":
                return self._offline("tags", "candidate", rules_tags(prompt, self.preset))
            return self._chat("tags", "candidate", model, messages, temperature=TAGS_TEMPERATURE, max_tokens=TAGS_MAX_TOKENS)

        answers = await self._gather("tags", "candidate", self.candidates, make_ask, previous and previous.candidates, only)
        self._report_failures("tags", answers, "candidate")
        texts = [a.text for a in answers if a.ok]
        attempts: list[Answer] = []
        if not texts:
            # SPEC 1.5: nobody answered, so the prompt and the seed tags are the positive.
            self.emit(Notice("tags", "warning", "no candidate answered: using the prompt and the preset's seed tags"))
            aggregated, source = "", "fallback"
            positive = rules_tags(prompt, self.preset)
        else:
            joined = DIVIDER.join(texts)

            def make_agg(model: str) -> Ask:
                if model == "rules":
                    return self._offline("tags", "aggregator", ", ".join(texts))
                agg_messages = [system(TAGS_AGG_SYSTEM), user(f"Idea: {prompt}\nCandidate lists:\n{joined}")]
                return self._chat("tags", "aggregator", model, agg_messages, temperature=TAGS_AGG_TEMPERATURE, max_tokens=TAGS_AGG_MAX_TOKENS)

            attempts = await self._aggregate("tags", make_agg)
            if attempts and attempts[-1].ok:
                aggregated, source = attempts[-1].text, "aggregator"
            else:
                # No aggregator answered: the candidates' own lists, in order, stand in for it.
                self.emit(Notice("tags", "warning", "no aggregator answered: merging the candidates' lists in order"))
                aggregated, source = ", ".join(texts), "candidates"
            positive = postprocess_tags(aggregated, prompt, self.preset)
        return TagsResult(
            prompt=prompt, preset=self.preset, candidates=answers, aggregator=attempts,
            aggregated=aggregated, positive=positive, negative=negative_tags(self.preset),
            source=source, seconds=time.perf_counter() - started,
        )

    # ---------------------------------------------------------------- stage 2: components

    async def components(
        self, prompt: str, *, previous: ComponentsResult | None = None, only: Iterable[str] | None = None
    ) -> ComponentsResult:
        started = time.perf_counter()
        messages = [system(COMPONENTS_SYSTEM), user(prompt)]

        def make_ask(model: str) -> Ask:
            if model == "rules":
                return self._offline("components", "candidate", json.dumps({"components": rules_components(prompt)}))
            return self._chat(
                "components", "candidate", model, messages,
                temperature=COMPONENTS_TEMPERATURE, max_tokens=COMPONENTS_MAX_TOKENS,
            )

        answers = await self._gather("components", "candidate", self.candidates, make_ask, previous and previous.candidates, only)
        self._report_failures("components", answers, "candidate")
        texts = [a.text for a in answers if a.ok]
        attempts: list[Answer] = []
        components: list[str] = []
        source = "fallback"
        if texts:
            joined = DIVIDER.join(texts)

            def make_agg(model: str) -> Ask:
                if model == "rules":
                    return self._offline("components", "aggregator", json.dumps({"components": _union_components(texts)}))
                agg_messages = [system(COMPONENTS_AGG_SYSTEM), user(f"Description: {prompt}\nAnswers:\n{joined}")]
                return self._chat(
                    "components", "aggregator", model, agg_messages,
                    temperature=COMPONENTS_AGG_TEMPERATURE, max_tokens=COMPONENTS_AGG_MAX_TOKENS,
                )

            attempts = await self._aggregate("components", make_agg, check=_check_components)
            if attempts and attempts[-1].ok:
                components, source = parse_components(attempts[-1].text), "aggregator"
            else:
                self.emit(Notice("components", "warning", "no aggregator answered usably: merging the candidates' components"))
                components, source = _union_components(texts), "candidates"
        if not components:
            self.emit(Notice("components", "warning", "no usable components: using the prompt's own clauses"))
            components, source = rules_components(prompt)[:MAX_COMPONENTS], "fallback"
        return ComponentsResult(
            prompt=prompt, candidates=answers, aggregator=attempts, components=components,
            source=source, seconds=time.perf_counter() - started,
        )

    async def tags_and_components(self, prompt: str) -> tuple[TagsResult, ComponentsResult]:
        """Stages 1 and 2 are independent: run them at the same time."""
        tags, components = await asyncio.gather(self.tags(prompt), self.components(prompt))
        return tags, components

    # ---------------------------------------------------------------- stage 4: critique

    async def critique(
        self,
        image_png: bytes,
        image_prompt: str,
        components: Sequence[str],
        *,
        ask_alignment: bool = False,
        previous: CritiqueResult | None = None,
        only: Iterable[str] | None = None,
    ) -> CritiqueResult:
        """Every VLM criticises the image made from `image_prompt`; the aggregator merges them."""
        started = time.perf_counter()
        components = list(components)
        question = CRITIC_USER.format(prompt=image_prompt, components=json.dumps(components, ensure_ascii=False))
        if ask_alignment:
            question += CRITIC_ALIGNMENT
        messages = [system(CRITIC_SYSTEM), user(question)]

        def make_ask(model: str) -> Ask:
            if model == "rules":
                verdict = rules_critique(image_prompt, components)
                self.emit(Notice("critique", "info", verdict.note))
                return self._offline("critique", "vlm", f"<issues></issues>\n<refined>{verdict.refined}</refined>")
            return self._chat(
                "critique", "vlm", model, messages,
                temperature=CRITIC_TEMPERATURE, max_tokens=CRITIC_MAX_TOKENS, image=image_png,
            )

        previous_answers = [c.answer for c in previous.critics] if previous else None
        # An answer without the tags asked for is a failed critic (check_critic).
        answers = await self._gather("critique", "vlm", self.vlms, make_ask, previous_answers, only, check_critic)
        critics = [parse_critic(a, image_prompt, alignment=ask_alignment) if a.ok else Critic(a) for a in answers]
        self._report_failures("critique", [c.answer for c in critics], "critic")
        usable = [c for c in critics if c.answer.ok]
        alignments = [c.alignment for c in usable if c.alignment is not None]
        alignment = round(sum(alignments) / len(alignments), 1) if alignments else None
        attempts: list[Answer] = []
        if not usable:
            # SPEC 4: no critic answered, so the prompt stands and there are no issues.
            self.emit(Notice("critique", "warning", "no vision model answered: the refinement keeps the prompt"))
            return CritiqueResult(
                image_prompt, components, critics, attempts, [], clip77_strict(image_prompt), None,
                "none", time.perf_counter() - started,
            )
        issues_block = "\n".join(f"[{c.answer.model}] {line}" for c in usable for line in c.issues)
        refined_block = "\n".join(f"[{c.answer.model}] {c.refined}" for c in usable)

        def make_agg(model: str) -> Ask:
            if model == "rules":
                merged_issues = dedup_keep_order(line for c in usable for line in c.issues)[:MAX_ISSUES]
                merged = "<issues>" + "\n".join(merged_issues) + f"</issues>\n<refined>{usable[0].refined}</refined>"
                return self._offline("critique", "aggregator", merged)
            agg_messages = [system(CRITIC_AGG_SYSTEM), user(f"Issues:\n{issues_block}\n\n----\n\nRefined prompts:\n{refined_block}")]
            return self._chat(
                "critique", "aggregator", model, agg_messages,
                temperature=CRITIC_AGG_TEMPERATURE, max_tokens=CRITIC_AGG_MAX_TOKENS,
            )

        attempts = await self._aggregate("critique", make_agg, check=check_merged_critique)
        merged = extract_tag(attempts[-1].text, "refined") if attempts and attempts[-1].ok else None
        if merged:
            issues = issue_lines(extract_tag(attempts[-1].text, "issues") or "")
            refined, source = clip77_strict(merged), "aggregator"
        else:
            self.emit(Notice("critique", "warning", "no aggregator answered: using the first critic's report"))
            issues, refined, source = usable[0].issues, usable[0].refined, "critic"
        return CritiqueResult(
            image_prompt, components, critics, attempts, issues, refined, alignment, source,
            time.perf_counter() - started,
        )

    # ---------------------------------------------------------------- stage 5: merge

    @staticmethod
    def refinement_prompt(critique: CritiqueResult | str, tags: TagsResult | str) -> str:
        """SPEC 5: the critic's refined prompt merged with the stage-1 tags."""
        refined = critique.refined if isinstance(critique, CritiqueResult) else critique
        positive = tags.positive if isinstance(tags, TagsResult) else tags
        return merge_critique_with_tags(refined, positive)


class _Unusable(Exception):
    """An answer that came but failed its stage's check (internal to `_call`)."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(reason)
        self.text, self.reason = text, reason


def _ref(text: str) -> str:
    """A model reference in its one canonical spelling ("together: x " -> "together:x")."""
    return str(ModelRef.parse(text))


def _winner(attempts: Sequence[Answer]) -> str | None:
    """The aggregator that won: the last attempt, when it answered usably."""
    return attempts[-1].model if attempts and attempts[-1].ok else None


def _check_components(text: str) -> None:
    parse_components(text)  # raises ValueError when there is no components list


def _union_components(texts: Iterable[str]) -> list[str]:
    """Every parseable candidate's components in order, without repeats, at most 6."""
    found: list[str] = []
    for text in texts:
        try:
            found.extend(parse_components(text))
        except ValueError:
            continue
    return dedup_keep_order(found)[:MAX_COMPONENTS]
