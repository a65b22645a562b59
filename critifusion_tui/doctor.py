"""`critifusion doctor`: a truthful report of what this machine and configuration can do.

Each check is one line: a mark, a label, and what was found. Problems a user must fix are
marked `fail` and make the exit status 1; things that work but deserve a look are `warn`.
Nothing here prints a secret: key variables are reported as set or unset, never shown.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "info": "    "}


@dataclass
class Check:
    label: str
    status: str  # ok, warn, fail, info
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def system_checks() -> list[Check]:
    from critifusion_tui import __version__

    checks = [
        Check("critifusion-tui", "info", __version__),
        Check("python", "ok", f"{platform.python_version()} ({sys.executable})"),
        Check("platform", "info", f"{platform.system()} {platform.release()} {platform.machine()}"),
    ]
    for dist in ("diffusers", "transformers", "textual", "textual-image", "together", "ollama"):
        version = _version(dist)
        checks.append(Check(dist, "ok" if version else "fail", version or "not installed"))
    return checks


def torch_checks() -> list[Check]:
    started = time.perf_counter()
    try:
        import torch
    except Exception as exc:  # a broken wheel raises more than ImportError
        return [Check("torch", "fail", f"cannot import: {exc}")]
    took = time.perf_counter() - started
    checks = [Check("torch", "ok", f"{torch.__version__} (import {took:.1f} s)")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(index)
            free, total = torch.cuda.mem_get_info(index)
            checks.append(
                Check(f"cuda:{index}", "ok", f"{name}, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
            )
    else:
        built = torch.version.cuda
        why = f"torch built for CUDA {built}, but no GPU is visible" if built else "CPU-only torch build"
        checks.append(Check("cuda", "warn", f"not available ({why}); SDXL at 1024 px is very slow on CPU"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        checks.append(Check("mps", "ok", "Apple Metal available"))
    return checks


def config_checks(config_path, overrides):
    """The config in use and its problems; on error, the rest of the report uses defaults."""
    from critifusion_tui.config import ConfigError, Settings, find_config, load_config

    try:
        loaded = load_config(config_path, overrides)
    except ConfigError as exc:
        try:
            path, source = find_config(config_path)
            where = f"{path} ({source})" if path else source
        except ConfigError:
            where = str(config_path or os.environ.get("CRITIFUSION_CONFIG"))
        checks = [Check("config", "fail", where)]
        checks += [Check("", "fail", line) for line in str(exc).splitlines()]
        checks.append(Check("", "info", "the checks below use the built-in defaults"))
        return checks, Settings()
    where = f"{loaded.path} ({loaded.source})" if loaded.path else loaded.source
    checks = [Check("config", "ok", where)]
    checks += [Check("", "info", f"--set {item}") for item in loaded.overrides]
    return checks, loaded.settings


def role_checks(settings) -> list[Check]:
    """Each role's models, then what each provider in use needs: a key, or a server."""
    together = settings.providers.together
    ollama = settings.providers.ollama
    checks = []
    users: dict[str, list[str]] = {}
    for role, refs in settings.criticore.refs().items():
        checks.append(Check(role, "info", ", ".join(str(ref) for ref in refs)))
        for ref in refs:
            users.setdefault(ref.provider, []).append(role)
    if "together" in users:
        needed = f"needed by {len(users['together'])} model(s) in {', '.join(dict.fromkeys(users['together']))}"
        if os.environ.get(together.api_key_env):
            checks.append(Check("together key", "ok", f"${together.api_key_env} is set ({needed})"))
        else:
            checks.append(
                Check("together key", "fail", f"${together.api_key_env} is not set ({needed}); export your Together key")
            )
    if "ollama" in users:
        checks.append(Check("ollama", "info", f"server {ollama.host} (no key needed)"))
    if "rules" in users:
        checks.append(Check("rules", "info", "offline rules: preset tags, prompt clauses, no-op critic"))
    return checks


def model_checks(settings) -> list[Check]:
    """Where the diffusion weights would come from: nothing here downloads anything."""
    model = settings.diffusion.model
    if model == "tiny-random":
        return [Check("diffusion model", "warn", "tiny-random: built in, offline; its images are noise")]
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return [Check("diffusion model", "ok", f"local diffusers folder {path}")]
        return [Check("diffusion model", "fail", f"{path} is a folder without model_index.json")]
    if path.suffix in (".safetensors", ".ckpt"):
        if path.is_file():
            size = path.stat().st_size / 2**30
            return [Check("diffusion model", "ok", f"single-file checkpoint {path} ({size:.1f} GiB)")]
        return [Check("diffusion model", "fail", f"{path}: no such checkpoint file")]
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return [Check("diffusion model", "warn", f"{model}: huggingface_hub missing, cannot check the cache")]
    cached = try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        return [Check("diffusion model", "ok", f"{model} in the Hugging Face cache ({constants.HF_HUB_CACHE})")]
    if constants.HF_HUB_OFFLINE:
        return [Check("diffusion model", "fail", f"{model} is not in the cache and HF_HUB_OFFLINE is set")]
    return [
        Check(
            "diffusion model", "warn",
            f"{model} is not in the Hugging Face cache: the first run downloads it (SDXL: ~7 GB)",
        )
    ]


def terminal_checks(settings) -> list[Check]:
    """Which inline image protocol textual-image detects here (it asks the terminal)."""
    forced = settings.tui.images
    checks = [Check("TERM", "info", f"{os.environ.get('TERM', '(unset)')}"
                    + (" inside tmux" if os.environ.get("TMUX") else ""))]
    if forced != "auto":
        checks.append(Check("images", "ok", f"{forced} (set by tui.images)"))
        return checks
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        checks.append(Check("images", "info", "not run in a terminal: detection skipped"))
        return checks
    try:
        from textual_image import renderable
    except Exception as exc:
        return checks + [Check("images", "warn", f"detection failed ({exc}); previews use half-blocks")]
    names = {
        "sixel": "sixel", "tgp": "kitty graphics",
        "halfcell": "half-block characters", "unicode": "unicode blocks (no colour)",
    }
    # Every protocol's class is called Image; its module says which one was chosen.
    module = renderable.Image.__module__.rsplit(".", 1)[-1]
    found = names.get(module, module)
    checks.append(Check("images", "ok", f"{found} detected"))
    return checks


def output_checks(settings) -> list[Check]:
    out = settings.output.path()
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if os.access(probe, os.W_OK):
        return [Check("output", "ok", f"{out.resolve()}" + ("" if out.exists() else " (created on first run)"))]
    return [Check("output", "fail", f"{out.resolve()} is not writable")]


def render(sections: list[tuple[str, list[Check]]]) -> str:
    lines = []
    for title, checks in sections:
        lines.append(title)
        for check in checks:
            lines.append(f"  {MARKS[check.status]}  {check.label:<16} {check.detail}".rstrip())
    return "\n".join(lines)


def run_doctor(config_path=None, overrides=(), offline: bool = False) -> int:
    config, settings = config_checks(config_path, overrides)
    sections = [
        ("System", system_checks() + torch_checks()),
        ("Configuration", config),
        ("Models by role" + (" (offline: hosted checks skipped)" if offline else ""), role_checks(settings)),
        ("Diffusion", model_checks(settings)),
        ("Terminal", terminal_checks(settings)),
        ("Output", output_checks(settings)),
    ]
    print(render(sections))
    failed = sum(c.status == "fail" for _, checks in sections for c in checks if c.label)
    print(f"\n{failed} problem(s) found." if failed else "\nAll checks passed.")
    return 1 if failed else 0
