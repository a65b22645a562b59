"""The diffusion room on tiny random pipelines (CPU, offline).

The session's ``engine`` loads a saved tiny SDXL folder through ``from_pretrained``, the path a
user's diffusers folder takes. Every call here runs a few denoising steps at 64-128 px.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from critifusion_tui.engine.diffusion import (
    Diffusion,
    DiffusionCancelled,
    DiffusionLoadError,
    DiffusionOutOfMemory,
    img2img_step_count,
)
from critifusion_tui.engine.specfusion import frequency_fusion
from critifusion_tui.engine.tiny_sdxl import TINY_MARKER, build_tiny_sdxl

PROMPT = "a red fox in the snow, high detailed"
NEG = "blurry, low quality"


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _base(engine, seed=1, px=64, steps=4, **kw):
    return engine.base_latent(PROMPT, NEG, width=px, height=px, steps=steps, guidance=4.5, seed=seed, **kw)


def _diffusers_base(engine, seed, output_type):
    """diffusers' own text-to-image call with ``_base``'s defaults (64 px, 4 steps, guidance 4.5)."""
    return engine.txt2img(
        prompt=PROMPT,
        negative_prompt=NEG,
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=4.5,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type=output_type,
    ).images


# ---------------------------------------------------------------- import cost


def test_importing_the_module_does_not_import_torch():
    code = (
        "import sys, critifusion_tui.engine.diffusion, critifusion_tui.engine.tiny_sdxl; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_rooms_public_names_still_import_from_diffusion():
    # Scripts outside the repository import these from engine.diffusion; the code lives in
    # devices.py, diffusion_errors.py and diffusion_running.py now.
    from critifusion_tui.engine import devices, diffusion, diffusion_errors, diffusion_running

    homes = {
        devices: ("resolve_device", "resolve_dtype"),
        diffusion_errors: (
            "DiffusionCancelled",
            "DiffusionError",
            "DiffusionLoadError",
            "DiffusionOutOfMemory",
            "OOM_HINT",
        ),
        diffusion_running: ("StepCallback", "img2img_step_count"),
    }
    for home, names in homes.items():
        for name in names:
            assert getattr(diffusion, name) is getattr(home, name), name
    exported = {"Diffusion", *(name for names in homes.values() for name in names)} - {"OOM_HINT"}
    assert set(diffusion.__all__) == exported  # as before the split
    assert issubclass(diffusion.Diffusion, diffusion_running.DiffusionRunning)


# ---------------------------------------------------------------- loading


def test_folder_loads_through_from_pretrained(tiny_sdxl_dir, monkeypatch):
    from diffusers import StableDiffusionXLPipeline

    calls = []
    real = StableDiffusionXLPipeline.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        calls.append((path, kwargs))
        return real(cls, path, **kwargs)

    monkeypatch.setattr(StableDiffusionXLPipeline, "from_pretrained", classmethod(spy))
    eng = Diffusion(str(tiny_sdxl_dir), device="cpu").load()
    assert [c[0] for c in calls] == [str(tiny_sdxl_dir)]
    assert calls[0][1]["dtype"] is torch.float32
    info = eng.describe()
    assert info["source"] == "folder" and info["kind"] == "sdxl"
    assert info["pipeline"] == "StableDiffusionXLPipeline"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert eng.is_tiny_random  # the folder carries the tiny marker
    # The weights made it through save + load unchanged.
    built = build_tiny_sdxl(seed=0).unet.state_dict()
    loaded = eng.txt2img.unet.state_dict()
    assert built.keys() == loaded.keys()
    assert all(torch.equal(built[k], loaded[k]) for k in built)


def test_tiny_random_builds_fast_and_is_labelled(engine):
    # `engine` first, so torch/diffusers imports are already paid for.
    start = time.perf_counter()
    eng = Diffusion("tiny-random").load()
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"tiny-random took {elapsed:.2f} s"
    assert eng.is_tiny_random and eng.kind == "sdxl"
    assert eng.device == "cpu" and eng.dtype == torch.float32
    assert eng.default_size == (64, 64)
    # Real CLIP BPE ids: the tiny model cuts prompts where real SDXL does.
    assert eng.txt2img.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Seeded init: two builds are the same model.
    again = Diffusion("tiny-random").load()
    assert torch.equal(eng.txt2img.unet.conv_in.weight, again.txt2img.unet.conv_in.weight)


def test_a_real_model_is_not_labelled_tiny(tmp_path, tiny_sdxl_dir):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_sdxl_dir, copy)
    (copy / TINY_MARKER).unlink()
    eng = Diffusion(str(copy), device="cpu")
    assert not eng.is_tiny_random
    assert not eng.load().is_tiny_random


def test_load_is_lazy_and_once():
    eng = Diffusion("tiny-random", device="cpu")
    assert not eng.loaded
    pipe = eng.load().txt2img
    assert eng.loaded and eng.load().txt2img is pipe


def test_from_config_reads_a_config_like_object():
    cfg = SimpleNamespace(model="tiny-random", device="cpu", dtype="auto", vae_tiling=True)
    eng = Diffusion.from_config(cfg)
    assert eng.vae_tiling and not eng.cpu_offload
    assert eng.load().txt2img.vae.use_tiling


def test_missing_folder_is_a_clear_load_error(tmp_path):
    missing = tmp_path / "models" / "my-sdxl"
    with pytest.raises(DiffusionLoadError) as info:
        Diffusion(str(missing)).load()
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "Fix:" in message and "tiny-random" in message


def test_folder_without_model_index_is_explained(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(DiffusionLoadError, match="model_index.json"):
        Diffusion(str(tmp_path)).load()


def test_uncached_hub_model_offline_names_the_fix(monkeypatch, tmp_path):
    # A made-up id in an empty cache: the cache layout is read by hand, no library call is made.
    from diffusers import DiffusionPipeline

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    def forbidden(*args, **kwargs):
        raise AssertionError("an uncached model with HF_HUB_OFFLINE=1 must not reach the hub client")

    monkeypatch.setattr(DiffusionPipeline, "load_config", forbidden)
    with pytest.raises(DiffusionLoadError) as info:
        Diffusion("example-owner/example-model").load()
    message = str(info.value)
    assert "is not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "hf download example-owner/example-model" in message
    assert "No local folder" in message


def test_corrupt_single_file_is_a_clear_load_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"this is not a checkpoint" * 8)
    with pytest.raises(DiffusionLoadError, match="not a readable .safetensors checkpoint") as info:
        Diffusion(str(bad)).load()
    assert "download it again" in str(info.value)


def test_single_file_of_unknown_layout_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(DiffusionLoadError, match="not an SDXL or Stable Diffusion"):
        Diffusion(str(path)).load()


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DiffusionLoadError, match="not a checkpoint"):
        Diffusion(str(path)).load()


def test_float16_on_the_cpu_is_refused():
    with pytest.raises(DiffusionLoadError, match="float16"):
        Diffusion("tiny-random", device="cpu", dtype="float16").load()


def test_cpu_offload_needs_a_gpu():
    with pytest.raises(DiffusionLoadError, match="cpu_offload"):
        Diffusion("tiny-random", device="cpu", cpu_offload=True).load()


# ---------------------------------------------------------------- sharing and schedulers


def test_one_unet_shared_by_txt2img_and_img2img(engine):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLImg2ImgPipeline

    t2i, i2i = engine.txt2img, engine.img2img
    assert isinstance(i2i, StableDiffusionXLImg2ImgPipeline)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert getattr(t2i, name) is getattr(i2i, name), name
    for pipe in (t2i, i2i):
        assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
        assert pipe.scheduler.config.use_karras_sigmas is True
    assert t2i.scheduler is not i2i.scheduler  # stateful: one each


# ---------------------------------------------------------------- generating


@pytest.mark.parametrize("px", [64, 128])
def test_base_latent_img2img_decode(engine, px):
    z = _base(engine, px=px)
    assert z.shape == (1, 4, px // 8, px // 8)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert not z.is_inference() and not z.requires_grad  # an ordinary tensor for later steps
    z2 = engine.img2img_latent(z, PROMPT + ", snowfall", NEG, strength=0.5, guidance=7.5, steps=4, seed=2)
    assert z2.shape == z.shape
    assert (z2 - z).abs().mean().item() > 1e-3  # 4 x 0.5 = 2 real steps
    image = engine.decode(z2)
    assert image.size == (px, px) and image.mode == "RGB"


# The latents of one fixed chain (tiny SDXL folder of seed 0, 64 px, 4 steps), recorded on main
# before `base_latent` and `img2img_latent` shared one denoise helper: per channel the sum, the
# sum of absolute values and the top-left value. CPU kernels sum in another order with another
# thread count or instruction set (last bits move, ~1e-5 here), so these are compared to 1e-2;
# any change of seed, prompt, guidance, steps, strength or scheduler moves them by whole units.
# The exact, bit-for-bit check is the direct-diffusers test below, run in the same process.
REFERENCE_CHAIN = {
    "base": (
        [-149.347, -7.298, -71.79, -115.63],
        [819.254, 727.602, 738.176, 687.036],
        [-11.27, 0.3693, 7.4772, -6.656],
    ),
    "img2img": (
        [-154.206, -12.197, -76.812, -112.552],
        [817.711, 727.256, 736.84, 687.194],
        [-10.7945, 1.3247, 7.7551, -6.9944],
    ),
}


def _chain(engine):
    z = _base(engine, seed=7)
    z2 = engine.img2img_latent(z, PROMPT + ", snowfall", NEG, strength=0.5, guidance=7.5, steps=4, seed=7 + 2137)
    return z, z2


def test_latents_match_the_reference_recorded_before_the_denoise_split(engine):
    for name, latent in zip(("base", "img2img"), _chain(engine)):
        assert latent.dtype == torch.float32 and latent.shape == (1, 4, 8, 8)
        t = latent.double()[0]
        sums, abs_sums, corner = REFERENCE_CHAIN[name]
        assert t.sum(dim=(1, 2)).tolist() == pytest.approx(sums, abs=1e-2), name
        assert t.abs().sum(dim=(1, 2)).tolist() == pytest.approx(abs_sums, abs=1e-2), name
        assert t[:, 0, 0].tolist() == pytest.approx(corner, abs=1e-3), name


def test_latents_equal_a_direct_diffusers_call_bit_for_bit(engine):
    # What base_latent and img2img_latent add to diffusers' own call (the step callback, the
    # cancel check, the error mapping, no_grad) changes no bit of the latents.
    z, z2 = _chain(engine)
    with torch.no_grad():
        theirs = _diffusers_base(engine, 7, "latent")
        theirs2 = engine.img2img(
            prompt=PROMPT + ", snowfall",
            negative_prompt=NEG,
            image=z,
            strength=0.5,
            num_inference_steps=4,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(7 + 2137),
            output_type="latent",
        ).images
    assert torch.equal(z, theirs)
    assert torch.equal(z2, theirs2)


def test_decode_divides_by_the_scaling_factor_like_diffusers(engine):
    # The latent from output_type="latent" is in the scaled space; diffusers' own decode
    # (output_type="np") divides by scaling_factor, and so does ours: same pixels.
    z = _base(engine, seed=5)
    ours = np.asarray(engine.decode(z), dtype=np.float32) / 255.0
    theirs = _diffusers_base(engine, 5, "np")[0]
    assert np.abs(ours - theirs).max() <= 1 / 255 + 1e-6
    # ... and the scaling matters: decoding without the division looks different.
    scale = engine.txt2img.vae.config.scaling_factor
    assert scale == pytest.approx(0.13025)
    wrong = np.asarray(engine.decode(z * scale), dtype=np.float32) / 255.0
    assert np.abs(wrong - theirs).max() > 0.05


def test_img2img_takes_the_latent_without_encoding(engine, monkeypatch):
    vae = engine.img2img.vae

    def forbidden(*args, **kwargs):
        raise AssertionError("img2img re-encoded the latent")

    monkeypatch.setattr(vae, "encode", forbidden)
    z = _base(engine)
    engine.img2img_latent(z, PROMPT, NEG, strength=0.5, guidance=5.0, steps=4, seed=3)


def test_same_seed_same_png_other_seed_other_png(engine):
    def chain(seed):
        z = _base(engine, seed=seed)
        z2 = engine.img2img_latent(z, PROMPT, NEG, strength=0.5, guidance=7.5, steps=4, seed=seed + 2137)
        fused = frequency_fusion(z2, z, generator=engine.generator(seed))
        return _png(engine.decode(fused))

    first = chain(11)
    assert chain(11) == first
    assert chain(12) != first


def test_on_step_reports_done_and_total(engine):
    seen = []
    z = _base(engine, steps=5, on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    seen.clear()
    engine.img2img_latent(
        z,
        PROMPT,
        NEG,
        strength=0.3,
        guidance=5.0,
        steps=10,
        seed=1,
        on_step=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert engine.planned_steps(10, 0.3) == 3 == img2img_step_count(10, 0.3)


def test_planned_steps_follow_diffusers(engine):
    assert engine.planned_steps(50) == 50
    assert engine.planned_steps(50, 0.74) == 37  # SPEC's last_k 37 of 50
    assert engine.planned_steps(4, 0.3) == 1
    assert engine.planned_steps(100, 29 / 100) == 28 == img2img_step_count(100, 0.29)  # float product
    assert engine.planned_steps(4, 1.0) == 4


def test_img2img_with_no_steps_left_is_refused(engine):
    z = _base(engine)
    with pytest.raises(ValueError, match="0 steps"):
        engine.img2img_latent(z, PROMPT, NEG, strength=0.1, guidance=5.0, steps=4, seed=1)


def test_cancel_stops_within_one_step(engine):
    cancel = threading.Event()
    seen = []

    def on_step(done, total):
        seen.append(done)
        if done == 2:
            cancel.set()

    with pytest.raises(DiffusionCancelled) as info:
        _base(engine, steps=6, on_step=on_step, cancel=cancel)
    assert seen == [1, 2]
    assert (info.value.done, info.value.total) == (2, 6)
    # The engine is fine afterwards.
    assert _base(engine).shape == (1, 4, 8, 8)


def test_cancel_callable_in_img2img_and_before_start(engine):
    z = _base(engine)
    seen = []
    with pytest.raises(DiffusionCancelled):
        engine.img2img_latent(
            z,
            PROMPT,
            NEG,
            strength=1.0,
            guidance=5.0,
            steps=5,
            seed=1,
            on_step=lambda d, t: seen.append(d),
            cancel=lambda: len(seen) >= 1,
        )
    assert seen == [1]
    seen.clear()
    with pytest.raises(DiffusionCancelled, match="before the first step"):
        _base(engine, on_step=lambda d, t: seen.append(d), cancel=lambda: True)
    assert seen == []


def test_out_of_memory_becomes_a_clear_error_and_the_engine_survives(engine, monkeypatch):
    freed = []
    monkeypatch.setattr(engine, "_free_memory", lambda: freed.append(True))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.txt2img.unet, "forward", oom)
    with pytest.raises(DiffusionOutOfMemory) as info:
        _base(engine)
    message = str(info.value)
    assert "diffusion.cpu_offload = true" in message and "diffusion.vae_tiling = true" in message
    assert "still usable" in message and "20.00 GiB" in message
    assert freed == [True]
    monkeypatch.undo()
    assert _base(engine).shape == (1, 4, 8, 8)


def test_out_of_memory_while_decoding(engine, monkeypatch):
    z = _base(engine)

    def oom(*args, **kwargs):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 17 GB)")

    monkeypatch.setattr(engine.txt2img.vae, "decode", oom)
    with pytest.raises(DiffusionOutOfMemory, match="decode"):
        engine.decode(z)
    monkeypatch.undo()
    assert engine.decode(z).size == (64, 64)


def test_other_errors_pass_through(engine, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch somewhere")

    monkeypatch.setattr(engine.txt2img.unet, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _base(engine)


def test_decode_upcasts_a_float16_vae_and_casts_it_back():
    eng = Diffusion("tiny-random").load()
    vae = eng.txt2img.vae
    assert vae.config.force_upcast
    z = eng.base_latent(PROMPT, NEG, width=64, height=64, steps=2, guidance=4.5, seed=1)
    expected = eng.decode(z)
    vae.to(dtype=torch.float16)  # as on CUDA
    seen = []
    real_decode = vae.decode

    def spy(latents, *args, **kwargs):
        seen.append((latents.dtype, vae.dtype))
        return real_decode(latents, *args, **kwargs)

    vae.decode = spy
    image = eng.decode(z.half())
    assert seen == [(torch.float32, torch.float32)]
    assert vae.dtype == torch.float16
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert diff.max() <= 2  # only the fp16 rounding of the weights differs


def test_bfloat16_on_the_cpu_runs():
    eng = Diffusion("tiny-random", device="cpu", dtype="bfloat16").load()
    z = eng.base_latent(PROMPT, NEG, width=64, height=64, steps=2, guidance=4.5, seed=1)
    assert z.dtype == torch.bfloat16
    assert eng.decode(z).size == (64, 64)


def test_sd15_runs_the_same_way(tiny_sd15_dir):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    eng = Diffusion(str(tiny_sd15_dir), device="cpu").load()
    assert eng.kind == "sd" and eng.is_tiny_random
    assert isinstance(eng.txt2img, StableDiffusionPipeline)
    assert isinstance(eng.img2img, StableDiffusionImg2ImgPipeline)
    assert eng.txt2img.unet is eng.img2img.unet
    z = eng.base_latent(PROMPT, NEG, width=64, height=64, steps=4, guidance=7.5, seed=1)
    assert z.shape == (1, 4, 8, 8)
    z2 = eng.img2img_latent(z, PROMPT, NEG, strength=0.5, guidance=7.5, steps=4, seed=2)
    assert (z2 - z).abs().mean().item() > 1e-3
    assert eng.decode(z2).size == (64, 64)


def test_size_must_be_a_multiple_of_8(engine):
    with pytest.raises(ValueError, match="multiples of 8"):
        engine.base_latent(PROMPT, NEG, width=60, height=64, steps=2, guidance=4.5, seed=1)


def test_out_of_memory_while_loading_names_cpu_offload(monkeypatch):
    from diffusers import StableDiffusionXLPipeline

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.00 GiB")

    monkeypatch.setattr(StableDiffusionXLPipeline, "to", oom)
    eng = Diffusion("tiny-random")
    with pytest.raises(DiffusionOutOfMemory, match="diffusion.cpu_offload = true"):
        eng.load()
    assert not eng.loaded
    monkeypatch.undo()
    assert eng.load().loaded


def test_sdxl_single_file_without_unet_and_vae_names_the_missing_parts(tmp_path):
    # Recognised as SDXL from its keys, but the file has no UNet and no VAE to build it from.
    from safetensors.torch import save_file

    path = tmp_path / "my-sdxl.safetensors"
    save_file(
        {
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(2),
            "conditioner.embedders.1.model.ln_final.weight": torch.ones(2),
        },
        str(path),
    )
    with pytest.raises(DiffusionLoadError) as info:
        Diffusion(str(path)).load()
    message = str(info.value)
    assert str(path) in message and "incomplete SDXL checkpoint" in message
    assert "no UNet, no VAE weights" in message and "first_stage_model.*" in message


@pytest.mark.parametrize(
    ("index", "words"),
    [
        (
            {
                "_class_name": "StableDiffusionXLImg2ImgPipeline",
                "requires_aesthetics_score": True,
                "text_encoder": [None, None],
            },
            "refiner",
        ),
        ({"_class_name": "FluxPipeline"}, "FluxPipeline pipeline"),
    ],
)
def test_unsupported_pipeline_folders_are_refused(tmp_path, index, words):
    import json

    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DiffusionLoadError, match=words):
        Diffusion(str(tmp_path)).load()
