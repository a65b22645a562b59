"""Critique rounds (engine/rounds.py, docs/method.md 10.1): a scripted critic on the loopback
server rates each image; the rounds stop at the score, at loop.rounds and on no gain, keep
every round, and make the best one the final image."""

from __future__ import annotations

import json

import pytest

from critifusion_tui.config import Settings
from critifusion_tui.engine.flow import FlowError, Phase
from critifusion_tui.engine.pipeline import Session
from critifusion_tui.engine.rounds import best_round, round_seed, stop_reason
from critifusion_tui.engine.stages import Stage
from tests.engine.test_pipeline import PROMPT, offline_settings


def critic_says(server, *ratings: int) -> None:
    """The critic rates the images it is shown in this order: the base, then each round."""
    for n, rating in enumerate(ratings):
        server.script(
            "critic",
            text=f"<issues>- problem {n}</issues><refined>a red fox, fix {n}</refined><alignment>{rating}</alignment>",
            times=1,
        )


def rounds_settings(tmp_path, engine, settings, **loop) -> Settings:
    data = offline_settings(tmp_path, str(engine.model), loop=loop).model_dump()
    data["providers"] = settings.providers.model_dump()
    data["criticore"]["vlms"] = ["together:critic"]
    return Settings.model_validate(data)


def critic_requests(server) -> list[str]:
    return [
        r.body["messages"][1]["content"][0]["text"]
        for r in server.requests_to("/v1/chat/completions")
        if r.body.get("model") == "critic"
    ]


async def run_rounds(tmp_path, engine, settings, **loop):
    session = Session(rounds_settings(tmp_path, engine, settings, **loop), diffusion=engine)
    events: list = []
    run = session.new_run(PROMPT, emit=events.append)
    manifest = await run.run_all()
    return session, run, manifest, events


def test_stop_rules_and_the_best_round():
    assert stop_reason(85, 60, stop_at=80, min_gain=None) == "the score 85 reached stop_at 80"
    assert "min_gain 0" in stop_reason(55, 60, stop_at=80, min_gain=0)
    assert stop_reason(65, 60, stop_at=80, min_gain=0) is None
    assert stop_reason(None, 60, stop_at=80, min_gain=0) is None  # nothing to judge: go on
    rounds = [{"round": 1, "score": 70}, {"round": 2, "score": 90}, {"round": 3, "score": 90}]
    assert best_round(rounds) == (2, "score")  # a tie goes to the earlier round
    assert best_round([{"round": 1, "score": None}, {"round": 2}]) == (2, "last round")
    assert round_seed(5000, 1) == 5000 and round_seed(5000, 3) == 7000


async def test_rounds_stop_when_the_score_reaches_stop_at_and_keep_every_round(tmp_path, engine, server, settings):
    # base 40, round 1 60, round 2 85 (>= 80: stop, though 3 rounds were allowed)
    critic_says(server, 40, 60, 85)
    session, run, manifest, events = await run_rounds(tmp_path, engine, settings, rounds=3, stop_at=80)
    record = manifest["stages"]["rounds"]
    assert record["status"] == "done" and manifest["status"] == "done"
    assert [(r["round"], r["score"]) for r in record["rounds"]] == [(1, 60.0), (2, 85.0)]
    assert record["base_score"] == 40.0 and record["stopped"] == "the score 85 reached stop_at 80"
    assert (record["final"], record["final_image"], record["final_by"]) == (2, "refined_r2.png", "score")
    assert record["rounds"][0]["image"] == "refined.png"  # round 1 is the paper's refinement
    for entry in record["rounds"]:
        assert (run.folder / entry["image"]).is_file() and (run.folder / entry["latent"]).is_file()
    assert not (run.folder / "refined_r3.png").exists()
    # Round 2 refined with round 1's critique, from its own seed.
    assert record["rounds"][1]["prompt"] == manifest["stages"]["rounds"]["rounds"][0]["next_prompt"]
    assert "fix 1" in record["rounds"][1]["prompt"]
    assert record["rounds"][1]["seed"] == manifest["stages"]["refine"]["seed"] + 1000
    # Three critiques in all: the base, round 1 (with the base's issues), round 2 (with both).
    asked = critic_requests(server)
    assert len(asked) == 3 and "<alignment>" in asked[0]
    assert "round 1 of" in asked[1] and "[base] problem 0" in asked[1]
    assert "round 2 of" in asked[2] and "[round 1] problem 1" in asked[2]
    scored = [e for e in events if type(e).__name__ == "RoundScored"]
    assert [(e.round, e.score) for e in scored[:2]] == [(1, 60.0), (2, 85.0)] and scored[-1].final == 2
    # The typed manifest reads it.
    from critifusion_tui.engine.manifest import read_manifest

    typed = read_manifest(run.folder)
    assert typed.stages.rounds is not None and typed.stages.rounds.final == 2
    # eval and the history take the final round as the run's "final" image.
    from critifusion_tui.engine.store import RunStore
    from critifusion_tui.eval.runs import variant_images

    images = variant_images(RunStore.open(run.folder))
    assert images["final"] == (run.folder / "refined_r2.png").resolve()
    assert images["refined"] == (run.folder / "refined.png").resolve()
    await session.aclose()


