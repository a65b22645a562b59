"""Run folders: one folder per run, a manifest, images and latents, written so a crash loses
at most the stage in progress.

Every file goes to a temporary name in the same folder, is flushed to disk, then renamed
over its final name (a rename is atomic on one file system), and the manifest is rewritten
after each stage. A run can therefore be reopened after a kill and resumed from the last
stage the manifest marks done.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from critifusion_tui.engine.manifest import SCHEMA, RunManifest, check_before_write, read_manifest_data
from critifusion_tui.engine.store_paths import FILE_FIELDS, MANIFEST, StoreError, confined, read_confined

SLUG_MAX = 40
__all__ = ["MANIFEST", "SCHEMA", "RunStore", "StoreError", "atomic_write", "slugify", "timestamp"]


def timestamp() -> str:
    """Local time with its offset, to the second: how the manifest dates things."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def slugify(text: str, limit: int = SLUG_MAX) -> str:
    """A file-name-safe, lower-case slug of a prompt ("A red fox!" -> "a-red-fox")."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "run"


# How a temporary sibling is opened: new (never an existing file or a link), not inherited.
_TEMP_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def create_temp_sibling(path: Path, *, private: bool = False) -> tuple[int, str]:
    """A new, empty ``.<name>.<random>.tmp`` next to `path`, open for writing: (fd, its path).

    It is created with mode 0666 less the user's umask, as any file the user makes (0644 under
    umask 022, 0600 under 077), because it becomes the final file by a rename or a link;
    `private` makes it 0600 whatever the umask (the user's own answer cache).
    ``tempfile.mkstemp`` would make every run file 0600, unreadable to the group and to a
    web server serving a shared outputs folder. The umask is applied by the kernel, never
    read (reading it means setting it, which races with other threads creating files)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600 if private else 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def atomic_write(
    path: Path, write: Callable[[Any], None], mode: str = "wb", *, exclusive: bool = False, private: bool = False
) -> None:
    """Write through `write(file)` to a temporary sibling, fsync, then rename over `path`
    (with `exclusive`: hard-link it to `path`, which fails if `path` exists). The file gets the
    user's umask, or 0600 when `private` (see `create_temp_sibling`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_sibling(path, private=private)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)
            Path(tmp).unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    """One run's folder and its manifest.

    `manifest` is the manifest as data, which the pipeline changes and :meth:`write_manifest`
    persists (validated first: see engine/manifest.py); :attr:`record` is its typed view."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self._record: RunManifest | None = None

    # ---------------------------------------------------------------- creating and opening

    @classmethod
    def create(
        cls,
        *,
        prompt: str,
        seed: int,
        config: dict[str, Any],
        versions: dict[str, str],
        output_dir: Path | None = None,
        folder: Path | None = None,
        now: datetime | None = None,
        extra: dict[str, Any] | None = None,
        force: bool = False,
    ) -> RunStore:
        """A new run: exactly `folder` when given (it must be empty or absent), else a fresh
        `<date>-<time>-<slug>` folder under `output_dir`."""
        now = now or datetime.now(timezone.utc).astimezone()
        if folder is None:
            if output_dir is None:
                raise StoreError("a run needs an output folder or an explicit run folder")
            folder = cls._fresh_folder(Path(output_dir), now, prompt)
        else:
            folder = Path(folder)
            claim_folder(folder, force=force)
        manifest = {
            "schema": SCHEMA,
            "prompt": prompt,
            "seed": seed,
            "created": now.isoformat(timespec="seconds"),
            "versions": versions,
            "config": config,
            "status": "running",
            "stages": {},
            "edits": [],
            **(extra or {}),
        }
        store = cls(folder, manifest)
        store.write_manifest(exclusive=True)
        return store

    @staticmethod
    def _fresh_folder(output_dir: Path, now: datetime, prompt: str) -> Path:
        """A new `<date>-<time>-<slug>[-n]` folder, made exclusively (two runs never share one)."""
        base = f"{now:%Y%m%d-%H%M%S}-{slugify(prompt)}"
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the output folder {output_dir}: {exc.strerror or exc}") from None
        for n in range(1, 10_000):
            candidate = output_dir / (base if n == 1 else f"{base}-{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot create run folder {candidate}: {exc.strerror or exc}") from None
        raise StoreError(f"cannot create a run folder in {output_dir}: 10,000 runs of this second exist")

    @classmethod
    def open(cls, folder: Path) -> RunStore:
        """An existing run, for resuming or viewing; its manifest is checked field by field
        (a run folder may come from someone else) and every path in it stays inside it."""
        folder = Path(folder)
        data, record = read_manifest_data(folder)
        store = cls(folder, data)
        store._record = record
        return store

    @property
    def record(self) -> RunManifest:
        """The manifest as last read or written, validated: its typed view. A change to
        `manifest` shows here after the next :meth:`write_manifest`."""
        if self._record is None:
            self._record = check_before_write(json.loads(self._text()), str(self.folder / MANIFEST))
        return self._record

    def remove_temp_files(self) -> list[str]:
        """Delete what an interrupted atomic write left behind (``.<name>.*.tmp``)."""
        removed: list[str] = []
        try:
            leftovers = [p for p in self.folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        except OSError:
            return removed
        for path in leftovers:
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path.name)
            except OSError:
                pass  # a read-only folder: the next write says so
        return removed

    # ---------------------------------------------------------------- stages

    @property
    def stages(self) -> dict[str, Any]:
        return self.manifest["stages"]

    def stage(self, name: str) -> dict[str, Any] | None:
        """A stage's record when it completed, else None."""
        record = self.stages.get(name)
        return record if record and record.get("status") == "done" else None

    def save_stage(self, name: str, record: dict[str, Any]) -> None:
        """Record a completed stage and persist the manifest at once."""
        self._set_stage(name, {**record, "status": "done"})

    def fail_stage(self, name: str, error: str, **fields: Any) -> None:
        self._set_stage(name, {**fields, "status": "failed", "error": error})

    def save_progress(self, name: str, record: dict[str, Any]) -> None:
        """What a long stage has made so far (critique rounds), persisted at once: a crash
        keeps it, and the stage counts as not done until :meth:`save_stage`."""
        self._set_stage(name, {**record, "status": "running"})

    def cancel_stage(self, name: str, **fields: Any) -> None:
        """A stage stopped by a person (or a signal) before it completed: not a failure."""
        self._set_stage(name, {**fields, "status": "cancelled"})

    def _set_stage(self, name: str, record: dict[str, Any]) -> None:
        # Stages that run side by side end in any order; the manifest lists them in the
        # method's order (the stage table's), whatever order they ended in.
        from critifusion_tui.engine.stages import TABLE

        stages = self.stages
        stages[name] = record
        rank = {str(stage): index for index, stage in enumerate(TABLE)}
        ordered = sorted(stages, key=lambda key: rank.get(key, len(rank)))
        if list(stages) != ordered:
            items = {key: stages[key] for key in ordered}
            stages.clear()
            stages.update(items)
        self.write_manifest()

    def forget_stage(self, name: str) -> None:
        """Drop a stage so it runs again (a re-run with edited inputs)."""
        if self.stages.pop(name, None) is not None:
            self.write_manifest()

    def record_edit(self, stage: str, field: str, before: str, after: str, by: str = "user") -> None:
        """Who changed which prompt, and how: the manifest keeps every edit."""
        self.manifest["edits"].append(
            {
                "stage": stage,
                "field": field,
                "by": by,
                "before": before,
                "after": after,
                "at": timestamp(),
            }
        )
        self.write_manifest()

    def finish(self, status: str = "done") -> None:
        self.manifest["status"] = status
        self.write_manifest()

    # ---------------------------------------------------------------- files

    def write_manifest(self, *, exclusive: bool = False) -> None:
        """Persist the manifest atomically; `exclusive` (the first write of a new run) fails
        when another process wrote one first: of two runs racing for a folder, one wins."""
        text = self._text()
        # Checked as a reader will read it: a shape history could not read is never written.
        record = check_before_write(json.loads(text), str(self.folder / MANIFEST))
        try:
            atomic_write(self.folder / MANIFEST, lambda f: f.write(text), mode="w", exclusive=exclusive)
        except FileExistsError:
            raise StoreError(
                f"{self.folder} already holds a run; resume it with --resume {self.folder} or choose another --out"
            ) from None
        self._record = record

    def _text(self) -> str:
        """The manifest as the JSON text written to disk."""
        from critifusion_tui.redact import redact_data

        # Redacted as it is written: no key or credential reaches the disk (see redact.py).
        return json.dumps(redact_data(self.manifest), indent=2, ensure_ascii=False) + "\n"

    def write_png(self, name: str, image, text: dict[str, str]) -> str:
        """Save a PIL image with `text` in its PNG text chunks; returns the relative path."""
        self.save_png(name, image, text)
        return name

    def save_png(self, name: str, image, text: dict[str, str]) -> bytes:
        """:meth:`write_png`, returning the file's bytes: encoded once, in memory, so a caller
        that sends the image on (the critics) needs no read of the file back."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, str(value))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        data = buffer.getvalue()
        atomic_write(self.folder / name, lambda f: f.write(data))
        return data

    def write_latent(self, name: str, latent) -> str:
        """Save a latent tensor (safetensors) so a refinement can be redone without the base."""
        from safetensors.torch import save

        data = save({"latent": latent.detach().to("cpu").contiguous()})
        atomic_write(self.folder / name, lambda f: f.write(data))
        return name

    def read_latent(self, name: str, field: str = "latent"):
        from safetensors.torch import load

        try:
            data = read_confined(self.folder, name, field, FILE_FIELDS["latent"])
        except StoreError as exc:
            raise StoreError(f"cannot read the latent: {exc}") from None
        try:
            latent = load(data)["latent"]
        except Exception as exc:  # a missing key, or safetensors' own error types
            raise StoreError(f"{self.folder / name}: cannot read the latent: {type(exc).__name__}: {exc}") from None
        return latent

    def read_file(self, relative: str, field: str, limit: int = FILE_FIELDS["image"]) -> bytes:
        """A file the manifest names, read only if it is a regular file inside the folder."""
        return read_confined(self.folder, relative, field, limit)

    def path(self, relative: str, field: str = "file") -> Path:
        """The path of a file inside the run folder (a name that leaves it is refused)."""
        return confined(self.folder, relative, field)


def check_out_folder(folder: Path, *, force: bool = False) -> None:
    """Refuse, before anything runs, an --out that a new run may not take (see claim_folder);
    a folder that holds a run is fine here (the caller resumes or skips it)."""
    try:
        if folder.is_symlink():
            raise StoreError(f"{folder} is a symbolic link; a run folder is never written through one")
        if not folder.exists() or (folder / MANIFEST).exists():
            return
        if not folder.is_dir():
            raise StoreError(f"{folder} exists and is not a folder")
        if not force and any(folder.iterdir()):
            raise StoreError(
                f"{folder} is not empty and holds no run; choose an empty or new folder for --out (or --force to write into it)"
            )
    except OSError as exc:
        raise StoreError(f"cannot use {folder} as the run folder: {exc.strerror or exc}") from None


def claim_folder(folder: Path, *, force: bool = False) -> None:
    """Make `folder` the new run's own: created now, or an existing empty folder (never a
    symbolic link, never a folder that already holds a run; a non-empty one only with
    `force`, whose files a run may then overwrite)."""
    try:
        if folder.is_symlink():
            raise StoreError(f"{folder} is a symbolic link; a run folder is never written through one")
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
        return
    except FileExistsError:
        pass  # an existing folder: the checks below decide whether a run may use it
    except OSError as exc:
        raise StoreError(f"cannot create run folder {folder}: {exc.strerror or exc}") from None
    try:
        if not folder.is_dir():
            raise StoreError(f"{folder} exists and is not a folder")
        if (folder / MANIFEST).exists():
            raise StoreError(f"{folder} already holds a run; resume it with --resume {folder} or choose another --out")
        if not force and any(folder.iterdir()):
            raise StoreError(
                f"{folder} is not empty and holds no run; choose an empty or new folder for --out (or --force to write into it)"
            )
    except OSError as exc:
        raise StoreError(f"cannot use run folder {folder}: {exc.strerror or exc}") from None
