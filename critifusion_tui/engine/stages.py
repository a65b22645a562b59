"""The stage table: every stage of a run, what it reads, what it writes, what it invalidates.

One frozen :class:`StageSpec` per :class:`Stage` says everything the rest of the program used
to spell out in its own string tables: the title a person reads, the method section it
computes (docs/method.md), the prompts it reads and writes, the stages whose outputs it uses,
its image and latent files, and which of its outputs a person may edit at a gate. What a
re-run invalidates is derived from those reads, not written by hand.

The two branches of a run (the full method, and SPEC 7's comparison that criticises and
refines the base drawn from the user's own words) are :class:`Branch` objects: code asks a
branch for its base, critique or refine stage instead of adding "_original" to a name.

The flow of a run is a list of :class:`Step`: each step is a group of stages, with the gate a
person passes before it. :mod:`critifusion_tui.engine.flow` walks it; the front ends only show
where it stands. This module imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """A stage's name, as the manifest, the events and the front ends spell it."""

    TAGS = "tags"
    COMPONENTS = "components"
    BASE = "base"
    CRITIQUE = "critique"
    REFINE = "refine"
    ROUNDS = "rounds"  # beyond the paper: more critique rounds (loop.rounds > 1)
    BASE_ORIGINAL = "base_original"
    CRITIQUE_ORIGINAL = "critique_original"
    REFINE_ORIGINAL = "refine_original"


@dataclass(frozen=True)
class Branch:
    """One line of images: a base, its critique, and its refinement."""

    name: str  # "full" or "original", as eval and the manifest's variants call them
    title: str
    base: Stage
    critique: Stage
    refine: Stage
    refinement: str  # the steerable prompt its critique writes and its refine reads

    @property
    def stages(self) -> tuple[Stage, Stage, Stage]:
        return (self.base, self.critique, self.refine)


FULL = Branch("full", "the method", Stage.BASE, Stage.CRITIQUE, Stage.REFINE, "refinement")
ORIGINAL = Branch(
    "original",
    "your own prompt",
    Stage.BASE_ORIGINAL,
    Stage.CRITIQUE_ORIGINAL,
    Stage.REFINE_ORIGINAL,
    "refinement_original",
)
BRANCHES = (FULL, ORIGINAL)


def branch(original: bool) -> Branch:
    return ORIGINAL if original else FULL


def branch_of(stage: str) -> Branch | None:
    """The branch a stage belongs to (None for the text stages, which both branches share)."""
    return next((b for b in BRANCHES if stage in b.stages), None)


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    kind: str  # the method's step it computes: tags, components, base, critique, refine or rounds
    title: str
    method: str  # where docs/method.md describes it
    reads: tuple[str, ...] = ()  # the steerable prompts it uses
    writes: tuple[str, ...] = ()  # the steerable prompts it sets (a person may edit these)
    after: tuple[Stage, ...] = ()  # the stages whose files it uses
    image: str | None = None
    latent: str | None = None
    models: bool = False  # whether models answer in it (panes, retry one model, use one answer)

    @property
    def editable(self) -> tuple[str, ...]:
        """What a person may change of this stage's output before the next stage uses it."""
        return self.writes

    @property
    def draws(self) -> bool:
        """Whether it runs the diffusion model (one such stage at a time: one model, one GPU)."""
        return self.kind in ("base", "refine", "rounds")


TABLE: dict[Stage, StageSpec] = {
    spec.stage: spec
    for spec in (
        StageSpec(Stage.TAGS, "tags", "Tags", "SPEC 1", writes=("positive", "negative"), models=True),
        StageSpec(Stage.COMPONENTS, "components", "Components", "SPEC 2", writes=("components",), models=True),
        StageSpec(
            Stage.BASE,
            "base",
            "Base",
            "SPEC 3",
            reads=("positive", "negative"),
            image="base.png",
            latent="base_latent.safetensors",
        ),
        StageSpec(
            Stage.CRITIQUE,
            "critique",
            "Critique",
            "SPEC 4-5",
            reads=("components", "positive"),
            writes=("refinement",),
            after=(Stage.BASE,),
            models=True,
        ),
        StageSpec(
            Stage.REFINE,
            "refine",
            "Refine",
            "SPEC 6",
            reads=("refinement",),
            after=(Stage.BASE,),
            image="refined.png",
            latent="refined_latent.safetensors",  # round 2 of critique rounds refines from it
        ),
        # Rounds 2..N (docs/method.md 10.1): each criticises the round before's image and
        # refines it again; its images are refined_r2.png, refined_r3.png, ... (its record
        # lists them), so it names no one image here.
        StageSpec(
            Stage.ROUNDS,
            "rounds",
            "Rounds",
            "method 10.1",
            reads=("components", "positive"),
            after=(Stage.BASE, Stage.REFINE),
            models=True,
        ),
        StageSpec(
            Stage.BASE_ORIGINAL,
            "base",
            "Base (own)",
            "SPEC 7",
            image="base_original.png",
            latent="base_original_latent.safetensors",
        ),
        StageSpec(
            Stage.CRITIQUE_ORIGINAL,
            "critique",
            "Critique (own)",
            "SPEC 7",
            reads=("components", "positive"),
            writes=("refinement_original",),
            after=(Stage.BASE_ORIGINAL,),
            models=True,
        ),
        StageSpec(
            Stage.REFINE_ORIGINAL,
            "refine",
            "Refine (own)",
            "SPEC 7",
            reads=("refinement_original",),
            after=(Stage.BASE_ORIGINAL,),
            image="refined_original.png",
        ),
    )
}


