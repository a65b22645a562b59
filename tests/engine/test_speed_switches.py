"""The CUDA speed switches on the CPU: "auto" resolves off, each switch can be forced where
torch runs it and gives the same image, the manifest and doctor say what is used and why,
the step callback reads no tensor, and the critique gets the PNG bytes without a file read.

Every engine here is the tiny random SDXL (64 px, a few steps).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from critifusion_tui.config import DiffusionConfig, Settings
from critifusion_tui.engine.devices import SpeedSwitches, resolve_switches
from critifusion_tui.engine.diffusion import Diffusion, DiffusionLoadError
from critifusion_tui.engine.diffusion_loading import apply_speed_switches, compile_regions
from critifusion_tui.engine.diffusion_running import _step_callback, vae_decode_dtype

PROMPT = "a red fox in the snow, high detailed"
NEG = "blurry, low quality"


def _flow(engine: Diffusion):
    """Base latent, img2img latent and decoded image: every module the switches touch runs."""
    z = engine.base_latent(PROMPT, NEG, width=64, height=64, steps=4, guidance=4.5, seed=3)
    z2 = engine.img2img_latent(z, PROMPT, NEG, strength=0.75, guidance=5.0, steps=4, seed=4)
    return z, z2, np.asarray(engine.decode(z2), dtype=np.int16)


@pytest.fixture(scope="module")
def plain(tiny_sdxl_dir):
    engine = Diffusion(str(tiny_sdxl_dir), device="cpu").load()
    return engine, _flow(engine)


def _assert_same_flow(got, expected):
    for a, b in zip(got[:2], expected[:2]):
        scale = float(b.abs().max())
        assert torch.allclose(a, b, rtol=0, atol=1e-5 * scale), float((a - b).abs().max())
    assert np.abs(got[2] - expected[2]).max() <= 1  # a rounding step of one 8-bit level at most


def _storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters and buffers."""
    storages = {}
    for t in (*module.parameters(), *module.buffers()):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


# ---------------------------------------------------------------- resolving the switches


def test_auto_is_off_on_the_cpu_and_recorded(plain):
    engine, _ = plain
    record = engine.describe()
    assert record["speed"] == {
        "channels_last": {"on": False, "why": "auto: CUDA only, the device is cpu"},
        "fuse_qkv": {"on": False, "why": "auto: CUDA only, the device is cpu"},
        "compile": {"on": False, "why": "diffusion.compile = false"},
    }
    assert record["attention"]["unet"] == "AttnProcessor2_0" and record["attention"]["vae"] == "AttnProcessor2_0"
    assert record["attention"]["sdpa_kernel"] in ("flash_attention", "efficient_attention", "math", "unknown")
    assert "sdpa_enabled" not in record["attention"]  # CUDA's flags only on CUDA
    assert record["vae_decode_dtype"] == "float32"
    unet = engine.txt2img.unet
    assert unet.conv_in.weight.is_contiguous()
    assert not any(type(m).__name__ == "OptimizedModule" for m in unet.modules())
    json.dumps(record)  # the manifest is JSON


def test_auto_turns_on_with_cuda_and_fuse_stays_off_with_offload():
    on = resolve_switches("cuda")
    assert (on.channels_last, on.fuse_qkv, on.compile) == (True, True, False)
    assert on.why == {"channels_last": "auto: CUDA", "fuse_qkv": "auto: CUDA", "compile": "diffusion.compile = false"}
    offload = resolve_switches("cuda:1", cpu_offload=True, compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert offload.channels_last and not offload.fuse_qkv and offload.compile
    assert "cpu_offload" in offload.why["fuse_qkv"]
    assert offload.record()["compile"] == {
        "on": True,
        "why": "diffusion.compile = true",
        "mode": "max-autotune-no-cudagraphs",
        "scope": "regional",
    }
    forced = resolve_switches("cpu", channels_last=True, fuse_qkv="true")
    assert forced.channels_last and forced.fuse_qkv and not forced.auto("fuse_qkv")
    assert forced.line() == (
        "channels_last on (diffusion.channels_last = true); fused QKV on (diffusion.fuse_qkv = true); "
        "compile off (diffusion.compile = false)"
    )
    off = resolve_switches("cuda", channels_last=False, fuse_qkv=False)
    assert not off.channels_last and not off.fuse_qkv


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"channels_last": "sometimes"}, "unknown diffusion.channels_last"),
        ({"fuse_qkv": 2}, "unknown diffusion.fuse_qkv"),
        ({"compile": "auto"}, "diffusion.compile takes true or false"),
        ({"compile": True, "compile_mode": "reduce-overhead", "device": "cuda"}, "unknown diffusion.compile_mode"),
        ({"compile": True}, "diffusion.compile = true needs a CUDA GPU"),
        ({"compile": True, "device": "mps"}, "needs a CUDA GPU, but the device is mps"),
    ],
)
def test_wrong_switch_values_are_refused_with_the_key(kwargs, words):
    device = kwargs.pop("device", "cpu")
    with pytest.raises(DiffusionLoadError, match=words):
        resolve_switches(device, **kwargs)


