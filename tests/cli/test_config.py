"""Configuration: defaults, lookup order, --set, and every kind of error a user can make."""

from __future__ import annotations

from pathlib import Path

import pytest

from critifusion_tui.config import ConfigError, Settings, apply_override, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No config file anywhere unless a test writes one: cwd and user dir are empty folders."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CRITIFUSION_CONFIG", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return work


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(*args, **kwargs)
    return str(caught.value)


def test_built_in_defaults_follow_the_spec():
    loaded = load_config()
    assert loaded.path is None and loaded.source == "built-in defaults"
    s = loaded.settings
    # "auto" is the model's native size: 1024 for SDXL base (SPEC 3), 512 for SD 1.5.
    assert (s.diffusion.width, s.diffusion.height, s.diffusion.steps, s.diffusion.guidance) == ("auto", "auto", 50, 4.5)
    assert (s.specfusion.total_steps, s.specfusion.last_k, s.specfusion.guidance) == (50, 37, None)
    assert (s.specfusion.rho_t, s.specfusion.base_c, s.specfusion.noise_std) == (0.85, 0.5, 0.001)
    assert s.diffusion.negative.startswith("blurry, low quality, artifacts, watermark")
    assert len(s.criticore.candidates) == 5
    assert s.criticore.aggregator == ["together:Qwen/Qwen2.5-72B-Instruct-Turbo"]
    assert s.criticore.vlms == ["together:meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8"]
    assert s.providers.ollama.host == "http://127.0.0.1:11434"
    assert s.providers.together.api_key_env == "TOGETHER_API_KEY"


def test_shipped_config_toml_states_exactly_the_built_in_defaults():
    assert load_config(REPO / "config.toml").settings == Settings()


def test_ollama_host_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "http://gpu-box:11434")
    assert load_config().settings.providers.ollama.host == "http://gpu-box:11434"


def test_lookup_order(isolated, tmp_path, monkeypatch):
    user = write(tmp_path / "xdg" / "critifusion" / "config.toml", "[diffusion]\nsteps = 11\n")
    assert load_config().path == user
    assert load_config().settings.diffusion.steps == 11

    local = write(isolated / "config.toml", "[diffusion]\nsteps = 12\n")
    assert load_config().path == local

    env = write(tmp_path / "env.toml", "[diffusion]\nsteps = 13\n")
    monkeypatch.setenv("CRITIFUSION_CONFIG", str(env))
    assert load_config().path == env
    assert load_config().source == "$CRITIFUSION_CONFIG"

    explicit = write(tmp_path / "explicit.toml", "[diffusion]\nsteps = 14\n")
    loaded = load_config(explicit)
    assert (loaded.path, loaded.source, loaded.settings.diffusion.steps) == (explicit, "--config", 14)


def test_only_the_first_file_found_is_read(isolated, tmp_path):
    write(tmp_path / "xdg" / "critifusion" / "config.toml", "[diffusion]\nguidance = 9.0\n")
    write(isolated / "config.toml", "[diffusion]\nsteps = 12\n")
    settings = load_config().settings
    assert (settings.diffusion.steps, settings.diffusion.guidance) == (12, 4.5)


def test_named_files_that_do_not_exist_are_errors(tmp_path, monkeypatch):
    assert "no such config file (given with --config)" in error_of(tmp_path / "missing.toml")
    monkeypatch.setenv("CRITIFUSION_CONFIG", str(tmp_path / "gone.toml"))
    message = error_of()
    assert "gone.toml" in message and "$CRITIFUSION_CONFIG" in message


def test_set_overrides_single_keys_with_toml_values(isolated):
    write(isolated / "config.toml", "[diffusion]\nsteps = 12\nguidance = 3.0\n")
    loaded = load_config(
        overrides=[
            "diffusion.steps=4",
            "diffusion.model=tiny-random",
            "specfusion.guidance=7.5",
            'criticore.candidates=["rules", "ollama:llama3.2"]',
            "criticore.aggregator=rules",
            "providers.together.timeout_s=5",
        ]
    )
    s = loaded.settings
    assert s.diffusion.steps == 4 and s.diffusion.guidance == 3.0
    assert s.diffusion.model == "tiny-random"
    assert s.specfusion.guidance == 7.5
    assert s.criticore.candidates == ["rules", "ollama:llama3.2"]
    assert s.criticore.aggregator == ["rules"]
    assert s.providers.together.timeout_s == 5.0


