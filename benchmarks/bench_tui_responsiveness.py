"""How fast the app handles a key while a diffusion runs (target: within 100 ms).

The app is driven headless with Textual's Pilot on the tiny random SDXL. While the base
image is being drawn (a long run of steps in the engine's worker thread), a key opens the
log screen and another closes it; each round trip is timed from the press until the screen
has changed. The same is measured with the app idle, as the baseline.

Run: python benchmarks/bench_tui_responsiveness.py [--presses 30] [--size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def measure(presses: int, size: int) -> dict[str, list[float]]:
    from textual_image.widget import HalfcellImage

    from critifusion_tui.config import LoadedConfig, Settings
    from critifusion_tui.tui.app import TAGS_GATE, CritiFusionApp
    from critifusion_tui.tui.screens.log import LogScreen

    settings = Settings.model_validate(
        {
            "criticore": {"candidates": ["rules"], "aggregator": "rules", "vlms": ["rules"]},
            "diffusion": {"model": "tiny-random", "device": "cpu", "width": size, "height": size, "steps": 1000},
            "output": {"dir": tempfile.mkdtemp()},
        }
    )
    app = CritiFusionApp(LoadedConfig(settings, None, "benchmark"), "a red fox", image_class=HalfcellImage)
    results: dict[str, list[float]] = {"idle": [], "during diffusion": []}

    async def round_trip(pilot) -> float:
        # The key goes in as the terminal driver would post it. (Pilot.press also waits for
        # the app to be idle, which a stream of progress messages postpones: that would time
        # the test harness, not the app.)
        started = time.perf_counter()
        app.simulate_key("ctrl+l")
        while not isinstance(app.screen, LogScreen):
            await asyncio.sleep(0.001)
        opened = time.perf_counter() - started
        app.simulate_key("escape")
        while isinstance(app.screen, LogScreen):
            await asyncio.sleep(0.001)
        return opened

    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+r")
        while not (app.phase == TAGS_GATE and not app.busy):
            await pilot.pause(0.05)
        for _ in range(presses):
            results["idle"].append(await round_trip(pilot))
        await pilot.press("ctrl+r")
        progress = app.query_one("#progress")
        while progress.step < 2:  # the model is loaded and steps are running
            await pilot.pause(0.05)
        first_step = progress.step
        for _ in range(presses):
            results["during diffusion"].append(await round_trip(pilot))
            await asyncio.sleep(0.05)
        last_step = progress.step
        app.worker.cancel()
    print(f"(the diffusion went from step {first_step} to {last_step} of 1000 while measuring)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=30)
    parser.add_argument("--size", type=int, default=256, help="image size of the tiny model (pixels)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the diffusion")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = asyncio.run(measure(args.presses, args.size))
    print(
        f"key -> screen change, {args.presses} presses each, tiny SDXL at {args.size} px, {args.threads} torch threads"
    )
    for name, samples in results.items():
        ms = sorted(s * 1000 for s in samples)
        p95 = ms[int(len(ms) * 0.95) - 1]
        print(f"  {name:17} median {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   max {ms[-1]:6.1f} ms")


if __name__ == "__main__":
    main()
