"""Full-size SDXL on a CUDA GPU, random weights: plain diffusers, the engine, and its speed switches.

What it measures
----------------
No model hub is reachable from the GPU machines, and the cost of a denoising step depends on
the architecture's shapes, not on the weights' values. So the script builds the real SDXL base
1.0 architecture from its configs, written out below (UNet 2,567,463,684 parameters, the
4-level VAE, CLIP ViT-L and OpenCLIP bigG text encoders, the real CLIP BPE tokenizer from the
package's bundled merges file), with random weights, and saves it ONCE to a local folder in
float16. Every row then loads that folder its own way and draws at 1024x1024 with guidance 4.5
(classifier-free guidance: the UNet runs on a batch of 2), ``output_type="latent"``:

=============== ===========================================================================
row             what runs
=============== ===========================================================================
plain           ``StableDiffusionXLPipeline.from_pretrained(folder)``, the engine's
                DPM-Solver++ (Karras) scheduler
engine          ``Diffusion(folder).base_latent`` with every switch off: equal settings to
                plain (with the ``on_step`` callback and ``cancel`` event the app passes)
+channels_last  the engine with ``channels_last = true`` (UNet and VAE)
+fuse_qkv       the engine with ``fuse_qkv = true``
+compile        the engine with ``compile = true`` (the UNet's repeated blocks, regionally)
auto            the engine as ``"auto"`` sets it on CUDA: channels_last and fused QKV
all             channels_last, fused QKV and compile
=============== ===========================================================================

in float16 and in bfloat16. Per row: the load, the time to the first image (load, the first
30-step base and its decode: a compile row pays its compile here), end-to-end steps/s
(30 / T30), the loop's ms per step ((T30 - T10) / 20: fixed costs such as text encoding cancel
out) against the compute floor, the speed over plain in the same dtype, the VAE decode
(float32 upcast for a float16 VAE, none in bfloat16) and the peak VRAM of the row.

Once: (1) peak VRAM (``torch.cuda.max_memory_allocated``) of the whole refinement flow, the
``auto`` engine (one copy of every module shared by txt2img and img2img: base 30 steps, img2img
at strength 0.75, frequency fusion, decode) against the reference's way, two pipelines loaded
separately (txt2img to a latent, img2img decoding); (2) host-device synchronisations per
denoising step (``torch.cuda.set_sync_debug_mode``), the engine with its step callback against
plain; (3) the attention kernels that ran (``torch.profiler`` over a 2-step base), beside the
kernel the engine recorded in ``describe()``.

The floor: one SDXL UNet step at 1024x1024 with guidance is 13.5 TFLOP (counted on the meta
device, see ``--meta-check``); at the 798 TFLOP/s an H100 gave on bf16 matrix products that
is ~17 ms a step. Targets (issue 14), printed next to the numbers: the engine >= 1.0x plain at
equal settings, >= 1.3x with the speed switches, at most 29 ms per guided step at 1024 px, the
flow's peak VRAM at most 0.55x the two-pipeline load.

Time: rows run in order of importance. A row that would end after ``--budget-s`` seconds from
the start (default 420: the whole script under 8 minutes on one H100, with a margin) is
skipped and says so; the per-switch rows in bfloat16 come last. ``--repeats`` (default 2)
timed pairs (T30, T10) per row.

It prints a table, and writes JSON to ``$OUT/bench_gpu_sdxl.json`` when ``$OUT`` is set (after
every row, so a run cut short still leaves its numbers). Without a CUDA device it prints
"no CUDA device" and exits 0 at once (a smoke run anywhere). ``--meta-check`` needs no GPU:
it builds every config on the meta device, checks the UNet's parameter count
(2,567,463,684) and counts the FLOPs of one guided UNet step at the chosen size.
``--cpu-dry-run`` runs every row and phase on the CPU with a tiny config (float32 standing in
for float16, which the CPU refuses; compile with dynamo's eager backend, which the engine
refuses off CUDA and the dry run lets through): it checks the script's code, not SDXL.

Run (from the repository root; the GPU machine needs only the diffusers wheel added)::

    python benchmarks/bench_gpu_sdxl.py                  # the measurement (under 8 min on an H100)
    python benchmarks/bench_gpu_sdxl.py --quick          # 512 px, 8/4 steps, 1 repeat
    python benchmarks/bench_gpu_sdxl.py --meta-check     # no GPU needed: shapes, params, FLOPs
    python benchmarks/bench_gpu_sdxl.py --cpu-dry-run    # no GPU needed: every row, tiny config, CPU
    ... --size 1024 --steps 30 --short-steps 10 --repeats 2 --strength 0.75 --budget-s 420
    ... --rows engine,all --dtypes float16 --folder /tmp/sdxl-random
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
    print(
        f"built on the meta device in {built:.2f} s (imports {imported:.1f} s before); pipeline {type(pipe).__name__}, "
        f"vae_scale_factor {pipe.vae_scale_factor}, default size "
        f"{pipe.unet.config.sample_size * pipe.vae_scale_factor} px, tokenizer {len(pipe.tokenizer)} ids"
    )
    for name, n in counts.items():
        print(f"  {name:15s} {n:>15,d} parameters ({n * 2 / 1e9:.2f} GB in float16)")
    print(f"  {'total':15s} {sum(counts.values()):>15,d} parameters")
    ok = counts["unet"] == UNET_PARAMS
    print(f"UNet parameters {counts['unet']:,} {'==' if ok else '!='} {UNET_PARAMS:,} (SDXL base 1.0)")
    flops = guided_step_flops(modules["unet"], size)
    print(
        f"one guided UNet step (batch 2) at {size}x{size}: {flops / 1e12:.2f} TFLOP; at {PEAK_TFLOPS:g} TFLOP/s "
        f"the floor is {flops / 1e12 / PEAK_TFLOPS * 1e3:.1f} ms a step"
    )
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


GUIDANCE = 4.5

# The engine's rows: name -> the switches it loads with. "plain" is diffusers itself.
OFF = {"channels_last": False, "fuse_qkv": False, "compile": False}
SWITCHES = {
    "engine": OFF,
    "+channels_last": {**OFF, "channels_last": True},
    "+fuse_qkv": {**OFF, "fuse_qkv": True},
    "+compile": {**OFF, "compile": True},
    "auto": {"channels_last": "auto", "fuse_qkv": "auto", "compile": False},
    "all": {"channels_last": True, "fuse_qkv": True, "compile": True},
}
ROW_NAMES = ("plain", *SWITCHES)
# Order of importance: what the targets need first, the per-switch rows in bfloat16 last.
PLAN = (
    ("plain", "float16"),
    ("engine", "float16"),
    ("all", "float16"),
    ("auto", "float16"),  # then the refinement flow's peak VRAM, and the reference's
    ("engine", "bfloat16"),
    ("all", "bfloat16"),
    ("plain", "bfloat16"),
    ("+channels_last", "float16"),
    ("+fuse_qkv", "float16"),
    ("+compile", "float16"),
    ("auto", "bfloat16"),
    ("+channels_last", "bfloat16"),
    ("+fuse_qkv", "bfloat16"),
    ("+compile", "bfloat16"),
)
TARGETS = {
    "engine_over_plain": 1.0,  # engine (switches off) speed / plain speed, same dtype
    "switches_over_plain": 1.3,  # the best switched row / plain
    "ms_per_step": 29.0,  # loop ms per guided step at 1024 px
    "flow_vram_ratio": 0.55,  # the engine's flow peak / the two pipelines' flow peak
}
# Seconds a row is expected to take before one has run (the budget's guess; then measured).
GUESS_S = {"row": 30.0, "compile": 120.0, "flow": 45.0}


def engine_flow(engine, size: int, steps: int, strength: float) -> int:
    """The method's diffusion on our engine: base, img2img, fusion, decode; returns the steps seen."""
    from critifusion_tui.engine.specfusion import frequency_fusion, refine_seed

    cancel = threading.Event()
    seen = []
    x_lo = engine.base_latent(
        PROMPT,
        NEGATIVE,
        width=size,
        height=size,
        steps=steps,
        guidance=GUIDANCE,
        seed=SEED,
        on_step=lambda d, t: seen.append(d),
        cancel=cancel,
    )
    seed2 = refine_seed(SEED, int(steps * strength))
    x_hi = engine.img2img_latent(
        x_lo,
        REFINE_PROMPT,
        NEGATIVE,
        strength=strength,
        guidance=7.5,
        steps=steps,
        seed=seed2,
        on_step=lambda d, t: seen.append(d),
        cancel=cancel,
    )
    fused = frequency_fusion(x_hi, x_lo.to(x_hi.device, x_hi.dtype), generator=engine.generator(seed2))
    engine.decode(fused)
    return len(seen)


