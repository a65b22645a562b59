"""The run pipeline: stages in the method's order, gates for a person, a run folder kept
up to date after every stage, cancellation at any point, resume after a crash.

A :class:`~critifusion_tui.engine.session.Session` (engine/session.py, re-exported here)
holds what lives as long as the program: the settings, the provider router (one client per
backend) and the diffusion model (loaded once). A :class:`Run` is one prompt through the
method. Each stage is a method of its own, so a front end can run the
stages one at a time, re-run one with edited inputs (``edit`` records who changed what), or
let :meth:`Run.run_all` drive them with gates in between. Every front end listens to the same
events (:mod:`.events`); headless gates answer at once.

Blocking diffusion work runs in a worker thread so the event loop (and the app) stays
responsive; its progress comes back to the loop thread before it is emitted, and a cancel of
the awaiting task tells the thread to stop within one denoising step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from critifusion_tui import __version__
from critifusion_tui.engine.criticore import CritiCore, CritiqueResult
from critifusion_tui.engine.events import (
    DiffusionStep,
    Emit,
    Event,
    ImageReady,
    ModelLoaded,
    ModelLoading,
    Notice,
    StageCancelled,
    StageFailed,
    StageFinished,
    StageSkipped,
    StageStarted,
    ignore,
)
from critifusion_tui.engine.flow import RunFlow
from critifusion_tui.engine.session import Session
from critifusion_tui.engine.ledger import summarize
from critifusion_tui.engine.model_source import load_summary
from critifusion_tui.engine.output_checks import black_image, latent_problem, likely_cause, shape_problem
from critifusion_tui.engine.stages import Stage, branch, downstream, readers_of, spec, writer_of
from critifusion_tui.engine.store import RunStore, StoreError, timestamp
from critifusion_tui.redact import redact_fields


class RunFailed(Exception):
    """A stage failed in a way the method cannot go on from; the message says what and why."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        self.message = message
        super().__init__(f"{stage}: {message}")


@dataclass
class RefineParams:
    """What one SpecFusion pass uses (SPEC 6), as the manifest records it."""

    strength: float
    guidance: float
    steps: int
    rho_t: float
    base_c: float
    noise_std: float
    seed: int
    mode: str
    alignment: float | None = None


