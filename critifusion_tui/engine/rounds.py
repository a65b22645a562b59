"""Critique rounds, beyond the paper (docs/method.md 10.1).

The paper criticises once and refines once. With ``loop.rounds = N > 1`` the ``rounds``
stage follows the refinement: round k (k >= 2) asks the critics about round k-1's image (the
first round is the refinement itself, ``refined.png``), with what earlier rounds reported in
their context, and refines that image again: img2img from round k-1's latent, fused with the
*base* latent, so the low frequencies (layout, colour masses) keep coming from the base and
a round cannot drift away from it. Its files are ``refined_r<k>.png`` and
``refined_r<k>_latent.safetensors``.

Each round's image is scored 0-100, by the critics' <alignment> rating (asked in the
critique of that image, which also writes the next round's prompt) or by an eval metric
(``loop.score_from``). The rounds stop at ``loop.rounds``, when a score reaches
``loop.stop_at``, when a round gains less than ``loop.min_gain`` over the one before (the
base's score, for round 1), or when the person stops them; the final image is the
best-scoring round. Every round is persisted as it ends (the stage record's ``rounds`` list,
status ``running`` until the stage completes), so a crash or a cancel keeps them and a
resume goes on from the last one.

The person may ask for one more round after they ended (``RunFlow.more_rounds``, no stop
rule applies to it) and pick any round as the final image (:func:`pick_round`); a pick stands
through later rounds.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.events import Notice, RoundScored
from critifusion_tui.engine.stages import Stage

if TYPE_CHECKING:  # pragma: no cover - typing only
    from critifusion_tui.engine.pipeline import Run

ROUND_SEED_STEP = 1000  # round k draws with the refinement's seed + 1000 * (k - 1)
NAME = Stage.ROUNDS


def round_seed(refine_seed: int, round_number: int) -> int:
    """Round k's img2img and fusion-noise seed (round 1 is the refinement: its own seed)."""
    return refine_seed + ROUND_SEED_STEP * (round_number - 1)


def round_files(round_number: int) -> tuple[str, str]:
    """Round k's image and latent file names (round 1's are the refine stage's)."""
    return f"refined_r{round_number}.png", f"refined_r{round_number}_latent.safetensors"


def stop_reason(
    score: float | None, before: float | None, *, stop_at: float | None, min_gain: float | None
) -> str | None:
    """Why no round should follow one that scored `score` (the one before it: `before`), or
    None. A missing score stops nothing: what cannot be judged runs on to loop.rounds."""
    if score is None:
        return None
    if stop_at is not None and score >= stop_at:
        return f"the score {score:g} reached stop_at {stop_at:g}"
    if min_gain is not None and before is not None and score - before < min_gain:
        return f"the round gained {score - before:+g}, less than min_gain {min_gain:g}"
    return None


def best_round(rounds: list[dict[str, Any]]) -> tuple[int, str]:
    """The round that is the final image, and why: the best score (the earlier round on a
    tie: fewer steps away from the base), or the last round when none was scored."""
    scored = [r for r in rounds if r.get("score") is not None]
    if not scored:
        return rounds[-1]["round"], "last round"
    best = max(scored, key=lambda r: (r["score"], -r["round"]))
    return best["round"], "score"


def history_of(base_issues: list[str], rounds: list[dict[str, Any]]) -> str:
    """What earlier critiques reported, one line each, led by the image they were about."""
    lines = [f"[base] {issue}" for issue in base_issues]
    for entry in rounds:
        lines += [f"[round {entry['round']}] {issue}" for issue in entry.get("issues", [])]
    return "\n".join(lines) or "(no problems were reported)"


async def rounds_stage(run: Run, *, more: int = 0) -> dict[str, Any]:
    """The ``rounds`` stage: rounds 2.. until a stop rule (or, with `more`, exactly `more`
    rounds beyond those already done, whatever the scores say)."""
    done = run.store.stage(NAME)
    if more:
        previous = done
    else:  # a resume goes on from the rounds of an unfinished stage; a re-run starts afresh
        previous = None if done else run.store.stages.get(NAME)
    detail = f"one more round ({more})" if more else f"up to {run.settings.loop.rounds} rounds"
    return await run._stage(NAME, lambda: _rounds(run, previous, more), detail=detail)