def reference_flow(txt, img, dev: Dev, size: int, steps: int, strength: float) -> None:
    """The reference's way: two separately loaded pipelines, the second one decoding."""
    import torch

    from critifusion_tui.engine.specfusion import refine_seed

    with torch.no_grad():
        latent = txt(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(dev.name).manual_seed(SEED),
            output_type="latent",
        ).images
        seed2 = refine_seed(SEED, int(steps * strength))
        img(
            prompt=REFINE_PROMPT,
            negative_prompt=NEGATIVE,
            image=latent,
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=torch.Generator(dev.name).manual_seed(seed2),
            output_type="pil",
        )


def median(values):
    import statistics

    return statistics.median(values)


def reset_compiled() -> None:
    """Forget dynamo's compiled code: a row's blocks must not reuse another row's graphs (and
    the cache limit per code object must not be spent across rows)."""
    try:
        import torch._dynamo

        torch._dynamo.reset()
    except Exception:  # noqa: BLE001  (no dynamo: nothing was compiled)
        pass


def time_loop(dev: Dev, base, args) -> dict:
    """Warm the short length, then ``repeats`` pairs of (T_long, T_short)."""
    dev.timed(lambda: base(args.short_steps))
    longs, shorts = [], []
    for _ in range(args.repeats):
        longs.append(dev.timed(lambda: base(args.steps)))
        shorts.append(dev.timed(lambda: base(args.short_steps)))
    t_long, t_short = median(longs), median(shorts)
    loop_ms = (t_long - t_short) / (args.steps - args.short_steps) * 1e3
    return {
        "t_long_s": t_long,
        "t_short_s": t_short,
        "samples_long_s": longs,
        "samples_short_s": shorts,
        "steps_per_s_end_to_end": args.steps / t_long,
        "loop_ms_per_step": loop_ms,
        "loop_steps_per_s": 1e3 / loop_ms if loop_ms > 0 else float("nan"),
    }


