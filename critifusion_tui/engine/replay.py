"""Replaying a past run: its recorded model answers stand in for the providers.

``critifusion run --replay RUN_DIR`` reads from the run folder only what the run was and what
the models said: the prompt, the seed, the variants, and per stage each model's recorded
answer (or failure). Its provider settings, URLs and key variables are never read: a folder
from elsewhere is data. With the same configuration, the same prompts go to the same seeds,
so the same machine draws the same images.

Answers are found by (stage, role, model slot) and taken in order; the comparison branch's
critique (``critique_original``) is a stage of its own, since it may run before or beside the
full method's.
"""

from __future__ import annotations

from collections import defaultdict, deque

from critifusion_tui.engine.manifest import AnswerRecord, RunManifest
from critifusion_tui.providers.base import ProviderError

# The manifest's text stages, and the name CritiCore asks each one's calls by.
TEXT_STAGES = (
    ("tags", "tags"),
    ("components", "components"),
    ("critique", "critique"),
    ("critique_original", "critique_original"),
)


class ReplayError(ProviderError):
    """A recorded failure, replayed; or an answer the recorded run does not hold."""

    code = "replayed"


class Replay:
    """The recorded answers of one run folder's manifest."""

    def __init__(self, manifest: RunManifest, where: str = "the run folder") -> None:
        self.where = where
        self.prompt = manifest.prompt
        self.seed = manifest.seed
        self.variants = manifest.variants
        self._answers: dict[tuple[str, str, str], deque[AnswerRecord]] = defaultdict(deque)
        self.roles: dict[str, list[str]] = {"candidates": [], "aggregator": [], "vlms": []}
        stages = manifest.stages
        for name, stage in TEXT_STAGES:
            record = getattr(stages, name)
            if record is None:
                continue
            self._keep(stage, "vlm" if stage.startswith("critique") else "candidate", record.candidates)
            self._keep(stage, "aggregator", record.aggregator)
        # Critiques beside the stages' own, in the order the run asked them: the critics that
        # rated best-of-N base candidates, and each critique round's critics and merge.
        for candidate in stages.base.candidates if stages.base is not None else []:
            if candidate.critique is not None:
                self._keep("base", "vlm", candidate.critique.candidates)
        for round_record in stages.rounds.rounds if stages.rounds is not None else []:
            if round_record.critique is not None:
                self._keep("rounds", "vlm", round_record.critique.candidates)
                self._keep("rounds", "aggregator", round_record.critique.aggregator)

    def _keep(self, stage: str, role: str, answers) -> None:
        roles = {"vlm": "vlms", "candidate": "candidates", "aggregator": "aggregator"}
        for entry in answers:
            if entry.model:
                self._answers[stage, role, entry.model].append(entry)
                _add(self.roles[roles[role]], entry.model)

    def answer(self, stage: str, role: str, model: str) -> tuple[str, str | None]:
        """(text, output) recorded for this call; a recorded failure is raised again."""
        queue = self._answers.get((stage, role, model))
        if not queue:
            raise ReplayError(model, f"{self.where} holds no recorded {stage} answer of this {role}")
        entry = queue.popleft()
        if entry.error and not entry.unusable:
            message = entry.error.removeprefix(f"{model}: ")
            raise ReplayError(model, f"failed in the recorded run: {message}")
        return entry.text, entry.output


def _add(labels: list[str], label: str) -> None:
    if label not in labels:
        labels.append(label)