class Run(RunFlow):
    """One prompt through the method, stage by stage, saved as it goes."""

    def __init__(self, session: Session, store: RunStore, *, emit: Emit = ignore, settings=None) -> None:
        self.session = session
        self.store = store
        self.emit = emit
        # A new run uses the session's settings; a reopened one its own (Session.resume).
        self.settings = settings or session.settings
        self.differences: list[str] = []
        self.criticore = CritiCore.from_settings(session.router, self.settings, emit=self._emit)
        # New values the models wrote for prompts the person had edited (see _set_prompt),
        # and what the models last wrote per prompt.
        self.proposals: dict[str, dict[str, Any]] = {}
        self._written: dict[str, Any] = {}
        # What the flow needs (engine/flow.py): the step in flight.
        self._step_task = None
        # The ledger's calls live in the manifest (a resumed run goes on adding to them).
        ledger = store.manifest.setdefault("ledger", {"calls": [], "summary": summarize([])})
        self.criticore.ledger = ledger.setdefault("calls", [])
        self._latents: dict[str, Any] = {}
        # The PNG bytes this process wrote, by file name. The critics are sent them as they
        # were encoded, without reading the file back.
        self._pngs: dict[str, bytes] = {}
        # The typed results of this process's stages: a re-run of one model keeps the others.
        self._results: dict[str, Any] = {}
        self.reopened = False  # set by Session.resume: the first stage run notes the resume
        # What a stage in flight has made so far (critique rounds: the rounds done), kept in
        # its record when it fails or is cancelled, so a resume goes on from there.
        self._progress: dict[str, dict[str, Any]] = {}
        self._rounds_stop: asyncio.Event | None = None  # set: the person stops the rounds
        # The prompts a person may steer, with who wrote them; restored on resume.
        self.prompts: dict[str, dict[str, Any]] = store.manifest.setdefault("prompts", {})

    def use_replay(self, replay) -> None:
        """Answer every model call from a past run's recorded answers (engine/replay.py).

        The roles become the recorded run's models (their answers are what there is); the
        instructions and the ledger stay this run's. Nothing of the past run's settings is used.
        """
        from critifusion_tui.engine.criticore import model_of

        old = self.criticore
        roles = replay.roles
        core = CritiCore(
            self.session.router,
            candidates=[model_of(m) for m in roles["candidates"]] or ["rules"],
            aggregator=[model_of(m) for m in roles["aggregator"]] or ["rules"],
            vlms=[model_of(m) for m in roles["vlms"]] or ["rules"],
            preset=old.preset,
            emit=self._emit,
            instructions=old.instructions,
        )
        core.ledger = old.ledger
        core.replay = replay
        self.criticore = core
        self.store.manifest["replay_of"] = replay.where
        self.store.write_manifest()

    # ---------------------------------------------------------------- plumbing

    @property
    def diffusion(self):
        """The diffusion model this run's settings ask for (loaded once per session)."""
        return self.session.diffusion_for(self.settings.diffusion)

    @property
    def prompt(self) -> str:
        return self.store.manifest["prompt"]

    @property
    def seed(self) -> int:
        return self.store.manifest["seed"]

    @property
    def folder(self) -> Path:
        return self.store.folder

    def _emit(self, event: Event) -> None:
        # Every front end hears events from here: one redaction step for all of them.
        self.emit(redact_fields(event))

    def text(self, name: str) -> Any:
        """The current value of a steerable prompt (positive, negative, components, refinement)."""
        entry = self.prompts.get(name)
        return entry["value"] if entry else None

    def _set_prompt(self, name: str, value: Any, by: str) -> None:
        """A model (or a rule) wrote `name`. A value the person edited is never replaced
        silently: when the models now say something new, it waits in :attr:`proposals`
        for the person to take (:meth:`take_proposal`) or leave. A changed value makes the
        stages that read it stale."""
        entry = self.prompts.get(name)
        before_model = self._model_value(name)
        self._written[name] = value
        if entry is not None and entry.get("by") == "user":
            if _as_text(value) != _as_text(before_model) and _as_text(value) != _as_text(entry.get("value")):
                self.proposals[name] = {"value": value, "by": by}
                self._emit(
                    Notice(
                        writer_of(name),
                        "warning",
                        f"{by} wrote a new {name} prompt; your edit is kept until you choose between them",
                    )
                )
            return
        self.prompts[name] = {"value": value, "by": by}
        if entry is not None and entry.get("value") != value:
            for stage in readers_of(name):
                self.forget(stage)

    def _model_value(self, name: str) -> Any:
        """What the models last wrote for `name` (before any edit of the person)."""
        if name in self._written:
            return self._written[name]
        entry = self.prompts.get(name)
        if entry is not None and entry.get("by") != "user":
            return entry.get("value")
        first_edit = next((e for e in self.store.manifest.get("edits", []) if e.get("field") == name), None)
        return first_edit.get("before") if first_edit else None

    def take_proposal(self, name: str) -> None:
        """Use the models' new value of `name` instead of the person's edit (recorded as an edit)."""
        proposal = self.proposals.pop(name)
        self.edit(name, proposal["value"], by=proposal["by"])

    def drop_proposal(self, name: str) -> None:
        """Keep the person's edit of `name`; the models' new value is left."""
        self.proposals.pop(name, None)

    def edit(self, name: str, value: Any, by: str = "user") -> None:
        """A person (or a picked model) changed a prompt: keep it, record the edit, and forget
        the stages that used the old value."""
        before = self.text(name)
        if before == value:
            return
        self.prompts[name] = {"value": value, "by": by}
        self.store.record_edit(writer_of(name), name, _as_text(before), _as_text(value), by=by)
        for stage in readers_of(name):
            self.forget(stage)

    def forget(self, stage: str) -> None:
        """Mark `stage` and everything that depends on it as not done."""
        for name in (stage, *downstream(stage)):
            self.store.forget_stage(name)
            self._latents.pop(name, None)
            image = spec(name).image
            if image is not None:
                self._pngs.pop(image, None)

    def _note_resume(self) -> None:
        """A reopened run starts working again: say so, with the settings it goes on with."""
        from critifusion_tui.config import settings_for_manifest

        self.reopened = False
        manifest = self.store.manifest
        manifest["config"] = settings_for_manifest(self.settings)
        manifest["status"] = "running"
        manifest.setdefault("resumed", []).append(timestamp())
        self.store.write_manifest()
        for text in self.differences:
            self._emit(Notice("", "warning", text))
        removed = self.store.remove_temp_files()
        if removed:
            self._emit(
                Notice("", "info", f"removed {len(removed)} unfinished temporary file(s) of an interrupted write")
            )

    async def _stage(
        self, name: str, work: Callable[[], Awaitable[dict[str, Any]]], detail: str = ""
    ) -> dict[str, Any]:
        """Run one stage: events, timing, the record saved, failures recorded and re-raised."""
        try:
            return await self._run_stage(name, work, detail)
        finally:
            self._update_ledger()  # cancelled too: its calls were paid for

    def _update_ledger(self) -> None:
        """The manifest's ledger summary, from its calls (saved with the next manifest write)."""
        self.store.manifest["ledger"]["summary"] = summarize(self.criticore.ledger)

    def ledger_summary(self) -> dict[str, Any]:
        """The run's ledger summary (engine/ledger.py), up to date."""
        return summarize(self.criticore.ledger)

    async def _run_stage(self, name: str, work: Callable[[], Awaitable[dict[str, Any]]], detail: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            if self.reopened:
                self._note_resume()
            elif self.store.manifest.get("status") != "running":
                self.store.manifest["status"] = "running"  # a finished run whose stage runs again
            self._emit(StageStarted(name, detail))
            record = await work()
            seconds = time.perf_counter() - started
            record.setdefault("seconds", round(seconds, 3))
            self._update_ledger()
            self._progress.pop(name, None)
            self.store.save_stage(name, record)
        except asyncio.CancelledError:
            seconds = time.perf_counter() - started
            self._update_ledger()
            with suppress(OSError, StoreError):  # the cancel is said even if the disk refuses it
                self.store.cancel_stage(name, **self._progress.pop(name, {}), seconds=round(seconds, 3))
            self._emit(StageCancelled(name, seconds))
            raise
        except (RunFailed, StoreError, OSError) as exc:
            failure = exc if isinstance(exc, RunFailed) else RunFailed(name, _file_problem(exc, self.folder))
            seconds = time.perf_counter() - started
            self._update_ledger()
            with suppress(OSError):  # a full disk may refuse this write too: the message still comes
                self.store.fail_stage(name, failure.message, **self._progress.pop(name, {}), seconds=round(seconds, 3))
            self._emit(StageFailed(name, failure.message, seconds))
            raise failure from None
        self._emit(StageFinished(name, seconds))
        return record

    async def _in_thread(self, stage: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Run blocking diffusion work in a thread, with progress events and cancellation."""
        from critifusion_tui.engine.diffusion import DiffusionCancelled, DiffusionError

        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        started = time.perf_counter()

        def on_step(done: int, total: int) -> None:
            event = DiffusionStep(stage, step=done, total=total, elapsed=time.perf_counter() - started)
            loop.call_soon_threadsafe(self._emit, event)

        future = loop.run_in_executor(None, partial(fn, on_step=on_step, cancel=cancel, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()  # the thread stops within one step; wait so the GPU is free again
            with suppress(DiffusionCancelled):
                await future
            raise
        except DiffusionError as exc:
            raise RunFailed(stage, str(exc)) from None

    async def _blocking(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Other blocking work (loading, decoding) off the loop; errors become RunFailed."""
        from critifusion_tui.engine.diffusion import DiffusionError

        try:
            return await asyncio.to_thread(fn, *args)
        except DiffusionError as exc:
            raise RunFailed(stage, str(exc)) from None

    # ---------------------------------------------------------------- stages 1 and 2

    async def tags_stage(self, *, only=None) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            result = await self.criticore.tags(self.prompt, only=only, previous=self._previous("tags"))
            self._results["tags"] = result
            winner = next((a.model for a in reversed(result.aggregator) if a.ok), None)
            usable = [a.model for a in result.candidates if a.ok]
            if winner:
                by = f"aggregator:{winner}"
            elif len(usable) == 1:  # one answer, nothing merged: that candidate wrote it
                by = f"candidate:{usable[0]}"
            else:
                by = result.source
            self._set_prompt("positive", result.positive, by)
            self._set_prompt("negative", result.negative, f"preset:{result.preset}")
            return result.record()

        # Only this stage is forgotten: what used its prompts is forgotten when they change.
        self.store.forget_stage("tags")
        return await self._stage("tags", work)

    async def components_stage(self, *, only=None) -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            result = await self.criticore.components(self.prompt, only=only, previous=self._previous("components"))
            self._results["components"] = result
            self._set_prompt("components", result.components, result.source)
            return result.record()

        self.store.forget_stage("components")
        return await self._stage("components", work)

    def _previous(self, stage: str):
        return self._results.get(stage)

    def result(self, stage: str):
        """The typed result of a text stage run in this process (TagsResult, ComponentsResult,
        CritiqueResult), or None (not run yet, or only known from the manifest)."""
        return self._results.get(stage)

    def use_answer(self, stage: str, model: str) -> None:
        """Take one model's answer instead of the aggregate, recorded as written by that model."""
        from critifusion_tui.engine.criticore import parse_components

        result = self.result(stage)
        if result is None:
            raise ValueError(f"the {stage} stage has no answers in this session to choose from")
        if stage == "tags":
            self.edit("positive", result.positive_from(model), by=model)
        elif stage == "components":
            answer = next((a for a in result.candidates if a.model == model), None)
            if answer is None or not answer.ok:
                why = f": {answer.error}" if answer is not None else ""
                raise ValueError(f"{model} has no usable answer in the components stage{why}")
            items = list(answer.reading.items) if answer.reading else parse_components(answer.text)
            self.edit("components", items, by=model)
        elif stage in (Stage.CRITIQUE, Stage.CRITIQUE_ORIGINAL):
            critic = next((c for c in result.critics if c.answer.model == model and c.answer.ok), None)
            if critic is None:
                raise ValueError(f"{model} has no usable critique")
            name = branch(stage == Stage.CRITIQUE_ORIGINAL).refinement
            positive = self.text("positive") or self.prompt
            self.edit(
                name,
                self.criticore.refinement_prompt(critic.refined, positive, self.prompt, style=self.criticore.style),
                by=model,
            )
        else:
            raise ValueError(f"the {stage} stage has no model answers")

    # ---------------------------------------------------------------- stage 3: base image

    async def load_model(self, stage: str = "base") -> None:
        """Load the diffusion model (once per session), reporting it as part of `stage`.

        The load usually started when the run did (:meth:`Session.preload`): this waits for it
        only if it has not ended, and a load that failed fails `stage` with its message, as a
        load started here would. What the libraries printed while loading is shown as notices
        (not on the terminal), and what was really loaded (device, dtype, variant, files,
        scheduler) is recorded in the manifest's ``diffusion`` field, not just the
        configured ``auto``s.
        """
        from critifusion_tui.engine.diffusion import DiffusionError

        diffusion = self.diffusion
        if not diffusion.loaded:
            self._emit(ModelLoading(stage, model=self.settings.diffusion.model))
            preloaded = False
            try:
                preloaded = await self.session.take_load(diffusion)
                if not preloaded:
                    await asyncio.to_thread(diffusion.load)
            except Exception as exc:  # what a library printed while failing often says why
                self._tell_load(stage, diffusion.load_messages)
                if isinstance(exc, DiffusionError):
                    raise RunFailed(stage, str(exc)) from None
                raise
            if not preloaded:
                self._tell_load(stage, diffusion.load_messages)
        self._tell_load(stage, self.session.untold_load_messages(diffusion))
        record = await asyncio.to_thread(diffusion.describe)
        if self.store.manifest.get("diffusion") != record:
            self.store.manifest["diffusion"] = record
            # On the loop thread: another stage may be changing the manifest meanwhile.
            self.store.write_manifest()
            self._emit(ModelLoaded(stage, summary=load_summary(record), record=record))

    # ---------------------------------------------------------------- sharing the GPU with Ollama

    def calls_ollama(self, stage: str) -> bool:
        """Whether `stage` asks an Ollama model (a replay asks nobody)."""
        core = self.criticore
        if core.replay is not None:
            return False
        kind = spec(stage).kind
        roles = {"tags": core.candidates, "components": core.candidates, "critique": core.vlms}.get(kind)
        if roles is None:
            return False
        return any(str(ref).startswith("ollama:") for ref in (*roles, *core.aggregators))

    def keeps_ollama_apart(self, stage: str) -> bool:
        """With ``providers.ollama.unload_before_diffusion = true`` a stage that asks Ollama
        never runs beside a stage that draws: its call would load a model again into the
        memory the diffusion needs (engine/schedule.py)."""
        return self.settings.providers.ollama.unload_before_diffusion is True and self.calls_ollama(stage)

    async def _make_room_for_diffusion(self, stage: str) -> None:
        """``providers.ollama.unload_before_diffusion``: before `stage` draws, ask Ollama to
        unload the models it holds, so they do not take the GPU memory the diffusion needs.
        ``auto`` does so when the Ollama host is this machine and free CUDA memory is short
        (never on the CPU); only runs whose roles use Ollama ask. A refused request is a
        warning: the diffusion goes on (and may run out of memory, which says what helps)."""
        from critifusion_tui.engine.devices import cuda_memory_short
        from critifusion_tui.providers.base import ProviderError
        from critifusion_tui.providers.ollama import is_local_host

        ollama = self.settings.providers.ollama
        setting = ollama.unload_before_diffusion
        if setting is False or not any(self.calls_ollama(s) for s in self.stages):
            return
        if setting == "auto" and not (
            is_local_host(ollama.host) and await asyncio.to_thread(cuda_memory_short, self.diffusion.device)
        ):
            return
        try:
            names = await self.session.router.ollama.unload_loaded()
        except ProviderError as exc:
            self._emit(
                Notice(stage, "warning", f"could not ask Ollama to unload its models before the diffusion: {exc}")
            )
            return
        if names:
            why = "GPU memory is short" if setting == "auto" else "providers.ollama.unload_before_diffusion = true"
            self._emit(
                Notice(
                    stage,
                    "info",
                    f"asked Ollama at {ollama.host} to unload {', '.join(names)} before the diffusion ({why})",
                )
            )

    def _tell_load(self, stage: str, messages: list[tuple[str, str]]) -> None:
        for level, text in messages:
            self._emit(Notice(stage, level, f"while loading: {text}"))

    def preload(self) -> None:
        """Start loading this run's model in the background while other stages run, unless
        every stage that draws is done (:meth:`Session.preload`)."""
        if any(spec(s).draws and not self.done(s) for s in self.stages):
            self.session.preload(self.settings.diffusion)

    @property
    def model_state(self) -> _ModelState:
        """The model's load as the scheduler sees it (engine/schedule.py)."""
        return _ModelState(self)

    async def image_size(self, stage: str = "base") -> tuple[int, int]:
        """The base image's (width, height): the configured size, or the model's native one
        for "auto" (which needs the model's config, so the model is loaded first)."""
        width, height = self.settings.diffusion.size()
        if width is None or height is None:
            await self.load_model(stage)
            native_w, native_h = self.diffusion.default_size
            width, height = width or native_w, height or native_h
        return width, height

    async def base_stage(self, *, original: bool = False) -> dict[str, Any]:
        """SPEC 3: the base latent (kept for the refinement) and its image."""
        if not original and "given_base" in self.store.manifest:
            from critifusion_tui.engine.given_base import given_base_stage

            return await given_base_stage(self)  # `critifusion refine`: given, never drawn
        name = branch(original).base
        cfg = self.settings.diffusion
        if original:
            prompt, negative = self.prompt, cfg.negative  # the comparison base: the user's words
        else:
            prompt, negative = self.text("positive"), self.text("negative")
            if prompt is None:
                raise RunFailed(name, "the tags stage has not run")

        async def work() -> dict[str, Any]:
            await self.load_model(name)
            width, height = await self.image_size(name)
            if "auto" in (cfg.width, cfg.height):
                self._emit(Notice(name, "info", f"image size {width}x{height} (the model's native size)"))
            await self._make_room_for_diffusion(name)
            if name == Stage.BASE and cfg.base_candidates > 1:  # best-of-N (docs/method.md 10.2)
                from critifusion_tui.engine.base_candidates import best_of_n

                return await best_of_n(self, prompt=prompt, negative=negative, width=width, height=height)
            latent_file = spec(name).latent
            assert latent_file is not None  # every base stage keeps its latent (the table says which)
            latent, image = await self.draw_base(name, prompt, negative, width, height, self.seed, latent_file)
            self._latents[name] = latent
            png = await self._save_png(name, image, prompt, negative, self.seed)
            return {
                "prompt": prompt,
                "negative": negative,
                "image": png,
                "latent": spec(name).latent,
                "seed": self.seed,
                "steps": cfg.steps,
                "guidance": cfg.guidance,
                "width": width,
                "height": height,
            }

        self.forget(name)
        size = "native size" if "auto" in (cfg.width, cfg.height) else f"{cfg.width}x{cfg.height}"
        return await self._stage(name, work, detail=f"{size}, {cfg.steps} steps")

    async def draw_base(
        self, stage: str, prompt: str, negative: str, width: int, height: int, seed: int, latent_file: str
    ):
        """SPEC 3's draw: the base latent from `seed`, checked, written to `latent_file`, and
        its decoded image (checked too); returns (latent, image). The PNG is the caller's."""
        cfg = self.settings.diffusion
        diffusion = self.diffusion
        latent = await self._in_thread(
            stage,
            diffusion.base_latent,
            prompt=prompt,
            negative=negative,
            width=width,
            height=height,
            steps=cfg.steps,
            guidance=cfg.guidance,
            seed=seed,
        )
        self._check_output(stage, latent, guidance=cfg.guidance)
        await asyncio.to_thread(self.store.write_latent, latent_file, latent)
        image = await self._blocking(stage, diffusion.decode, latent)
        self._check_output(stage, None, image, guidance=cfg.guidance)
        return latent, image

    async def _save_png(self, stage: str, image, prompt: str, negative: str, seed: int, name: str | None = None) -> str:
        """Encode and write the PNG off the loop (a 1024 px PNG takes a noticeable moment),
        keeping the bytes for the critique (encoded once; no read of the file back). `name`:
        the file, where the stage table names none for the stage (critique rounds)."""
        label = "tiny-random: noise" if self.diffusion.is_tiny_random else ""
        chunks = {
            "prompt": prompt,
            "negative": negative,
            "seed": str(seed),
            "Software": f"critifusion-tui {__version__}",
        }
        name = name or spec(stage).image
        assert name is not None, f"the {stage} stage draws no image"  # the stage table names one for each drawing stage
        data = await asyncio.to_thread(self.store.save_png, name, image, chunks)
        self._pngs[name] = data
        self._emit(ImageReady(stage, path=self.store.path(name), label=label))
        return name

    def _check_output(self, stage: str, latent=None, image=None, *, guidance=None, noise_std=None) -> None:
        """NaN latents and all-black images are failures that name the likely setting."""
        problem = latent_problem(latent) if latent is not None else None
        if problem is None and image is not None and black_image(image):
            problem = "the image came out all black"
        if problem:
            cause = likely_cause(guidance=guidance, dtype=self.settings.diffusion.dtype, noise_std=noise_std)
            raise RunFailed(stage, f"{problem}; {cause}")

    def latent(self, stage: str):
        """A base latent, from memory or from the run folder (after a resume)."""
        if stage not in self._latents:
            record = self.store.stage(stage)
            if record is None:
                raise RunFailed(stage, f"the {stage} stage has not run")
            latent = self.store.read_latent(record["latent"], f"stages.{stage}.latent")
            problem = latent_problem(latent)
            if problem is None and record.get("width") and record.get("height"):
                diffusion = self.diffusion
                factor = diffusion.vae_scale_factor if getattr(diffusion, "loaded", False) else 8
                problem = shape_problem(latent, record["width"], record["height"], factor)
            if problem:
                raise RunFailed(stage, f"{self.store.path(record['latent'])}: {problem}")
            self._latents[stage] = latent
        return self._latents[stage]

    # ---------------------------------------------------------------- stage 4: critique

    async def critique_stage(self, *, original: bool = False, only=None) -> dict[str, Any]:
        """SPEC 4: the VLMs criticise the base image against the components."""
        line = branch(original)
        name, base = line.critique, line.base
        record = self.store.stage(base)
        if record is None:
            raise RunFailed(name, f"the {base} stage has not run")
        png = self._pngs.get(record["image"])  # the bytes this process just wrote, if it did
        if png is None:
            png = self.store.read_file(record["image"], f"stages.{base}.image")
        components = self.text("components") or []

        async def work() -> dict[str, Any]:
            result: CritiqueResult = await self.criticore.critique(
                png,
                record["prompt"],
                components,
                ask_alignment=self._critic_rates(),
                only=only,
                previous=self._previous(name),
                stage=name,
            )
            self._results[name] = result
            tags_positive = self.text("positive") or self.prompt
            refinement = self.criticore.refinement_prompt(
                result, tags_positive, self.prompt, style=self.criticore.style
            )
            self._set_prompt(line.refinement, refinement, f"critique:{result.source}")
            return {**result.record(), "refinement_prompt": refinement}

        self.forget(name)
        return await self._stage(name, work)

    def skip_critique(self, *, original: bool = False) -> None:
        """No critique: the refinement prompt is the stage-1 tags merged with nothing."""
        line = branch(original)
        name = line.critique
        self.forget(name)
        tags_positive = self.text("positive") or self.prompt
        prompt = self.criticore.refinement_prompt("", tags_positive, self.prompt, style=self.criticore.style)
        self._set_prompt(line.refinement, prompt, "tags (critique skipped)")
        self.store.save_stage(name, {"skipped": True, "refinement_prompt": prompt, "seconds": 0})
        self._emit(StageSkipped(name, "skipped by the user"))

    # ---------------------------------------------------------------- stage 6: SpecFusion

    def _critic_rates(self) -> bool:
        """Ask the VLMs for a 0-100 rating: adaptive mode with the critic as its alignment
        source, or critique rounds scored by the critic (the base's rating is what round 1
        is measured against)."""
        spec = self.settings.specfusion
        loop = self.settings.loop
        return (spec.mode == "adaptive" and spec.alignment_from == "critic") or (
            loop.rounds > 1 and loop.score_from == "critic"
        )

    def critic_alignment(self, *, original: bool = False) -> dict[str, Any] | None:
        """The critics' mean <alignment> rating of the base, as an alignment record, or None."""
        critique = self.store.stage(branch(original).critique) or {}
        value = critique.get("alignment")
        return None if value is None else {"source": "critic", "alignment": float(value)}

    async def metric_alignment(self, metric: str, *, original: bool = False) -> dict[str, Any]:
        """Score the base image against the user's prompt with an eval metric, for adaptive
        mode (:meth:`score_image`); a metric that cannot run fails the refine stage."""
        line = branch(original)
        name, base = line.refine, line.base
        record = self.store.stage(base)
        if record is None:
            raise RunFailed(name, f"the {base} stage has not run")
        return await self.score_image(
            metric, self.store.path(record["image"]), stage=name, setting="specfusion.alignment_from"
        )

    async def score_image(self, metric: str, image: Path, *, stage: str, setting: str) -> dict[str, Any]:
        """Score `image` against the user's prompt with an eval metric (its scorer is loaded
        once per session) and map the score to 0-100 with
        :func:`~critifusion_tui.engine.specfusion.alignment_from_metric`. A metric that cannot
        run (missing weights, unreadable files, no such device) fails `stage` with the message
        that says how to fix it; `setting` is the config key that asked for the metric."""
        from critifusion_tui.engine.diffusion import DiffusionLoadError
        from critifusion_tui.engine.specfusion import METRIC_ALIGNMENT_RANGES, alignment_from_metric
        from critifusion_tui.eval.base import ScorerError
        from critifusion_tui.eval.weights import WeightsMissing

        prompt = self.prompt
        cache = self.session.scorers
        if not cache.loaded(metric):
            self._emit(Notice(stage, "info", f"loading the {metric} scorer ({setting})"))

        def score() -> tuple[float, float, str]:
            prepared = cache.prepare(metric)
            scorer = cache.get(metric, prepared)
            value = scorer.score([image], [prompt])[0]
            return value, alignment_from_metric(metric, value), prepared.fingerprint  # NaN: ValueError

        try:
            value, mapped, weights = await asyncio.to_thread(score)
        except (WeightsMissing, ScorerError, DiffusionLoadError, OSError, ValueError) as exc:
            raise RunFailed(
                stage,
                f"{setting} = {metric!r} scores images with {metric}, which cannot run:\n{exc}\n"
                f'Or set {setting} = "critic".',
            ) from None
        poor, good = METRIC_ALIGNMENT_RANGES[metric]
        return {
            "source": metric,
            "value": round(value, 6),
            "alignment": round(mapped, 2),
            "anchors": [poor, good],
            "weights": weights,
        }

    def refine_params(self, *, original: bool = False, alignment: dict[str, Any] | None = None) -> RefineParams:
        """SPEC 6: fixed (from last_k) or adaptive (CADR from `alignment`, a record made by
        :meth:`critic_alignment` or :meth:`metric_alignment`; None falls back to the fixed rule)."""
        from critifusion_tui.engine.specfusion import (
            cadr_from_alignment,
            guidance_for_last_k,
            refine_seed,
            strength_for_last_k,
        )

        spec = self.settings.specfusion
        seed = refine_seed(self.seed, spec.last_k, on_original=original)
        if spec.mode == "adaptive" and alignment is not None:
            cadr = cadr_from_alignment(alignment["alignment"])
            return RefineParams(
                cadr.strength,
                cadr.guidance,
                cadr.steps,
                cadr.rho_t,
                spec.base_c,
                spec.noise_std,
                seed,
                "adaptive",
                alignment["alignment"],
            )
        guidance = spec.guidance if spec.guidance is not None else guidance_for_last_k(spec.last_k)
        rated = self.critic_alignment(original=original)
        return RefineParams(
            strength_for_last_k(spec.last_k, spec.total_steps),
            guidance,
            spec.total_steps,
            spec.rho_t,
            spec.base_c,
            spec.noise_std,
            seed,
            "fixed",
            rated["alignment"] if rated else None,
        )

    def _say_alignment(self, stage: str, alignment: dict[str, Any] | None, params: RefineParams) -> None:
        if self.settings.specfusion.mode != "adaptive":
            return
        if alignment is None:
            self._emit(
                Notice(stage, "warning", "adaptive mode: no alignment rating from the critic, using the fixed rule")
            )
            return
        if alignment["source"] == "critic":
            where = "the critics' rating"
        else:
            poor, good = alignment["anchors"]
            where = f"{alignment['source']} {alignment['value']:.4g} (linear, {poor:g} -> 0, {good:g} -> 100)"
        self._emit(
            Notice(
                stage,
                "info",
                f"adaptive (CADR): alignment {alignment['alignment']:g} / 100 from {where}: strength {params.strength:.3f}, "
                f"guidance {params.guidance:.2f}, {params.steps} steps, rho_t {params.rho_t:.3f}",
            )
        )

    async def refine_stage(self, *, original: bool = False) -> dict[str, Any]:
        line = branch(original)
        name, base = line.refine, line.base
        prompt = self.text(line.refinement)
        if prompt is None:
            raise RunFailed(name, "the critique stage has not run (or been skipped)")
        negative = self.settings.diffusion.negative
        sf = self.settings.specfusion
        from_metric = sf.mode == "adaptive" and sf.alignment_from != "critic"
        alignment = None if from_metric else self.critic_alignment(original=original)
        params = None if from_metric else self.refine_params(original=original, alignment=alignment)

        async def work() -> dict[str, Any]:
            nonlocal alignment, params
            if from_metric:
                alignment = await self.metric_alignment(sf.alignment_from, original=original)
                params = self.refine_params(original=original, alignment=alignment)
            assert params is not None
            self._say_alignment(name, alignment, params)
            x_lo = self.latent(base)
            fused, image = await self.specfusion(name, x_lo, x_lo, prompt, negative, params)
            png = await self._save_png(name, image, prompt, negative, params.seed)
            latent_file = spec(name).latent
            if latent_file is not None:  # the full method's: critique rounds refine from it
                await asyncio.to_thread(self.store.write_latent, latent_file, fused)
                self._latents[name] = fused
            return {
                "prompt": prompt,
                "negative": negative,
                "strength": params.strength,
                "guidance": params.guidance,
                "steps": params.steps,
                "rho_t": params.rho_t,
                "base_c": params.base_c,
                "noise_std": params.noise_std,
                "seed": params.seed,
                "mode": params.mode,
                "image": png,
                **({"latent": latent_file} if latent_file is not None else {}),
                **({"alignment": params.alignment} if params.alignment is not None else {}),
                **({"alignment_from": alignment} if params.mode == "adaptive" else {}),
            }

        self.forget(name)
        if from_metric or params is None:
            detail = f"adaptive, alignment from {sf.alignment_from}"
        else:
            detail = f"strength {params.strength:.2f}, {params.mode}"
        return await self._stage(name, work, detail=detail)

    async def specfusion(self, stage: str, start, base, prompt: str, negative: str, params: RefineParams):
        """SPEC 6 on one latent: img2img from `start` (the base, or the round before's image
        in critique rounds), then the frequency fusion with `base`, whose low frequencies
        the result keeps; returns the fused latent and its decoded image."""
        from critifusion_tui.engine.specfusion import frequency_fusion

        await self.load_model(stage)
        diffusion = self.diffusion
        await self._make_room_for_diffusion(stage)
        x_hi = await self._in_thread(
            stage,
            diffusion.img2img_latent,
            latent=start,
            prompt=prompt,
            negative=negative,
            strength=params.strength,
            guidance=params.guidance,
            steps=params.steps,
            seed=params.seed,
        )

        def fuse_and_decode():
            fused = frequency_fusion(
                x_hi,
                base.to(x_hi.device, x_hi.dtype),
                base_c=params.base_c,
                rho_t=params.rho_t,
                noise_std=params.noise_std,
                generator=diffusion.generator(params.seed),
            )
            self._check_output(stage, fused, guidance=params.guidance, noise_std=params.noise_std)
            return fused, diffusion.decode(fused)

        fused, image = await self._blocking(stage, fuse_and_decode)
        self._check_output(stage, None, image, guidance=params.guidance, noise_std=params.noise_std)
        return fused, image

    # ---------------------------------------------------------------- critique rounds

    async def rounds_stage(self, *, more: int = 0) -> dict[str, Any]:
        """Rounds 2.. of critique and refinement (engine/rounds.py, docs/method.md 10.1)."""
        from critifusion_tui.engine.rounds import rounds_stage

        return await rounds_stage(self, more=more)

    def stop_rounds(self) -> bool:
        """Stop the rounds in flight, keeping the rounds done (engine/rounds.py)."""
        from critifusion_tui.engine.rounds import stop_rounds

        return stop_rounds(self)

    def pick_round(self, number: int) -> None:
        """Make round `number` the final image (engine/rounds.py)."""
        from critifusion_tui.engine.rounds import pick_round

        pick_round(self, number)

    # ---------------------------------------------------------------- the run's end

    def _finish(self, status: str) -> None:
        """Record how the run ended; a disk that refuses even this leaves the last stage's word."""
        try:
            self.store.finish(status)
        except OSError as exc:
            self.store.manifest["status"] = status
            self._emit(Notice("", "error", f"could not record status {status!r}: {_file_problem(exc, self.folder)}"))

    def pick_base(self, number: int) -> bool:
        """Take best-of-N candidate `number` (1-based) as the base; the critique and what
        follows it run again (engine/base_candidates.py)."""
        from critifusion_tui.engine.base_candidates import pick_base

        return pick_base(self, number)


class _ModelState:
    """A run's diffusion model as :class:`~critifusion_tui.engine.schedule.Schedule` asks
    about it: loaded yet, and a way to wait for a load in flight."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def state(self) -> str:
        return self.run.session.load_state(self.run.diffusion)

    async def wait(self) -> None:
        await self.run.session.wait_loaded(self.run.diffusion)


def _file_problem(exc: BaseException, folder: Path) -> str:
    """A run-folder fault (disk full, read-only, a refused file) as one sentence."""
    import errno

    if isinstance(exc, StoreError):
        return str(exc)
    code = getattr(exc, "errno", None)
    where = getattr(exc, "filename", None) or folder
    if code == errno.ENOSPC:
        return f"the disk is full: cannot write {where}; free some space, then resume with --resume {folder}"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {where}: {getattr(exc, 'strerror', None) or exc} (a read-only or foreign folder?)"
    if code == errno.ENAMETOOLONG:
        return f"cannot write {where}: the path is too long"
    return f"cannot write {where}: {getattr(exc, 'strerror', None) or exc}"


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)
