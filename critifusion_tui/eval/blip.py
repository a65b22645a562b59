"""The two towers of ImageReward, in plain torch, under the key names of its checkpoint.

ImageReward.pt holds ``blip.visual_encoder.*`` (BLIP's timm-style ViT: ``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``norm``), ``blip.text_encoder.*`` (BLIP's "med" BERT: ``embeddings.{word_embeddings,
position_embeddings, LayerNorm}`` with no token-type embeddings, ``encoder.layer.N.{attention,
crossattention, intermediate, output}``) and ``mlp.layers.*`` (the head). Writing the modules
here keeps those names as they are, so the checkpoint loads strictly with no renaming and no
dependence on transformers' internal BLIP classes, which change between releases.

Sizes come from the weights (ViT width, depth, patch and image size) and from
``med_config.json`` (BERT); the ViT's heads are its width / 64, as BLIP's base (768/12) and
large (1024/16) both are.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VIT_HEAD_WIDTH = 64


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """BLIP's ViT (pre-norm blocks, LayerNorm eps 1e-6, exact GELU); returns every token."""

    def __init__(self, *, dim: int, depth: int, patch: int, tokens: int, hidden: int) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        heads = max(1, dim // VIT_HEAD_WIDTH)
        self.blocks = nn.ModuleList(_Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_state(cls, state: dict, prefix: str) -> VisionTransformer:
        dim = state[f"{prefix}cls_token"].shape[-1]
        depth = 1 + max(int(k[len(prefix) + 7 :].split(".")[0]) for k in state if k.startswith(f"{prefix}blocks."))
        return cls(
            dim=dim,
            depth=depth,
            patch=state[f"{prefix}patch_embed.proj.weight"].shape[-1],
            tokens=state[f"{prefix}pos_embed"].shape[1],
            hidden=state[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0],
        )

    @property
    def image_size(self) -> int:
        grid = math.isqrt(self.pos_embed.shape[1] - 1)
        return grid * self.patch_embed.proj.kernel_size[0]

    def forward(self, pixels):
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x, context, bias):
        b, n, c = x.shape

        def split(t):
            return t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(b, n, c)


class _Output(nn.Module):
    def __init__(self, inner: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _Attention2(nn.Module):
    # "attention" / "crossattention": `.self` (q, k, v) and `.output` (dense + LayerNorm).
    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden, heads, kv_width)
        self.output = _Output(hidden, hidden, eps)

    def forward(self, x, context, bias):
        return self.output(self.self(x, context, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x):
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, encoder_width: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention2(hidden, heads, hidden, eps)
        self.crossattention = _Attention2(hidden, heads, encoder_width, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _Output(inner, hidden, eps)

    def forward(self, x, text_bias, image):
        x = self.attention(x, x, text_bias)
        x = self.crossattention(x, image, None)  # every image token is attended (all ones mask)
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, pad: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=pad)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions))


class _Encoder(nn.Module):
    def __init__(self, layers: list[_Layer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class TextEncoder(nn.Module):
    """BLIP's BERT in its "multimodal" mode: self-attention over the prompt (padding masked),
    cross-attention to the image tokens in every layer; returns every token's state."""

    def __init__(self, config: dict, encoder_width: int) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        act = config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"med_config hidden_act {act!r} is not supported (ImageReward uses gelu)")
        self.embeddings = _Embeddings(
            config["vocab_size"], hidden, config.get("max_position_embeddings", 512), config.get("pad_token_id", 0), eps
        )
        self.encoder = _Encoder(
            [
                _Layer(hidden, config["num_attention_heads"], config["intermediate_size"], encoder_width, eps)
                for _ in range(config["num_hidden_layers"])
            ]
        )

    def forward(self, ids, mask, image):
        x = self.embeddings(ids)
        # BLIP's extended mask: 0 where attended, -10000 on padding (added to the scores).
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, bias, image)
        return x
