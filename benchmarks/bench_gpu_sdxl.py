"""Full-size SDXL on a CUDA GPU, random weights: steps/s and peak VRAM, engine vs plain diffusers.

What it measures
----------------
No model hub is reachable from the GPU machines, and the cost of a denoising step depends on
the architecture's shapes, not on the weights' values. So the script builds the real SDXL base
1.0 architecture from its configs, written out below (UNet 2,567,463,684 parameters, the
4-level VAE, CLIP ViT-L and OpenCLIP bigG text encoders, the real CLIP BPE tokenizer from the
package's bundled merges file), with random weights, saves it ONCE to a local folder in float16
and then, at 1024x1024, 30 steps, float16:

(a) plain diffusers: ``StableDiffusionXLPipeline.from_pretrained(folder)`` on the GPU, with the
    same DPM-Solver++ (Karras) scheduler config as the engine, ``output_type="latent"``;
(b) our engine: ``Diffusion(folder, device="cuda", dtype="float16").base_latent`` (with an
    ``on_step`` callback and a ``cancel`` event, as the app runs it) on the same folder;
    (a) and (b) are timed interleaved (A, B, B, A, ...), each at 30 and at 10 steps: the
    end-to-end rate is 30 / T30 (text encoding etc. included) and the loop rate is
    20 / (T30 - T10) (fixed costs cancel out);
(c) peak VRAM (``torch.cuda.max_memory_allocated``) of the whole refinement flow, once for our
    engine (one copy of every module shared by txt2img and img2img: base 30 steps, img2img at
    strength 0.75, frequency fusion, decode) and once the way the reference does it: two
    pipelines loaded separately (``StableDiffusionXLPipeline`` and
    ``StableDiffusionXLImg2ImgPipeline``, each ``from_pretrained``), txt2img to a latent, img2img
    decoding to an image;
(d) the fraction of the compute floor: one SDXL UNet step at 1024x1024 with classifier-free
    guidance (batch 2) is 13.5 TFLOP (counted on the meta device, see ``--meta-check``); at the
    798 TFLOP/s an H100 gave on bf16 matrix products that is ~17 ms a step. Reported as
    floor / measured ms per step.

It prints a table, and writes JSON to ``$OUT/bench_gpu_sdxl.json`` when ``$OUT`` is set (after
every phase, so a run cut short still leaves its numbers). Without a CUDA device it prints
"no CUDA device" and exits 0 at once (a smoke run anywhere). ``--meta-check`` needs no GPU:
it builds every config on the meta device, checks the UNet's parameter count
(2,567,463,684) and counts the FLOPs of one guided UNet step at the chosen size.

Run (from the repository root; the GPU machine needs only the diffusers wheel added)::

    python benchmarks/bench_gpu_sdxl.py                  # the measurement (~3-5 min on an H100)
    python benchmarks/bench_gpu_sdxl.py --quick          # 512 px, 8 steps, 1 repeat
    python benchmarks/bench_gpu_sdxl.py --meta-check     # no GPU needed: shapes, params, FLOPs
    python benchmarks/bench_gpu_sdxl.py --cpu-dry-run    # no GPU needed: every phase, tiny config, CPU
    ... --size 1024 --steps 30 --short-steps 10 --repeats 3 --strength 0.75 --folder /tmp/sdxl-random
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is local
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package, from the repository root

UNET_PARAMS = 2_567_463_684
FLOOR_TFLOP_PER_STEP = 13.5  # one guided step (batch 2) at 1024 px, counted on the meta device
PEAK_TFLOPS = 798.0  # bf16 matrix products measured on an H100 of this workplace
PROMPT = "a red fox in a snowy forest, golden hour, high detailed, sharp focus, 8k, UHD"
REFINE_PROMPT = "a red fox standing in deep snow among pine trees, low golden sun, warm rim light"
NEGATIVE = "low quality, blurry, watermark, jpeg artifacts"
SEED = 2026

# stabilityai/stable-diffusion-xl-base-1.0's unet/ and vae/ configs: the package ships them for
# single-file checkpoints (critifusion_tui/engine/single_file_configs.py), one copy for both.
from critifusion_tui.engine.single_file_configs import builtin_config  # noqa: E402

_SDXL = builtin_config("sdxl-base")
UNET_CONFIG = {k: v for k, v in _SDXL["unet/config.json"].items() if not k.startswith("_")}
VAE_CONFIG = {k: v for k, v in _SDXL["vae/config.json"].items() if not k.startswith("_")}

# text_encoder (CLIP ViT-L/14) and text_encoder_2 (OpenCLIP ViT-bigG/14, with projection).
# Token ids follow the bundled CLIP tokenizer (49,408 ids; BOS 49406, EOS = pad 49407).
TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
TEXT_2_CONFIG = {
    **TEXT_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

# scheduler/scheduler_config.json (the engine swaps in DPM-Solver++ with Karras sigmas from it)
SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- building


def build_modules(device, dtype=None):
    """The SDXL base modules with random weights, built on `device` (``meta`` for shapes only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2_CONFIG))
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for module in modules.values():
        module.eval().requires_grad_(False)
        if dtype is not None:
            torch.nn.Module.to(module, dtype=dtype)
    return modules


