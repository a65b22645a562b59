"""Independent forward passes for the eval tests, written from the published models'
descriptions with plain tensor operations on the raw state dicts (not the package's modules),
so a wrong key, transpose, split, mask or normalisation in the scorers shows as a mismatch."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def pixels_of(image) -> torch.Tensor:
    """A square PIL image already at the model's size: just scaled and normalised."""
    array = (np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0 - OPENAI_MEAN) / OPENAI_STD
    return torch.tensor(array, dtype=torch.float32).permute(2, 0, 1)


def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _lin(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _heads_attention(q, k, v, heads, bias=None):
    b, n, c = q.shape
    m = k.shape[1]
    d = c // heads
    q = q.reshape(b, n, heads, d).transpose(1, 2)
    k = k.reshape(b, m, heads, d).transpose(1, 2)
    v = v.reshape(b, m, heads, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        scores = scores + bias
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


# --- open_clip CLIP (HPSv2) -----------------------------------------------------------------


def _oc_block(x, sd, p, heads, causal):
    h = _ln(x, sd, p + "ln_1", 1e-5)
    qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
    q, k, v = qkv.chunk(3, dim=-1)
    bias = None
    if causal:
        n = x.shape[1]
        bias = torch.full((n, n), float("-inf")).triu(1)
    x = x + _lin(_heads_attention(q, k, v, heads, bias), sd, p + "attn.out_proj")
    h = _ln(x, sd, p + "ln_2", 1e-5)
    return x + _lin(F.gelu(_lin(h, sd, p + "mlp.c_fc")), sd, p + "mlp.c_proj")


def openclip_text(sd, ids, heads, layers):
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(layers):
        x = _oc_block(x, sd, f"transformer.resblocks.{i}.", heads, causal=True)
    x = _ln(x, sd, "ln_final", 1e-5)
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def openclip_image(sd, pixels, heads, layers):
    w = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(x, sd, "visual.ln_pre", 1e-5)
    for i in range(layers):
        x = _oc_block(x, sd, f"visual.transformer.resblocks.{i}.", heads, causal=False)
    return _ln(x[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]


def cosine(a, b):
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


# --- ImageReward ----------------------------------------------------------------------------


def blip_vit(sd, pixels, heads):
    p = "blip.visual_encoder."
    x = (
        F.conv2d(
            pixels,
            sd[p + "patch_embed.proj.weight"],
            sd[p + "patch_embed.proj.bias"],
            stride=sd[p + "patch_embed.proj.weight"].shape[-1],
        )
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[p + "pos_embed"]
    i = 0
    while f"{p}blocks.{i}.norm1.weight" in sd:
        b = f"{p}blocks.{i}."
        q, k, v = _lin(_ln(x, sd, b + "norm1", 1e-6), sd, b + "attn.qkv").chunk(3, dim=-1)
        x = x + _lin(_heads_attention(q, k, v, heads), sd, b + "attn.proj")
        x = x + _lin(F.gelu(_lin(_ln(x, sd, b + "norm2", 1e-6), sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
        i += 1
    return _ln(x, sd, p + "norm", 1e-6)


def blip_bert_cls(sd, ids, mask, image, heads, layers):
    t = "blip.text_encoder."
    x = (
        sd[t + "embeddings.word_embeddings.weight"][ids]
        + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    )
    x = _ln(x, sd, t + "embeddings.LayerNorm", 1e-12)
    pad_bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(layers):
        b = f"{t}encoder.layer.{i}."
        for part, context, bias in (("attention", None, pad_bias), ("crossattention", image, None)):
            ctx = x if context is None else context
            a = _heads_attention(
                _lin(x, sd, f"{b}{part}.self.query"),
                _lin(ctx, sd, f"{b}{part}.self.key"),
                _lin(ctx, sd, f"{b}{part}.self.value"),
                heads,
                bias,
            )
            x = _ln(_lin(a, sd, f"{b}{part}.output.dense") + x, sd, f"{b}{part}.output.LayerNorm", 1e-12)
        h = F.gelu(_lin(x, sd, b + "intermediate.dense"))
        x = _ln(_lin(h, sd, b + "output.dense") + x, sd, b + "output.LayerNorm", 1e-12)
    return x[:, 0]


def mlp_chain(sd, x, prefix):
    for key in ("0", "2", "4", "6", "7"):
        x = _lin(x, sd, f"{prefix}{key}")
    return x[:, 0]
