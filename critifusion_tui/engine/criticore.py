"""CritiCore: the four text stages of the method (SPEC 1, 2, 4, 5) over a provider router.

Every stage asks its models in parallel, records each model's answer, error and time, checks
each answer against the shape the stage asked for (``engine/answers.py``), then asks the
aggregator (the first of its list that answers usably) to merge the usable ones. A failing
model, or one whose answer is unusable (an echo of our instructions, a placeholder, prose
instead of tags), never stops a stage: it is recorded with its reason, shown through an
event, and the stage goes on with the others, down to the method's own fallbacks when nobody
answered. With one usable answer there is nothing to merge and no aggregator is asked.

Every stage can be re-run alone with edited inputs, and `only=` re-asks some models while
keeping the other answers of a previous result. A model listed twice in a role is asked twice
and keeps both answers, the second under ``<ref>#2``.

The messages are the templates of ``instructions.py`` (our words for what SPEC.md asks);
the numbers (temperatures, token limits, counts) are the method's.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.answers import (
    COMPONENTS_SCHEMA,
    CRITIQUE_SCHEMA,
    EchoGuard,
    Reading,
    extract_tag,
    issue_lines,
    read_components,
    read_critique,
    read_prose,
    read_tags,
)
from critifusion_tui.engine.events import (
    CandidateDelta,
    CandidateFinished,
    CandidateStarted,
    Emit,
    Notice,
    ignore,
)
from critifusion_tui.instructions import DEFAULT_INSTRUCTIONS, Instructions
from critifusion_tui.instructions import DEFAULTS as DEFAULT_TEMPLATES
from critifusion_tui.engine.prompts import (
    dedup_keep_order,
    negative_tags,
    positive_prompt,
    prose_prompt,
    refinement_prompt,
    seed_tags,
)
from critifusion_tui.engine.tokens import clip77_strict
from critifusion_tui.engine.ledger import estimate_tokens
from critifusion_tui.engine.offline import rules_components, rules_critique, rules_tags
from critifusion_tui.providers.base import (
    ChatResult,
    ModelRef,
    ProviderError,
    current_meter,
    metered,
    short_detail,
    system,
    user,
)

if TYPE_CHECKING:
    from critifusion_tui.engine.answer_cache import AnswerCache
    from critifusion_tui.engine.replay import Replay

__all__ = [
    "Answer",
    "ComponentsResult",
    "CritiCore",
    "Critic",
    "CritiqueResult",
    "TagsResult",
    "extract_tag",
    "issue_lines",
    "parse_alignment",
    "parse_components",
    "parse_critic",
]

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
FAILED_EXCERPT = 2000  # characters of a failed answer kept in the manifest

# --- What each call asks: the templates live in instructions.py ---------------------
# (kept here under their old names for code that imported them from this module)

TAGS_SYSTEM = DEFAULT_TEMPLATES["tags_system"].text
TAGS_AGG_SYSTEM = DEFAULT_TEMPLATES["tags_agg_system"].text
COMPONENTS_SYSTEM = DEFAULT_TEMPLATES["components_system"].text
COMPONENTS_AGG_SYSTEM = DEFAULT_TEMPLATES["components_agg_system"].text
CRITIC_SYSTEM = DEFAULT_TEMPLATES["critic_system"].text
CRITIC_USER = DEFAULT_TEMPLATES["critic_user"].text
CRITIC_ALIGNMENT = DEFAULT_TEMPLATES["critic_alignment"].text
CRITIC_AGG_SYSTEM = DEFAULT_TEMPLATES["critic_agg_system"].text


# --- Results -------------------------------------------------------------------------------


@dataclass
class Answer:
    """One model's part in a stage: what it said, or why it said nothing (or nothing usable)."""

    model: str  # the model reference, "#2" added for a second listing of the same model
    role: str  # candidate, aggregator or vlm
    text: str = ""
    error: str | None = None
    error_code: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the check dropped or flagged
    # How the shape was asked for, when constrained output was requested: "json_schema",
    # or "free (json_schema refused)" when the server would not take it; None otherwise.
    output: str | None = None
    reading: Reading | None = field(default=None, repr=False, compare=False)
    origin: str = "provider"  # where the answer came from: provider, cache or replay

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict[str, Any]:
        # A failed answer keeps only an excerpt: the manifest is rewritten after every stage.
        text = self.text if self.ok or len(self.text) <= FAILED_EXCERPT else self.text[:FAILED_EXCERPT] + " …[cut]"
        record: dict[str, Any] = {
            "model": self.model,
            "text": text,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }
        if self.error_code == "unusable_answer":
            record["unusable"] = True
        if self.notes:
            record["notes"] = list(self.notes)
        if self.output:
            record["output"] = self.output
        if self.origin != "provider":
            record["from"] = self.origin
        return record


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
    source: str  # aggregator, candidates (no aggregator answered or nothing to merge) or fallback
    seconds: float = 0.0
    style: str = "tags"  # the instructions' style: "tags" lists or "prose" sentences
    instructions: dict[str, dict[str, str]] = field(default_factory=dict)

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
        if self.style == "prose":
            return prose_prompt(_tags_text(answer), self.prompt)
        return positive_prompt(_tags_text(answer), self.prompt, self.preset)

    def record(self) -> dict[str, Any]:
        return {
            "candidates": [a.record() for a in self.candidates],
            "aggregator": [a.record() for a in self.aggregator],
            "aggregated_by": self.aggregated_by,
            "aggregated": self.aggregated,
            "positive": self.positive,
            "negative": self.negative,
            "source": self.source,
            "style": self.style,
            "instructions": self.instructions,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ComponentsResult:
    """Stage 2: 3 to 6 checkable visual components of the prompt."""

    prompt: str
    candidates: list[Answer]
    aggregator: list[Answer]
    components: list[str]
    source: str  # aggregator, candidates (no aggregator answer, or nothing to merge) or fallback
    seconds: float = 0.0
    instructions: dict[str, dict[str, str]] = field(default_factory=dict)

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
            "instructions": self.instructions,
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
        record = {
            "model": self.answer.model,
            "text": self.answer.text,
            "issues": list(self.issues),
            "refined": self.refined,
            "alignment": self.alignment,
            "error": self.answer.error,
            "seconds": round(self.answer.seconds, 3),
        }
        if self.answer.error_code == "unusable_answer":
            record["unusable"] = True
        if self.answer.notes:
            record["notes"] = list(self.answer.notes)
        if self.answer.output:
            record["output"] = self.answer.output
        if self.answer.origin != "provider":
            record["from"] = self.answer.origin
        return record


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
    source: str  # aggregator, critic (no aggregator answered, or one critic) or none (no critic)
    seconds: float = 0.0
    instructions: dict[str, dict[str, str]] = field(default_factory=dict)

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
            "instructions": self.instructions,
            "seconds": round(self.seconds, 3),
        }
        if self.alignment is not None:
            record["alignment"] = self.alignment
        return record


