"""`critifusion eval` as a user runs it, on run folders made by `critifusion run --demo
--variants all`, with the tiny weights named through --set. Each test starts the real command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.conftest import overrides

PROMPTS = ["a red fox in a forest", "a blue cube on a green sphere", "a photo of a cat"]
SMALL = [
    "--set",
    "diffusion.width=64",
    "--set",
    "diffusion.height=64",
    "--set",
    "diffusion.steps=4",
    "--set",
    "specfusion.total_steps=4",
    "--set",
    "specfusion.last_k=3",
]
VARIANTS = ["base_original", "base", "refined_original", "refined"]
METRICS = ["pickscore", "hpsv2", "imagereward", "aesthetic"]


def clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CRITIFUSION_CONFIG", "TOGETHER_API_KEY", "OLLAMA_HOST")}
    env.update(XDG_CONFIG_HOME=str(tmp / "xdg"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf"))
    return env


def critifusion(*args, env, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def demo_batch(tmp_path_factory):
    """Three demo runs with all four variants, made once by the real `run` command."""
    root = tmp_path_factory.mktemp("demo-batch")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    proc = critifusion(
        "run",
        "--demo",
        "--variants",
        "all",
        "--prompts",
        str(root / "prompts.txt"),
        "--out",
        str(root / "runs"),
        *SMALL,
        env=clean_env(root),
        cwd=root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return root / "runs"


@pytest.fixture
def runs(demo_batch, tmp_path):
    """A private copy of the batch, so each test starts unscored."""
    return Path(shutil.copytree(demo_batch, tmp_path / "runs"))


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_json_shape_scores_in_every_manifest_and_the_table(runs, weights, tmp_path):
    env = clean_env(tmp_path)
    proc = critifusion(
        "eval", str(runs), "--json", "--csv", str(tmp_path / "s.csv"), *overrides(weights), env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"runs", "summary"}
    # Every run folder of the batch (not its claims, per-launch reports or summary file).
    folders = sorted(p.name for p in runs.iterdir() if (p / "manifest.json").is_file())
    assert len(folders) >= 2 and [Path(r["folder"]).name for r in out["runs"]] == folders
    assert sorted(r["prompt"] for r in out["runs"]) == sorted(PROMPTS)  # the user's own prompt
    for run in out["runs"]:
        assert set(run["scores"]) == set(VARIANTS)
        assert all(set(v) == set(METRICS) for v in run["scores"].values())
        # What was printed is what the manifest holds, with the weights it came from.
        recorded = manifest(Path(run["folder"]))["eval"]
        assert {v: recorded[v] for v in VARIANTS} == run["scores"]
        assert set(recorded["models"]) == set(METRICS)
        assert str(weights["hpsv2_checkpoint"]) in recorded["models"]["hpsv2"]
    for variant in VARIANTS:
        for metric in METRICS:
            stats = out["summary"][variant][metric]
            values = [r["scores"][variant][metric] for r in out["runs"]]
            assert stats["n"] == 3 and stats["mean"] == pytest.approx(sum(values) / 3)
            lo, hi = stats["ci95"]
            assert min(values) - 1e-9 <= lo <= stats["mean"] <= hi <= max(values) + 1e-9 and lo < hi
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0] == "folder,prompt,variant,metric,value" and len(rows) == 1 + 3 * 4 * 4

    # The table, and a second pass that scores nothing (same weights) but reports the same.
    again = critifusion("eval", str(runs), *overrides(weights), env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "scoring" not in again.stderr
    assert "vs base_original [95% CI]" in again.stdout and "win" in again.stdout
    rows = [line for line in again.stdout.splitlines() if " refined " in line]
    assert len(rows) == 4  # one per metric
    pick = out["summary"]["refined"]["pickscore"]
    assert f"{pick['mean']:.2f} [{pick['ci95'][0]:.2f}, {pick['ci95'][1]:.2f}]" in rows[0]
    diffs = [r["scores"]["refined"]["pickscore"] - r["scores"]["base_original"]["pickscore"] for r in out["runs"]]
    assert f"{sum(diffs) / 3:+.2f} [" in rows[0]
    wins = sum(d > 0 for d in diffs) + 0.5 * sum(d == 0 for d in diffs)
    assert rows[0].rstrip(" │").endswith(f"{wins / 3:.0%}")


def test_a_missing_weight_is_one_message_and_the_other_metrics_still_run(runs, weights, tmp_path):
    gone = tmp_path / "nowhere" / "ImageReward.pt"
    proc = critifusion(
        "eval",
        str(runs),
        "--json",
        "--metrics",
        "imagereward,aesthetic",
        *overrides(weights),
        "--set",
        f"eval.imagereward_checkpoint='{gone}'",
        env=clean_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("imagereward: cannot load its weights") == 1
    assert f"eval.imagereward_checkpoint = '{gone}': no such file" in proc.stderr
    scores = json.loads(proc.stdout)["runs"][0]["scores"]
    assert set(scores["refined"]) == {"aesthetic"}


def test_missing_hub_weights_name_the_download_command(runs, tmp_path):
    proc = critifusion(
        "eval",
        str(runs),
        "--metrics",
        "hpsv2",
        "--set",
        "eval.hpsv2_clip=tiny-org/no-such-clip",
        env=clean_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in proc.stderr
    assert "hf download tiny-org/no-such-clip config.json" in proc.stderr
    # v2.0 is selectable and names its own file.
    proc = critifusion(
        "eval",
        str(runs),
        "--metrics",
        "hpsv2",
        "--set",
        "eval.hpsv2_version=v2.0",
        env=clean_env(tmp_path),
        cwd=tmp_path,
    )
    assert "hf download xswu/HPSv2 HPS_v2_compressed.pt" in proc.stderr


def test_new_weights_score_again(runs, weights, tmp_path):
    env = clean_env(tmp_path)
    first = critifusion(
        "eval", str(runs), "--json", "--metrics", "aesthetic", *overrides(weights), env=env, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    other = tmp_path / "other.pth"
    from tests.eval import tiny

    shutil.copy(tiny.save_aesthetic(tmp_path / "a2", seed=99), other)
    second = critifusion(
        "eval",
        str(runs),
        "--json",
        "--metrics",
        "aesthetic",
        *overrides(weights),
        "--set",
        f"eval.aesthetic_checkpoint='{other}'",
        env=env,
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr
    assert "aesthetic: scoring 12 images" in second.stderr
    a = json.loads(first.stdout)["runs"][0]["scores"]["base"]["aesthetic"]
    b = json.loads(second.stdout)["runs"][0]["scores"]["base"]["aesthetic"]
    assert a != b
    assert str(other) in manifest(Path(json.loads(second.stdout)["runs"][0]["folder"]))["eval"]["models"]["aesthetic"]


def test_usage_errors(tmp_path, runs):
    env = clean_env(tmp_path)
    proc = critifusion("eval", str(runs), "--metrics", "clipscore", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "unknown metric clipscore" in proc.stderr
    proc = critifusion("eval", str(tmp_path / "empty-nothing"), env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr


def test_plot_writes_a_png_or_says_what_it_needs(runs, weights, tmp_path):
    import importlib.util

    png = tmp_path / "chart.png"
    proc = critifusion(
        "eval",
        str(runs),
        "--metrics",
        "aesthetic",
        "--plot",
        str(png),
        *overrides(weights),
        env=clean_env(tmp_path),
        cwd=tmp_path,
    )
    assert "Traceback" not in proc.stderr
    if importlib.util.find_spec("matplotlib"):
        assert proc.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert proc.returncode == 1 and "--plot needs matplotlib" in proc.stderr and not png.exists()
