"""What one more critique round costs (docs/method.md 10.1): wall time and provider calls.

One process, one loaded tiny-random SDXL on the CPU, the loopback server of the tests
(``tests/loopback.py``) answering the critics and the aggregator after ``L`` seconds each. For
each (L, number of critics) the same run is made with ``loop.rounds = 1`` (the paper) and
``loop.rounds = R`` with no stop rule, and the script reports, from the run folder and the
loopback server's log:

* the wall time of the ``rounds`` stage and of each round (critique of the image before it +
  img2img + fusion + decode), and the whole run's extra time against rounds = 1;
* the provider requests each extra round makes (critics, and the aggregator when more than
  one critic said something), and the one more critique that scores the last round.

Run (from the repository root)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_rounds.py
    ... --latencies 0 2 --critics 1 2 --rounds 3 --size 64 --steps 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a red fox in a snowy forest at golden hour"


async def one_run(session_settings, engine, server, rounds: int) -> dict:
    from critifusion_tui.config import Settings
    from critifusion_tui.engine.pipeline import Session

    data = session_settings.model_dump()
    data["loop"] = {"rounds": rounds}
    session = Session(Settings.model_validate(data), diffusion=engine)
    before = len(server.requests_to("/v1/chat/completions"))  # the warm-up's are not counted
    started = time.perf_counter()
    run = session.new_run(PROMPT)
    manifest = await run.run_all()
    seconds = time.perf_counter() - started
    await session.aclose()
    requests = server.requests_to("/v1/chat/completions")[before:]
    return {"seconds": seconds, "manifest": manifest, "requests": len(requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--critics", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from critifusion_tui.config import Settings
    from critifusion_tui.engine.diffusion import Diffusion
    from tests.loopback import KEY_VALUE, KEY_VAR, LoopbackServer

    os.environ[KEY_VAR] = KEY_VALUE
    engine = Diffusion("tiny-random", device="cpu").load()  # loaded once, shared by every run
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for latency in args.latencies:
            for critics in args.critics:
                server = LoopbackServer().start()  # its scripts are this configuration's alone
                names = [f"critic{i}" for i in range(critics)]
                for name in (*names, "agg"):
                    server.script(
                        name,
                        text=f"<issues>- {name} sees a small fox</issues><refined>a large red fox, {name}</refined>"
                        "<alignment>50</alignment>",
                        delay=latency,
                    )
                settings = Settings.model_validate(
                    {
                        "providers": {"together": {"api_key_env": KEY_VAR, "base_url": server.url, "max_retries": 0}},
                        "criticore": {
                            "candidates": ["rules"],
                            "aggregator": ["together:agg"],
                            "vlms": [f"together:{n}" for n in names],
                        },
                        "diffusion": {
                            "model": "tiny-random",
                            "device": "cpu",
                            "width": args.size,
                            "height": args.size,
                            "steps": args.steps,
                        },
                        "specfusion": {"total_steps": args.steps, "last_k": max(1, args.steps * 3 // 4)},
                        "output": {"dir": out},
                    }
                )
                asyncio.run(one_run(settings, engine, server, 1))  # warm-up: first-call costs out of the figures
                paper = asyncio.run(one_run(settings, engine, server, 1))
                more = asyncio.run(one_run(settings, engine, server, args.rounds))
                record = more["manifest"]["stages"]["rounds"]
                extra = [r["seconds"] for r in record["rounds"][1:]]
                rows.append(
                    {
                        "latency_s": latency,
                        "critics": critics,
                        "rounds": args.rounds,
                        "run_s_rounds_1": round(paper["seconds"], 2),
                        f"run_s_rounds_{args.rounds}": round(more["seconds"], 2),
                        "extra_run_s_per_round": round((more["seconds"] - paper["seconds"]) / (args.rounds - 1), 2),
                        "round_s_median": round(statistics.median(extra), 2) if extra else None,
                        "rounds_stage_s": record["seconds"],
                        "requests_rounds_1": paper["requests"],
                        f"requests_rounds_{args.rounds}": more["requests"],
                        # R - 1 refinements and R critiques more (each round's image is criticised,
                        # the last one only for its score): requests per critique = these / R.
                        "extra_requests": more["requests"] - paper["requests"],
                        "extra_requests_per_critique": (more["requests"] - paper["requests"]) / args.rounds,
                    }
                )
                server.stop()
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
