"""Tiny, randomly initialised SDXL and SD 1.5 pipelines, built offline from configs.

The model name ``tiny-random`` (and ``tiny-random-sd15``) makes the whole app runnable on a
laptop without a GPU and without any download: the pipelines have the real SDXL / SD 1.5
structure (two CLIP text encoders with the real CLIP BPE vocabulary, a UNet with the SDXL
``text_time`` conditioning, a 4-level VAE, so latent = image / 8), but a few hundred thousand
parameters each and random weights. Their images are coloured noise; front ends should say so
(``Diffusion.is_tiny_random``).

Weights are initialised from a fixed seed, so a build is reproducible bit for bit. The
tokenizer is the real CLIP BPE (49,408 ids, built from the merges file shipped in
``critifusion_tui/data``), so prompts are cut at 77 tokens exactly where real SDXL cuts them.

torch, transformers and diffusers are imported inside the functions: importing this module is
free, and the names below can be used by front ends that never build anything.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "TINY_MARKER",
    "TINY_MODELS",
    "TINY_RANDOM",
    "TINY_RANDOM_SD15",
    "TINY_SCHEDULER_CONFIG",
    "build_tiny",
    "build_tiny_clip_tokenizer",
    "build_tiny_sd15",
    "build_tiny_sdxl",
    "clip_vocab_and_merges",
    "is_tiny_folder",
    "is_tiny_name",
    "save_tiny",
]

TINY_RANDOM = "tiny-random"
TINY_RANDOM_SD15 = "tiny-random-sd15"
TINY_MODELS = (TINY_RANDOM, TINY_RANDOM_SD15)
# A file written beside model_index.json by `save_tiny`, so a saved tiny pipeline loaded back
# from its folder is still labelled as random noise.
TINY_MARKER = "critifusion_tiny_random.json"

_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Lines 1..48894 of the merges file (line 0 is a version header): 256 byte symbols, the same
# 256 with "</w>", one token per merge and two special tokens make CLIP's 49,408 ids.
_N_MERGES = 49152 - 256 - 2
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_VOCAB_SIZE = 49408
_BOS_ID = _VOCAB_SIZE - 2
_EOS_ID = _VOCAB_SIZE - 1
_HIDDEN = 32  # hidden size of each tiny text encoder
_TIME_DIM = 8  # SDXL's addition_time_embed_dim, tiny


def is_tiny_name(model: str) -> bool:
    """True for the model names that build a tiny random pipeline in memory."""
    return model.strip().lower() in TINY_MODELS


def is_tiny_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a tiny random pipeline written by :func:`save_tiny`."""
    return (Path(folder) / TINY_MARKER).is_file()


def _byte_symbols() -> list[str]:
    # GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+n.
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = kept[:]
    extra = 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49,408 ids) and BPE merges, built from the shipped merges file."""
    raw = (resources.files("critifusion_tui") / "data" / _MERGES_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != _VOCAB_SIZE:  # pragma: no cover - a corrupted data file
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} ids, expected {_VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def build_tiny_clip_tokenizer() -> Any:
    """The real CLIP BPE tokenizer (same ids as openai/clip-vit-large-patch14), offline.

    transformers 5: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently builds a
    2-token tokenizer, so the vocabulary and merges are passed as objects; and
    ``model_max_length`` must be 77 or the pipelines overflow when padding.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # type: ignore[arg-type]  # pairs, as transformers 5 takes them
        model_max_length=77,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_EOS,
        unk_token=_EOS,
    )


def _text_config(**extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=_VOCAB_SIZE,
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        # SDXL reads hidden_states[-2]: at least two layers.
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        pad_token_id=_EOS_ID,
        hidden_act="gelu",
        **extra,
    )


def _tiny_vae(scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    # Four levels: the pipelines compute vae_scale_factor = 2 ** (levels - 1) = 8.
    return AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


# SDXL base's own scheduler config (the engine builds DPM-Solver++ with Karras sigmas from it).
TINY_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**{k: v for k, v in TINY_SCHEDULER_CONFIG.items() if not k.startswith("_")})


def build_tiny_sdxl(seed: int = 0) -> Any:
    """A ``StableDiffusionXLPipeline`` of the SDXL structure, tiny and random (CPU, float32)."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,  # default size = 8 * vae_scale_factor = 64 px
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            norm_num_groups=8,
            # the two encoders' hidden states are concatenated: 32 + 32
            cross_attention_dim=2 * _HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_DIM,
            # six size/crop numbers, each embedded to 8, plus the pooled text embedding
            projection_class_embeddings_input_dim=6 * _TIME_DIM + _HIDDEN,
        )
        vae = _tiny_vae(scaling_factor=0.13025)  # SDXL's VAE factor
        text_encoder = CLIPTextModel(_text_config())
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=_HIDDEN))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=build_tiny_clip_tokenizer(),
        unet=unet.eval(),  # type: ignore[attr-defined]  # an nn.Module: diffusers types it loosely
        scheduler=_scheduler(),
        add_watermarker=False,
    )
    return pipe


def build_tiny_sd15(seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` of the SD 1.5 structure, tiny and random (no safety checker)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            norm_num_groups=8,
            cross_attention_dim=_HIDDEN,
        )
        vae = _tiny_vae(scaling_factor=0.18215)  # SD 1.x's VAE factor
        text_encoder = CLIPTextModel(_text_config())
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=build_tiny_clip_tokenizer(),
        unet=unet.eval(),  # type: ignore[attr-defined]  # an nn.Module: diffusers types it loosely
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny(name: str = TINY_RANDOM, seed: int = 0, dtype: Any = None) -> Any:
    """Build the tiny pipeline a tiny model name stands for, optionally cast to ``dtype``."""
    key = name.strip().lower()
    if key == TINY_RANDOM:
        pipe = build_tiny_sdxl(seed)
    elif key == TINY_RANDOM_SD15:
        pipe = build_tiny_sd15(seed)
    else:
        raise ValueError(f"not a tiny model name: {name!r} (known: {', '.join(TINY_MODELS)})")
    if dtype is not None:
        import torch

        if dtype != torch.float32:
            for module in pipe.components.values():
                if isinstance(module, torch.nn.Module):
                    # nn.Module.to, not ModelMixin.to: the latter warns on every dtype cast
                    # about fp32-only modules, which these tiny models do not have.
                    torch.nn.Module.to(module, dtype=dtype)
    return pipe


def save_tiny(pipe: Any, folder: str | Path) -> Path:
    """Save a tiny pipeline as a diffusers folder (loadable with ``from_pretrained``), marked."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    marker = {"note": "tiny randomly initialised pipeline: its images are noise"}
    (folder / TINY_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    return folder
