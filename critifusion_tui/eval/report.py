"""What the eval command prints and writes: the JSON, a Rich table, a CSV and a PNG chart."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from critifusion_tui.eval.runs import BASELINE, VARIANTS
from critifusion_tui.eval.stats import describe, paired

if TYPE_CHECKING:
    from rich.console import JustifyMethod


def build(runs: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """``runs``: [{"folder", "prompt", "scores": {variant: {metric: value}}}].

    Returns the JSON shape of the command: the runs, and per variant and metric the mean with
    its 95 % interval and count. Paired differences against the baseline go in ``paired``,
    which the JSON output leaves out (the issue fixes that shape) and the table shows.
    """
    summary: dict[str, dict[str, Any]] = {}
    pairs: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        for metric in metrics:
            values = [r["scores"][variant][metric] for r in runs if metric in r["scores"].get(variant, {})]
            if values:
                summary.setdefault(variant, {})[metric] = describe(values)
            if variant == BASELINE:
                continue
            both = [
                (r["scores"][variant][metric], r["scores"][BASELINE][metric])
                for r in runs
                if metric in r["scores"].get(variant, {}) and metric in r["scores"].get(BASELINE, {})
            ]
            if both:
                pairs.setdefault(variant, {})[metric] = paired([a for a, _ in both], [b for _, b in both])
    return {"runs": runs, "summary": summary, "paired": pairs}


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    return {"runs": result["runs"], "summary": result["summary"]}


def _interval(stats: dict[str, Any], digits: int) -> str:
    ci = stats.get("ci95")
    body = f"{stats['mean']:.{digits}f}"
    return f"{body} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f"{body} (n=1)"


# PickScore is in the tens, HPSv2 a cosine: enough digits to tell variants apart.
DIGITS = {"pickscore": 2, "hpsv2": 4, "imagereward": 3, "aesthetic": 3}


def tables(result: dict[str, Any], metrics: list[str]) -> list:
    """One Rich table, a row per metric and variant: the mean with its interval, and beside it
    the paired difference against the baseline on the same prompts with its interval and win
    rate. Cells are Text: names come from manifests, which are data, never markup."""
    from rich.table import Table
    from rich.text import Text

    shown = [m for m in metrics if any(m in v for v in result["summary"].values())]
    if not shown:
        return []
    n_runs = len(result["runs"])
    table = Table(
        caption=f"{n_runs} run{'s' if n_runs != 1 else ''}; 95% bootstrap intervals; win: share of prompts where"
        f" the variant beats {BASELINE} (ties count half)",
        caption_justify="left",
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("metric", "left"),
        ("variant", "left"),
        ("n", "right"),
        ("mean [95% CI]", "right"),
        (f"vs {BASELINE} [95% CI]", "right"),
        ("win", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for metric in shown:
        digits = DIGITS.get(metric, 3)
        first = True
        for variant in VARIANTS:
            stats = result["summary"].get(variant, {}).get(metric)
            if not stats:
                continue
            pair = result["paired"].get(variant, {}).get(metric)
            diff = (
                _interval(pair, digits).replace(f"{pair['mean']:.{digits}f}", f"{pair['mean']:+.{digits}f}", 1)
                if pair
                else ""
            )
            table.add_row(
                Text(metric if first else ""),
                Text(variant),
                Text(str(stats["n"])),
                Text(_interval(stats, digits)),
                Text(diff),
                Text(f"{pair['win_rate']:.0%}" if pair else ""),
                end_section=variant == VARIANTS[-1],
            )
            first = False
    return [table]


def write_csv(result: dict[str, Any], path: Path) -> None:
    """One row per run, variant and metric (the long format every tool reads)."""
    from critifusion_tui.engine.store import atomic_write

    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(["folder", "prompt", "variant", "metric", "value"])
        for run in result["runs"]:
            for variant, values in run["scores"].items():
                for metric, value in values.items():
                    writer.writerow([run["folder"], run["prompt"], variant, metric, value])

    atomic_write(path, write, mode="w")


def write_plot(result: dict[str, Any], metrics: list[str], path: Path) -> None:
    """A PNG: one panel per metric, a bar per variant with its 95 % interval.
    matplotlib is imported here only (an optional extra: ``pip install matplotlib``)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if any(m in v for v in result["summary"].values())]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(3.2 * max(1, len(shown)), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        names, heights, low, high = [], [], [], []
        for variant in VARIANTS:
            stats = result["summary"].get(variant, {}).get(metric)
            if not stats:
                continue
            names.append(variant.replace("_", "\n"))
            heights.append(stats["mean"])
            ci = stats["ci95"] or [stats["mean"], stats["mean"]]
            low.append(stats["mean"] - ci[0])
            high.append(ci[1] - stats["mean"])
        ax.bar(range(len(names)), heights, yerr=[low, high], capsize=4, color="#4c78a8")
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_title(metric)
        lo = min(h - d for h, d in zip(heights, low)) if heights else 0
        hi = max(h + d for h, d in zip(heights, high)) if heights else 1
        pad = (hi - lo) * 0.2 or 0.1
        ax.set_ylim(lo - pad, hi + pad)  # differences between variants are small: zoom to them
    fig.suptitle(f"{len(result['runs'])} runs, mean and 95% CI")
    fig.tight_layout()
    from critifusion_tui.engine.store import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
