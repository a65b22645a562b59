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
    "--set",
    "diffusion.model=tiny-random",
    "--set",
    "criticore.candidates=['rules']",
    "--set",
    "criticore.aggregator=rules",
    "--set",
    "criticore.vlms=['rules']",
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


def run_cli(*args, env, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", "run", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_cli(*args, env, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "critifusion_tui", "run", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
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
        server.script(
            "critic", text="<issues>- the fox is grey; make it red</issues><refined>a red fox, pine forest</refined>"
        )
        env = dict(env, **{KEY_VAR: KEY_VALUE})
        out = tmp_path / "hosted"
        proc = run_cli(
            "a red fox in a forest",
            *OFFLINE,
            "--out",
            str(out),
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
    assert m["status"] == "cancelled" and {k: v["status"] for k, v in m["stages"].items() if k != "base"} == {
        "tags": "done",
        "components": "done",
    }
    # The stage in flight (if it had started) is recorded as cancelled, not as a failure.
    assert m["stages"].get("base", {"status": "cancelled"})["status"] == "cancelled"


def test_batch_runs_each_prompt_once_and_skips_finished_ones(env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two animals\na red fox\n\na blue whale\n")
    out = tmp_path / "batch"
    first = run_cli(
        "--prompts", str(prompts), *OFFLINE, "--out", str(out), "--json", env=env, cwd=tmp_path, timeout=180
    )
    assert first.returncode == 0, first.stderr
    assert [r["prompt"] for r in json.loads(first.stdout)] == ["a red fox", "a blue whale"]
    # Run folders only (not the claims, launch reports and summary of the batch); each line's
    # folder is keyed by its number, its slug and a hash of its text.
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [n.rsplit("-", 1)[0] for n in names] == ["001-a-red-fox", "002-a-blue-whale"]
    assert all(len(n.rsplit("-", 1)[1]) == 8 for n in names)
    assert json.loads((out / "batch-summary.json").read_text())["done"] == 2
    second = run_cli("--prompts", str(prompts), *OFFLINE, "--out", str(out), env=env, cwd=tmp_path)
    assert second.returncode == 0
    assert second.stdout.count("already done") == 2 and "[base] started" not in second.stdout


def test_a_failing_model_exits_1_with_the_reason(env, tmp_path):
    out = tmp_path / "broken"
    proc = run_cli(
        "a fox",
        *OFFLINE,
        "--set",
        f"diffusion.model='{tmp_path / 'missing-model'}'",
        "--out",
        str(out),
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "[base] FAILED" in proc.stdout and "missing-model" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert manifest(out)["status"] == "failed"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of PROMPT, --prompts FILE, --resume DIR or --replay DIR"),
        (["--replay", "nowhere"], "is not a run folder"),
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


def test_prompts_from_a_drawbench_csv_with_category_and_limit(env, tmp_path):
    path = tmp_path / "drawbench.csv"
    path.write_text(
        'Prompts,Category\n"A red car.",Colors\n"Two cats.",Counting\n"A blue car.",Colors\n"A green car.",Colors\n'
    )
    out = tmp_path / "batch"
    proc = run_cli(
        "--prompts",
        str(path),
        "--category",
        "colors",
        "--limit",
        "2",
        *OFFLINE,
        "--out",
        str(out),
        "--json",
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert [s["prompt"] for s in json.loads(proc.stdout)] == ["A red car.", "A blue car."]
    proc = run_cli("--prompts", str(path), "--category", "animals", *OFFLINE, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "categories: Colors, Counting" in proc.stderr
    assert run_cli("a fox", "--limit", "2", *OFFLINE, env=env, cwd=tmp_path).returncode == 2


def test_json_summary_and_manifest_carry_the_ledger_and_the_templates_used(env, tmp_path):
    template = tmp_path / "tags.txt"
    template.write_text("Tag list for: {prompt}\nStart from: {seed_tags}\n")
    with LoopbackServer() as server:
        server.script("a", text="red fox, pine forest, dusk light, 8k", usage=(120, 11))
        server.script("b", text="fox, forest floor, moss, soft light", usage=(130, 9))
        server.script("agg", text="red fox, pine forest, dusk light, moss", usage=(300, 8))
        server.script(
            "critic", text="<issues>- fox too small</issues><refined>a large red fox</refined>", usage=(900, 12)
        )
        env = dict(env, **{KEY_VAR: KEY_VALUE})
        out = tmp_path / "ledger"
        proc = run_cli(
            "a red fox in a forest",
            *OFFLINE,
            "--out",
            str(out),
            "--json",
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
            "--set",
            f"criticore.instructions.tags_user='{template}'",
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sent = [r.body for r in server.requests_to("/v1/chat/completions") if r.body["model"] == "a"]
    # Model a answers the tags and the components at once, in either order: its tags request
    # is the one that carries the template.
    assert any(
        b["messages"][1]["content"].startswith("Tag list for: a red fox in a forest\nStart from: ") for b in sent
    )
    ledger = json.loads(proc.stdout)["ledger"]
    rows = {(r["model"], r["role"]): r for r in ledger["models"]}
    # Tags: a, b and agg; components: a and b (plain text, unusable); critique: critic alone.
    assert (rows["together:a", "candidate"]["calls"], rows["together:a", "candidate"]["tokens_in"]) == (2, 240)
    assert rows["together:agg", "aggregator"]["tokens_out"] == 8
    assert rows["together:critic", "vlm"]["tokens_in"] == 900
    assert ledger["total"]["tokens_in"] == 2 * 120 + 2 * 130 + 300 + 900
    assert ledger["total"]["tokens_out"] == 2 * 11 + 2 * 9 + 8 + 12
    assert "ledger: total: 6 calls, 1,700 tokens in, 60 out" in proc.stderr
    m = manifest(out)
    assert m["ledger"]["summary"] == ledger and len(m["ledger"]["calls"]) == 6
    used = m["stages"]["tags"]["instructions"]
    assert used["tags_user"]["text"] == "Tag list for: {prompt}\nStart from: {seed_tags}"
    assert "text" not in used["tags_system"] and len(used["tags_system"]["sha256"]) == 16
    assert set(m["stages"]["critique"]["instructions"]) == {"critic_system", "critic_user"}
    for path in out.iterdir():
        assert KEY_VALUE.encode() not in path.read_bytes()


def together_at(server) -> list[str]:
    """The --set arguments that point Together at the loopback server (the tests' key variable,
    no retries)."""
    return [
        "--set",
        f"providers.together.api_key_env={KEY_VAR}",
        "--set",
        f"providers.together.base_url='{server.url}'",
        "--set",
        "providers.together.max_retries=0",
    ]


def hosted(server, *extra):
    return [
        *together_at(server),
        "--set",
        "criticore.candidates=['together:a', 'together:b', 'together:a']",
        "--set",
        "criticore.aggregator=together:agg",
        "--set",
        "criticore.vlms=['together:critic']",
        *extra,
    ]


def script_models(server):
    # Model a is listed twice and answers the tags and the components at once: four requests
    # in any order. Each answer goes to the stage whose request holds its text (the tags' user
    # turn starts "Idea:", the components' system turn starts "Break the user").
    server.script("a", text="red fox, pine forest, dusk light, 8k", times=1, when="Idea:")
    server.script("a", text="fox, snowy pines, blue hour, moss", times=1, when="Idea:")
    server.script("a", text='{"components": ["a red fox", "a pine forest", "dusk light"]}', when="Break the user")
    server.script("b", text="fox, forest floor, moss, soft light")
    server.script("agg", text="red fox, pine forest, dusk light, moss, rim light")
    server.script(
        "critic", text="<issues>- fox too small</issues><refined>a large red fox among pines at dusk</refined>"
    )


def test_replay_gives_the_same_prompts_and_the_same_png_bytes_without_any_provider(env, tmp_path):
    env = dict(env, **{KEY_VAR: KEY_VALUE})
    first, again = tmp_path / "first", tmp_path / "again"
    with LoopbackServer() as server:
        script_models(server)
        proc = run_cli(
            "a red fox in a forest",
            *OFFLINE,
            *hosted(server),
            "--seed",
            "7",
            "--out",
            str(first),
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        asked = len(server.requests_to("/v1/chat/completions"))
    # The server is gone; the folder names its URL and key variable, which must not be used:
    # the replay is run with no provider settings and no key at all.
    replay = run_cli("--replay", str(first), *OFFLINE, "--out", str(again), "--json", env=env, cwd=tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert asked >= 8
    a, b = manifest(first), manifest(again)
    assert b["replay_of"] == str(first) and b["seed"] == 7 and b["prompt"] == a["prompt"]
    assert b["prompts"] == a["prompts"]
    assert b["stages"]["tags"]["positive"] == a["stages"]["tags"]["positive"]
    assert b["stages"]["critique"]["refinement_prompt"] == a["stages"]["critique"]["refinement_prompt"]
    assert [c["text"] for c in b["stages"]["tags"]["candidates"]] == [
        c["text"] for c in a["stages"]["tags"]["candidates"]
    ]
    assert all(c["from"] == "replay" for c in b["stages"]["tags"]["candidates"] if c["model"] != "rules")
    for image in ("base.png", "refined.png"):
        assert (again / image).read_bytes() == (first / image).read_bytes()
    ledger = json.loads(replay.stdout)["ledger"]
    assert ledger["total"]["free"] == ledger["total"]["calls"] > 0 and ledger["total"]["tokens_in"] == 0
    assert "answered (replayed)" in replay.stderr and "cannot reach" not in replay.stderr


def test_the_answer_cache_saves_the_second_request_and_says_so(env, tmp_path):
    env = dict(env, **{KEY_VAR: KEY_VALUE}, XDG_CACHE_HOME=str(tmp_path / "cache"))
    with LoopbackServer() as server:
        script_models(server)
        url = server.url
        args = [*OFFLINE, *hosted(server, "--set", "criticore.cache=read-write")]
        first = run_cli("a red fox in a forest", *args, "--out", str(tmp_path / "one"), env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
        asked = len(server.requests_to("/v1/chat/completions"))
        second = run_cli("a red fox in a forest", *args, "--out", str(tmp_path / "two"), env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stdout + second.stderr
        assert len(server.requests_to("/v1/chat/completions")) == asked  # not one request more
    assert "answered from the cache" in second.stdout
    one, two = manifest(tmp_path / "one"), manifest(tmp_path / "two")
    assert two["prompts"] == one["prompts"]
    # The two listings of together:a are kept apart in the cache too.
    assert all(c["text"].startswith('{"components"') for c in one["stages"]["components"]["candidates"][::2])
    texts = [c["text"] for c in two["stages"]["tags"]["candidates"]]
    assert texts[0] != texts[2] and texts == [c["text"] for c in one["stages"]["tags"]["candidates"]]
    assert two["ledger"]["summary"]["total"]["free"] == two["ledger"]["summary"]["total"]["calls"]
    entries = list((tmp_path / "cache" / "critifusion" / "answers").rglob("*.json"))
    assert entries and all(KEY_VALUE not in p.read_text() and url not in p.read_text() for p in entries)
