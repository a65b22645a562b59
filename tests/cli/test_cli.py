"""The `critifusion` command as a user runs it: exit codes, messages, and what it imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from critifusion_tui.cli import _with_default_command

HEAVY = ("torch", "diffusers", "transformers", "textual_image", "textual", "accelerate")


def critifusion(*args: str, env: dict, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def imported_modules(args: list[str], env: dict, cwd: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    """Top-level packages imported while running the command (python -X importtime)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "critifusion_tui", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names, proc


def test_help_answers_without_heavy_imports(env, tmp_path):
    names, proc = imported_modules(["--help"], env, tmp_path)
    assert proc.returncode == 0
    assert "usage: critifusion" in proc.stdout and "doctor" in proc.stdout
    assert not names & set(HEAVY), names & set(HEAVY)
    assert "pydantic" not in names  # --help does not even read the configuration


def test_run_help_answers_without_heavy_imports(env, tmp_path):
    # The batch options live behind `run`; their launcher support (accelerate) loads only
    # inside a launched batch.
    names, proc = imported_modules(["run", "--help"], env, tmp_path)
    assert proc.returncode == 0 and "--summary DIR" in proc.stdout
    assert not names & set(HEAVY), names & set(HEAVY)


def test_config_error_answers_without_heavy_imports(env, tmp_path):
    (tmp_path / "config.toml").write_text("[diffusion]\nsteps = 'x'\n")
    names, proc = imported_modules(["run", "a fox"], env, tmp_path)
    assert proc.returncode == 2
    assert not names & set(HEAVY), names & set(HEAVY)


def test_version(env, tmp_path):
    proc = critifusion("--version", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("critifusion-tui ")


@pytest.mark.parametrize("command", [["run", "a fox"], ["doctor"], ["a fox"], []])
def test_config_errors_exit_2_with_one_message_and_no_traceback(env, tmp_path, command):
    path = tmp_path / "config.toml"
    path.write_text("[diffusion]\nsteps = 12\nstpes = 3\n")
    proc = critifusion(*command, env=env, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    if command == ["doctor"]:
        # doctor reports the problem among its checks and carries on with defaults.
        assert proc.returncode == 1
        assert f"{path}:3: unknown key 'diffusion.stpes'" in proc.stdout
    else:
        assert proc.returncode == 2
        assert f"{path}:3: unknown key 'diffusion.stpes' (did you mean 'steps'?)" in proc.stderr


def test_usage_errors_exit_2(env, tmp_path):
    assert critifusion("run", env=env, cwd=tmp_path).returncode == 2
    proc = critifusion("run", "a fox", "--set", "nonsense", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "expected section.key=value" in proc.stderr
    assert critifusion("run", "a fox", "--config", str(tmp_path / "nope.toml"), env=env, cwd=tmp_path).returncode == 2


def test_options_before_the_subcommand_reach_it(env, tmp_path):
    proc = critifusion("--set", "diffusion.stpes=1", "run", "a fox", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "--set diffusion.stpes=1: unknown key" in proc.stderr


def test_app_without_a_terminal_says_so(env, tmp_path):
    proc = critifusion("a fox", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "the app needs a terminal" in proc.stderr


def test_python_dash_m_and_console_script_agree(env, tmp_path):
    script = Path(sys.executable).with_name("critifusion")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    proc = subprocess.run([str(script), "--version"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.stdout == critifusion("--version", env=env, cwd=tmp_path).stdout


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ["tui"]),
        (["a fox"], ["tui", "a fox"]),
        (["run", "a fox"], ["run", "a fox"]),
        (["--set", "run=1", "run", "x"], ["run", "--set", "run=1", "x"]),
        (["-c", "doctor", "doctor"], ["doctor", "-c", "doctor"]),
        (["--config", "c.toml", "a fox"], ["tui", "--config", "c.toml", "a fox"]),
        (["--help"], ["--help"]),
        (["--version"], ["--version"]),
        (["doctor", "--offline"], ["doctor", "--offline"]),
    ],
)
def test_default_command_is_the_app(argv, expected):
    assert _with_default_command(argv) == expected
