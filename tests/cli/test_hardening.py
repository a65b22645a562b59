"""`critifusion run` against an attacker and a careless user (issue 10), through the real
command: crafted run folders, a server that echoes the key, drips or floods, user files in
the way, faults (disk full, signals, broken inputs). Each case ends in a clear message with
nothing lost, and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_run import OFFLINE, manifest, run_cli, start_cli, wait_for
from tests.loopback import KEY_VALUE, KEY_VAR, LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
FAULT_RUNNER = Path(__file__).with_name("fault_runner.py")
AWS_VALUE = "aws-secret-never-sent-0000"


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One complete offline run (tiny model, rules), copied by each test that crafts from it."""
    base = tmp_path_factory.mktemp("finished")
    environ = {
        k: v for k, v in os.environ.items() if k not in ("CRITIFUSION_CONFIG", "TOGETHER_API_KEY", "OLLAMA_HOST")
    }
    environ.update(XDG_CONFIG_HOME=str(base / "xdg"), HF_HUB_OFFLINE="1", HF_HOME=str(base / "hf"))
    out = base / "run"
    proc = run_cli("a red fox", *OFFLINE, "--out", str(out), env=environ, cwd=base)
    assert proc.returncode == 0, proc.stderr
    return out


def copy_run(finished_run: Path, tmp_path: Path, *, keep=("tags", "components", "base")) -> Path:
    """A copy of the finished run with only `keep` done: resuming it runs the rest."""
    folder = tmp_path / "copy"
    shutil.copytree(finished_run, folder)
    m = manifest(folder)
    m["stages"] = {k: v for k, v in m["stages"].items() if k in keep}
    m["status"] = "running"
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def crafted(tmp_path: Path, stages=None, **fields) -> Path:
    """A hand-made run folder: a valid manifest with `fields` and `stages` as given."""
    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "base.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    data = {
        "schema": "critifusion.run/1",
        "prompt": "a fox",
        "seed": 1,
        "status": "running",
        "config": {},
        "edits": [],
        "prompts": {},
        "stages": stages
        if stages is not None
        else {
            "base": {
                "status": "done",
                "image": "base.png",
                "latent": "base_latent.safetensors",
                "prompt": "a fox",
                "negative": "",
            },
        },
    }
    data.update(fields)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def base_stage(**fields) -> dict:
    return {
        "base": {
            "status": "done",
            "image": "base.png",
            "latent": "base_latent.safetensors",
            "prompt": "a fox",
            "negative": "",
            **fields,
        }
    }


# --- 1. a run folder from elsewhere is data ---------------------------------------------------


CRAFTED_CASES = {
    "dotdot-image": (
        dict(stages=base_stage(image="../../../../../../etc/passwd")),
        "stages.base.image",
        "leaves the run folder",
    ),
    "absolute-image": (dict(stages=base_stage(image="/etc/passwd")), "stages.base.image", "not a path inside"),
    "absolute-latent": (dict(stages=base_stage(latent="/dev/zero")), "stages.base.latent", "not a path inside"),
    "manifest-a-list": ("LIST", "expected a JSON object", ""),
    "stages-a-string": (dict(stages="done"), "stages", "expected an object"),
    "stage-a-list": (dict(stages={"base": [1, 2]}), "stages.base", "expected an object"),
    "seed-past-2-63": (dict(seed=2**64), "seed", "from 0 to"),
    "seed-negative": (dict(seed=-1), "seed", "from 0 to"),
    "prompt-missing": (dict(prompt=None), "prompt", "expected"),
    "unknown-status": (dict(status="pwned"), "status", "expected"),
    "base-without-latent": (
        dict(stages={"base": {"status": "done", "image": "base.png", "prompt": "a", "negative": ""}}),
        "stages.base.latent",
        "missing",
    ),
    "prompts-wrong-shape": (dict(prompts={"positive": "x"}), "prompts.positive", "expected"),
    "escape-in-file-name": (
        dict(stages=base_stage(image="a\x1b]0;t\x07.png")),
        "stages.base.image",
        "control characters",
    ),
    "schema-other": (dict(schema="evil/9"), "schema", "is not"),
    "schema-newer": (
        dict(schema="critifusion.run/2"),
        "made by a newer critifusion-tui (schema critifusion.run/2)",
        "upgrade",
    ),
    "width-not-a-number": (
        dict(stages=base_stage(width="x")),
        "stages.base.width: expected a whole number, got 'x'",
        "",
    ),
    "ledger-call-not-an-object": (dict(ledger={"calls": ["x"]}), "ledger.calls[0]: expected an object", ""),
    "provider-url-with-escape": (
        dict(config={"criticore": {"vlms": ["ollama:x\x1b]52;c;ZXZpbA==\x07"]}}),
        "control characters",
        "",
    ),
    "guidance-infinite": (dict(config={"diffusion": {"guidance": float("inf")}}), "diffusion.guidance", "finite"),
}


