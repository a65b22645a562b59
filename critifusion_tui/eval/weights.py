"""Where a metric's published weights are: a hub reference in the local cache, or a path.

Nothing here downloads. A reference is read as a local path when that path exists (or is
written as one: absolute, ``./``, ``../``, ``~``), otherwise as a Hugging Face hub reference:
``owner/repo`` for a model folder, ``owner/repo/path/in/repo`` for one file, looked up in the
standard cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``). Every piece a metric lacks is
collected into one :class:`WeightsMissing`, worded with the ``hf download`` command that
fetches it on a connected machine, so one look at the message is enough to fix it.

A resolved piece also has a fingerprint (hub repo, file and commit; or a local path with
its size and modification time): the manifest records it, so images already scored with the
same weights are not scored again, and new weights re-score them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class WeightsMissing(Exception):
    """One metric's missing pieces; the message names each and how to fetch it."""

    def __init__(self, metric: str, problems: list[str], commands: list[str]) -> None:
        self.metric = metric
        self.problems = problems
        self.commands = commands
        lines = [f"{metric}: cannot load its weights:"]
        lines += [f"  - {p}" for p in problems]
        if commands:
            lines.append("  fetch them on a connected machine (then copy its Hugging Face cache here):")
            lines += [f"    {c}" for c in commands]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Need:
    """One piece a metric needs: the config key naming it, its reference, and what it is.

    ``files``: for a folder, the files that must be in it; a tuple inside the list is a choice
    (any one will do, e.g. safetensors or bin weights). For a file reference it is unused.
    """

    key: str
    ref: str
    kind: str  # "file" or "folder"
    files: tuple = ()
    # Files to name in the download command for a folder (default: the whole repository).
    fetch: tuple[str, ...] = ()


@dataclass
class Resolved:
    """Local paths for every need of one metric, by config key, and their fingerprint."""

    paths: dict[str, Path] = field(default_factory=dict)
    prints: dict[str, str] = field(default_factory=dict)

    def fingerprint(self, extra: str = "") -> str:
        parts = [self.prints[key] for key in sorted(self.prints)]
        return " | ".join(([extra] if extra else []) + parts)


def _looks_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or (os.sep != "/" and os.sep in ref)


def _local_print(path: Path) -> str:
    target = path
    if path.is_dir():
        # A folder's identity: its weight files (a changed checkpoint re-scores).
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        stats = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
        return f"{path.resolve()} {stats}"
    stat = target.stat()
    return f"{path.resolve()} ({stat.st_size} bytes, mtime {int(stat.st_mtime)})"


def _commit_of(path: str) -> str:
    # Cached files live in .../snapshots/<commit>/<file>: the commit names the weights' version.
    parts = Path(path).parts
    if "snapshots" in parts:
        index = parts.index("snapshots")
        if index + 1 < len(parts):
            return parts[index + 1][:12]
    return "?"


def _cached(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    except Exception:  # an invalid repo id (e.g. odd characters) is simply not in the cache
        return None
    return found if isinstance(found, str) and os.path.exists(found) else None


def _hub_parts(ref: str) -> list[str]:
    return [p for p in ref.strip("/").split("/") if p]


def resolve(metric: str, needs: list[Need], cache_dir: str | None = None) -> Resolved:
    """Local paths of every need, or one WeightsMissing listing all that is missing."""
    resolved = Resolved()
    problems: list[str] = []
    fetch: dict[str, list[str] | None] = {}  # repo -> files to fetch (None: the whole repo)

    for need in needs:
        where = f"eval.{need.key} = {need.ref!r}"
        local = Path(need.ref).expanduser()
        if local.exists() or _looks_local(need.ref):
            if not local.exists():
                problems.append(f"{where}: no such {'file' if need.kind == 'file' else 'folder'} {local}")
                continue
            if need.kind == "file" and not local.is_file():
                problems.append(f"{where}: {local} is not a file")
                continue
            if need.kind == "folder":
                missing = _missing_in_folder(local, need.files)
                if missing:
                    problems.append(f"{where}: {local} lacks {', '.join(missing)}")
                    continue
            resolved.paths[need.key] = local
            resolved.prints[need.key] = _local_print(local)
            continue

        parts = _hub_parts(need.ref)
        if need.kind == "file":
            if len(parts) < 3:
                problems.append(f"{where}: expected owner/repo/file or a local path")
                continue
            repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
            found = _cached(repo, filename, cache_dir)
            if found is None:
                problems.append(
                    f"{where}: no such local file, and {filename} of {repo} is not in the Hugging Face cache"
                )
                files = fetch.setdefault(repo, [])
                if files is not None and filename not in files:
                    files.append(filename)
                continue
            resolved.paths[need.key] = Path(found)
            resolved.prints[need.key] = f"{repo}/{filename}@{_commit_of(found)}"
            continue

        if len(parts) > 2:
            problems.append(f"{where}: expected owner/repo (a model folder) or a local path")
            continue
        repo = "/".join(parts)
        folder, missing = _cached_folder(repo, need.files, cache_dir)
        if missing:
            problems.append(f"{where}: {', '.join(missing)} of {repo} not in the Hugging Face cache")
            if need.fetch:
                files = fetch.setdefault(repo, [])
                if files is not None:
                    files.extend(f for f in need.fetch if f not in files)
            else:
                fetch[repo] = None
            continue
        resolved.paths[need.key] = folder
        resolved.prints[need.key] = f"{repo}@{_commit_of(str(folder / 'x'))}"

    if problems:
        commands = [f"hf download {repo}" + (" " + " ".join(files) if files else "") for repo, files in fetch.items()]
        raise WeightsMissing(metric, problems, commands)
    return resolved


def _missing_in_folder(folder: Path, files: tuple) -> list[str]:
    missing = []
    for item in files:
        choices = item if isinstance(item, tuple) else (item,)
        if not any((folder / name).is_file() for name in choices):
            missing.append(" or ".join(choices))
    return missing


def _cached_folder(repo: str, files: tuple, cache_dir: str | None) -> tuple[Path, list[str]]:
    """The cached snapshot folder of `repo` holding every required file, and what it lacks.

    Each file is looked up on its own (a snapshot may hold only some files); the folder is the
    one the first required file lives in, and the others must be beside it.
    """
    folder: Path | None = None
    missing: list[str] = []
    for item in files:
        choices = item if isinstance(item, tuple) else (item,)
        hit = next((p for p in (_cached(repo, name, cache_dir) for name in choices) if p), None)
        if hit is None:
            missing.append(" or ".join(choices))
            continue
        folder = folder or Path(hit).parent  # required files sit at the top of the repo
    return (folder or Path()), missing
