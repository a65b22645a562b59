"""Load time and doctor's verdict for every model layout of the test matrix (CPU, tiny models).

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/bench_load_matrix.py

Lays out each case of ``tests/engine/test_model_matrix.py`` (HF cache by hand, folders,
single files, broken ones), then times ``Diffusion.load()`` (the median of 3 fresh loads) and
prints doctor's verdict beside what ``run`` did, as a Markdown table.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"


class _Env:
    """The one monkeypatch method the case builder uses."""

    def setenv(self, name: str, value: str) -> None:
        os.environ[name] = value


def main() -> None:
    from critifusion_tui.config import DiffusionConfig
    from critifusion_tui.engine.diffusion import Diffusion, DiffusionLoadError
    from tests.engine import model_layouts as layouts
    from tests.engine.single_file_layout import build_tiny_sdxl_distinct_widths, save_single_file
    from tests.engine.single_file_layout import to_original_sd15, to_original_sdxl
    from tests.engine.test_model_matrix import MATRIX, _doctor, build_case
    from critifusion_tui.engine.tiny_sdxl import build_tiny_sd15, build_tiny_sdxl

    root = Path(tempfile.mkdtemp(prefix="load-matrix-"))
    os.environ["XDG_CACHE_HOME"] = str(root / "user-cache")
    saved = {k: layouts.save_folder(build_tiny_sdxl(0), root / "saved" / k, k) for k in ("fp32", "fp16", "both")}
    single = {}
    for kind, pipe, convert in (
        ("sdxl", build_tiny_sdxl_distinct_widths(0), to_original_sdxl),
        ("sd", build_tiny_sd15(0), to_original_sd15),
    ):
        pipe.save_pretrained(root / f"{kind}-config")
        state = convert(pipe)
        single[kind] = {
            "config": layouts.configs_only(root / f"{kind}-config", root / f"{kind}-config-only"),
            "safetensors": save_single_file(state, root / f"{kind}.safetensors"),
            "ckpt": save_single_file(state, root / f"{kind}.ckpt"),
        }
    print("| layout | run | load time (median of 3) | doctor |")
    print("|---|---|---|---|")
    for name, expected in MATRIX.items():
        where = root / name.replace(":", "_")
        where.mkdir()
        case = build_case(name, where, _Env(), saved, single)
        cfg = DiffusionConfig(model=case.model, **case.settings)
        failed = [c.detail for c in _doctor(cfg) if c.status == "fail"]
        doctor = "FAIL" if failed else "ok"
        times, outcome = [], "loads"
        for _ in range(3):
            started = time.perf_counter()
            try:
                Diffusion.from_config(cfg).load()
            except DiffusionLoadError as exc:
                # The message's key phrase (the whole message names paths and the fix).
                outcome = "refused: " + next((w for w in expected or [] if w in str(exc)), str(exc)[:60])
            times.append(time.perf_counter() - started)
        agree = "" if (outcome == "loads") == (doctor == "ok") else " DISAGREE"
        print(f"| {name} | {outcome} | {statistics.median(times):.2f} s | {doctor}{agree} |")


if __name__ == "__main__":
    main()
