"""`critifusion eval`: score the images of run folders, record the scores, summarise them.

Order of work: find the runs; resolve every metric's weights (a missing one is reported with
its fix and the others go on); per metric, list the images not yet scored with these weights,
load the model only if there are some, score them in batches and write each batch's scores
into its runs' manifests at once (Ctrl+C keeps them); then summarise every recorded score.
Progress goes to stderr; stdout gets the table, or the JSON with ``--json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import TaskID

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Progress:
    """A Rich bar over images on a terminal, else one plain line per batch."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.bar = None
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=True,
            )
            self.bar.start()
        self.task: TaskID | None = None

    def start(self, metric: str, total: int) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task(metric, total=total)
        else:
            print(f"{metric}: scoring {total} image{'s' if total != 1 else ''}", file=self.stream, flush=True)

    def advance(self, metric: str, done: int, total: int, n: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=n)
        else:
            print(f"{metric}: {done}/{total}", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_eval(args, loaded, cache_dir: str | None = None) -> int:
    from critifusion_tui.eval import report, scorers
    from critifusion_tui.eval.base import ScorerError
    from critifusion_tui.eval.runs import find_runs, is_scored, open_run, save_scores, scores_of, variant_images
    from critifusion_tui.eval.weights import WeightsMissing

    settings = loaded.settings
    metrics = args.metrics or list(settings.eval.metrics)
    folders, problems = find_runs(args.paths)
    for problem in problems:
        _say(f"critifusion eval: {problem}")
    if not folders:
        return EXIT_USAGE

    stores = {}
    for folder in folders:
        store = open_run(folder)
        if isinstance(store, str):
            _say(f"critifusion eval: skipping {folder}: {store}")
            continue
        if store.record.status == "running":
            # Its own process rewrites the manifest after every stage and would drop our scores.
            _say(f"critifusion eval: skipping {folder}: still running (or killed: resume it first)")
            continue
        stores[folder] = store

    failed = bool(problems)
    prepared = {}
    for metric in metrics:
        try:
            prepared[metric] = scorers.prepare(metric, settings.eval, cache_dir)
        except WeightsMissing as exc:
            _say(str(exc))
            failed = True

    progress = _Progress(sys.stderr)
    interrupted = False
    scored = 0
    try:
        device = dtype = None
        for metric, prep in prepared.items():
            todo = [
                (store, variant, path)
                for store in stores.values()
                for variant, path in variant_images(store).items()
                if not is_scored(store.record, variant, metric, prep.fingerprint)
            ]
            if not todo:
                continue
            if device is None:
                from critifusion_tui.engine.diffusion import DiffusionLoadError

                try:
                    device, dtype = scorers.device_and_dtype(settings)
                except DiffusionLoadError as exc:
                    _say(f"critifusion eval: {exc}")
                    return EXIT_USAGE
            try:
                scorer = scorers.load(prep, device=device, dtype=dtype, batch_size=settings.eval.batch_size)
            except ScorerError as exc:
                _say(str(exc))
                failed = True
                continue
            progress.start(metric, len(todo))
            size = settings.eval.batch_size
            for start in range(0, len(todo), size):
                chunk = todo[start : start + size]
                values = scorer.score([p for _, _, p in chunk], [s.record.prompt for s, _, _ in chunk])
                by_run: dict[Any, dict[str, float]] = {}
                for (store, variant, _), value in zip(chunk, values):
                    by_run.setdefault(store, {})[variant] = value
                for store, scores in by_run.items():
                    save_scores(store, metric, prep.fingerprint, scores)
                scored += len(chunk)
                progress.advance(metric, start + len(chunk), len(todo), len(chunk))
            progress.finish()
            del scorer  # one model in memory at a time
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()

    runs = [
        {"folder": str(store.folder), "prompt": store.record.prompt, "scores": scores_of(store.record)}
        for store in stores.values()
    ]
    result = report.build(runs, metrics)
    if args.json:
        print(json.dumps(report.as_json(result), indent=2, ensure_ascii=False))
    else:
        from rich.console import Console

        # Piped or redirected, Rich would wrap at 80 columns: a file has room.
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
        for table in report.tables(result, metrics):
            console.print(table)
        if not result["summary"]:
            console.print("no scores yet", markup=False)
    if args.csv:
        report.write_csv(result, Path(args.csv))
    if args.plot:
        try:
            report.write_plot(result, metrics, Path(args.plot))
        except ImportError:
            _say("critifusion eval: --plot needs matplotlib: pip install matplotlib (the 'plot' extra)")
            failed = True
    if interrupted:
        _say(f"critifusion eval: interrupted; the {scored} images scored so far are saved in their manifests")
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failed else EXIT_OK
