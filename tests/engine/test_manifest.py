"""The typed manifest (engine/manifest.py): a real run read back and written again unchanged,
unknown keys kept, the version check, validation errors as one line, the writer's check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critifusion_tui.engine import manifest as manifest_module
from critifusion_tui.engine.manifest import (
    SCHEMA,
    BaseStage,
    ComponentsStage,
    CritiqueStage,
    RefineStage,
    StageRecord,
    TagsStage,
    read_manifest,
    upgrade,
)
from critifusion_tui.engine.pipeline import Session
from critifusion_tui.engine.store import MANIFEST, RunStore, StoreError
from tests.engine.test_pipeline import offline_settings, run_once


def minimal(**fields) -> dict:
    data = {"schema": SCHEMA, "prompt": "a fox", "seed": 1, "stages": {}}
    data.update(fields)
    return data


def write(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("variants", ["full", "all"])
async def test_a_real_run_reads_back_typed_and_is_written_again_unchanged(tmp_path, engine, variants):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run, _, _ = await run_once(session, variants=variants)
    path = run.folder / MANIFEST
    on_disk = path.read_text()

    record = read_manifest(run.folder)
    assert record.to_data() == json.loads(on_disk)  # every key, as written
    assert record == run.store.record  # the writer's check and the reader agree
    kinds = {
        "tags": TagsStage,
        "components": ComponentsStage,
        "base": BaseStage,
        "critique": CritiqueStage,
        "refine": RefineStage,
    }
    if variants == "all":
        kinds.update(base_original=BaseStage, critique_original=CritiqueStage, refine_original=RefineStage)
    assert {name: type(r) for name, r in record.stages.records().items()} == kinds
    assert record.status == "done" and record.variants == variants and record.prompt == run.prompt
    base = record.stage("base")
    assert isinstance(base, BaseStage) and base.image == "base.png" and base.width == base.height == 64
    assert record.prompt_value("positive") == run.text("positive")
    assert [f for f, _, _ in record.files()][:3] == ["stages.base.image", "stages.base.latent", "stages.refine.image"]

    reopened = RunStore.open(run.folder)
    reopened.write_manifest()
    assert path.read_text() == on_disk  # read and written again: the same bytes


def test_unknown_keys_are_kept_through_a_read_and_a_write(tmp_path):
    folder = write(
        tmp_path / "run",
        minimal(
            later_key={"nested": [1, 2]},
            stages={
                "tags": {"status": "done", "positive": "a fox", "later_field": 3},
                "upscale": {"status": "done", "image": "up.png", "factor": 2},
            },
        ),
    )
    store = RunStore.open(folder)
    assert store.record.model_extra == {"later_key": {"nested": [1, 2]}}
    assert isinstance(store.record.stages.records()["upscale"], StageRecord)
    store.finish("done")
    again = json.loads((folder / MANIFEST).read_text())
    assert again["later_key"] == {"nested": [1, 2]} and again["stages"]["tags"]["later_field"] == 3
    assert again["stages"]["upscale"] == {"status": "done", "image": "up.png", "factor": 2}
    # A stage this version does not know still has its files confined to the folder.
    write(folder, {**again, "stages": {"upscale": {"status": "done", "image": "../../etc/passwd"}}})
    with pytest.raises(StoreError, match=r"stages\.upscale\.image: '\.\./\.\./etc/passwd' leaves the run folder"):
        read_manifest(folder)


def test_a_newer_schema_says_to_upgrade(tmp_path):
    folder = write(tmp_path / "run", minimal(schema="critifusion.run/2"))
    with pytest.raises(StoreError) as caught:
        read_manifest(folder)
    assert str(caught.value) == (
        f"{folder / MANIFEST}: made by a newer critifusion-tui (schema critifusion.run/2); "
        "this version reads critifusion.run/1 — upgrade critifusion-tui to open it"
    )


@pytest.mark.parametrize("schema", ["other/9", None, 1, "critifusion.run/x", "critifusion.run/01"])
def test_an_unknown_schema_says_so(tmp_path, schema):
    folder = write(tmp_path / "run", minimal(schema=schema))
    with pytest.raises(
        StoreError, match=r"schema .* is not 'critifusion\.run/1' \(not a critifusion-tui run manifest\)"
    ):
        read_manifest(folder)


def test_an_older_version_goes_through_the_upgrades_in_turn(monkeypatch):
    # As it will be once /2 exists: VERSION 2, and a step from /1 data to /2 data.
    monkeypatch.setattr(manifest_module, "VERSION", 2)
    monkeypatch.setattr(manifest_module, "SCHEMA", "critifusion.run/2")
    monkeypatch.setitem(
        manifest_module._UPGRADES, 1, lambda data: {**data, "schema": "critifusion.run/2", "moved": data["old"]}
    )
    assert upgrade({"schema": "critifusion.run/1", "old": 5}, "m") == {
        "schema": "critifusion.run/2",
        "old": 5,
        "moved": 5,
    }
    monkeypatch.delitem(manifest_module._UPGRADES, 1)
    with pytest.raises(StoreError, match="schema critifusion.run/1 is older than any this version reads"):
        upgrade({"schema": "critifusion.run/1"}, "m")


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            dict(stages={"base": {"status": "done", "width": "x"}}),
            "stages.base.width: expected a whole number, got 'x'",
        ),
        (dict(seed=True), "seed: expected a whole number, got True"),
        (
            dict(status="pwned\x1b[31m"),
            "status: expected 'running', 'done', 'failed', 'cancelled', 'paused' or 'abandoned', got 'pwned\\x1b[31m'",
        ),
        (
            dict(ledger={"calls": [{"tokens_in": 3}, {"tokens_in": "many"}]}),
            "ledger.calls[1].tokens_in: expected a whole number, got 'many'",
        ),
        (
            dict(stages={"tags": {"status": "done", "candidates": [{"text": "x"}]}}),
            "stages.tags.candidates[0].model: missing",
        ),
        (dict(edits=[{"stage": "tags"}]), "edits[0].field: missing"),
        (
            dict(eval={"models": {"pickscore": "w"}, "base": {"pickscore": "high"}}),
            "eval.base.pickscore: expected a number, got 'high'",
        ),
        (
            dict(stages={"refine": {"status": "done", "alignment_from": {"source": "critic"}}}),
            "stages.refine.alignment_from.alignment: missing",
        ),
    ],
)
def test_a_validation_error_is_one_line_naming_the_field(tmp_path, fields, message):
    folder = write(tmp_path / "run", minimal(**fields))
    with pytest.raises(StoreError) as caught:
        read_manifest(folder)
    text = str(caught.value)
    assert text == f"{folder / MANIFEST}: {message}"
    assert "\n" not in text and "pydantic" not in text and "\x1b" not in text


def test_the_writer_refuses_a_shape_history_could_not_read(tmp_path):
    store = RunStore.create(prompt="a fox", seed=1, config={}, versions={}, folder=tmp_path / "run")
    before = (store.folder / MANIFEST).read_bytes()
    store.manifest["stages"]["base"] = {"status": "done", "width": 64.5}
    with pytest.raises(
        StoreError, match=r"refusing to write .*: stages\.base\.width: expected a whole number, got 64\.5"
    ):
        store.write_manifest()
    assert (store.folder / MANIFEST).read_bytes() == before
    with pytest.raises(StoreError, match="stages.base.image: missing from a completed stage"):
        store.save_stage("base", {"prompt": "a fox", "negative": "", "latent": "l.safetensors"})


def test_the_new_statuses_are_written_and_read(tmp_path):
    store = RunStore.create(prompt="a fox", seed=1, config={}, versions={}, folder=tmp_path / "run")
    store.stages["refine"] = {"status": "cancelled", "seconds": 1.5}
    for status in ("paused", "abandoned"):
        store.finish(status)
        record = read_manifest(store.folder)
        assert record.status == status and store.record == record
    assert record.stages.refine is not None and record.stages.refine.status == "cancelled"
    assert record.stage("refine") is None  # only a completed stage counts as done