# --- Parsing (kept as functions: other code and scripts call them) ---------------------------


def parse_alignment(text: str) -> float | None:
    """The first number of an <alignment> tag (or a JSON answer's "alignment"), its sign kept,
    clamped to 0..100; None when missing or holding no number. The rating is model output:
    never trusted as is."""
    found = extract_tag(text, "alignment")
    if found is None:
        try:
            data = json.loads(text)
            found = str(data.get("alignment", "")) if isinstance(data, dict) else None
        except ValueError:
            found = None
    match = re.search(r"-?\d+(?:\.\d+)?", found or "")
    return min(100.0, max(0.0, float(match.group()))) if match else None


def parse_components(text: str) -> list[str]:
    """SPEC 2: the components of a JSON answer, read as ``answers.read_components`` does.

    Raises ValueError with the reason when the answer holds no usable components.
    """
    reading = read_components(text)
    if reading.problem:
        raise ValueError(reading.problem)
    return list(reading.items)


NO_CRITIC_TAGS = "the answer holds neither <issues> nor <refined>"
NO_REFINED_TAG = "the answer holds no <refined>"


def check_critic(text: str) -> None:
    """Raise ValueError when a critic's answer cannot be used (see ``answers.read_critique``)."""
    reading = read_critique(text)
    if reading.problem:
        raise ValueError(reading.problem)


def check_merged_critique(text: str) -> None:
    """Raise ValueError when the critique aggregator's answer has no usable <refined>."""
    reading = read_critique(text, need_refined=True)
    if reading.problem:
        raise ValueError(reading.problem)