async def test_rounds_stop_at_n_and_the_final_is_the_best_not_the_last(tmp_path, engine, server, settings):
    critic_says(server, 40, 70, 65, 50)  # round 1 is the best
    session, run, manifest, _ = await run_rounds(tmp_path, engine, settings, rounds=3, stop_at=95)
    record = manifest["stages"]["rounds"]
    assert [(r["round"], r["score"]) for r in record["rounds"]] == [(1, 70.0), (2, 65.0), (3, 50.0)]
    assert record["stopped"] == "all 3 rounds done"
    assert (record["final"], record["final_image"]) == (1, "refined.png")
    assert len(critic_requests(server)) == 4  # base, and rounds 1-3 (the last only scores)
    await session.aclose()


async def test_rounds_stop_when_a_round_gains_less_than_min_gain(tmp_path, engine, server, settings):
    critic_says(server, 40, 60, 62)  # round 2 gains 2 < 5
    session, run, manifest, _ = await run_rounds(tmp_path, engine, settings, rounds=5, min_gain=5)
    record = manifest["stages"]["rounds"]
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert record["stopped"] == "the round gained +2, less than min_gain 5"
    assert record["final"] == 2
    await session.aclose()


async def test_one_more_round_after_they_ended_and_a_picked_final(tmp_path, engine, server, settings):
    critic_says(server, 40, 85, 70)  # round 1 reaches stop_at; the extra round scores 70
    session, run, manifest, _ = await run_rounds(tmp_path, engine, settings, rounds=3, stop_at=80)
    assert [r["round"] for r in manifest["stages"]["rounds"]["rounds"]] == [1]
    assert await run.more_rounds() is Phase.DONE
    record = run.store.stage("rounds")
    assert [(r["round"], r["score"]) for r in record["rounds"]] == [(1, 85.0), (2, 70.0)]
    assert record["stopped"] == "the round you asked for is done" and record["final"] == 1
    run.pick_round(2)
    on_disk = json.loads((run.folder / "manifest.json").read_text())
    assert on_disk["stages"]["rounds"]["final"] == 2 and on_disk["stages"]["rounds"]["final_by"] == "user"
    assert on_disk["edits"][-1]["field"] == "final" and on_disk["edits"][-1]["after"] == "round 2"
    with pytest.raises(ValueError, match="no round 7"):
        run.pick_round(7)
    server.script("critic", text="<issues></issues><refined>a red fox</refined><alignment>99</alignment>")
    await run.more_rounds()  # a better round later: the person's pick still stands
    record = run.store.stage("rounds")
    assert record["rounds"][-1]["score"] == 99.0 and (record["final"], record["final_by"]) == (2, "user")
    await session.aclose()


async def test_a_cancelled_round_keeps_the_rounds_done_and_a_resume_goes_on(tmp_path, engine, server, settings):
    critic_says(server, 40, 50)
    server.script("critic", hang=True, times=1)  # the critique of round 2 never answers
    critic_says(server, 60, 90)
    settings.providers.together.timeout_s = 30.0
    session = Session(rounds_settings(tmp_path, engine, settings, rounds=3, stop_at=80), diffusion=engine)
    run = session.new_run(PROMPT)
    task = __import__("asyncio").ensure_future(run.run_all())
    import asyncio

    while len(critic_requests(server)) < 3:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kept = run.store.stages["rounds"]
    assert kept["status"] == "cancelled" and [r["round"] for r in kept["rounds"]] == [1, 2]
    assert run.phase is Phase.REFINE_GATE  # the rounds are not done
    resumed = session.resume(run.folder)
    manifest = await resumed.run_all()
    record = manifest["stages"]["rounds"]
    assert [(r["round"], r["score"]) for r in record["rounds"]] == [(1, 50.0), (2, 60.0), (3, 90.0)]
    assert record["final"] == 3
    await session.aclose()


