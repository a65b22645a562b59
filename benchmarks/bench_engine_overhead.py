"""The diffusion engine's own overhead against raw diffusers calls, on CPU, same tiny model.

What it measures
----------------
One tiny random SDXL (``build_tiny_sdxl``) is saved to a temporary folder and loaded ONCE with
``Diffusion(folder, device="cpu")``. Both sides then run on the very same module objects
(UNet, VAE, text encoders, tokenizers), same prompt, negative prompt, seed, size and steps:

* side A, the engine: ``Diffusion.base_latent`` -> ``Diffusion.img2img_latent`` ->
  ``frequency_fusion`` -> ``Diffusion.decode``, with an ``on_step`` callback that builds a
  ``DiffusionStep`` event for every step (as ``Run._in_thread`` does) and a ``cancel`` event
  checked after every step;
* side B, raw diffusers: ``StableDiffusionXLPipeline(**components)`` and
  ``StableDiffusionXLImg2ImgPipeline(**components)`` with their own DPM-Solver++ (Karras)
  schedulers made from the same config, ``output_type="latent"``, no callback, then a manual
  VAE decode (``latents / scaling_factor`` -> ``vae.decode`` -> ``image_processor.postprocess``).

Raw diffusers has no frequency fusion, so like is compared with like: the headline ratio is
A(base + img2img + decode) / B(base + img2img + decode), timed phase by phase inside each
repetition; the fusion's own time is reported separately (and A including the fusion / B as
a second, informative ratio). The two sides must produce identical latents and images
(checked once, before timing). Repetitions are interleaved (A B, B A, A B, ...) after a
warm-up; the script prints the median, min/max and IQR of each side, the median of the
per-pair ratios (robust to slow drifts), the ratio of the minimums, and each phase's extra
cost A - B in ms. Every phase is timed twice: wall time, and the process's CPU time, which
other tenants of a shared machine do not inflate (with one torch thread, the default, it is
the work itself; more threads on a busy 2-core machine make wall times swing by 10x).
Target: ratio <= 1.05.

Then the whole run: ``Run.run_all`` with every text role on the offline ``rules`` model and
the same diffusion settings, against the time of the diffusion calls inside that same run
(the engine's methods and the fusion are wrapped with timers on the instance, nothing in the
package is changed). The difference is the pipeline's own cost (text stages on rules, events,
manifest writes with fsync, latent and PNG writes, thread hops); the store's writes are timed
too so the difference can be broken down.

Run (from the repository root)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_engine_overhead.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_engine_overhead.py --quick
    ... --sizes 128 256 --steps 20 --strength 0.75 --repeats 12 --warmup 2 --threads 1 --run-size 128 --run-repeats 10
    ... --json results.json     (also written to $OUT/bench_engine_overhead.json when $OUT is set)

Never downloads anything: the model is built from configs with random weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Runnable as `python benchmarks/bench_engine_overhead.py` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "a red fox in a snowy forest, golden hour, high detailed, sharp focus"
REFINE_PROMPT = "a red fox in a snowy pine forest at golden hour, sharp fur detail"
NEGATIVE = "low quality, blurry, watermark"
SEED = 2026
GUIDANCE = 4.5
REFINE_GUIDANCE = 7.5
TARGET = 1.05


# --------------------------------------------------------------------------- statistics


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return {
        "median": statistics.median(s),
        "min": s[0],
        "max": s[-1],
        "iqr": q[2] - q[0],
        "n": len(s),
    }


def fmt_ms(stats: dict[str, float]) -> str:
    return (
        f"{stats['median'] * 1e3:8.1f} ms  (min {stats['min'] * 1e3:.1f}, max {stats['max'] * 1e3:.1f}, "
        f"IQR {stats['iqr'] * 1e3:.1f}, n={stats['n']})"
    )


# --------------------------------------------------------------------------- the two sides


class Phases:
    """Wall time (perf_counter) and CPU time of this process (process_time) per phase.

    On a shared machine the wall time of a phase grows whenever another process takes the
    cores; the process's CPU time does not (with one torch thread it is the work itself), so
    both are kept and both ratios are reported.
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str):
        return _Phase(self, name)


