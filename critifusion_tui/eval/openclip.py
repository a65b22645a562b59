"""open_clip CLIP state dicts (as HPSv2 publishes them) in transformers' CLIPModel names.

open_clip itself cannot be imported here (it needs torchvision, which does not import beside
the CPU torch build), and the conversion is a renaming plus three reshapes:

- attention: open_clip's fused ``attn.in_proj_weight``/``in_proj_bias`` (q, k, v stacked on
  the first axis, as ``nn.MultiheadAttention``) splits into ``q_proj``, ``k_proj``, ``v_proj``;
- projections: open_clip multiplies ``x @ text_projection`` and ``x @ visual.proj``, a
  ``Linear`` computes ``x @ W.T``, so both are transposed;
- ``visual.class_embedding`` and the positional embeddings keep their shapes.

The architecture (head counts, which the weights do not determine: ViT-H-14's vision tower
has 16 heads of width 80) comes from the companion HF config, ``eval.hpsv2_clip``.
"""

from __future__ import annotations

import re

# open_clip name -> transformers name, for one residual block.
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}

_SINGLE = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' name
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}

_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}

REQUIRED = [
    *_SINGLE,
    *_TRANSPOSED,
    "transformer.resblocks.0.attn.in_proj_weight",
    "visual.transformer.resblocks.0.attn.in_proj_weight",
]


def block_count(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def openclip_to_transformers(state: dict) -> dict:
    """The same tensors under transformers' ``CLIPModel`` names (KeyError if one is missing)."""
    out = {new: state[old] for old, new in _SINGLE.items()}
    for old, new in _TRANSPOSED.items():
        out[new] = state[old].t().contiguous()
    for src, dst in (
        ("transformer.resblocks.", "text_model.encoder.layers."),
        ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
    ):
        for i in range(block_count(state, src)):
            a, b = f"{src}{i}.", f"{dst}{i}."
            for old, new in _BLOCK.items():
                out[b + new] = state[a + old]
            weight = state[a + "attn.in_proj_weight"]
            bias = state[a + "attn.in_proj_bias"]
            for name, w, bb in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, dim=0), bias.chunk(3, dim=0)):
                out[f"{b}self_attn.{name}.weight"] = w.contiguous()
                out[f"{b}self_attn.{name}.bias"] = bb.contiguous()
    return out
