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
        "stage": "tags",
        "field": "positive",
        "by": "user",
        "before": "a fox",
        "after": "a red fox",
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
    name = store.write_png(
        "base.png", Image.new("RGB", (8, 8), "red"), {"prompt": "a fox", "negative": "blur", "seed": "7"}
    )
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


# ------------------------------------------------------------------------------------------
# File modes: a run's files are created as the user's other files are (0666 less the umask),
# so a shared outputs folder can be read by the group or a web server under umask 022.


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(folder) -> dict[str, int]:
    """Every entry under `folder` (itself as "."), with its permission bits."""
    found = {".": folder.stat().st_mode & 0o777}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = os.stat(path).st_mode & 0o777
    return found


def test_run_files_follow_the_umask(tmp_path, umask):
    import torch
    from PIL import Image

    store = new_store(tmp_path)
    store.write_png("base.png", Image.new("RGB", (8, 8), "red"), {"prompt": "a fox"})
    store.write_latent("base_latent.safetensors", torch.zeros(1, 4, 8, 8))
    store.save_stage(
        "base", {"image": "base.png", "latent": "base_latent.safetensors", "prompt": "a fox", "negative": ""}
    )
    store.finish()
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    assert modes(store.folder) == {
        ".": folder_mode,
        MANIFEST: file_mode,
        "base.png": file_mode,
        "base_latent.safetensors": file_mode,
    }
    # An explicit --out folder, and a file replaced in place, too.
    explicit = new_store(tmp_path, folder=tmp_path / "mine")
    explicit.write_manifest()
    assert modes(explicit.folder) == {".": folder_mode, MANIFEST: file_mode}


def test_atomic_write_follows_the_umask_for_every_writer(tmp_path, umask):
    # eval reports, batch summaries and the answer cache write through atomic_write too.
    target = tmp_path / "sub" / "report.csv"
    atomic_write(target, lambda f: f.write("a,b\n"), mode="w")
    assert (target.stat().st_mode & 0o777, target.parent.stat().st_mode & 0o777) == (0o666 & ~umask, 0o777 & ~umask)
    assert os.listdir(target.parent) == ["report.csv"]


def test_a_whole_run_is_readable_by_others_under_umask_022(tmp_path):
    """`critifusion run` end to end: every file and folder it leaves is 0644 / 0755."""
    import subprocess
    import sys

    out = tmp_path / "outputs"
    environ = {
        k: v for k, v in os.environ.items() if k not in ("CRITIFUSION_CONFIG", "TOGETHER_API_KEY", "OLLAMA_HOST")
    }
    environ.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    settings = [
        "diffusion.model=tiny-random",
        "criticore.candidates=['rules']",
        "criticore.aggregator=rules",
        "criticore.vlms=['rules']",
        "diffusion.width=64",
        "diffusion.height=64",
        "diffusion.steps=2",
        "specfusion.total_steps=2",
        "specfusion.last_k=1",
        f"output.dir='{out}'",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "critifusion_tui", "run", "a red fox", *(a for s in settings for a in ("--set", s))],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert proc.returncode == 0, proc.stderr
    (folder,) = out.iterdir()
    found = modes(folder)
    assert {"manifest.json", "base.png", "refined.png"} <= set(found)
    assert any(name.endswith(".safetensors") for name in found)
    wrong = {name: oct(mode) for name, mode in found.items() if mode != (0o755 if (folder / name).is_dir() else 0o644)}
    assert wrong == {}


def test_the_answer_cache_stays_private_whatever_the_umask(tmp_path, umask):
    from critifusion_tui.engine.answer_cache import AnswerCache

    cache = AnswerCache(tmp_path / "answers")
    cache.put("ab" + "0" * 62, model="rules", text="a fox", output=None)
    (entry,) = (tmp_path / "answers").rglob("*.json")
    assert entry.stat().st_mode & 0o777 == 0o600
    assert cache.get("ab" + "0" * 62)["text"] == "a fox"
