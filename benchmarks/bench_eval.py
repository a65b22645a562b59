"""Images scored per second, per metric, through the real scorers.

On the CPU (default) it builds the tiny random models of the eval tests (same file formats as
the published weights) and times ``score()`` over 64 px images: it measures the scorer's own
overhead (preprocessing, tokenising, batching), not a real model's cost. On a GPU machine with
the published weights in its Hugging Face cache, ``--published`` times the real models:

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_eval.py --published --device cuda --images 64 --batch 16

Prints one line per metric: images/s (median of --repeats timed passes after one warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiny_config(root: Path, batch: int):
    from critifusion_tui.config import EvalConfig
    from tests.eval import tiny

    pick = tiny.save_clip_folder(root / "pick", seed=1)
    clip = tiny.save_clip_folder(root / "clip", seed=2)
    ir = tiny.save_imagereward(root / "ir", seed=3)
    return EvalConfig(
        batch_size=batch,
        pickscore_model=str(pick),
        pickscore_processor=str(pick),
        hpsv2_checkpoint=str(tiny.save_hpsv2(root / "hps", seed=4)),
        hpsv2_clip=str(clip),
        imagereward_checkpoint=str(ir["checkpoint"]),
        imagereward_med_config=str(ir["med_config"]),
        imagereward_tokenizer=str(ir["tokenizer"]),
        aesthetic_checkpoint=str(tiny.save_aesthetic(root / "aes", seed=5)),
        aesthetic_clip=str(clip),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", action="store_true", help="the published weights from the HF cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="side of the test images (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from critifusion_tui.config import EvalConfig
    from critifusion_tui.engine.diffusion import resolve_device, resolve_dtype
    from critifusion_tui.eval import METRICS, scorers

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.images)
    ]
    prompts = ["a red fox in a forest, a hunter hiding behind a pine"] * args.images
    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvalConfig(batch_size=args.batch) if args.published else tiny_config(Path(tmp), args.batch)
        print(
            f"device {device}, dtype {str(dtype).removeprefix('torch.')}, {args.images} images of {args.size} px,"
            f" batch {args.batch}, {'published' if args.published else 'tiny random'} weights, torch {torch.__version__}"
        )
        for metric in METRICS:
            started = time.perf_counter()
            scorer = scorers.load(scorers.prepare(metric, cfg), device=device, dtype=dtype, batch_size=args.batch)
            load_s = time.perf_counter() - started
            scorer.score(images[: args.batch], prompts[: args.batch])  # warm-up
            rates = []
            for _ in range(args.repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                scorer.score(images, prompts)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                rates.append(args.images / (time.perf_counter() - t))
            print(
                f"{metric:12s} {statistics.median(rates):9.1f} images/s  (min {min(rates):.1f}, max {max(rates):.1f};"
                f" load {load_s:.2f} s)"
            )
            del scorer
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