def param_counts(modules) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


def build_pipeline(modules):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from critifusion_tui.engine.tiny_sdxl import (
        build_tiny_clip_tokenizer,  # the real CLIP BPE, offline
    )

    return StableDiffusionXLPipeline(
        **modules,
        tokenizer=build_tiny_clip_tokenizer(),
        tokenizer_2=build_tiny_clip_tokenizer(),
        scheduler=EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),  # ignores the keys it lacks
        add_watermarker=False,
    )


def guided_step_flops(unet, size: int) -> float:
    """FLOPs of one UNet call with classifier-free guidance (batch 2) at `size` px, on meta."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    side = size // 8
    with torch.device("meta"):
        sample = torch.randn(2, 4, side, side)
        t = torch.tensor([999, 999])
        context = torch.randn(2, 77, UNET_CONFIG["cross_attention_dim"])
        added = {"text_embeds": torch.randn(2, TEXT_2_CONFIG["projection_dim"]), "time_ids": torch.randn(2, 6)}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, t, encoder_hidden_states=context, added_cond_kwargs=added)
    return float(counter.get_total_flops())


def meta_check(size: int) -> int:
    """No GPU needed: build every config on the meta device, check counts, count FLOPs."""
    started = time.perf_counter()
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    imported = time.perf_counter() - started
    started = time.perf_counter()
    modules = build_modules("meta")
    built = time.perf_counter() - started
    counts = param_counts(modules)
    pipe = build_pipeline(modules)
    print(f"built on the meta device in {built:.2f} s (imports {imported:.1f} s before); pipeline {type(pipe).__name__}, "
          f"vae_scale_factor {pipe.vae_scale_factor}, default size "
          f"{pipe.unet.config.sample_size * pipe.vae_scale_factor} px, tokenizer {len(pipe.tokenizer)} ids")
    for name, n in counts.items():
        print(f"  {name:15s} {n:>15,d} parameters ({n * 2 / 1e9:.2f} GB in float16)")
    print(f"  {'total':15s} {sum(counts.values()):>15,d} parameters")
    ok = counts["unet"] == UNET_PARAMS
    print(f"UNet parameters {counts['unet']:,} {'==' if ok else '!='} {UNET_PARAMS:,} (SDXL base 1.0)")
    flops = guided_step_flops(modules["unet"], size)
    print(f"one guided UNet step (batch 2) at {size}x{size}: {flops / 1e12:.2f} TFLOP; at {PEAK_TFLOPS:g} TFLOP/s "
          f"the floor is {flops / 1e12 / PEAK_TFLOPS * 1e3:.1f} ms a step")
    result = {"params": counts, "unet_ok": ok, "size": size, "guided_step_tflop": flops / 1e12}
    write_json(result, "bench_gpu_sdxl_meta.json")
    return 0 if ok else 1


# --------------------------------------------------------------------------- measuring


class Dev:
    """The device's clock and memory counters (CUDA; on the CPU only for a dry run of the code)."""

    def __init__(self, name: str) -> None:
        import torch

        self.name, self.torch = name, torch
        self.cuda = name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated() if self.cuda else 0

    def peak_reserved(self) -> int:
        return self.torch.cuda.max_memory_reserved() if self.cuda else 0

    def timed(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


def save_random_sdxl(folder: Path, dev: Dev, dtype) -> dict:
    """Build on the device (fast random init), cast to `dtype`, save as a diffusers folder."""
    started = time.perf_counter()
    modules = build_modules(dev.name, dtype=dtype)
    counts = param_counts(modules)
    if counts["unet"] != UNET_PARAMS and UNET_CONFIG["block_out_channels"] == [320, 640, 1280]:
        raise SystemExit(f"UNet has {counts['unet']:,} parameters, expected {UNET_PARAMS:,}: the config is wrong")
    pipe = build_pipeline(modules)
    built = time.perf_counter() - started
    started = time.perf_counter()
    pipe.save_pretrained(folder)
    saved = time.perf_counter() - started
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    del pipe, modules
    dev.free()
    log(f"built the random SDXL on {dev.name} in {built:.1f} s, saved {size / 1e9:.2f} GB to {folder} in {saved:.1f} s")
    return {"build_s": built, "save_s": saved, "folder_bytes": size, "params": counts}


def gib(n: int) -> float:
    return n / 2**30


def load_plain(folder: Path, cls_name: str, dev: Dev, dtype):
    """A plain diffusers pipeline from the folder, with the engine's scheduler (DPM-Solver++, Karras)."""
    import diffusers
    from diffusers import DPMSolverMultistepScheduler

    cls = getattr(diffusers, cls_name)
    pipe = cls.from_pretrained(str(folder), dtype=dtype, add_watermarker=False).to(dev.name)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def engine_flow(engine, size: int, steps: int, strength: float) -> int:
    """The method's diffusion on our engine: base, img2img, fusion, decode; returns the steps seen."""
    from critifusion_tui.engine.specfusion import frequency_fusion, refine_seed

    cancel = threading.Event()
    seen = []
    x_lo = engine.base_latent(PROMPT, NEGATIVE, width=size, height=size, steps=steps, guidance=4.5, seed=SEED,
                              on_step=lambda d, t: seen.append(d), cancel=cancel)
    seed2 = refine_seed(SEED, int(steps * strength))
    x_hi = engine.img2img_latent(x_lo, REFINE_PROMPT, NEGATIVE, strength=strength, guidance=7.5, steps=steps,
                                 seed=seed2, on_step=lambda d, t: seen.append(d), cancel=cancel)
    fused = frequency_fusion(x_hi, x_lo.to(x_hi.device, x_hi.dtype), generator=engine.generator(seed2))
    engine.decode(fused)
    return len(seen)


def reference_flow(txt, img, dev: Dev, size: int, steps: int, strength: float) -> None:
    """The reference's way: two separately loaded pipelines, the second one decoding."""
    import torch

    from critifusion_tui.engine.specfusion import refine_seed

    with torch.no_grad():
        latent = txt(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, num_inference_steps=steps,
                     guidance_scale=4.5, generator=torch.Generator(dev.name).manual_seed(SEED),
                     output_type="latent").images
        seed2 = refine_seed(SEED, int(steps * strength))
        img(prompt=REFINE_PROMPT, negative_prompt=NEGATIVE, image=latent, strength=strength,
            num_inference_steps=steps, guidance_scale=7.5,
            generator=torch.Generator(dev.name).manual_seed(seed2), output_type="pil")


def median(values):
    import statistics

    return statistics.median(values)


def measure(args, results: dict, dev: Dev, dtype) -> None:
    import torch

    from critifusion_tui.engine.diffusion import Diffusion

    size, steps, short = args.size, args.steps, args.short_steps
    # (d) the floor at this size, counted on the meta device (a few seconds, no memory).
    try:
        flops = guided_step_flops(build_modules("meta")["unet"], size)
    except Exception as exc:  # noqa: BLE001  (a torch without a FLOP formula: use the counted figure)
        log(f"FLOP count on the meta device failed ({type(exc).__name__}: {exc}); using "
            f"{FLOOR_TFLOP_PER_STEP} TFLOP at 1024 px scaled by the pixel count")
        flops = FLOOR_TFLOP_PER_STEP * 1e12 * (size / 1024) ** 2
    floor_ms = flops / 1e12 / PEAK_TFLOPS * 1e3
    results["floor"] = {"guided_step_tflop": flops / 1e12, "peak_tflops": PEAK_TFLOPS, "floor_ms_per_step": floor_ms}
    log(f"one guided UNet step at {size}x{size}: {flops / 1e12:.2f} TFLOP -> floor {floor_ms:.1f} ms at {PEAK_TFLOPS:g} TFLOP/s")

    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="sdxl-random-"))
    if not (folder / "model_index.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        results["build"] = save_random_sdxl(folder, dev, dtype)
        write_json(results)
    else:
        log(f"reusing the saved random SDXL in {folder}")

    # (c1) our engine alone: one load, the whole flow (also the warm-up of (b)).
    dev.free()
    base_alloc = dev.allocated()
    started = time.perf_counter()
    engine = Diffusion(str(folder), device=dev.name, dtype=str(dtype).removeprefix("torch.")).load()
    load_s = time.perf_counter() - started
    weights = dev.allocated() - base_alloc
    log(f"engine loaded in {load_s:.1f} s: {gib(weights):.2f} GiB of weights on {dev.name}")
    dev.reset_peak()
    seen: list[int] = []
    flow_s = dev.timed(lambda: seen.append(engine_flow(engine, size, steps, args.strength)))
    engine_peak = dev.peak() - base_alloc
    results["vram_engine"] = {
        "load_s": load_s, "weights_gib": gib(weights), "peak_gib": gib(engine_peak),
        "flow_s_first": flow_s, "reserved_peak_gib": gib(dev.peak_reserved()), "callback_steps": seen[0],
    }
    log(f"engine flow (base {steps} + img2img at {args.strength} + fusion + decode): {flow_s:.2f} s (first run); "
        f"peak {gib(engine_peak):.2f} GiB allocated")
    write_json(results)

    # (a) vs (b): steps/s, interleaved, at `steps` and at `short` steps.
    plain = load_plain(folder, "StableDiffusionXLPipeline", dev, dtype)
    cancel = threading.Event()

    def run_plain(n: int) -> None:
        with torch.no_grad():
            plain(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, num_inference_steps=n,
                  guidance_scale=4.5, generator=torch.Generator(dev.name).manual_seed(SEED), output_type="latent")

    def run_engine(n: int) -> None:
        engine.base_latent(PROMPT, NEGATIVE, width=size, height=size, steps=n, guidance=4.5, seed=SEED,
                           on_step=lambda d, t: None, cancel=cancel)

    for n in (short, steps):  # warm-up of both at both lengths
        dev.timed(lambda n=n: run_plain(n))
        dev.timed(lambda n=n: run_engine(n))
    samples: dict[tuple[str, int], list[float]] = {(k, n): [] for k in ("plain", "engine") for n in (steps, short)}
    sides = (("plain", run_plain), ("engine", run_engine))
    for i in range(args.repeats):
        for name, fn in sides if i % 2 == 0 else sides[::-1]:
            for n in (steps, short):
                samples[(name, n)].append(dev.timed(lambda fn=fn, n=n: fn(n)))
    rates: dict = {}
    for name in ("plain", "engine"):
        t_long, t_short = median(samples[(name, steps)]), median(samples[(name, short)])
        loop_ms = (t_long - t_short) / (steps - short) * 1e3
        rates[name] = {
            f"t{steps}_s": t_long, f"t{short}_s": t_short,
            "samples_long_s": samples[(name, steps)], "samples_short_s": samples[(name, short)],
            "steps_per_s_end_to_end": steps / t_long,
            "loop_ms_per_step": loop_ms,
            "loop_steps_per_s": 1e3 / loop_ms if loop_ms > 0 else float("nan"),
            "fraction_of_floor": floor_ms / loop_ms if loop_ms > 0 else float("nan"),
        }
    rates["engine_over_plain_time"] = rates["engine"][f"t{steps}_s"] / rates["plain"][f"t{steps}_s"]
    rates["floor_ms_per_step"] = floor_ms
    results["speed"] = rates
    log(f"steps/s end to end: plain {rates['plain']['steps_per_s_end_to_end']:.2f}, "
        f"engine {rates['engine']['steps_per_s_end_to_end']:.2f}")
    write_json(results)
    plain = engine = None  # drop both (the closures above hold only these names)
    dev.free()

    # (c2) the reference: two pipelines loaded separately (the engine is gone).
    base_alloc = dev.allocated()
    started = time.perf_counter()
    txt = load_plain(folder, "StableDiffusionXLPipeline", dev, dtype)
    img = load_plain(folder, "StableDiffusionXLImg2ImgPipeline", dev, dtype)
    ref_load_s = time.perf_counter() - started
    ref_weights = dev.allocated() - base_alloc
    dev.reset_peak()
    ref_flow_s = dev.timed(lambda: reference_flow(txt, img, dev, size, steps, args.strength))
    ref_peak = dev.peak() - base_alloc
    results["vram_reference"] = {
        "load_s": ref_load_s, "weights_gib": gib(ref_weights), "peak_gib": gib(ref_peak),
        "flow_s_first": ref_flow_s, "reserved_peak_gib": gib(dev.peak_reserved()),
    }
    log(f"reference: two pipelines loaded in {ref_load_s:.1f} s, {gib(ref_weights):.2f} GiB of weights; "
        f"flow {ref_flow_s:.2f} s, peak {gib(ref_peak):.2f} GiB allocated")
    write_json(results)
    txt = img = None
    dev.free()
    if not args.folder and not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def print_table(results: dict, args, dtype: str = "float16") -> None:
    s, ve, vr = results.get("speed"), results.get("vram_engine"), results.get("vram_reference")
    print()
    print(f"| {results['device']} | {args.size}x{args.size}, {args.steps} steps, {dtype}, random weights |  |")
    print("| --- | --- | --- |")
    if s:
        for name, label in (("plain", "plain StableDiffusionXLPipeline"), ("engine", "Diffusion.base_latent")):
            r = s[name]
            print(f"| {label} | {r['steps_per_s_end_to_end']:.2f} steps/s end to end ({r[f't{args.steps}_s']:.2f} s) | "
                  f"loop {r['loop_ms_per_step']:.1f} ms/step = {r['loop_steps_per_s']:.2f} steps/s, "
                  f"{r['fraction_of_floor'] * 100:.0f}% of the {s['floor_ms_per_step']:.1f} ms floor |")
        print(f"| engine / plain time | {s['engine_over_plain_time']:.3f} |  |")
    if ve:
        print(f"| engine: one load, txt2img + img2img share modules | weights {ve['weights_gib']:.2f} GiB | "
              f"peak {ve['peak_gib']:.2f} GiB allocated |")
    if vr:
        print(f"| reference: two pipelines loaded | weights {vr['weights_gib']:.2f} GiB | "
              f"peak {vr['peak_gib']:.2f} GiB allocated |")
    if ve and vr and vr["peak_gib"] > 0:
        print(f"| peak VRAM saved | {vr['peak_gib'] - ve['peak_gib']:.2f} GiB | "
              f"engine = {ve['peak_gib'] / vr['peak_gib'] * 100:.0f}% of the reference |")


def shrink_to_tiny() -> None:
    """For --cpu-dry-run: the same architecture families, tiny (SDXL-shaped, a few M params)."""
    UNET_CONFIG.update(block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], norm_num_groups=8,
                       transformer_layers_per_block=[1, 1, 1], cross_attention_dim=64, addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=6 * 8 + 32, sample_size=16)
    VAE_CONFIG.update(block_out_channels=[8, 8, 16, 16], norm_num_groups=8, layers_per_block=1)
    tiny_text = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                 "projection_dim": 32}
    TEXT_CONFIG.update(tiny_text)
    TEXT_2_CONFIG.update(tiny_text)


