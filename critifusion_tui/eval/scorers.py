"""Metric name -> the weights it needs (from ``[eval]``) and its loaded scorer.

Resolving is cheap (cache look-ups, no torch): the eval command resolves every metric first,
reports each missing one with its fix, skips images already scored with the same weights,
and loads a model only when something is left to score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from critifusion_tui.eval.weights import Need, Resolved, resolve

MODEL_FILES = (
    ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"),
)
# transformers 5 saves a processor as processor_config.json; hub repos made earlier carry
# preprocessor_config.json. Either will do.
IMAGE_PROCESSOR = ("preprocessor_config.json", "processor_config.json")
PROCESSOR_FILES = (IMAGE_PROCESSOR, "tokenizer_config.json", ("tokenizer.json", "vocab.json"))
PROCESSOR_FETCH = (
    "preprocessor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)
CLIP_CONFIG_FETCH = ("config.json", *PROCESSOR_FETCH)


def needs(metric: str, cfg) -> list[Need]:
    """What `metric` needs, as the `[eval]` section names it."""
    if metric == "pickscore":
        return [
            Need("pickscore_model", cfg.pickscore_model, "folder", ("config.json", *MODEL_FILES)),
            Need("pickscore_processor", cfg.pickscore_processor, "folder", PROCESSOR_FILES, PROCESSOR_FETCH),
        ]
    if metric == "hpsv2":
        from critifusion_tui.eval.hpsv2 import PUBLISHED

        checkpoint = PUBLISHED[cfg.hpsv2_version] if cfg.hpsv2_checkpoint == "auto" else cfg.hpsv2_checkpoint
        return [
            Need("hpsv2_checkpoint", checkpoint, "file"),
            # Only the config and the processor: the ViT-H-14's own weights are not needed.
            Need("hpsv2_clip", cfg.hpsv2_clip, "folder", ("config.json", *PROCESSOR_FILES), CLIP_CONFIG_FETCH),
        ]
    if metric == "imagereward":
        return [
            Need("imagereward_checkpoint", cfg.imagereward_checkpoint, "file"),
            Need("imagereward_med_config", cfg.imagereward_med_config, "file"),
            Need(
                "imagereward_tokenizer",
                cfg.imagereward_tokenizer,
                "folder",
                ("tokenizer_config.json", ("vocab.txt", "tokenizer.json")),
                ("tokenizer_config.json", "vocab.txt", "tokenizer.json", "config.json"),
            ),
        ]
    if metric == "aesthetic":
        return [
            Need("aesthetic_checkpoint", cfg.aesthetic_checkpoint, "file"),
            # The repo also holds TensorFlow and Flax weights: name only what is read.
            Need(
                "aesthetic_clip",
                cfg.aesthetic_clip,
                "folder",
                ("config.json", IMAGE_PROCESSOR, *MODEL_FILES),
                ("config.json", "preprocessor_config.json", "model.safetensors"),
            ),
        ]
    raise ValueError(f"unknown metric {metric!r}")


@dataclass
class Prepared:
    """A metric whose weights were found: what to load, and the fingerprint to record."""

    metric: str
    resolved: Resolved
    fingerprint: str


def prepare(metric: str, cfg, cache_dir: str | None = None) -> Prepared:
    """Find a metric's weights (raises WeightsMissing with the fix when some are absent)."""
    resolved = resolve(metric, needs(metric, cfg), cache_dir)
    extra = f"HPSv2 {cfg.hpsv2_version}" if metric == "hpsv2" and cfg.hpsv2_checkpoint == "auto" else ""
    return Prepared(metric, resolved, resolved.fingerprint(extra))


def load(prepared: Prepared, *, device: str, dtype: Any, batch_size: int = 8):
    """The loaded scorer (ScorerError if the files are not what the metric expects)."""
    p = prepared.resolved.paths
    common = {"fingerprint": prepared.fingerprint, "device": device, "dtype": dtype, "batch_size": batch_size}
    if prepared.metric == "pickscore":
        from critifusion_tui.eval.pickscore import PickScore

        return PickScore(p["pickscore_model"], p["pickscore_processor"], **common)
    if prepared.metric == "hpsv2":
        from critifusion_tui.eval.hpsv2 import HPSv2

        return HPSv2(p["hpsv2_checkpoint"], p["hpsv2_clip"], **common)
    if prepared.metric == "imagereward":
        from critifusion_tui.eval.imagereward import ImageReward

        return ImageReward(
            p["imagereward_checkpoint"], p["imagereward_med_config"], p["imagereward_tokenizer"], **common
        )
    if prepared.metric == "aesthetic":
        from critifusion_tui.eval.aesthetic import Aesthetic

        return Aesthetic(p["aesthetic_checkpoint"], p["aesthetic_clip"], **common)
    raise ValueError(f"unknown metric {prepared.metric!r}")


def device_and_dtype(settings) -> tuple[str, Any]:
    """The scorers run where the diffusion settings say, with the dtype they resolve to."""
    from critifusion_tui.engine.diffusion import resolve_device, resolve_dtype

    device = resolve_device(settings.diffusion.device)
    return device, resolve_dtype(settings.diffusion.dtype, device)


class ScorerCache:
    """Scorers for one session: each metric is loaded on first use and kept (a later call with
    the same weights reuses it; new weights load again). Safe to call from worker threads:
    a lock makes sure two threads asking at once load a model once.

    ``get`` raises WeightsMissing (with the fetch command), ScorerError (files that are not
    what the metric expects) or DiffusionLoadError (a device that is not there).
    """

    def __init__(self, settings, cache_dir: str | None = None) -> None:
        import threading

        self.settings = settings
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}

    def prepare(self, metric: str) -> Prepared:
        return prepare(metric, self.settings.eval, self.cache_dir)

    def loaded(self, metric: str) -> bool:
        return metric in self._loaded

    def get(self, metric: str, prepared: Prepared | None = None):
        prepared = prepared or self.prepare(metric)
        with self._lock:
            scorer = self._loaded.get(metric)
            if scorer is None or scorer.fingerprint != prepared.fingerprint:
                self._loaded.pop(metric, None)  # one model per metric in memory
                device, dtype = device_and_dtype(self.settings)
                scorer = load(prepared, device=device, dtype=dtype, batch_size=self.settings.eval.batch_size)
                self._loaded[metric] = scorer
        return scorer
