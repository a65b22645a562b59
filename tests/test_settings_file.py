"""save_settings edits a person's config.toml in place: comments, order and other keys stay,
bad values and secrets never reach the disk, and load_config reads back what was saved."""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest

from critifusion_tui.config import ConfigError, LoadedConfig, Settings, load_config
from critifusion_tui.settings_file import HEADER, default_save_path, save_settings

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"

SMALL = """\
# My settings.  Hand-written; keep this line.

[diffusion]
# the model I use
model = "tiny-random"
seed = 11  # lucky
steps = 20

[criticore]
candidates = [
  "rules",  # offline
  "ollama:llama3",
]
vlms = ["rules"]
"""


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(SMALL, encoding="utf-8")
    return path


def test_changes_one_value_and_keeps_every_comment_and_key(small: Path):
    save_settings({"diffusion.seed": 7}, small)
    text = small.read_text(encoding="utf-8")
    assert text == SMALL.replace("seed = 11  # lucky", "seed = 7  # lucky")


def test_documented_config_keeps_comments_and_order(tmp_path: Path):
    path = tmp_path / "config.toml"
    shutil.copy(REPO_CONFIG, path)
    before = path.read_text(encoding="utf-8")
    save_settings(
        {
            "diffusion.width": 512,
            "specfusion.guidance": 6.5,
            "criticore.candidates": ["rules", "ollama:llama3.1"],
        },
        path,
    )
    after = path.read_text(encoding="utf-8")

    def comments(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.lstrip().startswith("#")]

    def headers(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("[")]

    assert comments(after) == comments(before)
    assert headers(after) == headers(before)
    assert "width = 512\n" in after and 'width = "auto"' not in after
    assert "guidance = 6.5\n" in after and 'guidance = "auto"' not in after
    # The multi-line array stays multi-line, in the file's own two-space indent.
    assert 'candidates = [\n  "rules",\n  "ollama:llama3.1",\n]\n' in after
    # Only the named lines changed.
    diff = difflib.ndiff(before.splitlines(), after.splitlines())
    removed = [line[2:] for line in diff if line.startswith("- ")]
    assert removed == [
        '  "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",',
        '  "together:Qwen/Qwen2.5-72B-Instruct-Turbo",',
        '  "together:Qwen/Qwen2.5-Coder-32B-Instruct",',
        '  "together:deepseek-ai/DeepSeek-V3",',
        '  "together:nvidia/NVIDIA-Nemotron-Nano-9B-v2",',
        'width = "auto"',
        'guidance = "auto"',
    ]


def test_new_keys_and_sections_are_appended(small: Path):
    save_settings(
        {"diffusion.height": 512, "specfusion.mode": "adaptive", "providers.ollama.timeout_s": 30.0},
        small,
    )
    text = small.read_text(encoding="utf-8")
    assert text.startswith(SMALL.split("\n[criticore]")[0].rstrip("\n"))
    # height lands inside [diffusion], after its last key, not at the end of the file.
    diffusion = text.split("[diffusion]")[1].split("[criticore]")[0]
    assert "height = 512" in diffusion
    assert text.index("[criticore]") < text.index("[specfusion]") < text.index("[providers.ollama]")
    assert "[providers]\n" not in text  # only the inner header is written
    loaded = load_config(small)
    assert loaded.settings.specfusion.mode == "adaptive"
    assert loaded.settings.providers.ollama.timeout_s == 30.0
    assert loaded.settings.diffusion.height == 512


def test_invalid_value_is_refused_and_file_unchanged(small: Path):
    stamp = small.stat().st_mtime_ns
    with pytest.raises(ConfigError) as info:
        save_settings({"diffusion.seed": 9, "diffusion.width": 500}, small)
    message = str(info.value)
    assert "diffusion.width" in message and "multiple of 8" in message
    assert small.read_text(encoding="utf-8") == SMALL
    assert small.stat().st_mtime_ns == stamp
    assert [p.name for p in small.parent.iterdir()] == ["config.toml"]  # no temp file left


