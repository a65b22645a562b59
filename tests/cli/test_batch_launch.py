"""Batches across processes, launched the way the README says: `accelerate launch` with two
processes on the CPU, every prompt exactly once, a kill and a relaunch, a stale claim.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.16 runs --cpu
jobs through its simple launcher; several CPU processes need an MPI hostfile), so two CPU
processes are launched with `--multi_gpu`, which is torchrun underneath and works without
GPUs: the command a GPU server runs, unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.test_run import run_cli, wait_for

SMALL = [
    "--demo",
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
PROMPTS = ["a red fox", "a blue whale", "a green frog", "a grey cat", "a brown dog", "a white bird"]


def free_port() -> int:
    # accelerate's default port (29500) is shared by every launch on the machine.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_cmd(prompts: Path, out: Path, *extra: str) -> list[str]:
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        "-m",
        "critifusion_tui",
        "run",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]


def launch(prompts, out, *extra, env, cwd, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        launch_cmd(prompts, out, *extra),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def manifests(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(out.glob("*/manifest.json")):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except ValueError:
            pass  # being replaced this instant
    return found


def prompt_file(tmp_path) -> Path:
    path = tmp_path / "p.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def test_two_processes_finish_every_prompt_exactly_once(env, tmp_path):
    out = tmp_path / "batch"
    proc = launch(prompt_file(tmp_path), out, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = manifests(out)
    assert len(runs) == 6 and all(m["status"] == "done" for m in runs.values())
    # Exactly once: one process stamped each run, and each prompt's stages ran one time.
    assert all(len(m["ran_by"]) == 1 for m in runs.values())
    assert {m["ran_by"][0]["rank"] for m in runs.values()} == {0, 1}  # both took a share
    assert sum(proc.stdout.count(f"[rank {r}] [base] started") for r in (0, 1)) == 6
    assert not list((out / ".claims").glob("*.claim"))  # all released
    summary = json.loads((out / "batch-summary.json").read_text())
    assert summary["done"] == 6 and summary["failed"] == [] and summary["skipped"] == 0
    assert summary["launch"]["done"] == 6 and summary["launch"]["images_per_hour"] > 0
    assert sorted(p["rank"] for p in summary["launch"]["processes"]) == [0, 1]
    # `--summary` afterwards says the same.
    again = run_cli("--summary", str(out), env=env, cwd=tmp_path)
    assert again.returncode == 0 and "batch: 6/6 done" in again.stdout


def test_a_killed_process_then_a_relaunch_finishes_without_redoing_finished_stages(env, tmp_path):
    prompts, out = prompt_file(tmp_path), tmp_path / "batch"
    # Slow base images (300 steps), so the kill lands inside a prompt.
    cmd = launch_cmd(prompts, out, "--set", "diffusion.steps=300")
    first = subprocess.Popen(
        cmd,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def victim():
            runs = manifests(out)
            if not any(m["status"] == "done" for m in runs.values()):
                return None
            for claim in (out / ".claims").glob("*.claim"):
                name = claim.name[: -len(".claim")]
                stages = runs.get(name, {}).get("stages", {})
                # Inside the base stage: both text stages saved (they run concurrently, so
                # "tags" alone can be seen while "components" is still being written).
                if {"tags", "components"} <= set(stages) and "base" not in stages:
                    return name, json.loads(claim.read_text())["pid"]
            return None

        wait_for(lambda: victim() is not None, timeout=180)
        name, pid = victim()
        os.kill(pid, signal.SIGKILL)
        first.wait(60)  # the launcher stops the other process when one dies
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
    assert first.returncode != 0
    before = manifests(out)
    killed = before[name]
    assert killed["status"] == "running" and set(killed["stages"]) == {"tags", "components"}
    assert json.loads((out / ".claims" / f"{name}.claim").read_text())["pid"] == pid  # left behind
    finished = {n: m for n, m in before.items() if m["status"] == "done"}
    assert finished

    second = launch(prompts, out, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = manifests(out)
    assert len(after) == 6 and all(m["status"] == "done" for m in after.values())
    for done_name, manifest in finished.items():
        assert after[done_name] == manifest  # not touched again
    resumed = after[name]
    assert resumed["stages"]["tags"] == killed["stages"]["tags"]  # kept, not rerun
    assert resumed["stages"]["components"] == killed["stages"]["components"]
    assert resumed["ran_by"][-1]["took_over_from"]["pid"] == pid
    assert f"took over {name}" in second.stdout
    summary = json.loads((out / "batch-summary.json").read_text())
    assert summary["done"] == 6 and summary["skipped"] == len(finished)


def test_a_stale_claim_of_a_dead_process_is_taken_over(env, tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "batch"
    prompts.write_text("a red fox\na blue whale\n")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    from critifusion_tui.headless import batch_folder

    # Batch folders are named by line number, slug and a hash of the prompt text.
    fox, whale = batch_folder(out, 1, "a red fox").name, batch_folder(out, 2, "a blue whale").name
    claims = out / ".claims"
    claims.mkdir(parents=True)
    (claims / f"{fox}.claim").write_text(
        json.dumps({"rank": 1, "host": socket.gethostname(), "pid": gone.pid, "launch": "old", "since": "earlier"})
    )
    # Another machine's claim, silent for an hour: its heartbeat stopped, so it is stale too.
    old = claims / f"{whale}.claim"
    old.write_text(json.dumps({"rank": 3, "host": "elsewhere", "pid": 77, "launch": "old", "since": "earlier"}))
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    proc = run_cli("--prompts", str(prompts), "--out", str(out), *SMALL, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"took over {fox} from rank 1" in proc.stdout
    assert f"took over {whale} from rank 3 on elsewhere" in proc.stdout
    for run in manifests(out).values():
        assert run["status"] == "done" and run["ran_by"][0]["rank"] == 0
    assert not list(claims.glob("*.claim"))