def test_compile_on_the_cpu_stays_a_config_error():
    with pytest.raises(ValueError, match="compile = true needs a CUDA GPU"):
        DiffusionConfig(model="tiny-random", device="cpu", compile=True)
    # device "auto" on a machine without CUDA: refused by the plan, before anything loads.
    engine = Diffusion.from_config(DiffusionConfig(model="tiny-random", compile=True))
    assert engine.compile
    with pytest.raises(DiffusionLoadError, match="diffusion.compile = true needs a CUDA GPU"):
        engine.load()
    assert not engine.loaded


def test_the_config_keys_reach_the_engine_and_the_resume_check():
    from critifusion_tui.engine.resume import same_model

    cfg = DiffusionConfig(
        model="tiny-random", channels_last=True, fuse_qkv="false", compile_mode="max-autotune-no-cudagraphs"
    )
    assert (cfg.channels_last, cfg.fuse_qkv) == (True, False)
    engine = Diffusion.from_config(cfg)
    assert (engine.channels_last, engine.fuse_qkv, engine.compile_mode) == (True, False, "max-autotune-no-cudagraphs")
    assert DiffusionConfig().channels_last == "auto" and DiffusionConfig().fuse_qkv == "auto"
    for key, value in (("channels_last", False), ("fuse_qkv", True), ("compile_mode", "max-autotune-no-cudagraphs")):
        assert not same_model(DiffusionConfig(), DiffusionConfig(**{key: value})), key
    with pytest.raises(ValueError, match='expected "auto", true or false'):
        DiffusionConfig(channels_last="yes please")
    with pytest.raises(ValueError, match="compile_mode"):
        DiffusionConfig(compile_mode="reduce-overhead")


# ---------------------------------------------------------------- each switch forced on the CPU


def test_channels_last_forced_gives_the_same_image(tiny_sdxl_dir, plain):
    _, expected = plain
    engine = Diffusion(str(tiny_sdxl_dir), device="cpu", channels_last=True).load()
    for module in (engine.txt2img.unet, engine.txt2img.vae):
        convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert engine.img2img.unet is engine.txt2img.unet  # one module, switched once for both
    _assert_same_flow(_flow(engine), expected)
    assert engine.describe()["speed"]["channels_last"] == {"on": True, "why": "diffusion.channels_last = true"}


def test_fused_qkv_forced_gives_the_same_image_and_costs_no_memory(tiny_sdxl_dir, plain):
    from diffusers.models.attention_processor import Attention

    reference, expected = plain
    engine = Diffusion(str(tiny_sdxl_dir), device="cpu", fuse_qkv=True).load()
    for name in ("unet", "vae"):
        module = getattr(engine.txt2img, name)
        assert {type(p).__name__ for p in module.attn_processors.values()} == {"FusedAttnProcessor2_0"}
        # The separate q/k/v layers diffusers keeps are views of the fused weights.
        assert _storage_bytes(module) == _storage_bytes(getattr(reference.txt2img, name)), name
    attn = next(m for m in engine.txt2img.unet.modules() if isinstance(m, Attention) and m.is_cross_attention)
    assert attn.to_v.weight.untyped_storage().data_ptr() == attn.to_kv.weight.untyped_storage().data_ptr()
    _assert_same_flow(_flow(engine), expected)
    record = engine.describe()
    assert record["speed"]["fuse_qkv"] == {"on": True, "why": "diffusion.fuse_qkv = true", "models": ["unet", "vae"]}
    assert record["attention"]["unet"] == "FusedAttnProcessor2_0"


def test_both_switches_together_on_sd15(tiny_sd15_dir):
    plain15 = Diffusion(str(tiny_sd15_dir), device="cpu").load()
    fast15 = Diffusion(str(tiny_sd15_dir), device="cpu", channels_last=True, fuse_qkv=True).load()
    _assert_same_flow(_flow(fast15), _flow(plain15))
    assert fast15.describe()["speed"]["fuse_qkv"]["models"] == ["unet", "vae"]


def test_compile_is_regional_each_repeated_block_with_the_mode(monkeypatch):
    # The compile itself needs CUDA (the engine refuses it elsewhere); what is compiled, and how,
    # is checked on the CPU with torch.compile replaced by a spy.
    engine = Diffusion("tiny-random").load()
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: compiled.append((self, a, kw)))
    done = apply_speed_switches(engine.txt2img, SpeedSwitches(False, False, True, "max-autotune-no-cudagraphs"))
    unet = engine.txt2img.unet
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and done == {"compiled_blocks": len(blocks)}
    assert [c[0] for c in compiled] == blocks  # the blocks, never the whole UNet
    assert all(kw == {"mode": "max-autotune-no-cudagraphs"} for _, _, kw in compiled)


