"""SpecFusion (SPEC 6): hand-computed masks and fusions, CADR, the last_k rules, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from critifusion_tui.engine.specfusion import (
    CadrParams,
    cadr_from_alignment,
    frequency_fusion,
    fusion_mask,
    fusion_window,
    guidance_for_last_k,
    refine_seed,
    strength_for_last_k,
)


def _latent(seed: int, shape=(1, 4, 8, 8), dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def _checker(h: int, w: int) -> torch.Tensor:
    # (-1)^(i+j): the Nyquist frequency, at index (0, 0) of the shifted spectrum (far corner).
    i = torch.arange(h).view(h, 1)
    j = torch.arange(w).view(1, w)
    return ((i + j) % 2 * -2 + 1).to(torch.float32)


# ---------------------------------------------------------------- mask


def test_mask_8x8_window_is_rows_and_cols_2_to_5():
    # tau = int(8 * 0.5 * (1 - 0.5)) = 2, cy = cx = 4: rows/cols 4-2 .. 4+2-1 = 2..5.
    o, r = 1.0, 0.5
    expected = torch.tensor(
        [
            [o, o, o, o, o, o, o, o],
            [o, o, o, o, o, o, o, o],
            [o, o, r, r, r, r, o, o],
            [o, o, r, r, r, r, o, o],
            [o, o, r, r, r, r, o, o],
            [o, o, r, r, r, r, o, o],
            [o, o, o, o, o, o, o, o],
            [o, o, o, o, o, o, o, o],
        ]
    )
    mask = fusion_mask(8, 8, base_c=0.5, rho_t=0.5)
    assert mask.dtype == torch.float32
    assert torch.equal(mask, expected)
    assert fusion_window(8, 8, base_c=0.5, rho_t=0.5) == (2, 6, 2, 6)


def test_mask_odd_and_rectangular():
    # h=5: tau_h = int(5 * 0.5 * 0.8) = 2, cy = 2 -> rows 0..3
    # w=7: tau_w = int(7 * 0.5 * 0.8) = int(2.8) = 2, cx = 3 -> cols 1..4
    assert fusion_window(5, 7, base_c=0.5, rho_t=0.2) == (0, 4, 1, 5)
    mask = fusion_mask(5, 7, base_c=0.5, rho_t=0.2)
    inside = torch.zeros(5, 7, dtype=torch.bool)
    inside[0:4, 1:5] = True
    assert torch.allclose(mask[inside], torch.full((16,), 0.2))
    assert torch.all(mask[~inside] == 1.0)


def test_default_window_on_an_sdxl_latent():
    # 1024 px -> 128 latent rows: tau = int(128 * 0.5 * 0.15) = int(9.6) = 9, cy = 64.
    assert fusion_window(128, 128) == (55, 73, 55, 73)
    mask = fusion_mask(128, 128)
    assert int((mask < 1).sum()) == 18 * 18
    assert mask[64, 64].item() == pytest.approx(0.85)


def test_tau_zero_means_no_window():
    # int(8 * 0.5 * 0.1) = int(0.4) = 0
    assert torch.equal(fusion_mask(8, 8, base_c=0.5, rho_t=0.9), torch.ones(8, 8))


def test_oversized_window_is_clipped_not_wrapped():
    # base_c=1, rho_t=0: tau = 8 > cy; the window is the whole spectrum, not a negative slice.
    assert fusion_window(8, 8, base_c=1.0, rho_t=0.0) == (0, 8, 0, 8)
    assert torch.equal(fusion_mask(8, 8, base_c=1.0, rho_t=0.0), torch.zeros(8, 8))


@pytest.mark.parametrize("bad", [-0.1, 1.1, math.nan])
def test_mask_rejects_rho_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="rho_t"):
        fusion_mask(8, 8, base_c=0.5, rho_t=bad)


# ---------------------------------------------------------------- fusion


def test_rho_one_returns_x_hi():
    x_hi, x_lo = _latent(1), _latent(2)
    out = frequency_fusion(x_hi, x_lo, rho_t=1.0, noise_std=0.0)
    assert torch.allclose(out, x_hi, atol=1e-5)


def test_no_window_returns_x_hi():
    x_hi, x_lo = _latent(1), _latent(2)
    out = frequency_fusion(x_hi, x_lo, base_c=0.5, rho_t=0.9, noise_std=0.0)  # tau = 0
    assert torch.allclose(out, x_hi, atol=1e-5)


def test_identical_inputs_come_back():
    x = _latent(3, shape=(2, 4, 16, 12))
    out = frequency_fusion(x, x.clone(), rho_t=0.3, noise_std=0.0)
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)


def test_whole_spectrum_window_returns_x_lo():
    x_hi, x_lo = _latent(1), _latent(2)
    out = frequency_fusion(x_hi, x_lo, base_c=1.0, rho_t=0.0, noise_std=0.0)
    assert torch.allclose(out, x_lo, atol=1e-5)


def test_low_band_mixes_high_band_comes_from_x_hi():
    # 8x8, base_c 0.5, rho_t 0.75: tau = int(8 * 0.5 * 0.25) = 1, window rows/cols 3..4.
    # A constant (DC, at the centre (4, 4) after fftshift) is in the window: it mixes
    # 0.75 * hi + 0.25 * lo. The checkerboard (Nyquist, at the corner (0, 0)) is outside:
    # it comes from x_hi alone.
    checker = _checker(8, 8)
    x_hi = (2.0 + 3.0 * checker).expand(1, 4, 8, 8)
    x_lo = (-6.0 + 10.0 * checker).expand(1, 4, 8, 8)
    out = frequency_fusion(x_hi, x_lo, base_c=0.5, rho_t=0.75, noise_std=0.0)
    expected = (0.75 * 2.0 + 0.25 * -6.0) + 3.0 * checker  # = 0 + 3 * checker
    assert torch.allclose(out, expected.expand(1, 4, 8, 8), atol=1e-5)


def test_matches_the_formula_on_random_latents():
    x_hi, x_lo = _latent(5, (1, 4, 16, 16)), _latent(6, (1, 4, 16, 16))
    mask = fusion_mask(16, 16, base_c=0.5, rho_t=0.6)
    spec = lambda x: torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))  # noqa: E731
    fused = spec(x_hi) * mask + spec(x_lo) * (1 - mask)
    expected = torch.fft.ifft2(torch.fft.ifftshift(fused, dim=(-2, -1))).real
    out = frequency_fusion(x_hi, x_lo, base_c=0.5, rho_t=0.6, noise_std=0.0)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, x_hi, atol=1e-2)  # the window did something


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_output_keeps_the_input_dtype(dtype):
    x_hi, x_lo = _latent(1, dtype=dtype), _latent(2, dtype=dtype)
    out = frequency_fusion(x_hi, x_lo, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype
    reference = frequency_fusion(x_hi.float(), x_lo.float(), noise_std=0.0)
    assert torch.allclose(out.float(), reference, atol=0.05)


def test_noise_is_reproducible_from_the_generator():
    x_hi, x_lo = _latent(1), _latent(2)
    a = frequency_fusion(x_hi, x_lo, generator=torch.Generator().manual_seed(7))
    b = frequency_fusion(x_hi, x_lo, generator=torch.Generator().manual_seed(7))
    c = frequency_fusion(x_hi, x_lo, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    clean = frequency_fusion(x_hi, x_lo, noise_std=0.0)
    assert 0 < (a - clean).abs().max().item() < 0.01


def test_noise_has_the_requested_std():
    x = torch.zeros(4, 4, 64, 64)
    out = frequency_fusion(x, x, noise_std=0.001, generator=torch.Generator().manual_seed(0))
    assert out.std().item() == pytest.approx(0.001, rel=0.05)
    assert out.mean().abs().item() < 1e-4


def test_zero_noise_draws_nothing():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    frequency_fusion(_latent(1), _latent(2), noise_std=0.0, generator=g)
    assert torch.equal(g.get_state(), state)


def test_inputs_are_not_modified():
    x_hi, x_lo = _latent(1), _latent(2)
    hi_copy, lo_copy = x_hi.clone(), x_lo.clone()
    frequency_fusion(x_hi, x_lo, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_hi, hi_copy) and torch.equal(x_lo, lo_copy)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        frequency_fusion(_latent(1, (1, 4, 8, 8)), _latent(2, (1, 4, 8, 16)))


def test_negative_noise_is_an_error():
    with pytest.raises(ValueError, match="noise_std"):
        frequency_fusion(_latent(1), _latent(2), noise_std=-1)


# ---------------------------------------------------------------- CADR and rules


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0, (0.30, 5.0, 30, 0.85)),
        (100, (0.12, 3.6, 16, 0.60)),
        (50, (0.21, 4.3, 23, 0.725)),
        # m = 0.25: steps = round(19.5) = 20; m = 0.75: round(26.5) = 26 (Python rounds half
        # to even, as the reference's round() does).
        (75, (0.165, 3.95, 20, 0.6625)),
        (25, (0.255, 4.65, 26, 0.7875)),
        (-20, (0.30, 5.0, 30, 0.85)),
        (250, (0.12, 3.6, 16, 0.60)),
    ],
)
def test_cadr(score, expected):
    params = cadr_from_alignment(score)
    assert isinstance(params, CadrParams)
    strength, guidance, steps, rho_t = params
    assert strength == pytest.approx(expected[0])
    assert guidance == pytest.approx(expected[1])
    assert steps == expected[2] and isinstance(steps, int)
    assert rho_t == pytest.approx(expected[3])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_cadr_needs_a_real_score(bad):
    with pytest.raises(ValueError):
        cadr_from_alignment(bad)


@pytest.mark.parametrize(
    ("k", "total", "expected"),
    [
        (37, 50, 0.74),  # SPEC default
        (10, 50, 0.2),
        (0, 50, 0.02),  # max(1, k)
        (1, 1000, 0.01),  # floor
        (60, 50, 0.95),  # k > total clamps
        (50, 50, 0.95),
        (5, 0, 0.95),  # total 0 -> max(1, 0) = 1
        (0, 0, 0.95),
    ],
)
def test_strength_for_last_k(k, total, expected):
    assert strength_for_last_k(k, total) == pytest.approx(expected)


@pytest.mark.parametrize(("k", "expected"), [(1, 5.2), (9, 5.2), (10, 7.5), (19, 7.5), (20, 12.0), (37, 12.0)])
def test_guidance_for_last_k(k, expected):
    assert guidance_for_last_k(k) == expected


def test_refine_seed():
    assert refine_seed(2026, 37) == 2026 + 2100 + 37
    assert refine_seed(2026, 37, on_original=True) == 2026 + 2400 + 37
    assert refine_seed(0, 1) == 2101


@pytest.mark.parametrize(
    "metric, value, expected",
    [
        ("pickscore", 18.0, 0.0),
        ("pickscore", 25.0, 100.0),
        ("pickscore", 21.97, 56.71428571428571),
        ("hpsv2", 0.27, 50.0),
        ("hpsv2", 0.1, 0.0),
        ("hpsv2", 0.5, 100.0),
        ("imagereward", 0.5, 50.0),
        ("imagereward", -3.0, 0.0),
        ("aesthetic", 5.75, 50.0),
        ("aesthetic", 9.0, 100.0),
    ],
)
def test_alignment_from_metric_maps_linearly_between_its_anchors_and_clamps(metric, value, expected):
    from critifusion_tui.engine.specfusion import alignment_from_metric

    assert alignment_from_metric(metric, value) == pytest.approx(expected)


def test_alignment_from_metric_orders_the_published_backbones_and_feeds_cadr():
    from critifusion_tui.engine.specfusion import alignment_from_metric, cadr_from_alignment

    # SPEC 9's SDXL vs SDXL + CritiFusion: the better image gets the gentler correction.
    sdxl, fused = alignment_from_metric("imagereward", 0.776), alignment_from_metric("imagereward", 1.076)
    assert sdxl < fused
    assert cadr_from_alignment(fused).strength < cadr_from_alignment(sdxl).strength
    with pytest.raises(ValueError, match="known: pickscore"):
        alignment_from_metric("clipscore", 0.3)
    with pytest.raises(ValueError, match="finite"):
        alignment_from_metric("hpsv2", float("nan"))
