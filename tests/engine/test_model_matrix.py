"""The checkpoints users actually have, offline: what `run` does, what `doctor` says, and that
they agree.

Every layout is a tiny random model written the way real downloads are written (see
``model_layouts.py``): the HF cache by hand (blobs, snapshot links, refs/main) and local
folders with full, fp16-only or both variants, a component missing, a component without its
weights; single files in the original layout (``single_file_layout.py``) with and without the
base model's config in the cache; ``.ckpt`` files with tensors only and with a code payload;
broken paths; saved schedulers with options that used to crash or go unnoticed.

"run" is ``Diffusion.from_config(cfg).load()`` and a two-step image; "doctor" is
``doctor.model_checks(settings)``, the function behind ``critifusion doctor``'s Diffusion
section. A failing layout must fail both ways with the same message.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from critifusion_tui.config import DiffusionConfig, Settings
from critifusion_tui.doctor import model_checks
from critifusion_tui.engine.diffusion import Diffusion, DiffusionLoadError
from critifusion_tui.engine.single_file_configs import DEFAULT_REPO
from critifusion_tui.engine.tiny_sdxl import build_tiny_sd15, build_tiny_sdxl
from tests.engine import model_layouts as layouts
from tests.engine.single_file_layout import (
    build_tiny_sdxl_distinct_widths,
    save_single_file,
    to_original_sd15,
    to_original_sdxl,
)

REPO = "acme/tiny-sdxl"


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """Tiny SDXL folders in the three variant layouts, built once; cases copy them."""
    root = tmp_path_factory.mktemp("saved")
    return {
        layout: layouts.save_folder(build_tiny_sdxl(0), root / layout, layout) for layout in ("fp32", "fp16", "both")
    }


@pytest.fixture(scope="session")
def single_files(tmp_path_factory):
    """Original-layout single files of tiny SDXL and SD 1.5, with their diffusers config folders."""
    root = tmp_path_factory.mktemp("single")
    out = {}
    for kind, pipe, convert in (
        ("sdxl", build_tiny_sdxl_distinct_widths(0), to_original_sdxl),
        ("sd", build_tiny_sd15(0), to_original_sd15),
    ):
        folder = root / f"{kind}-config"
        pipe.save_pretrained(folder)
        state = convert(pipe)
        out[kind] = {
            "config": layouts.configs_only(folder, root / f"{kind}-config-only"),
            "safetensors": save_single_file(state, root / f"{kind}.safetensors"),
            "ckpt": save_single_file(state, root / f"{kind}.ckpt"),
        }
    return out


@dataclass
class Case:
    model: str
    settings: dict = field(default_factory=dict)


class CodePayload:
    """Pickled into a .ckpt: unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def build_case(name: str, tmp_path: Path, monkeypatch, saved, single_files) -> Case:
    """Lay out case ``name`` under ``tmp_path`` and return what the config would say."""
    cache = _cache(tmp_path, monkeypatch)
    where, _, layout = name.partition(":")
    if where in ("cache", "folder"):
        variant = "fp32" if layout in ("missing_component", "no_weights") else layout.split("+")[0]
        folder = shutil.copytree(saved[variant], tmp_path / "model")
        if layout in ("missing_component", "no_weights"):
            layouts.break_folder(folder, layout)
        settings = {"variant": layout.split("+")[1]} if "+" in layout else {}
        if where == "cache":
            layouts.to_hub_cache(folder, cache, REPO)
            shutil.rmtree(folder)
            return Case(REPO, settings)
        return Case(str(folder), settings)
    if where == "scheduler":
        folder = shutil.copytree(saved["fp32"], tmp_path / "model")
        path = folder / "scheduler" / "scheduler_config.json"
        config = json.loads(path.read_text())
        config.update(
            {
                "exponential": {"use_exponential_sigmas": True},
                "beta": {"use_beta_sigmas": True},
                "v_prediction": {"prediction_type": "v_prediction"},
                "sde": {
                    "_class_name": "DPMSolverMultistepScheduler",
                    "algorithm_type": "sde-dpmsolver++",
                    "timestep_spacing": "trailing",
                },
            }[layout]
        )
        path.write_text(json.dumps(config))
        return Case(str(folder))
    if where == "single":
        kind, suffix, cache_state = layout.split("-")
        files = single_files["sdxl" if kind == "sdxl" else "sd"]
        source = files["ckpt" if suffix == "ckpt" else "safetensors"]
        target = tmp_path / ("model.SafeTensors" if suffix == "upper" else source.name)
        shutil.copy(source, target)
        if cache_state == "cached":
            layouts.to_hub_cache(files["config"], cache, DEFAULT_REPO["sdxl" if kind == "sdxl" else "sd"])
            return Case(str(target))
        if cache_state == "setting":
            return Case(str(target), {"single_file_config": str(files["config"])})
        return Case(str(target))
    if name == "ckpt:code":
        state = to_original_sd15(build_tiny_sd15(0))
        path = tmp_path / "evil.ckpt"
        torch.save({"state_dict": state, "hook": CodePayload(tmp_path / "pwned")}, path)
        return Case(str(path))
    if name == "path:missing":
        return Case(str(tmp_path / "models" / "nothing-here"))
    if name == "path:text":
        (tmp_path / "notes.txt").write_text("not a model")
        return Case(str(tmp_path / "notes.txt"))
    if name == "path:truncated":
        data = single_files["sd"]["safetensors"].read_bytes()
        (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
        return Case(str(tmp_path / "half.safetensors"))
    if name == "tiny:upper":
        return Case("Tiny-Random")
    if name == "tiny:sd15":
        return Case("tiny-random-sd15")
    if name == "tiny:float16-cpu":
        return Case("tiny-random", {"dtype": "float16"})
    if name == "tiny:compile-cpu":
        return Case("tiny-random", {"compile": True})
    raise ValueError(name)


# name -> None if it must load, else words the shared message must contain.
MATRIX = {
    "cache:fp32": None,
    "cache:fp16": None,
    "cache:both": None,
    "cache:missing_component": [
        "text_encoder_2/config.json is missing",
        f"hf download {REPO} --include",
        "text_encoder_2/model.safetensors",
    ],
    "cache:no_weights": [
        "unet has no weights",
        f"hf download {REPO} --include",
        '"unet/diffusion_pytorch_model.safetensors"',
    ],
    "cache:fp32+fp16": ["unet has no fp16 weights", 'diffusion.variant = "fp16"'],
    "cache:fp16+none": ["unet has no full (non-fp16) weights", 'diffusion.variant = "none"'],
    "folder:fp32": None,
    "folder:fp16": None,
    "folder:both": None,
    "folder:missing_component": ["text_encoder_2/config.json is missing", "--local-dir"],
    "folder:no_weights": ["unet has no weights", "--local-dir", "unet/diffusion_pytorch_model.safetensors"],
    "single:sdxl-safetensors-empty": [
        "does not fit the configuration built-in: sdxl-base",
        "UNet channels are 32, the configuration's 320",
        "single_file_config",
    ],
    "single:sdxl-safetensors-cached": None,
    "single:sd15-safetensors-empty": ["does not fit the configuration built-in: sd15"],
    "single:sd15-safetensors-cached": None,
    "single:sdxl-safetensors-setting": None,
    "single:sd15-ckpt-cached": None,
    "single:sd15-upper-cached": None,
    "ckpt:code": ["contains Python code", "will not be loaded", "convert it to .safetensors"],
    "path:missing": ["does not exist", "Fix:"],
    "path:text": ["is a file but not a checkpoint"],
    "path:truncated": ["not a readable .safetensors checkpoint", "truncated"],
    "scheduler:exponential": None,
    "scheduler:beta": None,
    "scheduler:v_prediction": None,
    "scheduler:sde": None,
    "tiny:upper": None,
    "tiny:sd15": None,
    "tiny:float16-cpu": ["float16 is not supported for diffusion on the CPU"],
    "tiny:compile-cpu": ["diffusion.compile = true needs a CUDA GPU"],
}


def _doctor(cfg: DiffusionConfig) -> list:
    return model_checks(Settings(diffusion=cfg))


@pytest.mark.parametrize("name", list(MATRIX))
def test_run_and_doctor_agree(name, tmp_path, monkeypatch, saved, single_files):
    case = build_case(name, tmp_path, monkeypatch, saved, single_files)
    cfg = DiffusionConfig(model=case.model, **case.settings)
    checks = _doctor(cfg)
    doctor_failed = [c.detail for c in checks if c.status == "fail"]
    expected = MATRIX[name]
    engine = Diffusion.from_config(cfg)
    if expected is None:
        assert not doctor_failed, doctor_failed
        engine.load()
        latent = engine.base_latent("a fox", "blurry", width=64, height=64, steps=2, guidance=4.5, seed=1)
        assert torch.isfinite(latent).all()
        record = engine.describe()
        assert record["device"] == "cpu" and record["dtype"] == "float32"
        assert record["scheduler"]["class"] == "DPMSolverMultistepScheduler"
        assert record["scheduler"]["algorithm"] == "dpmsolver++" and record["scheduler"]["sigmas"] == "karras"
        shown = {c.label: c.detail for c in checks}
        assert record["scheduler"]["prediction_type"] in shown["scheduler"]
        return
    with pytest.raises(DiffusionLoadError) as info:
        engine.load()
    message = str(info.value)
    for words in expected:
        assert words in message, message
    assert "weights_only=False" not in message and "Traceback" not in message
    assert doctor_failed == [message]  # the same code, the same words


def test_variants_read_what_is_there(tmp_path, monkeypatch, saved, single_files):
    # fp16-only copies are read as fp16 and upcast on the CPU; with both, the CPU reads the full files.
    for layout, expected in (("fp16", "fp16"), ("both", "none"), ("fp32", "none")):
        case = build_case(f"cache:{layout}", tmp_path / layout, monkeypatch, saved, single_files)
        engine = Diffusion(case.model, device="cpu").load()
        record = engine.describe()
        assert set(record["component_variants"].values()) == {expected}, layout
        assert record["source"] == "hub" and record["location"].endswith("0123456789abcdef0123456789abcdef01234567")
        files = [Path(w["path"]).name for w in record["weights"]]
        suffix = ".fp16.safetensors" if expected == "fp16" else ".safetensors"
        assert all(f.endswith(suffix) for f in files) and len(files) == 4
        assert all(w["bytes"] > 0 for w in record["weights"])
        assert engine.txt2img.unet.dtype == torch.float32
        if expected == "fp16":
            assert any("upcast" in n for n in record["notes"])


def test_mixed_variants_load_each_component_from_its_own_files(tmp_path, saved):
    # The VAE only in full precision, the rest only in fp16: each comes from what it has.
    folder = shutil.copytree(saved["fp16"], tmp_path / "model")
    for path in layouts.weight_files(folder, "vae"):
        path.unlink()
    shutil.copy(saved["fp32"] / "vae" / "diffusion_pytorch_model.safetensors", folder / "vae")
    engine = Diffusion(str(folder), device="cpu").load()
    variants = engine.describe()["component_variants"]
    assert variants == {"text_encoder": "fp16", "text_encoder_2": "fp16", "unet": "fp16", "vae": "none"}
    reference = Diffusion(str(saved["fp32"]), device="cpu").load()
    assert torch.equal(
        engine.txt2img.vae.state_dict()["decoder.conv_out.weight"],
        reference.txt2img.vae.state_dict()["decoder.conv_out.weight"],
    )


def test_a_single_file_loads_the_same_weights_as_its_folder(tmp_path, monkeypatch, single_files, saved):
    case = build_case("single:sd15-safetensors-cached", tmp_path, monkeypatch, saved, single_files)
    engine = Diffusion(case.model, device="cpu").load()
    record = engine.describe()
    assert record["source"] == "file" and record["single_file_config"] == f"cache: {DEFAULT_REPO['sd']}"
    expected = build_tiny_sd15(0)
    for key, value in expected.unet.state_dict().items():
        assert torch.equal(engine.txt2img.unet.state_dict()[key], value), key


def test_code_in_a_ckpt_is_never_run(tmp_path, monkeypatch, saved, single_files):
    case = build_case("ckpt:code", tmp_path, monkeypatch, saved, single_files)
    # The payload really is code: plain pickle would run it (checked on a copy of the object).
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(CodePayload(probe)))
    assert probe.exists()
    with pytest.raises(DiffusionLoadError):
        Diffusion(case.model, device="cpu").load()
    _doctor(DiffusionConfig(model=case.model))
    assert not (tmp_path / "pwned").exists()


