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
from collections.abc import Mapping
from typing import Any

from critifusion_tui.providers.base import ProviderError

# The manifest's text stages, and the name CritiCore asks each one's calls by.
TEXT_STAGES = (("tags", "tags"), ("components", "components"), ("critique", "critique"),
               ("critique_original", "critique_original"))


class ReplayError(ProviderError):
    """A recorded failure, replayed; or an answer the recorded run does not hold."""

    code = "replayed"


class Replay:
    """The recorded answers of one run folder's manifest."""

    def __init__(self, manifest: Mapping[str, Any], where: str = "the run folder") -> None:
        self.where = where
        self.prompt = str(manifest.get("prompt") or "")
        self.seed = manifest.get("seed")
        self.variants = manifest.get("variants") if manifest.get("variants") in ("full", "all") else "full"
        self._answers: dict[tuple[str, str, str], deque[Mapping[str, Any]]] = defaultdict(deque)
        self.roles: dict[str, list[str]] = {"candidates": [], "aggregator": [], "vlms": []}
        stages = manifest.get("stages") or {}
        for name, stage in TEXT_STAGES:
            record = stages.get(name)
            if not isinstance(record, Mapping):
                continue
            role = "vlm" if stage.startswith("critique") else "candidate"
            for entry in _entries(record.get("candidates")):
                self._answers[stage, role, entry["model"]].append(entry)
                _add(self.roles["vlms" if role == "vlm" else "candidates"], entry["model"])
            for entry in _entries(record.get("aggregator")):
                self._answers[stage, "aggregator", entry["model"]].append(entry)
                _add(self.roles["aggregator"], entry["model"])

    def answer(self, stage: str, role: str, model: str) -> tuple[str, str | None]:
        """(text, output) recorded for this call; a recorded failure is raised again."""
        queue = self._answers.get((stage, role, model))
        if not queue:
            raise ReplayError(model, f"{self.where} holds no recorded {stage} answer of this {role}")
        entry = queue.popleft()
        text = str(entry.get("text") or "")
        if entry.get("error") and not entry.get("unusable"):
            message = str(entry["error"]).removeprefix(f"{model}: ")
            raise ReplayError(model, f"failed in the recorded run: {message}")
        return text, entry.get("output")


def _entries(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [e for e in value if isinstance(e, Mapping) and isinstance(e.get("model"), str) and e["model"]]


def _add(labels: list[str], label: str) -> None:
    if label not in labels:
        labels.append(label)
