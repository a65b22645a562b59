"""`critifusion run` as a user runs it: a complete run folder, JSON, batches, a kill and a
resume, Ctrl+C, failures and usage errors. Each test starts the real command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.loopback import KEY_VALUE, KEY_VAR, LoopbackServer

OFFLINE = [
    "--set", "diffusion.model=tiny-random",
    "--set", "criticore.candidates=['rules']",
    "--set", "criticore.aggregator=rules",
    "--set", "criticore.vlms=['rules']",
    "--set", "diffusion.width=64", "--set", "diffusion.height=64",
    "--set", "diffusion.steps=4", "--set", "specfusion.total_steps=4", "--set", "specfusion.last_k=3",
]


def run_cli(*args, env, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", "run", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def start_cli(*args, env, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "critifusion_tui", "run", *args],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError):
            pass  # the manifest is being written: atomic, but it may not exist yet
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_offline_run_writes_a_complete_folder_and_a_json_summary(env, tmp_path):
    out = tmp_path / "fox"
    proc = run_cli("a red fox in a forest", *OFFLINE, "--out", str(out), "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["folder"] == str(out) and summary["status"] == "done" and summary["tiny_random"] is True
    assert summary["images"] == {"base": str(out / "base.png"), "refine": str(out / "refined.png")}
    assert summary["positive"].startswith("a red fox in a forest, ")
    m = manifest(out)
    assert m["status"] == "done" and list(m["stages"]) == ["tags", "components", "base", "critique", "refine"]
    # Progress went to stderr as plain lines (not a terminal): no escape codes.
    assert "[base] step 4/4" in proc.stderr and "\x1b[" not in proc.stderr
    assert "tiny-random: the images are noise" in proc.stderr


def test_hosted_roles_through_the_real_client_and_no_secret_on_disk(env, tmp_path):
    with LoopbackServer() as server:
        server.script("critic", text="<issues>- the fox is grey; make it red</issues><refined>a red fox, pine forest</refined>")
        env = dict(env, **{KEY_VAR: KEY_VALUE})
        out = tmp_path / "hosted"
        proc = run_cli(
            "a red fox in a forest", *OFFLINE, "--out", str(out),
            "--set", f"providers.together.api_key_env={KEY_VAR}",
            "--set", f"providers.together.base_url='{server.url}'",
            "--set", "providers.together.max_retries=0",
            "--set", "criticore.candidates=['together:a', 'together:b']",
            "--set", "criticore.aggregator=together:agg",
            "--set", "criticore.vlms=['together:critic']",
            env=env, cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # Tags: 2 candidates + aggregator; components: 2 candidates whose plain answers hold
        # no JSON (unusable, nothing to merge); critique: 1 critic, nothing to merge.
        assert len(server.requests_to("/v1/chat/completions")) == 3 + 2 + 1
    m = manifest(out)
    assert m["stages"]["critique"]["candidates"][0]["issues"] == ["the fox is grey", "make it red"]
    assert m["stages"]["tags"]["candidates"][0]["model"] == "together:a"
    for path in out.iterdir():
        assert KEY_VALUE.encode() not in path.read_bytes()
    assert KEY_VALUE not in proc.stdout + proc.stderr


def test_a_kill_loses_only_the_stage_in_progress_and_resume_finishes(env, tmp_path):
    out = tmp_path / "killed"
    proc = start_cli("a red fox", *OFFLINE, "--set", "diffusion.steps=1000", "--out", str(out), env=env, cwd=tmp_path)
    try:
        wait_for(lambda: "components" in manifest(out)["stages"] and "tags" in manifest(out)["stages"])
        time.sleep(1.5)  # well into the base image's 1000 steps
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    killed = manifest(out)
    assert killed["status"] == "running"  # it never got to say anything else
    assert {k: v["status"] for k, v in killed["stages"].items()} == {"tags": "done", "components": "done"}
    assert not list(out.glob(".*.tmp"))  # no half-written file is left where a reader looks

    resumed = run_cli("--resume", str(out), "--set", "diffusion.steps=4", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    done = manifest(out)
    assert done["status"] == "done" and done["stages"]["tags"] == killed["stages"]["tags"]
    assert done["stages"]["base"]["steps"] == 4 and len(done["resumed"]) == 1
    assert "[tags] started" not in resumed.stdout and "[base] started" in resumed.stdout


def test_ctrl_c_exits_130_with_the_completed_stages_saved(env, tmp_path):
    out = tmp_path / "interrupted"
    proc = start_cli("a red fox", *OFFLINE, "--set", "diffusion.steps=1000", "--out", str(out), env=env, cwd=tmp_path)
    try:
        wait_for(lambda: "tags" in manifest(out)["stages"] and "components" in manifest(out)["stages"])
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert f"completed stages are saved in {out}" in stderr and f"critifusion run --resume {out}" in stderr
    assert "Traceback" not in stderr
    m = manifest(out)
    assert m["status"] == "cancelled" and set(m["stages"]) == {"tags", "components"}


def test_batch_runs_each_prompt_once_and_skips_finished_ones(env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two animals\na red fox\n\na blue whale\n")
    out = tmp_path / "batch"
    first = run_cli("--prompts", str(prompts), *OFFLINE, "--out", str(out), "--json", env=env, cwd=tmp_path, timeout=180)
    assert first.returncode == 0, first.stderr
    assert [r["prompt"] for r in json.loads(first.stdout)] == ["a red fox", "a blue whale"]
    # Each line's folder is keyed by its number, its slug and a hash of its text.
    names = sorted(p.name for p in out.iterdir())
    assert [n.rsplit("-", 1)[0] for n in names] == ["001-a-red-fox", "002-a-blue-whale"]
    assert all(len(n.rsplit("-", 1)[1]) == 8 for n in names)
    second = run_cli("--prompts", str(prompts), *OFFLINE, "--out", str(out), env=env, cwd=tmp_path)
    assert second.returncode == 0
    assert second.stdout.count("already done") == 2 and "[base] started" not in second.stdout


def test_a_failing_model_exits_1_with_the_reason(env, tmp_path):
    out = tmp_path / "broken"
    proc = run_cli("a fox", *OFFLINE, "--set", f"diffusion.model='{tmp_path / 'missing-model'}'", "--out", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "[base] FAILED" in proc.stdout and "missing-model" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert manifest(out)["status"] == "failed"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of PROMPT, --prompts FILE or --resume DIR"),
        (["a fox", "--prompts", "p.txt"], "give exactly one of"),
        (["--resume", "nowhere"], "is not a run folder"),
        (["a fox", "--seed", "-1"], "--seed must be 0 or more"),
        (["--prompts", "missing.txt"], "cannot read missing.txt"),
    ],
)
def test_usage_errors_exit_2(env, tmp_path, args, message):
    proc = run_cli(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr


def test_demo_runs_offline_and_the_users_set_still_wins(env, tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("--demo", "a red fox", "--set", "diffusion.steps=3", "--out", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = manifest(out)["config"]
    assert config["diffusion"]["model"] == "tiny-random" and config["criticore"]["vlms"] == ["rules"]
    assert config["diffusion"]["steps"] == 3 and config["diffusion"]["width"] == 256
