"""Best-of-N bases (docs/method.md 10.2) in the engine, on the tiny SDXL on CPU: N seeds drawn
by the documented rule, each rated (the critics through the loopback server, or a metric),
the best refined, all recorded; a person's pick afterwards; the manifest reading it back."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import torch

from critifusion_tui.config import Settings
from critifusion_tui.engine import specfusion
from critifusion_tui.engine.base_candidates import best, candidate_seed
from critifusion_tui.engine.events import BaseCandidates, DiffusionStep, ImageReady, Notice
from critifusion_tui.engine.flow import FlowError, Phase
from critifusion_tui.engine.manifest import read_manifest
from critifusion_tui.engine.pipeline import Session
from critifusion_tui.engine.store import StoreError
from tests.engine.test_pipeline import offline_settings

PROMPT = "a red fox in a forest"


def settings_with(tmp_path: Path, engine, candidates: int = 3, **diffusion) -> Settings:
    return offline_settings(tmp_path, str(engine.model), diffusion={"base_candidates": candidates, **diffusion})


def critic_settings(tmp_path: Path, engine, providers, candidates: int = 3) -> Settings:
    """The tiny model, rules for the text stages, and one hosted critic on the loopback server."""
    data = settings_with(tmp_path, engine, candidates).model_dump()
    data["providers"] = providers.model_dump()
    data["criticore"]["vlms"] = ["together:critic"]
    return Settings.model_validate(data)


async def finished_run(settings: Settings, engine, prompt: str = PROMPT):
    session = Session(settings, diffusion=engine)
    events: list = []
    run = session.new_run(prompt, emit=events.append)
    await run.run_all()
    return session, run, events


def latent(run, name: str) -> torch.Tensor:
    return run.store.read_latent(name)


def test_the_pick_is_the_best_score_the_lower_index_on_a_tie_and_none_without_scores():
    assert best([60.0, 90.0, 75.0]) == 1
    assert best([None, 40.0, None]) == 1
    assert best([80.0, 95.5, 95.5]) == 1
    assert best([0.0, None]) == 0
    assert best([None, None]) is None
    assert [candidate_seed(2026, i) for i in range(3)] == [2026, 12026, 22026]


async def test_no_rating_refines_candidate_one_says_so_and_records_all(tmp_path, engine):
    # The offline rules critic gives no <alignment> rating: nothing is rated.
    session, run, events = await finished_run(settings_with(tmp_path, engine), engine)
    record = run.store.stage("base")
    assert [(c["index"], c["seed"], c["image"], c["latent"], c["score"]) for c in record["candidates"]] == [
        (1, 2026, "base_c1.png", "base_c1_latent.safetensors", None),
        (2, 12026, "base_c2.png", "base_c2_latent.safetensors", None),
        (3, 22026, "base_c3.png", "base_c3_latent.safetensors", None),
    ]
    assert (record["picked"], record["picked_by"], record["seed"]) == (1, "none", 2026)
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level == "warning" and e.stage == "base"]
    assert "no base candidate got a rating from critic: refining candidate 1 (seed 2026)" in warnings
    # Three passes, each with its own progress from step 1.
    steps = [(e.step, e.total) for e in events if isinstance(e, DiffusionStep) and e.stage == "base"]
    assert steps == [(i, 4) for i in range(1, 5)] * 3
    # The three images differ; the base is candidate 1's file and latent, byte for byte.
    images = [(run.folder / f"base_c{i}.png").read_bytes() for i in (1, 2, 3)]
    assert len(set(images)) == 3
    assert (run.folder / "base.png").read_bytes() == images[0]
    assert torch.equal(latent(run, "base_latent.safetensors"), latent(run, "base_c1_latent.safetensors"))
    assert run.store.manifest["status"] == "done" and run.store.stage("refine") is not None
    await session.aclose()


async def test_candidate_one_is_the_papers_base(tmp_path, engine):
    one, run_one, _ = await finished_run(settings_with(tmp_path / "one", engine, candidates=1), engine)
    three, run_three, _ = await finished_run(settings_with(tmp_path / "three", engine), engine)
    assert "candidates" not in run_one.store.stage("base")
    assert not (run_one.folder / "base_c1.png").exists()
    assert torch.equal(latent(run_one, "base_latent.safetensors"), latent(run_three, "base_c1_latent.safetensors"))
    assert (run_one.folder / "base.png").read_bytes() == (run_three.folder / "base_c1.png").read_bytes()
    # The other candidates are other draws.
    assert not torch.equal(latent(run_one, "base_latent.safetensors"), latent(run_three, "base_c2_latent.safetensors"))
    await one.aclose()
    await three.aclose()


async def candidate_pngs(tmp_path: Path, engine) -> dict[int, bytes]:
    """The three candidates' images, drawn first, so a scripted critic can tell which rating
    goes with which image (the same seed and prompt draw the same bytes: test_pipeline)."""
    session, run, _ = await finished_run(settings_with(tmp_path / "learn", engine), engine)
    await session.aclose()
    return {number: (run.folder / f"base_c{number}.png").read_bytes() for number in (1, 2, 3)}


def rate(server, png: bytes, **script) -> None:
    """The critic's answer to the request that shows it `png` (whenever it arrives)."""
    server.script("critic", when=base64.b64encode(png).decode(), times=1, **script)


