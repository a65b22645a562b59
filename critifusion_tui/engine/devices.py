"""The device a model runs on: which one, in which dtype, and its memory.

Shared by the diffusion room (``Diffusion.plan`` resolves both settings before the load plan)
and the eval scorers. torch is imported inside each function, never at module import: the
front ends import the engine before they need torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.diffusion_errors import DiffusionLoadError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["DIFFUSION_HEADROOM_BYTES", "cuda_memory_short", "empty_cache", "is_oom", "resolve_device", "resolve_dtype"]

# What one SDXL pass at 1024 px and its VAE decode take beside the loaded weights (activations,
# the decode's float32 upcast), with a margin: less free than this is "short".
DIFFUSION_HEADROOM_BYTES = 6 * 2**30

_DTYPE_NAMES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``mps``, else ``cpu``; an explicit device is checked."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if name == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise DiffusionLoadError(
                f'diffusion.device is "{device}" but this torch build sees no CUDA GPU '
                f"(torch {torch.__version__}). Fix: set diffusion.device = \"auto\" or \"cpu\", "
                "or install a CUDA build of torch."
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DiffusionLoadError(
                f'diffusion.device is "{device}" but only {torch.cuda.device_count()} CUDA '
                'device(s) exist. Fix: use "cuda" or "cuda:0".'
            )
        return name
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DiffusionLoadError(
                'diffusion.device is "mps" but Apple Metal is not available here. '
                'Fix: set diffusion.device = "auto" or "cpu".'
            )
        return "mps"
    raise DiffusionLoadError(
        f"unknown diffusion.device {device!r}: expected auto, cpu, mps, cuda or cuda:N"
    )


def resolve_dtype(dtype: Any = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` -> float16 on CUDA and MPS, float32 on the CPU; float16 on the CPU is refused."""
    import torch

    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        name = str(dtype or "auto").strip().lower().removeprefix("torch.")
        if name == "auto":
            return torch.float32 if device == "cpu" else torch.float16
        if name not in _DTYPE_NAMES:
            raise DiffusionLoadError(
                f"unknown diffusion.dtype {dtype!r}: expected auto, float16, bfloat16 or float32"
            )
        resolved = getattr(torch, _DTYPE_NAMES[name])
    if resolved not in (torch.float16, torch.bfloat16, torch.float32):
        raise DiffusionLoadError(f"diffusion.dtype {resolved} is not supported")
    if device == "cpu" and resolved == torch.float16:
        raise DiffusionLoadError(
            "float16 is not supported for diffusion on the CPU (slow or missing kernels). "
            'Fix: set diffusion.dtype = "auto" (float32) or "bfloat16".'
        )
    return resolved


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` says the accelerator ran out of memory (CUDA, MPS, other allocators)."""
    import torch

    kinds = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    )
    if kinds and isinstance(exc, kinds):
        return True
    # MPS and some allocators raise a plain RuntimeError ("MPS backend out of memory").
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: str) -> None:
    """Hand the allocator's cached blocks on ``device`` back (CUDA, MPS; nothing on the CPU)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def cuda_memory_short(device: str, headroom: int = DIFFUSION_HEADROOM_BYTES) -> bool:
    """Whether a CUDA device has less memory free for the next diffusion than `headroom`.

    Free is the device's own count (other processes, an Ollama server among them, take from
    it) plus what torch's allocator holds cached but unused (torch reuses that). Never short
    off CUDA: there is no GPU memory to share.
    """
    if not device.startswith("cuda"):
        return False
    import torch

    target = torch.device(device)
    free, _total = torch.cuda.mem_get_info(target)
    cached = torch.cuda.memory_reserved(target) - torch.cuda.memory_allocated(target)
    return free + cached < headroom