def quiet_loading() -> None:
    """No progress bars or import-time notices from diffusers / transformers in the log."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def write_json(results: dict, name: str = "bench_gpu_sdxl.json") -> None:
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in px")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (the long run)")
    parser.add_argument("--short-steps", type=int, default=10, help="the short run, for the loop's rate")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side and length")
    parser.add_argument("--strength", type=float, default=0.75, help="img2img strength of the VRAM flow")
    parser.add_argument("--folder", default=None, help="save/reuse the random SDXL here (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--meta-check", action="store_true",
                        help="no GPU: build on the meta device, check parameter counts, count FLOPs")
    parser.add_argument("--quick", action="store_true", help="smoke run: 512 px, 8/4 steps, 1 repeat")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="no GPU: run every phase on the CPU with a TINY config in float32 (checks the "
                             "script's code paths; its numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.short_steps, args.repeats = 512, 8, 4, 1
    if args.size % 8 or args.short_steps >= args.steps:
        parser.error("--size must be a multiple of 8 and --short-steps smaller than --steps")

    if args.meta_check:
        return meta_check(args.size)
    import torch

    if args.cpu_dry_run:
        shrink_to_tiny()
        quiet_loading()
        torch.set_num_threads(1)
        args.size, args.steps, args.short_steps, args.repeats = 128, 6, 3, 1
        results = {"device": "CPU dry run, tiny config (not SDXL)", "args": vars(args)}
        measure(args, results, Dev("cpu"), torch.float32)
        print_table(results, args, "float32")
        print("dry run done: every phase ran (CPU, tiny config); no number above is a measurement of SDXL")
        return 0

    if not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}): nothing measured. Run this on a CUDA machine; "
              "--meta-check checks the configs without one.")
        return 0
    try:
        import diffusers
    except ImportError:
        print("diffusers is not installed: carry its wheel (pip install --no-deps diffusers-*.whl)")
        return 2
    import transformers

    props = torch.cuda.get_device_properties(0)
    results = {
        "device": props.name,
        "gpu_memory_gib": gib(props.total_memory),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "args": vars(args),
    }
    quiet_loading()
    log(f"{props.name}, {gib(props.total_memory):.0f} GiB; torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}")
    started = time.perf_counter()
    try:
        measure(args, results, Dev("cuda"), torch.float16)
    finally:
        results["total_s"] = time.perf_counter() - started
        write_json(results)
        print_table(results, args)
        log(f"done in {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