async def _rounds(run: Run, previous: dict[str, Any] | None, more: int) -> dict[str, Any]:
    loop = run.settings.loop
    refine = run.store.stage(Stage.REFINE)
    critique = run.store.stage(Stage.CRITIQUE) or {}
    if refine is None or not refine.get("latent"):
        raise _failed("the refine stage has no latent to go on from (re-run it)")
    rounds: list[dict[str, Any]] = [dict(r) for r in (previous or {}).get("rounds", [])]
    if not rounds or rounds[0].get("image") != refine["image"]:
        rounds = [_first_round(refine)]
    base_score = (previous or {}).get("base_score")
    if base_score is None:
        base_score = await _base_score(run, critique)
    limit = len(rounds) + more if more else loop.rounds
    stopped = ""
    state = {"base_score": base_score, "score_from": loop.score_from}

    def save() -> None:
        progress = {**state, "rounds": rounds}
        run._progress[NAME] = progress
        run.store.save_progress(NAME, progress)

    stop = run._rounds_stop = asyncio.Event()
    try:
        while True:
            last = rounds[-1]
            if "scored" not in last:
                may_go_on = last["round"] < limit
                if not await _until_stopped(stop, _score(run, last, rounds, critique, may_go_on)):
                    stopped = "stopped by you"
                    break
                save()
                _tell(run, last, rounds)
            if last["round"] >= limit:
                stopped = "the round you asked for is done" if more else f"all {limit} rounds done"
                break
            before = rounds[-2]["score"] if len(rounds) > 1 else base_score
            reason = None if more else stop_reason(last["score"], before, stop_at=loop.stop_at, min_gain=loop.min_gain)
            if reason:
                stopped = reason
                break
            if not await _until_stopped(stop, _next_round(run, rounds, critique)):
                stopped = "stopped by you"
                break
            save()
    finally:
        run._rounds_stop = None
    final, why = best_round(rounds)
    if previous and previous.get("final_by") == "user":  # the person's pick stands
        final, why = previous["final"], "user"
    image = next(r["image"] for r in rounds if r["round"] == final)
    run._emit(RoundScored(NAME, round=final, rounds=tuple(rounds), final=final, stopped=stopped, image=image))
    return {**state, "rounds": rounds, "final": final, "final_image": image, "final_by": why, "stopped": stopped}


def _first_round(refine: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": 1,
        "image": refine["image"],
        "latent": refine["latent"],
        "prompt": refine.get("prompt", ""),
        "seed": refine.get("seed"),
        "strength": refine.get("strength"),
        "seconds": refine.get("seconds"),
    }


async def _until_stopped(stop: asyncio.Event, work) -> bool:
    """Run `work` unless the person stops the rounds first (then it is cancelled, and what
    it half made is dropped); True when it ended by itself."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()  # a failure of the round fails the stage, with the rounds before it kept
    return True


async def _base_score(run: Run, critique: dict[str, Any]) -> float | None:
    """The base image's score: what round 1 is measured against (loop.min_gain)."""
    score_from = run.settings.loop.score_from
    if score_from == "critic":
        return critique.get("alignment")
    base = run.store.stage(Stage.BASE)
    assert base is not None  # the refine stage, done, needed it
    scored = await run.score_image(score_from, run.store.path(base["image"]), stage=NAME, setting="loop.score_from")
    return scored["alignment"]


async def _score(run: Run, entry: dict[str, Any], rounds: list[dict[str, Any]], critique, may_go_on: bool) -> None:
    """Score round `entry`'s image; ask the critics about it when they score or when another
    round may follow (their refined prompt is that round's prompt)."""
    score_from = run.settings.loop.score_from
    if score_from != "critic":
        scored = await run.score_image(
            score_from, run.store.path(entry["image"]), stage=NAME, setting="loop.score_from"
        )
        entry["score"] = scored["alignment"]
    if score_from == "critic" or may_go_on:
        await _criticise(run, entry, rounds, critique, rate=score_from == "critic")
    entry.setdefault("score", None)
    entry["scored"] = True