async def test_the_critics_best_rated_candidate_is_refined_and_every_rating_is_recorded(
    tmp_path, engine, server, together_config, ollama_config, settings
):
    pngs = await candidate_pngs(tmp_path, engine)
    for number, rating in {1: 60, 2: 90, 3: 75}.items():
        rate(server, pngs[number], text=f"<issues>- x</issues><refined>a fox</refined><alignment>{rating}</alignment>")
    server.script("critic", text="<issues>- the fox is small</issues><refined>a large red fox</refined>")

    session, run, events = await finished_run(critic_settings(tmp_path / "rated", engine, settings.providers), engine)
    record = run.store.stage("base")
    assert [(c["index"], c["seed"], c["score"]) for c in record["candidates"]] == [
        (1, 2026, 60.0),
        (2, 12026, 90.0),
        (3, 22026, 75.0),
    ]
    assert (record["picked"], record["picked_by"], record["seed"]) == (2, "critic", 12026)
    assert (run.folder / "base.png").read_bytes() == (run.folder / "base_c2.png").read_bytes()
    assert torch.equal(latent(run, "base_latent.safetensors"), latent(run, "base_c2_latent.safetensors"))
    # The critics were asked for a rating of each candidate, then criticised the pick once.
    asked = [r.body for r in server.requests_to("/v1/chat/completions")]
    assert len(asked) == 4
    assert all("<alignment>" in json.dumps(body) for body in asked[:3])
    critique = run.store.stage("critique")
    assert critique["issues"] == ["the fox is small"]
    assert (run.folder / "base_c2.png").read_bytes() == pngs[2]
    # One event says it all, for the front ends.
    (said,) = [e for e in events if isinstance(e, BaseCandidates)]
    assert [(c.index, c.seed, c.score, c.path) for c in said.candidates] == [
        (1, 2026, 60.0, run.folder / "base_c1.png"),
        (2, 12026, 90.0, run.folder / "base_c2.png"),
        (3, 22026, 75.0, run.folder / "base_c3.png"),
    ]
    assert (said.picked, said.picked_by) == (2, "critic")
    # The manifest reads back typed, candidates included.
    typed = read_manifest(run.folder).stages.base
    assert typed is not None and [c.score for c in typed.candidates] == [60.0, 90.0, 75.0] and typed.picked == 2
    await session.aclose()


