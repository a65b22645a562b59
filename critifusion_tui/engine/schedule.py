"""Run stages as soon as their inputs exist: the dependency graph of :mod:`.stages`, scheduled.

A :class:`Schedule` is handed the stages to run and starts each one when the stages it depends
on (:func:`~critifusion_tui.engine.stages.depends_on`, among the ones it runs) are done and no
gate holds it. Stages that ask models run whenever their inputs exist, side by side; stages
that draw (base and refine, of either branch) take turns on the one diffusion model, in table
order (the full method before the comparison) when more than one is ready. Stages that
``apart`` names never run beside a drawing stage (they call a model on the same GPU).

While the model is still loading, a drawing stage that is ready does not take the model ahead
of a drawing stage before it in the table that will be ready soon: with variants "all" the
comparison base (which needs only the user's prompt) waits for the load, and when the text
stages end first the full method's base goes first. Once the model is loaded, whatever is
ready draws. After a failed load the full method's base still goes first, so the failure is
reported where it always was.

The schedule does not know what a gate is: ``held`` says which stages wait, and
``side_jobs`` hands it work to watch beside the stages (a gate's question to a person, whose
answer releases what the gate held); when nothing runs and nothing can start, it returns and
leaves the held stages to a later schedule. On the first failure
nothing new starts; the stages already running end (done, failed or cancelled on their
own), then the failure is raised. A cancel of the schedule cancels everything it started and
waits for each to record how it ended. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from critifusion_tui.engine.stages import Stage, depends_on, spec

__all__ = ["ModelState", "Schedule"]


class ModelState(Protocol):
    """The diffusion model as the schedule sees it."""

    def state(self) -> str:
        """``"ready"``, ``"loading"``, ``"failed"`` (a load that failed and was not yet
        reported) or ``"idle"`` (nobody loads it: the stage that draws will)."""
        ...

    async def wait(self) -> None:
        """Until a load in flight ends (never raises)."""
        ...


class Schedule:
    def __init__(
        self,
        stages: Iterable[Stage],
        *,
        run: Callable[[Stage], Awaitable[None]],
        done: Callable[[Stage], bool],
        held: Callable[[Stage], bool] = lambda stage: False,
        apart: Callable[[Stage], bool] = lambda stage: False,
        side_jobs: Callable[[], Iterable[Awaitable[None]]] = lambda: (),
        model: ModelState | None = None,
    ) -> None:
        self.order: tuple[Stage, ...] = tuple(Stage(s) for s in stages)
        self._run = run
        self._done = done
        self._held = held
        self._apart = apart
        self._side_jobs = side_jobs
        self._model = model
        self.running: dict[asyncio.Future[None], Stage] = {}
        self.finished: set[Stage] = set()  # ran to the end in this schedule (done or skipped)

    # ---------------------------------------------------------------- reading the graph

    def _waiting_on(self, stage: Stage) -> bool:
        """Whether a stage this schedule runs must end before `stage` can start."""
        return any(need in self.order and not self._done(need) for need in depends_on(stage))

    def _todo(self) -> list[Stage]:
        started = set(self.running.values()) | self.finished
        return [s for s in self.order if s not in started and not self._done(s)]

    def _ready(self) -> tuple[list[Stage], bool]:
        """The stages to start now, and whether one waits for the model to load first."""
        start: list[Stage] = []
        drawing = any(spec(s).draws for s in self.running.values())
        apart = any(self._apart(s) for s in self.running.values())
        earlier_draw_pending = False
        waits_for_model = False
        for stage in self._todo():
            ready = not self._held(stage) and not self._waiting_on(stage)
            if not spec(stage).draws:
                if ready and not (drawing and self._apart(stage)):
                    start.append(stage)
                    apart = apart or self._apart(stage)
                continue
            if not ready:
                earlier_draw_pending = True
                continue
            if drawing or apart:
                continue
            state = self._model.state() if self._model is not None else "idle"
            if earlier_draw_pending and state in ("loading", "failed"):
                waits_for_model = state == "loading"
                continue
            start.append(stage)
            drawing = True
        return start, waits_for_model

    # ---------------------------------------------------------------- running

    async def run(self) -> None:
        sides: set[asyncio.Future[None]] = set()
        model_wait: asyncio.Future[None] | None = None
        failure: BaseException | None = None
        try:
            while True:
                waits_for_model = False
                if failure is None:
                    sides.update(asyncio.ensure_future(job) for job in self._side_jobs())
                    start, waits_for_model = self._ready()
                    for stage in start:
                        self.running[asyncio.ensure_future(self._run(stage))] = stage
                if waits_for_model and model_wait is None and self._model is not None:
                    model_wait = asyncio.ensure_future(self._model.wait())
                watched: set[asyncio.Future] = {*self.running, *sides}
                if model_wait is not None:
                    watched.add(model_wait)
                if not self.running and not sides and model_wait is None:
                    break  # nothing runs and nothing will start: what is left waits for a gate
                finished, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                for future in finished:
                    if future is model_wait:
                        model_wait = None
                    elif future in sides:
                        sides.discard(future)
                        if not future.cancelled() and future.exception() is not None and failure is None:
                            failure = future.exception()
                    else:
                        stage = self.running.pop(future)
                        error = None if future.cancelled() else future.exception()
                        if future.cancelled():
                            error = asyncio.CancelledError()
                        if error is None:
                            self.finished.add(stage)
                        elif failure is None:
                            failure = error
                if failure is not None:
                    # Nothing new starts; a question to a person is withdrawn; the stages
                    # already running end on their own (their work is kept).
                    for side in sides:
                        side.cancel()
                    if model_wait is not None:
                        model_wait.cancel()
                    sides.clear()
                    model_wait = None
        except asyncio.CancelledError:
            await self._stop([*self.running, *sides, model_wait])
            raise
        finally:
            if model_wait is not None:
                model_wait.cancel()
        if failure is not None:
            raise failure

    async def _stop(self, futures: Sequence[asyncio.Future | None]) -> None:
        """Cancel what this schedule started and wait until each has recorded how it ended."""
        live = [f for f in futures if f is not None and not f.done()]
        for future in live:
            future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*live, return_exceptions=True)
