"""Wall-time cost of provider latency for the text stages and the critique (CritiCore).

What it measures
----------------
The loopback server of the tests (``tests/loopback.py``, speaking Together's and Ollama's HTTP
APIs) answers every chat request after ``L`` seconds (the time to the first byte; the answer
then streams at once). The real clients (``AsyncTogether``, ``ollama.AsyncClient``) go through
``ProviderRouter`` and ``CritiCore`` exactly as a run does:

* stages 1 and 2 together (``asyncio.gather(core.tags(p), core.components(p))``, as
  ``Run.text_stages``), each: 5 candidates in parallel, then the aggregator;
* stage 4, ``core.critique(png, positive, components)``: the VLMs in parallel (1 or 2, the
  base image attached as a PNG), then the aggregator.

Answers stream in ``--chunk-chars`` pieces (4 characters, about one token per event as real
services send; 0 sends each answer whole), all of them as soon as the delay is over, so the
client's per-delta cost lands on the critical path here (an upper bound). The client's CPU
time per run is reported too.

The dependency graph allows 4 round trips on the critical path (candidates -> aggregator for
stages 1 and 2 concurrently, then VLMs -> aggregator), so the expected wall time is ~4 L plus a
small overhead; the script reports wall - 4 L. The sequential baseline makes the very same
chat calls one after the other through the same clients (5 + 1 + 5 + 1 + VLMs + 1 calls), i.e.
the sum of all calls (~15 L with 2 VLMs), and is also measured.

By default the server runs in a child process, so its threads do not compete with the client's
event loop for the GIL (a real provider is another machine); ``--inproc`` keeps it in this
process. Every request goes over 127.0.0.1; nothing leaves the machine.

Run (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_provider_latency.py
    PYTHONPATH=. python benchmarks/bench_provider_latency.py --quick
    ... --latencies 0 0.25 0.5 1.0 --repeats 3 --seq-repeats 1 --vlms 2 --image-px 1024 --chunk-chars 4
    ... --json results.json     (also written to $OUT/bench_provider_latency.json when $OUT is set)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.loopback and the package, from the repository root

PROMPT = "a red fox in a snowy forest at golden hour"
CANDIDATES = [
    "together:model-a",
    "together:model-b",
    "ollama:model-c",
    "together:model-d",
    "ollama:model-e",
]
AGGREGATOR = "together:agg"
VLMS = ["together:vlm-a", "ollama:vlm-b"]
# One text per model serves every stage that model takes part in: tags (any text), components
# (JSON somewhere in it), critique (<issues> and <refined>), so every check passes everywhere.
CANDIDATE_TEXT = (
    "red fox, snowy forest, golden hour, rim lighting, soft shadows, warm palette, high detailed, "
    'sharp focus, 8k, UHD {"components": ["a red fox", "snow on the ground", "pine trees", "low golden sun"]}'
)
AGG_TEXT = (
    "<issues>- the fox is small in the frame; move closer\n- the sun is missing; add a low sun</issues>\n"
    "<refined>a red fox standing in deep snow among pine trees, low golden sun, warm rim light</refined>\n"
    '{"components": ["a red fox", "snow on the ground", "pine trees", "low golden sun"]}'
)
VLM_TEXT = (
    "<issues>- the fox is small in the frame; move closer\n- no golden light; add a low sun</issues>\n"
    "<refined>a red fox in deep snow among pine trees at golden hour</refined>\n<alignment>62</alignment>"
)

# The child process: a LoopbackServer whose every model answers after the delay it is told.
_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.loopback import LoopbackServer
texts = json.loads(sys.argv[2])
server = LoopbackServer().start()

def script(delay, chunk):
    with server._lock:
        server._scripts.clear()
    for model, text in texts.items():
        pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)] if chunk > 0 else [text]
        server.script(model, text=text, chunks=pieces, delay=delay)

script(0.0, int(sys.argv[3]))
print(server.url, flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if "delay" in command:
        script(float(command["delay"]), int(command["chunk"]))
    if command.get("count"):
        print(json.dumps({"requests": len(server.requests)}), flush=True)
        continue
    print("ok", flush=True)
server.stop()
"""


def model_texts() -> dict[str, str]:
    texts = {ref.partition(":")[2]: CANDIDATE_TEXT for ref in CANDIDATES}
    texts[AGGREGATOR.partition(":")[2]] = AGG_TEXT
    for ref in VLMS:
        texts[ref.partition(":")[2]] = VLM_TEXT
    return texts


def pieces(text: str, chunk: int) -> list[str]:
    """The streamed deltas of one answer: `chunk` characters each (0: the whole answer at once)."""
    return [text[i : i + chunk] for i in range(0, len(text), chunk)] if chunk > 0 else [text]