async def test_a_candidate_the_critic_did_not_rate_has_no_score_and_is_not_picked(tmp_path, engine, server, settings):
    pngs = await candidate_pngs(tmp_path, engine)
    rate(server, pngs[1], status=500)
    rate(server, pngs[2], text="<issues>- x</issues><refined>a fox</refined>")  # no <alignment>
    rate(server, pngs[3], text="<issues>- x</issues><refined>a fox</refined><alignment>20</alignment>")
    session, run, events = await finished_run(critic_settings(tmp_path / "rated", engine, settings.providers), engine)
    record = run.store.stage("base")
    assert [c["score"] for c in record["candidates"]] == [None, None, 20.0]
    assert (record["picked"], record["picked_by"]) == (3, "critic")
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level == "warning" and e.stage == "base"]
    assert "base candidate 1: no critic gave a rating" in warnings
    assert "base candidate 2: no critic gave a rating" in warnings
    assert not any("no base candidate got a rating" in w for w in warnings)
    await session.aclose()


async def test_a_metric_rates_the_candidates(tmp_path, engine, monkeypatch):
    from tests.eval import tiny

    root = tmp_path / "weights"
    aesthetic = {
        "aesthetic_checkpoint": str(tiny.save_aesthetic(root / "aesthetic", seed=6)),
        "aesthetic_clip": str(tiny.save_clip_folder(root / "openai-l14", seed=3)),
    }
    data = settings_with(tmp_path, engine, base_pick_from="aesthetic").model_dump()
    data["eval"].update(aesthetic)
    settings = Settings.model_validate(data)
    # The tiny scorer's raw scores, each image scored on its own: anchors around them keep the
    # 0-100 mapping linear (the published anchors would clamp a random model's numbers).
    _, learn, _ = await finished_run(settings_with(tmp_path / "learn", engine), engine)
    from critifusion_tui.eval import scorers

    scorer = scorers.load(scorers.prepare("aesthetic", settings.eval), device="cpu", dtype=torch.float32)
    raw = [scorer.score([learn.folder / f"base_c{i}.png"], [PROMPT])[0] for i in (1, 2, 3)]
    low, high = min(raw) - 1.0, max(raw) + 1.0
    monkeypatch.setitem(specfusion.METRIC_ALIGNMENT_RANGES, "aesthetic", (low, high))

    session, run, _ = await finished_run(settings, engine)
    record = run.store.stage("base")
    expected = [specfusion.alignment_from_metric("aesthetic", value) for value in raw]
    assert [c["score"] for c in record["candidates"]] == pytest.approx(expected, abs=0.01)
    assert [c["value"] for c in record["candidates"]] == pytest.approx(raw, abs=1e-4)
    assert record["picked"] == max((1, 2, 3), key=lambda i: (raw[i - 1], -i))
    assert record["picked_by"] == "aesthetic"
    await session.aclose()


async def test_a_metric_that_cannot_run_rates_nothing_and_says_why(tmp_path, engine):
    missing = tmp_path / "nowhere" / "sac+logos+ava1-l14-linearMSE.pth"
    data = settings_with(tmp_path, engine, base_pick_from="aesthetic").model_dump()
    data["eval"]["aesthetic_checkpoint"] = str(missing)
    session, run, events = await finished_run(Settings.model_validate(data), engine)
    record = run.store.stage("base")
    assert [c["score"] for c in record["candidates"]] == [None, None, None]
    assert (record["picked"], record["picked_by"]) == (1, "none")
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level == "warning"]
    assert any(str(missing) in m and 'diffusion.base_pick_from = "critic"' in m for m in warnings), warnings
    await session.aclose()


