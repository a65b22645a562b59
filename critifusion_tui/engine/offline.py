"""The offline ``rules`` answerer: CritiCore's answers without any language model.

It belongs to the engine (it answers with the method's own fallback rules, ``prompts.py``),
so the providers import nothing of the engine; the router hands out ``rules`` once the engine
has registered it (:func:`with_rules`, which the ``Session`` calls on the router it makes).

It exists so the method runs with no network and no local server (and so tests have a model
that always answers the same). There is no text generation to imitate, so instead of a chat
it offers one pure function per CritiCore task; a stage that finds ``rules`` among its models
calls these directly:

- tags: SPEC 1.5, the fallback when no tag model answered (prompt, seed tags, quality floor);
- components: the prompt's own clauses, 1 to 6 of them;
- critique: nothing seen, so the refined prompt is the prompt unchanged and there are no issues.

``RulesModel.chat`` raises :class:`ProviderError` rather than answer: any text it returned
would be a made-up model answer, and a stage that chats with ``rules`` by mistake should
fail visibly (the run goes on, and the failure shows) instead of parsing a fake.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from critifusion_tui.engine.prompts import fallback_tags
from critifusion_tui.providers.base import ChatCall, ChatModel, ChatResult, ModelRef, ProviderError

if TYPE_CHECKING:
    from critifusion_tui.providers.router import ProviderRouter

RULES_REF = ModelRef("rules")
MAX_COMPONENTS = 6

# Clause boundaries: punctuation, line ends, and the joining words a prompt uses to add a
# second thing to the picture. Word boundaries keep "sandy" or "withered" whole.
_CLAUSE_SPLIT = re.compile(
    r"\s*(?:[,;:\n]|\.(?:\s|$)|&|\b(?:and|with|while|plus)\b)\s*",
    re.IGNORECASE,
)
_EDGE_PUNCT = " \t\"'.,;:!?-()[]"


@dataclass(frozen=True)
class RulesCritique:
    """What the rules "critic" reports: it saw nothing, so it changes nothing."""

    refined: str
    issues: list[str] = field(default_factory=list)
    note: str = "rules: no vision model looked at the image; the prompt is kept as it is"


def rules_tags(prompt: str, preset: str = "hq_preference") -> str:
    """SPEC 1.5 fallback tags (prompt, preset and style seed tags, quality floor, CLIP-77)."""
    return fallback_tags(prompt, preset)


def rules_components(prompt: str) -> list[str]:
    """The prompt's clauses as components: at most 6, none empty, none repeated.

    A clause past the sixth is joined onto the sixth rather than dropped, so every part of
    the prompt is still there to be checked. An empty prompt has no components.
    """
    clauses: list[str] = []
    seen: set[str] = set()
    for piece in _CLAUSE_SPLIT.split(prompt):
        clause = " ".join(piece.split()).strip(_EDGE_PUNCT)
        key = clause.lower()
        if clause and key not in seen:
            seen.add(key)
            clauses.append(clause)
    if len(clauses) > MAX_COMPONENTS:
        clauses[MAX_COMPONENTS - 1 :] = [", ".join(clauses[MAX_COMPONENTS - 1 :])]
    return clauses


def rules_critique(prompt: str, components: Sequence[str] = ()) -> RulesCritique:
    """No eyes, no issues: the refined prompt is the prompt (whitespace tidied)."""
    return RulesCritique(refined=" ".join(prompt.split()))


class RulesModel(ChatModel):
    """The ``rules`` model as an object, for code that holds models by reference."""

    ref = RULES_REF

    def tags(self, prompt: str, preset: str = "hq_preference") -> str:
        return rules_tags(prompt, preset)

    def components(self, prompt: str) -> list[str]:
        return rules_components(prompt)

    def critique(self, prompt: str, components: Sequence[str] = ()) -> RulesCritique:
        return rules_critique(prompt, components)

    async def answer(self, call: ChatCall) -> ChatResult:
        raise ProviderError(
            self.ref,
            "the offline rules model does not chat",
            fix="CritiCore stages call RulesModel.tags / .components / .critique instead",
        )


def with_rules(router: ProviderRouter) -> ProviderRouter:
    """``router``, handing out the ``rules`` model too (one per router, as for any model)."""
    model = RulesModel()
    router.register("rules", lambda ref: model)
    return router