class ChildServer:
    """The loopback server in a child process, re-scripted over its stdin."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(ROOT), json.dumps(model_texts()), str(chunk)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the loopback server did not start (said {self.url!r})")

    def set_delay(self, delay: float) -> None:
        self.proc.stdin.write(json.dumps({"delay": delay, "chunk": self.chunk}) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def requests(self) -> int:
        self.proc.stdin.write(json.dumps({"count": True}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["requests"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class InprocServer:
    """The loopback server in this process (its threads share the GIL with the client)."""

    def __init__(self, chunk: int) -> None:
        from tests.loopback import LoopbackServer

        self.chunk = chunk
        self.server = LoopbackServer().start()
        self.url = self.server.url
        self.set_delay(0.0)

    def set_delay(self, delay: float) -> None:
        with self.server._lock:
            self.server._scripts.clear()
        for model, text in model_texts().items():
            self.server.script(model, text=text, chunks=pieces(text, self.chunk), delay=delay)

    def requests(self) -> int:
        return len(self.server.requests)

    def close(self) -> None:
        self.server.stop()


def base_png(side: int) -> bytes:
    """A PNG like a base image: smooth colour with fine noise (~1.5 bytes/pixel at 1024 px)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1)
    rgb = np.stack([200 * x + 30, 120 * y + 60, 160 * (1 - x) * y + 40], axis=-1)
    rgb += rng.normal(0, 6, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_settings(url: str):
    from critifusion_tui.config import (
        OllamaConfig,
        ProvidersConfig,
        Settings,
        TogetherConfig,
    )
    from tests.loopback import KEY_VALUE, KEY_VAR

    os.environ[KEY_VAR] = KEY_VALUE  # a variable of the tests' own naming, a fake key
    return Settings(
        providers=ProvidersConfig(
            together=TogetherConfig(api_key_env=KEY_VAR, base_url=url, timeout_s=60.0, max_retries=0),
            ollama=OllamaConfig(host=url, timeout_s=60.0),
        )
    )


async def parallel_once(core, png: bytes) -> dict[str, float]:
    """What a run does: stages 1 and 2 concurrently, then the critique of the base image."""
    start = time.perf_counter()
    tags, components = await asyncio.gather(core.tags(PROMPT), core.components(PROMPT))
    mid = time.perf_counter()
    critique = await core.critique(png, tags.positive, components.components)
    end = time.perf_counter()
    for result in (tags, components, critique):
        assert result.source == "aggregator", f"a stage fell back ({result.source}): the script is wrong"
    return {"text_stages": mid - start, "critique": end - mid, "total": end - start}


async def sequential_once(core, router, png: bytes) -> dict[str, float]:
    """The same chat calls, one after another, through the same clients (sum of all calls)."""
    from critifusion_tui.engine import criticore as cc
    from critifusion_tui.providers.base import system, user

    async def chat(ref: str, messages, temperature: float, max_tokens: int, image=None) -> str:
        result = await router.model(ref).chat(
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            image=image,
            on_delta=lambda piece: None,
        )
        return result.text

    start = time.perf_counter()
    tag_texts = [
        await chat(m, [system(cc.TAGS_SYSTEM), user(f"Idea: {PROMPT}")], cc.TAGS_TEMPERATURE, cc.TAGS_MAX_TOKENS)
        for m in core.candidates
    ]
    await chat(
        AGGREGATOR,
        [system(cc.TAGS_AGG_SYSTEM), user(cc.DIVIDER.join(tag_texts))],
        cc.TAGS_AGG_TEMPERATURE,
        cc.TAGS_AGG_MAX_TOKENS,
    )
    comp_texts = [
        await chat(m, [system(cc.COMPONENTS_SYSTEM), user(PROMPT)], cc.COMPONENTS_TEMPERATURE, cc.COMPONENTS_MAX_TOKENS)
        for m in core.candidates
    ]
    await chat(
        AGGREGATOR,
        [system(cc.COMPONENTS_AGG_SYSTEM), user(cc.DIVIDER.join(comp_texts))],
        cc.COMPONENTS_AGG_TEMPERATURE,
        cc.COMPONENTS_AGG_MAX_TOKENS,
    )
    mid = time.perf_counter()
    question = cc.CRITIC_USER.format(prompt=PROMPT, components="[]")
    critic_texts = [
        await chat(m, [system(cc.CRITIC_SYSTEM), user(question)], cc.CRITIC_TEMPERATURE, cc.CRITIC_MAX_TOKENS, png)
        for m in core.vlms
    ]
    await chat(
        AGGREGATOR,
        [system(cc.CRITIC_AGG_SYSTEM), user("\n".join(critic_texts))],
        cc.CRITIC_AGG_TEMPERATURE,
        cc.CRITIC_AGG_MAX_TOKENS,
    )
    end = time.perf_counter()
    return {"text_stages": mid - start, "critique": end - mid, "total": end - start}


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


async def bench(args) -> dict:
    from critifusion_tui.engine.criticore import CritiCore
    from critifusion_tui.providers.router import ProviderRouter

    png = base_png(args.image_px)
    server = InprocServer(args.chunk_chars) if args.inproc else ChildServer(args.chunk_chars)
    router = ProviderRouter(make_settings(server.url))
    events: list = []
    vlms = VLMS[: args.vlms]
    core = CritiCore(router, candidates=CANDIDATES, aggregator=[AGGREGATOR], vlms=vlms, emit=events.append)
    calls_parallel = 2 * (len(CANDIDATES) + 1) + len(vlms) + 1
    rows = []
    try:
        server.set_delay(0.0)
        for _ in range(args.warmup):  # imports, clients, connection pools
            await parallel_once(core, png)
            await sequential_once(core, router, png)
        for latency in args.latencies:
            server.set_delay(latency)
            before = server.requests()
            par = []
            cpu = []
            for _ in range(args.repeats):
                events.clear()
                c0 = time.process_time()
                par.append(await parallel_once(core, png))
                cpu.append(time.process_time() - c0)
            sent = (server.requests() - before) / max(args.repeats, 1)
            seq = [await sequential_once(core, router, png) for _ in range(args.seq_repeats)]
            total = [p["total"] for p in par]
            row = {
                "latency_s": latency,
                "parallel_total": stats(total),
                "parallel_text_stages": stats([p["text_stages"] for p in par]),
                "parallel_critique": stats([p["critique"] for p in par]),
                "expected_4L": 4 * latency,
                "overhead_vs_4L": stats([t - 4 * latency for t in total]),
                "client_cpu_per_run": stats(cpu),
                "requests_per_run": sent,
                "events_per_run": len(events),
                "sequential_total": stats([s["total"] for s in seq]) if seq else None,
                "expected_sequential": calls_parallel * latency,
                "speedup_vs_sequential": (statistics.median(s["total"] for s in seq) / statistics.median(total))
                if seq and statistics.median(total) > 0
                else None,
            }
            rows.append(row)
            print_row(row, calls_parallel)
    finally:
        await router.aclose()
        server.close()
    streamed = (
        2 * len(CANDIDATES) * len(pieces(CANDIDATE_TEXT, args.chunk_chars))
        + 3 * len(pieces(AGG_TEXT, args.chunk_chars))
        + len(vlms) * len(pieces(VLM_TEXT, args.chunk_chars))
    )
    return {"calls_per_run": calls_parallel, "png_bytes": len(png), "streamed_deltas_per_run": streamed, "rows": rows}


def print_row(row: dict, calls: int) -> None:
    L = row["latency_s"]
    p = row["parallel_total"]
    o = row["overhead_vs_4L"]
    line = (
        f"L={L:5.2f}s  parallel {p['median']:6.3f}s (min {p['min']:.3f}, max {p['max']:.3f})  "
        f"4L={4 * L:5.2f}  overhead {o['median'] * 1e3:7.1f} ms  "
        f"[1+2 {row['parallel_text_stages']['median']:.3f}s, critique {row['parallel_critique']['median']:.3f}s, "
        f"client CPU {row['client_cpu_per_run']['median'] * 1e3:.0f} ms]"
    )
    if row["sequential_total"]:
        s = row["sequential_total"]
        line += f"  sequential {s['median']:6.3f}s ({calls}L={calls * L:.2f})  x{row['speedup_vs_sequential']:.2f}"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--latencies",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 1.0],
        help="seconds each request waits before its answer starts",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed parallel runs per latency")
    parser.add_argument("--seq-repeats", type=int, default=1, help="timed sequential runs per latency (0: skip)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds at L=0 first")
    parser.add_argument("--vlms", type=int, choices=(1, 2), default=2, help="how many critics")
    parser.add_argument("--image-px", type=int, default=1024, help="side of the PNG sent to the critics")
    parser.add_argument(
        "--chunk-chars",
        type=int,
        default=4,
        help="characters per streamed delta (4 ~ one token per event, as real services "
        "stream; 0: each answer in one delta)",
    )
    parser.add_argument("--inproc", action="store_true", help="run the loopback server in this process")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: L in {0, 0.1}, 1 repeat, 256 px image")
    args = parser.parse_args(argv)
    if args.quick:
        args.latencies, args.repeats, args.seq_repeats, args.image_px = [0.0, 0.1], 1, 1, 256

    import together

    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "together": getattr(together, "__version__", "?"),
        "ollama": _version("ollama"),
        "server": "in-process" if args.inproc else "child process",
    }
    print("machine:", json.dumps(info))
    print(
        f"{len(CANDIDATES)} candidates, aggregator {AGGREGATOR}, {args.vlms} VLM(s); "
        f"critical path 4 round trips; image {args.image_px} px"
    )
    results = {"machine": info, "args": vars(args), **asyncio.run(bench(args))}
    print(
        f"PNG sent to each critic: {results['png_bytes'] / 1e6:.2f} MB; {results['calls_per_run']} calls and "
        f"{results['streamed_deltas_per_run']} streamed deltas "
        f"({f'{args.chunk_chars} chars each' if args.chunk_chars > 0 else 'one per answer'}) per run"
    )
    text = json.dumps(results, indent=2)
    targets = [Path(args.json)] if args.json else []
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / "bench_provider_latency.json")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {target}")
    return 0


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