def test_unknown_key_and_bad_model_ref_are_refused(small: Path):
    with pytest.raises(ConfigError, match="unknown key 'diffusion.sead'"):
        save_settings({"diffusion.sead": 1}, small)
    with pytest.raises(ConfigError, match="criticore.vlms"):
        save_settings({"criticore.vlms": ["nonsense:provider:x"]}, small)
    assert small.read_text(encoding="utf-8") == SMALL


@pytest.mark.parametrize("key", ["providers.together.api_key", "providers.ollama.TOKEN"])
def test_secret_keys_are_refused(small: Path, key: str):
    with pytest.raises(ConfigError, match="environment variable"):
        save_settings({key: "sk-123"}, small)
    assert "sk-123" not in small.read_text(encoding="utf-8")


def test_creates_missing_file_and_folder_with_header(tmp_path: Path):
    path = tmp_path / "deep" / "er" / "config.toml"
    assert save_settings({"diffusion.seed": 3, "criticore.aggregator": ["rules"]}, path) == path
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# {HEADER}"
    assert text.count("#") == 1
    settings = load_config(path).settings
    assert settings.diffusion.seed == 3
    assert settings.criticore.aggregator == ["rules"]


def test_none_removes_a_key(small: Path):
    save_settings({"diffusion.steps": None}, small)
    assert "steps" not in small.read_text(encoding="utf-8")
    assert load_config(small).settings.diffusion.steps == Settings().diffusion.steps


def test_round_trip_through_load_config(tmp_path: Path):
    path = tmp_path / "config.toml"
    shutil.copy(REPO_CONFIG, path)
    changes = {
        "criticore.candidates": ["rules", "ollama:llama3.1"],
        "criticore.aggregator": ["ollama:qwen2.5", "rules"],
        "criticore.vlms": ["ollama:llava"],
        "diffusion.seed": 7,
        "diffusion.width": 768,
        "diffusion.height": 512,
        "diffusion.steps": 30,
        "diffusion.guidance": 5.0,
        "diffusion.model": "tiny-random",
        "specfusion.mode": "adaptive",
        "specfusion.total_steps": 40,
        "specfusion.last_k": 20,
        "specfusion.guidance": "auto",
        "specfusion.rho_t": 0.9,
        "specfusion.base_c": 0.25,
    }
    save_settings(changes, path)
    s = load_config(path).settings
    got = {
        "criticore.candidates": s.criticore.candidates,
        "criticore.aggregator": s.criticore.aggregator,
        "criticore.vlms": s.criticore.vlms,
        "diffusion.seed": s.diffusion.seed,
        "diffusion.width": s.diffusion.width,
        "diffusion.height": s.diffusion.height,
        "diffusion.steps": s.diffusion.steps,
        "diffusion.guidance": s.diffusion.guidance,
        "diffusion.model": s.diffusion.model,
        "specfusion.mode": s.specfusion.mode,
        "specfusion.total_steps": s.specfusion.total_steps,
        "specfusion.last_k": s.specfusion.last_k,
        "specfusion.guidance": "auto" if s.specfusion.guidance is None else s.specfusion.guidance,
        "specfusion.rho_t": s.specfusion.rho_t,
        "specfusion.base_c": s.specfusion.base_c,
    }
    assert got == changes
    # A second save of the same values changes nothing.
    before = path.read_text(encoding="utf-8")
    save_settings(changes, path)
    assert path.read_text(encoding="utf-8") == before


def test_keeps_file_mode_and_writes_through_a_symlink(tmp_path: Path, small: Path):
    os.chmod(small, 0o640)
    link = tmp_path / "link.toml"
    link.symlink_to(small)
    save_settings({"diffusion.seed": 5}, link)
    assert link.is_symlink()
    assert "seed = 5  # lucky" in small.read_text(encoding="utf-8")
    assert oct(small.stat().st_mode & 0o777) == oct(0o640)


def test_default_save_path(tmp_path: Path, monkeypatch):
    in_use = LoadedConfig(Settings(), tmp_path / "mine.toml", "--config")
    assert default_save_path(in_use) == tmp_path / "mine.toml"
    monkeypatch.setattr("critifusion_tui.settings_file.user_config_path", lambda: tmp_path / "user" / "config.toml")
    defaults = LoadedConfig(Settings(), None, "built-in defaults")
    assert default_save_path(defaults) == tmp_path / "user" / "config.toml"