class _Phase:
    def __init__(self, owner: Phases, name: str) -> None:
        self.owner, self.name = owner, name

    def __enter__(self) -> None:
        self.w, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc) -> None:
        self.owner.wall[self.name] = time.perf_counter() - self.w
        self.owner.cpu[self.name] = time.process_time() - self.c


class Sides:
    """The engine (side A) and raw diffusers on the same modules (side B)."""

    def __init__(self, folder: Path) -> None:
        import torch
        from diffusers import (
            DPMSolverMultistepScheduler,
            StableDiffusionXLImg2ImgPipeline,
            StableDiffusionXLPipeline,
        )

        from critifusion_tui.engine.diffusion import Diffusion

        started = time.perf_counter()
        self.engine = Diffusion(str(folder), device="cpu", dtype="float32").load()
        self.load_s = time.perf_counter() - started
        components = dict(self.engine.txt2img.components)
        config = self.engine.txt2img.scheduler.config  # already DPM-Solver++ with Karras sigmas
        assert config.get("use_karras_sigmas"), "the engine's scheduler should use Karras sigmas"
        self.raw_txt = StableDiffusionXLPipeline(
            **{**components, "scheduler": DPMSolverMultistepScheduler.from_config(config)},
            add_watermarker=False,
        )
        self.raw_img = StableDiffusionXLImg2ImgPipeline(
            **{**components, "scheduler": DPMSolverMultistepScheduler.from_config(config)},
            add_watermarker=False,
        )
        for pipe in (self.raw_txt, self.raw_img):
            pipe.set_progress_bar_config(disable=True)
        self.torch = torch
        self.events: list = []

    # ---- side A: our engine, as the app calls it

    def run_engine(self, size: int, steps: int, strength: float) -> tuple[Phases, object, object]:
        from critifusion_tui.engine.events import DiffusionStep
        from critifusion_tui.engine.specfusion import frequency_fusion, refine_seed

        engine = self.engine
        cancel = threading.Event()
        events = self.events
        events.clear()
        t0 = time.perf_counter()

        def on_step(done: int, total: int, stage: str = "base") -> None:
            events.append(DiffusionStep(stage, step=done, total=total, elapsed=time.perf_counter() - t0))

        phase = Phases()
        with phase("base"):
            x_lo = engine.base_latent(
                PROMPT,
                NEGATIVE,
                width=size,
                height=size,
                steps=steps,
                guidance=GUIDANCE,
                seed=SEED,
                on_step=on_step,
                cancel=cancel,
            )
        seed2 = refine_seed(SEED, int(steps * strength))
        with phase("img2img"):
            x_hi = engine.img2img_latent(
                x_lo,
                REFINE_PROMPT,
                NEGATIVE,
                strength=strength,
                guidance=REFINE_GUIDANCE,
                steps=steps,
                seed=seed2,
                on_step=lambda d, t: on_step(d, t, "refine"),
                cancel=cancel,
            )
        with phase("fusion"):
            # As Run.refine_stage calls it (base latent moved to the refined one's device/dtype).
            fused = frequency_fusion(x_hi, x_lo.to(x_hi.device, x_hi.dtype), generator=engine.generator(seed2))
        with phase("decode"):
            image = engine.decode(fused)
        return phase, (x_lo, x_hi), image

    # ---- side B: raw diffusers calls on the same modules

    def run_raw(self, size: int, steps: int, strength: float) -> tuple[Phases, object, object]:
        from critifusion_tui.engine.specfusion import frequency_fusion, refine_seed

        torch = self.torch
        phase = Phases()
        with phase("base"), torch.no_grad():
            x_lo = self.raw_txt(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=GUIDANCE,
                generator=torch.Generator("cpu").manual_seed(SEED),
                output_type="latent",
            ).images
        seed2 = refine_seed(SEED, int(steps * strength))
        with phase("img2img"), torch.no_grad():
            x_hi = self.raw_img(
                prompt=REFINE_PROMPT,
                negative_prompt=NEGATIVE,
                image=x_lo,
                strength=strength,
                num_inference_steps=steps,
                guidance_scale=REFINE_GUIDANCE,
                generator=torch.Generator("cpu").manual_seed(seed2),
                output_type="latent",
            ).images
        # Not timed: only so that the decode gets the same input as side A's (same pixels out).
        fused = frequency_fusion(x_hi, x_lo, generator=torch.Generator("cpu").manual_seed(seed2))
        vae = self.raw_txt.vae
        with phase("decode"), torch.no_grad():
            decoded = vae.decode(fused / vae.config.scaling_factor, return_dict=False)[0]
            image = self.raw_txt.image_processor.postprocess(decoded, output_type="pil")[0]
        return phase, (x_lo, x_hi), image


