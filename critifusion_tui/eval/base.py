"""The one interface every metric offers: ``score(images, prompts) -> list[float]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ScorerError(Exception):
    """A metric that cannot load or run; the message names the metric and the fix."""


class Scorer:
    """A loaded metric. Subclasses load their model once in ``__init__`` and implement
    ``_score_batch``; ``score`` batches, runs without gradients, and returns plain floats.

    ``images`` are PIL images or paths; ``prompts`` the text each image is scored against
    (one per image; a text-free metric ignores them).
    """

    metric: str = ""

    def __init__(self, *, fingerprint: str, device: str, dtype: Any, batch_size: int = 8) -> None:
        self.fingerprint = fingerprint
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        import torch

        from critifusion_tui.eval.images import load_rgb

        if len(images) != len(prompts):
            raise ValueError(f"{self.metric}: {len(images)} images but {len(prompts)} prompts")
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [load_rgb(image) for image in images[start : start + self.batch_size]]
                values = self._score_batch(batch, list(prompts[start : start + self.batch_size]))
                scores.extend(float(v) for v in values.float().cpu().reshape(-1).tolist())
        return scores

    def _score_batch(self, images: list, prompts: list[str]):  # -> 1-d tensor, one per image
        raise NotImplementedError
