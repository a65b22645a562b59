"""Checks on what diffusion produced or what a run folder handed back, before it is used.

A latent full of NaN decodes to a black image without any error from the libraries, and a
latent of the wrong size silently makes an image of another size. Both are refused here with
a sentence that names the setting most likely at fault. Each function returns the problem as
text (None when there is none); the pipeline turns it into a failed stage.
"""

from __future__ import annotations

from typing import Any


def latent_problem(latent: Any) -> str | None:
    """Why a latent cannot be used (NaN or infinite values), or None."""
    import torch

    if not isinstance(latent, torch.Tensor) or not latent.is_floating_point():
        return f"the latent is not a floating-point tensor ({type(latent).__name__})"
    finite = torch.isfinite(latent)
    if bool(finite.all()):
        return None
    bad = int((~finite).sum())
    return f"the latent holds {bad:,} NaN or infinite values of {latent.numel():,}"


def shape_problem(latent: Any, width: int, height: int, factor: int) -> str | None:
    """Why a stored latent does not fit a run of `width` x `height` pixels, or None."""
    shape = tuple(getattr(latent, "shape", ()))
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[0] != 1:
        return f"the latent has shape {shape}, not (1, channels, height, width)"
    expected = (height // factor, width // factor)
    if tuple(shape[2:]) != expected:
        return (
            f"the latent is {shape[3] * factor}x{shape[2] * factor} px ({shape[3]}x{shape[2]} cells), but the run's"
            f" base image is {width}x{height} px: it belongs to another run (refused)"
        )
    return None


def black_image(image: Any) -> bool:
    """True when every pixel of a PIL image is black (what a NaN latent decodes to)."""
    try:
        extrema = image.convert("RGB").getextrema()
    except Exception:
        return False
    return all(high == 0 for _, high in extrema)


def likely_cause(*, guidance: float | None = None, dtype: str = "auto", noise_std: float | None = None) -> str:
    """The setting most likely to blame for NaN or black output, as advice."""
    if guidance is not None and guidance > 30:
        return f"guidance {guidance:g} is far above the usual 1 to 15: lower diffusion.guidance / specfusion.guidance"
    if noise_std is not None and noise_std > 1:
        return f"specfusion.noise_std = {noise_std:g} swamps the latent: keep it near 0.001"
    if dtype == "float16":
        return 'a float16 VAE can overflow: set diffusion.dtype = "bfloat16" or "float32"'
    return (
        'check diffusion.guidance and specfusion.noise_std; with dtype "auto" on a GPU try diffusion.dtype = "float32"'
    )