@pytest.mark.parametrize("item", ["diffusion", "diffusion.steps", "=4", ".steps=4", "diffusion..steps=4"])
def test_malformed_set_is_refused(item):
    assert "expected section.key=value" in error_of(overrides=[item])


def test_set_of_unknown_key_names_the_option_and_suggests():
    message = error_of(overrides=["diffusion.stpes=4"])
    assert message.startswith("--set diffusion.stpes=4: unknown key 'diffusion.stpes'")
    assert "did you mean 'steps'" in message


def test_set_into_a_value_is_refused(isolated):
    message = error_of(overrides=["diffusion.steps.x=1"])
    assert message.startswith("--set diffusion.steps.x=1: diffusion.steps: Input should be a valid integer")
    write(isolated / "config.toml", "[diffusion]\nsteps = 12\n")
    assert "--set diffusion.steps.x=1: 'steps' is a value, not a section" in error_of(overrides=["diffusion.steps.x=1"])


def test_toml_syntax_error_names_file_and_line(isolated):
    path = write(isolated / "config.toml", "[diffusion]\nsteps = 12\nguidance = = 3\n")
    message = error_of()
    assert message.startswith(f"{path}:3: TOML syntax error")


def test_unknown_key_names_file_line_and_the_close_match(isolated):
    path = write(isolated / "config.toml", "# settings\n[diffusion]\nsteps = 12\nguidence = 3.0\n")
    message = error_of()
    assert message.startswith(f"{path}:4: unknown key 'diffusion.guidence' (did you mean 'guidance'?)")
    assert "known keys here:" in message and "negative" in message


def test_unknown_section_is_an_error(isolated):
    write(isolated / "config.toml", "[difusion]\nsteps = 12\n")
    assert "unknown key 'difusion' (did you mean 'diffusion'?)" in error_of()


def test_wrong_type_names_key_line_and_expectation(isolated):
    path = write(isolated / "config.toml", '[diffusion]\n\nsteps = "fifty"\n')
    message = error_of()
    assert message.startswith(f"{path}:3: diffusion.steps:")
    assert "valid integer" in message and "'fifty'" in message


@pytest.mark.parametrize(
    "section, line, expected",
    [
        ("diffusion", "width = 1001", "multiple of 8"),
        ("diffusion", 'device = "gpu"', "expected 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'"),
        ("diffusion", 'dtype = "fp8"', "'auto', 'float16', 'bfloat16' or 'float32'"),
        ("specfusion", "rho_t = 1.5", "less than or equal to 1"),
        ("specfusion", 'mode = "smart"', "'fixed' or 'adaptive'"),
        ("providers.together", "timeout_s = 0", "greater than 0"),
        ("criticore", 'preset = "nope"', "unknown preset 'nope'; known: hq_preference"),
        ("tui", 'images = "ascii"', "'auto', 'kitty', 'sixel', 'halfblock' or 'none'"),
    ],
)
def test_bad_values_are_explained(isolated, section, line, expected):
    path = write(isolated / "config.toml", f"[{section}]\n{line}\n")
    message = error_of()
    key = line.split(" =")[0]
    assert message.startswith(f"{path}:2: {section}.{key}")
    assert expected in message


def test_unknown_provider_prefix_is_an_error(isolated):
    path = write(isolated / "config.toml", '[criticore]\ncandidates = ["rules", "vertex:gemini"]\n')
    message = error_of()
    assert message.startswith(f"{path}:2: criticore.candidates item 2: unknown provider 'vertex'")
    assert "'together:<model id>', 'ollama:<model name>', 'openai:<model id>' or 'rules'" in message


@pytest.mark.parametrize("ref, why", [("llama3", "names no provider"), ("ollama:", "names no model")])
def test_incomplete_model_refs_are_errors(isolated, ref, why):
    write(isolated / "config.toml", f'[criticore]\nvlms = ["{ref}"]\n')
    assert why in error_of()