def check_same_work(sides: Sides, size: int, steps: int, strength: float) -> dict[str, bool]:
    """Both sides must do the same work: identical latents and identical decoded pixels."""
    import numpy as np

    torch = sides.torch
    _, (a_lo, a_hi), a_img = sides.run_engine(size, steps, strength)
    _, (b_lo, b_hi), b_img = sides.run_raw(size, steps, strength)
    planned = sides.engine.planned_steps(steps, strength)
    n_steps = [e.total for e in sides.events if e.stage == "refine"]
    result = {
        "base_latent_equal": bool(torch.equal(a_lo, b_lo)),
        "img2img_latent_equal": bool(torch.equal(a_hi, b_hi)),
        "image_equal": bool(np.array_equal(np.asarray(a_img), np.asarray(b_img))),
        "on_step_events": len(sides.events) == steps + planned and (not n_steps or n_steps[0] == planned),
    }
    return result


def _compare(a_runs: list[dict[str, float]], b_runs: list[dict[str, float]]) -> dict:
    """Totals, per-phase medians and ratios for one clock (wall or CPU)."""

    def total(t: dict, fusion: bool = False) -> float:
        return t["base"] + t["img2img"] + t["decode"] + (t["fusion"] if fusion else 0.0)

    a_tot = [total(t) for t in a_runs]
    a_fus = [total(t, fusion=True) for t in a_runs]
    b_tot = [total(t) for t in b_runs]
    pairs = [a / b for a, b in zip(a_tot, b_tot)]
    pairs_fusion = [a / b for a, b in zip(a_fus, b_tot)]
    phases = {}
    for name in ("base", "img2img", "decode"):
        a_p, b_p = [t[name] for t in a_runs], [t[name] for t in b_runs]
        phases[name] = {
            "A": summary(a_p),
            "B": summary(b_p),
            "ratio_of_medians": statistics.median(a_p) / statistics.median(b_p),
            # the engine's extra cost per call, in seconds: median of the pairs' differences
            "delta_median_of_pairs": statistics.median(a - b for a, b in zip(a_p, b_p)),
        }
    phases["fusion"] = {"A": summary([t["fusion"] for t in a_runs])}
    return {
        "A_engine": summary(a_tot),
        "A_engine_with_fusion": summary(a_fus),
        "B_raw": summary(b_tot),
        "ratio_of_medians": statistics.median(a_tot) / statistics.median(b_tot),
        "ratio_median_of_pairs": statistics.median(pairs),
        "ratio_pairs_min_max": [min(pairs), max(pairs)],
        # noise on a shared machine only ever adds time: the fastest runs are the cleanest
        "ratio_of_minimums": min(a_tot) / min(b_tot),
        "ratio_with_fusion_median_of_pairs": statistics.median(pairs_fusion),
        "fusion_share_of_A": statistics.median(t["fusion"] for t in a_runs) / statistics.median(a_fus),
        "phases": phases,
    }


