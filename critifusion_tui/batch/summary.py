"""The whole batch in one file: what is done, what failed (stage and error), what was skipped,
how long the launch took and how many images an hour it made.

It is built from what is on disk, so any process can write it at any time and it is always
true: the run folders' manifests (each says its status, its failed stage and who ran it) and
the rank reports each process of a launch leaves in ``<out>/.batch/<launch>/rank-<N>.json``
(when it started and ended, what it ran, its providers' throttling). Rank 0 writes it when
the launch ends; ``critifusion run --summary DIR`` writes it again afterwards (the latest
launch's numbers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from critifusion_tui.engine.stages import BRANCHES
from critifusion_tui.engine.manifest import RunManifest, holds_manifest, read_manifest
from critifusion_tui.engine.store import StoreError, atomic_write, timestamp

REPORTS_DIR = ".batch"
SUMMARY_FILE = "batch-summary.json"
SCHEMA = "critifusion.batch-summary/1"
FINAL_IMAGES = tuple(line.refine for line in BRANCHES)  # the final image of each branch


def report_path(out: Path, launch: str, rank: int) -> Path:
    return Path(out) / REPORTS_DIR / launch / f"rank-{rank}.json"


def write_report(out: Path, launch: str, rank: int, report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    atomic_write(report_path(out, launch, rank), lambda f: f.write(text), mode="w")


def read_reports(out: Path, launch: str) -> list[dict[str, Any]]:
    reports = []
    for path in sorted((Path(out) / REPORTS_DIR / launch).glob("rank-*.json")):
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # being replaced this instant; the next summary reads it
    return sorted(reports, key=lambda r: r.get("rank", 0))


def latest_launch(out: Path) -> str | None:
    """The launch whose reports started last (the one `--summary` describes)."""
    best, best_start = None, -1.0
    for folder in (Path(out) / REPORTS_DIR).glob("*"):
        for report in read_reports(out, folder.name):
            if report.get("started", 0) > best_start:
                best, best_start = folder.name, report["started"]
    return best


def manifest_of(folder: Path) -> RunManifest | None:
    """A batch folder's manifest, or None where it has none or it cannot be read (resuming
    the run then says why)."""
    try:
        return read_manifest(folder)
    except StoreError:
        return None


def summarize(out: Path, jobs: list[tuple[str, str]] | None = None, launch: str | None = None) -> dict[str, Any]:
    """The summary of the batch in `out`; `jobs` are (folder name, prompt), else every run
    folder found; `launch` the launch whose time and throughput are reported."""
    out = Path(out)
    launch = launch or latest_launch(out)
    reports = read_reports(out, launch) if launch else []
    if jobs is None:
        jobs = next((r["jobs"] for r in reports if r.get("jobs")), None)
    if jobs is None:
        jobs = [(p.name, "") for p in sorted(out.iterdir()) if p.is_dir() and holds_manifest(p)]

    done, skipped, failed, not_done, images_now, done_now = 0, 0, [], [], 0, 0
    for name, prompt in jobs:
        folder = out / name
        if not holds_manifest(folder):
            not_done.append({"prompt": prompt, "folder": str(folder), "status": "not started"})
            continue
        try:
            record = read_manifest(folder)
        except StoreError as exc:
            not_done.append({"prompt": prompt, "folder": str(folder), "status": "unreadable", "error": str(exc)})
            continue
        prompt = record.prompt
        status = record.status
        ran_now = launch is not None and record.last_launch == launch
        if status == "done":
            done += 1
            if ran_now:
                done_now += 1
                images_now += sum(1 for s in FINAL_IMAGES if record.stage(s) is not None)
            else:
                skipped += 1
        elif status == "failed":
            stage, error = record.failed_stage()
            failed.append({"prompt": prompt, "folder": str(folder), "stage": stage, "error": error})
        else:  # running (killed), cancelled, paused, abandoned
            not_done.append({"prompt": prompt, "folder": str(folder), "status": status})

    started = min((r["started"] for r in reports if "started" in r), default=None)
    ended = max((r["ended"] for r in reports if "ended" in r), default=None)
    wall = round(ended - started, 3) if started is not None and ended is not None else None
    throttling: dict[str, dict[str, float]] = {}
    for report in reports:
        for backend, usage in (report.get("providers") or {}).items():
            total = throttling.setdefault(backend, {"requests": 0, "throttled": 0, "queued_s": 0.0})
            for key in total:
                total[key] = round(total[key] + usage.get(key, 0), 3)
    world = max((r.get("world_size", 1) for r in reports), default=0)
    return {
        "schema": SCHEMA,
        "folder": str(out),
        "written": timestamp(),
        "prompts": len(jobs),
        "done": done,
        "skipped": skipped,
        "failed": failed,
        "not_done": not_done,
        "launch": {
            "id": launch,
            "processes": [
                {k: r.get(k) for k in ("rank", "host", "device", "ran", "done", "failed", "started", "ended")}
                for r in reports
            ],
            "missing_ranks": sorted(set(range(world)) - {r.get("rank") for r in reports}),
            "done": done_now,
            "images": images_now,
            "wall_s": wall,
            "images_per_hour": round(images_now * 3600 / wall, 1) if wall else None,
            "throttling": throttling,
        },
    }


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    path = Path(out) / SUMMARY_FILE
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path


def render(summary: dict[str, Any]) -> list[str]:
    """The summary as a few lines for the terminal (the file has everything)."""
    launch = summary["launch"]
    lines = [
        f"batch: {summary['done']}/{summary['prompts']} done ({summary['skipped']} skipped as done earlier), "
        f"{len(summary['failed'])} failed, {len(summary['not_done'])} not done"
    ]
    if launch["wall_s"] is not None:
        rate = f", {launch['images_per_hour']:g} images/hour" if launch["images_per_hour"] is not None else ""
        lines.append(
            f"this launch: {launch['done']} prompts finished by {len(launch['processes'])} process(es) "
            f"in {launch['wall_s']:.1f} s{rate}"
        )
    for backend, usage in launch["throttling"].items():
        if usage["throttled"]:
            lines.append(
                f"{backend}: {usage['throttled']:g} of {usage['requests']:g} requests throttled (HTTP 429); "
                f"lower providers.{backend}.max_concurrency or use fewer processes"
            )
    for item in summary["failed"]:
        lines.append(f"FAILED {item['folder']}: [{item['stage']}] {item['error']}")
    if launch["missing_ranks"]:
        lines.append(f"no report from rank(s) {', '.join(map(str, launch['missing_ranks']))}: they did not finish")
    return lines


def summary_command(folder: str) -> int:
    """`critifusion run --summary DIR`: write and print the summary of a batch folder."""
    out = Path(folder)
    if not out.is_dir():
        print(f"critifusion: {out} is not a folder", file=sys.stderr)
        return 2
    summary = summarize(out)
    if not summary["prompts"]:
        print(f"critifusion: {out} holds no run folders", file=sys.stderr)
        return 2
    try:
        path = write_summary(out, summary)
    except OSError as exc:
        print(f"critifusion: cannot write the summary in {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for line in render(summary):
        print(line)
    print(f"summary: {path}")
    return 0 if summary["done"] == summary["prompts"] else 1
