"""Adaptive mode (CADR) with its alignment score from an eval metric, end to end in the engine:
the tiny SDXL draws the base, a tiny scorer in the published format scores it against the
user's prompt, and the refinement runs with the parameters CADR gives for the mapped score."""

from __future__ import annotations

import json

import pytest
import torch

from critifusion_tui.config import Settings
from critifusion_tui.engine import specfusion
from critifusion_tui.engine.events import Notice, StageFailed
from critifusion_tui.engine.pipeline import RunFailed, Session
from tests.engine.conftest import engine, tiny_sdxl_dir  # noqa: F401  (fixtures)

PROMPT = "a red fox in a forest"
# A distinct mapped score per metric, so each test checks a different point of CADR's line.
TARGET = {"pickscore": 20.0, "hpsv2": 45.0, "imagereward": 70.0, "aesthetic": 90.0}


def adaptive_settings(tmp_path, model, weights, source, **eval_keys) -> Settings:
    paths = {key: str(path) for key, path in weights.items()}
    paths.update(eval_keys)
    return Settings.model_validate(
        {
            "criticore": {"candidates": ["rules"], "aggregator": "rules", "vlms": ["rules"]},
            "diffusion": {"model": model, "device": "cpu", "dtype": "float32", "width": 64, "height": 64, "steps": 4},
            "specfusion": {"mode": "adaptive", "alignment_from": source, "total_steps": 4, "last_k": 3},
            "output": {"dir": str(tmp_path / "runs")},
            "eval": paths,
        }
    )


def score_independently(settings, metric, image, prompt) -> float:
    """The metric's score of one image, from a scorer loaded here (not the session's)."""
    from critifusion_tui.eval import scorers

    prepared = scorers.prepare(metric, settings.eval)
    return scorers.load(prepared, device="cpu", dtype=torch.float32).score([image], [prompt])[0]


@pytest.mark.parametrize("metric", list(TARGET))
async def test_refinement_follows_the_metrics_mapped_score(tmp_path, engine, weights, metric, monkeypatch):  # noqa: F811
    settings = adaptive_settings(tmp_path, str(engine.model), weights, metric)
    # Draw the base first, to learn the tiny model's raw score; then place the anchors so
    # that score maps to TARGET (the published anchors clamp a random model's numbers).
    session = Session(settings, diffusion=engine)
    events = []
    run = session.new_run(PROMPT, emit=events.append)
    await run.advance()  # the text step
    await run.base_stage()
    await run.critique_stage()
    raw = score_independently(settings, metric, run.store.path("base.png"), PROMPT)
    poor = raw - TARGET[metric] / 100 * 2.0
    monkeypatch.setitem(specfusion.METRIC_ALIGNMENT_RANGES, metric, (poor, poor + 2.0))

    calls = []
    real_img2img, real_fusion = engine.img2img_latent, specfusion.frequency_fusion
    monkeypatch.setattr(engine, "img2img_latent", lambda **kw: calls.append(("img2img", kw)) or real_img2img(**kw))
    monkeypatch.setattr(
        specfusion, "frequency_fusion", lambda *a, **kw: calls.append(("fusion", kw)) or real_fusion(*a, **kw)
    )
    await run.refine_stage()

    expected = specfusion.cadr_from_alignment(TARGET[metric])
    record = json.loads((run.folder / "manifest.json").read_text())["stages"]["refine"]
    assert record["mode"] == "adaptive"
    assert (record["strength"], record["guidance"], record["steps"]) == pytest.approx(
        (expected.strength, expected.guidance, expected.steps), abs=1e-3
    )
    assert record["rho_t"] == pytest.approx(expected.rho_t, abs=1e-3)
    # What the manifest says is what the diffusion and the fusion were given.
    (_, img2img), (_, fusion) = calls
    assert (img2img["strength"], img2img["guidance"], img2img["steps"]) == (
        record["strength"],
        record["guidance"],
        record["steps"],
    )
    assert img2img["prompt"] == run.text("refinement")
    assert fusion["rho_t"] == record["rho_t"]
    # The source, the raw value (of the base against the user's own prompt) and the mapping.
    source = record["alignment_from"]
    assert source["source"] == metric
    assert source["value"] == pytest.approx(raw, abs=1e-4)
    assert source["alignment"] == pytest.approx(TARGET[metric], abs=0.01) == record["alignment"]
    assert source["anchors"] == pytest.approx([poor, poor + 2.0])
    assert str(weights[f"{metric}_checkpoint" if metric != "pickscore" else "pickscore_model"]) in source["weights"]
    # The critic was not asked for a rating it would not be used for.
    assert "alignment" not in run.store.stage("critique")
    notices = [e.message for e in events if isinstance(e, Notice) and e.stage == "refine"]
    assert any(f"from {metric} " in m and f"{expected.steps} steps" in m for m in notices), notices
    await session.aclose()


async def test_the_scorer_is_loaded_once_per_session(tmp_path, engine, weights, monkeypatch):  # noqa: F811
    from critifusion_tui.eval import scorers

    loads = []
    real_load = scorers.load
    monkeypatch.setattr(scorers, "load", lambda *a, **kw: loads.append(a[0].metric) or real_load(*a, **kw))
    session = Session(adaptive_settings(tmp_path, str(engine.model), weights, "aesthetic"), diffusion=engine)
    assert loads == [] and not session.scorers.loaded("aesthetic")  # nothing loads up front
    for prompt in ("a red fox", "a blue owl"):
        run = session.new_run(prompt)
        await run.run_all()
        assert run.store.stage("refine")["alignment_from"]["source"] == "aesthetic"
    assert loads == ["aesthetic"]
    await session.aclose()


async def test_missing_weights_fail_the_refine_stage_with_the_fix(tmp_path, engine, weights):  # noqa: F811
    missing = tmp_path / "nowhere" / "ImageReward.pt"
    settings = adaptive_settings(
        tmp_path, str(engine.model), weights, "imagereward", imagereward_checkpoint=str(missing)
    )
    session = Session(settings, diffusion=engine)
    events = []
    run = session.new_run(PROMPT, emit=events.append)
    with pytest.raises(RunFailed) as failed:
        await run.run_all()
    message = failed.value.message
    assert failed.value.stage == "refine"
    assert "imagereward" in message and str(missing) in message
    assert 'specfusion.alignment_from = "critic"' in message
    assert [e.error for e in events if isinstance(e, StageFailed)] == [message]
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["stages"]["base"]["image"] == "base.png"
    assert manifest["stages"]["refine"]["status"] == "failed"


async def test_hub_weights_missing_name_the_download_command(tmp_path, engine, weights):  # noqa: F811
    settings = adaptive_settings(
        tmp_path, str(engine.model), weights, "pickscore", pickscore_model="yuvalkirstain/PickScore_v1"
    )
    session = Session(settings, diffusion=engine)
    session.scorers.cache_dir = str(tmp_path / "empty-hf-cache")  # not this machine's cache
    run = session.new_run(PROMPT)
    with pytest.raises(RunFailed) as failed:
        await run.run_all()
    assert "hf download yuvalkirstain/PickScore_v1" in failed.value.message