def bench_size(sides: Sides, size: int, steps: int, strength: float, repeats: int, warmup: int) -> dict:
    same = check_same_work(sides, size, steps, strength)
    for _ in range(warmup):
        sides.run_engine(size, steps, strength)
        sides.run_raw(size, steps, strength)
    a_runs: list[Phases] = []
    b_runs: list[Phases] = []
    for i in range(repeats):
        # Interleaved pairs; which side goes first alternates (A B, B A, ...) to even out order effects.
        for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
            if side == "A":
                a_runs.append(sides.run_engine(size, steps, strength)[0])
            else:
                b_runs.append(sides.run_raw(size, steps, strength)[0])
    wall = _compare([p.wall for p in a_runs], [p.wall for p in b_runs])
    cpu = _compare([p.cpu for p in a_runs], [p.cpu for p in b_runs])
    return {
        "size": size,
        "steps": steps,
        "strength": strength,
        "img2img_steps": sides.engine.planned_steps(steps, strength),
        "same_work": same,
        "wall": wall,
        "cpu": cpu,
        "meets_target_wall": wall["ratio_median_of_pairs"] <= TARGET,
        "meets_target_cpu": cpu["ratio_median_of_pairs"] <= TARGET,
    }


def print_size(res: dict) -> None:
    print(
        f"\n== {res['size']} px, {res['steps']} base steps + img2img strength {res['strength']} "
        f"({res['img2img_steps']} steps) + decode =="
    )
    print(f"same work on both sides: {res['same_work']}")
    for clock in ("wall", "cpu"):
        c = res[clock]
        print(f"-- {clock} time --")
        print(f"A engine   (base+img2img+decode): {fmt_ms(c['A_engine'])}")
        print(f"B raw      (base+img2img+decode): {fmt_ms(c['B_raw'])}")
        print(f"A + fusion                      : {fmt_ms(c['A_engine_with_fusion'])}")
        for name, p in c["phases"].items():
            if "B" in p:
                print(
                    f"  {name:8s} A {p['A']['median'] * 1e3:8.2f} ms  B {p['B']['median'] * 1e3:8.2f} ms  "
                    f"A/B {p['ratio_of_medians']:.3f}  A-B (median of pairs) "
                    f"{p['delta_median_of_pairs'] * 1e3:+.2f} ms"
                )
            else:
                print(
                    f"  {name:8s} A {p['A']['median'] * 1e3:8.2f} ms  (engine only; "
                    f"{c['fusion_share_of_A'] * 100:.2f}% of A with fusion)"
                )
        lo, hi = c["ratio_pairs_min_max"]
        verdict = "meets" if c["ratio_median_of_pairs"] <= TARGET else "MISSES"
        print(
            f"ratio A/B: median of pairs {c['ratio_median_of_pairs']:.3f} (pairs {lo:.3f}..{hi:.3f}), "
            f"ratio of medians {c['ratio_of_medians']:.3f}, of minimums {c['ratio_of_minimums']:.3f} "
            f"-> {verdict} <= {TARGET}; "
            f"(A with fusion)/B {c['ratio_with_fusion_median_of_pairs']:.3f}"
        )


# --------------------------------------------------------------------------- Run.run_all


