"""The settings a reopened run goes on with, the same for the app and `critifusion run`.

A run's method settings (sizes, steps, seeds, models, SpecFusion) are the run's own, read from
its manifest, plus any ``--set`` given now. Its provider connections (URLs, hosts, key
variables) are always the current configuration's: a run folder may come from someone else,
and must never pick the server a request goes to or the variable a key is read from.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from critifusion_tui.engine.manifest import RunManifest

# What decides which diffusion model is loaded, and how: a run whose values differ needs
# another load; one whose values agree shares the loaded model.
LOAD_KEYS = (
    "model",
    "device",
    "dtype",
    "variant",
    "single_file_config",
    "cpu_offload",
    "vae_tiling",
    "channels_last",
    "fuse_qkv",
    "compile",
    "compile_mode",
)


def same_model(a: Any, b: Any) -> bool:
    """Whether two diffusion configs load the same model the same way."""
    return all(getattr(a, key, None) == getattr(b, key, None) for key in LOAD_KEYS)


def resumed_settings(manifest: RunManifest, current, overrides=(), where: str = "manifest.json"):
    """The settings a reopened run goes on with, and what differs from `current` (a list of
    one-line notes for a person). Raises ``ConfigError`` when the recorded config is invalid."""
    from critifusion_tui.config import ConfigError, apply_override, settings_for_manifest, validate

    try:
        data = json.loads(json.dumps(manifest.config))
    except RecursionError:
        raise ConfigError(f"{where}: config: nested too deeply") from None
    recorded_providers = data.pop("providers", None)
    ours = settings_for_manifest(current)
    data["providers"] = current.model_dump(mode="json")["providers"]
    for item in overrides:
        apply_override(data, item)
    settings = validate(data, where, "", list(overrides))
    differ = _provider_differences(recorded_providers, ours["providers"])
    differ += _method_differences(settings_for_manifest(settings), ours)
    return settings, differ


def _provider_differences(recorded: Any, ours: dict[str, Any]) -> list[str]:
    if recorded is None:
        return []
    if not isinstance(recorded, dict):
        return ["the run folder recorded unreadable provider settings; this run uses the current configuration's"]
    keys = []
    for section, fields in ours.items():
        theirs = recorded.get(section)
        for key, value in fields.items():
            if isinstance(theirs, dict) and key in theirs and theirs[key] != value:
                keys.append(f"providers.{section}.{key}")
    if not keys:
        return []
    return [
        f"the run folder recorded other provider settings ({', '.join(keys)}); this run uses the current configuration's"
    ]


def _method_differences(run: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The run's method settings that are not the current configuration's, one note for all."""
    found = []
    for section in ("criticore", "diffusion", "specfusion"):
        theirs, ours = run.get(section) or {}, now.get(section) or {}
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                found.append(f"{section}.{key} = {_short(theirs.get(key))} (now {_short(ours.get(key))})")
    if not found:
        return []
    shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
    return [f"the run goes on with its own settings, not the current configuration's: {shown}"]


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
