"""Tiny random models laid out on disk exactly as users have them (test helper).

* diffusers folders with full weights, fp16-variant weights only (what ``variant="fp16"``
  downloads give), or both; with a component missing, or a component without its weights;
* the Hugging Face hub cache, written by hand the way the hub client writes it:
  ``models--owner--name/blobs/<hash>``, ``snapshots/<commit>/<path>`` as relative symlinks to
  the blobs, ``refs/main`` naming the commit;
* hub-style tokenizer files (``"__type": "AddedToken"`` entries, which make the tokenizers
  library print to file descriptor 1).

Everything is built offline from ``critifusion_tui.engine.tiny_sdxl``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def save_folder(pipe, folder: Path, layout: str) -> Path:
    """Save ``pipe`` as a diffusers folder: layout ``fp32``, ``fp16`` (fp16 files only) or ``both``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    if layout in ("fp32", "both"):
        pipe.save_pretrained(folder)
    if layout in ("fp16", "both"):
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                torch.nn.Module.to(module, dtype=torch.float16)
        pipe.save_pretrained(folder, variant="fp16")
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                torch.nn.Module.to(module, dtype=torch.float32)
    return folder


def weight_files(folder: Path, component: str) -> list[Path]:
    return sorted(p for p in (folder / component).iterdir() if p.suffix in WEIGHT_SUFFIXES)


def break_folder(folder: Path, how: str) -> Path:
    """``missing_component``: text_encoder_2/ gone; ``no_weights``: unet/ keeps only its config."""
    if how == "missing_component":
        shutil.rmtree(folder / "text_encoder_2")
    elif how == "no_weights":
        for path in weight_files(folder, "unet"):
            path.unlink()
    else:
        raise ValueError(how)
    return folder


def hub_style_tokenizers(folder: Path) -> None:
    """Rewrite the tokenizers as the hub's SDXL files have them: vocab.json + merges.txt and a
    tokenizer_config.json and special_tokens_map.json whose special tokens are
    ``{"__type": "AddedToken", ...}`` objects (transformers 5 itself saves a tokenizer.json
    instead). Loading them makes the tokenizers library print to fd 1."""
    from critifusion_tui.engine.single_file_configs import _tokenizer_files

    for sub in ("tokenizer", "tokenizer_2"):
        if not (folder / sub).is_dir():
            continue
        for path in (folder / sub).iterdir():
            path.unlink()
        for name, text in _tokenizer_files("<|endoftext|>").items():
            (folder / sub / name).write_text(text)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = folder / sub / name
            config = json.loads(path.read_text())
            for key in ("bos_token", "eos_token", "unk_token"):
                config[key] = {
                    "__type": "AddedToken",
                    "content": config[key],
                    "lstrip": False,
                    "normalized": True,
                    "rstrip": False,
                    "single_word": False,
                }
            path.write_text(json.dumps(config, indent=2))


def to_hub_cache(
    folder: Path, cache: Path, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567"
) -> Path:
    """Lay ``folder`` out as ``repo_id`` in the hub cache at ``cache``; returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def configs_only(folder: Path, target: Path) -> Path:
    """A copy of ``folder`` without any weight file: what a config-only download holds."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target
