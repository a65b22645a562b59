"""The run's ledger: what every model call cost, and a summary per model and role.

One entry per call CritiCore made (the offline ``rules`` answerer makes none): stage, role,
model, tokens in and out (the server's usage figures where it reported them, else counted
here with the CLIP BPE tokenizer as an estimate, marked ``"usage": "counted"``), seconds,
HTTP attempts, the client's own retries, 429 answers, the error code if it failed, and
where the answer came from (``provider``, ``cache`` or ``replay``: those two cost nothing).
Entries hold no text, no URL and no key. Pure data: the pipeline keeps the list in the
manifest; front ends print :func:`summary_lines`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from critifusion_tui.engine.tokens import count_tokens

FIELDS = ("calls", "tokens_in", "tokens_out", "seconds", "retries", "throttled", "errors", "free")


def estimate_tokens(texts: Iterable[str]) -> int:
    """Tokens of `texts` as a BPE tokenizer counts them (CLIP's: close to most chat models')."""
    return sum(max(0, count_tokens(text) - 2) for text in texts if text)


def summarize(calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals per (model, role), in the order they first appear, and over the whole run.

    ``free`` counts answers from the cache or a replay (no request, no tokens paid);
    ``counted`` says whether any of the row's tokens are estimates.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    total: dict[str, float] = {name: 0 for name in FIELDS}
    total["seconds"] = 0.0
    for call in calls:
        key = (str(call.get("model", "")), str(call.get("role", "")))
        row = rows.setdefault(
            key, {"model": key[0], "role": key[1], **{n: 0 for n in FIELDS}, "seconds": 0.0, "counted": False}
        )
        free = call.get("source", "provider") != "provider"
        values = {
            "calls": 1,
            "tokens_in": int(call.get("tokens_in") or 0),
            "tokens_out": int(call.get("tokens_out") or 0),
            "seconds": float(call.get("seconds") or 0.0),
            "retries": int(call.get("retries") or 0),
            "throttled": int(call.get("throttled") or 0),
            "errors": 1 if call.get("error") else 0,
            "free": 1 if free else 0,
        }
        for name, value in values.items():
            row[name] += value
            total[name] += value
        row["counted"] = row["counted"] or call.get("usage") == "counted"
    for row in rows.values():
        row["seconds"] = round(row["seconds"], 3)
    total["seconds"] = round(total["seconds"], 3)
    return {"models": list(rows.values()), "total": total}


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The summary as lines a person reads: one per model and role, then the total."""
    lines = []

    def line(label: str, row: Mapping[str, Any]) -> str:
        extra = []
        if row.get("retries"):
            extra.append(f"{row['retries']} retried")
        if row.get("throttled"):
            extra.append(f"{row['throttled']} throttled (429)")
        if row.get("errors"):
            extra.append(f"{row['errors']} failed")
        if row.get("free"):
            extra.append(f"{row['free']} from cache/replay")
        if row.get("counted"):
            extra.append("tokens partly counted here")
        calls = row.get("calls", 0)
        text = (
            f"{label}: {calls} call{'s' if calls != 1 else ''}, {row.get('tokens_in', 0):,} tokens in,"
            f" {row.get('tokens_out', 0):,} out, {row.get('seconds', 0.0):.1f} s"
        )
        return text + (f" ({', '.join(extra)})" if extra else "")

    for row in summary.get("models", []):
        lines.append(line(f"{row['model']} as {row['role']}", row))
    total = summary.get("total")
    if total and total.get("calls"):
        lines.append(line("total", total))
    return lines or ["no model calls (offline rules only)"]
