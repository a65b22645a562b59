"""Score run folders from a long-lived program (the app): the eval command's work for a few
runs, with the session's scorers, progress through a callback and a cancel check between
batches. Every problem is collected as a message (one per metric or folder), never raised,
so a front end can show them and go on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ScoringReport:
    """What a scoring pass did: images scored, and each problem worded with its fix."""

    scored: int = 0
    problems: list[str] = field(default_factory=list)
    cancelled: bool = False


def score_folders(
    folders: Iterable[Path],
    cache,
    metrics: Iterable[str] | None = None,
    *,
    on_progress: Callable[[str, int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> ScoringReport:
    """Score every variant image of `folders` not yet scored with the current weights, with
    `cache` (a ScorerCache), metric by metric; each batch's scores are written at once."""
    from critifusion_tui.engine.diffusion import DiffusionLoadError
    from critifusion_tui.eval.base import ScorerError
    from critifusion_tui.eval.runs import is_scored, open_run, save_scores, variant_images
    from critifusion_tui.eval.weights import WeightsMissing

    report = ScoringReport()
    stores = []
    for folder in folders:
        store = open_run(Path(folder))
        if isinstance(store, str):
            report.problems.append(f"{Path(folder).name}: {store}")
        elif store.record.status == "running":
            report.problems.append(f"{store.folder.name}: still running; score it when it has finished")
        else:
            stores.append(store)
    size = cache.settings.eval.batch_size
    for metric in list(metrics or cache.settings.eval.metrics):
        try:
            prepared = cache.prepare(metric)
        except WeightsMissing as exc:
            report.problems.append(str(exc))
            continue
        todo = [
            (store, variant, path)
            for store in stores
            for variant, path in variant_images(store).items()
            if not is_scored(store.record, variant, metric, prepared.fingerprint)
        ]
        if not todo:
            continue
        if on_progress:
            on_progress(metric, 0, len(todo))
        try:
            scorer = cache.get(metric, prepared)
        except (ScorerError, DiffusionLoadError) as exc:
            report.problems.append(str(exc))
            continue
        for start in range(0, len(todo), size):
            if cancelled():
                report.cancelled = True
                return report
            chunk = todo[start : start + size]
            values = scorer.score([p for _, _, p in chunk], [s.record.prompt for s, _, _ in chunk])
            by_run: dict = {}
            for (store, variant, _), value in zip(chunk, values):
                by_run.setdefault(store, {})[variant] = value
            for store, scores in by_run.items():
                save_scores(store, metric, prepared.fingerprint, scores)
            report.scored += len(chunk)
            if on_progress:
                on_progress(metric, start + len(chunk), len(todo))
    return report
