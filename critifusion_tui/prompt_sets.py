"""Prompt files for batch runs, in the formats the published prompt sets come in.

- plain text: one prompt per line; blank lines and lines starting with ``#`` are skipped;
- CSV or TSV with a header (DrawBench: ``Prompts``, ``Category``; PartiPrompts' TSV:
  ``Prompt``, ``Category``, ``Challenge``, ``Note``): the prompt column is the one named
  ``Prompt`` or ``Prompts``, the category column ``Category`` (any letter case);
- JSON: a list of strings (the HPDv2 benchmark files, e.g. ``anime.json``, ``photo.json``).

No prompt set is downloaded. ``category`` keeps the rows of one category (files with a category
column only); ``limit`` keeps the first N after that.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

PROMPT_COLUMNS = ("prompt", "prompts")
CATEGORY_COLUMNS = ("category",)


class PromptFileError(Exception):
    """A prompt file that cannot be read as any supported format; the message says why."""


def read_prompt_file(path: Path, *, limit: int | None = None, category: str | None = None) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        rows = _json_rows(text, path)
    elif suffix in (".csv", ".tsv"):
        rows = _table_rows(text, path, "\t" if suffix == ".tsv" else ",")
    else:
        rows = [(line.strip(), None) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if category is not None:
        known = sorted({c for _, c in rows if c})
        if not known:
            raise PromptFileError(f"{path}: --category needs a file with a Category column; this one has none")
        rows = [(p, c) for p, c in rows if c and c.casefold() == category.casefold()]
        if not rows:
            raise PromptFileError(f"{path}: no prompt in category {category!r}; categories: {', '.join(known)}")
    prompts = [p for p, _ in rows if p]
    return prompts[:limit] if limit is not None else prompts


def _json_rows(text: str, path: Path) -> list[tuple[str, str | None]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise PromptFileError(f"{path}: expected a JSON list of prompt strings (as the HPDv2 benchmark files)")
    return [(item.strip(), None) for item in data]


def _table_rows(text: str, path: Path, delimiter: str) -> list[tuple[str, str | None]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise PromptFileError(f"{path}: empty file")
    names = [h.strip().casefold() for h in header]
    column = next((names.index(n) for n in PROMPT_COLUMNS if n in names), None)
    if column is None:
        raise PromptFileError(
            f"{path}: no Prompt column in the header ({', '.join(h.strip() for h in header)}); "
            "expected DrawBench's or PartiPrompts' layout"
        )
    cat = next((names.index(n) for n in CATEGORY_COLUMNS if n in names), None)
    rows = []
    for row in reader:
        if len(row) > column and row[column].strip():
            rows.append((row[column].strip(), row[cat].strip() if cat is not None and len(row) > cat else None))
    return rows