def spec(stage: str) -> StageSpec:
    return TABLE[Stage(stage)]


def image_field(stage: str) -> str:
    """The record field naming the image a completed stage stands for: its own image, or for
    critique rounds the final round's (``final_image``)."""
    return "final_image" if stage == Stage.ROUNDS else "image"


def writer_of(name: str) -> Stage:
    """The stage that writes the steerable prompt `name` (its edits are recorded there)."""
    return next(s.stage for s in TABLE.values() if name in s.writes)


def readers_of(name: str) -> tuple[Stage, ...]:
    """The stages that use the steerable prompt `name`: an edit of it makes them stale."""
    return tuple(s.stage for s in TABLE.values() if name in s.reads)


def _direct_dependents(stage: Stage) -> set[Stage]:
    writes = set(TABLE[stage].writes)
    return {s.stage for s in TABLE.values() if stage in s.after or writes & set(s.reads)}


def downstream(stage: str) -> tuple[Stage, ...]:
    """Every stage that uses `stage`'s output, directly or through another stage, in table
    order: a re-run of `stage` makes all of them stale."""
    seen: set[Stage] = set()
    todo = [Stage(stage)]
    while todo:
        for dependent in _direct_dependents(todo.pop()):
            if dependent not in seen:
                seen.add(dependent)
                todo.append(dependent)
    return tuple(s for s in TABLE if s in seen)


def depends_on(stage: str) -> tuple[Stage, ...]:
    """The stages whose outputs `stage` uses directly (the edges of the dependency graph)."""
    target = Stage(stage)
    return tuple(s for s in TABLE if target in _direct_dependents(s))


# ---------------------------------------------------------------- the flow of a run


@dataclass(frozen=True)
class Gate:
    """A stop where a person reads what the models made and may edit `fields` first."""

    name: str  # "tags" or "refine", as GateOpened and the headless gate see it
    fields: tuple[str, ...]
    hint: str


@dataclass(frozen=True)
class Step:
    """Stages run together by one advance: at the same time when `concurrent` (they do not
    depend on each other), else in order. `gate` is the stop before the step, if any."""

    name: str
    stages: tuple[Stage, ...]
    gate: Gate | None = None
    concurrent: bool = False


TAGS_GATE = Gate(
    "tags",
    ("positive", "negative", "components"),
    "Edit the tags, negative or components, then continue to draw the base image.",
)
REFINE_GATE = Gate("refine", ("refinement",), "Edit the refinement prompt, then continue to refine (SpecFusion).")

TEXT_STEP = Step("text", (Stage.TAGS, Stage.COMPONENTS), concurrent=True)
DRAW_STEP = Step("draw", (Stage.BASE, Stage.CRITIQUE), gate=TAGS_GATE)
REFINE_STEP = Step("refine", (Stage.REFINE,), gate=REFINE_GATE)
# With loop.rounds > 1 the further rounds follow the refinement in the same step: nobody is
# asked between them (the app lets a person stop them, or ask for one more, instead).
REFINE_AND_ROUNDS_STEP = Step("refine", (Stage.REFINE, Stage.ROUNDS), gate=REFINE_GATE)
COMPARISON_STEP = Step("comparison", ORIGINAL.stages)


def steps(variants: str, rounds: int = 1) -> tuple[Step, ...]:
    """The run's steps: the method (with its further critique rounds when `rounds` > 1), and
    with variants "all" the comparison branch after it."""
    method = (TEXT_STEP, DRAW_STEP, REFINE_AND_ROUNDS_STEP if rounds > 1 else REFINE_STEP)
    return (*method, COMPARISON_STEP) if variants == "all" else method


def step_of(stage: str) -> Step:
    every = (TEXT_STEP, DRAW_STEP, REFINE_STEP, REFINE_AND_ROUNDS_STEP, COMPARISON_STEP)
    return next(s for s in every if stage in s.stages)


def stages_of(variants: str, rounds: int = 1) -> tuple[Stage, ...]:
    return tuple(stage for step in steps(variants, rounds) for stage in step.stages)


GATED_STEPS = (DRAW_STEP, REFINE_STEP, REFINE_AND_ROUNDS_STEP)


def gates_holding(stage: str) -> tuple[Gate, ...]:
    """The gates `stage` waits behind: the gate before its step, and every gate that lets a
    person edit a prompt it reads (the comparison's critique reads the tags and components
    the tags gate shows, so it waits for that gate too; the comparison base reads nothing a
    person edits, so no gate holds it)."""
    target = Stage(stage)
    reads = set(TABLE[target].reads)
    return tuple(
        dict.fromkeys(
            step.gate
            for step in GATED_STEPS
            if step.gate is not None and (target in step.stages or reads & set(step.gate.fields))
        )
    )


def gate_inputs(gate: Gate) -> tuple[Stage, ...]:
    """The stages that write what `gate` shows: it opens once they are done."""
    return tuple(dict.fromkeys(writer_of(name) for name in gate.fields))
