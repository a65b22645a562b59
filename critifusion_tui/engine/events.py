"""The typed events every front end consumes.

The engine emits these through one callback (`Emit`); the app turns them into Textual
messages, the headless runner into progress lines. They carry plain data only (strings,
numbers, paths), never widgets or tensors, so any front end can hold on to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Event:
    """Base of all events; `stage` is a stage of the table (engine/stages.py), or "" for run-wide events."""

    stage: str


@dataclass(frozen=True)
class StageStarted(Event):
    detail: str = ""


@dataclass(frozen=True)
class StageFinished(Event):
    seconds: float = 0.0
    summary: str = ""


@dataclass(frozen=True)
class StageFailed(Event):
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class StageCancelled(Event):
    """A person (or a signal) stopped the stage before it completed; not a failure."""

    seconds: float = 0.0


@dataclass(frozen=True)
class StageSkipped(Event):
    reason: str = ""


@dataclass(frozen=True)
class CandidateStarted(Event):
    """One model of a role began its call. `role`: candidate, aggregator or vlm."""

    role: str = ""
    model: str = ""


@dataclass(frozen=True)
class CandidateDelta(Event):
    """A piece of a model's streamed answer, already cleaned (no escapes, no <think>)."""

    role: str = ""
    model: str = ""
    text: str = ""


@dataclass(frozen=True)
class CandidateFinished(Event):
    role: str = ""
    model: str = ""
    text: str = ""
    error: str | None = None
    seconds: float = 0.0
    # What the answer check dropped or flagged ("3 sentences dropped", "12 tags (asked for 16
    # to 26)"): the answer is used, and the pane says what was off about it.
    notes: tuple[str, ...] = ()
    # "provider" (asked now), "cache" (the answer cache, no request) or "replay" (a past run's).
    origin: str = "provider"


@dataclass(frozen=True)
class DiffusionStep(Event):
    """Step `step` (1-based) of `total` done, `elapsed` seconds since the pass began."""

    step: int = 0
    total: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True)
class ImageReady(Event):
    path: Path = Path()
    label: str = ""


@dataclass(frozen=True)
class GateOpened(Event):
    """The run waits for a person: `fields` holds what they may edit before it goes on."""

    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelLoading(Event):
    """The diffusion model started loading (seconds, for a real one): `model` as configured."""

    model: str = ""


@dataclass(frozen=True)
class ModelLoaded(Event):
    """The diffusion model is loaded: `summary` for a person, `record` as in the manifest."""

    summary: str = ""
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CandidateImage:
    """One of the bases drawn for best-of-N (docs/method.md 10.2): 1-based `index`, the
    `seed` it was drawn from, its image file and its 0-100 rating (None: not rated)."""

    index: int
    seed: int
    path: Path
    score: float | None = None


@dataclass(frozen=True)
class BaseCandidates(Event):
    """Best-of-N bases were drawn and rated; `picked` (1-based) is the one refined, chosen by
    `picked_by`: "critic", a metric's name, "user", or "none" when no candidate was rated."""

    candidates: tuple[CandidateImage, ...] = ()
    picked: int = 1
    picked_by: str = ""


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should see: a retry, a fallback, a warning. level: info, warning, error."""

    level: str = "info"
    message: str = ""


@dataclass(frozen=True)
class RoundScored(Event):
    """Critique rounds: round `round`'s image got its 0-100 score (None: nobody rated it).
    `rounds` is every round so far, as the stage's record lists them; `final` the round that
    is the final image when the rounds ended (0 while they go on); `stopped` why they ended."""

    round: int = 0
    score: float | None = None
    image: str = ""
    rounds: tuple[dict[str, Any], ...] = ()
    final: int = 0
    stopped: str = ""


Emit = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """An Emit that drops every event (library use without a front end)."""
