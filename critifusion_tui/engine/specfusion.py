"""SpecFusion (SPEC section 6): frequency-domain latent fusion, CADR and the last_k rules.

Pure torch, no diffusers: the module imports torch at the top, so import it only on paths that
already pay for torch (the diffusion room, the pipeline), never from a front end's top level.

The fusion keeps the low spatial frequencies of the base latent (``x_lo``: global layout and
colour) and takes the high frequencies (detail) from the refined latent (``x_hi``). In the
centred spectrum the mask is ``rho_t`` inside a centred rectangle and 1 outside, so

    X_f = X_hi * M + X_lo * (1 - M)

is ``X_hi`` outside the rectangle, and ``rho_t * X_hi + (1 - rho_t) * X_lo`` inside it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "METRIC_ALIGNMENT_RANGES",
    "CadrParams",
    "alignment_from_metric",
    "cadr_from_alignment",
    "frequency_fusion",
    "fusion_mask",
    "fusion_window",
    "guidance_for_last_k",
    "refine_seed",
    "strength_for_last_k",
]

# SPEC 6 defaults.
DEFAULT_BASE_C = 0.5
DEFAULT_RHO_T = 0.85
DEFAULT_NOISE_STD = 0.001
# Seed offsets of the refinement (SPEC 6.1): full method, and refining the "original" base.
SEED_OFFSET_FULL = 2100
SEED_OFFSET_ORIGINAL = 2400


def _check_fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    value = float(value)
    if not (low <= value <= high):  # also rejects NaN
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
    return value


def fusion_window(
    h: int, w: int, *, base_c: float = DEFAULT_BASE_C, rho_t: float = DEFAULT_RHO_T
) -> tuple[int, int, int, int]:
    """The low-frequency window as ``(row_start, row_stop, col_start, col_stop)``, stop exclusive.

    ``tau_h = int(h * base_c * (1 - rho_t))``, ``cy = h // 2``, rows ``cy - tau_h`` up to but not
    including ``cy + tau_h``; likewise the columns. ``tau = 0`` gives an empty window. A window
    larger than the spectrum (only possible with ``base_c > 0.5``) is clipped to it instead of
    wrapping around as a negative slice start would.
    """
    if h < 1 or w < 1:
        raise ValueError(f"spectrum size must be positive, got {h}x{w}")
    base_c = _check_fraction("base_c", base_c)
    rho_t = _check_fraction("rho_t", rho_t)
    tau_h = int(h * base_c * (1 - rho_t))
    tau_w = int(w * base_c * (1 - rho_t))
    cy, cx = h // 2, w // 2
    return (max(cy - tau_h, 0), min(cy + tau_h, h), max(cx - tau_w, 0), min(cx + tau_w, w))


def fusion_mask(
    h: int,
    w: int,
    *,
    base_c: float = DEFAULT_BASE_C,
    rho_t: float = DEFAULT_RHO_T,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The (h, w) float32 mask M of the fusion, for the *fftshift-ed* spectrum.

    1 everywhere, ``rho_t`` inside :func:`fusion_window`. Weight of the refined latent's
    spectrum; the base latent gets ``1 - M``.
    """
    r0, r1, c0, c1 = fusion_window(h, w, base_c=base_c, rho_t=rho_t)
    mask = torch.ones((h, w), dtype=torch.float32, device=device)
    mask[r0:r1, c0:c1] = float(rho_t)
    return mask


