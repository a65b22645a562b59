"""`critifusion run` with best-of-N bases: one line per candidate (seed, rating, which was
picked), from the real command, with the critic on the loopback server."""

from __future__ import annotations

import re

from tests.cli.test_run import OFFLINE, manifest, run_cli, together_at
from tests.loopback import KEY_VALUE, KEY_VAR, LoopbackServer

LINE = re.compile(r"^\[base\] base candidate (\d)/3: seed (\d+), (score \S+|not rated)( \(picked by critic\))?$")


def test_run_prints_one_line_per_base_candidate_and_refines_the_best(env, tmp_path):
    with LoopbackServer() as server:
        # The critics rate the three candidates at once: whichever request comes first gets
        # the first rating, so the lines are checked against the manifest, not an order.
        for rating in (55, 88, 70):
            server.script(
                "critic", text=f"<issues>- x</issues><refined>a fox</refined><alignment>{rating}</alignment>", times=1
            )
        server.script("critic", text="<issues>- the fox is grey</issues><refined>a red fox</refined>")
        out = tmp_path / "best-of-3"
        proc = run_cli(
            "a red fox in a forest",
            *OFFLINE,
            "--out",
            str(out),
            "--set",
            "diffusion.base_candidates=3",
            *together_at(server),
            "--set",
            "criticore.vlms=['together:critic']",
            env=dict(env, **{KEY_VAR: KEY_VALUE}),
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [m.groups() for m in map(LINE.match, proc.stdout.splitlines()) if m]
    assert [(number, seed) for number, seed, _, _ in lines] == [("1", "2026"), ("2", "12026"), ("3", "22026")]
    assert sorted(score for _, _, score, _ in lines) == ["score 55", "score 70", "score 88"]
    picked = [(number, score) for number, _, score, mark in lines if mark]
    assert [score for _, score in picked] == ["score 88"]
    base = manifest(out)["stages"]["base"]
    assert str(base["picked"]) == picked[0][0] and base["picked_by"] == "critic"
    assert [c["score"] for c in base["candidates"]] == [float(s.split()[1]) for _, _, s, _ in lines]
    assert (out / "base.png").read_bytes() == (out / f"base_c{base['picked']}.png").read_bytes()
    assert manifest(out)["stages"]["critique"]["issues"] == ["the fox is grey"]