async def test_a_rerun_of_the_rounds_starts_them_afresh(tmp_path, engine, server, settings):
    critic_says(server, 40, 85, 60, 90, 70)  # base, rounds 1 and 2; then the re-run's rounds 1 and 2
    session, run, manifest, _ = await run_rounds(tmp_path, engine, settings, rounds=2)
    assert [r["score"] for r in manifest["stages"]["rounds"]["rounds"]] == [85.0, 60.0]
    await run.rerun("rounds")
    record = run.store.stage("rounds")
    assert [(r["round"], r["score"]) for r in record["rounds"]] == [(1, 90.0), (2, 70.0)]
    assert record["final"] == 1 and record["stopped"] == "all 2 rounds done"
    await session.aclose()


async def test_a_run_without_rounds_has_no_rounds_stage(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    assert Stage.ROUNDS not in run.stages
    manifest = await run.run_all()
    assert "rounds" not in manifest["stages"]
    with pytest.raises(FlowError, match="no critique rounds"):
        await run.more_rounds()


async def test_a_metric_scores_the_rounds_and_the_last_round_costs_no_critique(
    tmp_path, engine, server, settings, monkeypatch
):
    import torch

    from critifusion_tui.engine import specfusion
    from critifusion_tui.eval import scorers
    from tests.eval import tiny

    root = tmp_path / "weights"
    data = rounds_settings(tmp_path, engine, settings, rounds=2, score_from="aesthetic").model_dump()
    data["eval"]["aesthetic_checkpoint"] = str(tiny.save_aesthetic(root / "aesthetic", seed=6))
    data["eval"]["aesthetic_clip"] = str(tiny.save_clip_folder(root / "openai-l14", seed=3))
    scoring = Settings.model_validate(data)
    # Wide anchors keep the tiny scorer's numbers inside the linear part of the 0-100 map.
    monkeypatch.setitem(specfusion.METRIC_ALIGNMENT_RANGES, "aesthetic", (-100.0, 100.0))
    session = Session(scoring, diffusion=engine)
    run = session.new_run(PROMPT)
    manifest = await run.run_all()
    record = manifest["stages"]["rounds"]
    scorer = scorers.load(scorers.prepare("aesthetic", scoring.eval), device="cpu", dtype=torch.float32)
    expected = [
        specfusion.alignment_from_metric("aesthetic", scorer.score([run.folder / r["image"]], [PROMPT])[0])
        for r in record["rounds"]
    ]
    assert [r["score"] for r in record["rounds"]] == pytest.approx(expected, abs=0.01)
    base_raw = scorer.score([run.folder / "base.png"], [PROMPT])[0]
    assert record["base_score"] == pytest.approx(specfusion.alignment_from_metric("aesthetic", base_raw), abs=0.01)
    assert record["final"] == max((1, 2), key=lambda k: (expected[k - 1], -k))
    # The critic is asked about the base and round 1 (for round 2's prompt), never for a rating.
    asked = critic_requests(server)
    assert len(asked) == 2 and not any("<alignment>" in text for text in asked)
    await session.aclose()


async def test_a_replay_of_a_rounds_run_gives_the_same_rounds_and_images(tmp_path, engine, server, settings):
    from critifusion_tui.engine.manifest import read_manifest
    from critifusion_tui.engine.replay import Replay

    critic_says(server, 40, 62, 84)
    session, run, manifest, _ = await run_rounds(tmp_path, engine, settings, rounds=3, stop_at=80)
    record = manifest["stages"]["rounds"]
    assert [c["model"] for c in record["rounds"][0]["critique"]["candidates"]] == ["together:critic"]
    asked = len(server.requests_to("/v1/chat/completions"))
    again = session.new_run(PROMPT, out=tmp_path / "again")
    again.use_replay(Replay(read_manifest(run.folder), str(run.folder)))
    replayed = (await again.run_all())["stages"]["rounds"]
    assert len(server.requests_to("/v1/chat/completions")) == asked  # nobody was asked
    assert [(r["round"], r["score"]) for r in replayed["rounds"]] == [(1, 62.0), (2, 84.0)]
    for entry in replayed["rounds"]:
        assert (again.folder / entry["image"]).read_bytes() == (run.folder / entry["image"]).read_bytes()
    await session.aclose()
