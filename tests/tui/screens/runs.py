"""Fake run folders for the history tests, written through RunStore like a real run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
from PIL import Image

from critifusion_tui.config import Settings, settings_for_manifest
from critifusion_tui.engine.store import RunStore

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def make_run(
    output_dir: Path,
    prompt: str,
    *,
    minutes: int,
    status: str = "done",
    seed: int = 2026,
    steps: int = 20,
    refined: bool = True,
    tiny: bool = True,
    colour: tuple[int, int, int] = (200, 60, 30),
) -> Path:
    """A run created `minutes` after T0, with a base image and (unless not `refined`) a refined one."""
    settings = Settings()
    settings.diffusion.seed = seed
    settings.diffusion.steps = steps
    settings.diffusion.width = settings.diffusion.height = 64
    if tiny:
        settings.diffusion.model = "tiny-random"
    store = RunStore.create(
        prompt=prompt,
        seed=seed,
        config=settings_for_manifest(settings),
        versions={"critifusion-tui": "0.1.0", "model": settings.diffusion.model},
        output_dir=output_dir,
        now=T0 + timedelta(minutes=minutes),
        extra={"variants": "full", "tiny_random": tiny},
    )
    base = Image.new("RGB", (64, 64), colour)
    store.write_png("base.png", base, {"prompt": prompt})
    # A completed base stage names its latent, prompt and negative, as a real run's does (a
    # run folder is checked field by field when it is opened).
    latent = store.write_latent("base_latent.safetensors", torch.zeros(1, 4, 8, 8))
    store.save_stage(
        "base",
        {
            "image": "base.png",
            "latent": latent,
            "prompt": prompt,
            "negative": "blurry",
            "seed": seed,
            "steps": steps,
            "seconds": 12.5,
        },
    )
    if refined:
        store.write_png("refined.png", Image.new("RGB", (64, 64), colour[::-1]), {"prompt": prompt})
        store.save_stage(
            "refine",
            {
                "image": "refined.png",
                "prompt": f"{prompt}, sharp focus",
                "strength": 0.75,
                "guidance": 7.5,
                "steps": steps,
                "seconds": 4.0,
            },
        )
    store.finish(status)
    return store.folder


def make_history(output_dir: Path) -> dict[str, Path]:
    """Three runs (a fox done, a [bold] cat failed before refining, an owl cancelled), a broken
    manifest, a foreign schema and a plain folder that is no run at all."""
    runs = {
        "fox": make_run(output_dir, "a red fox in the snow", minutes=0, seed=7),
        "cat": make_run(
            output_dir, "a [bold]cat[/] on a mat", minutes=30, status="failed", refined=False, colour=(20, 90, 200)
        ),
        "owl": make_run(
            output_dir, "an owl at night, moonlight", minutes=10, status="cancelled", steps=30, colour=(90, 160, 40)
        ),
    }
    broken = output_dir / "20260301-120000-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json", encoding="utf-8")
    foreign = output_dir / "20260301-120500-foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"schema": "other/2"}', encoding="utf-8")
    (output_dir / "notes").mkdir()
    return runs