async def _criticise(run: Run, entry: dict[str, Any], rounds, critique, *, rate: bool) -> None:
    png = run._pngs.get(entry["image"])
    if png is None:
        png = run.store.read_file(entry["image"], f"stages.{NAME}.rounds.image")
    earlier = [r for r in rounds if r["round"] < entry["round"]]
    result = await run.criticore.critique(
        png,
        run.text("positive") or run.prompt,  # the first critique's prompt: scores compare
        run.text("components") or [],
        ask_alignment=rate,
        stage=NAME,
        history=(entry["round"], history_of(list(critique.get("issues", [])), earlier)),
    )
    if rate:
        entry["score"] = result.alignment
        if result.alignment is None:
            run._emit(Notice(NAME, "warning", f"no critic rated round {entry['round']}: its score is unknown"))
    entry["issues"] = list(result.issues)
    # Every critic's answer and the merge, as the critique stage keeps them: nothing a model
    # said is lost, and --replay answers a round's critics from here.
    full = result.record()
    entry["critique"] = {key: full[key] for key in ("candidates", "aggregator", "aggregated_by", "source", "seconds")}
    tags_positive = run.text("positive") or run.prompt
    entry["next_prompt"] = run.criticore.refinement_prompt(result, tags_positive, run.prompt, style=run.criticore.style)


async def _next_round(run: Run, rounds: list[dict[str, Any]], critique) -> None:
    """Refine the last round's image into the next round."""
    last = rounds[-1]
    if last.get("next_prompt") is None:  # scored by a metric at the last planned round
        await _criticise(run, last, rounds, critique, rate=False)
    number = last["round"] + 1
    image_file, latent_file = round_files(number)
    score = last.get("score")
    alignment = {"source": "critic", "alignment": score} if score is not None else None
    params = run.refine_params(alignment=alignment)
    params = replace(params, seed=round_seed(params.seed, number))
    prompt, negative = last["next_prompt"], run.settings.diffusion.negative
    started = asyncio.get_running_loop().time()
    start = _latent_of(run, last)
    fused, image = await run.specfusion(NAME, start, run.latent(Stage.BASE), prompt, negative, params)
    await asyncio.to_thread(run.store.write_latent, latent_file, fused)
    run._latents[latent_file] = fused
    await run._save_png(NAME, image, prompt, negative, params.seed, name=image_file)
    rounds.append(
        {
            "round": number,
            "image": image_file,
            "latent": latent_file,
            "prompt": prompt,
            "seed": params.seed,
            "strength": params.strength,
            "seconds": round(asyncio.get_running_loop().time() - started, 3),
        }
    )


def _latent_of(run: Run, entry: dict[str, Any]):
    """A round's fused latent: from memory, or from the run folder (after a resume)."""
    from critifusion_tui.engine.output_checks import latent_problem

    name = entry["latent"]
    if entry["round"] == 1 and Stage.REFINE in run._latents:
        return run._latents[Stage.REFINE]
    if name not in run._latents:
        latent = run.store.read_latent(name, f"stages.{NAME}.rounds.latent")
        problem = latent_problem(latent)
        if problem:
            raise _failed(f"{run.store.path(name)}: {problem}")
        run._latents[name] = latent
    return run._latents[name]


def _tell(run: Run, entry: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    run._emit(
        RoundScored(NAME, round=entry["round"], score=entry.get("score"), image=entry["image"], rounds=tuple(rounds))
    )


def _failed(message: str):
    from critifusion_tui.engine.pipeline import RunFailed

    return RunFailed(NAME, message)


# ---------------------------------------------------------------- the person's moves


def stop_rounds(run: Run) -> bool:
    """Stop the rounds in flight: the round under way is dropped, the ones done are kept and
    the best of them is the final image. Returns whether rounds were running."""
    if run._rounds_stop is None:
        return False
    run._rounds_stop.set()
    return True


def pick_round(run: Run, number: int) -> None:
    """The person makes round `number` the final image (recorded as their choice)."""
    record = run.store.stage(NAME)
    if record is None:
        raise ValueError("the rounds have not ended: there is no round to pick yet")
    found = next((r for r in record["rounds"] if r["round"] == number), None)
    if found is None:
        raise ValueError(f"there is no round {number} (rounds 1 to {len(record['rounds'])})")
    before = record.get("final")
    record.update(final=number, final_image=found["image"], final_by="user")
    run.store.record_edit(NAME, "final", f"round {before}", f"round {number}")
    run._emit(
        RoundScored(NAME, round=number, rounds=tuple(record["rounds"]), final=number, stopped=record.get("stopped", ""))
    )