def syncs_per_step(dev: Dev, base, args) -> dict | None:
    """Host-device synchronisations per denoising step (CUDA's sync debug mode counts them):
    the count of a run of 2n steps minus that of n steps, over n. The pipeline's own fixed
    syncs (prompt encoding, the scheduler's first index lookup) cancel out."""
    if not dev.cuda:
        return None
    import warnings

    torch = dev.torch

    def count(n: int) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                base(n)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        dev.sync()
        return sum(1 for w in caught if "synchroniz" in str(w.message).lower())

    n = 4
    short, long = count(n), count(2 * n)
    return {"steps": (n, 2 * n), "syncs": (short, long), "per_step": (long - short) / n}


def attention_kernels(dev: Dev, base) -> list[list]:
    """The attention ops and kernels that ran in a 2-step base (torch.profiler), most called first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.cuda else [])
    with profile(activities=activities) as prof:
        base(2)
        dev.sync()
    words = ("flash", "fmha", "attention", "sdpa", "cudnn_sdp", "mem_eff", "scaled_dot_product")
    found = [[e.key, e.count] for e in prof.key_averages() if any(w in e.key.lower() for w in words)]
    return sorted(found, key=lambda item: -item[1])[:8]


class Budget:
    """Rows in order of importance; one that would end after ``limit_s`` is skipped."""

    def __init__(self, limit_s: float, started: float) -> None:
        self.limit_s, self.started = limit_s, started
        self.seen: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, kind: str) -> bool:
        expected = self.seen.get(kind, GUESS_S[kind])
        return self.elapsed() + expected <= self.limit_s

    def took(self, kind: str, seconds: float) -> None:
        self.seen[kind] = max(seconds, self.seen.get(kind, 0.0))


def row_kind(name: str) -> str:
    return "compile" if SWITCHES.get(name, {}).get("compile") else "row"


def measure_row(name: str, dtype_name: str, folder: Path, dev: Dev, args, dtypes: dict) -> tuple[dict, object]:
    """One row: load, first image, loop timing, decode, peak; returns (row, the loaded pipeline
    or engine, which the caller drops or uses for the flow)."""
    import torch

    from critifusion_tui.engine.diffusion import Diffusion

    reset_compiled()
    dev.free()
    size = args.size
    dtype = dtypes[dtype_name]
    base_alloc = dev.allocated()
    dev.reset_peak()
    row: dict = {"row": name, "dtype": dtype_name}
    started = time.perf_counter()
    if name == "plain":
        pipe = load_plain(folder, "StableDiffusionXLPipeline", dev, dtype)
        model = pipe

        def base(n: int):
            with torch.no_grad():
                return pipe(
                    prompt=PROMPT,
                    negative_prompt=NEGATIVE,
                    width=size,
                    height=size,
                    num_inference_steps=n,
                    guidance_scale=GUIDANCE,
                    generator=torch.Generator(dev.name).manual_seed(SEED),
                    output_type="latent",
                ).images

        decode = None
    else:
        engine = Diffusion(
            str(folder), device=dev.name, dtype=str(dtype).removeprefix("torch."), **SWITCHES[name]
        ).load()
        model = engine
        cancel = threading.Event()

        def base(n: int):
            return engine.base_latent(
                PROMPT,
                NEGATIVE,
                width=size,
                height=size,
                steps=n,
                guidance=GUIDANCE,
                seed=SEED,
                on_step=lambda d, t: None,
                cancel=cancel,
            )

        decode = engine.decode
    dev.sync()
    row["load_s"] = time.perf_counter() - started
    row["weights_gib"] = gib(dev.allocated() - base_alloc)
    latent = base(args.steps)
    if decode is not None:
        decode(latent)
    dev.sync()
    row["first_image_s"] = time.perf_counter() - started  # plain: the first latent, not decoded
    row.update(time_loop(dev, base, args))
    if decode is not None:
        row["vae_decode_ms"] = median([dev.timed(lambda: decode(latent)) for _ in range(2)]) * 1e3
        record = model.describe()
        row.update(speed=record["speed"], attention=record["attention"], vae_decode_dtype=record["vae_decode_dtype"])
    row["peak_gib"] = gib(dev.peak() - base_alloc)
    row["_base_alloc"] = base_alloc
    row["_base"] = base
    return row, model


def measure(args, results: dict, dev: Dev, dtypes: dict, budget: Budget) -> None:
    size = args.size
    # The floor at this size, counted on the meta device (a few seconds, no memory).
    try:
        flops = guided_step_flops(build_modules("meta")["unet"], size)
    except Exception as exc:  # noqa: BLE001  (a torch without a FLOP formula: use the counted figure)
        log(
            f"FLOP count on the meta device failed ({type(exc).__name__}: {exc}); using "
            f"{FLOOR_TFLOP_PER_STEP} TFLOP at 1024 px scaled by the pixel count"
        )
        flops = FLOOR_TFLOP_PER_STEP * 1e12 * (size / 1024) ** 2
    floor_ms = flops / 1e12 / PEAK_TFLOPS * 1e3
    results["floor"] = {"guided_step_tflop": flops / 1e12, "peak_tflops": PEAK_TFLOPS, "floor_ms_per_step": floor_ms}
    results["targets"] = TARGETS
    log(
        f"one guided UNet step at {size}x{size}: {flops / 1e12:.2f} TFLOP -> floor {floor_ms:.1f} ms at {PEAK_TFLOPS:g} TFLOP/s"
    )

    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="sdxl-random-"))
    if not (folder / "model_index.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        results["build"] = save_random_sdxl(folder, dev, dtypes["float16"])
        write_json(results)
    else:
        log(f"reusing the saved random SDXL in {folder}")

    rows: list[dict] = results.setdefault("rows", [])
    skipped: list[str] = results.setdefault("skipped", [])
    plan = [(n, d) for n, d in PLAN if n in args.rows and d in args.dtypes]
    for name, dtype_name in plan:
        label = f"{name} {dtype_name}"
        kind = row_kind(name)
        if not budget.allows(kind):
            skipped.append(f"{label}: the time budget ({args.budget_s:.0f} s) would be passed")
            log(f"skipped {label}: {budget.elapsed():.0f} s gone of the {args.budget_s:.0f} s budget")
            continue
        started = time.perf_counter()
        failure = None
        try:
            row, model = measure_row(name, dtype_name, folder, dev, args, dtypes)
        except Exception as exc:  # noqa: BLE001  (one row failing, e.g. no compiler for Triton, keeps the rest)
            failure = f"{type(exc).__name__}: {exc}"
        if failure is not None:  # outside the except block: its frames, which hold the model, are gone
            rows.append({"row": name, "dtype": dtype_name, "error": failure[:500]})
            log(f"{label}: FAILED {failure}")
            reset_compiled()
            dev.free()
            budget.took(kind, time.perf_counter() - started)
            write_json(results)
            continue
        base, base_alloc = row.pop("_base"), row.pop("_base_alloc")
        if (name, dtype_name) == ("engine", "float16"):
            row["syncs"] = syncs_per_step(dev, base, args)
            row["attention_kernels_ran"] = attention_kernels(dev, base)
        if (name, dtype_name) == ("plain", "float16"):
            row["syncs"] = syncs_per_step(dev, base, args)
        rows.append(row)
        log(
            f"{label}: load {row['load_s']:.1f} s, first image {row['first_image_s']:.1f} s, "
            f"{row['steps_per_s_end_to_end']:.2f} steps/s end to end, loop {row['loop_ms_per_step']:.1f} ms/step"
            + (f", decode {row['vae_decode_ms']:.0f} ms" if "vae_decode_ms" in row else "")
            + f", peak {row['peak_gib']:.2f} GiB"
        )
        flow = (name, dtype_name) == ("auto", "float16") and "flow" in args.rows
        if flow:
            flow_vram(results, model, dev, args, base_alloc)
        del base
        model = None  # noqa: F841  (dropped before the next load)
        budget.took(kind, time.perf_counter() - started)
        summarize(results)
        write_json(results)
        if flow:  # the reference's two pipelines, now that no engine holds memory
            if budget.allows("flow"):
                started = time.perf_counter()
                reference_vram(results, folder, dev, args, dtypes["float16"])
                budget.took("flow", time.perf_counter() - started)
            else:
                skipped.append(f"reference flow: the time budget ({args.budget_s:.0f} s) would be passed")
            summarize(results)
            write_json(results)
    dev.free()
    summarize(results)
    write_json(results)
    if not args.folder and not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def flow_vram(results: dict, engine, dev: Dev, args, base_alloc: int) -> None:
    """The whole refinement flow on the auto engine already loaded: its peak VRAM."""
    dev.reset_peak()
    seen: list[int] = []
    flow_s = dev.timed(lambda: seen.append(engine_flow(engine, args.size, args.steps, args.strength)))
    results["vram_engine"] = {
        "row": "auto float16",
        "peak_gib": gib(dev.peak() - base_alloc),
        "flow_s": flow_s,
        "reserved_peak_gib": gib(dev.peak_reserved()),
        "callback_steps": seen[0],
    }
    log(
        f"engine flow (base {args.steps} + img2img at {args.strength} + fusion + decode): {flow_s:.2f} s; "
        f"peak {results['vram_engine']['peak_gib']:.2f} GiB allocated"
    )


def reference_vram(results: dict, folder: Path, dev: Dev, args, dtype) -> None:
    """The reference: two pipelines loaded separately (every engine is gone by now)."""
    reset_compiled()
    dev.free()
    base_alloc = dev.allocated()
    started = time.perf_counter()
    txt = load_plain(folder, "StableDiffusionXLPipeline", dev, dtype)
    img = load_plain(folder, "StableDiffusionXLImg2ImgPipeline", dev, dtype)
    load_s = time.perf_counter() - started
    weights = dev.allocated() - base_alloc
    dev.reset_peak()
    flow_s = dev.timed(lambda: reference_flow(txt, img, dev, args.size, args.steps, args.strength))
    results["vram_reference"] = {
        "load_s": load_s,
        "weights_gib": gib(weights),
        "peak_gib": gib(dev.peak() - base_alloc),
        "flow_s": flow_s,
        "reserved_peak_gib": gib(dev.peak_reserved()),
    }
    log(
        f"reference: two pipelines loaded in {load_s:.1f} s, {gib(weights):.2f} GiB of weights; "
        f"flow {flow_s:.2f} s, peak {results['vram_reference']['peak_gib']:.2f} GiB allocated"
    )
    txt = img = None  # noqa: F841  (both dropped before the memory is freed)
    dev.free()


def summarize(results: dict) -> None:
    """Ratios against plain in the same dtype, the floor, and each target met or not."""
    rows = [r for r in results.get("rows", []) if "error" not in r]
    floor = results["floor"]["floor_ms_per_step"]
    plain = {r["dtype"]: r for r in rows if r["row"] == "plain"}
    for r in rows:
        r["fraction_of_floor"] = floor / r["loop_ms_per_step"] if r["loop_ms_per_step"] > 0 else float("nan")
        p = plain.get(r["dtype"])
        if p is not None and r is not p:
            r["speed_over_plain"] = p["t_long_s"] / r["t_long_s"]
            r["loop_speed_over_plain"] = p["loop_ms_per_step"] / r["loop_ms_per_step"]
    verdict: dict = {}
    engines = [r for r in rows if r["row"] == "engine" and "speed_over_plain" in r]
    if engines:
        verdict["engine_over_plain"] = {r["dtype"]: r["speed_over_plain"] for r in engines}
    switched = [r for r in rows if r["row"] not in ("plain", "engine") and "speed_over_plain" in r]
    if switched:
        best = max(switched, key=lambda r: r["speed_over_plain"])
        verdict["switches_over_plain"] = {"row": f"{best['row']} {best['dtype']}", "value": best["speed_over_plain"]}
    if rows:
        fastest = min(rows, key=lambda r: r["loop_ms_per_step"])
        verdict["ms_per_step"] = {"row": f"{fastest['row']} {fastest['dtype']}", "value": fastest["loop_ms_per_step"]}
    ve, vr = results.get("vram_engine"), results.get("vram_reference")
    if ve and vr and vr["peak_gib"] > 0:
        verdict["flow_vram_ratio"] = ve["peak_gib"] / vr["peak_gib"]
    compiled = [r for r in rows if r["row"] == "all"]
    off = {r["dtype"]: r for r in rows if r["row"] == "engine"}
    for r in compiled:
        if r["dtype"] in off:
            verdict.setdefault("compile_first_image_extra_s", {})[r["dtype"]] = (
                r["first_image_s"] - off[r["dtype"]]["first_image_s"]
            )
    results["verdict"] = verdict


def _met(value: float, target: float, higher: bool) -> str:
    ok = value >= target if higher else value <= target
    return "met" if ok else "NOT met"


def print_table(results: dict, args) -> None:
    rows = results.get("rows", [])
    floor = results.get("floor", {}).get("floor_ms_per_step", float("nan"))
    print()
    print(
        f"{results['device']}: {args.size}x{args.size}, guidance {GUIDANCE} (batch 2), {args.steps} steps "
        f"(loop from T{args.steps} - T{args.short_steps}), {args.repeats} repeat(s), random weights; "
        f"floor {floor:.1f} ms/step"
    )
    print()
    print(
        "| row | dtype | load s | first image s | steps/s (end to end) | loop ms/step | of the floor | "
        "x plain (end to end) | x plain (loop) | VAE decode ms (dtype) | peak GiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['row']} | {r['dtype']} | failed: {r['error']} |  |  |  |  |  |  |  |  |")
            continue
        decode = f"{r['vae_decode_ms']:.0f} ({r['vae_decode_dtype']})" if "vae_decode_ms" in r else "-"
        over = f"{r['speed_over_plain']:.3f}" if "speed_over_plain" in r else "-"
        loop_over = f"{r['loop_speed_over_plain']:.3f}" if "loop_speed_over_plain" in r else "-"
        print(
            f"| {r['row']} | {r['dtype']} | {r['load_s']:.1f} | {r['first_image_s']:.1f} | "
            f"{r['steps_per_s_end_to_end']:.2f} | {r['loop_ms_per_step']:.1f} | "
            f"{r.get('fraction_of_floor', float('nan')) * 100:.0f}% | {over} | {loop_over} | {decode} | "
            f"{r['peak_gib']:.2f} |"
        )
    for line in results.get("skipped", []):
        print(f"| skipped: {line} |  |  |  |  |  |  |  |  |  |  |")
    print()
    v = results.get("verdict", {})
    t = TARGETS
    for dtype, value in v.get("engine_over_plain", {}).items():
        print(
            f"- engine (switches off) / plain, {dtype}: {value:.3f}x  (target >= {t['engine_over_plain']}x: "
            f"{_met(value, t['engine_over_plain'], True)})"
        )
    if "switches_over_plain" in v:
        s = v["switches_over_plain"]
        print(
            f"- best switched row / plain: {s['value']:.3f}x ({s['row']})  (target >= {t['switches_over_plain']}x: "
            f"{_met(s['value'], t['switches_over_plain'], True)})"
        )
    if "ms_per_step" in v:
        s = v["ms_per_step"]
        print(
            f"- fastest loop: {s['value']:.1f} ms per guided step ({s['row']}); floor {floor:.1f} ms  "
            f"(target <= {t['ms_per_step']:g} ms: {_met(s['value'], t['ms_per_step'], False)})"
        )
    for dtype, extra in v.get("compile_first_image_extra_s", {}).items():
        print(f"- first image with compile (all) vs without (engine), {dtype}: {extra:+.1f} s")
    ve, vr = results.get("vram_engine"), results.get("vram_reference")
    if ve:
        print(f"- refinement flow peak VRAM, engine ({ve['row']}, modules shared): {ve['peak_gib']:.2f} GiB")
    if vr:
        print(
            f"- refinement flow peak VRAM, two pipelines loaded: {vr['peak_gib']:.2f} GiB "
            f"(weights {vr['weights_gib']:.2f} GiB)"
        )
    if "flow_vram_ratio" in v:
        print(
            f"- engine / two pipelines: {v['flow_vram_ratio']:.2f}x  (target <= {t['flow_vram_ratio']}x: "
            f"{_met(v['flow_vram_ratio'], t['flow_vram_ratio'], False)})"
        )
    for r in rows:
        if r.get("syncs"):
            sy = r["syncs"]
            print(
                f"- host-device syncs per denoising step, {r['row']} {r['dtype']}: {sy['per_step']:g} "
                f"({sy['syncs'][0]} in {sy['steps'][0]} steps, {sy['syncs'][1]} in {sy['steps'][1]})"
            )
        if r.get("attention_kernels_ran"):
            names = ", ".join(f"{k} x{n}" for k, n in r["attention_kernels_ran"][:4])
            print(
                f"- attention, {r['row']} {r['dtype']}: recorded {r['attention'].get('sdpa_kernel')} "
                f"({r['attention'].get('unet')}); ran: {names}"
            )


def shrink_to_tiny() -> None:
    """For --cpu-dry-run: the same architecture families, tiny (SDXL-shaped, a few M params)."""
    UNET_CONFIG.update(
        block_out_channels=[32, 64, 64],
        attention_head_dim=[2, 4, 4],
        norm_num_groups=8,
        transformer_layers_per_block=[1, 1, 1],
        cross_attention_dim=64,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        sample_size=16,
    )
    VAE_CONFIG.update(block_out_channels=[8, 8, 16, 16], norm_num_groups=8, layers_per_block=1)
    tiny_text = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
    }
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


def allow_compile_on_the_cpu() -> None:
    """--cpu-dry-run only: the engine refuses compile off CUDA; the dry run resolves the switch
    as on and compiles the same repeated blocks with dynamo's eager backend (no Inductor, no C
    compiler), so the compile rows' code runs. Nothing outside this process changes."""
    import dataclasses

    from critifusion_tui.engine import devices, diffusion, diffusion_loading

    real_resolve = devices.resolve_switches

    def resolve(device, **kwargs):
        wanted = bool(kwargs.get("compile"))
        switches = real_resolve(device, **{**kwargs, "compile": False})
        if wanted:
            why = {**switches.why, "compile": "dry run: dynamo's eager backend on the CPU"}
            switches = dataclasses.replace(switches, compile=True, why=why)
        return switches

    def compile_regions(unet, mode="default"):
        blocks = set(unet._repeated_blocks)
        count = sum(1 for m in unet.modules() if type(m).__name__ in blocks)
        unet.compile_repeated_blocks(backend="eager")
        return count

    diffusion.resolve_switches = resolve
    diffusion_loading.compile_regions = compile_regions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in px")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (the long run)")
    parser.add_argument("--short-steps", type=int, default=10, help="the short run, for the loop's rate")
    parser.add_argument("--repeats", type=int, default=2, help="timed (long, short) pairs per row")
    parser.add_argument("--strength", type=float, default=0.75, help="img2img strength of the VRAM flow")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip a row that would end later than this many seconds after the start "
        "(default 420; no limit in --cpu-dry-run)",
    )
    parser.add_argument(
        "--rows",
        default=",".join((*ROW_NAMES, "flow")),
        help=f"rows to run, comma-separated, of: {', '.join(ROW_NAMES)}, flow (the VRAM flow, "
        "after the auto float16 row)",
    )
    parser.add_argument("--dtypes", default="float16,bfloat16", help="float16 and/or bfloat16")
    parser.add_argument("--folder", default=None, help="save/reuse the random SDXL here (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument(
        "--meta-check",
        action="store_true",
        help="no GPU: build on the meta device, check parameter counts, count FLOPs",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 512 px, 8/4 steps, 1 repeat")
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="no GPU: run every row and phase on the CPU with a TINY config (float32 for float16; "
        "compile with dynamo's eager backend). Checks the script's code paths; its numbers "
        "mean nothing",
    )
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [r for r in args.rows if r not in (*ROW_NAMES, "flow")] + [
        d for d in args.dtypes if d not in ("float16", "bfloat16")
    ]
    if unknown:
        parser.error(f"unknown rows or dtypes: {', '.join(unknown)}")
    if args.quick:
        args.size, args.steps, args.short_steps, args.repeats = 512, 8, 4, 1
    if args.size % 8 or args.short_steps >= args.steps:
        parser.error("--size must be a multiple of 8 and --short-steps smaller than --steps")

    if args.meta_check:
        return meta_check(args.size)
    started = time.perf_counter()
    import torch

    if args.cpu_dry_run:
        shrink_to_tiny()
        quiet_loading()
        allow_compile_on_the_cpu()
        torch.set_num_threads(1)
        args.size, args.steps, args.short_steps, args.repeats = 128, 6, 3, 1
        if args.budget_s is None:
            args.budget_s = float("inf")  # every row runs: the point is the code path
        results = {
            "device": "CPU dry run, tiny config (not SDXL)",
            "args": vars(args),
            "dtype_note": "float16 rows ran in float32 (the CPU refuses float16)",
        }
        dtypes = {"float16": torch.float32, "bfloat16": torch.bfloat16}
        measure(args, results, Dev("cpu"), dtypes, Budget(args.budget_s, started))
        results["total_s"] = time.perf_counter() - started
        write_json(results)
        print_table(results, args)
        failed = [f"{r['row']} {r['dtype']}" for r in results["rows"] if "error" in r]
        ran = len(results["rows"]) - len(failed)
        phases = ["floor", "build", "vram_engine", "vram_reference", "verdict"]
        missing = [p for p in phases if p not in results and not results["skipped"]]
        print(
            f"dry run done in {results['total_s']:.0f} s: {ran} rows ran, {len(failed)} failed {failed}, "
            f"phases missing {missing}; float16 rows ran in float32; no number above is a measurement of SDXL"
        )
        return 1 if failed or missing else 0

    if args.budget_s is None:
        args.budget_s = 420.0
    if not torch.cuda.is_available():
        print(
            f"no CUDA device (torch {torch.__version__}): nothing measured. Run this on a CUDA machine; "
            "--meta-check checks the configs without one."
        )
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
    log(
        f"{props.name}, {gib(props.total_memory):.0f} GiB; torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}"
    )
    try:
        measure(
            args,
            results,
            Dev("cuda"),
            {"float16": torch.float16, "bfloat16": torch.bfloat16},
            Budget(args.budget_s, started),
        )
    finally:
        results["total_s"] = time.perf_counter() - started
        write_json(results)
        print_table(results, args)
        log(f"done in {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
