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


PROMPTS_MAX_BYTES = 64 * 2**20


def _text_of(path: Path) -> str:
    """The file as text: UTF-8 (a BOM is fine: spreadsheets write one) or UTF-16 with its BOM;
    anything else (a binary file, another encoding, a huge file) is a PromptFileError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(PROMPTS_MAX_BYTES + 1)
    except OSError as exc:
        raise PromptFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > PROMPTS_MAX_BYTES:
        raise PromptFileError(f"{path}: over {PROMPTS_MAX_BYTES // 2**20} MB; split it into smaller files")
    try:
        text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptFileError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8, one prompt per line"
        ) from None
    if "\x00" in text:
        raise PromptFileError(f"{path}: a binary file (it holds NUL bytes), not one prompt per line")
    return text


def read_prompt_file(path: Path, *, limit: int | None = None, category: str | None = None) -> list[str]:
    """The prompts of a file, control characters removed (a prompt file is outside text)."""
    from critifusion_tui.providers.hygiene import clean_outside

    text = _text_of(Path(path))
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        rows = _json_rows(text, path)
    elif suffix in (".csv", ".tsv"):
        rows = _table_rows(text, path, "\t" if suffix == ".tsv" else ",")
    else:
        rows = [
            (line.strip(), None) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if category is not None:
        known = sorted({c for _, c in rows if c})
        if not known:
            raise PromptFileError(f"{path}: --category needs a file with a Category column; this one has none")
        rows = [(p, c) for p, c in rows if c and c.casefold() == category.casefold()]
        if not rows:
            raise PromptFileError(f"{path}: no prompt in category {category!r}; categories: {', '.join(known)}")
    prompts = [clean for clean in (clean_outside(p) for p, _ in rows if p) if clean]
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
