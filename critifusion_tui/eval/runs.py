"""Run folders as the eval command sees them: which images a run has, and its scores.

A run's scores live in its manifest under ``"eval"``: ``{variant: {metric: value}, "models":
{metric: fingerprint}}``. A score counts only while its metric's fingerprint is the current
one: new weights (another file, another commit, HPSv2 v2.0 instead of v2.1) score again.
Every write goes through the store's atomic manifest write, so a kill or Ctrl+C keeps every
score written so far and never leaves half a manifest.
"""

from __future__ import annotations

from pathlib import Path

from critifusion_tui.engine.manifest import RunManifest, holds_manifest
from critifusion_tui.engine.stages import FULL, ORIGINAL, Stage, image_field
from critifusion_tui.engine.store import MANIFEST, RunStore, StoreError

# The comparison variants of SPEC 7 in reading order (the names eval reports), and the stage
# of the stage table that draws each.
VARIANT_STAGES = {
    "base_original": ORIGINAL.base,
    "base": FULL.base,
    "refined_original": ORIGINAL.refine,
    "refined": FULL.refine,
    "final": Stage.ROUNDS,  # with critique rounds: the best round (its record's final_image)
}
VARIANTS = tuple(VARIANT_STAGES)
BASELINE = "base_original"


def find_runs(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Every run folder at or under the given paths (sorted, once each), and the paths that
    are neither a run folder nor hold one."""
    found: dict[Path, None] = {}
    problems: list[str] = []
    for given in paths:
        path = Path(given).expanduser()
        if holds_manifest(path):
            found.setdefault(path, None)
            continue
        if not path.is_dir():
            problems.append(f"{path}: no such folder")
            continue
        under = sorted(
            m.parent for m in path.rglob(MANIFEST) if not any(p.startswith(".") for p in m.relative_to(path).parts)
        )
        if not under:
            problems.append(f"{path}: holds no run folder (no {MANIFEST} at or under it)")
        for folder in under:
            found.setdefault(folder, None)
    return list(found), problems


def variant_images(store: RunStore) -> dict[str, Path]:
    """The variants this run has drawn, with their image files (inside the run folder only:
    a run folder from elsewhere is data, and its paths must not point out of it)."""
    images: dict[str, Path] = {}
    for variant, stage in VARIANT_STAGES.items():
        field = image_field(stage)
        name = getattr(store.record.stage(stage), field, None)
        if name is None:
            continue
        try:
            path = store.path(name, f"stages.{stage}.{field}").resolve()
        except StoreError:
            continue
        if path.is_file():
            images[variant] = path
    return images


def scores_of(manifest: RunManifest) -> dict[str, dict[str, float]]:
    """{variant: {metric: value}} for the scores whose weights are recorded."""
    scores = manifest.eval
    if scores is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        kept = {m: v for m, v in scores.of(variant).items() if m in scores.models}
        if kept:
            out[variant] = kept
    return out


def is_scored(manifest: RunManifest, variant: str, metric: str, fingerprint: str) -> bool:
    scores = manifest.eval
    return scores is not None and scores.models.get(metric) == fingerprint and metric in scores.of(variant)


def save_scores(store: RunStore, metric: str, fingerprint: str, scores: dict[str, float]) -> None:
    """Record one metric's scores of some variants, at once and atomically. Scores of the
    metric made with other weights are dropped first: one run never mixes two models' numbers."""
    record = store.manifest.get("eval")
    if not isinstance(record, dict):
        record = store.manifest["eval"] = {}
    models = record.setdefault("models", {})
    if models.get(metric) != fingerprint:
        for variant in VARIANTS:
            if isinstance(record.get(variant), dict):
                record[variant].pop(metric, None)
        models[metric] = fingerprint
    for variant, value in scores.items():
        record.setdefault(variant, {})[metric] = round(float(value), 6)
    store.write_manifest()


def open_run(folder: Path) -> RunStore | str:
    """The run, or why it cannot be read."""
    try:
        return RunStore.open(folder)
    except StoreError as exc:
        return str(exc)
