"""Write a diffusers pipeline back into the ORIGINAL single-file checkpoint layout (test helper).

Real SDXL / SD 1.5 checkpoints shared as one ``.safetensors`` / ``.ckpt`` file (the
``sd_xl_base_1.0.safetensors`` of Stability, ``v1-5-pruned-emaonly`` and every fine-tune made
from them) do not use diffusers' key names: they keep the names of the original training code
(Stability's "sgm" repository for SDXL, CompVis' "ldm" for SD 1.x). The app loads such files
with ``from_single_file``; to test that offline we need such a file, and the only weights we
have are the tiny random pipelines of ``critifusion_tui.engine.tiny_sdxl``. This module is the
inverse of diffusers' own single-file conversion (``diffusers/loaders/single_file_utils.py``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``): it maps a pipeline's weights to the original names, so that
``from_single_file(file, config=<diffusers folder of the same pipeline>)`` gives back exactly
the same tensors.

Layouts written (prefix -> component):

* ``model.diffusion_model.``  UNet, LDM names (``input_blocks`` / ``middle_block`` /
  ``output_blocks`` / ``time_embed`` / ``label_emb`` / ``out``); SDXL and SD 1.5 alike.
* ``first_stage_model.``      VAE, LDM names (``encoder.down.N.block.M``, ``mid.attn_1`` ...).
* SDXL: ``conditioner.embedders.0.transformer.text_model.``  text encoder 1, Hugging Face CLIP
  names; ``conditioner.embedders.1.model.``  text encoder 2, OpenCLIP names.
* SD 1.5: ``cond_stage_model.transformer.text_model.``  the text encoder, Hugging Face CLIP names.

Every name is derived from the model's own config and state dict (number of levels, layers per
block, which levels have attention), never from the sizes of the real SDXL: the tiny UNet has
two levels, the real one three, and both go through the same code.

For SDXL round trips through ``from_single_file`` use ``build_tiny_sdxl_distinct_widths``: with
``build_tiny_sdxl`` as is, diffusers loads text encoder 1's weights into ``text_encoder_2``
(both are 32 wide; see that function).

Only torch is imported at module load; the pipelines are passed in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SD15_PREFIXES",
    "SDXL_PREFIXES",
    "build_tiny_sdxl_distinct_widths",
    "save_single_file",
    "to_original_sd15",
    "to_original_sdxl",
    "unet_to_ldm",
    "vae_to_ldm",
    "clip_to_hf_text_model",
    "clip_to_open_clip",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# SDXL (sgm): the CLIP ViT-L encoder is kept in Hugging Face names under embedders.0, the
# OpenCLIP ViT-bigG encoder in OpenCLIP's own names under embedders.1.
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
# SD 1.x (ldm): the one CLIP ViT-L encoder, Hugging Face names.
SD15_CLIP_PREFIX = "cond_stage_model.transformer."

SDXL_PREFIXES = (UNET_PREFIX, VAE_PREFIX, SDXL_CLIP_L_PREFIX, SDXL_OPEN_CLIP_PREFIX)
SD15_PREFIXES = (UNET_PREFIX, VAE_PREFIX, SD15_CLIP_PREFIX)

# OpenCLIP's initial logit scale, log(1 / 0.07). Only used by CLIP's contrastive loss, never by
# a diffusion pipeline, but the real SDXL file carries it, so the fixture does too.
_OPEN_CLIP_LOGIT_SCALE = math.log(1 / 0.07)


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------

# Inside a ResNet block LDM numbers the layers of its nn.Sequential's; diffusers names them.
# (in_layers = [GroupNorm, SiLU, Conv], out_layers = [GroupNorm, SiLU, Dropout, Conv],
# emb_layers = [SiLU, Linear]: hence the odd indices.)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

# Top-level UNet layers (time_embed / label_emb are nn.Sequential's [Linear, SiLU, Linear]).
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    # SDXL's size/crop + pooled-text conditioning ("text_time") is LDM's label_emb; a
    # class-conditioned UNet uses the same slot for class_embedding.
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _rename_resnet(rest: str) -> str:
    """``norm1.weight`` -> ``in_layers.0.weight`` (the part of a key after the block prefix)."""
    layer, _, param = rest.partition(".")
    return f"{_UNET_RESNET[layer]}.{param}"


def _has_attention(block: Any) -> bool:
    # CrossAttn{Down,Up}Block2D has .attentions; the plain Down/UpBlock2D has none.
    return len(getattr(block, "attentions", None) or []) > 0


def _unet_key_map(unet: Any) -> dict[str, str]:
    """Diffusers prefix -> LDM prefix for every block of this UNet, built from its config.

    LDM numbers the encoder as one flat list ``input_blocks`` and the decoder as
    ``output_blocks``; each entry is an nn.Sequential whose item 0 is a ResNet (or, for a
    downsampler, the ``op`` conv), item 1 the attention if the level has one, and the
    upsampler comes last (item 1 or 2). Diffusers groups the same layers per level.
    """
    config = unet.config
    n_levels = len(config.block_out_channels)
    per_level = config.layers_per_block
    if not isinstance(per_level, int):
        raise ValueError(f"per-level layers_per_block {per_level!r} is not an LDM layout")
    prefixes: dict[str, str] = {}

    # Encoder: input_blocks.0 is conv_in; then each level has per_level (resnet[, attention])
    # entries, followed by one downsampler entry on every level but the deepest.
    index = 1
    for level in range(n_levels):
        has_attention = _has_attention(unet.down_blocks[level])
        for layer in range(per_level):
            prefixes[f"down_blocks.{level}.resnets.{layer}"] = f"input_blocks.{index}.0"
            if has_attention:
                prefixes[f"down_blocks.{level}.attentions.{layer}"] = f"input_blocks.{index}.1"
            index += 1
        if level < n_levels - 1:
            prefixes[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1

    # Middle: resnet, attention, resnet.
    prefixes["mid_block.resnets.0"] = "middle_block.0"
    prefixes["mid_block.attentions.0"] = "middle_block.1"
    prefixes["mid_block.resnets.1"] = "middle_block.2"

    # Decoder: per_level + 1 entries per level (the extra one takes the skip connection of
    # the downsampler); the upsampler joins the level's last entry, after the attention.
    index = 0
    for level in range(n_levels):
        has_attention = _has_attention(unet.up_blocks[level])
        for layer in range(per_level + 1):
            prefixes[f"up_blocks.{level}.resnets.{layer}"] = f"output_blocks.{index}.0"
            if has_attention:
                prefixes[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{index}.1"
            if layer == per_level and level < n_levels - 1:
                slot = 2 if has_attention else 1
                prefixes[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{index}.{slot}.conv"
            index += 1
    return prefixes


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in LDM names (without the file prefix).

    Inverse of diffusers' ``convert_ldm_unet_checkpoint``. Attention blocks (SpatialTransformer)
    keep their inner names (norm, proj_in, transformer_blocks.N.attn1.to_q, ff.net.2, ...):
    diffusers copied them from LDM, so only the block prefix changes. Tensors are not
    reshaped: proj_in/proj_out are Linear in both layouts when ``use_linear_projection``
    (SDXL) and 1x1 convs in both otherwise (SD 1.5).
    """
    block_map = _unet_key_map(unet)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            out[f"{_UNET_TOP[module]}.{param}"] = tensor
            continue
        # The trailing "." keeps "up_blocks.0.resnets.1" from matching "...resnets.10".
        for d_prefix, l_prefix in block_map.items():
            if key.startswith(d_prefix + "."):
                rest = key[len(d_prefix) + 1 :]
                if ".resnets." in d_prefix:
                    rest = _rename_resnet(rest)
                out[f"{l_prefix}.{rest}"] = tensor
                break
        else:
            raise KeyError(f"UNet key with no LDM name: {key}")
    return out


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------

