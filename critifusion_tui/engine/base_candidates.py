"""Best-of-N bases (docs/method.md 10.2, beyond the paper): ``[diffusion] base_candidates = N``.

The full method's base stage (never the comparison's ``base_original``, never a given base)
draws N bases instead of one, rates each, and goes on with the best:

- candidate i (0-based) is drawn from seed ``run seed + 10000 * i`` (:func:`candidate_seed`),
  so candidate 0 is the paper's base, bit for bit, and N = 1 is the paper;
- they are drawn one after another, each with its own progress; a cancel stops the pass in
  flight and the stage is recorded cancelled (the candidates drawn so far stay on disk, the
  record does not name them);
- each is written as ``base_c<i>.png`` and ``base_c<i>_latent.safetensors`` (1-based), and the
  pick again as ``base.png`` and ``base_latent.safetensors``, so the critique, the refinement,
  eval and a resume read the base as they always did;
- the rating is ``diffusion.base_pick_from``: ``"critic"`` asks the VLM critics about every
  candidate at once and takes their mean ``<alignment>`` rating; a metric scores each with
  :meth:`~critifusion_tui.engine.pipeline.Run.score_image` (0-100). The best rating wins, the
  lower index on a tie; a candidate nobody rated has no score, and when none is rated
  candidate 1 is taken and a warning says so;
- the base record keeps every candidate (index, seed, files, score), ``picked`` (1-based) and
  ``picked_by`` (``"critic"``, the metric, ``"user"``, or ``"none"``).

A person may pick another candidate afterwards (:func:`pick_base`, ``Run.pick_base``): the
base files are rewritten from it, the choice is recorded as an edit, and everything
downstream of the base is forgotten, so the flow runs the critique again.

Why not one batched pipeline call on CUDA: diffusers would give each sample the same initial
noise as a separate call, but a batch of N runs other kernels than a batch of one, so the
batched candidate 0 would differ from the paper's base in its last bits, and a run folder would
no longer re-run to its own bytes (docs/method.md section 6) whenever free memory decided
differently. Drawing one after another keeps both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.events import BaseCandidates, CandidateImage, ImageReady, Notice
from critifusion_tui.engine.stages import Stage, downstream, spec

if TYPE_CHECKING:  # pragma: no cover - typing only
    from critifusion_tui.engine.pipeline import Run

# Seeds of candidates lie this far apart: far enough from the refinement's seeds (seed + 2100
# + last_k, seed + 2400 + last_k, last_k below 1000) that no candidate draws a refinement's
# noise.
SEED_STEP = 10000
NOT_RATED = "none"  # picked_by when no candidate got a rating and candidate 1 was taken


def candidate_seed(seed: int, index: int) -> int:
    """The seed of candidate `index` (0-based): the run's seed + 10000 x index."""
    return seed + SEED_STEP * index


def candidate_files(number: int) -> tuple[str, str]:
    """The image and latent file names of candidate `number` (1-based)."""
    return f"base_c{number}.png", f"base_c{number}_latent.safetensors"


def best(scores: list[float | None]) -> int | None:
    """The 0-based index of the highest score, the lowest index on a tie; None when no score."""
    rated = [(score, index) for index, score in enumerate(scores) if score is not None]
    if not rated:
        return None
    top = max(score for score, _ in rated)
    return min(index for score, index in rated if score == top)


@dataclass
class _Drawn:
    number: int  # 1-based
    seed: int
    image: Any  # PIL image
    latent: Any  # torch tensor
    png: bytes


async def best_of_n(run: Run, *, prompt: str, negative: str, width: int, height: int) -> dict[str, Any]:
    """The full method's base stage with ``diffusion.base_candidates`` > 1: draw, rate, pick,
    write the pick as the base. Returns the stage record (the base's fields, plus the
    candidates, ``picked`` and ``picked_by``). Called from ``Run.base_stage`` inside the
    stage, after the model is loaded."""
    cfg = run.settings.diffusion
    name = Stage.BASE
    count = cfg.base_candidates
    drawn: list[_Drawn] = []
    for index in range(count):
        number, seed = index + 1, candidate_seed(run.seed, index)
        run._emit(Notice(name, "info", f"drawing base candidate {number}/{count} (seed {seed})"))
        image_name, latent_name = candidate_files(number)
        latent, image = await run.draw_base(name, prompt, negative, width, height, seed, latent_name)
        await run._save_png(name, image, prompt, negative, seed, name=image_name)
        drawn.append(_Drawn(number, seed, image, latent, run._pngs[image_name]))

    source = cfg.base_pick_from
    critiques: dict[int, dict[str, Any]] = {}
    scores = await (
        _critic_scores(run, drawn, prompt, critiques) if source == "critic" else _metric_scores(run, drawn, source)
    )
    chosen = best([score for score, _ in scores])
    if chosen is None:
        chosen, picked_by = 0, NOT_RATED
        run._emit(
            Notice(
                name,
                "warning",
                f"no base candidate got a rating from {source}: refining candidate 1 (seed {drawn[0].seed})",
            )
        )
    else:
        picked_by = source
    pick = drawn[chosen]
    run._latents[name] = pick.latent
    await asyncio.to_thread(run.store.write_latent, spec(name).latent, pick.latent)
    png = await run._save_png(name, pick.image, prompt, negative, pick.seed)
    candidates = [
        {
            "index": d.number,
            "seed": d.seed,
            "image": candidate_files(d.number)[0],
            "latent": candidate_files(d.number)[1],
            "score": score,
            **({"value": value} if value is not None else {}),
            **({"critique": critiques[d.number]} if d.number in critiques else {}),
        }
        for d, (score, value) in zip(drawn, scores, strict=True)
    ]
    record = {
        "prompt": prompt,
        "negative": negative,
        "image": png,
        "latent": spec(name).latent,
        "seed": pick.seed,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "width": width,
        "height": height,
        "candidates": candidates,
        "picked": pick.number,
        "picked_by": picked_by,
    }
    run._emit(announce(run, record))
    return record


