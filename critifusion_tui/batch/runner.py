"""`critifusion run --prompts FILE`: a batch, in one process or in each process of a launch.

Every process runs the same loop: take the first prompt that is not finished and not claimed
by a live process, claim it (:mod:`.claims`), run it (resuming its folder where an earlier
launch stopped), release the claim, look again. Shares therefore balance themselves when
prompts take different times, no prompt is run by two processes at once, and a relaunch after
a crash goes on where each prompt stopped. A prompt that failed in this launch is not tried
again in it (by any process); one that failed in an earlier launch is resumed.

When nothing is left to take, ranks other than 0 leave; rank 0 waits while other processes
still hold claims (taking over any whose holder dies), then writes the batch summary
(:mod:`.summary`). Each process stamps the manifests of the runs it works on with its rank,
host and launch (``ran_by``), and leaves a report of its own for the summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from critifusion_tui.engine.events import Notice
from critifusion_tui.headless import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Outcome,
    batch_folder,
    read_prompts,
    run_one,
)

POLL_S = 2.0  # rank 0's look at the other processes' claims while it waits for them
REPORT_GRACE_S = 30.0  # how long rank 0 waits for a finished rank's report to appear


@dataclass(frozen=True)
class Job:
    prompt: str
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


def _prompt_text(item: Any) -> str:
    # read_prompts gives strings today; a richer prompt file may give records with a prompt.
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return str(item["prompt"])
    return str(getattr(item, "prompt", item))


def run_batch(args, settings, overrides=()) -> int:
    from critifusion_tui.batch import ranks
    from critifusion_tui.batch.progress import make_batch_reporter
    from critifusion_tui.batch.summary import manifest_of

    from critifusion_tui.prompt_sets import PromptFileError

    try:
        read = read_prompts(Path(args.prompts), getattr(args, "limit", None), getattr(args, "category", None))
        prompts = [_prompt_text(p) for p in read]
    except PromptFileError as exc:
        print(f"critifusion: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"critifusion: cannot read {args.prompts}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if not prompts:
        print(
            f"critifusion: {args.prompts} holds no prompts (blank lines and lines starting with # are skipped)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    out = Path(args.out) if args.out else settings.output.path()
    jobs = [Job(prompt, batch_folder(out, index, prompt)) for index, prompt in enumerate(prompts, start=1)]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"critifusion: cannot create {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        place = ranks.detect()
    except Exception as exc:  # the launcher's rendezvous, a broken accelerate install
        print(f"critifusion: cannot join the launch ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_FAILED
    device, device_warning = ranks.device_for(settings.diffusion.device, place)
    settings.diffusion.device = device

    from critifusion_tui.engine.load_output import own_descriptor

    stream = sys.stderr if args.json else sys.stdout
    # A model loading in the background captures fds 1 and 2: the lines use their own copy.
    report_stream = own_descriptor(stream)
    reporter = make_batch_reporter(report_stream, rank=place.rank, world_size=place.world_size, total=len(jobs))
    if device_warning:
        reporter(Notice("", "warning", device_warning))
    if place.world_size > 1:
        reporter(Notice("", "info", f"{place.label()} on {place.host}, device {device}, launch {place.launch}"))
    outcomes: list[Outcome] = []
    started = time.time()
    interrupted = False
    providers: dict[str, Any] = {}

    async def main() -> None:
        from critifusion_tui.batch.claims import ClaimBoard, Owner
        from critifusion_tui.engine.pipeline import Session

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        # A launcher stops the other processes with SIGTERM when one fails: stop like Ctrl+C,
        # so the run in progress is marked cancelled and its claim released.
        with suppress(NotImplementedError, RuntimeError):
            if task is not None:
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
        session = Session(settings, overrides=overrides)
        if session.diffusion.is_tiny_random and place.main:
            reporter(Notice("", "warning", "diffusion.model is tiny-random: the images are noise"))
        board = ClaimBoard(out, rank=place.rank, launch=place.launch).start()
        settled: set[str] = set()  # finished, failed in this launch, or run by us
        counted = 0

        def finished_somewhere() -> int:
            nonlocal counted
            # Only rank 0's bar needs the others' progress; a done manifest stays done.
            for job in jobs:
                if job.name not in settled:
                    record = manifest_of(job.folder)
                    if record is not None and (
                        record.status == "done" or (record.status == "failed" and record.last_launch == place.launch)
                    ):
                        settled.add(job.name)
            counted = len(settled)
            return counted

        def stamp(run, took_over: Owner | None) -> None:
            entry = {
                "rank": place.rank,
                "world_size": place.world_size,
                "host": place.host,
                "pid": os.getpid(),
                "device": device,
                "launch": place.launch,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if took_over is not None:
                entry["took_over_from"] = {"rank": took_over.rank, "host": took_over.host, "pid": took_over.pid}
            run.store.manifest.setdefault("ran_by", []).append(entry)
            run.store.write_manifest()

        async def run_job(job: Job, claim) -> None:
            from critifusion_tui.engine.manifest import holds_manifest

            if claim.took_over is not None:
                reporter(Notice("", "warning", f"took over {job.name} from {claim.took_over.describe()}: it is gone"))
            kwargs: dict[str, Any] = {"seed": args.seed, "variants": args.variants, "emit": reporter}
            if holds_manifest(job.folder):
                kwargs["resume"] = job.folder
            else:
                kwargs.update(prompt=job.prompt, out=job.folder)
            began = time.perf_counter()
            outcome = await run_one(session, outcomes, on_start=lambda run: stamp(run, claim.took_over), **kwargs)
            if outcome.error:
                reporter(Notice("", "error", outcome.error))
            else:
                reporter(Notice("", "info", f"finished in {time.perf_counter() - began:.1f} s: {outcome.folder}"))

        def skip_or_settle(job: Job) -> bool:
            """True when `job` needs no work from anyone now."""
            record = manifest_of(job.folder)
            if record is None:
                return False
            if record.status == "done":
                if record.last_launch != place.launch:
                    if place.main:
                        reporter(Notice("", "info", f"skipping {job.prompt!r}: already done in {job.folder}"))
                    outcomes.append(Outcome(job.folder, "done", record=record))
                return True
            return record.status == "failed" and record.last_launch == place.launch

        async def next_job() -> tuple[Job, Any] | None:
            for job in jobs:
                if job.name in settled:
                    continue
                if skip_or_settle(job):
                    settled.add(job.name)
                    continue
                claim = board.take(job.name)
                if isinstance(claim, Owner):
                    continue  # a live process works on it
                if skip_or_settle(job):  # finished between our look and our claim
                    board.release(claim)
                    settled.add(job.name)
                    continue
                return job, claim
            return None

        try:
            while True:
                found = await next_job()
                if found is not None:
                    job, claim = found
                    try:
                        await run_job(job, claim)
                    finally:
                        board.release(claim)
                    settled.add(job.name)
                    reporter.batch_progress(finished_somewhere() if place.main else len(settled), len(jobs))
                    continue
                if not place.main:
                    break
                pending = [job.name for job in jobs if job.name not in settled]
                if not board.held_by_others(pending):
                    break
                reporter.batch_progress(finished_somewhere(), len(jobs))
                await asyncio.sleep(POLL_S)
        finally:
            board.close()
            providers.update(session.router.limits.snapshot())
            await session.aclose()

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    finally:
        reporter.close()
        if report_stream is not stream:
            report_stream.close()

    summary = _finish(out, place, device, jobs, outcomes, started, providers, interrupted, stream)
    with suppress(Exception):
        ranks.finish()

    if interrupted:
        folder = next((o.folder for o in reversed(outcomes) if o.folder and o.status != "done"), None)
        where = f"; completed stages are saved in {folder}" if folder else ""
        print(f"critifusion: interrupted{where}; run the same command again to go on", file=sys.stderr)
    if args.json:
        print(json.dumps([o.summary() for o in outcomes], indent=2, ensure_ascii=False))
    if interrupted:
        return EXIT_INTERRUPTED
    mine_ok = all(o.status == "done" for o in outcomes)  # a rank that got no prompt did fine
    batch_ok = summary is None or summary["done"] == summary["prompts"]
    return EXIT_OK if jobs and mine_ok and batch_ok else EXIT_FAILED


def _finish(out, place, device, jobs, outcomes, started, providers, interrupted, stream) -> dict[str, Any] | None:
    """This process's report; on rank 0 (unless interrupted) the batch summary too."""
    from critifusion_tui.batch.summary import read_reports, render, summarize, write_report, write_summary

    ran = [
        o for o in outcomes if o.folder is not None and o.record is not None and o.record.last_launch == place.launch
    ]
    report = {
        "rank": place.rank,
        "world_size": place.world_size,
        "host": place.host,
        "device": device,
        "launch": place.launch,
        "started": started,
        "ended": time.time(),
        "interrupted": interrupted,
        "ran": len(ran),
        "done": sum(o.status == "done" for o in ran),
        "failed": sum(o.status == "failed" for o in ran),
        "providers": providers,
    }
    if place.main:
        report["jobs"] = [[job.name, job.prompt] for job in jobs]
    try:
        write_report(out, place.launch, place.rank, report)
    except OSError as exc:
        print(f"critifusion: cannot write the rank report in {out}: {exc.strerror or exc}", file=sys.stderr)
    if not place.main or interrupted:
        return None
    deadline = time.monotonic() + REPORT_GRACE_S
    while len(read_reports(out, place.launch)) < place.world_size and time.monotonic() < deadline:
        time.sleep(0.2)  # the others finished their last prompt and are writing their reports
    summary = summarize(out, [(job.name, job.prompt) for job in jobs], place.launch)
    try:
        path = write_summary(out, summary)
    except OSError as exc:
        print(f"critifusion: cannot write the batch summary in {out}: {exc.strerror or exc}", file=sys.stderr)
        return summary
    for line in render(summary):
        print(line, file=stream)
    print(f"summary: {path}", file=stream)
    return summary