# The VAE attention of diffusers is a Linear-based Attention; LDM's AttnBlock uses 1x1 convs
# named q / k / v / proj_out and a GroupNorm named norm.
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _vae_attention(rest: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    layer, _, param = rest.rpartition(".")
    name = f"{_VAE_ATTENTION[layer]}.{param}"
    if layer != "group_norm" and tensor.ndim == 2:
        # Linear (C_out, C_in) -> conv (C_out, C_in, 1, 1): diffusers drops the two trailing
        # dims when loading (conv_attn_to_linear), so the real files have them.
        tensor = tensor[:, :, None, None]
    return name, tensor


def _vae_resnet(rest: str) -> str:
    # Same names as diffusers except the 1x1 shortcut conv.
    return rest.replace("conv_shortcut.", "nin_shortcut.")


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in LDM names (without ``first_stage_model.``).

    Inverse of diffusers' ``convert_ldm_vae_checkpoint``. LDM numbers the decoder's up levels
    from the deepest: diffusers' ``decoder.up_blocks.0`` is LDM's ``decoder.up.{n-1}``.
    """
    n_up = len(vae.config.up_block_types)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in vae.state_dict().items():
        parts = key.split(".")
        coder = parts[0]  # encoder / decoder / quant_conv / post_quant_conv
        if coder in ("quant_conv", "post_quant_conv"):
            out[key] = tensor
            continue
        sub = parts[1]
        if sub in ("conv_in", "conv_out"):
            out[key] = tensor
        elif sub == "conv_norm_out":
            out[f"{coder}.norm_out.{parts[2]}"] = tensor
        elif sub == "down_blocks":  # encoder.down_blocks.I.{resnets.J|downsamplers.0.conv}...
            level, kind = parts[2], parts[3]
            rest = ".".join(parts[5:])
            if kind == "resnets":
                out[f"encoder.down.{level}.block.{parts[4]}.{_vae_resnet(rest)}"] = tensor
            else:  # downsamplers.0.conv.weight
                out[f"encoder.down.{level}.downsample.{rest}"] = tensor
        elif sub == "up_blocks":
            level = n_up - 1 - int(parts[2])
            kind = parts[3]
            rest = ".".join(parts[5:])
            if kind == "resnets":
                out[f"decoder.up.{level}.block.{parts[4]}.{_vae_resnet(rest)}"] = tensor
            else:  # upsamplers.0.conv.weight
                out[f"decoder.up.{level}.upsample.{rest}"] = tensor
        elif sub == "mid_block":
            kind, index = parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":  # LDM numbers the two mid ResNets from 1
                out[f"{coder}.mid.block_{index + 1}.{_vae_resnet(rest)}"] = tensor
            else:
                name, tensor = _vae_attention(rest, tensor)
                out[f"{coder}.mid.attn_{index + 1}.{name}"] = tensor
        else:
            raise KeyError(f"VAE key with no LDM name: {key}")
    return out


# --------------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------------


def _hf_text_model_state(text_encoder: Any) -> dict[str, torch.Tensor]:
    """The state dict with ``text_model.`` in front of the transformer's keys.

    transformers 5 (>= 5.6) flattened ``CLIPTextModel``: its keys are ``embeddings.*``,
    ``encoder.*``, ``final_layer_norm.*`` with no ``text_model.``. ``CLIPTextModelWithProjection``
    still wraps the transformer in ``.text_model`` (plus a top-level ``text_projection``).
    Original files always have ``text_model.`` (they were written with transformers 4).
    """
    state = text_encoder.state_dict()
    if hasattr(text_encoder, "text_model"):
        return dict(state)
    return {f"text_model.{k}": v for k, v in state.items()}


def clip_to_hf_text_model(text_encoder: Any, with_position_ids: bool = True) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` in the layout the original files keep it: ``text_model.*``.

    SD 1.x and SDXL stored the Hugging Face model as is (the ldm/sgm code wrapped
    ``transformers.CLIPTextModel``), so the names are transformers 4's. Those files also carry
    the ``text_model.embeddings.position_ids`` buffer (int64, shape (1, max_positions)),
    which transformers no longer saves; diffusers ignores it on load.
    """
    out = {k: v for k, v in _hf_text_model_state(text_encoder).items() if not k.startswith("text_projection")}
    if with_position_ids and "text_model.embeddings.position_ids" not in out:
        n = text_encoder.config.max_position_embeddings
        out["text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None, :]
    return out


# Per-layer names: Hugging Face CLIPEncoderLayer -> OpenCLIP ResidualAttentionBlock.
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def clip_to_open_clip(text_encoder: Any, with_logit_scale: bool = True) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP names (SDXL's second text encoder).

    Inverse of diffusers' ``convert_open_clip_checkpoint``:

    * OpenCLIP's attention is ``nn.MultiheadAttention``: one ``in_proj_weight`` of shape
      (3C, C) holding q, k, v stacked in that order (and ``in_proj_bias`` likewise), where
      Hugging Face has three Linears. diffusers splits it back at C = ``text_projection``'s
      first dimension, the width of the transformer.
    * OpenCLIP applies the projection as ``x @ text_projection`` with a (width, proj_dim)
      parameter; Hugging Face uses ``nn.Linear`` whose weight is (proj_dim, width): transposed.
    * ``positional_embedding`` is a bare parameter in OpenCLIP (same (positions, C) tensor).
    """
    # Popped as they are mapped: anything left at the end has no OpenCLIP name.
    state = _hf_text_model_state(text_encoder)
    state.pop("text_model.embeddings.position_ids", None)  # a buffer, not in OpenCLIP
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": state.pop("text_model.final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    for i in range(text_encoder.config.num_hidden_layers):
        hf = f"text_model.encoder.layers.{i}."
        oc = f"transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{param}"] = torch.cat(
                [state.pop(f"{hf}self_attn.{p}_proj.{param}") for p in ("q", "k", "v")], dim=0
            )
            for hf_name, oc_name in _OPEN_CLIP_LAYER.items():
                out[f"{oc}{oc_name}.{param}"] = state.pop(f"{hf}{hf_name}.{param}")
    if state:  # a transformers change we do not map: fail loudly rather than drop weights
        raise KeyError(f"text encoder keys with no OpenCLIP name: {sorted(state)}")
    if with_logit_scale:
        out["logit_scale"] = torch.tensor(_OPEN_CLIP_LOGIT_SCALE, dtype=out["ln_final.weight"].dtype)
    return out


# --------------------------------------------------------------------------------------------
# Whole pipelines and files
# --------------------------------------------------------------------------------------------


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def to_original_sdxl(pipe: Any, extras: bool = True) -> dict[str, torch.Tensor]:
    """A ``StableDiffusionXLPipeline`` as the single-file dict of ``sd_xl_base_1.0.safetensors``.

    ``extras`` adds the two keys real SDXL files carry that no diffusers component uses
    (``...embedders.0...position_ids`` and ``...embedders.1.model.logit_scale``), so a loader
    under test sees them too.
    """
    state: dict[str, torch.Tensor] = {}
    state.update(_prefixed(UNET_PREFIX, unet_to_ldm(pipe.unet)))
    state.update(_prefixed(VAE_PREFIX, vae_to_ldm(pipe.vae)))
    state.update(_prefixed(SDXL_CLIP_L_PREFIX, clip_to_hf_text_model(pipe.text_encoder, with_position_ids=extras)))
    state.update(_prefixed(SDXL_OPEN_CLIP_PREFIX, clip_to_open_clip(pipe.text_encoder_2, with_logit_scale=extras)))
    return state


def to_original_sd15(pipe: Any, extras: bool = True) -> dict[str, torch.Tensor]:
    """A ``StableDiffusionPipeline`` as an SD 1.5 single-file dict (``v1-5-pruned-emaonly``)."""
    state: dict[str, torch.Tensor] = {}
    state.update(_prefixed(UNET_PREFIX, unet_to_ldm(pipe.unet)))
    state.update(_prefixed(VAE_PREFIX, vae_to_ldm(pipe.vae)))
    state.update(_prefixed(SD15_CLIP_PREFIX, clip_to_hf_text_model(pipe.text_encoder, with_position_ids=extras)))
    return state


def build_tiny_sdxl_distinct_widths(seed: int = 0, width_2: int = 48) -> Any:
    """The tiny SDXL pipeline, but with text encoder 2 wider than text encoder 1.

    Why: diffusers 0.42 picks the conversion for each CLIP model of a single file by which
    keys exist AND by width: ``create_diffusers_clip_model_from_ldm`` tests "is there a
    ``conditioner.embedders.0.transformer...position_embedding.weight`` whose width equals
    this model's?" BEFORE it looks for the OpenCLIP keys of ``conditioner.embedders.1``. In
    real SDXL the widths differ (768 vs 1280), so ``text_encoder_2`` gets the OpenCLIP
    weights. In ``build_tiny_sdxl`` both encoders are 32 wide, so ``text_encoder_2`` is
    silently given text encoder 1's weights and its ``text_projection`` is never loaded
    (left on the meta device). This builder keeps everything of ``build_tiny_sdxl`` (same
    seed, tokenizers, VAE, scheduler, text encoder 1) except text encoder 2's width and the
    UNet's ``cross_attention_dim`` (32 + ``width_2``: SDXL concatenates the two encoders'
    hidden states), so the pipeline still runs. The pooled embedding stays 32 wide
    (``projection_dim``), so ``add_embedding`` is unchanged in shape.
    """
    from critifusion_tui.engine.tiny_sdxl import build_tiny_sdxl
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    pipe = build_tiny_sdxl(seed)
    width_1 = pipe.text_encoder.config.hidden_size
    if width_2 == width_1:
        raise ValueError("width_2 must differ from text encoder 1's width; that is the point")
    te2_config = pipe.text_encoder_2.config.to_dict()
    te2_config.update(hidden_size=width_2, projection_dim=pipe.text_encoder_2.config.projection_dim)
    unet_config = dict(pipe.unet.config)
    unet_config["cross_attention_dim"] = width_1 + width_2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_config)).eval()
        unet = UNet2DConditionModel.from_config(unet_config).eval()
    pipe.register_modules(text_encoder_2=text_encoder_2, unet=unet)
    return pipe


def save_single_file(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state`` as ``.safetensors`` (by suffix) or else as a ``.ckpt`` pickle.

    safetensors refuses tensors that share memory or are not contiguous (the transposed
    text projection, the in_proj concatenations are fresh, but views of one parameter are
    possible), so every tensor is cloned contiguous first. A ``.ckpt`` is written like the
    original training code wrote them, ``{"state_dict": ...}``, which diffusers unwraps.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": tensors}, path)
    return path