def parse_critic(answer: Answer, fallback_refined: str, *, alignment: bool = True) -> Critic:
    """SPEC 4: issues (<= 5 lines) and refined (CLIP-77 strict) from one critic's answer.

    `alignment`: read the <alignment> rating too (only when the critic was asked for one).
    An answer the check already read keeps that reading (it knew the echo guard).
    """
    reading = answer.reading or read_critique(answer.text)
    if reading.problem:
        bad = replace(answer, error=f"{answer.model}: unusable answer: {reading.problem}", error_code="unusable_answer")
        return Critic(bad)
    return Critic(
        answer,
        issues=list(reading.items),
        refined=clip77_strict(reading.refined or fallback_refined),
        alignment=parse_alignment(answer.text) if alignment else None,
    )


# --- The stages ----------------------------------------------------------------------------

Ask = Callable[[], Awaitable[Any]]  # the answer's text, or a ChatResult
Read = Callable[[str], Reading]


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
        instructions: Instructions | None = None,
    ) -> None:
        self.router = router
        self.candidates = slot_labels(str(ModelRef.parse(r)) for r in candidates)
        self.aggregators = [str(ModelRef.parse(r)) for r in aggregator]
        self.vlms = slot_labels(str(ModelRef.parse(r)) for r in vlms)
        self.preset = preset
        self.emit = emit
        self.instructions = instructions or DEFAULT_INSTRUCTIONS
        # One entry per model call (engine/ledger.py); the pipeline keeps it in the manifest.
        self.ledger: list[dict[str, Any]] = []
        # Where answers may come from instead of a request: a past run's (engine/replay.py),
        # or the answer cache (engine/answer_cache.py). Neither is ever a provider.
        self.replay: Replay | None = None
        self.cache: AnswerCache | None = None
        self._fresh: set[tuple[str, str]] = set()  # (stage, slot) retried on purpose: not from the cache

    @classmethod
    def from_settings(cls, router, settings, emit: Emit = ignore) -> CritiCore:
        core = settings.criticore
        made = cls(
            router,
            candidates=core.candidates,
            aggregator=core.aggregator,
            vlms=core.vlms,
            preset=core.preset,
            emit=emit,
            instructions=Instructions.from_config(getattr(core, "instructions", None)),
        )
        if getattr(core, "cache", "off") == "read-write":
            from critifusion_tui.engine.answer_cache import AnswerCache

            made.cache = AnswerCache()
        return made

    @property
    def style(self) -> str:
        """The instructions' style: "tags" (SDXL tag lists) or "prose" (sentences)."""
        return self.instructions.preset

    def _guard(self, names: Sequence[str], *data: str) -> EchoGuard:
        """An echo guard for a call that sent the templates `names` filled with `data`."""
        return EchoGuard(self.instructions.fixed_wording(names), data)

    # ---------------------------------------------------------------- one call

    async def _call(self, stage: str, role: str, model: str, ask: Ask, read: Read | None = None) -> Answer:
        """Run one model's call, timing it and turning any failure into a recorded error.

        `read` checks the answer against the stage's shape: an answer with a problem is
        recorded as an ``unusable_answer`` error with the reason, text kept, and the finished
        event already says so; a usable one keeps the reading and its notes. The offline
        ``rules`` model is read too (its items feed the merge) but is never flagged.
        """
        self.emit(CandidateStarted(stage, role=role, model=model))
        started = time.perf_counter()
        reading: Reading | None = None
        output: str | None = None
        with metered() as meter:  # counts the call's requests, retries, 429s and tokens
            try:
                result = await ask()
                text = result if isinstance(result, str) else result.text
                output = getattr(result, "output", None)
                reading = read(text) if read is not None else None
            except ProviderError as exc:
                answer = Answer(model, role, error=str(exc), error_code=exc.code)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a bug or an unexpected client error: visible, not fatal
                answer = Answer(
                    model, role, error=f"{type(exc).__name__}: {short_detail(exc, 500)}", error_code="unexpected"
                )
            else:
                notes = list(reading.notes) if reading is not None and not _is_rules(model) else []
                if getattr(result, "truncated", False):
                    notes.append(f"the answer was cut at {len(text):,} characters (the size cap for its max_tokens)")
                if reading is not None and reading.problem:
                    answer = Answer(
                        model,
                        role,
                        text=text,
                        error=f"{model}: unusable answer: {reading.problem}",
                        error_code="unusable_answer",
                        notes=notes,
                    )
                else:
                    answer = Answer(model, role, text=text, notes=notes, reading=reading)
                answer.output = output
        answer.seconds = time.perf_counter() - started
        if not _is_rules(model):
            self.ledger.append(_ledger_entry(stage, role, answer, meter))
        answer.origin = getattr(meter, "source", "provider")
        self.emit(
            CandidateFinished(
                stage,
                role=role,
                model=model,
                text=answer.text,
                error=answer.error,
                seconds=answer.seconds,
                notes=tuple(answer.notes),
                origin=answer.origin,
            )
        )
        return answer

    def _offline(self, stage: str, role: str, text: str) -> Ask:
        """An Ask for the offline ``rules`` model: answers at once, as one streamed piece."""

        async def ask() -> str:
            if text:
                self.emit(CandidateDelta(stage, role=role, model="rules", text=text))
            return text

        return ask

    def _chat(
        self, stage: str, role: str, model: str, messages, *, temperature, max_tokens, image=None, schema=None
    ) -> Ask:
        """An Ask that chats with `model` (a slot label), streaming each cleaned piece as an event.

        `schema`: the answer's JSON schema, for backends that can constrain output to it.
        """

        async def ask():
            if self.replay is not None:
                # A replay never asks a provider: the recorded answer, or the recorded failure.
                text, output = self.replay.answer(stage, role, model)
                return self._served(stage, role, model, text, output, "replay")
            key = None
            if self.cache is not None:
                from critifusion_tui.engine.answer_cache import cache_key

                key = cache_key(
                    model, messages, temperature=temperature, max_tokens=max_tokens, image=image, schema=schema
                )
                hit = None if (stage, model) in self._fresh else self.cache.get(key)
                if hit is not None:
                    return self._served(stage, role, model, hit["text"], hit.get("output"), "cache")
            chat_model = self.router.model(model_of(model))
            extra = {"schema": schema} if schema is not None else {}
            result = await chat_model.chat(
                messages,
                temperature=temperature,
                max_tokens=max_tokens,
                image=image,
                on_delta=lambda piece: self.emit(CandidateDelta(stage, role=role, model=model, text=piece)),
                **extra,
            )
            meter = current_meter()
            if meter is not None and (meter.tokens_in is None or meter.tokens_out is None):
                # The server reported no usage: count the text (images are not counted).
                meter.counted = True
                if meter.tokens_in is None:
                    meter.tokens_in = estimate_tokens(m.content for m in messages)
                if meter.tokens_out is None:
                    meter.tokens_out = estimate_tokens([result.text])
            if key is not None:
                self.cache.put(key, model=model, text=result.text, output=getattr(result, "output", None))
            if schema is None and not getattr(result, "truncated", False):
                return result.text
            return result

        return ask

    def _served(self, stage: str, role: str, model: str, text: str, output: str | None, origin: str) -> ChatResult:
        """An answer that came without a request (a replay or the cache): shown as one piece,
        metered as free, and said so in its pane."""
        meter = current_meter()
        if meter is not None:
            meter.source = origin
            meter.tokens_in = meter.tokens_in or 0
            meter.tokens_out = meter.tokens_out or 0
        if text:
            self.emit(CandidateDelta(stage, role=role, model=model, text=text))
        return ChatResult(text, ModelRef.parse(model_of(model)), 0.0, output=output or "free")

    async def _gather(
        self,
        stage: str,
        role: str,
        models: Sequence[str],
        make_ask: Callable[[str], Ask],
        previous: Sequence[Answer] | None,
        only: Iterable[str] | None,
        read: Read | None = None,
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
        # A model retried on purpose is asked again, whatever the cache holds.
        retried = {(stage, m) for m in redo} if only is not None else set()
        self._fresh |= retried
        try:
            fresh = await asyncio.gather(*(self._call(stage, role, m, make_ask(m), read) for m in todo))
        finally:
            self._fresh -= retried
        by_model = {**kept, **dict(zip(todo, fresh))}
        return [by_model[m] for m in models]

    async def _aggregate(self, stage: str, make_ask: Callable[[str], Ask], read: Read | None = None) -> list[Answer]:
        """Try the aggregators in order until one answers usably; every attempt is kept."""
        attempts = []
        for model in self.aggregators:
            answer = await self._call(stage, "aggregator", model, make_ask(model), read)
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
                Notice(
                    stage, "warning", f"{len(failed)} of {len(answers)} {role}s failed: {who}; going on with the others"
                )
            )

    def _retry_changed_nothing(self, stage: str, only, previous, now: list, before: Callable[[Any], list]) -> bool:
        """A retry of some models (`only`) that left the usable answers as they were: the
        merge stands, so the aggregator is not asked again (and nothing downstream changes)."""
        if only is None or previous is None or now != before(previous):
            return False
        self.emit(
            Notice(stage, "info", "the retry changed no usable answer: the merged result stands (no aggregator asked)")
        )
        return True

    def _nothing_to_merge(self, stage: str, answer: Answer) -> None:
        self.emit(Notice(stage, "info", f"only {answer.model} answered usably: nothing to merge, no aggregator asked"))

    # ---------------------------------------------------------------- stage 1: tags

    async def tags(
        self, prompt: str, *, previous: TagsResult | None = None, only: Iterable[str] | None = None
    ) -> TagsResult:
        started = time.perf_counter()
        seeds = ", ".join(seed_tags(prompt, self.preset))
        ins = self.instructions
        messages = [system(ins.text("tags_system")), user(ins.render("tags_user", prompt=prompt, seed_tags=seeds))]
        guard = self._guard(("tags_system", "tags_user"), prompt, seeds)
        used = ["tags_system", "tags_user"]

        def make_ask(model: str) -> Ask:
            if _is_rules(model):
                return self._offline("tags", "candidate", rules_tags(prompt, self.preset))
            return self._chat(
                "tags", "candidate", model, messages, temperature=TAGS_TEMPERATURE, max_tokens=TAGS_MAX_TOKENS
            )

        prose = self.style == "prose"

        def read(text: str) -> Reading:
            # The reading follows the style asked for: sentences are the answer in prose.
            return read_prose(text, guard, prompt=prompt) if prose else read_tags(text, guard, prompt=prompt)

        previous_answers = previous.candidates if previous is not None else None
        answers = await self._gather("tags", "candidate", self.candidates, make_ask, previous_answers, only, read)
        self._report_failures("tags", answers, "candidate")
        usable = [a for a in answers if a.ok]
        texts = [_tags_text(a) for a in usable]
        if previous is not None and self._retry_changed_nothing(
            "tags", only, previous, texts, lambda r: [_tags_text(a) for a in r.candidates if a.ok]
        ):
            return replace(previous, candidates=answers)
        attempts: list[Answer] = []
        if not texts:
            # SPEC 1.5: nobody answered, so the prompt and the seed tags are the positive.
            self.emit(
                Notice("tags", "warning", "no candidate answered usably: using the prompt and the preset's seed tags")
            )
            aggregated, source = "", "fallback"
            positive = rules_tags(prompt, self.preset)
        else:
            if len(texts) == 1:
                self._nothing_to_merge("tags", usable[0])
                aggregated, source = texts[0], "candidates"
            else:
                joined = DIVIDER.join(texts)
                agg_messages = [
                    system(ins.text("tags_agg_system")),
                    user(ins.render("tags_agg_user", prompt=prompt, answers=joined)),
                ]
                agg_guard = self._guard(("tags_agg_system", "tags_agg_user"), prompt, joined)

                def make_agg(model: str) -> Ask:
                    if _is_rules(model):
                        return self._offline("tags", "aggregator", (" " if prose else ", ").join(texts))
                    return self._chat(
                        "tags",
                        "aggregator",
                        model,
                        agg_messages,
                        temperature=TAGS_AGG_TEMPERATURE,
                        max_tokens=TAGS_AGG_MAX_TOKENS,
                    )

                def read_agg(text: str) -> Reading:
                    if prose:
                        return read_prose(text, agg_guard, prompt=prompt)
                    return read_tags(text, agg_guard, prompt=prompt)

                attempts = await self._aggregate("tags", make_agg, read_agg)
                used += ["tags_agg_system", "tags_agg_user"]
                if attempts and attempts[-1].ok:
                    aggregated, source = _tags_text(attempts[-1]), "aggregator"
                else:
                    # No aggregator answered: the candidates' own lists, in order, stand in for it.
                    self.emit(
                        Notice("tags", "warning", "no aggregator answered: merging the candidates' lists in order")
                    )
                    aggregated, source = (texts[0] if prose else ", ".join(texts)), "candidates"
            positive = prose_prompt(aggregated, prompt) if prose else positive_prompt(aggregated, prompt, self.preset)
        return TagsResult(
            prompt=prompt,
            preset=self.preset,
            candidates=answers,
            aggregator=attempts,
            aggregated=aggregated,
            positive=positive,
            negative=negative_tags(self.preset),
            source=source,
            seconds=time.perf_counter() - started,
            style=self.style,
            instructions=self.instructions.record(used),
        )

    # ---------------------------------------------------------------- stage 2: components

    async def components(
        self, prompt: str, *, previous: ComponentsResult | None = None, only: Iterable[str] | None = None
    ) -> ComponentsResult:
        started = time.perf_counter()
        ins = self.instructions
        messages = [system(ins.text("components_system")), user(ins.render("components_user", prompt=prompt))]
        guard = self._guard(("components_system", "components_user"), prompt)
        used = ["components_system", "components_user"]

        def make_ask(model: str) -> Ask:
            if _is_rules(model):
                return self._offline("components", "candidate", json.dumps({"components": rules_components(prompt)}))
            return self._chat(
                "components",
                "candidate",
                model,
                messages,
                temperature=COMPONENTS_TEMPERATURE,
                max_tokens=COMPONENTS_MAX_TOKENS,
                schema=COMPONENTS_SCHEMA,
            )

        answers = await self._gather(
            "components",
            "candidate",
            self.candidates,
            make_ask,
            previous.candidates if previous is not None else None,
            only,
            lambda text: read_components(text, guard),
        )
        self._report_failures("components", answers, "candidate")
        usable = [a for a in answers if a.ok]
        lists = [_items(a) for a in usable]
        if previous is not None and self._retry_changed_nothing(
            "components", only, previous, lists, lambda r: [_items(a) for a in r.candidates if a.ok]
        ):
            return replace(previous, candidates=answers)
        attempts: list[Answer] = []
        components: list[str] = []
        source = "fallback"
        if len(lists) == 1:
            self._nothing_to_merge("components", usable[0])
            components, source = lists[0][:MAX_COMPONENTS], "candidates"
        elif lists:
            # The aggregator sees each answer as the checked JSON, not the prose around it.
            joined = DIVIDER.join(json.dumps({"components": items}, ensure_ascii=False) for items in lists)
            agg_messages = [
                system(ins.text("components_agg_system")),
                user(ins.render("components_agg_user", prompt=prompt, answers=joined)),
            ]
            agg_guard = self._guard(("components_agg_system", "components_agg_user"), prompt, joined)

            def make_agg(model: str) -> Ask:
                if _is_rules(model):
                    return self._offline("components", "aggregator", json.dumps({"components": _union(lists)}))
                return self._chat(
                    "components",
                    "aggregator",
                    model,
                    agg_messages,
                    temperature=COMPONENTS_AGG_TEMPERATURE,
                    max_tokens=COMPONENTS_AGG_MAX_TOKENS,
                    schema=COMPONENTS_SCHEMA,
                )

            attempts = await self._aggregate("components", make_agg, lambda text: read_components(text, agg_guard))
            used += ["components_agg_system", "components_agg_user"]
            if attempts and attempts[-1].ok:
                components, source = _items(attempts[-1]), "aggregator"
            else:
                self.emit(
                    Notice("components", "warning", "no aggregator answered usably: merging the candidates' components")
                )
                components, source = _union(lists), "candidates"
        if not components:
            self.emit(Notice("components", "warning", "no usable components: using the prompt's own clauses"))
            components, source = rules_components(prompt)[:MAX_COMPONENTS], "fallback"
        return ComponentsResult(
            prompt=prompt,
            candidates=answers,
            aggregator=attempts,
            components=components,
            source=source,
            seconds=time.perf_counter() - started,
            instructions=self.instructions.record(used),
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
        stage: str = "critique",
        history: tuple[int, str] | None = None,
        merge: bool = True,
    ) -> CritiqueResult:
        """Every VLM criticises the image made from `image_prompt`; the aggregator merges them.

        `stage` names the calls in events, the ledger and a replay: ``critique_original`` for
        the comparison branch, whose critique may run beside the full method's. `history`:
        (the round whose image this is, what earlier rounds reported), for critique rounds.
        `merge` False: the critics' ratings are all that is wanted (rating best-of-N bases), so
        no aggregator is asked; the first usable critic's report stands as the result's."""
        started = time.perf_counter()
        components = list(components)
        ins = self.instructions
        components_json = json.dumps(components, ensure_ascii=False)
        question = ins.render("critic_user", prompt=image_prompt, components=components_json)
        if ask_alignment:
            question += ins.text("critic_alignment")
        told: tuple[str, ...] = ()
        if history is not None:
            question += ins.render("critic_history", round=str(history[0]), history=history[1])
            told = (history[1],)
        messages = [system(ins.text("critic_system")), user(question)]
        guard = self._guard(
            ("critic_system", "critic_user", "critic_alignment", "critic_history"), image_prompt, components_json, *told
        )
        used = ["critic_system", "critic_user"] + (["critic_alignment"] if ask_alignment else [])
        used += ["critic_history"] if history is not None else []

        def make_ask(model: str) -> Ask:
            if _is_rules(model):
                verdict = rules_critique(image_prompt, components)
                self.emit(Notice(stage, "info", verdict.note))
                return self._offline(stage, "vlm", f"<issues></issues>\n<refined>{verdict.refined}</refined>")
            return self._chat(
                stage,
                "vlm",
                model,
                messages,
                temperature=CRITIC_TEMPERATURE,
                max_tokens=CRITIC_MAX_TOKENS,
                image=image_png,
                schema=CRITIQUE_SCHEMA,
            )

        previous_answers = [c.answer for c in previous.critics] if previous else None
        answers = await self._gather(
            stage, "vlm", self.vlms, make_ask, previous_answers, only, lambda text: read_critique(text, guard)
        )
        critics = [parse_critic(a, image_prompt, alignment=ask_alignment) if a.ok else Critic(a) for a in answers]
        self._report_failures(stage, [c.answer for c in critics], "critic")
        usable = [c for c in critics if c.answer.ok]
        said = [c.answer.text for c in usable]
        if previous is not None and self._retry_changed_nothing(
            stage, only, previous, said, lambda r: [c.answer.text for c in r.critics if c.answer.ok]
        ):
            return replace(previous, critics=critics)
        alignments = [c.alignment for c in usable if c.alignment is not None]
        alignment = round(sum(alignments) / len(alignments), 1) if alignments else None
        attempts: list[Answer] = []
        if not merge:
            first = usable[0] if usable else None
            return CritiqueResult(
                image_prompt,
                components,
                critics,
                attempts,
                list(first.issues) if first else [],
                first.refined if first else clip77_strict(image_prompt),
                alignment,
                "critic" if first else "none",
                time.perf_counter() - started,
                self.instructions.record(used),
            )
        if not usable:
            # SPEC 4: no critic answered, so the prompt stands and there are no issues.
            self.emit(Notice(stage, "warning", "no vision model answered usably: the refinement keeps the prompt"))
            return CritiqueResult(
                image_prompt,
                components,
                critics,
                attempts,
                [],
                clip77_strict(image_prompt),
                None,
                "none",
                time.perf_counter() - started,
                self.instructions.record(used),
            )
        # A critic that saw nothing (the offline rules critic: the prompt back, no issues) has
        # nothing to merge; with one critic left that said something, its report stands.
        telling = [c for c in usable if not _changed_nothing(c, image_prompt)]
        if len(telling) <= 1:
            only_one = (telling or usable)[0]
            self._nothing_to_merge(stage, only_one.answer)
            return CritiqueResult(
                image_prompt,
                components,
                critics,
                attempts,
                list(only_one.issues),
                only_one.refined,
                alignment,
                "critic",
                time.perf_counter() - started,
                self.instructions.record(used),
            )
        issues_block = "\n".join(f"[{c.answer.model}] {line}" for c in telling for line in c.issues)
        refined_block = "\n".join(f"[{c.answer.model}] {c.refined}" for c in telling)
        agg_messages = [
            system(ins.text("critic_agg_system")),
            user(ins.render("critic_agg_user", issues=issues_block, refined=refined_block)),
        ]
        agg_guard = self._guard(("critic_agg_system", "critic_agg_user"), issues_block, refined_block)

        def make_agg(model: str) -> Ask:
            if _is_rules(model):
                merged_issues = dedup_keep_order(line for c in telling for line in c.issues)[:MAX_ISSUES]
                merged = "<issues>" + "\n".join(merged_issues) + f"</issues>\n<refined>{telling[0].refined}</refined>"
                return self._offline(stage, "aggregator", merged)
            return self._chat(
                stage,
                "aggregator",
                model,
                agg_messages,
                temperature=CRITIC_AGG_TEMPERATURE,
                max_tokens=CRITIC_AGG_MAX_TOKENS,
                schema=CRITIQUE_SCHEMA,
            )

        attempts = await self._aggregate(
            stage, make_agg, lambda text: read_critique(text, agg_guard, need_refined=True)
        )
        used += ["critic_agg_system", "critic_agg_user"]
        won = attempts[-1].reading if attempts and attempts[-1].ok else None
        if won is not None:
            issues, refined, source = list(won.items), clip77_strict(won.refined), "aggregator"
        else:
            self.emit(Notice(stage, "warning", "no aggregator answered: using the first critic's report"))
            issues, refined, source = telling[0].issues, telling[0].refined, "critic"
        return CritiqueResult(
            image_prompt,
            components,
            critics,
            attempts,
            issues,
            refined,
            alignment,
            source,
            time.perf_counter() - started,
            self.instructions.record(used),
        )

    # ---------------------------------------------------------------- stage 5: merge

    @staticmethod
    def refinement_prompt(
        critique: CritiqueResult | str,
        tags: TagsResult | str,
        user_prompt: str | None = None,
        *,
        style: str | None = None,
    ) -> str:
        """SPEC 5: the critic's refined prompt merged with the stage-1 tags.

        The user's own prompt is never cut from it (``prompts.refinement_prompt``): it is
        `user_prompt`, else the prompt of a TagsResult; with neither, nothing is protected
        beyond SPEC's subject.
        """
        refined = critique.refined if isinstance(critique, CritiqueResult) else critique
        positive = tags.positive if isinstance(tags, TagsResult) else tags
        if user_prompt is None:
            user_prompt = tags.prompt if isinstance(tags, TagsResult) else ""
        if style is None:
            style = tags.style if isinstance(tags, TagsResult) else "tags"
        if style == "prose":
            # Sentences are not merged tag by tag: the critic's refined prompt (the stage-1
            # prompt when it has none) with the user's prompt and the quality floor kept.
            return prose_prompt(refined or positive, user_prompt)
        return refinement_prompt(refined, positive, user_prompt)


