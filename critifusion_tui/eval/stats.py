"""Summaries with uncertainty: bootstrap confidence intervals, paired differences, win rates.

Percentile bootstrap with a fixed seed, so the same scores always print the same interval.
With fewer than two values there is no interval (``None``), which the report shows as such
rather than as a zero-width range that would look certain.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

RESAMPLES = 2000
SEED = 0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = RESAMPLES, seed: int = SEED):
    """The percentile bootstrap interval of the mean, or None with fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    lo = means[int(tail * resamples)]
    hi = means[min(resamples - 1, int((1.0 - tail) * resamples))]
    return (lo, hi)


def describe(values: Sequence[float]) -> dict:
    ci = bootstrap_ci(values)
    return {"mean": mean(values), "ci95": list(ci) if ci else None, "n": len(values)}


def paired(values: Sequence[float], baseline: Sequence[float]) -> dict:
    """Per-prompt differences ``value - baseline``: their mean, its interval, and the win rate
    (share of prompts where the variant scores higher; a tie counts half)."""
    diffs = [a - b for a, b in zip(values, baseline, strict=True)]
    wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs)
    ci = bootstrap_ci(diffs)
    return {"mean": mean(diffs), "ci95": list(ci) if ci else None, "win_rate": wins / len(diffs), "n": len(diffs)}