async def _critic_scores(
    run: Run, drawn: list[_Drawn], prompt: str, critiques: dict[int, dict[str, Any]]
) -> list[tuple[float | None, float | None]]:
    """Every candidate shown to the critics at once; each one's mean <alignment> rating. The
    critics' answers go into `critiques`, by candidate number."""
    components = run.text("components") or []

    async def rate(candidate: _Drawn) -> tuple[float | None, float | None]:
        # Only the ratings are wanted: no aggregator merges these critiques.
        result = await run.criticore.critique(
            candidate.png, prompt, components, ask_alignment=True, stage="base", merge=False
        )
        full = result.record()  # every critic's answer is kept, and --replay reads it back
        critiques[candidate.number] = {key: full[key] for key in ("candidates", "source", "seconds")}
        if result.alignment is None:
            run._emit(Notice("base", "warning", f"base candidate {candidate.number}: no critic gave a rating"))
            return None, None
        return float(result.alignment), None

    if run.criticore.replay is not None:
        # A replay hands out the recorded answers in the order they are asked for: one
        # candidate after another, so each gets its own (answers come at once anyway).
        return [await rate(d) for d in drawn]
    tasks = [asyncio.ensure_future(rate(d)) for d in drawn]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:  # one rating failed the stage: the others stop asking
            task.cancel()
        raise


async def _metric_scores(run: Run, drawn: list[_Drawn], metric: str) -> list[tuple[float | None, float | None]]:
    """Each candidate scored with `metric`, one after another (the scorer shares the GPU with
    the diffusion model). A metric that cannot run is said once, and nothing is rated."""
    from critifusion_tui.engine.pipeline import RunFailed

    scores: list[tuple[float | None, float | None]] = []
    for candidate in drawn:
        path = run.store.path(candidate_files(candidate.number)[0])
        try:
            rated = await run.score_image(metric, path, stage="base", setting="diffusion.base_pick_from")
        except RunFailed as exc:
            run._emit(Notice("base", "warning", exc.message))
            return [(None, None)] * len(drawn)
        scores.append((float(rated["alignment"]), float(rated["value"])))
    return scores


def announce(run: Run, record: dict[str, Any]) -> BaseCandidates:
    """The event that shows a base record's candidates (images as paths in the run folder)."""
    return BaseCandidates(
        Stage.BASE,
        tuple(
            CandidateImage(c["index"], c["seed"], run.store.path(c["image"]), c.get("score"))
            for c in record["candidates"]
        ),
        int(record["picked"]),
        str(record["picked_by"]),
    )


def candidates_of(run: Run) -> BaseCandidates | None:
    """The completed base's candidates as the front ends show them, or None (one base)."""
    record = run.store.stage(Stage.BASE)
    if not record or not record.get("candidates"):
        return None
    return announce(run, record)


def pick_base(run: Run, number: int) -> bool:
    """A person takes candidate `number` (1-based) as the base: ``base.png`` and the base
    latent are rewritten from its files, the record says ``picked_by: "user"``, the manifest's
    edits list records the change, and every stage after the base is forgotten, so the flow
    runs the critique again. Returns False when that candidate is already the base (nothing
    changes). A run without candidates, a number out of range, or a step in flight is a
    FlowError."""
    from critifusion_tui.engine.flow import FlowError
    from critifusion_tui.engine.store import atomic_write

    if run.busy:
        raise FlowError("a step of this run is running: cancel it or wait before picking a base")
    record = run.store.stage(Stage.BASE)
    candidates = (record or {}).get("candidates") or []
    if not candidates:
        raise FlowError("this run's base has no candidates to pick from (diffusion.base_candidates = 1)")
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= len(candidates):
        raise FlowError(f"there is no base candidate {number!r}: pick 1 to {len(candidates)}")
    assert record is not None
    before = record.get("picked")
    if before == number:
        return False
    chosen = candidates[number - 1]
    where = f"stages.base.candidates[{number - 1}]"
    latent = run.store.read_latent(chosen["latent"], f"{where}.latent")
    png = run.store.read_file(chosen["image"], f"{where}.image")
    # The candidate's own bytes: base.png stays byte for byte the image the critics rate.
    atomic_write(run.store.path(record["image"]), lambda f: f.write(png))
    run.store.write_latent(record["latent"], latent)
    run._latents[Stage.BASE] = latent
    run._pngs[record["image"]] = png
    for later in downstream(Stage.BASE):
        run.forget(later)
        run._results.pop(later, None)  # a retry of one critic must not keep answers about another image
    run.store.save_stage(Stage.BASE, {**record, "seed": chosen["seed"], "picked": number, "picked_by": "user"})
    run.store.record_edit(Stage.BASE, "base", f"candidate {before}", f"candidate {number}", by="user")
    run._record_status()
    label = "tiny-random: noise" if run.diffusion.is_tiny_random else ""
    run._emit(ImageReady(Stage.BASE, path=run.store.path(record["image"]), label=label))
    run._emit(announce(run, run.store.stage(Stage.BASE) or record))
    return True