def bench_run_all(
    sides: Sides, folder: Path, size: int, steps: int, strength: float, repeats: int, out_root: Path
) -> dict:
    """The whole method on offline roles vs the diffusion calls inside the same run."""
    from critifusion_tui.config import Settings
    from critifusion_tui.engine import specfusion
    from critifusion_tui.engine.pipeline import Session
    from critifusion_tui.engine.store import RunStore

    last_k = round(steps * strength)
    settings = Settings.model_validate(
        {
            "criticore": {"candidates": ["rules"], "aggregator": "rules", "vlms": ["rules"]},
            "diffusion": {
                "model": str(folder),
                "device": "cpu",
                "dtype": "float32",
                "width": size,
                "height": size,
                "steps": steps,
                "guidance": GUIDANCE,
                "seed": SEED,
                "negative": NEGATIVE,
            },
            "specfusion": {"total_steps": steps, "last_k": last_k, "guidance": REFINE_GUIDANCE},
            "output": {"dir": str(out_root)},
        }
    )
    engine = sides.engine
    timers: dict[str, float] = {}
    counts: dict[str, int] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - start
                # CPU time of the calling thread (torch runs its ops there with one thread)
                timers[name + "_cpu"] = timers.get(name + "_cpu", 0.0) + time.thread_time() - cpu
                counts[name] = counts.get(name, 0) + 1

        return wrapper

    # Timers on the instance / module attribute only for the duration of this benchmark.
    originals = {n: getattr(engine, n) for n in ("base_latent", "img2img_latent", "decode")}
    for n, fn in originals.items():
        setattr(engine, n, timed(n, fn))
    real_fusion = specfusion.frequency_fusion
    specfusion.frequency_fusion = timed("fusion", real_fusion)
    store_originals = {n: getattr(RunStore, n) for n in ("write_manifest", "save_png", "write_latent")}
    for n, fn in store_originals.items():
        setattr(RunStore, n, timed(n, fn))
    samples = []
    events_per_run = []
    try:
        session = Session(settings, diffusion=engine)

        async def one() -> float:
            events: list = []
            start, cpu = time.perf_counter(), time.process_time()
            run = session.new_run(PROMPT, emit=events.append)
            manifest = await run.run_all()
            wall = time.perf_counter() - start
            timers["run_cpu"] = time.process_time() - cpu  # every thread of the process
            assert manifest["status"] == "done", manifest["status"]
            events_per_run.append(len(events))
            return wall

        async def main() -> None:
            await one()  # warm-up (thread pool, first PNG encoder, rules)
            for _ in range(repeats):
                timers.clear()
                counts.clear()
                wall = await one()
                samples.append({"wall": wall, **timers, "counts": dict(counts)})
            await session.aclose()

        asyncio.run(main())
    finally:
        for n in originals:
            vars(engine).pop(n, None)  # back to the class's methods
        specfusion.frequency_fusion = real_fusion
        for n, fn in store_originals.items():
            setattr(RunStore, n, fn)
    diff_keys = ("base_latent", "img2img_latent", "fusion", "decode")
    walls = [s["wall"] for s in samples]
    diffusion = [sum(s.get(k, 0.0) for k in diff_keys) for s in samples]
    overhead = [w - d for w, d in zip(walls, diffusion)]
    run_cpu = [s["run_cpu"] for s in samples]
    diffusion_cpu = [sum(s.get(k + "_cpu", 0.0) for k in diff_keys) for s in samples]
    overhead_cpu = [r - d for r, d in zip(run_cpu, diffusion_cpu)]
    store = {k: summary([s.get(k, 0.0) for s in samples]) for k in store_originals}
    store_cpu = {k: summary([s.get(k + "_cpu", 0.0) for s in samples]) for k in store_originals}
    return {
        "size": size,
        "steps": steps,
        "last_k": last_k,
        "wall": summary(walls),
        "diffusion_calls": summary(diffusion),
        "pipeline_overhead": summary(overhead),
        "overhead_fraction_median": statistics.median(o / w for o, w in zip(overhead, walls)),
        "run_cpu": summary(run_cpu),
        "diffusion_calls_cpu": summary(diffusion_cpu),
        "pipeline_overhead_cpu": summary(overhead_cpu),
        "overhead_cpu_fraction_median": statistics.median(o / r for o, r in zip(overhead_cpu, run_cpu)),
        "store_writes": store,
        "store_writes_cpu": store_cpu,
        "calls_per_run": samples[-1]["counts"] if samples else {},
        "events_per_run": statistics.median(events_per_run) if events_per_run else None,
        "run_folder_fs": str(out_root),
        "torch_threads": torch_threads(),
    }


