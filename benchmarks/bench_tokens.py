"""How fast the CLIP token counter is: first call (loads the merges file) and steady state.

The app counts on every keystroke, so a steady-state count must stay far under a frame.
Run: python benchmarks/bench_tokens.py
"""

from __future__ import annotations

import statistics
import time

PROMPT = (
    "a majestic lion on a rocky cliff at sunset, golden hour lighting, dramatic clouds, "
    "rule of thirds, vibrant colors, balanced contrast, highly detailed fur, sharp focus, "
    "8k, UHD, cinematic composition, matte painting, photorealistic, natural color palette"
)


def main() -> None:
    start = time.perf_counter()
    from critifusion_tui.engine import tokens

    imported = time.perf_counter() - start
    start = time.perf_counter()
    n = tokens.count_tokens(PROMPT)
    first = time.perf_counter() - start
    samples = []
    for i in range(2000):
        text = f"{PROMPT}, variant{i % 50}"  # a new word now and then, as when typing
        start = time.perf_counter()
        tokens.count_tokens(text)
        samples.append(time.perf_counter() - start)
    start = time.perf_counter()
    tokens.clip77_strict(PROMPT * 2)
    cut = time.perf_counter() - start
    print(f"prompt: {n} CLIP tokens")
    print(f"import tokens:        {imported * 1e3:8.2f} ms")
    print(f"first count (loads):  {first * 1e3:8.2f} ms")
    print(
        f"steady count, median: {statistics.median(samples) * 1e6:8.1f} us  (p99 {sorted(samples)[int(len(samples) * 0.99)] * 1e6:.1f} us)"
    )
    print(f"clip77_strict, 2x:    {cut * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
