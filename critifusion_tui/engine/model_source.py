"""Where a diffusion model's files are and which of them a load will read, decided without loading.

``plan_load`` is the one answer ``critifusion run`` and ``critifusion doctor`` share: it reads
JSON configs and safetensors headers only (no weights, no torch for anything but a ``.ckpt``),
so ``doctor`` says "ok" exactly where ``run`` loads, and names the missing piece where it won't.

Sources, in the order a model reference is tried:

* ``tiny-random`` / ``tiny-random-sd15`` (any case): built in memory, offline.
* a folder with ``model_index.json``: a diffusers pipeline saved with ``save_pretrained`` or
  downloaded with ``hf download --local-dir``.
* a ``.safetensors`` / ``.ckpt`` file (any case of the suffix): the original single-file layout
  of SDXL or SD 1.x; its architecture is read from the tensor names in the header, and the
  diffusers configuration comes from ``diffusion.single_file_config``, else the Hugging Face
  cache, else the copy shipped in this package (``single_file_configs``).
* an ``owner/name`` hub id: the snapshot in the Hugging Face cache, read as a folder, so a
  cached model loads without a single request; downloaded only when not cached and online.

Variants (``diffusion.variant``): a component's weights exist as full files
(``diffusion_pytorch_model.safetensors``, ``model.safetensors``) and/or as ``fp16`` files
(``*.fp16.safetensors``, what ``variant="fp16"`` downloads give). ``auto`` reads what is there,
and where both are, the fp16 files for fp16/bf16 on an accelerator and the full files on the
CPU. Components whose choice differs from the majority are loaded on their own.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critifusion_tui.engine.diffusion_errors import DiffusionLoadError, first_line
from critifusion_tui.engine.scheduler_plan import describe_scheduler
from critifusion_tui.engine.single_file_configs import DEFAULT_BUILTIN, DEFAULT_REPO, BUILTIN_CONFIGS, materialise
from critifusion_tui.engine.tiny_sdxl import TINY_RANDOM, TINY_SCHEDULER_CONFIG, is_tiny_folder, is_tiny_name

__all__ = [
    "SINGLE_FILE_SUFFIXES",
    "ComponentFiles",
    "LoadPlan",
    "hub_cache",
    "hub_offline",
    "load_summary",
    "native_size_hint",
    "plan_load",
    "read_checkpoint_keys",
]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
VARIANTS = ("auto", "fp16", "none")
_SDXL_CLASSES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"}
_SD_CLASSES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# Components with weights, by the library that saves them, and the file names it writes
# (safetensors first: the loaders prefer it when both are there).
_WEIGHT_NAMES = {
    "diffusers": (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.bin.index.json",
    ),
    "transformers": (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ),
}
# Pipeline entries the engine never loads (decode goes through the VAE, as the reference does).
_SKIPPED = {"safety_checker", "feature_extractor", "image_encoder"}
_HEADER_LIMIT = 100 * 2**20  # a safetensors header larger than this is not a checkpoint


@dataclass(frozen=True)
class ComponentFiles:
    """One pipeline component and the weight files a load of it reads."""

    name: str
    library: str
    class_name: str
    variant: str | None  # "fp16", or None for the full files
    files: tuple[tuple[str, int], ...]  # (path, size in bytes)


@dataclass(frozen=True)
class LoadPlan:
    """Everything a load will do, for the loader, the manifest, ``doctor`` and the app."""

    model: str
    source: str  # tiny, folder, hub, download, file
    location: str  # folder, cached snapshot, file, or tiny name
    kind: str  # sdxl or sd
    device: str
    dtype: str
    variant: str | None = None  # passed to from_pretrained
    components: tuple[ComponentFiles, ...] = ()
    config_folder: str | None = None  # single file: its diffusers configuration
    config_source: str | None = None
    scheduler: dict[str, Any] = field(default_factory=dict)
    native_size: tuple[int, int] = (1024, 1024)
    notes: tuple[str, ...] = ()

    @property
    def tiny(self) -> bool:
        return self.source == "tiny" or (self.source == "folder" and is_tiny_folder(self.location))

    @property
    def pipeline(self) -> str:
        return "StableDiffusionXLPipeline" if self.kind == "sdxl" else "StableDiffusionPipeline"

    def mixed_components(self) -> list[ComponentFiles]:
        """Components whose variant differs from the one passed to ``from_pretrained``."""
        return [c for c in self.components if c.variant != self.variant]

    def weight_files(self) -> list[dict[str, Any]]:
        return [{"component": c.name, "path": path, "bytes": size} for c in self.components for path, size in c.files]

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record (manifest, ``doctor``, ``run --json``)."""
        return {
            "model": self.model,
            "source": self.source,
            "location": self.location,
            "kind": self.kind,
            "pipeline": self.pipeline,
            "device": self.device,
            "dtype": self.dtype,
            "variant": self.variant or "none",
            "component_variants": {c.name: c.variant or "none" for c in self.components},
            "single_file_config": self.config_source,
            "scheduler": self.scheduler,
            "native_size": list(self.native_size),
            "weights": self.weight_files(),
            "tiny_random": self.tiny,
            "notes": list(self.notes),
        }


