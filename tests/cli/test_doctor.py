"""`critifusion doctor` tells the truth about this machine and never shows a secret."""

from __future__ import annotations

import subprocess
import sys

from tests.loopback import unused_port

OFFLINE_ROLES = [
    "--set",
    "criticore.candidates=['rules']",
    "--set",
    "criticore.aggregator=rules",
    "--set",
    "criticore.vlms=['rules']",
]


def doctor(*args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", "doctor", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_report_covers_system_config_roles_model_terminal(env, tmp_path):
    proc = doctor(env=env, cwd=tmp_path)
    out = proc.stdout
    import torch  # the report must agree with what this interpreter really has

    assert f"torch            {torch.__version__}" in out
    assert f"python           {sys.version.split()[0]}" in out
    if not torch.cuda.is_available():
        assert "cuda             not available" in out
    assert "config           built-in defaults" in out
    # Seven Together models and no key exported: one failure that says how many need it.
    assert (
        "$TOGETHER_API_KEY is not set (needed by 7 model(s) in candidates, aggregator, vlms);"
        " export your Together key" in out
    )
    assert out.count("TOGETHER_API_KEY") == 1
    # Without a key the catalogue is not asked for (the key line has already failed).
    assert "together         catalogue not checked: no key" in out
    assert "stabilityai/stable-diffusion-xl-base-1.0 is not in the Hugging Face cache" in out
    assert "downloads are off (HF_HUB_OFFLINE=1" in out
    assert "not run in a terminal: detection skipped" in out
    assert proc.returncode == 1 and "problem(s) found" in out


def test_key_variables_are_reported_never_shown(env, tmp_path):
    env = dict(env, TOGETHER_API_KEY="sk-very-secret-value")
    # With a key, doctor asks Together for its catalogue: here a loopback port nobody
    # listens on, never the real service.
    root = f"http://127.0.0.1:{unused_port()}"
    proc = doctor("--set", f"providers.together.base_url='{root}'", env=env, cwd=tmp_path)
    assert "$TOGETHER_API_KEY is set (needed by 7 model(s)" in proc.stdout
    assert "sk-very-secret-value" not in proc.stdout + proc.stderr
    # An unreachable service is one line with what to do, not a traceback per model.
    assert (
        f"catalogue not checked: cannot reach Together at {root};"
        " check the network connection and providers.together.base_url" in proc.stdout
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1


def test_offline_setup_passes(env, tmp_path):
    proc = doctor(*OFFLINE_ROLES, "--set", "diffusion.model=tiny-random", env=env, cwd=tmp_path)
    assert "offline rules: preset tags, prompt clauses, no-op critic" in proc.stdout
    assert "tiny-random: built in, offline; a tiny random SDXL, its images are noise" in proc.stdout
    assert proc.returncode == 0, proc.stdout
    assert "All checks passed." in proc.stdout


def test_local_model_folder_and_single_file(env, tmp_path):
    # Only the messages; every real layout (cache, folder, single file) is in test_model_matrix.
    folder = tmp_path / "my-sdxl"
    folder.mkdir()
    proc = doctor(*OFFLINE_ROLES, "--set", f"diffusion.model='{folder}'", env=env, cwd=tmp_path)
    assert f"{folder} is not a diffusers pipeline folder (no model_index.json)" in proc.stdout
    assert proc.returncode == 1
    (folder / "model_index.json").write_text("{}")  # `run` cannot load this: neither may doctor
    proc = doctor(*OFFLINE_ROLES, "--set", f"diffusion.model='{folder}'", env=env, cwd=tmp_path)
    assert "holds an unknown pipeline" in proc.stdout and proc.returncode == 1
    proc = doctor(*OFFLINE_ROLES, "--set", f"diffusion.model='{tmp_path}/x.safetensors'", env=env, cwd=tmp_path)
    assert "x.safetensors does not exist" in proc.stdout and proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr


def terminal_report(images: str, replies: str, monkeypatch, **environ) -> str:
    """Doctor's Terminal section for a terminal that answers `replies` (see tests/test_graphics)."""
    from critifusion_tui.config import Settings
    from critifusion_tui.doctor import render, terminal_checks
    from critifusion_tui.graphics import parse_replies

    for name in ("TERM_PROGRAM", "TERM_PROGRAM_VERSION", "KITTY_WINDOW_ID", "TMUX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = Settings.model_validate({"tui": {"images": images}})
    return render([("Terminal", terminal_checks(settings, parse_replies(replies)))])


def test_doctor_says_which_image_mode_the_app_will_use_and_why(monkeypatch):
    from tests.test_graphics import KITTY_026, KITTY_035, XTERM, XTERM_VT340

    kitty_026 = terminal_report("auto", KITTY_026, monkeypatch)
    # Debian 12's kitty answers the kitty graphics query, then draws tofu: not "detected".
    assert "terminal         kitty 0.26.5 (named by XTVERSION)" in kitty_026
    assert (
        "images           half-blocks: kitty 0.26.5 cannot draw kitty graphics' Unicode placeholders "
        "(they need kitty 0.28 or newer; upgrade it)"
    ) in kitty_026
    assert "detected" not in kitty_026
    assert "images           kitty graphics: kitty 0.35.2 draws kitty graphics" in terminal_report(
        "auto", KITTY_035, monkeypatch
    )
    assert "images           Sixel: xterm 379 lists Sixel in its device attributes" in terminal_report(
        "auto", XTERM_VT340, monkeypatch
    )
    assert "images           half-blocks: xterm 379 reports neither Sixel nor kitty graphics" in terminal_report(
        "auto", XTERM, monkeypatch
    )
    silent = terminal_report("auto", "", monkeypatch)
    assert "no answer to the graphics queries" in silent
    assert "images           half-blocks: the terminal did not answer the graphics queries" in silent


def test_doctor_says_a_forced_protocol_the_terminal_lacks_falls_back(monkeypatch):
    from tests.test_graphics import XTERM, XTERM_VT340

    refused = terminal_report("sixel", XTERM, monkeypatch)
    assert (
        "images           half-blocks: tui.images = sixel, but xterm 379 does not list Sixel in its "
        "device attributes; the app falls back to half-blocks (--images sixel refuses to start)"
    ) in refused
    assert "images           Sixel: as set (tui.images = sixel)" in terminal_report("sixel", XTERM_VT340, monkeypatch)
    # Named by the environment where the terminal does not say (TERM_PROGRAM_VERSION).
    named = terminal_report(
        "auto", "\x1b_Gi=4243;OK\x1b\\\x1b[?62;c", monkeypatch, TERM_PROGRAM="kitty", TERM_PROGRAM_VERSION="0.26.5"
    )
    assert "terminal         kitty 0.26.5 (named by TERM_PROGRAM)" in named and "half-blocks" in named