@torch.no_grad()
def frequency_fusion(
    x_hi: torch.Tensor,
    x_lo: torch.Tensor,
    *,
    base_c: float = DEFAULT_BASE_C,
    rho_t: float = DEFAULT_RHO_T,
    noise_std: float = DEFAULT_NOISE_STD,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fuse the refined latent ``x_hi`` with the base latent ``x_lo`` in the frequency domain.

    Both are (..., H, W) tensors of the same shape (SDXL latents: (B, 4, H/8, W/8)). The FFT runs
    in float32 over the last two axes (``torch.fft`` has no half precision on CPU); the result is
    cast back to ``x_hi``'s dtype and placed on ``x_hi``'s device.

    Gaussian noise of standard deviation ``noise_std`` is added (before the cast back). It is
    drawn from ``generator`` so that a seed reproduces the image; the generator may live on any
    device (the noise is drawn there and moved), and ``None`` uses torch's global RNG as the
    reference implementation does. ``noise_std = 0`` draws nothing.
    """
    if not isinstance(x_hi, torch.Tensor) or not isinstance(x_lo, torch.Tensor):
        raise TypeError("frequency_fusion takes two tensors")
    if x_hi.shape != x_lo.shape:
        raise ValueError(f"x_hi and x_lo must have the same shape, got {tuple(x_hi.shape)} and {tuple(x_lo.shape)}")
    if x_hi.ndim < 2:
        raise ValueError(f"expected (..., H, W) tensors, got shape {tuple(x_hi.shape)}")
    if not (x_hi.is_floating_point() and x_lo.is_floating_point()):
        raise TypeError(f"expected floating-point latents, got {x_hi.dtype} and {x_lo.dtype}")
    noise_std = float(noise_std)
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")

    out_dtype, device = x_hi.dtype, x_hi.device
    h, w = x_hi.shape[-2:]
    dims = (-2, -1)
    hi = x_hi.to(dtype=torch.float32)
    lo = x_lo.to(device=device, dtype=torch.float32)

    spec_hi = torch.fft.fftshift(torch.fft.fft2(hi, dim=dims), dim=dims)
    spec_lo = torch.fft.fftshift(torch.fft.fft2(lo, dim=dims), dim=dims)
    mask = fusion_mask(h, w, base_c=base_c, rho_t=rho_t, device=device)
    fused = spec_hi * mask + spec_lo * (1.0 - mask)
    x = torch.fft.ifft2(torch.fft.ifftshift(fused, dim=dims), dim=dims).real

    if noise_std > 0:
        if generator is not None:
            noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
            noise = noise.to(device)
        else:
            noise = torch.randn(x.shape, device=device, dtype=torch.float32)
        x = x + noise * noise_std
    return x.to(dtype=out_dtype)


class CadrParams(NamedTuple):
    """Refinement parameters of the adaptive mode (unpacks as a 4-tuple)."""

    strength: float
    guidance: float
    steps: int
    rho_t: float


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def cadr_from_alignment(score: float) -> CadrParams:
    """CADR: map an alignment score in [0, 100] (higher = better aligned) to refinement params.

    ``m = 1 - clamp(score / 100, 0, 1)``: a worse image gets a stronger correction.
    Returns ``(strength, guidance, steps, rho_t)`` = ``(lerp(0.12, 0.30, m),
    lerp(3.6, 5.0, m), round(lerp(16, 30, m)), lerp(0.60, 0.85, m))``. Scores outside
    [0, 100] are clamped; a score that is not a finite number is an error (the score has to
    come from somewhere real).
    """
    s = float(score)
    if not math.isfinite(s):
        raise ValueError(f"alignment score must be a finite number, got {score!r}")
    m = 1.0 - min(1.0, max(0.0, s / 100.0))
    return CadrParams(
        strength=_lerp(0.12, 0.30, m),
        guidance=_lerp(3.6, 5.0, m),
        steps=int(round(_lerp(16, 30, m))),
        rho_t=_lerp(0.60, 0.85, m),
    )


# A metric's score -> CADR's 0-100 alignment: linear between a "poor" and a "good" anchor,
# clamped. The anchors bracket the published means of SPEC 9 (SD v1.5 ... SPO + CritiFusion),
# widened a little, so a typical SDXL image lands mid-range and CADR's correction scales with
# how far it is from the best published backbones:
#   pickscore   18.0 -> 0, 25.0 -> 100   (SPEC 9: 20.73 ... 24.09)
#   hpsv2       0.22 -> 0, 0.32 -> 100   (0.234 ... 0.304; a cosine)
#   imagereward -0.5 -> 0, 1.5 -> 100    (0.170 ... 1.183; standardised, can be negative)
#   aesthetic   4.5  -> 0, 7.0 -> 100    (5.34 ... 6.32; the predictor's 1-10 scale)
METRIC_ALIGNMENT_RANGES: dict[str, tuple[float, float]] = {
    "pickscore": (18.0, 25.0),
    "hpsv2": (0.22, 0.32),
    "imagereward": (-0.5, 1.5),
    "aesthetic": (4.5, 7.0),
}


def alignment_from_metric(metric: str, value: float) -> float:
    """A metric's score as a 0-100 alignment for :func:`cadr_from_alignment` (see the table
    above): ``clamp(100 * (value - poor) / (good - poor), 0, 100)``. The run's adaptive mode
    uses it when ``specfusion.alignment_from`` names a metric (``Run.metric_alignment``)."""
    if metric not in METRIC_ALIGNMENT_RANGES:
        raise ValueError(f"no alignment mapping for metric {metric!r}; known: {', '.join(METRIC_ALIGNMENT_RANGES)}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{metric} score must be a finite number, got {value!r}")
    poor, good = METRIC_ALIGNMENT_RANGES[metric]
    return min(100.0, max(0.0, 100.0 * (v - poor) / (good - poor)))


def strength_for_last_k(k: int, total_steps: int) -> float:
    """img2img strength of the fixed mode: ``clamp(max(1, k) / max(1, total_steps), 0.01, 0.95)``."""
    value = max(1, int(k)) / max(1, int(total_steps))
    return min(0.95, max(0.01, value))


def guidance_for_last_k(k: int) -> float:
    """Refinement guidance when none is configured: 12.0 if k >= 20, 7.5 if k >= 10, else 5.2."""
    if k >= 20:
        return 12.0
    if k >= 10:
        return 7.5
    return 5.2


def refine_seed(seed: int, last_k: int, *, on_original: bool = False) -> int:
    """Seed of the refinement: ``seed + 2100 + last_k`` (full method), ``+ 2400`` on the original base."""
    offset = SEED_OFFSET_ORIGINAL if on_original else SEED_OFFSET_FULL
    return int(seed) + offset + int(last_k)
