"""`critifusion refine`: SpecFusion on an image that no run drew, or on a past run's base.

``critifusion refine IMAGE --prompt "..."`` fits the image to the model's size (scaled to
cover it, centre-cropped: ``engine/image_input.py``; docs/method.md section 3, "A given
base"), VAE-encodes it to the base latent and refines it; ``critifusion refine --from RUN_DIR`` takes a past run's
base latent and image instead (its prompt and seed unless given). With ``--critique`` the VLMs
first criticise the base against the prompt's components (stages 2, 4 and 5); without it the
refinement prompt is the prompt merged with nothing, as a skipped critique does.

It writes a normal run folder (``engine/given_base.py``), so ``critifusion run --resume``,
the app's history and ``critifusion eval`` work on it. Progress is printed like
``critifusion run``'s (to standard error with ``--json``, whose summary goes to standard output).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def refine_command(args, loaded, overrides=()) -> int:
    """The body of `critifusion refine` once the arguments are checked and the configuration loaded."""
    from critifusion_tui.engine.given_base import GIVEN_KEY, open_past_run
    from critifusion_tui.engine.image_input import ImageInputError, read_image
    from critifusion_tui.engine.store import StoreError, check_out_folder
    from critifusion_tui.headless import Outcome, make_reporter, report_ledger, say
    from critifusion_tui.redact import configure as remember_secrets
    from critifusion_tui.redact import redact_data

    settings = loaded.settings
    remember_secrets(settings)
    # Every input is checked before anything loads: a bad one is a usage error (exit 2).
    image = past = None
    try:
        if args.image:
            image = read_image(args.image)
        else:
            past = open_past_run(Path(args.from_run))
        if args.out:
            check_out_folder(Path(args.out), force=args.force)
    except (ImageInputError, StoreError) as exc:
        say(f"critifusion refine: {exc}")
        return EXIT_USAGE
    prompt = (args.prompt or "").strip() or (past.manifest["prompt"] if past is not None else "")

    from critifusion_tui.engine.load_output import own_descriptor

    # The model loads in the background (its capture points fds 1 and 2 at a file): what this
    # command prints goes through copies of the descriptors, as `critifusion run` does.
    out, err = own_descriptor(sys.stdout), own_descriptor(sys.stderr)
    reporter = make_reporter(err if args.json else out)
    outcome = Outcome()
    written: dict[str, Any] = {}  # the manifest as the run last wrote it (for --json)

    async def main() -> None:
        from critifusion_tui.engine.events import Notice
        from critifusion_tui.engine.given_base import start_refine_run
        from critifusion_tui.engine.pipeline import RunFailed, Session

        session = Session(settings, overrides=overrides)
        if session.diffusion.is_tiny_random:
            reporter(Notice("", "warning", "diffusion.model is tiny-random: the images are noise"))
        started = time.perf_counter()
        try:
            try:
                run = start_refine_run(
                    session,
                    prompt,
                    image=image,
                    past=past,
                    seed=args.seed,
                    out=Path(args.out) if args.out else None,
                    critique=args.critique,
                    force=args.force,
                    emit=reporter,
                )
            except (StoreError, ValueError) as exc:
                outcome.error = str(exc)
                return
            except OSError as exc:
                outcome.error = f"cannot create the run folder: {exc.strerror or exc}"
                return
            outcome.folder = run.folder
            reporter(Notice("", "info", f"run folder {run.folder}"))
            try:
                await run.run_all()
                outcome.status = "done"
            except RunFailed as exc:
                outcome.error = str(exc)
            except asyncio.CancelledError:
                outcome.status = "cancelled"
                raise
            finally:
                outcome.record = run.store.record
                written.update(run.store.manifest)
        finally:
            await session.aclose()
        report_ledger(outcome, reporter)
        if outcome.error is None:
            reporter(Notice("", "info", f"finished in {time.perf_counter() - started:.1f} s: {outcome.folder}"))

    interrupted = False
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    finally:
        reporter.close()
    if outcome.error:
        say(f"critifusion refine: {outcome.error}", err)
    if interrupted:
        where = (
            f"; completed stages are saved in {outcome.folder}; resume with: critifusion run --resume {outcome.folder}"
            if outcome.folder
            else ""
        )
        say(f"critifusion refine: interrupted{where}", err)
    if args.json:
        summary = outcome.summary()
        given = {k: v for k, v in (written.get(GIVEN_KEY) or {}).items() if k != "record"}
        base = (written.get("stages") or {}).get("base") or {}
        summary.update(given=given, fit=base.get("fit"))
        print(json.dumps(redact_data(summary), indent=2, ensure_ascii=False), file=out, flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome.status == "done" else EXIT_FAILED