def test_saved_scheduler_options_are_resolved(tmp_path, monkeypatch, saved, single_files):
    for layout, prediction, spacing in (
        ("exponential", "epsilon", "leading"),
        ("v_prediction", "v_prediction", "leading"),
        ("sde", "epsilon", "trailing"),
    ):
        case = build_case(f"scheduler:{layout}", tmp_path / layout, monkeypatch, saved, single_files)
        engine = Diffusion(case.model, device="cpu").load()
        config = engine.txt2img.scheduler.config
        assert config.use_karras_sigmas and not config.use_exponential_sigmas and not config.use_beta_sigmas
        assert config.algorithm_type == "dpmsolver++"
        assert config.prediction_type == prediction and config.timestep_spacing == spacing
        assert engine.img2img.scheduler.config.prediction_type == prediction


def test_native_size_comes_from_the_model(tmp_path, saved):
    folder = shutil.copytree(saved["fp32"], tmp_path / "model")
    unet = folder / "unet" / "config.json"
    config = json.loads(unet.read_text())
    config["sample_size"] = 16  # 16 x 8 = 128 px
    unet.write_text(json.dumps(config))
    checks = {c.label: c.detail for c in _doctor(DiffusionConfig(model=str(folder)))}
    assert checks["image size"] == "128x128 (native size)"
    assert Diffusion(str(folder), device="cpu").load().default_size == (128, 128)


