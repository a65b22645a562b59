"""Tiny diffusion pipelines for the engine tests, built once per session, fully offline.

The tiny SDXL (and SD 1.5) pipelines are built from configs with seeded random weights, saved
to a temporary folder, and loaded back through the same ``from_pretrained`` path a user's
checkpoint folder takes (``Diffusion(<folder>)``).
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (it reads the variable at import time). The root
# conftest sets it per test too, but session fixtures run before per-test fixtures.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory):
    """A saved tiny random SDXL pipeline folder (model_index.json, unet/, vae/, ...)."""
    from critifusion_tui.engine.tiny_sdxl import build_tiny_sdxl, save_tiny

    return save_tiny(build_tiny_sdxl(seed=0), tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory: pytest.TempPathFactory):
    """A saved tiny random SD 1.5 pipeline folder."""
    from critifusion_tui.engine.tiny_sdxl import build_tiny_sd15, save_tiny

    return save_tiny(build_tiny_sd15(seed=0), tmp_path_factory.mktemp("tiny-sd15"))


@pytest.fixture(scope="session")
def engine(tiny_sdxl_dir):
    """One loaded engine on the saved tiny SDXL folder, shared by the session (CPU, float32)."""
    from critifusion_tui.engine.diffusion import Diffusion

    return Diffusion(str(tiny_sdxl_dir), device="cpu").load()