@pytest.mark.parametrize("case", list(CRAFTED_CASES))
def test_a_crafted_run_folder_is_refused_naming_the_field(env, tmp_path, case):
    fields, named, reason = CRAFTED_CASES[case]
    if fields == "LIST":
        folder = crafted(tmp_path)
        (folder / "manifest.json").write_text("[1, 2, 3]")
    else:
        folder = crafted(tmp_path, **fields)
    before = (folder / "manifest.json").read_bytes()
    proc = run_cli("--resume", str(folder), env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr and reason in proc.stderr, proc.stderr
    assert "root:" not in proc.stdout + proc.stderr  # /etc/passwd never read
    assert "\x1b" not in proc.stdout + proc.stderr
    assert (folder / "manifest.json").read_bytes() == before  # nothing ran, nothing written
    no_traceback(proc)


def test_out_naming_an_unreadable_or_another_prompts_run_is_refused(env, tmp_path):
    folder = crafted(tmp_path, stages=base_stage(width="x"))
    proc = run_cli("a fox", *OFFLINE, "--out", str(folder), env=env, cwd=tmp_path)
    assert proc.returncode == 1 and f"cannot resume {folder}" in proc.stdout, proc.stdout + proc.stderr
    assert "stages.base.width: expected a whole number, got 'x'" in proc.stdout
    (tmp_path / "other").mkdir()
    folder = crafted(tmp_path / "other", stages={})
    proc = run_cli("a whale", *OFFLINE, "--out", str(folder), env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "holds another prompt's run" in proc.stdout, proc.stdout + proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize("what", ["link-out", "directory", "device", "huge"])
def test_files_that_are_links_out_directories_devices_or_huge_are_refused(env, tmp_path, what):
    folder = crafted(tmp_path, stages=base_stage())
    (folder / "base.png").unlink()
    if what == "link-out":
        secret = tmp_path / "secret.txt"
        secret.write_text("root:x:0:0")
        (folder / "base.png").symlink_to(secret)
        reason = "link that leaves the run folder"
    elif what == "directory":
        (folder / "base.png").mkdir()
        reason = "not a regular file"
    elif what == "device":
        os.symlink("/dev/zero", folder / "base.png")
        reason = "link that leaves the run folder"
    else:
        with open(folder / "base.png", "wb") as handle:
            handle.truncate(200 * 2**20)  # sparse: costs no disk
        reason = "over the"
    proc = run_cli("--resume", str(folder), env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "stages.base.image" in proc.stderr and reason in proc.stderr, proc.stderr
    no_traceback(proc)


def test_a_resumed_run_uses_the_current_providers_and_cleans_temp_files(env, tmp_path, finished_run):
    folder = copy_run(finished_run, tmp_path)
    m = manifest(folder)
    # The folder asks for a hosted critic, on its own server, with another variable's value.
    m["config"]["criticore"]["vlms"] = ["together:critic"]
    m["config"]["providers"]["together"].update(base_url="http://127.0.0.2:9", api_key_env="AWS_SECRET_ACCESS_KEY")
    (folder / "manifest.json").write_text(json.dumps(m))
    leftover = folder / ".manifest.json.abc123.tmp"
    leftover.write_bytes(b"x" * 4096)  # what a kill during a write leaves
    with LoopbackServer() as server:
        server.script("critic", text="<issues>- none</issues><refined>a red fox, forest</refined>")
        proc = run_cli(
            "--resume",
            str(folder),
            "--set",
            f"providers.together.base_url='{server.url}'",
            "--set",
            f"providers.together.api_key_env={KEY_VAR}",
            "--set",
            "providers.together.max_retries=0",
            env=dict(env, **{KEY_VAR: KEY_VALUE, "AWS_SECRET_ACCESS_KEY": AWS_VALUE}),
            cwd=tmp_path,
        )
        sent = [r.headers.get("authorization") for r in server.requests_to("/v1/chat/completions")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sent == [f"Bearer {KEY_VALUE}"]  # our server, our key: never the folder's
    notice = next(line for line in proc.stdout.splitlines() if "recorded other provider settings" in line)
    assert "providers.together.api_key_env" in notice and "providers.together.base_url" in notice
    assert "current configuration's" in notice
    assert not leftover.exists() and manifest(folder)["status"] == "done"
    assert AWS_VALUE not in proc.stdout + proc.stderr + (folder / "manifest.json").read_text()


# --- 2. secrets never leave ---------------------------------------------------------------------


def test_an_echoed_key_and_url_credentials_never_reach_the_terminal_manifest_or_json(env, tmp_path):
    ollama_key = "ollama-secret-key-7777"
    with LoopbackServer() as server:
        server.script("t-http", status=500, echo_auth=True)
        server.script("t-stream", echo_auth=True)
        server.script("o-stream", echo_auth=True)
        server.script("o-http", status=400, echo_auth=True)
        server.script("oa-http", status=400, echo_auth=True)
        plain_url = server.openai_url
        openai_url = plain_url.replace("http://", "http://user:hunter2pass@")
        out = tmp_path / "echo"
        proc = run_cli(
            "a red fox",
            *OFFLINE,
            "--out",
            str(out),
            "--json",
            "--set",
            f"providers.together.base_url='{server.url}'",
            "--set",
            f"providers.together.api_key_env={KEY_VAR}",
            "--set",
            "providers.together.max_retries=0",
            "--set",
            f"providers.ollama.host='{server.url}'",
            "--set",
            f"providers.openai.base_url='{openai_url}'",
            "--set",
            f"providers.openai.api_key_env={KEY_VAR}",
            "--set",
            "providers.openai.max_retries=0",
            "--set",
            "criticore.candidates=['together:t-http', 'together:t-stream', 'ollama:o-stream', 'ollama:o-http', 'openai:oa-http']",
            env=dict(env, **{KEY_VAR: KEY_VALUE, "OLLAMA_API_KEY": ollama_key}),
            cwd=tmp_path,
        )
        echoed = sum(
            KEY_VALUE in r.headers.get("authorization", "") or ollama_key in r.headers.get("authorization", "")
            for r in server.requests
        )
    assert echoed >= 5  # every candidate's server had a key to echo back
    no_traceback(proc)
    seen = (
        proc.stdout + proc.stderr + "".join(p.read_text(errors="replace") for p in out.iterdir() if p.suffix == ".json")
    )
    for secret in (KEY_VALUE, ollama_key, "hunter2pass"):
        assert secret not in seen
    assert "Authorization: Bearer ***" in proc.stderr  # the echo came back, masked
    config = manifest(out)["config"]["providers"]["openai"]
    assert config["base_url"] == plain_url  # recorded without user info


# --- 3. bounded work ------------------------------------------------------------------------------


def test_a_dripping_and_a_flooding_server_are_bounded(env, tmp_path):
    big = "fox, " * 400_000  # 2 MB of answer
    with LoopbackServer() as server:
        server.script("drip", chunks=["fox, "] * 200, chunk_delay=0.5)
        server.script("flood", chunks=[big[i : i + 100_000] for i in range(0, len(big), 100_000)])
        out = tmp_path / "bounded"
        started = time.perf_counter()
        proc = run_cli(
            "a red fox",
            *OFFLINE,
            "--out",
            str(out),
            "--set",
            f"providers.together.base_url='{server.url}'",
            "--set",
            f"providers.together.api_key_env={KEY_VAR}",
            "--set",
            "providers.together.max_retries=0",
            "--set",
            "providers.together.timeout_s=3",
            "--set",
            "criticore.candidates=['together:drip', 'together:flood']",
            env=dict(env, **{KEY_VAR: KEY_VALUE}),
            cwd=tmp_path,
        )
        elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 60  # the drip alone would hold the run 100 s
    assert "no complete answer within 3 s" in proc.stdout
    size = (out / "manifest.json").stat().st_size
    assert size < 200_000, size  # a 2 MB answer is never kept whole
    tags = manifest(out)["stages"]["tags"]["candidates"]
    flood = next(c for c in tags if c["model"] == "together:flood")
    assert any("was cut at" in note for note in flood.get("notes", [])), flood.get("notes")


# --- 5. files -----------------------------------------------------------------------------------------


def test_out_refuses_a_users_folder_unless_forced(env, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "base.png").write_bytes(b"my holiday")
    proc = run_cli("a fox", *OFFLINE, "--out", str(folder), env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "is not empty and holds no run" in proc.stderr and "--force" in proc.stderr
    assert (folder / "base.png").read_bytes() == b"my holiday" and not (folder / "manifest.json").exists()
    link = tmp_path / "link"
    link.symlink_to(folder)
    proc = run_cli("a fox", *OFFLINE, "--out", str(link), "--force", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    forced = run_cli("a fox", *OFFLINE, "--out", str(folder), "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert manifest(folder)["status"] == "done"


def test_a_symlink_named_like_a_batch_folder_is_not_written_through(env, tmp_path):
    from critifusion_tui.headless import batch_folder

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    out = tmp_path / "batch"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    batch_folder(out, 1, "a red fox").symlink_to(victim)
    proc = run_cli("--prompts", str(prompts), *OFFLINE, "--out", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "symbolic link" in proc.stdout, proc.stdout + proc.stderr
    assert list(victim.iterdir()) == []
    no_traceback(proc)


def test_an_edited_batch_line_is_new_work(env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    long = "a very long prompt about a red fox in a pine forest at dawn"
    prompts.write_text(f"{long}, oil\n")
    out = tmp_path / "batch"
    assert run_cli("--prompts", str(prompts), *OFFLINE, "--out", str(out), env=env, cwd=tmp_path).returncode == 0
    prompts.write_text(f"{long}, watercolour\n")  # same line, same first 40 characters
    second = run_cli("--prompts", str(prompts), *OFFLINE, "--out", str(out), "--json", env=env, cwd=tmp_path)
    assert second.returncode == 0 and "already done" not in second.stdout + second.stderr
    assert json.loads(second.stdout)[0]["prompt"] == f"{long}, watercolour"
    # Two run folders (beside the batch's claims, launch reports and summary).
    assert len([p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 2


# --- 6. faults end in messages ----------------------------------------------------------------------


@pytest.mark.parametrize("code, words", [("ENOSPC", "the disk is full"), ("EROFS", "read-only")])
def test_disk_full_or_read_only_ends_in_a_message_with_the_done_stages_kept(env, tmp_path, code, words):
    out = tmp_path / "full"
    # fsync fails from the 4th call on: the folder, tags and components are written first.
    proc = subprocess.run(
        [sys.executable, str(FAULT_RUNNER), code, "3", "run", "a red fox", *OFFLINE, "--out", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert words in proc.stdout, proc.stdout
    no_traceback(proc)
    m = manifest(out)
    assert {k for k, v in m["stages"].items() if v["status"] == "done"} >= {"tags", "components"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["   "], "the prompt is empty"),
        (["a fox", "--seed", str(2**63)], "below 2**63"),
        (["a fox", "--set", "diffusion.guidance=inf"], "diffusion.guidance: Input should be a finite number"),
        (["a fox", "--set", "specfusion.noise_std=nan"], "specfusion.noise_std: Input should be a finite number"),
        (["a fox", "--set", "specfusion.rho_t=-inf"], "specfusion.rho_t"),
        (["a fox", "--set", f"diffusion.seed={2**63}"], "diffusion.seed"),
        (["a fox", "--set", 'criticore.vlms=["ollama:llava\\u001b]0;pwned\\u0007"]'], "control characters"),
    ],
)
def test_bad_values_are_usage_errors(env, tmp_path, args, message):
    proc = run_cli(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "\x1b" not in proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no prompts"),
        (b"# only a comment\n\n   \n", "holds no prompts"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text"),
        (b"a caf\xe9 in Paris\n", "not UTF-8 text"),
        ("a fox\n".encode("utf-16-le"), "a binary file"),  # UTF-16 without its BOM
    ],
)
def test_prompt_files_that_are_not_text_say_so(env, tmp_path, content, message):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    proc = run_cli("--prompts", str(path), env=env, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    no_traceback(proc)


def test_deep_toml_and_a_bom_in_the_config(env, tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    proc = run_cli("a fox", "--config", str(deep), env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "nested too deeply" in proc.stderr, proc.stderr
    no_traceback(proc)
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufeff[diffusion]\nsteps = 0\n".encode("utf-8"))
    proc = run_cli("a fox", "--config", str(bom), env=env, cwd=tmp_path)
    # The BOM is read past: the file's own error (steps = 0) is what is reported.
    assert proc.returncode == 2 and "diffusion.steps" in proc.stderr and "syntax" not in proc.stderr, proc.stderr


def test_an_over_long_out_path_is_a_message(env, tmp_path):
    proc = run_cli("a fox", *OFFLINE, "--out", str(tmp_path / ("x" * 300)), env=env, cwd=tmp_path)
    assert proc.returncode in (1, 2) and "too long" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_end_a_run_like_ctrl_c(env, tmp_path, sig, status):
    out = tmp_path / "stopped"
    proc = start_cli("a red fox", *OFFLINE, "--set", "diffusion.steps=1000", "--out", str(out), env=env, cwd=tmp_path)
    try:
        wait_for(lambda: "tags" in manifest(out)["stages"] and "components" in manifest(out)["stages"])
        time.sleep(1.0)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    assert f"stopped by {sig.name}" in stderr and f"critifusion run --resume {out}" in stderr
    assert "Traceback" not in stderr
    assert manifest(out)["status"] == "cancelled"


@pytest.mark.parametrize("latent, message", [("nan", "NaN or infinite"), ("size", "belongs to another run")])
def test_a_nan_or_wrong_size_latent_is_refused(env, tmp_path, finished_run, latent, message):
    import torch
    from safetensors.torch import save_file

    folder = copy_run(finished_run, tmp_path, keep=("tags", "components", "base", "critique"))
    if latent == "nan":
        tensor = torch.full((1, 4, 8, 8), float("nan"))
    else:
        tensor = torch.randn(1, 4, 128, 128)  # a 1024 px latent in a 64 px run
    save_file({"latent": tensor}, str(folder / "base_latent.safetensors"))
    proc = run_cli("--resume", str(folder), env=env, cwd=tmp_path)
    assert proc.returncode == 1 and message in proc.stdout, proc.stdout + proc.stderr
    assert manifest(folder)["stages"]["refine"]["status"] == "failed"
    no_traceback(proc)


# --- 4. one sanitiser for outside text ---------------------------------------------------------------


def test_doctor_shows_a_hostile_catalogue_without_its_escapes(env, tmp_path):
    from tests.cli.test_doctor_providers import roles
    from tests.cli.test_doctor_providers import run as doctor_run

    with LoopbackServer() as server:
        # Close to the configured name, so doctor offers them as "closest:".
        server.add_model("llava-evil\x1b]0;owned title\x07")
        server.add_model("llava\x1b]52;c;ZXZpbA==\x07-clip")
        server.add_model("llava-good")
        proc = doctor_run(server, *roles(["rules"], ["rules"], ["ollama:llava"]), env=env, cwd=tmp_path)
    line = next(line for line in proc.stdout.splitlines() if "closest:" in line)
    assert "llava-evil" in line and "llava-good" in line  # the names are still shown...
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout  # ...without their escapes
    assert "owned title" not in proc.stdout and "ZXZpbA" not in proc.stdout