async def test_a_person_picks_another_candidate_and_the_critique_runs_again(tmp_path, engine):
    session, run, events = await finished_run(settings_with(tmp_path, engine), engine)
    refined_before = (run.folder / "refined.png").read_bytes()
    assert run.pick_base(1) is False  # already the base: nothing to redo
    assert run.store.stage("critique") is not None

    del events[:]
    assert run.pick_base(3) is True
    # The front ends hear that the base image changed, and which candidate it is now.
    ready, said = events
    assert isinstance(ready, ImageReady) and ready.path == run.folder / "base.png"
    assert isinstance(said, BaseCandidates) and (said.picked, said.picked_by) == (3, "user")
    record = run.store.stage("base")
    assert (record["picked"], record["picked_by"], record["seed"]) == (3, "user", 22026)
    assert (run.folder / "base.png").read_bytes() == (run.folder / "base_c3.png").read_bytes()
    assert torch.equal(latent(run, "base_latent.safetensors"), latent(run, "base_c3_latent.safetensors"))
    assert run.latent("base").equal(latent(run, "base_c3_latent.safetensors"))
    # Everything after the base is forgotten: the flow stands before the critique again.
    assert run.store.stage("critique") is None and run.store.stage("refine") is None
    assert run.phase is Phase.TAGS_GATE and run.store.manifest["status"] == "paused"
    edit = run.store.manifest["edits"][-1]
    assert (edit["stage"], edit["field"], edit["by"], edit["before"], edit["after"]) == (
        "base",
        "base",
        "user",
        "candidate 1",
        "candidate 3",
    )
    assert await run.advance() is Phase.REFINE_GATE  # the critique, of candidate 3
    assert run.store.stage("critique") is not None and run.store.stage("base")["picked"] == 3
    await run.run_all()
    assert run.store.manifest["status"] == "done"
    assert (run.folder / "refined.png").read_bytes() != refined_before
    # A reopened run keeps the person's pick.
    reopened = session.resume(run.folder)
    assert reopened.store.stage("base")["picked_by"] == "user"
    await session.aclose()


async def test_a_bad_pick_is_refused_and_changes_nothing(tmp_path, engine):
    session, run, _ = await finished_run(settings_with(tmp_path, engine), engine)
    before = json.loads((run.folder / "manifest.json").read_text())
    for bad in (0, 4, -1, True, "2"):
        with pytest.raises(FlowError, match="no base candidate"):
            run.pick_base(bad)  # type: ignore[arg-type]
    assert json.loads((run.folder / "manifest.json").read_text()) == before
    single, one, _ = await finished_run(settings_with(tmp_path / "one", engine, candidates=1), engine)
    with pytest.raises(FlowError, match="no candidates"):
        one.pick_base(1)
    await session.aclose()
    await single.aclose()


async def test_cancel_while_drawing_candidates_stops_cleanly(tmp_path, engine):
    session = Session(settings_with(tmp_path, engine), diffusion=engine)
    events: list = []
    run = session.new_run(PROMPT, emit=events.append)
    task = asyncio.ensure_future(run.run_all())
    # Cancel in the second candidate's pass.
    while not any(isinstance(e, Notice) and "candidate 2/3" in e.message for e in events):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
    assert manifest["stages"]["base"]["status"] == "cancelled" and "candidates" not in manifest["stages"]["base"]
    assert not (run.folder / "base.png").exists() and not (run.folder / "base_c3.png").exists()
    # A resume draws them all again, to the same bytes a run without the cancel draws.
    resumed = session.resume(run.folder)
    await resumed.run_all()
    _, whole, _ = await finished_run(settings_with(tmp_path / "whole", engine), engine)
    for name in ("base_c1.png", "base_c2.png", "base_c3.png", "base.png"):
        assert (run.folder / name).read_bytes() == (whole.folder / name).read_bytes()
    await session.aclose()


async def test_the_comparison_base_and_a_given_base_draw_one(tmp_path, engine):
    from critifusion_tui.engine.given_base import start_refine_run
    from critifusion_tui.engine.image_input import read_image
    from tests.engine.test_given_base import write_image

    session = Session(settings_with(tmp_path, engine), diffusion=engine)
    run = session.new_run(PROMPT, variants="all")
    await run.run_all()
    assert len(run.store.stage("base")["candidates"]) == 3
    assert "candidates" not in run.store.stage("base_original")
    assert not list(run.folder.glob("base_original_c*"))

    given = start_refine_run(session, PROMPT, image=read_image(write_image(tmp_path / "fox.png")))
    await given.run_all()
    assert "candidates" not in given.store.stage("base") and not list(given.folder.glob("base_c*"))
    await session.aclose()