def test_compile_of_a_model_without_repeated_blocks_is_refused():
    with pytest.raises(DiffusionLoadError, match="declares no repeated blocks"):
        compile_regions(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- the VAE's decode dtype


def test_vae_upcast_is_for_float16_only(monkeypatch):
    engine = Diffusion("tiny-random", device="cpu", dtype="bfloat16").load()
    vae = engine.txt2img.vae
    assert vae.config.force_upcast and vae.dtype == torch.bfloat16
    assert vae_decode_dtype(vae) == torch.bfloat16  # bf16 has float32's range: no upcast
    assert engine.describe()["vae_decode_dtype"] == "bfloat16"
    casts = []
    real_to = type(vae).to
    monkeypatch.setattr(type(vae), "to", lambda self, *a, **kw: casts.append(kw) or real_to(self, *a, **kw))
    z = engine.base_latent(PROMPT, NEG, width=64, height=64, steps=2, guidance=4.5, seed=1)
    assert engine.decode(z).size == (64, 64)
    assert not any("dtype" in kw for kw in casts)
    monkeypatch.undo()
    vae.to(dtype=torch.float16)  # as on CUDA in float16: SDXL's VAE overflows there
    assert vae_decode_dtype(vae) == torch.float32
    assert engine.describe()["vae_decode_dtype"] == "float32"


# ---------------------------------------------------------------- no sync in the step callback


class _DeviceTensor:
    """Stands for a GPU tensor: reading its value on the host fails the test."""

    def _read(self, *args, **kwargs):
        raise AssertionError("the step callback read a device tensor (a host-device sync)")

    item = cpu = tolist = numpy = __bool__ = __float__ = __int__ = __index__ = __array__ = _read

    def to(self, *args, **kwargs):
        return self._read()


def test_the_step_callback_reads_no_tensor():
    seen = []
    callback = _step_callback("base image", lambda done, total: seen.append((done, total)), lambda: False)
    tensors = {"latents": _DeviceTensor(), "prompt_embeds": _DeviceTensor()}
    pipe = SimpleNamespace(num_timesteps=4)
    assert callback(pipe, 2, _DeviceTensor(), tensors) is tensors
    assert seen == [(3, 4)]


def test_a_real_run_reads_no_tensor_inside_the_callback(engine, monkeypatch):
    from critifusion_tui.engine import diffusion_running

    inside = []

    def poisoned(name):
        real = getattr(torch.Tensor, name)

        def guard(self, *args, **kwargs):
            if inside:
                raise AssertionError(f"Tensor.{name} inside the step callback")
            return real(self, *args, **kwargs)

        return guard

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, poisoned(name))
    real_callback = diffusion_running._step_callback

    def watched(*args, **kwargs):
        inner = real_callback(*args, **kwargs)

        def run(*a, **kw):
            inside.append(True)
            try:
                return inner(*a, **kw)
            finally:
                inside.pop()

        return run

    monkeypatch.setattr(diffusion_running, "_step_callback", watched)
    steps = []
    engine.base_latent(
        PROMPT,
        NEG,
        width=64,
        height=64,
        steps=3,
        guidance=4.5,
        seed=1,
        on_step=lambda d, t: steps.append((d, t)),
        cancel=lambda: False,
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]


# ---------------------------------------------------------------- doctor


def test_doctor_names_the_switches_and_why():
    from critifusion_tui.doctor import model_checks

    checks = {c.label: c.detail for c in model_checks(Settings(diffusion=DiffusionConfig(model="tiny-random")))}
    line = checks["speed"]
    assert line.startswith("channels_last off (auto: CUDA only, the device is cpu); fused QKV off (auto: CUDA only")
    assert "compile off (diffusion.compile = false)" in line
    assert "attention: torch SDPA" in line and "(cpu, float32)" in line
    forced = {
        c.label: c.detail
        for c in model_checks(
            Settings(diffusion=DiffusionConfig(model="tiny-random", channels_last=True, fuse_qkv=True))
        )
    }
    assert forced["speed"].startswith("channels_last on (diffusion.channels_last = true); fused QKV on")


# ---------------------------------------------------------------- the critic's PNG bytes


async def test_the_critique_gets_the_png_bytes_without_reading_the_file(tmp_path, engine, monkeypatch):
    from critifusion_tui.engine.criticore import CritiCore
    from critifusion_tui.engine.pipeline import Session
    from critifusion_tui.engine.store import RunStore

    reads, sent = [], []
    real_read, real_critique = RunStore.read_file, CritiCore.critique
    monkeypatch.setattr(
        RunStore, "read_file", lambda self, rel, *a, **kw: reads.append(rel) or real_read(self, rel, *a, **kw)
    )

    async def critique(self, png, *args, **kwargs):
        sent.append(png)
        return await real_critique(self, png, *args, **kwargs)

    monkeypatch.setattr(CritiCore, "critique", critique)
    settings = Settings.model_validate(
        {
            "criticore": {"candidates": ["rules"], "aggregator": "rules", "vlms": ["rules"]},
            "diffusion": {"model": str(engine.model), "device": "cpu", "width": 64, "height": 64, "steps": 4},
            "specfusion": {"total_steps": 4, "last_k": 3},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )
    session = Session(settings, diffusion=engine)

    async def gate(name, fields):
        return fields

    run = session.new_run("a red fox in a forest", emit=lambda event: None)
    manifest = await run.run_all(gate)
    assert manifest["status"] == "done"
    assert sent == [(run.folder / "base.png").read_bytes()]
    assert "base.png" not in reads
