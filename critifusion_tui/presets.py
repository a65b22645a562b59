"""The method's presets as plain data (SPEC 1 and 3): tag presets, the quality floor and the
default negative prompt.

A leaf: it imports nothing of the package, so the configuration can validate preset names
without importing the engine. ``critifusion_tui.engine.prompts`` re-exports every name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DEFAULT_NEGATIVE", "DEFAULT_PRESET", "PRESETS", "QUALITY_FLOOR", "Preset"]


@dataclass(frozen=True)
class Preset:
    """Seed tags of a preset: positives go to the tag models, negatives are the negative prompt."""

    name: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "hq_preference": Preset(
            name="hq_preference",
            positives=(
                "balanced composition",
                "natural color palette",
                "vibrant colors",
                "balanced contrast",
                "high detail",
                "highly detailed",
                "hyperdetailed",
                "sharp focus",
                "UHD",
                "8k",
            ),
            negatives=(
                "low quality",
                "blurry",
                "watermark",
                "jpeg artifacts",
                "overexposed",
                "underexposed",
                "color banding",
                "extra fingers",
                "missing limbs",
                "disfigured",
                "mutated hands",
            ),
        ),
    }
)
DEFAULT_PRESET = "hq_preference"

# Tags every positive prompt ends up with (SPEC 1.4), appended in this order when missing.
QUALITY_FLOOR: tuple[str, ...] = ("high detailed", "sharp focus", "8k", "UHD")

# The negative prompt of the comparison base and of the refinement pass (SPEC 3 and 6).
DEFAULT_NEGATIVE = (
    "blurry, low quality, artifacts, watermark, extra fingers, missing limbs, over-sharpened, "
    "harsh lighting, oversaturated"
)