def test_manifest_candidates_are_checked_like_every_file(tmp_path):
    from critifusion_tui.engine.manifest import SCHEMA

    def folder_with(base: dict) -> Path:
        folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        record = {
            "status": "done",
            "prompt": "p",
            "negative": "n",
            "image": "base.png",
            "latent": "base_latent.safetensors",
            **base,
        }
        manifest = {"schema": SCHEMA, "prompt": "a fox", "seed": 1, "stages": {"base": record}}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    def candidate(index: int, **extra) -> dict:
        return {"index": index, "seed": index, "image": f"base_c{index}.png", "latent": f"c{index}.st", **extra}

    # An older manifest without candidates reads as before; one with them reads typed.
    assert read_manifest(folder_with({})).stages.base.candidates == []  # type: ignore[union-attr]
    typed = read_manifest(folder_with({"candidates": [candidate(1, score=80), candidate(2)], "picked": 1}))
    assert typed.stages.base is not None and typed.stages.base.candidates[0].score == 80.0
    assert typed.stages.base.to_data()["candidates"][1] == candidate(2)
    with pytest.raises(StoreError, match=r"stages\.base\.picked: expected a candidate's index from 1 to 2"):
        read_manifest(folder_with({"candidates": [candidate(1), candidate(2)], "picked": 3}))
    with pytest.raises(StoreError, match=r"stages\.base\.candidates\[0\]\.image: .*leaves the run folder"):
        read_manifest(folder_with({"candidates": [candidate(1, image="../x.png")], "picked": 1}))
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    linked = folder_with({"candidates": [candidate(1)], "picked": 1})
    (linked / "base_c1.png").symlink_to(outside)
    with pytest.raises(StoreError, match=r"candidates\[0\]\.image: .*link that leaves the run folder"):
        read_manifest(linked)


async def test_ratings_ask_no_aggregator_and_a_replay_picks_the_same_base(tmp_path, engine, server, settings):
    from critifusion_tui.engine.replay import Replay

    for rating in (60, 90, 75):
        server.script(
            "critic", text=f"<issues>- x</issues><refined>a fox</refined><alignment>{rating}</alignment>", times=1
        )
    server.script("critic", text="<issues>- z</issues><refined>a fox in snow</refined><alignment>70</alignment>")
    server.script("critic2", text="<issues>- y</issues><refined>a red fox</refined><alignment>50</alignment>")
    server.script("agg", text="<issues>- merged</issues><refined>a red fox, merged</refined>")
    data = critic_settings(tmp_path, engine, settings.providers).model_dump()
    data["criticore"]["vlms"] = ["together:critic", "together:critic2"]
    data["criticore"]["aggregator"] = ["together:agg"]
    session, run, _ = await finished_run(Settings.model_validate(data), engine)
    aggregated = [r for r in server.requests_to("/v1/chat/completions") if r.body.get("model") == "agg"]
    assert len(aggregated) == 1  # the critique stage's merge only: the three ratings merged nothing
    record = run.store.stage("base")
    assert [len(c["critique"]["candidates"]) for c in record["candidates"]] == [2, 2, 2]
    asked = len(server.requests_to("/v1/chat/completions"))
    again = session.new_run(PROMPT, out=tmp_path / "again")
    again.use_replay(Replay(read_manifest(run.folder), str(run.folder)))
    await again.run_all()
    assert len(server.requests_to("/v1/chat/completions")) == asked  # nobody was asked
    replayed = again.store.stage("base")
    assert [c["score"] for c in replayed["candidates"]] == [c["score"] for c in record["candidates"]]
    assert replayed["picked"] == record["picked"]
    assert (again.folder / "base.png").read_bytes() == (run.folder / "base.png").read_bytes()
    await session.aclose()