def load_summary(record: dict[str, Any]) -> str:
    """One line for a person from a :meth:`LoadPlan.describe`-style record (what was loaded)."""
    from critifusion_tui.engine.scheduler_plan import scheduler_label

    where = {
        "hub": "HF cache",
        "folder": "folder",
        "file": "single file",
        "tiny": "built in",
        "download": "downloaded",
    }.get(record.get("source", ""), record.get("source", ""))
    if record.get("source") == "file":
        where += f", config {record.get('single_file_config')}"
    elif record.get("source") in ("hub", "folder"):
        variants = sorted(set(record.get("component_variants", {}).values()))
        where += ", " + "+".join("fp16" if v == "fp16" else "full" for v in variants) + " weights"
    line = f"{record.get('model')} ({where}) on {record.get('device')}, {record.get('dtype')}"
    scheduler = record.get("scheduler") or {}
    if scheduler.get("prediction_type"):
        line += "; " + scheduler_label({"timestep_spacing": "linspace", **scheduler})
    return line


# ---------------------------------------------------------------------- the hub cache


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not at the hub library's import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - hub library missing or changed
        return False


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, found as the hub client finds it (``HF_HUB_CACHE``,
    else ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``), without importing it:
    the app asks this for its first paint."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id``'s cached snapshot (``refs/main``, else the newest), or None.

    Read from the cache layout the hub client writes (``models--owner--name/refs/main`` naming
    a folder under ``snapshots/``): no request, no lock, no library call that could go online.
    """
    repo = hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        folder = snapshots / ref.read_text(encoding="utf-8").strip()
        if folder.is_dir():
            return folder
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _download_command(repo: str | None, patterns: list[str], folder: Path | None = None) -> str:
    includes = " ".join(f'"{p}"' for p in patterns)
    if repo is None:  # a local folder: we do not know where it came from
        return f'hf download <owner/name> --local-dir "{folder}" --include {includes}'
    return f"hf download {repo} --include {includes}"


# ---------------------------------------------------------------------- safetensors headers


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size.

    Reads the first bytes only. A truncated file (an interrupted copy) fails here, by name,
    instead of deep inside a load.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(_HEADER_LIMIT, size - 8):
            raise ValueError("not a safetensors file (header length out of range)")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a table)")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + length + (max(ends) if ends else 0) > size:
        raise ValueError(f"truncated: the header describes more data than the file's {size:,} bytes")
    return header


def read_checkpoint_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a single-file checkpoint, without reading the weights.

    ``.safetensors``: the header. ``.ckpt``: ``torch.load(weights_only=True, mmap=True)``,
    which builds no Python object but tensors and plain containers, and never runs code from
    the file; a file that needs more is refused with that reason.
    """
    if path.suffix.lower() == ".safetensors":
        try:
            header = _safetensors_header(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise DiffusionLoadError(
                f"{path} is not a readable .safetensors checkpoint ({first_line(exc)}). It may be "
                "truncated or not a model file. Fix: copy or download it again."
            ) from None
        return {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    return _ckpt_keys(path)


def _ckpt_keys(path: Path) -> dict[str, tuple[int, ...]]:
    import pickle

    import torch

    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            # A legacy (non-zip) pickle cannot be memory-mapped: read it, still tensors only.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text suggests an unsafe retry; this message must never do that.
        raise DiffusionLoadError(
            f"{path} contains Python code, not only tensors, so it will not be loaded: loading "
            "it could run that code. Fix: convert it to .safetensors with a tool you trust, on a "
            "machine where running it is safe, or get a .safetensors copy of the model."
        ) from None
    except Exception as exc:
        raise DiffusionLoadError(
            f"{path} is not a readable .ckpt checkpoint ({first_line(exc)}). It may be truncated "
            "or not a model file. Fix: copy or download it again, or use a .safetensors copy."
        ) from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DiffusionLoadError(f"{path} holds no state dict of named tensors; it is not a model checkpoint.")
    return {str(k): tuple(getattr(v, "shape", ())) for k, v in state.items()}


# ---------------------------------------------------------------------- the plan


def classify(model: str) -> tuple[str, str]:
    """``(kind, location)`` of a model reference: tiny, folder, file or hub (not checked further)."""
    text = (model or "").strip()
    if not text:
        raise DiffusionLoadError("diffusion.model is empty. Fix: name a hub id, a folder or a .safetensors file.")
    if is_tiny_name(text):
        return "tiny", text.lower()
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", str(path)
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return "file", str(path)
        raise DiffusionLoadError(
            f"{text} is a file but not a checkpoint (.safetensors or .ckpt). Fix: point "
            "diffusion.model at a diffusers folder (with model_index.json), a .safetensors / "
            ".ckpt file, or a Hugging Face hub id."
        )
    looks_like_path = (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or path.suffix.lower() in SINGLE_FILE_SUFFIXES
        or not _HUB_ID.fullmatch(text)
    )
    if looks_like_path:
        raise DiffusionLoadError(
            f"model not found: {text} does not exist (resolved to {path.absolute()}). Fix: set "
            "diffusion.model to an existing diffusers folder (containing model_index.json), a "
            ".safetensors / .ckpt file, a Hugging Face hub id such as owner/name, or "
            '"tiny-random" to try the app without a model.'
        )
    return "hub", text


def plan_load(
    model: str,
    *,
    device: str,
    dtype: str,
    variant: str = "auto",
    single_file_config: str | None = None,
    offline: bool = False,
) -> LoadPlan:
    """The load ``Diffusion`` will do for these settings, or a :class:`DiffusionLoadError` that
    names the missing piece and the fix. ``device``/``dtype`` are resolved names
    (``cpu``/``cuda``..., ``float32``/``float16``/``bfloat16``)."""
    variant = (variant or "auto").lower()
    if variant not in VARIANTS:
        raise DiffusionLoadError(f"unknown diffusion.variant {variant!r}: expected auto, fp16 or none")
    source, location = classify(model)
    common: dict[str, Any] = {"model": model, "device": device, "dtype": dtype}
    prefer_fp16 = device != "cpu" and dtype in ("float16", "bfloat16")
    if source == "tiny":
        kind = "sdxl" if location == TINY_RANDOM else "sd"
        return LoadPlan(
            **common,
            source="tiny",
            location=location,
            kind=kind,
            scheduler=describe_scheduler(TINY_SCHEDULER_CONFIG),
            native_size=(64, 64),
        )
    if source == "file":
        return _plan_single_file(Path(location), common, single_file_config)
    if source == "folder":
        return _plan_folder(Path(location), common, variant, prefer_fp16, repo=None, source="folder")
    snapshot = cached_snapshot(location)
    if snapshot is not None:
        return _plan_folder(snapshot, common, variant, prefer_fp16, repo=location, source="hub")
    if offline or hub_offline():
        pattern = "*.fp16.safetensors" if variant == "fp16" or (variant == "auto" and prefer_fp16) else "*"
        hint = "" if pattern == "*" else f' --include "*.json" "*.txt" "{pattern}"'
        raise DiffusionLoadError(
            f"{location} is not in the Hugging Face cache ({hub_cache()}) and downloads are off "
            f"(HF_HUB_OFFLINE=1 or offline mode). Fix: on a connected machine run "
            f"`hf download {location}{hint}` and copy the cache, or set diffusion.model to a local "
            f"folder or .safetensors file. (No local folder {Path(location).absolute()} exists either.)"
        )
    return LoadPlan(
        **common,
        source="download",
        location=location,
        kind="sdxl",
        variant="fp16" if variant == "fp16" or (variant == "auto" and prefer_fp16) else None,
        notes=(f"{location} is not in the Hugging Face cache: the first run downloads it",),
    )


def pipeline_kind(index: dict[str, Any], where: str) -> str:
    """``sdxl`` or ``sd`` from a ``model_index.json``; refiners and other pipelines refused."""
    name = str(index.get("_class_name", ""))
    if name in _SDXL_CLASSES:
        text_encoder = index.get("text_encoder")
        if index.get("requires_aesthetics_score") or not text_encoder or text_encoder == [None, None]:
            raise DiffusionLoadError(
                f"{where} is an SDXL refiner (no first text encoder), not a base model. "
                "Fix: use an SDXL base checkpoint such as stable-diffusion-xl-base-1.0."
            )
        return "sdxl"
    if name in _SD_CLASSES:
        return "sd"
    raise DiffusionLoadError(
        f"{where} holds {'a ' + name if name else 'an unknown'} pipeline; this app runs SDXL "
        "(StableDiffusionXLPipeline) and SD 1.x/2.x (StableDiffusionPipeline) models."
    )


def _read_json(path: Path, problems: list[str], what: str) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(f"{what} is missing")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{what} cannot be read ({first_line(exc)})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{what} is not a JSON object")
        return None
    return data


def with_variant(name: str, variant: str | None) -> str:
    """``model.safetensors`` -> ``model.fp16.safetensors``; ``x.safetensors.index.json`` ->
    ``x.safetensors.index.fp16.json`` (the loaders insert the variant before the last suffix)."""
    if not variant:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def _weights(folder: Path, library: str, variant: str | None) -> tuple[list[Path] | None, str | None]:
    """The weight files of one component in one variant: (files, None), (None, None) when that
    variant is absent, or (None, problem) when it is there but incomplete or broken."""
    for base in _WEIGHT_NAMES[library]:
        path = folder / with_variant(base, variant)
        if not path.is_file():
            continue
        if base.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                return None, f"{path.name} cannot be read ({first_line(exc)})"
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                return None, f"{len(missing)} of {len(shards)} shards are missing ({', '.join(missing[:3])})"
            files = [path, *(folder / s for s in shards)]
        else:
            files = [path]
        for file in files:
            if file.suffix == ".safetensors":
                try:
                    _safetensors_header(file)
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    return None, f"{file.name} is damaged ({first_line(exc)})"
        return files, None
    return None, None


def _loaded_entries(index: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(name, library, class) of each component a load builds from ``model_index.json``:
    private keys, null entries and the parts the engine never loads are left out. The plan
    and the single-file config check both walk the index through this, so they agree."""
    for name, entry in index.items():
        if name.startswith("_") or name in _SKIPPED or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, class_name = entry
        if library and class_name:
            yield name, str(library), str(class_name)


def _tokenizer_ok(folder: Path) -> bool:
    if (folder / "tokenizer.json").is_file():
        return True
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def _plan_folder(
    folder: Path, common: dict[str, Any], variant: str, prefer_fp16: bool, *, repo: str | None, source: str
) -> LoadPlan:
    where = f"{repo} (cached at {folder})" if repo else str(folder)
    problems: list[str] = []
    fixes: list[str] = []
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        hint = ""
        if any((folder / sub).is_dir() for sub in ("unet", "vae", "text_encoder")):
            hint = " It has component folders: is model_index.json missing from a partial copy?"
        fix = (
            f"`{_download_command(repo, ['model_index.json'])}`"
            if repo
            else "point diffusion.model at the folder that contains model_index.json, or at a .safetensors checkpoint file"
        )
        raise DiffusionLoadError(f"{where} is not a diffusers pipeline folder (no model_index.json).{hint} Fix: {fix}.")
    index = _read_json(index_path, problems, "model_index.json")
    if index is None:
        raise DiffusionLoadError(f"{where}: {problems[0]}. Fix: copy or download it again.")
    kind = pipeline_kind(index, where)

    # Which variants each weighted component has.
    weighted: dict[str, tuple[str, str, dict[str | None, list[Path]]]] = {}
    for name, library, class_name in _loaded_entries(index):
        sub = folder / name
        if name == "scheduler":
            continue  # read below
        if "Tokenizer" in str(class_name):
            if not _tokenizer_ok(sub):
                problems.append(f"{name}/ has no tokenizer files (vocab.json and merges.txt, or tokenizer.json)")
                fixes.append(f"{name}/*")
            continue
        if library not in _WEIGHT_NAMES:
            continue
        if not (sub / "config.json").is_file():
            problems.append(f"{name}/config.json is missing")
            fixes.append(f"{name}/config.json")
        found: dict[str | None, list[Path]] = {}
        for v in (None, "fp16"):
            files, problem = _weights(sub, library, v)
            if problem:
                problems.append(f"{name}: {problem}")
                fixes.append(f"{name}/{with_variant(_WEIGHT_NAMES[library][0], v)}")
            elif files:
                found[v] = files
        weighted[name] = (library, class_name, found)

    # Choose a variant per component, then the one passed to from_pretrained.
    wanted = {"fp16": "fp16", "none": None}.get(variant, "fp16" if prefer_fp16 else None)
    chosen: dict[str, str | None] = {}
    without_weights: list[str] = []
    for name, (library, _cls, found) in weighted.items():
        if variant != "auto":
            if wanted not in found:
                label = "fp16" if wanted else "full (non-fp16)"
                problems.append(
                    f"{name} has no {label} weights ({with_variant(_WEIGHT_NAMES[library][0], wanted)}) "
                    f'but diffusion.variant = "{variant}"'
                )
                fixes.append(f"{name}/{with_variant(_WEIGHT_NAMES[library][0], wanted)}")
            chosen[name] = wanted
        elif not found:
            if not any(p.startswith(f"{name}:") for p in problems):
                problems.append(
                    f"{name} has no weights ({_WEIGHT_NAMES[library][0]} or "
                    f"{with_variant(_WEIGHT_NAMES[library][0], 'fp16')})"
                )
                without_weights.append(name)
        else:
            chosen[name] = wanted if wanted in found else next(iter(found))
    # Suggest the files of the variant the rest of this copy has (an fp16 download stays fp16).
    present = Counter(chosen.values())
    suggest = present.most_common(1)[0][0] if present else wanted
    for name in without_weights:
        fixes.append(f"{name}/{with_variant(_WEIGHT_NAMES[weighted[name][0]][0], suggest)}")
    scheduler_cfg = _read_json(
        folder / "scheduler" / "scheduler_config.json", problems, "scheduler/scheduler_config.json"
    )
    if scheduler_cfg is None:
        fixes.append("scheduler/scheduler_config.json")
    if problems:
        what = "download" if repo else "folder"
        raise DiffusionLoadError(
            f"the model {where} is incomplete (a partial {what}?): "
            + "; ".join(problems)
            + f". Fix: {'on a connected machine run' if repo else 'add the missing files, e.g.'} "
            f"`{_download_command(repo, sorted(set(fixes)), folder)}`."
        )
    counts = Counter(chosen.values())
    top = max(counts.values()) if counts else 0
    global_variant = wanted if counts.get(wanted, 0) == top else next(v for v, n in counts.items() if n == top)
    components = tuple(
        ComponentFiles(
            name,
            weighted[name][0],
            weighted[name][1],
            v,
            tuple((str(p), p.stat().st_size) for p in weighted[name][2][v]),
        )
        for name, v in chosen.items()
    )
    notes = []
    if any(v == "fp16" for v in chosen.values()) and common["dtype"] == "float32":
        notes.append("fp16 weights are upcast to float32 (no full-precision files in this copy)")
    try:
        scheduler = describe_scheduler(scheduler_cfg or {})
    except ValueError as exc:
        raise DiffusionLoadError(f"{where}: {exc}") from None
    return LoadPlan(
        **common,
        source=source,
        location=str(folder),
        kind=kind,
        variant=global_variant,
        components=components,
        scheduler=scheduler,
        native_size=_native_size(folder),
        notes=tuple(notes),
    )


def _native_size(folder: Path) -> tuple[int, int]:
    """The size the model was trained at: UNet ``sample_size`` x the VAE's downscale factor."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        sample = unet["sample_size"]
        side = int(sample[0] if isinstance(sample, list) else sample)
        factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
        return side * factor, side * factor
    except (OSError, ValueError, KeyError, TypeError):
        return (1024, 1024)


def native_size_hint(model: str, single_file_config: str | None = None) -> tuple[int, int] | None:
    """The model's native size from its configs alone, or None where that would need more
    than a few small reads (a ``.ckpt``, an uncached hub id, a broken model: the load says
    why). Cheap enough for the app's first paint: no torch, no network."""
    try:
        source, location = classify(model)
        if source == "tiny":
            return (64, 64)
        if source == "file" and Path(location).suffix.lower() != ".safetensors":
            return None
        plan = plan_load(model, device="cpu", dtype="float32", single_file_config=single_file_config, offline=True)
        return plan.native_size
    except (DiffusionLoadError, OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------------- single files


def single_file_kind(path: Path, keys: dict[str, tuple[int, ...]]) -> str:
    """``sdxl`` or ``sd`` from the original layout's tensor names (what diffusers also reads)."""
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    unet_in = keys.get("model.diffusion_model.input_blocks.0.0.weight", ())
    if len(unet_in) == 4 and unet_in[1] != 4:
        raise DiffusionLoadError(
            f"{path} is a UNet with {unet_in[1]} input channels (an inpainting or other special "
            "checkpoint), not a text-to-image base model. Fix: use an SDXL or SD 1.5 base checkpoint."
        )
    if has("conditioner.embedders.1."):
        return "sdxl"
    if has("conditioner.embedders.0."):
        raise DiffusionLoadError(
            f"{path} looks like an SDXL refiner checkpoint, not a base model. Fix: use an SDXL base checkpoint."
        )
    if has("cond_stage_model.model."):
        raise DiffusionLoadError(
            f"{path} is an SD 2.x checkpoint (OpenCLIP text encoder). Its diffusers configuration is "
            "not shipped, because 2.x comes as 512 px epsilon and 768 px v-prediction models that the "
            "file cannot tell apart. Fix: set diffusion.single_file_config to the matching diffusers "
            "folder or hub id (e.g. stabilityai/stable-diffusion-2-1)."
        )
    if has("cond_stage_model.") or has("model.diffusion_model."):
        return "sd"
    raise DiffusionLoadError(
        f"{path} is not an SDXL or Stable Diffusion 1.x checkpoint (no UNet / text encoder keys "
        "of the original layout). Fix: use an SDXL or SD 1.5 checkpoint."
    )


# The parts of the original single-file layout a pipeline is built from.
_PARTS = {
    "sdxl": {
        "model.diffusion_model.": "UNet",
        "first_stage_model.": "VAE",
        "conditioner.embedders.0.": "first text encoder",
        "conditioner.embedders.1.": "second text encoder",
    },
    "sd": {"model.diffusion_model.": "UNet", "first_stage_model.": "VAE", "cond_stage_model.": "text encoder"},
}


def _check_parts(path: Path, keys: dict[str, tuple[int, ...]], kind: str) -> None:
    missing = [what for prefix, what in _PARTS[kind].items() if not any(k.startswith(prefix) for k in keys)]
    if missing:
        raise DiffusionLoadError(
            f"{path} is an incomplete {'SDXL' if kind == 'sdxl' else 'SD 1.x'} checkpoint: it has no "
            f"{', no '.join(missing)} weights ({', '.join(p + '*' for p, w in _PARTS[kind].items() if w in missing)}). "
            "Fix: use a full checkpoint (UNet, VAE and text encoders in one file), or the model's "
            "diffusers folder."
        )


def _config_complete(folder: Path) -> bool:
    """True when a folder has every config a single-file load reads (weights not needed)."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return False
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    for name, _library, class_name in _loaded_entries(index):
        sub = folder / name
        if name == "scheduler":
            ok = (sub / "scheduler_config.json").is_file()
        elif "Tokenizer" in str(class_name):
            ok = _tokenizer_ok(sub)
        else:
            ok = (sub / "config.json").is_file()
        if not ok:
            return False
    return True


def _single_file_config(kind: str, setting: str | None) -> tuple[Path, str]:
    """(config folder, where it came from): the setting, else the cache, else the shipped copy."""
    if setting:
        text = setting.strip()
        if text in BUILTIN_CONFIGS:
            if BUILTIN_CONFIGS[text]["kind"] != kind:
                raise DiffusionLoadError(
                    f'diffusion.single_file_config = "{text}" is a {BUILTIN_CONFIGS[text]["kind"]} '
                    f"configuration but the checkpoint is {kind}. Fix: use one of "
                    + ", ".join(n for n, c in BUILTIN_CONFIGS.items() if c["kind"] == kind)
                    + "."
                )
            return materialise(text), f"built-in: {text}"
        path = Path(text).expanduser()
        if path.is_dir():
            if not _config_complete(path):
                raise DiffusionLoadError(
                    f"diffusion.single_file_config {path} lacks model_index.json or a component's "
                    "config/tokenizer files. Fix: point it at a complete diffusers model folder."
                )
            return path, f"folder: {path}"
        if _HUB_ID.fullmatch(text):
            snapshot = cached_snapshot(text)
            if snapshot is not None and _config_complete(snapshot):
                return snapshot, f"cache: {text}"
            raise DiffusionLoadError(
                f"diffusion.single_file_config {text} is not (completely) in the Hugging Face cache. "
                f'Fix: on a connected machine run `hf download {text} --include "*.json" "*.txt"`, '
                "or use a built-in config: " + ", ".join(BUILTIN_CONFIGS) + "."
            )
        raise DiffusionLoadError(
            f"diffusion.single_file_config {text!r} is neither a folder, a hub id nor a built-in "
            "config (" + ", ".join(BUILTIN_CONFIGS) + ")."
        )
    repo = DEFAULT_REPO[kind]
    snapshot = cached_snapshot(repo)
    if snapshot is not None and _config_complete(snapshot):
        return snapshot, f"cache: {repo}"
    builtin = DEFAULT_BUILTIN[kind]
    return materialise(builtin), f"built-in: {builtin}"


def _check_shapes(path: Path, keys: dict[str, tuple[int, ...]], kind: str, config: Path, source: str) -> None:
    """The checkpoint's UNet and text encoder widths must be the config's: a mismatch would
    otherwise surface as a wall of size errors halfway through the load."""
    checks = [
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            "unet/config.json",
            lambda c: c["block_out_channels"][0],
            "UNet channels",
        )
    ]
    text_key = (
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
        if kind == "sdxl"
        else "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    )
    checks.append((text_key, "text_encoder/config.json", lambda c: c["hidden_size"], "text encoder width"))
    for key, config_file, expected, what in checks:
        shape = keys.get(key)
        if not shape:
            continue
        try:
            want = int(expected(json.loads((config / config_file).read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        have = int(shape[0] if "input_blocks" in key else shape[-1])
        if have != want:
            raise DiffusionLoadError(
                f"{path} does not fit the configuration {source}: its {what} are {have}, the "
                f"configuration's {want}. Fix: set diffusion.single_file_config to the diffusers "
                "folder or hub id of the model this checkpoint was made from."
            )


def _plan_single_file(path: Path, common: dict[str, Any], setting: str | None) -> LoadPlan:
    keys = read_checkpoint_keys(path)
    kind = single_file_kind(path, keys)
    _check_parts(path, keys, kind)
    config, source = _single_file_config(kind, setting)
    _check_shapes(path, keys, kind, config, source)
    try:
        scheduler = describe_scheduler(
            json.loads((config / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        )
    except (OSError, ValueError) as exc:
        raise DiffusionLoadError(
            f"the single-file configuration {source} has no usable scheduler config ({first_line(exc)})"
        ) from None
    notes = []
    if path.suffix != path.suffix.lower():
        notes.append(f"the {path.suffix} suffix is read as {path.suffix.lower()}")
    return LoadPlan(
        **common,
        source="file",
        location=str(path),
        kind=kind,
        components=(ComponentFiles("checkpoint", "", "", None, ((str(path), path.stat().st_size),)),),
        config_folder=str(config),
        config_source=source,
        scheduler=scheduler,
        native_size=_native_size(config),
        notes=tuple(notes),
    )