# ---------------------------------------------------------------- through the real commands


def _env(tmp_path: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CRITIFUSION_CONFIG", "TOGETHER_API_KEY")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(cache),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    return env


def _cli(*args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "critifusion_tui", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_run_on_an_fp16_only_cache_with_hub_tokenizers(tmp_path, saved):
    """The most common real layout, through `critifusion run`: loads, records what it read, and
    what the tokenizers library printed reaches the log, not the terminal."""
    folder = shutil.copytree(saved["fp16"], tmp_path / "model")
    layouts.hub_style_tokenizers(folder)
    cache = tmp_path / "hub"
    layouts.to_hub_cache(folder, cache, REPO)
    env = _env(tmp_path, cache)
    out = tmp_path / "run"
    proc = _cli(
        "run",
        "a red fox",
        "--demo",
        "--set",
        f"diffusion.model={REPO}",
        "--set",
        "diffusion.width=auto",
        "--set",
        "diffusion.height=auto",
        "--out",
        str(out),
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["diffusion"]
    assert record["source"] == "hub" and record["variant"] == "fp16"
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["scheduler"]["sigmas"] == "karras"
    assert {Path(w["path"]).name for w in record["weights"]} == {
        "diffusion_pytorch_model.fp16.safetensors",
        "model.fp16.safetensors",
    }
    assert manifest["stages"]["base"]["width"] == 64  # "auto": the tiny model's native size
    # Printed by the tokenizers library while loading: shown once as a notice, never raw.
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not any(line.startswith("Ignored unknown kwarg") for line in lines)
    assert any("while loading: Ignored unknown kwarg option __type" in line for line in lines)


def test_doctor_and_run_agree_through_the_commands(tmp_path, saved):
    folder = shutil.copytree(saved["fp16"], tmp_path / "model")
    layouts.break_folder(folder, "no_weights")
    cache = tmp_path / "hub"
    layouts.to_hub_cache(folder, cache, REPO)
    env = _env(tmp_path, cache)
    doctor = _cli("doctor", "--offline", "--set", f"diffusion.model={REPO}", env=env, cwd=tmp_path)
    run = _cli("run", "a fox", "--demo", "--set", f"diffusion.model={REPO}", env=env, cwd=tmp_path)
    assert doctor.returncode == 1 and run.returncode == 1
    needle = f'hf download {REPO} --include "unet/diffusion_pytorch_model.fp16.safetensors"'
    assert needle in doctor.stdout and needle in run.stdout + run.stderr
    for proc in (doctor, run):
        assert "Traceback" not in proc.stdout + proc.stderr
    # A scheduler saved with exponential sigmas used to crash `run` with a traceback.
    folder2 = shutil.copytree(saved["fp32"], tmp_path / "model2")
    path = folder2 / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_exponential_sigmas": True}))
    out = tmp_path / "run2"
    run = _cli(
        "run", "a fox", "--demo", "--set", f"diffusion.model='{folder2}'", "--out", str(out), env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "done"


def test_the_apps_size_hint_reads_configs_only(tmp_path, saved):
    """The app shows the native size on its first paint: no torch, no hub client for that."""
    code = (
        "import sys\n"
        "from critifusion_tui.engine.model_source import native_size_hint\n"
        f"print(native_size_hint({str(saved['fp16'])!r}), native_size_hint('tiny-random-sd15'),"
        f" native_size_hint({str(tmp_path / 'missing')!r}))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'huggingface_hub') if m in sys.modules))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["(64, 64) (64, 64) None", "[]"]
