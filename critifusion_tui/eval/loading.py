"""Shared loading helpers: quiet transformers, safe checkpoint reads, clear key checks."""

from __future__ import annotations

import contextlib
from pathlib import Path

from critifusion_tui.eval.base import ScorerError


@contextlib.contextmanager
def quiet_transformers():
    """transformers prints load reports and progress bars; the eval command has its own."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_state_dict(path: Path, metric: str, *, inner: str | None = None) -> dict:
    """A checkpoint's tensors. ``weights_only=True``: a checkpoint is data, never code.

    `inner`: the key some formats wrap the state dict in (HPSv2's ``state_dict``); a file
    without it is taken as the state dict itself. A leading ``module.`` (DataParallel) is dropped.
    """
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, a pickle with code in it, not a torch file
        raise ScorerError(f"{metric}: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if inner and isinstance(data, dict) and isinstance(data.get(inner), dict):
        data = data[inner]
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise ScorerError(f"{metric}: {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def require_keys(state: dict, keys: list[str], metric: str, path: Path, what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ScorerError(f"{metric}: {path} is not {what}: it lacks {shown}")


def load_matching(module, state: dict, metric: str, path: Path, what: str) -> None:
    """Load `state` into `module`, requiring every parameter; extra keys are ignored
    (checkpoints carry heads the score does not use), a shape mismatch is an error."""
    expected = module.state_dict()
    require_keys(state, list(expected), metric, path, what)
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ScorerError(
                f"{metric}: {path} does not match {what}: {key} has shape {tuple(state[key].shape)},"
                f" expected {tuple(tensor.shape)}"
            )
    module.load_state_dict({k: state[k] for k in expected}, strict=True)


def from_pretrained_checked(cls, folder, metric: str, **kwargs):
    """``cls.from_pretrained`` that fails on missing weights instead of initialising them at
    random (transformers only warns, and the warning is silenced here): a score from a
    half-random model would look like a real one."""
    with quiet_transformers():
        try:
            model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ScorerError(f"{metric}: cannot load {folder}: {exc}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        shown = ", ".join([*missing, *(str(m[0] if isinstance(m, tuple) else m) for m in mismatched)][:4])
        raise ScorerError(f"{metric}: {folder} lacks or mismatches weights of {cls.__name__}: {shown}")
    return model
