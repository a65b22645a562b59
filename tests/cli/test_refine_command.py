"""`critifusion refine` as a user runs it: an image of another size than the model's, a past
run's base (`--from`), the folder that history, resume and eval read, re-runs to the same
bytes, and usage errors. Each test starts the real command on the tiny random model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from critifusion_tui.engine.store import RunStore
from tests.cli.test_run import OFFLINE, manifest, run_cli


def refine(*args, env, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", "refine", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def forget_refine(folder: Path) -> bytes:
    """What a person does to re-run a run's refinement: drop its record and its image."""
    data = manifest(folder)
    del data["stages"]["refine"]
    (folder / "manifest.json").write_text(json.dumps(data))
    refined = folder / "refined.png"
    before = refined.read_bytes()
    refined.unlink()
    return before


def test_refine_an_image_of_another_size_into_a_run_folder_that_resumes_to_the_same_bytes(env, tmp_path):
    from critifusion_tui.eval.runs import find_runs, variant_images
    from critifusion_tui.tui.screens.history import read_run

    image = tmp_path / "fox.png"
    Image.new("RGB", (100, 60), (200, 40, 30)).save(image)
    out = tmp_path / "refined-fox"
    proc = refine(str(image), "--prompt", "a red fox", *OFFLINE, "--out", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The resize and crop are said where the person looks.
    assert "given image fox.png: 100x60 scaled by 1.067 to 107x64 (Lanczos), centre-cropped to 64x64" in proc.stdout
    assert "[refine] done" in proc.stdout and "Traceback" not in proc.stderr
    m = manifest(out)
    assert m["status"] == "done" and m["prompt"] == "a red fox"
    assert list(m["stages"]) == ["tags", "components", "base", "critique", "refine"]
    base = m["stages"]["base"]
    assert base["source"] == "given" and base["given"]["file"] == "fox.png"
    assert (base["given"]["width"], base["given"]["height"]) == (100, 60)
    assert (base["width"], base["height"]) == (64, 64) and base["fit"]["crop"] == [21, 0, 85, 64]
    for name in ("base.png", "refined.png"):
        with Image.open(out / name) as saved:
            assert saved.size == (64, 64)

    # History, eval and resume read it like any run folder.
    assert read_run(out).data["stages"]["base"]["source"] == "given"
    assert find_runs([out]) == ([out], [])
    assert set(variant_images(RunStore.open(out))) == {"base", "refined"}
    before = forget_refine(out)
    resumed = run_cli("--resume", str(out), env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "[refine] started" in resumed.stdout and "[base] started" not in resumed.stdout
    assert (out / "refined.png").read_bytes() == before


def test_refine_from_a_past_run_reuses_its_base_and_a_run_reruns_to_the_same_bytes(env, tmp_path):
    past = tmp_path / "past"
    proc = run_cli("a red fox in a forest", *OFFLINE, "--out", str(past), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "again"
    proc = refine("--from", str(past), "--critique", "--json", *OFFLINE, "--out", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "done" and summary["folder"] == str(out)
    assert summary["prompt"] == "a red fox in a forest" and summary["seed"] == 2026  # the past run's
    assert summary["given"] == {
        "source": "run",
        "run": {"folder": str(past.resolve()), "prompt": "a red fox in a forest", "seed": 2026},
    }
    assert summary["images"] == {"base": str(out / "base.png"), "refine": str(out / "refined.png")}
    m = manifest(out)
    assert m["stages"]["base"]["source"] == "run" and m["stages"]["components"]["components"]
    assert not m["stages"]["critique"].get("skipped")
    for name in ("base.png", "base_latent.safetensors"):
        assert (out / name).read_bytes() == (past / name).read_bytes()
    assert "[critique] started" in proc.stderr  # progress on stderr with --json

    # docs/method.md section 6, "Seeds": the past run itself re-runs its refinement to the same bytes.
    before = forget_refine(past)
    resumed = run_cli("--resume", str(past), env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (past / "refined.png").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "give exactly one of IMAGE or --from RUN_DIR"),
        (["fox.png", "--from", "past", "--prompt", "a fox"], "give exactly one of IMAGE or --from RUN_DIR"),
        (["fox.png"], "IMAGE needs --prompt TEXT"),
        (["fox.png", "--prompt", "  "], "the prompt is empty"),
        (["fox.png", "--prompt", "a fox", "--seed", "-1"], "--seed must be 0 or more"),
        (["notes.png", "--prompt", "a fox"], "notes.png: not an image file"),
        (["missing.png", "--prompt", "a fox"], "missing.png: no such file"),
        (["--from", "nowhere"], "is not a run folder"),
        (["--from", "textonly"], "no completed base stage"),
        (["fox.png", "--prompt", "a fox", "--out", "full"], "is not empty and holds no run"),
    ],
)
def test_usage_errors_exit_2_before_anything_loads(env, tmp_path, args, said):
    Image.new("RGB", (16, 16)).save(tmp_path / "fox.png")
    (tmp_path / "notes.png").write_text("a fox, in words")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    RunStore.create(prompt="a fox", seed=1, config={}, versions={}, folder=tmp_path / "textonly")
    proc = refine(*args, *OFFLINE, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert said in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()  # no run folder was made
