"""The diffusers configuration of the base models a single-file checkpoint can belong to.

A single ``.safetensors`` (what ComfyUI and A1111 users have) holds weights only. To build a
pipeline from it, diffusers needs the base model's diffusers configuration: ``model_index.json``,
each component's config and the tokenizer files. Normally it fetches them from the hub, which
an offline GPU server cannot reach. So the package carries them: a few kilobytes of JSON per
base model, written out on first use into the user's cache folder, with the CLIP tokenizer files
built from the BPE merges already shipped for the token counter (no vocabulary file is shipped
twice).

The values restate the published configs of those base models (stabilityai/stable-diffusion-xl-
base-1.0, stabilityai/sdxl-turbo, stable-diffusion-v1-5/stable-diffusion-v1-5). A test builds
each on the meta device and checks the published parameter counts, so a typo cannot hide.

Importing this module is free (no torch, no transformers).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_CONFIGS",
    "DEFAULT_REPO",
    "builtin_config",
    "config_cache_root",
    "materialise",
]

# The hub repository whose configuration diffusers itself would fetch for each kind.
DEFAULT_REPO = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}
# The built-in configuration used for each kind when neither the settings nor the cache have one.
DEFAULT_BUILTIN = {"sdxl": "sdxl-base", "sd": "sd15"}

_SCALED_LINEAR = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "trained_betas": None,
    "prediction_type": "epsilon",
}

_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

# CLIP ViT-L/14's text tower: SD 1.5's only text encoder, SDXL's first.
_CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
    # The published configs keep CLIP's original ids (0/2/1); with eos_token_id 2 transformers
    # pools at the highest id in the sequence, which is the end-of-text token.
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# OpenCLIP ViT-bigG/14's text tower with its projection: SDXL's second text encoder.
_CLIP_BIGG = {
    **_CLIP_L,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

_SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

_SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    # SDXL base 1.0, and the fine-tunes and Lightning/Hyper merges that keep its architecture.
    "sdxl-base": {
        "kind": "sdxl",
        "model_index.json": _SDXL_INDEX,
        "unet/config.json": _SDXL_UNET,
        "vae/config.json": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder/config.json": _CLIP_L,
        "text_encoder_2/config.json": _CLIP_BIGG,
        "scheduler/scheduler_config.json": {
            "_class_name": "EulerDiscreteScheduler",
            **_SCALED_LINEAR,
            "interpolation_type": "linear",
            "timestep_spacing": "leading",
            "use_karras_sigmas": False,
        },
        "tokenizers": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
    },
    # SDXL Turbo: the same architecture, trained at 512 px with a trailing-spaced scheduler.
    "sdxl-turbo": {
        "kind": "sdxl",
        "model_index.json": _SDXL_INDEX,
        "unet/config.json": {**_SDXL_UNET, "sample_size": 64},
        "vae/config.json": {**_VAE, "sample_size": 512, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder/config.json": _CLIP_L,
        "text_encoder_2/config.json": _CLIP_BIGG,
        "scheduler/scheduler_config.json": {
            "_class_name": "EulerAncestralDiscreteScheduler",
            **_SCALED_LINEAR,
            "timestep_spacing": "trailing",
        },
        "tokenizers": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
    },
    "sd15": {
        "kind": "sd",
        "model_index.json": {
            "_class_name": "StableDiffusionPipeline",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
        "unet/config.json": _SD15_UNET,
        "vae/config.json": {**_VAE, "sample_size": 512, "scaling_factor": 0.18215},
        "text_encoder/config.json": _CLIP_L,
        "scheduler/scheduler_config.json": {
            "_class_name": "PNDMScheduler",
            **_SCALED_LINEAR,
            "clip_sample": False,
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
        },
        "tokenizers": {"tokenizer": "<|endoftext|>"},
    },
}


def builtin_config(name: str) -> dict[str, Any]:
    """A deep copy of one built-in configuration (``sdxl-base``, ``sdxl-turbo``, ``sd15``)."""
    try:
        return copy.deepcopy(BUILTIN_CONFIGS[name])
    except KeyError:
        known = ", ".join(sorted(BUILTIN_CONFIGS))
        raise KeyError(f"no built-in single-file config named {name!r} (known: {known})") from None


def config_cache_root() -> Path:
    """Where built-in configs are written out: the user's cache folder (platformdirs)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("critifusion-tui")) / "single-file-configs"


def _tokenizer_files(pad_token: str) -> dict[str, str]:
    from critifusion_tui.engine.tiny_sdxl import clip_vocab_and_merges

    vocab, merges = clip_vocab_and_merges()
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    settings = {
        **specials,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n",
        "special_tokens_map.json": json.dumps(specials, indent=2),
        "tokenizer_config.json": json.dumps(settings, indent=2),
    }


def _fingerprint(name: str) -> str:
    # A changed built-in config gets a new folder, so a stale copy is never read.
    text = json.dumps(BUILTIN_CONFIGS[name], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def materialise(name: str, root: Path | None = None) -> Path:
    """Write built-in config ``name`` as a diffusers folder (once) and return its path.

    The folder is written under a temporary name and renamed into place, so a crash or two
    processes at once never leave a half-written config that a later load would trust.
    """
    spec = builtin_config(name)
    root = Path(root) if root is not None else config_cache_root()
    folder = root / f"{name}-{_fingerprint(name)}"
    if (folder / "model_index.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        for relative, content in spec.items():
            if relative.endswith(".json"):
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        for subfolder, pad_token in spec["tokenizers"].items():
            (staging / subfolder).mkdir()
            for filename, text in _tokenizer_files(pad_token).items():
                (staging / subfolder / filename).write_text(text, encoding="utf-8")
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "model_index.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
