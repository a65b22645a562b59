"""Tiny random metric weights in their published formats, built once per session, offline."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (it reads the variable at import time).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """Local paths of every tiny weight, by the [eval] key they stand in for."""
    from tests.eval import tiny

    root = tmp_path_factory.mktemp("eval-weights")
    pick = tiny.save_clip_folder(root / "pickscore", seed=1)
    laion = tiny.save_clip_folder(root / "laion-h14", seed=2)
    openai = tiny.save_clip_folder(root / "openai-l14", seed=3)
    ir = tiny.save_imagereward(root / "imagereward", seed=4)
    return {
        "pickscore_model": pick,
        "pickscore_processor": pick,
        "hpsv2_checkpoint": tiny.save_hpsv2(root / "hpsv2", seed=5),
        "hpsv2_clip": laion,
        "imagereward_checkpoint": ir["checkpoint"],
        "imagereward_med_config": ir["med_config"],
        "imagereward_tokenizer": ir["tokenizer"],
        "aesthetic_checkpoint": tiny.save_aesthetic(root / "aesthetic", seed=6),
        "aesthetic_clip": openai,
    }


@pytest.fixture(scope="session")
def eval_config(weights):
    from critifusion_tui.config import EvalConfig

    return EvalConfig(**{key: str(path) for key, path in weights.items()}, batch_size=2)


def overrides(weights) -> list[str]:
    """--set items pointing [eval] at the tiny weights (for the command line)."""
    return [item for key, path in weights.items() for item in ("--set", f"eval.{key}='{path}'")]


@pytest.fixture(scope="session")
def images():
    """Four distinct square RGB images (28 px: the tiny CLIPs' input; 32 px: ImageReward's)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def make(size):
        return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(4)]

    return {28: make(28), 32: make(32)}


PROMPTS = ["a red fox in a forest", "a blue cube on a green sphere", "a photo of a cat", "the dog"]