def test_a_literal_api_key_is_refused_and_never_echoed(isolated):
    path = write(
        isolated / "config.toml",
        '[providers.together]\napi_key_env = "MY_TOGETHER"\napi_key = "sk-live-123456"\n',
    )
    message = error_of()
    assert message.startswith(f"{path}:3: providers.together.api_key: a literal secret is refused")
    assert "MY_TOGETHER" in message
    assert "sk-live-123456" not in message


def test_a_secret_through_set_is_refused():
    message = error_of(overrides=["providers.together.api_key=sk-live-1"])
    assert "environment variables only" in message and "sk-live-1" not in message


def test_aggregator_accepts_one_ref_or_a_list(isolated):
    write(isolated / "config.toml", '[criticore]\naggregator = "ollama:qwen2.5"\n')
    assert load_config().settings.criticore.aggregator == ["ollama:qwen2.5"]
    refs = load_config().settings.criticore.refs()
    assert [str(r) for r in refs["aggregator"]] == ["ollama:qwen2.5"]


def test_several_errors_are_all_reported(isolated):
    write(isolated / "config.toml", "[diffusion]\nsteps = 0\nwidth = 65\n")
    message = error_of()
    assert "diffusion.steps" in message and "diffusion.width" in message
    assert len(message.splitlines()) == 2


def test_apply_override_builds_missing_sections():
    data: dict = {}
    apply_override(data, "providers.ollama.keep_alive=10m")
    apply_override(data, "diffusion.seed=7")
    assert data == {"providers": {"ollama": {"keep_alive": "10m"}}, "diffusion": {"seed": 7}}


# --- [criticore.instructions]: templates from the config or a file ---------------------------


def test_a_template_file_replaces_the_default_relative_to_the_config(isolated):
    write(isolated / "prompts" / "tags.txt", "Write SD tags for {prompt}.\nStart from: {seed_tags}\n")
    write(isolated / "config.toml", '[criticore.instructions]\nstyle = "prose"\ntags_user = "prompts/tags.txt"\n')
    section = load_config().settings.criticore.instructions
    assert section.style == "prose"
    # The file's text is what the settings (and a manifest's config) hold: no path to follow later.
    assert section.tags_user == "Write SD tags for {prompt}.\nStart from: {seed_tags}"


def test_a_bad_placeholder_in_a_template_file_names_the_file_and_line(isolated):
    template = write(isolated / "tags.txt", "Write SD tags.\nIdea: {prompt}\nUse {style_words} too\n")
    config = write(isolated / "config.toml", '# mine\n[criticore.instructions]\ntags_user = "tags.txt"\n')
    message = error_of()
    assert message.startswith(f"{template}:3: unknown placeholder {{style_words}} in instruction 'tags_user'")
    assert f"{config}:3" in message and "{prompt}, {seed_tags}" in message


def test_a_bad_placeholder_inline_names_the_config_line(isolated):
    path = write(isolated / "config.toml", '[criticore.instructions]\n\ncritic_system = "Judge {image}"\n')
    message = error_of()
    assert message.startswith(f"{path}:3: criticore.instructions.critic_system: unknown placeholder {{image}}")
    assert "placeholders it may use: none" in message


def test_an_unknown_template_name_is_an_error_with_the_close_name(isolated):
    path = write(isolated / "config.toml", '[criticore.instructions]\ntags_sytem = "Write tags."\n')
    message = error_of()
    assert message.startswith(
        f"{path}:2: unknown key 'criticore.instructions.tags_sytem' (did you mean 'tags_system'?)"
    )


def test_a_missing_template_file_is_an_error_naming_it(isolated):
    path = write(isolated / "config.toml", '[criticore.instructions]\ntags_system = "nowhere/tags.md"\n')
    message = error_of()
    assert message.startswith(f"{path}:2: criticore.instructions.tags_system: no such template file")
    assert str(isolated / "nowhere" / "tags.md") in message


def test_a_template_file_through_set_is_read_from_the_current_folder(isolated):
    write(isolated / "mine.txt", "Tags for {prompt}, please.")
    loaded = load_config(overrides=["criticore.instructions.tags_user=mine.txt"])
    assert loaded.settings.criticore.instructions.tags_user == "Tags for {prompt}, please."
    message = error_of(overrides=["criticore.instructions.style=verse"])
    assert message.startswith("--set criticore.instructions.style=verse: criticore.instructions.style")