# --- helpers -------------------------------------------------------------------------------

_SLOT = re.compile(r"#(\d+)$")


def slot_labels(refs: Iterable[str]) -> list[str]:
    """One label per listed model: a model listed again gets "#2", "#3" (asked again, kept apart)."""
    counts: dict[str, int] = {}
    labels = []
    for ref in refs:
        counts[ref] = counts.get(ref, 0) + 1
        labels.append(ref if counts[ref] == 1 else f"{ref}#{counts[ref]}")
    return labels


def model_of(label: str) -> str:
    """The model reference of a slot label ("together:x#2" -> "together:x")."""
    return _SLOT.sub("", label)


def _is_rules(label: str) -> bool:
    return model_of(label) == "rules"


def _ref(text: str) -> str:
    """A slot label in its one canonical spelling ("together: x #2" -> "together:x#2")."""
    text = text.strip()
    match = _SLOT.search(text)
    suffix = match.group(0) if match else ""
    return str(ModelRef.parse(text[: match.start()] if match else text)) + suffix


def _ledger_entry(stage: str, role: str, answer: Answer, meter) -> dict[str, Any]:
    """The ledger's record of one call: no text, no URL, no key."""
    return {
        "stage": stage,
        "role": role,
        "model": answer.model,
        "tokens_in": meter.tokens_in or 0,
        "tokens_out": meter.tokens_out or 0,
        "usage": "counted" if meter.counted else ("reported" if meter.tokens_in is not None else "none"),
        "seconds": round(answer.seconds, 3),
        "attempts": meter.attempts,
        "retries": meter.retries,
        "throttled": meter.throttled,
        "error": answer.error_code,
        "source": getattr(meter, "source", "provider"),
    }


def _winner(attempts: Sequence[Answer]) -> str | None:
    """The aggregator that won: the last attempt, when it answered usably."""
    return attempts[-1].model if attempts and attempts[-1].ok else None


def _items(answer: Answer) -> list[str]:
    return list(answer.reading.items) if answer.reading is not None else []


def _tags_text(answer: Answer) -> str:
    """A usable stage-1 answer as checked: the tags comma-separated, or a prose answer's
    sentences (the raw text if unread)."""
    if answer.reading is None:
        return answer.text
    return answer.reading.refined or ", ".join(answer.reading.items)


def _union(lists: Iterable[Sequence[str]]) -> list[str]:
    """Every list's items in order, without repeats, at most 6."""
    return dedup_keep_order(item for items in lists for item in items)[:MAX_COMPONENTS]


def _changed_nothing(critic: Critic, image_prompt: str) -> bool:
    """A critic with no issues whose refined prompt is the image prompt: nothing to merge."""
    return not critic.issues and " ".join(critic.refined.split()) == " ".join(clip77_strict(image_prompt).split())
