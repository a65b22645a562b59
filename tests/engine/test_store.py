"""Run folders: naming, atomic writes, the manifest, images with their text chunks, latents."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from critifusion_tui.engine.store import MANIFEST, SCHEMA, RunStore, StoreError, atomic_write, slugify

NOW = datetime(2026, 11, 26, 13, 5, 9, tzinfo=timezone.utc)


def new_store(tmp_path, **kwargs) -> RunStore:
    args = dict(prompt="A red fox, in a forest!", seed=7, config={"diffusion": {"steps": 4}}, versions={"x": "1"})
    args.update(kwargs)
    return RunStore.create(output_dir=tmp_path, now=NOW, **args)


@pytest.mark.parametrize(
    "text, slug",
    [
        ("A red fox, in a forest!", "a-red-fox-in-a-forest"),
        ("Café crème ☕", "cafe-creme"),
        ("   ", "run"),
        ("x" * 100, "x" * 40),
        ("../../etc/passwd", "etc-passwd"),
    ],
)
def test_slug(text, slug):
    assert slugify(text) == slug


def test_folder_is_date_time_slug_and_never_reused(tmp_path):
    first = new_store(tmp_path)
    second = new_store(tmp_path)
    assert first.folder.name == "20261126-130509-a-red-fox-in-a-forest"
    assert second.folder.name == "20261126-130509-a-red-fox-in-a-forest-2"


def test_manifest_starts_with_the_run_facts(tmp_path):
    store = new_store(tmp_path)
    manifest = json.loads((store.folder / MANIFEST).read_text())
    assert manifest["schema"] == SCHEMA == "critifusion.run/1"
    assert (manifest["prompt"], manifest["seed"], manifest["status"]) == ("A red fox, in a forest!", 7, "running")
    assert manifest["created"] == "2026-11-26T13:05:09+00:00"
    assert manifest["config"] == {"diffusion": {"steps": 4}} and manifest["versions"] == {"x": "1"}
    assert manifest["stages"] == {} and manifest["edits"] == []


def test_explicit_folder_is_used_exactly_and_never_overwritten(tmp_path):
    store = new_store(tmp_path, folder=tmp_path / "mine")
    assert store.folder == tmp_path / "mine"
    with pytest.raises(StoreError, match="already holds a run; resume it with --resume"):
        new_store(tmp_path, folder=tmp_path / "mine")


def test_stages_are_persisted_at_once_and_reopened(tmp_path):
    store = new_store(tmp_path)
    store.save_stage("tags", {"positive": "a fox, 8k", "seconds": 1.5})
    store.fail_stage("base", "out of memory", seconds=2)
    reopened = RunStore.open(store.folder)
    assert reopened.stage("tags") == {"positive": "a fox, 8k", "seconds": 1.5, "status": "done"}
    assert reopened.stage("base") is None
    assert reopened.stages["base"] == {"seconds": 2, "status": "failed", "error": "out of memory"}
    reopened.forget_stage("tags")
    assert RunStore.open(store.folder).stage("tags") is None


def test_edits_are_recorded_with_who_and_what(tmp_path):
    store = new_store(tmp_path)
    store.record_edit("tags", "positive", "a fox", "a red fox", by="user")
    edit = RunStore.open(store.folder).manifest["edits"][0]
    assert {k: edit[k] for k in ("stage", "field", "by", "before", "after")} == {
        "stage": "tags", "field": "positive", "by": "user", "before": "a fox", "after": "a red fox",
    }


def test_opening_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="is not a run folder"):
        RunStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match="cannot read the manifest"):
        RunStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(StoreError, match="schema 'other/9' is not 'critifusion.run/1'"):
        RunStore.open(tmp_path)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def explode(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["manifest.json"]  # no temporary left behind


def test_png_carries_prompt_negative_and_seed(tmp_path):
    from PIL import Image

    store = new_store(tmp_path)
    name = store.write_png("base.png", Image.new("RGB", (8, 8), "red"), {"prompt": "a fox", "negative": "blur", "seed": "7"})
    with Image.open(store.path(name)) as image:
        assert image.text == {"prompt": "a fox", "negative": "blur", "seed": "7"}
        assert image.size == (8, 8)


def test_latent_round_trip(tmp_path):
    import torch

    store = new_store(tmp_path)
    latent = torch.randn(1, 4, 8, 8, dtype=torch.float16)
    store.write_latent("base_latent.safetensors", latent)
    back = store.read_latent("base_latent.safetensors")
    assert back.dtype == torch.float16 and torch.equal(back, latent)
    with pytest.raises(StoreError, match="cannot read the latent"):
        store.read_latent("missing.safetensors")
