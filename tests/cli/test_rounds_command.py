"""Critique rounds through the real command, as the issue's "done when" states it: a headless
run with `loop.rounds = 3`, `loop.stop_at = 80` and a scripted critic stops where the scores
say, keeps every round and prints one line per round."""

from __future__ import annotations

import json

from tests.cli.test_run import OFFLINE, manifest, run_cli, together_at
from tests.loopback import KEY_VALUE, KEY_VAR, LoopbackServer


def test_a_headless_run_with_three_rounds_stops_at_80_and_keeps_every_round(env, tmp_path):
    out = tmp_path / "rounds"
    with LoopbackServer() as server:
        # The critic's ratings in the order it sees the images: the base, round 1, round 2.
        for n, rating in enumerate((35, 62, 84)):
            server.script(
                "critic",
                text=f"<issues>- problem {n}</issues><refined>a red fox, fix {n}</refined><alignment>{rating}</alignment>",
                times=1,
            )
        proc = run_cli(
            "a red fox in a forest",
            *OFFLINE,
            *together_at(server),
            "--set",
            "criticore.vlms=['together:critic']",
            "--set",
            "loop.rounds=3",
            "--set",
            "loop.stop_at=80",
            "--out",
            str(out),
            "--json",
            env=dict(env, **{KEY_VAR: KEY_VALUE}),
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[rounds] round") or "final image" in line]
    assert lines == [
        "[rounds] round 1: score 62 (refined.png)",
        "[rounds] round 2: score 84 (refined_r2.png)",
        "[rounds] final image: round 2 (refined_r2.png): the score 84 reached stop_at 80",
    ]
    record = manifest(out)["stages"]["rounds"]
    assert [(r["round"], r["score"], r["image"]) for r in record["rounds"]] == [
        (1, 62.0, "refined.png"),
        (2, 84.0, "refined_r2.png"),
    ]
    assert (out / "refined_r2.png").is_file() and (out / "refined_r2_latent.safetensors").is_file()
    summary = json.loads(proc.stdout)
    assert summary["images"]["final"] == str(out / "refined_r2.png")
    assert summary["rounds"] == {
        "final": 2,
        "final_by": "score",
        "stopped": "the score 84 reached stop_at 80",
        "rounds": [
            {"round": 1, "score": 62.0, "image": "refined.png"},
            {"round": 2, "score": 84.0, "image": "refined_r2.png"},
        ],
    }