def print_run_all(res: dict) -> None:
    print(f"\n== Run.run_all, offline rules roles, {res['size']} px, {res['steps']} steps, last_k {res['last_k']} ==")
    print(f"run_all wall            : {fmt_ms(res['wall'])}")
    print(f"diffusion calls in it   : {fmt_ms(res['diffusion_calls'])}")
    print(
        f"pipeline's own overhead : {fmt_ms(res['pipeline_overhead'])}  "
        f"({res['overhead_fraction_median'] * 100:.1f}% of the run)"
    )
    if res["torch_threads"] > 1:
        print(
            "(the CPU split below holds only with --threads 1: other torch threads' CPU time is not "
            "counted in the diffusion calls)"
        )
    print(f"CPU time: run {fmt_ms(res['run_cpu'])}")
    print(f"          diffusion calls {fmt_ms(res['diffusion_calls_cpu'])}")
    print(
        f"          pipeline's own  {fmt_ms(res['pipeline_overhead_cpu'])}  "
        f"({res['overhead_cpu_fraction_median'] * 100:.1f}% of the run's CPU time)"
    )
    for k, v in res["store_writes"].items():
        print(
            f"  of which {k:14s}: {v['median'] * 1e3:7.2f} ms per run (median wall; "
            f"{res['store_writes_cpu'][k]['median'] * 1e3:.2f} ms CPU)"
        )
    print(f"calls per run: {res['calls_per_run']}")
    print(f"events per run: {res['events_per_run']}; run folders under {res['run_folder_fs']}")


# --------------------------------------------------------------------------- main


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machine() -> dict:
    import diffusers
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="image sides in px (multiples of 8)")
    parser.add_argument("--steps", type=int, default=20, help="base steps (and the img2img schedule length)")
    parser.add_argument("--strength", type=float, default=0.75, help="img2img strength")
    parser.add_argument("--repeats", type=int, default=12, help="timed A/B pairs per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed A/B pairs first")
    parser.add_argument("--run-repeats", type=int, default=10, help="timed Run.run_all runs")
    parser.add_argument("--run-size", type=int, default=None, help="size for Run.run_all (default: first of --sizes)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads for both sides (default 1: steadiest on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model's random weights")
    parser.add_argument(
        "--out-dir", default=None, help="where Run.run_all writes its run folders (default: a temp dir)"
    )
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, 4 steps, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.repeats, args.warmup, args.run_repeats = [64], 4, 2, 1, 2

    import torch

    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):  # no progress bars or import notices in the report
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    from critifusion_tui.engine.tiny_sdxl import build_tiny_sdxl, save_tiny

    results: dict = {"machine": machine(), "args": vars(args)}
    print("machine:", json.dumps(results["machine"]))
    with tempfile.TemporaryDirectory(prefix="bench-tiny-sdxl-") as tmp:
        folder = save_tiny(build_tiny_sdxl(seed=args.seed), Path(tmp) / "model")
        sides = Sides(folder)
        params = sum(p.numel() for p in sides.engine.txt2img.unet.parameters())
        print(
            f"tiny SDXL: UNet {params:,} parameters; loaded once in {sides.load_s:.2f} s; "
            f"scheduler {type(sides.engine.txt2img.scheduler).__name__} (karras); threads {args.threads}"
        )
        results["unet_params"] = params
        results["sizes"] = []
        for size in args.sizes:
            res = bench_size(sides, size, args.steps, args.strength, args.repeats, args.warmup)
            print_size(res)
            results["sizes"].append(res)
        out_root = Path(args.out_dir) if args.out_dir else Path(tmp) / "runs"
        run_size = args.run_size or args.sizes[0]
        res = bench_run_all(sides, folder, run_size, args.steps, args.strength, args.run_repeats, out_root)
        print_run_all(res)
        results["run_all"] = res
    text = json.dumps(results, indent=2, default=str)
    targets = [Path(args.json)] if args.json else []
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / "bench_engine_overhead.json")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {target}")
    for r in results["sizes"]:
        print(
            f"verdict {r['size']} px: A/B wall {r['wall']['ratio_median_of_pairs']:.3f}, "
            f"cpu {r['cpu']['ratio_median_of_pairs']:.3f} (target <= {TARGET}: "
            f"wall {'yes' if r['meets_target_wall'] else 'NO'}, cpu {'yes' if r['meets_target_cpu'] else 'NO'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
