"""`critifusion prompt` as a user runs it: only the prompt on standard output, the JSON shape,
the image critique, usage errors, and no torch, diffusers or transformers imported."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.cli.test_cli import imported_modules
from tests.loopback import KEY_VALUE, KEY_VAR, LoopbackServer

RULES = [
    "--set",
    "criticore.candidates=['rules']",
    "--set",
    "criticore.aggregator=rules",
    "--set",
    "criticore.vlms=['rules']",
]
NOT_ON_THIS_PATH = {"torch", "diffusers", "transformers", "accelerate", "textual", "textual_image"}


def prompt(*args, env, cwd, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", "prompt", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def picture(path: Path, fmt: str | None = None, size=(100, 60)) -> Path:
    Image.new("RGB", size, (200, 40, 30)).save(path, format=fmt)
    return path


def test_standard_output_is_only_the_positive_prompt(env, tmp_path):
    proc = prompt("a red fox in a forest", *RULES, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("a red fox in a forest, ") and "8k" in lines[0]
    # The progress went to standard error, as plain lines.
    assert "[tags] candidate rules answered" in proc.stderr and "[components]" in proc.stderr
    assert "ledger: " in proc.stderr and lines[0] not in proc.stderr
    as_json = prompt("a red fox in a forest", *RULES, "--json", env=env, cwd=tmp_path)
    assert json.loads(as_json.stdout)["positive"] == lines[0]


def test_json_carries_every_models_answer_and_the_critique(env, tmp_path):
    with LoopbackServer() as server:
        server.script("b", status=500, error="the model is down")
        server.script(
            "critic", text="<issues>- the fox is grey; make it red</issues><refined>a red fox, pine forest</refined>"
        )
        env = dict(env, **{KEY_VAR: KEY_VALUE})
        proc = prompt(
            "a red fox in a forest",
            "--json",
            "--critique",
            str(picture(tmp_path / "fox.jpg", "JPEG")),
            "--set",
            f"providers.together.api_key_env={KEY_VAR}",
            "--set",
            f"providers.together.base_url='{server.url}'",
            "--set",
            "providers.together.max_retries=0",
            "--set",
            "criticore.candidates=['together:a', 'together:b']",
            "--set",
            "criticore.aggregator=together:agg",
            "--set",
            "criticore.vlms=['together:critic']",
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        critic_request = next(r for r in server.requests_to("/v1/chat/completions") if r.body["model"] == "critic")
    out = json.loads(proc.stdout)
    assert set(out) >= {
        "idea",
        "positive",
        "negative",
        "components",
        "refinement",
        "answers",
        "critique",
        "ledger",
        "output",
    }
    assert out["idea"] == "a red fox in a forest" and out["negative"].startswith("low quality")
    tags = {(a["model"], a["role"]): a for a in out["answers"]["tags"]}
    assert set(tags) == {("together:a", "candidate"), ("together:b", "candidate")}  # one usable: no merge
    assert tags[("together:a", "candidate")]["error"] is None and tags[("together:a", "candidate")]["text"]
    assert "the model is down" in tags[("together:b", "candidate")]["error"]
    assert [(a["model"], a["role"]) for a in out["answers"]["critique"]] == [("together:critic", "vlm")]
    assert out["critique"]["issues"] == ["the fox is grey", "make it red"]
    assert out["critique"]["refined"] == "a red fox, pine forest"
    assert out["refinement"].startswith("a red fox") and out["output"] == out["refinement"]
    assert out["ledger"]["total"]["calls"] >= 4
    # A JPEG reached the critic as the PNG the data URL says it is.
    parts = critic_request.body["messages"][-1]["content"]
    url = next(p["image_url"]["url"] for p in parts if p.get("type") == "image_url")
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as sent:
        assert sent.format == "PNG" and sent.size == (100, 60)
    assert KEY_VALUE not in proc.stdout + proc.stderr


def test_with_a_critique_the_refinement_prompt_is_printed(env, tmp_path):
    proc = prompt("a red fox", *RULES, "--critique", str(picture(tmp_path / "fox.png")), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("a red fox")
    assert "[critique] vlm rules answered" in proc.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["   "], "give the idea to expand"),
        ([], "give the idea to expand"),
        (["a fox", "--critique", "missing.png"], "missing.png: no such file"),
        (["a fox", "--critique", "notes.png"], "not an image file"),
        (["a fox", "--critique", "."], "not a regular file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(env, tmp_path, args, said):
    (tmp_path / "notes.png").write_text("a fox, in words")
    proc = prompt(*args, *RULES, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert said in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("critique", [False, True], ids=["text", "critique"])
def test_prompt_imports_no_torch_diffusers_or_transformers(env, tmp_path, critique):
    args = ["prompt", "a red fox", *RULES]
    if critique:
        args += ["--critique", str(picture(tmp_path / "fox.webp", "WEBP"))]
    names, proc = imported_modules(args, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "critifusion_tui" in names
    if critique:
        assert "PIL" in names  # the image is read with PIL, nothing heavier
    assert not names & NOT_ON_THIS_PATH, names & NOT_ON_THIS_PATH
