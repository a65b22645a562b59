"""The `critifusion` command: the app (default), `run`, `prompt`, `refine`, `eval`, `doctor`.

Import cost is part of the interface: this module imports only the standard library at the
top, so `critifusion --help` and configuration errors answer at once. Each subcommand
imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from critifusion_tui import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SUBCOMMANDS = ("tui", "run", "prompt", "refine", "eval", "doctor")
# The metrics `critifusion eval --metrics` accepts (config.EVAL_METRICS; repeated here so
# that parsing the command line imports no pydantic).
EVAL_METRICS = ("pickscore", "hpsv2", "imagereward", "aesthetic")
# Options that take a value, so a value is never mistaken for the prompt or a subcommand.
VALUE_OPTIONS = ("--config", "-c", "--set", "-s")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="config file (default: $CRITIFUSION_CONFIG, ./config.toml, the user config dir)",
    )
    common.add_argument(
        "-s",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set diffusion.steps=30 (repeatable)",
    )
    common.add_argument(
        "--demo",
        action="store_true",
        help="offline demo: tiny random model (its images are noise) and the rules critic; no GPU, key or server",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="critifusion",
        description=(
            "CritiFusion in the terminal: an LLM ensemble expands and decomposes your prompt, "
            "SDXL draws a base image, a vision-language model criticises it, and SpecFusion "
            "refines it. With no command, opens the app (PROMPT pre-filled if given)."
        ),
        epilog=(
            "Every command takes --config PATH and --set SECTION.KEY=VALUE (see "
            "'critifusion COMMAND --help'). Run 'critifusion doctor' to check your setup."
        ),
    )
    parser.add_argument("--version", action="version", version=f"critifusion-tui {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tui = sub.add_parser("tui", parents=[common], help="open the app (the default)")
    tui.add_argument("prompt", nargs="?", default="", help="prompt to start with")
    tui.add_argument(
        "--images",
        choices=("auto", "kitty", "sixel", "halfblock", "none"),
        help="inline image protocol (default: tui.images, auto-detected)",
    )
    tui.add_argument(
        "--variants",
        choices=("full", "all"),
        default="full",
        help="full: the method; all: also refine the base made from your own prompt (SPEC 7)",
    )

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the whole method headless",
        description="Run every stage without the app, saving each to a run folder as it completes.",
    )
    run.add_argument("prompt", nargs="?", help="what to draw")
    run.add_argument("--out", metavar="DIR", help="the run folder (with --prompts: the folder of run folders)")
    run.add_argument("--seed", type=int, help="seed of the base image (default: diffusion.seed)")
    run.add_argument(
        "--variants",
        choices=("full", "all"),
        default="full",
        help="full: the method; all: also refine the base made from your own prompt (SPEC 7)",
    )
    run.add_argument("--json", action="store_true", help="print the run folder and a summary as JSON")
    run.add_argument(
        "--prompts",
        metavar="FILE",
        help="a batch: one prompt per line, DrawBench/PartiPrompts CSV/TSV (Prompt column) or HPDv2 JSON list;"
        " finished ones are skipped",
    )
    run.add_argument("--limit", type=int, metavar="N", help="with --prompts: only the first N prompts")
    run.add_argument("--category", metavar="X", help="with --prompts: only the rows of this Category")
    run.add_argument("--resume", metavar="DIR", help="continue a run from its last completed stage")
    run.add_argument(
        "--summary",
        metavar="DIR",
        help="write DIR/batch-summary.json for a --prompts batch folder (done, failed, skipped, images/hour)",
    )
    run.add_argument(
        "--replay",
        metavar="DIR",
        help="run again with the model answers recorded in a past run's folder (no provider is called)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="let --out name a non-empty folder that holds no run (its files may be overwritten)",
    )

    prompt = sub.add_parser(
        "prompt",
        parents=[common],
        help="expand an idea into a prompt (text stages only, no image)",
        description=(
            "Run CritiCore's text stages on IDEA (tags and components, concurrently) and print the positive "
            "prompt alone on standard output (progress and warnings go to standard error). With --critique IMAGE, "
            "the vision models criticise that image and the refinement prompt is printed instead. No diffusion model "
            "is loaded and no run folder is written."
        ),
    )
    prompt.add_argument("idea", nargs="?", default="", help="what to draw, in your words")
    prompt.add_argument(
        "--json",
        action="store_true",
        help="print positive, negative, components, every model's answer and the critique as JSON",
    )
    prompt.add_argument(
        "--critique",
        metavar="IMAGE",
        help="also criticise this image file against the idea and merge the critique into a refinement prompt",
    )

    refine = sub.add_parser(
        "refine",
        parents=[common],
        help="refine an existing image (or a past run's base) with SpecFusion",
        description=(
            "SpecFusion on an image you have: it is scaled to cover the model's size (diffusion.width/height, or the "
            "model's native size), centre-cropped to it, VAE-encoded and refined toward --prompt. With --from RUN_DIR, "
            "a past run's base latent is refined instead (its prompt and seed unless given). With --critique, the "
            "vision models criticise the image first and their critique shapes the refinement prompt. Writes a normal "
            "run folder: resume, history and eval work on it."
        ),
    )
    refine.add_argument("image", nargs="?", metavar="IMAGE", help="the image file to refine (PNG, JPEG, WebP ...)")
    refine.add_argument("--prompt", "-p", metavar="TEXT", help="what the image should show (needed with IMAGE)")
    refine.add_argument("--from", dest="from_run", metavar="RUN_DIR", help="refine the base of this past run instead")
    refine.add_argument("--critique", action="store_true", help="criticise the image first (stages 2, 4 and 5)")
    refine.add_argument("--out", metavar="DIR", help="the run folder (default: a new folder under output.dir)")
    refine.add_argument(
        "--seed", type=int, help="the run's seed (default: diffusion.seed; with --from, the past run's)"
    )
    refine.add_argument("--json", action="store_true", help="print the run folder and a summary as JSON")
    refine.add_argument(
        "--force",
        action="store_true",
        help="let --out name a non-empty folder that holds no run (its files may be overwritten)",
    )

    ev = sub.add_parser(
        "eval",
        parents=[common],
        help="score run folders with PickScore, HPSv2, ImageReward, Aesthetic",
        description=(
            "Score every image variant of the run folders at or under the given paths against the run's own "
            "prompt, record the scores in each manifest (images already scored with the same weights are "
            "skipped), and print per variant the mean with a 95%% bootstrap interval and the paired "
            "difference against base_original. Weights come from the local Hugging Face cache or paths in [eval]."
        ),
    )
    ev.add_argument(
        "paths", nargs="+", metavar="RUN_DIR_OR_PARENT", help="a run folder, or a folder holding run folders"
    )
    ev.add_argument(
        "--metrics",
        metavar="LIST",
        help=f"comma-separated, from {','.join(EVAL_METRICS)} (default: eval.metrics)",
    )
    ev.add_argument("--json", action="store_true", help="print the runs' scores and the summary as JSON")
    ev.add_argument("--csv", metavar="FILE", help="also write one row per run, variant and metric")
    ev.add_argument("--plot", metavar="FILE.png", help="also draw the means and intervals (needs matplotlib)")

    doctor = sub.add_parser("doctor", parents=[common], help="check Python, GPU, config, keys, model, terminal")
    doctor.add_argument("--offline", action="store_true", help="skip checks that need the network")
    return parser


def _with_default_command(argv: list[str]) -> list[str]:
    """Put the subcommand first, `tui` when none is named (`critifusion "a fox"` opens the app).

    The subcommand's parser then reads every option, wherever the user typed it:
    `critifusion --set diffusion.steps=4 run "a fox"` works like `critifusion run --set ...`.
    """
    skip = False
    for position, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token in VALUE_OPTIONS:
            skip = True
            continue
        if token.startswith("-"):
            if token in ("-h", "--help", "--version") and position == 0:
                return argv
            continue
        if token in SUBCOMMANDS:
            return [token, *argv[:position], *argv[position + 1 :]]
        break
    return ["tui", *argv]


def _overrides(args: argparse.Namespace) -> list[str]:
    """The --set items in force: --demo's offline settings first, so the user's still win."""
    if not args.demo:
        return args.overrides
    from critifusion_tui.config import DEMO_OVERRIDES

    return [*DEMO_OVERRIDES, *args.overrides]


def _load(args: argparse.Namespace):
    """Load the configuration, or print why not; None means exit 2."""
    from critifusion_tui.config import ConfigError, load_config

    try:
        return load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"critifusion: configuration error\n{exc}", file=sys.stderr)
        return None


def cmd_tui(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    # Checked before the app module is imported: textual-image asks the terminal about its
    # graphics at import, which fails without a terminal on standard input.
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "critifusion: the app needs a terminal; use 'critifusion run PROMPT' for headless runs",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # Which image protocol the terminal really draws, asked before Textual reads the terminal.
    from critifusion_tui.graphics import MODE_NAMES, decide, probe_terminal

    requested = args.images or loaded.settings.tui.images
    graphics = decide(requested, probe_terminal())
    refused = ""
    if graphics.refused:
        if args.images:  # typed for this terminal: say no rather than draw something else
            print(
                f"critifusion: --images {args.images}: {graphics.refused}.\n"
                "  Use --images auto (what this terminal draws; 'critifusion doctor' says which) or --images halfblock.",
                file=sys.stderr,
            )
            return EXIT_USAGE
        # tui.images holds for every terminal the config is used from: fall back, and say so.
        refused = f"tui.images = {requested}: {graphics.refused}; previews use half-blocks"
    from critifusion_tui.tui.app import run_app
    from critifusion_tui.tui.widgets.image_view import set_graphics_note

    if refused:
        set_graphics_note(f"{MODE_NAMES[requested]} not drawn here: half-blocks")
    code = run_app(loaded, prompt=args.prompt, image_mode=graphics.mode, variants=getattr(args, "variants", "full"))
    if refused:
        print(f"critifusion: {refused}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    if args.summary:
        if args.prompt or args.prompts or args.resume or args.replay:
            print("critifusion run: --summary DIR takes no PROMPT, --prompts, --resume or --replay", file=sys.stderr)
            return EXIT_USAGE
        from critifusion_tui.batch.summary import summary_command

        return summary_command(args.summary)
    given = [name for name in ("prompt", "prompts", "resume", "replay") if getattr(args, name)]
    if len(given) != 1:
        print(
            "critifusion run: give exactly one of PROMPT, --prompts FILE, --resume DIR or --replay DIR",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if (args.limit is not None or args.category is not None) and not args.prompts:
        print("critifusion run: --limit and --category go with --prompts FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.limit is not None and args.limit < 1:
        print("critifusion run: --limit must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.prompt is not None and not args.prompt.strip():
        print("critifusion run: the prompt is empty (only white space)", file=sys.stderr)
        return EXIT_USAGE
    if args.seed is not None and not 0 <= args.seed < 2**63:
        print(
            "critifusion run: --seed must be 0 or more"
            if args.seed < 0
            else "critifusion run: --seed must be below 2**63 (9223372036854775808)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    from critifusion_tui.headless import run_command

    return run_command(args, loaded, _overrides(args))


def _seed_problem(command: str, seed: int | None) -> str | None:
    if seed is None or 0 <= seed < 2**63:
        return None
    if seed < 0:
        return f"critifusion {command}: --seed must be 0 or more"
    return f"critifusion {command}: --seed must be below 2**63 (9223372036854775808)"


def cmd_prompt(args: argparse.Namespace) -> int:
    if not args.idea.strip():
        print('critifusion prompt: give the idea to expand, e.g. critifusion prompt "a red fox"', file=sys.stderr)
        return EXIT_USAGE
    if args.critique is not None and not args.critique.strip():
        print("critifusion prompt: --critique needs an image file", file=sys.stderr)
        return EXIT_USAGE
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    from critifusion_tui.prompt_command import prompt_command

    return prompt_command(args, loaded)


def cmd_refine(args: argparse.Namespace) -> int:
    if bool(args.image) == bool(args.from_run):
        print("critifusion refine: give exactly one of IMAGE or --from RUN_DIR", file=sys.stderr)
        return EXIT_USAGE
    if args.prompt is not None and not args.prompt.strip():
        print("critifusion refine: the prompt is empty (only white space)", file=sys.stderr)
        return EXIT_USAGE
    if args.image and args.prompt is None:
        print("critifusion refine: IMAGE needs --prompt TEXT (what the image should show)", file=sys.stderr)
        return EXIT_USAGE
    problem = _seed_problem("refine", args.seed)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    from critifusion_tui.refine_command import refine_command

    return refine_command(args, loaded, _overrides(args))


def cmd_eval(args: argparse.Namespace) -> int:
    if args.metrics is not None:
        names = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in names if m not in EVAL_METRICS]
        if unknown or not names:
            print(
                f"critifusion eval: unknown metric {', '.join(unknown) or '(none given)'}; known: {', '.join(EVAL_METRICS)}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        args.metrics = list(dict.fromkeys(names))
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    from critifusion_tui.eval.command import run_eval

    return run_eval(args, loaded)


def cmd_doctor(args: argparse.Namespace) -> int:
    from critifusion_tui.doctor import run_doctor

    return run_doctor(args.config, _overrides(args), offline=args.offline)


COMMANDS = {
    "tui": cmd_tui,
    "run": cmd_run,
    "prompt": cmd_prompt,
    "refine": cmd_refine,
    "eval": cmd_eval,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_with_default_command(list(sys.argv[1:] if argv is None else argv)))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("critifusion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
