"""`critifusion eval` on the run folder of `critifusion refine`: its given base and its
refinement are scored like any run's base and refined images (both real commands)."""

from __future__ import annotations

import json

from PIL import Image

from tests.eval.conftest import overrides
from tests.eval.test_eval_command import SMALL, clean_env, critifusion


def test_eval_scores_a_refine_runs_base_and_refinement(weights, tmp_path):
    env = clean_env(tmp_path)
    Image.new("RGB", (100, 60), (200, 40, 30)).save(tmp_path / "fox.png")
    out = tmp_path / "refined"
    made = critifusion(
        "refine",
        str(tmp_path / "fox.png"),
        "--prompt",
        "a red fox",
        "--demo",
        *SMALL,
        "--out",
        str(out),
        env=env,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    proc = critifusion(
        "eval", str(out), "--metrics", "aesthetic,pickscore", "--json", *overrides(weights), env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["prompt"] == "a red fox"
    assert set(run["scores"]) == {"base", "refined"}  # no comparison branch in a refine run
    assert all(set(v) == {"aesthetic", "pickscore"} for v in run["scores"].values())
    recorded = json.loads((out / "manifest.json").read_text())["eval"]
    assert {v: recorded[v] for v in ("base", "refined")} == run["scores"]
