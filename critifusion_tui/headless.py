"""`critifusion run`: the whole method without the app, for scripts, batches and SSH sessions.

It drives the same pipeline as the app and prints its events: Rich progress on a terminal,
plain lines when the output is piped (one line per event that matters, diffusion steps every
10 %). With ``--json`` the progress goes to stderr and stdout gets one JSON summary.
Model text is printed as plain text, never as Rich markup.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from critifusion_tui.engine.events import (
    BaseCandidates,
    CandidateFinished,
    DiffusionStep,
    Event,
    ImageReady,
    ModelLoaded,
    ModelLoading,
    Notice,
    RoundScored,
    StageCancelled,
    StageFailed,
    StageFinished,
    StageSkipped,
    StageStarted,
)

if TYPE_CHECKING:
    from critifusion_tui.engine.manifest import RunManifest

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Signals that end a run the way Ctrl+C does (status "cancelled", a resume hint); the exit
# status is 128 + the signal's number, as a shell reports a process killed by it.
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


def say(text: str, stream: TextIO | None = None) -> None:
    """One message for the person, redacted (a server's words may carry a key)."""
    from critifusion_tui.redact import redact

    print(redact(text), file=stream or sys.stderr, flush=True)


def describe(event: Event) -> str | None:
    """One line for an event, or None for events not worth a line (streamed deltas)."""
    tag = f"[{event.stage}]" if event.stage else "[run]"
    if isinstance(event, StageStarted):
        return f"{tag} started" + (f" ({event.detail})" if event.detail else "")
    if isinstance(event, StageFinished):
        return f"{tag} done in {event.seconds:.1f} s"
    if isinstance(event, StageFailed):
        return f"{tag} FAILED: {event.error}"
    if isinstance(event, StageCancelled):
        return f"{tag} cancelled after {event.seconds:.1f} s"
    if isinstance(event, StageSkipped):
        return f"{tag} skipped: {event.reason}"
    if isinstance(event, CandidateFinished):
        if event.error:
            return f"{tag} {event.role} {event.model} failed: {event.error}"
        where = {"cache": " from the cache", "replay": " (replayed)"}.get(event.origin, "")
        return f"{tag} {event.role} {event.model} answered{where} in {event.seconds:.1f} s"
    if isinstance(event, Notice):
        return f"{tag} {event.level}: {event.message}"
    if isinstance(event, ModelLoading):
        return f"{tag} loading {event.model}"
    if isinstance(event, ModelLoaded):
        return f"{tag} model: {event.summary}"
    if isinstance(event, BaseCandidates):
        return "\n".join(f"{tag} {line}" for line in candidate_lines(event))
    if isinstance(event, ImageReady):
        return f"{tag} image {event.path}" + (f" ({event.label})" if event.label else "")
    if isinstance(event, RoundScored):
        return describe_round(event, tag)
    if isinstance(event, DiffusionStep):
        every = max(1, event.total // 10)
        if event.step == event.total or event.step % every == 0:
            rate = event.step / event.elapsed if event.elapsed > 0 else 0.0
            return f"{tag} step {event.step}/{event.total} ({rate:.2f} steps/s)"
    return None


def describe_round(event: RoundScored, tag: str) -> str:
    """Critique rounds: one line per round as it is scored, and one when they end."""
    if event.final:
        why = f": {event.stopped}" if event.stopped else ""
        return f"{tag} final image: round {event.final} ({event.image}){why}"
    score = "not rated" if event.score is None else f"score {event.score:g}"
    return f"{tag} round {event.round}: {score} ({event.image})"


def candidate_lines(event: BaseCandidates) -> list[str]:
    """One line per best-of-N base candidate: its seed, its rating, and which is the base."""
    count = len(event.candidates)
    lines = []
    for candidate in event.candidates:
        score = "not rated" if candidate.score is None else f"score {candidate.score:g}"
        picked = ""
        if candidate.index == event.picked:
            picked = " (picked: none was rated)" if event.picked_by == "none" else f" (picked by {event.picked_by})"
        lines.append(f"base candidate {candidate.index}/{count}: seed {candidate.seed}, {score}{picked}")
    return lines


class PlainReporter:
    """Plain lines, flushed at once (a pipe to `tee` or a log file sees them live)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        line = describe(event)
        if line:
            say(line, self.stream)

    def close(self) -> None:
        pass


class RichReporter:
    """The same lines through Rich, plus a live progress bar for each diffusion pass."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(file=stream, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def __call__(self, event: Event) -> None:
        from rich.text import Text

        if isinstance(event, DiffusionStep):
            task = self.tasks.get(event.stage)
            if task is None:
                task = self.tasks[event.stage] = self.progress.add_task(event.stage, total=event.total, rate="")
            rate = event.step / event.elapsed if event.elapsed > 0 else 0.0
            self.progress.update(task, completed=event.step, total=event.total, rate=f"{rate:.2f} steps/s")
            return
        if isinstance(event, (StageFinished, StageFailed)) and event.stage in self.tasks:
            self.progress.remove_task(self.tasks.pop(event.stage))
        line = describe(event)
        if line:
            from critifusion_tui.redact import redact

            line = redact(line)
            style = (
                "red"
                if isinstance(event, StageFailed) or getattr(event, "error", None)
                else ("yellow" if isinstance(event, Notice) and event.level != "info" else None)
            )
            # Text, not markup: model answers and prompts are data.
            self.console.print(Text(line, style=style or ""))

    def close(self) -> None:
        self.progress.stop()


def make_reporter(stream: TextIO):
    return RichReporter(stream) if stream.isatty() else PlainReporter(stream)


@dataclass
class Outcome:
    """What one run produced, for the summary and the exit status."""

    folder: Path | None = None
    status: str = "failed"
    error: str | None = None
    record: RunManifest | None = None  # the run folder's manifest, as last written or read

    def ledger_summary(self) -> dict[str, Any] | None:
        """Tokens, seconds, retries and 429s per model and role (engine/ledger.py)."""
        if self.record is None or "ledger" not in self.record.model_fields_set:
            return None
        return self.record.ledger.summary.to_data()

    def summary(self) -> dict[str, Any]:
        from critifusion_tui.engine.store_paths import StoreError, confined

        record = self.record
        stages = record.stages.records() if record is not None else {}
        images = {}
        for name, stage in stages.items():
            image = getattr(stage, "image", None)
            if image and stage.status == "done" and self.folder is not None:
                try:
                    images[name] = str(confined(self.folder, image, f"stages.{name}.image"))
                except StoreError:
                    continue  # never a path outside the run folder
        rounds = stages.get("rounds")
        final = getattr(rounds, "final_image", None)
        if rounds is not None and rounds.status == "done" and final and self.folder is not None:
            with suppress(StoreError):  # critique rounds: the best-scoring round's image
                images["final"] = str(confined(self.folder, final, "stages.rounds.final_image"))
        rounds_summary = None
        if rounds is not None and rounds.status == "done":  # critique rounds: each with its score
            rounds_summary = {
                "final": getattr(rounds, "final", None),
                "final_by": getattr(rounds, "final_by", None),
                "stopped": getattr(rounds, "stopped", None),
                "rounds": [
                    {"round": r.round, "score": r.score, "image": r.image} for r in getattr(rounds, "rounds", [])
                ],
            }
        return {
            "folder": str(self.folder) if self.folder else None,
            "status": self.status,
            "error": self.error,
            "prompt": record.prompt if record is not None else None,
            "seed": record.seed if record is not None else None,
            "positive": record.prompt_value("positive") if record is not None else None,
            "refinement": record.prompt_value("refinement") if record is not None else None,
            "images": images,
            "rounds": rounds_summary,
            "seconds": {name: stage.seconds for name, stage in stages.items()},
            "tiny_random": record.tiny_random if record is not None else False,
            "ledger": self.ledger_summary(),
        }


async def run_one(
    session,
    outcomes: list[Outcome],
    *,
    prompt=None,
    resume=None,
    out=None,
    seed=None,
    variants="full",
    emit,
    on_start=None,
    replay=None,
    force: bool = False,
) -> Outcome:
    """One run to its end; failures become an Outcome, cancellation propagates.

    The outcome joins `outcomes` as soon as the run has a folder, so an interrupted run can
    still say where its completed stages are. `on_start(run)` is called before the first
    stage (a batch records there which process runs it).
    """
    from critifusion_tui.engine.pipeline import RunFailed
    from critifusion_tui.engine.store import StoreError

    outcome = Outcome()
    outcomes.append(outcome)
    try:
        run = (
            session.resume(resume, emit=emit)
            if resume
            else session.new_run(prompt, seed=seed, out=out, variants=variants, emit=emit, force=force)
        )
    except (StoreError, ValueError) as exc:
        outcome.error = str(exc)
        return outcome
    except OSError as exc:  # a disk full or read-only while the run folder was being made
        outcome.error = f"cannot create the run folder: {exc.strerror or exc}"
        return outcome
    outcome.folder = run.folder
    emit(Notice("", "info", f"run folder {run.folder}"))
    if replay is not None:
        run.use_replay(replay)
        emit(Notice("", "info", f"replaying the model answers recorded in {replay.where}: no provider is called"))
    try:
        if on_start is not None:
            on_start(run)
        await run.run_all()
        outcome.status = "done"
    except RunFailed as exc:
        outcome.error = str(exc)
    except asyncio.CancelledError:
        outcome.status = "cancelled"
        raise
    finally:
        outcome.record = run.store.record  # whatever happened, the run folder says it
    return outcome


def report_ledger(outcome: Outcome, reporter) -> None:
    """The run's ledger summary, one line per model and role (the manifest has every call)."""
    from critifusion_tui.engine.ledger import summary_lines

    summary = outcome.ledger_summary()
    if summary is not None:
        for line in summary_lines(summary):
            reporter(Notice("", "info", f"ledger: {line}"))


def batch_folder(parent: Path, index: int, prompt: str) -> Path:
    """A prompt's folder in a batch: stable, so a second pass finds and skips it, and keyed
    by the prompt's text (a hash), so an edited line or two prompts with the same first 40
    characters are never taken for work already done."""
    import hashlib

    from critifusion_tui.engine.store import slugify

    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return parent / f"{index:03d}-{slugify(prompt)}-{digest}"


def read_prompts(path: Path, limit: int | None = None, category: str | None = None) -> list[str]:
    """The prompts of a file: plain text, DrawBench/PartiPrompts CSV/TSV or HPDv2 JSON."""
    from critifusion_tui.prompt_sets import read_prompt_file

    return read_prompt_file(path, limit=limit, category=category)


def run_command(args, loaded, overrides: list[str] | tuple[str, ...] = ()) -> int:
    """The body of `critifusion run` once the configuration loaded."""
    from critifusion_tui.engine.manifest import holds_manifest, read_manifest
    from critifusion_tui.engine.store import MANIFEST, StoreError

    out_stream = sys.stderr if args.json else sys.stdout
    settings = loaded.settings
    from critifusion_tui.redact import configure as remember_secrets
    from critifusion_tui.redact import redact_data

    remember_secrets(settings)
    notices: list[str] = []
    if args.resume:
        from critifusion_tui.config import ConfigError
        from critifusion_tui.engine.resume import resumed_settings

        # Checked before anything starts, so a bad folder is a usage error (exit 2). The run
        # itself is reopened by Session.resume, the same way the app reopens it.
        try:
            manifest = read_manifest(Path(args.resume))
            resumed_settings(manifest, settings, overrides, f"{args.resume}/{MANIFEST}")
        except StoreError as exc:
            say(f"critifusion: {exc}")
            return EXIT_USAGE
        except ConfigError as exc:
            say(f"critifusion: configuration error\n{exc}")
            return EXIT_USAGE

    jobs: list[dict[str, Any]]
    if args.prompts:
        # Batches claim their prompts so several processes can share one (batch/runner.py).
        from critifusion_tui.batch.runner import run_batch

        return run_batch(args, settings, overrides)
    if args.resume:
        jobs = [{"resume": Path(args.resume)}]
    elif args.replay:
        from critifusion_tui.engine.replay import Replay

        # Only the prompt, seed, variants and answers are read: never the folder's settings.
        try:
            replay = Replay(read_manifest(Path(args.replay)), where=str(args.replay))
        except StoreError as exc:
            print(f"critifusion: {exc}", file=sys.stderr)
            return EXIT_USAGE
        jobs = [{"prompt": replay.prompt, "folder": Path(args.out) if args.out else None, "replay": replay}]
    else:
        if args.out:
            from critifusion_tui.engine.store import check_out_folder

            try:
                check_out_folder(Path(args.out), force=bool(getattr(args, "force", False)))
            except StoreError as exc:
                say(f"critifusion: {exc}")
                return EXIT_USAGE
        jobs = [{"prompt": args.prompt, "folder": Path(args.out) if args.out else None}]

    from critifusion_tui.engine.load_output import own_descriptor

    # The model loads in the background while the text stages print (its capture points fds
    # 1 and 2 at a file): the run's lines go through their own copy of the descriptor.
    report_stream = own_descriptor(out_stream)
    # What is said after the run (an interrupt, the JSON summary) may come while a load that
    # was cut short still holds fds 1 and 2: it goes through copies of them too.
    err_stream = report_stream if out_stream is sys.stderr else own_descriptor(sys.stderr)
    json_stream = own_descriptor(sys.stdout) if args.json else sys.stdout
    reporter = make_reporter(report_stream)
    outcomes: list[Outcome] = []
    interrupted = False
    stopped_by: list[int] = []  # the signal (SIGTERM, SIGHUP) that ended the run, if any

    def catch_stop_signals(loop, task) -> None:
        import signal

        def stop(signum: int) -> None:
            stopped_by.append(signum)
            task.cancel()

        for name in STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                try:
                    loop.add_signal_handler(signum, stop, int(signum))
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not on this platform, or not the main thread

    def refuse(folder: Path, error: str) -> None:
        outcomes.append(Outcome(folder, "failed", error=error))
        reporter(Notice("", "error", error))

    async def main() -> None:
        from critifusion_tui.engine.pipeline import Session

        catch_stop_signals(asyncio.get_running_loop(), asyncio.current_task())
        session = Session(settings, overrides=overrides)
        for text in notices:
            reporter(Notice("", "warning", text))
        if session.diffusion.is_tiny_random:
            reporter(Notice("", "warning", "diffusion.model is tiny-random: the images are noise"))
        try:
            for job in jobs:
                folder = job.get("folder")
                kwargs: dict[str, Any] = {"seed": args.seed, "variants": args.variants, "emit": reporter}
                if "resume" in job:
                    kwargs["resume"] = job["resume"]
                elif folder is not None and holds_manifest(folder):
                    try:
                        earlier = read_manifest(folder)
                    except StoreError as exc:
                        refuse(folder, f"cannot resume {folder}: {exc}")
                        continue
                    if earlier.prompt != job["prompt"].strip():
                        refuse(folder, f"{folder} holds another prompt's run; move it away")
                        continue
                    if earlier.status == "done":
                        reporter(Notice("", "info", f"skipping {job['prompt']!r}: already done in {folder}"))
                        outcomes.append(Outcome(folder, "done", record=earlier))
                        continue
                    kwargs["resume"] = folder
                else:
                    kwargs.update(prompt=job["prompt"], out=folder, force=bool(getattr(args, "force", False)))
                    if "replay" in job:
                        replay = job["replay"]
                        kwargs["replay"] = replay
                        kwargs["variants"] = replay.variants
                        if args.seed is None and isinstance(replay.seed, int):
                            kwargs["seed"] = replay.seed
                started = time.perf_counter()
                outcome = await run_one(session, outcomes, **kwargs)
                report_ledger(outcome, reporter)
                if outcome.error:
                    reporter(Notice("", "error", outcome.error))
                else:
                    reporter(Notice("", "info", f"finished in {time.perf_counter() - started:.1f} s: {outcome.folder}"))
        finally:
            await session.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        interrupted = True
    except asyncio.CancelledError:  # SIGTERM or SIGHUP cancelled the run
        interrupted = True
    finally:
        reporter.close()
        if report_stream is not out_stream:
            report_stream.close()

    if interrupted:
        import signal

        folder = next((o.folder for o in reversed(outcomes) if o.folder), None)
        where = f"; completed stages are saved in {folder}" if folder else ""
        resume = f"; resume with: critifusion run --resume {folder}" if folder else ""
        why = f"stopped by {signal.Signals(stopped_by[0]).name}" if stopped_by else "interrupted"
        say(f"critifusion: {why}{where}{resume}", err_stream)
    if args.json:
        summaries = redact_data([o.summary() for o in outcomes])
        print(
            json.dumps(
                summaries if args.prompts else (summaries[0] if summaries else {}), indent=2, ensure_ascii=False
            ),
            file=json_stream,
            flush=True,
        )
    if interrupted:
        return 128 + stopped_by[0] if stopped_by else EXIT_INTERRUPTED
    return EXIT_OK if outcomes and all(o.status == "done" for o in outcomes) else EXIT_FAILED
