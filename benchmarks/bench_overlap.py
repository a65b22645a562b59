"""How much of the model load and the comparison branch hides behind the provider latency.

What it measures
----------------
One run of the method in a fresh Python process (so importing torch and diffusers is paid
again, as a person's first run pays it), against the loopback server of the tests
(``tests/loopback.py``) in this process, where every chat request waits ``L`` seconds before
its answer starts. The run uses the real Together client, three candidates and an aggregator
(two round trips for each text stage; both stages' answers parse, so both aggregate), one
vision model, and the tiny random SDXL at 64 px with 4 steps on the CPU.

From the run's own events, stamped on arrival:

* ``gap``: from the end of the text stages (the later of tags and components) to the first
  vision request of the full method (the critique's first ``CandidateStarted``). Before the
  overlap the model was imported and loaded only when the base stage started, so the gap was
  the load plus the draw; with it, the load runs beside the text stages and the gap is the
  draw. Target: ``gap(L=4) <= 0.5 * gap(L=0)``;
* with ``--variants all``: when the comparison base's critique request leaves, against the
  end of the tags aggregation (its last answer) and against the end of the full method's base.

Two modes, each in its own process: ``overlap`` (``Run.run_all`` as it is) and ``sequential``
(the flow before the overlap: no preload, one step after another, what ``run_all`` did).

Run (from the repository root)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_overlap.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_overlap.py --quick      # L in {0, 1}
    ... --latencies 0 4 --repeats 2 --modes overlap sequential --variants full all --threads 1
    ... --json results.json     (also written to $OUT/bench_overlap.json when $OUT is set)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.loopback and the package, from the repository root

PROMPT = "a red fox in a snowy forest at golden hour"
CANDIDATES = ["together:model-a", "together:model-b", "together:model-c"]
AGGREGATOR = "together:agg"
VLM = "together:vlm"
# One text per model serves every stage it takes part in: tags (any text), components (JSON
# somewhere in it), critique (<issues> and <refined>), so every answer parses everywhere.
CANDIDATE_TEXT = (
    "red fox, snowy forest, golden hour, rim lighting, soft shadows, warm palette, high detailed, "
    'sharp focus, 8k, UHD {"components": ["a red fox", "snow on the ground", "pine trees", "low golden sun"]}'
)
AGG_TEXT = (
    "red fox, snowy forest, golden hour, rim lighting, warm palette, high detailed, sharp focus, 8k, UHD\n"
    '{"components": ["a red fox", "snow on the ground", "pine trees", "low golden sun"]}'
)
VLM_TEXT = (
    "<issues>- the fox is small in the frame; move closer\n- no golden light; add a low sun</issues>\n"
    "<refined>a red fox in deep snow among pine trees at golden hour</refined>"
)


# ---------------------------------------------------------------- the run (child process)


def child(config: dict) -> dict:
    """One run; returns its events' times (seconds from the run's start) and what they say."""
    import asyncio

    from critifusion_tui.config import Settings
    from critifusion_tui.engine.events import (
        CandidateFinished,
        CandidateStarted,
        ModelLoading,
        StageFinished,
        StageStarted,
    )
    from critifusion_tui.engine.flow import Phase
    from critifusion_tui.engine.pipeline import Run, Session
    from tests.loopback import KEY_VALUE, KEY_VAR

    os.environ[KEY_VAR] = KEY_VALUE  # the tests' own fake key variable
    settings = Settings.model_validate(
        {
            "providers": {
                "together": {"api_key_env": KEY_VAR, "base_url": config["url"], "timeout_s": 120.0, "max_retries": 0}
            },
            "criticore": {"candidates": CANDIDATES, "aggregator": [AGGREGATOR], "vlms": [VLM]},
            "diffusion": {"model": "tiny-random", "device": "cpu", "width": 64, "height": 64, "steps": 4},
            "specfusion": {"total_steps": 4, "last_k": 3},
            "output": {"dir": config["out"]},
        }
    )
    if config["mode"] == "sequential":
        Run.preload = lambda self: None  # the flow before the overlap: the base stage loads

    stamped: list[tuple[float, object]] = []

    async def main() -> None:
        session = Session(settings)
        run = session.new_run(
            PROMPT, variants=config["variants"], emit=lambda e: stamped.append((time.perf_counter(), e))
        )
        try:
            if config["mode"] == "sequential":
                run._unattended = True
                while run.phase is not Phase.DONE:  # what run_all did: one step after another
                    await run.advance()
            else:
                await run.run_all()
        finally:
            await session.aclose()

    began = time.perf_counter()
    asyncio.run(main())

    def first(kind, stage: str, role: str | None = None) -> float | None:
        return next(
            (
                t - began
                for t, e in stamped
                if isinstance(e, kind) and e.stage == stage and (role is None or getattr(e, "role", None) == role)
            ),
            None,
        )

    def last(kind, stage: str, role: str | None = None) -> float | None:
        found = [
            t - began
            for t, e in stamped
            if isinstance(e, kind) and e.stage == stage and (role is None or getattr(e, "role", None) == role)
        ]
        return found[-1] if found else None

    text_end = max(first(StageFinished, "tags"), first(StageFinished, "components"))
    return {
        "text_end": text_end,
        "first_vision": first(CandidateStarted, "critique", "vlm"),
        "tags_aggregation_end": last(CandidateFinished, "tags", "aggregator"),
        "base_started": first(StageStarted, "base"),
        "base_finished": first(StageFinished, "base"),
        "comparison_base_finished": first(StageFinished, "base_original"),
        "comparison_vision": first(CandidateStarted, "critique_original", "vlm"),
        "waited_for_load": any(isinstance(e, ModelLoading) for _, e in stamped),
        "total": max(t for t, _ in stamped) - began,
    }


# ---------------------------------------------------------------- the driver


def trial(url: str, latency: float, mode: str, variants: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as out:
        config = {"url": url, "mode": mode, "variants": variants, "threads": threads, "out": out}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        if threads:  # set before torch starts (torch is imported by the run itself, not here)
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the run failed (L={latency}, {mode}, {variants}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    result["gap"] = result["first_vision"] - result["text_end"]
    if result["comparison_vision"] is not None:
        result["comparison_vision_minus_tags_aggregation_end"] = (
            result["comparison_vision"] - result["tags_aggregation_end"]
        )
        result["comparison_vision_minus_base_finished"] = result["comparison_vision"] - result["base_finished"]
    return result


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--latencies",
        type=float,
        nargs="+",
        default=[0.0, 4.0],
        help="seconds each request waits before its answer starts",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (each in a fresh process)")
    parser.add_argument("--modes", nargs="+", choices=("overlap", "sequential"), default=["overlap", "sequential"])
    parser.add_argument("--variants", nargs="+", choices=("full", "all"), default=["full", "all"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the run (0: torch's default)")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: L in {0, 1}, 1 repeat, overlap only")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.quick:
        args.latencies, args.repeats, args.modes = [0.0, 1.0], 1, ["overlap"]

    from tests.loopback import LoopbackServer

    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "threads": args.threads,
    }
    print("machine:", json.dumps(info))
    print(f"{len(CANDIDATES)} candidates + aggregator, 1 VLM; tiny-random SDXL, 64 px, 4 steps, CPU")
    rows = []
    with LoopbackServer() as server:
        for latency in args.latencies:
            with server._lock:
                server._scripts.clear()
            for ref in CANDIDATES:
                server.script(ref.partition(":")[2], text=CANDIDATE_TEXT, delay=latency)
            server.script(AGGREGATOR.partition(":")[2], text=AGG_TEXT, delay=latency)
            server.script(VLM.partition(":")[2], text=VLM_TEXT, delay=latency)
            for variants in args.variants:
                for mode in args.modes:
                    runs = [trial(server.url, latency, mode, variants, args.threads) for _ in range(args.repeats)]
                    row = {
                        "latency_s": latency,
                        "mode": mode,
                        "variants": variants,
                        "runs": runs,
                        **{
                            key: median(runs, key)
                            for key in (
                                "gap",
                                "text_end",
                                "total",
                                "comparison_vision_minus_tags_aggregation_end",
                                "comparison_vision_minus_base_finished",
                            )
                        },
                    }
                    rows.append(row)
                    print_row(row)
    targets = check_targets(rows)
    for line in targets["lines"]:
        print(line)
    results = {
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        "rows": rows,
        "targets": targets,
    }
    text = json.dumps(results, indent=2)
    outputs = [Path(args.json)] if args.json else []
    if os.environ.get("OUT"):
        outputs.append(Path(os.environ["OUT"]) / "bench_overlap.json")
    for target in outputs:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {target}")
    return 0


def print_row(row: dict) -> None:
    line = (
        f"L={row['latency_s']:4.1f}s {row['mode']:10s} variants {row['variants']:4s}  "
        f"text stages end {row['text_end']:6.2f}s  gap to the first vision request {row['gap']:6.2f}s  "
        f"run {row['total']:6.2f}s  (waited for the load: {[r['waited_for_load'] for r in row['runs']]})"
    )
    if row["comparison_vision_minus_tags_aggregation_end"] is not None:
        line += (
            f"\n      comparison critique request - tags aggregation end "
            f"{row['comparison_vision_minus_tags_aggregation_end']:+6.2f}s, - full base end "
            f"{row['comparison_vision_minus_base_finished']:+6.2f}s"
        )
    print(line, flush=True)


def check_targets(rows: list[dict]) -> dict:
    """The issue's targets, for the overlap mode at the lowest and the highest latency."""
    lines = []
    found: dict = {}
    overlap = [r for r in rows if r["mode"] == "overlap" and r["variants"] == "full"]
    if len(overlap) >= 2:
        low = min(overlap, key=lambda r: r["latency_s"])
        high = max(overlap, key=lambda r: r["latency_s"])
        ratio = high["gap"] / low["gap"] if low["gap"] > 0 else None
        found["gap_ratio"] = ratio
        lines.append(
            f"target gap(L={high['latency_s']:g}) <= 0.5 x gap(L={low['latency_s']:g}): "
            f"{high['gap']:.2f} s / {low['gap']:.2f} s = {ratio:.2f} -> {'met' if ratio <= 0.5 else 'NOT met'}"
        )
    comparison = [r for r in rows if r["mode"] == "overlap" and r["variants"] == "all"]
    if comparison:
        high = max(comparison, key=lambda r: r["latency_s"])
        early = high["comparison_vision_minus_tags_aggregation_end"]
        found["comparison_vision_minus_tags_aggregation_end"] = early
        lines.append(
            f"target: the comparison critique request before the tags aggregation ends (L={high['latency_s']:g}): "
            f"{early:+.2f} s -> {'met' if early < 0 else 'NOT met'} "
            f"(it starts {-high['comparison_vision_minus_base_finished']:.2f} s before the full base ends)"
        )
    found["lines"] = lines
    return found


if __name__ == "__main__":
    raise SystemExit(main())
