"""Runs whose base image was given, not drawn: ``critifusion refine``.

docs/method.md section 3, "A given base", states the method's side.

A refine run is a normal run folder, so history, resume and eval read it like any other:

- **tags**: no model is asked; the person's prompt is the positive prompt (recorded as a
  skipped stage with ``"source": "given"``), the preset's negative tags the negative;
- **components**: with a critique, stage 2 runs as in any run (the critics check the image
  against them); without one it is recorded as skipped, with no components;
- **base**: the given image, fitted to the model's size (``image_input.fit``) and VAE-encoded
  (``Diffusion.encode``), saved as ``base.png`` and ``base_latent.safetensors``; or, with
  ``--from``, a past run's base latent and image, copied. The stage record says which
  (``"source": "given"`` with the file's name, format, size and hash and the fit; or
  ``"source": "run"`` with the past run's folder, prompt and seed), and the manifest keeps
  the record under ``given_base`` too;
- **critique** (SPEC 4-5) or its skip, and **refine** (SPEC 6): the flow's own stages.

The base stage of such a run never draws: a re-run of it (the app's back or retry, a resume)
restores the given base from the files in the folder (:func:`given_base_stage`).
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from critifusion_tui import __version__
from critifusion_tui.engine.events import ImageReady, Notice, StageSkipped
from critifusion_tui.engine.stages import Stage, spec
from critifusion_tui.engine.store import RunStore, StoreError, atomic_write

if TYPE_CHECKING:  # pragma: no cover - typing only
    from critifusion_tui.engine.image_input import GivenImage
    from critifusion_tui.engine.pipeline import Run, Session

GIVEN_KEY = "given_base"  # the manifest's record of where the base came from
# The given image or past run of a refine run started in this process, until its base stage
# has used it (a reopened run restores its base from the run folder instead).
_SOURCES: weakref.WeakKeyDictionary[Run, Any] = weakref.WeakKeyDictionary()


def open_past_run(folder: Path) -> RunStore:
    """A past run whose base a refine reuses (``--from``): it must have a completed base."""
    store = RunStore.open(folder)
    if store.stage(Stage.BASE) is None:
        raise StoreError(f"{folder}: the run has no completed base stage to refine from")
    return store


def start_refine_run(
    session: Session,
    prompt: str,
    *,
    image: GivenImage | None = None,
    past: RunStore | None = None,
    seed: int | None = None,
    out: Path | None = None,
    critique: bool = False,
    force: bool = False,
    emit=None,
) -> Run:
    """A new run folder for refining `image` (or `past`'s base) toward `prompt`.

    The text stages are recorded (components left to run when `critique`), the base is left
    for the flow's base stage, which takes it from here instead of drawing; ``run.run_all()``
    then does the rest. Raises StoreError / ValueError before anything is written when the
    inputs cannot make a run.
    """
    from critifusion_tui.engine.events import ignore
    from critifusion_tui.engine.prompts import negative_tags

    if (image is None) == (past is None):
        raise ValueError("refine takes an image or a past run, exactly one")
    if seed is None and past is not None:
        seed = past.manifest["seed"]
    run = session.new_run(prompt, seed=seed, out=out, emit=emit or ignore, force=force)
    manifest = run.store.manifest
    if image is not None:
        manifest[GIVEN_KEY] = {"source": "given", "file": image.record()}
    else:
        assert past is not None
        manifest[GIVEN_KEY] = {"source": "run", "run": _past_summary(past)}
    _SOURCES[run] = image if image is not None else past
    prompt = run.prompt
    negative = negative_tags(run.settings.criticore.preset)
    run.prompts["positive"] = {"value": prompt, "by": "given"}
    run.prompts["negative"] = {"value": negative, "by": "given"}
    run.store.save_stage(
        Stage.TAGS,
        {
            "skipped": True,
            "source": "given",
            "positive": prompt,
            "negative": negative,
            "candidates": [],
            "aggregator": [],
            "seconds": 0,
        },
    )
    run._emit(StageSkipped(Stage.TAGS, "the prompt is given: it is the positive prompt, no model asked"))
    if not critique:
        run.prompts["components"] = {"value": [], "by": "given"}
        run.store.save_stage(
            Stage.COMPONENTS,
            {
                "skipped": True,
                "source": "given",
                "components": [],
                "candidates": [],
                "aggregator": [],
                "seconds": 0,
            },
        )
        run._emit(StageSkipped(Stage.COMPONENTS, "no critique: the image is not checked against components"))
    run.set_skip_critique(not critique)
    return run


async def given_base_stage(run: Run) -> dict[str, Any]:
    """The base stage of a refine run: the given image encoded (or the past run's base
    copied) the first time, restored from the run folder's files after that."""
    source = _SOURCES.get(run)
    run.forget(Stage.BASE)
    if source is None:
        return await run._stage(Stage.BASE, lambda: _restore(run), detail="the given base, from the run folder")
    from critifusion_tui.engine.image_input import GivenImage

    if isinstance(source, GivenImage):
        work, detail = (lambda: _encode(run, source)), f"encoding {source.path.name}"
    else:
        work, detail = (lambda: _copy(run, source)), f"from {source.folder}"
    record = await run._stage(Stage.BASE, work, detail=detail)
    _SOURCES.pop(run, None)  # used: a later re-run restores from the folder
    return record


async def _encode(run: Run, given: GivenImage) -> dict[str, Any]:
    from critifusion_tui.engine.image_input import fit

    await run.load_model()
    width, height = await run.image_size()
    fitted, plan = fit(given.image, width, height)
    where = (
        "the model's native size"
        if "auto" in (run.settings.diffusion.width, run.settings.diffusion.height)
        else ("the size diffusion.width/height set")
    )
    run._emit(Notice(Stage.BASE, "info", f"given image {given.path.name}: {plan.describe()} ({where})"))
    diffusion = run.diffusion
    latent = await run._blocking(Stage.BASE, diffusion.encode, fitted)
    run._check_output(Stage.BASE, latent)
    run._latents[Stage.BASE] = latent
    base = spec(Stage.BASE)
    assert base.image is not None and base.latent is not None
    await asyncio.to_thread(run.store.write_latent, base.latent, latent)
    chunks = {"prompt": run.prompt, "source": f"given: {given.path.name}", "Software": f"critifusion-tui {__version__}"}
    image_name = await asyncio.to_thread(run.store.write_png, base.image, fitted, chunks)
    run._emit(ImageReady(Stage.BASE, path=run.store.path(image_name), label=f"given: {given.path.name}"))
    record: dict[str, Any] = {
        "source": "given",
        "given": given.record(),
        "fit": plan.record(),
        "prompt": run.prompt,
        "negative": "",
        "image": image_name,
        "latent": base.latent,
        "width": width,
        "height": height,
    }
    _remember(run, record)
    return record


async def _copy(run: Run, past: RunStore) -> dict[str, Any]:
    from critifusion_tui.engine.output_checks import latent_problem, shape_problem
    from critifusion_tui.engine.pipeline import RunFailed

    old = past.stage(Stage.BASE)
    if old is None:  # pragma: no cover - checked by open_past_run
        raise RunFailed(Stage.BASE, f"{past.folder} has no completed base stage")
    try:
        latent = await asyncio.to_thread(past.read_latent, old["latent"], "stages.base.latent")
        png = await asyncio.to_thread(past.read_file, old["image"], "stages.base.image")
    except StoreError as exc:
        raise RunFailed(Stage.BASE, f"cannot take the base of {past.folder}: {exc}") from None
    past_model = ((past.manifest.get("config") or {}).get("diffusion") or {}).get("model")
    if past_model and past_model != run.settings.diffusion.model:
        run._emit(
            Notice(
                Stage.BASE,
                "warning",
                f"{past.folder} was drawn with {past_model}, this refine loads {run.settings.diffusion.model}:"
                " a latent only means the same image to the VAE it was made with",
            )
        )
    await run.load_model()
    problem = latent_problem(latent)
    if problem is None and old.get("width") and old.get("height"):
        problem = shape_problem(latent, old["width"], old["height"], run.diffusion.vae_scale_factor)
    if problem:
        raise RunFailed(Stage.BASE, f"{past.folder}: {problem}")
    latent = latent.to(run.diffusion.device)
    run._latents[Stage.BASE] = latent
    base = spec(Stage.BASE)
    assert base.image is not None and base.latent is not None
    await asyncio.to_thread(run.store.write_latent, base.latent, latent)
    await asyncio.to_thread(atomic_write, run.store.folder / base.image, lambda f: f.write(png))
    run._emit(ImageReady(Stage.BASE, path=run.store.path(base.image), label=f"the base of {past.folder.name}"))
    record: dict[str, Any] = {
        "source": "run",
        "from_run": _past_summary(past),
        "prompt": old["prompt"],
        "negative": old["negative"],
        "image": base.image,
        "latent": base.latent,
        **{k: old[k] for k in ("width", "height", "steps", "guidance", "seed") if k in old},
    }
    _remember(run, record)
    return record


async def _restore(run: Run) -> dict[str, Any]:
    """A re-run of a given base: its record again, once its files are back where it says."""
    from critifusion_tui.engine.pipeline import RunFailed

    record = (run.store.manifest.get(GIVEN_KEY) or {}).get("record")
    if not isinstance(record, dict):
        raise RunFailed(
            Stage.BASE,
            "the given base was not saved before the run stopped; refine the image again with 'critifusion refine'",
        )
    for key in ("image", "latent"):
        try:
            path = run.store.path(record.get(key), f"{GIVEN_KEY}.record.{key}")
            present = path.is_file()
        except (StoreError, OSError) as exc:
            raise RunFailed(Stage.BASE, str(exc)) from None
        if not present:
            raise RunFailed(Stage.BASE, f"{path}: missing: the given base cannot be restored")
    run._emit(Notice(Stage.BASE, "info", "this run's base was given: restored from the run folder, not drawn"))
    run._emit(ImageReady(Stage.BASE, path=run.store.path(record["image"]), label="given"))
    return dict(record)


def _remember(run: Run, record: dict[str, Any]) -> None:
    """Keep the base's record beside the stages (written with the stage's own save)."""
    run.store.manifest[GIVEN_KEY]["record"] = dict(record)


def _past_summary(past: RunStore) -> dict[str, Any]:
    return {
        "folder": str(past.folder.resolve()),
        "prompt": past.manifest.get("prompt"),
        "seed": past.manifest.get("seed"),
    }
