"""The flow of a run: where it stands, what comes next, and the moves a person can make.

A run walks the steps of the stage table (:mod:`.stages`): the text stages, the tags gate,
the base and its critique, the refine gate, the refinement, and with variants "all" the
comparison branch. Its :attr:`RunFlow.phase` is read from what the run folder holds, never
kept on the side, so a resumed run, a cancelled step and a failed stage all stand where their
files say. Both front ends drive the same moves:

- :meth:`RunFlow.advance` applies a person's edits at a gate and runs the next step;
- :meth:`RunFlow.back` returns to the gate before, discarding the step after it (the front
  end asks first: :meth:`RunFlow.back_discards` says what would go);
- :meth:`RunFlow.rerun` runs one stage again (one model of it with ``only``), and the stages
  after it in its step; :meth:`RunFlow.rerun_discards` says what that makes stale;
- :meth:`RunFlow.cancel` stops the step in flight (a stage cancelled is recorded as such);
- :meth:`RunFlow.leave` records that a person left the run unfinished;
- :meth:`RunFlow.run_all` is all of it with a gate callback (headless answers at once).

Stages run from the dependency graph (:mod:`.schedule`): each starts when the stages it
depends on are done, so the text stages run side by side, and under :meth:`RunFlow.run_all`
every stage runs as soon as its inputs exist and no gate holds it (with variants "all" the
comparison base draws while the text stages wait on the providers, and its critique runs
while the full method's base draws). The model starts loading when a run starts
(:meth:`~critifusion_tui.engine.pipeline.Run.preload`). A person's move (:meth:`RunFlow.advance`)
runs one step, and the gates hold as they always did.

The app holds no stage order, no skip rule and no store writes of its own: it shows the
phase, collects edits, and calls these.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.schedule import Schedule
from critifusion_tui.engine.stages import Gate, Stage, Step, downstream, gate_inputs, gates_holding, steps

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    GateCallback = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Phase(StrEnum):
    """Where a run stands between steps."""

    TEXT = "text"  # the text stages are still to run (a new run, or one cancelled early)
    TAGS_GATE = "tags-gate"
    REFINE_GATE = "refine-gate"
    COMPARISON = "comparison"  # variants "all": the comparison branch is still to run
    DONE = "done"


_PHASE_OF_GATE = {"tags": Phase.TAGS_GATE, "refine": Phase.REFINE_GATE}
_PHASE_OF_STEP = {"text": Phase.TEXT, "comparison": Phase.COMPARISON}


class FlowError(ValueError):
    """A move the run cannot make where it stands (the message says why)."""


class RunFlow:
    """The moves of a run. Mixed into :class:`~critifusion_tui.engine.pipeline.Run`, which
    supplies the stages (``tags_stage`` ...), the store and the prompts."""

    # Set by Run.__init__; declared here for readers and type checkers.
    store: Any
    settings: Any
    _step_task: asyncio.Task | None
    model_state: Any  # the model's load, for the schedule (Run.model_state)
    keeps_ollama_apart: Any  # stages that never run beside a drawing one (Run.keeps_ollama_apart)
    preload: Any  # start loading the model in the background (Run.preload)

    if TYPE_CHECKING:  # what Run (engine/pipeline.py) supplies: the stages and the prompts

        @property
        def folder(self) -> Path: ...

        def text(self, name: str) -> Any: ...
        def edit(self, name: str, value: Any, by: str = "user") -> None: ...
        def forget(self, stage: str) -> None: ...
        def skip_critique(self, *, original: bool = False) -> None: ...
        def _finish(self, status: str) -> None: ...
        def _emit(self, event: Any) -> None: ...
        async def tags_stage(self, *, only: Any = None) -> dict[str, Any]: ...
        async def components_stage(self, *, only: Any = None) -> dict[str, Any]: ...
        async def base_stage(self, *, original: bool = False) -> dict[str, Any]: ...
        async def critique_stage(self, *, original: bool = False, only: Any = None) -> dict[str, Any]: ...
        async def refine_stage(self, *, original: bool = False) -> dict[str, Any]: ...
        async def rounds_stage(self, *, more: int = 0) -> dict[str, Any]: ...

    _unattended = False  # run_all answers the gates itself: no "paused" between its steps

    # ---------------------------------------------------------------- where the run stands

    @property
    def variants(self) -> str:
        return self.store.manifest.get("variants", "full")

    @property
    def rounds_planned(self) -> int:
        """loop.rounds: 1 is the paper's one critique and one refinement."""
        return int(self.settings.loop.rounds)

    @property
    def steps(self) -> tuple[Step, ...]:
        return steps(self.variants, self.rounds_planned)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """Every stage this run goes through, in order."""
        return tuple(stage for step in self.steps for stage in step.stages)

    def done(self, stage: str) -> bool:
        return self.store.stage(stage) is not None

    def current_step(self) -> Step | None:
        """The first step with a stage not done (None when the run is complete)."""
        return next((s for s in self.steps if not all(self.done(stage) for stage in s.stages)), None)

    @property
    def phase(self) -> Phase:
        step = self.current_step()
        if step is None:
            return Phase.DONE
        if step.gate is not None:
            return _PHASE_OF_GATE[step.gate.name]
        return _PHASE_OF_STEP[step.name]

    @property
    def gate(self) -> Gate | None:
        """The gate the run waits at for a person, if it does."""
        step = self.current_step()
        return step.gate if step is not None else None

    def gate_fields(self) -> dict[str, Any]:
        """The current values of what a person may edit at the gate the run waits at."""
        gate = self.gate
        return self.gate_fields_of(gate) if gate else {}

    def gate_fields_of(self, gate: Gate) -> dict[str, Any]:
        return {name: self.text(name) for name in gate.fields}

    def stage_state(self, stage: str) -> str:
        """A stage's state as the front ends show it: waiting, done, failed, cancelled or
        skipped (running is known only to whoever is running it)."""
        record = self.store.stages.get(stage)
        if not record:
            return "waiting"
        if record.get("skipped") and record.get("status") == "done":
            return "skipped"
        if record.get("status") == "running" and not self.busy:
            return "cancelled"  # it stopped mid-way (a crash): what it made so far is kept
        return record.get("status", "waiting")

    # ---------------------------------------------------------------- moves

    def apply_edits(self, edits: dict[str, Any] | None) -> list[str]:
        """A person's edits of steerable prompts; only a changed value counts. Returns the
        names that changed. A name no stage writes is refused."""
        from critifusion_tui.engine.stages import writer_of

        changed = []
        for name, value in (edits or {}).items():
            try:
                writer_of(name)
            except StopIteration:
                raise FlowError(f"{name!r} is not a prompt a person can edit") from None
            if value != self.text(name):
                self.edit(name, value)
                changed.append(name)
        return changed

    @property
    def skip_critique_next(self) -> bool:
        """Whether the next draw step skips the VLM critique (kept in the manifest, so a run
        reopened at the tags gate keeps the person's choice)."""
        return bool(self.store.manifest.get("skip_critique", False))

    def set_skip_critique(self, skip: bool) -> None:
        """Whether the next draw step skips the VLM critique (SPEC 5's fallback: the refinement
        prompt is the tags alone). The front ends show this choice where the critique is."""
        if bool(skip) != self.skip_critique_next:
            self.store.manifest["skip_critique"] = bool(skip)
            self.store.write_manifest()

    async def advance(self, edits: dict[str, Any] | None = None) -> Phase:
        """Apply `edits` (at a gate) and run the next step, and the steps after it that have no
        gate; returns where the run stands then (a gate, or the end)."""
        step = self.current_step()
        if step is None:
            raise FlowError("the run is complete: nothing to continue")
        if edits:
            allowed = set(step.gate.fields) if step.gate else set()
            extra = set(edits) - allowed
            if extra:
                raise FlowError(f"cannot edit {', '.join(sorted(extra))} here")
            self.apply_edits(edits)
            step = self.current_step()  # an edit may have made an earlier step stale
            if step is None:  # pragma: no cover - an edit never completes a step
                return self.phase
        self.preload()
        await self._guarded(self._run_step(step))
        # A step without a gate asks nobody: it follows at once (SPEC 7's comparison after
        # the refinement), so one advance always ends at a gate or at the end.
        while (after := self.current_step()) is not None and after.gate is None:
            await self._guarded(self._run_step(after))
        return self.phase

    async def rerun(self, stage: str, *, only: list[str] | None = None) -> Phase:
        """Run `stage` again with its inputs as they are now (`only`: just these models of
        it, keeping the other answers), then the stages after it in its step that are not
        done. What it invalidates downstream is forgotten first."""
        stage = Stage(stage)
        if stage not in self.stages:
            raise FlowError(f"this run has no {stage} stage (variants {self.variants})")
        problem = self.rerun_problem(stage)
        if problem:
            raise FlowError(problem)

        async def work() -> None:
            await self._run_stage_by_name(stage, only=only)
            step = next(s for s in self.steps if stage in s.stages)
            if not step.concurrent:
                for later in step.stages[step.stages.index(stage) + 1 :]:
                    if not self.done(later):
                        await self._run_stage_by_name(later)

        await self._guarded(work())
        return self.phase

    async def more_rounds(self, count: int = 1) -> Phase:
        """Critique rounds: `count` more rounds after they ended, whatever the stop rules say
        (the person asked for them)."""
        if Stage.ROUNDS not in self.stages:
            raise FlowError("this run has no critique rounds (loop.rounds = 1)")
        if not self.done(Stage.ROUNDS):
            raise FlowError("the rounds have not ended yet")
        await self._guarded(self.rounds_stage(more=count))
        return self.phase

    def rerun_problem(self, stage: str) -> str | None:
        """Why `stage` cannot run now (its inputs do not exist yet), or None."""
        from critifusion_tui.engine.stages import depends_on, spec

        for needed in depends_on(stage):
            if needed in self.stages and not self.done(needed):
                return f"{spec(stage).title} needs {spec(needed).title} first"
        return None

    def rerun_discards(self, stage: str) -> list[Stage]:
        """The completed stages a re-run of `stage` makes stale (and forgets)."""
        return [s for s in (Stage(stage), *downstream(stage)) if s in self.stages and self.done(s)]

    def back_target(self) -> Step | None:
        """The gated step a step back returns to: the last one before where the run stands."""
        current = self.current_step()
        index = self.steps.index(current) if current is not None else len(self.steps)
        gated = [s for s in self.steps[:index] if s.gate is not None]
        return gated[-1] if gated else None

    def back_discards(self) -> list[Stage]:
        """The completed stages a step back would forget."""
        target = self.back_target()
        if target is None:
            return []
        found: list[Stage] = []
        for stage in target.stages:
            for name in (stage, *downstream(stage)):
                if name in self.stages and self.done(name) and name not in found:
                    found.append(name)
        return found

    def back(self) -> Phase:
        """Return to the gate before where the run stands, forgetting the step after it (the
        front end asks the person first when :meth:`back_discards` is not empty)."""
        target = self.back_target()
        if target is None:
            raise FlowError("the run is at its first gate: there is no earlier gate to return to")
        for stage in target.stages:
            self.forget(stage)
        self._record_status()
        return self.phase

    def cancel(self) -> bool:
        """Stop the step in flight; the stage it was in is recorded as cancelled. Returns
        whether there was one."""
        task = self._step_task
        if task is None or task.done():
            return False
        task.cancel()
        return True

    @property
    def busy(self) -> bool:
        return self._step_task is not None and not self._step_task.done()

    def leave(self) -> None:
        """A person leaves the run unfinished (a new run, another run reopened, the app
        closed): it is recorded as abandoned, and can still be resumed."""
        if self.phase is not Phase.DONE and self.store.manifest.get("status") not in ("failed", "cancelled"):
            self._finish("abandoned")

    async def run_all(self, gate: GateCallback | None = None) -> dict[str, Any]:
        """Every step not yet done, asking `gate` at each gate; returns the manifest. The
        gate gets the gate's name and its fields, and returns them, edited or not (plus
        ``skip_critique`` at the tags gate, if wanted). Without one, every gate is passed
        as it is (headless)."""
        # Nobody waits at these gates: between steps the run stays "running", not "paused".
        self._unattended = True
        try:
            await self._run_all(gate)
        finally:
            self._unattended = False
        return self.store.manifest

    async def _run_all(self, gate: GateCallback | None) -> None:
        if self.phase is Phase.DONE:
            return
        self.preload()
        await self._guarded(self._run_graph(gate))
        if self.phase is not Phase.DONE:  # pragma: no cover - every held stage has its gate asked
            raise FlowError(f"the run stopped at {self.phase.value} with nothing left to run")

    async def _run_graph(self, gate: GateCallback | None) -> None:
        """Every stage not done, each as soon as its inputs exist and its gates are passed;
        each gate is asked as soon as what it shows exists (engine/schedule.py)."""
        from critifusion_tui.engine.events import GateOpened

        gates = {step.gate.name: step for step in self.steps if step.gate is not None}
        # A gate whose step is complete (a resumed run) is not asked again, as before.
        passed = {name for name, step in gates.items() if all(self.done(s) for s in step.stages)}
        asked: set[str] = set()

        def held(stage: Stage) -> bool:
            return any(g.name in gates and g.name not in passed for g in gates_holding(stage))

        async def ask(step_gate: Gate) -> None:
            fields = self.gate_fields_of(step_gate)
            self._emit(GateOpened(step_gate.name, dict(fields)))
            answer = await gate(step_gate.name, dict(fields)) if gate is not None else fields
            if answer.get("skip_critique"):
                self.set_skip_critique(True)
            self.apply_edits({k: v for k, v in answer.items() if k in fields and v != fields[k]})
            passed.add(step_gate.name)

        def questions():
            for name, step in gates.items():
                if name in passed or name in asked or step.gate is None:
                    continue
                if all(self.done(s) for s in gate_inputs(step.gate)):
                    asked.add(name)
                    yield ask(step.gate)

        await Schedule(
            self.stages,
            run=self._run_stage_by_name,
            done=self.done,
            held=held,
            apart=self.keeps_ollama_apart,
            side_jobs=questions,
            model=self.model_state,
        ).run()

    # ---------------------------------------------------------------- inside

    async def _run_step(self, step: Step) -> None:
        # Each stage of the step starts when the ones it depends on are done (the text stages
        # at once, side by side). Every stage that started ends (done or failed) before the
        # first failure is raised: a failing stage never leaves its sibling running unwatched.
        await Schedule(
            step.stages,
            run=self._run_stage_by_name,
            done=self.done,
            apart=self.keeps_ollama_apart,
            model=self.model_state,
        ).run()

    async def _run_stage_by_name(self, stage: Stage, *, only: list[str] | None = None) -> None:
        """The one place that maps a stage of the table to the method's code."""
        original = stage in (Stage.BASE_ORIGINAL, Stage.CRITIQUE_ORIGINAL, Stage.REFINE_ORIGINAL)
        if stage is Stage.TAGS:
            await self.tags_stage(only=only)
        elif stage is Stage.COMPONENTS:
            await self.components_stage(only=only)
        elif stage in (Stage.BASE, Stage.BASE_ORIGINAL):
            await self.base_stage(original=original)
        elif stage in (Stage.CRITIQUE, Stage.CRITIQUE_ORIGINAL):
            if stage is Stage.CRITIQUE and self.skip_critique_next and only is None:
                self.skip_critique()
            else:
                await self.critique_stage(original=original, only=only)
        elif stage is Stage.ROUNDS:
            await self.rounds_stage()
        else:
            await self.refine_stage(original=original)

    async def _guarded(self, work) -> None:
        """Run one move as the run's step task: its end records the run's status; a cancel,
        a failed stage or a refused write records that instead (and propagates)."""
        from critifusion_tui.engine.pipeline import RunFailed, _file_problem
        from critifusion_tui.engine.store import StoreError

        if self.busy:
            work.close()
            raise FlowError("a step of this run is already running")
        self._step_task = asyncio.ensure_future(work)
        try:
            await self._step_task
        except asyncio.CancelledError:
            self._step_task.cancel()  # our caller was cancelled: stop the step too
            self._finish("cancelled")
            raise
        except RunFailed:
            self._finish("failed")
            raise
        except (StoreError, OSError) as exc:  # a write between stages (an edit, the status)
            self._finish("failed")
            raise RunFailed("run", _file_problem(exc, self.folder)) from None
        finally:
            self._step_task = None
        self._record_status()

    def _record_status(self) -> None:
        """After a move: done, or paused at a gate for a person, or still running (a step
        without a gate follows at once under run_all)."""
        from critifusion_tui.engine.pipeline import RunFailed, _file_problem

        phase = self.phase
        waits = phase in _PHASE_OF_GATE.values() and not self._unattended
        status = "done" if phase is Phase.DONE else "paused" if waits else "running"
        if self.store.manifest.get("status") == status:
            return
        try:
            self.store.finish(status)
        except OSError as exc:
            raise RunFailed("run", _file_problem(exc, self.folder)) from None
