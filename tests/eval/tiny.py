"""Tiny random models in the published file formats, for the eval tests (no download ever).

- a CLIP as an HF folder (``save_pretrained``: config.json, model.safetensors, tokenizer and
  preprocessor files), standing in for PickScore_v1, laion's ViT-H-14 and openai's ViT-L/14;
- an open_clip CLIP state dict with open_clip's key names inside ``{"state_dict": ...}``,
  saved with ``torch.save`` as HPSv2's ``HPS_v2.1_compressed.pt`` is; its vision tower has heads
  of width 16 that are not 64 wide, like ViT-H-14's 80, so the head count must come from config;
- an ImageReward ``.pt`` (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``,
  plus the unused projections and position_ids buffer the real one carries), its
  ``med_config.json`` and a BERT tokenizer folder;
- an aesthetic ``.pth``: the MLP's state dict with keys ``layers.0/2/4/6/7``.

Weights are drawn wider than an initialiser would (std 0.2) so scores differ between images
and prompts, and a wrong transpose or split changes the number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# The tiny CLIP's shape (shared by the open_clip state dict, so the HF config describes it).
TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS = 32, 2, 2
VISION_WIDTH, VISION_HEADS, VISION_LAYERS = 48, 3, 2
IMAGE, PATCH, EMBED = 28, 14, 24


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("logit_scale"):
                param.fill_(math.log(50.0))
            elif "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(std * torch.randn(param.shape, generator=gen))


def clip_config():
    from transformers import CLIPConfig

    from critifusion_tui.engine.tiny_sdxl import build_tiny_clip_tokenizer

    tok = build_tiny_clip_tokenizer()
    return CLIPConfig(
        text_config=dict(
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=TEXT_HEADS,
            vocab_size=len(tok),
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=VISION_WIDTH,
            intermediate_size=4 * VISION_WIDTH,
            num_hidden_layers=VISION_LAYERS,
            num_attention_heads=VISION_HEADS,
            image_size=IMAGE,
            patch_size=PATCH,
            hidden_act="gelu",
        ),
        projection_dim=EMBED,
    ), tok


def save_clip_folder(folder: Path, seed: int) -> Path:
    """A tiny random CLIPModel with its processor, as an HF folder."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    config, tok = clip_config()
    model = CLIPModel(config)
    _randomise(model, seed)
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder


def openclip_state(seed: int) -> dict:
    """Random tensors under open_clip's names for a CLIP of the tiny shape above."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2):
        return std * torch.randn(shape, generator=gen)

    def norm(prefix, width):
        return {f"{prefix}.weight": 1.0 + 0.1 * torch.randn(width, generator=gen), f"{prefix}.bias": rnd(width)}

    def blocks(prefix, width, layers):
        out = {}
        for i in range(layers):
            b = f"{prefix}{i}."
            out |= norm(b + "ln_1", width) | norm(b + "ln_2", width)
            out |= {
                b + "attn.in_proj_weight": rnd(3 * width, width),
                b + "attn.in_proj_bias": rnd(3 * width),
                b + "attn.out_proj.weight": rnd(width, width),
                b + "attn.out_proj.bias": rnd(width),
                b + "mlp.c_fc.weight": rnd(4 * width, width),
                b + "mlp.c_fc.bias": rnd(4 * width),
                b + "mlp.c_proj.weight": rnd(width, 4 * width),
                b + "mlp.c_proj.bias": rnd(width),
            }
        return out

    _, tok = clip_config()
    state = {
        "token_embedding.weight": rnd(len(tok), TEXT_WIDTH),
        "positional_embedding": rnd(77, TEXT_WIDTH),
        "text_projection": rnd(TEXT_WIDTH, EMBED),
        "logit_scale": torch.tensor(math.log(100.0)),
        "visual.class_embedding": rnd(VISION_WIDTH),
        "visual.conv1.weight": rnd(VISION_WIDTH, 3, PATCH, PATCH, std=0.05),
        "visual.positional_embedding": rnd((IMAGE // PATCH) ** 2 + 1, VISION_WIDTH),
        "visual.proj": rnd(VISION_WIDTH, EMBED),
    }
    state |= norm("ln_final", TEXT_WIDTH) | norm("visual.ln_pre", VISION_WIDTH) | norm("visual.ln_post", VISION_WIDTH)
    state |= blocks("transformer.resblocks.", TEXT_WIDTH, TEXT_LAYERS)
    state |= blocks("visual.transformer.resblocks.", VISION_WIDTH, VISION_LAYERS)
    return state


def save_hpsv2(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": openclip_state(seed)}, path)
    return path


# ImageReward's tiny shape: a ViT of width 128 (2 heads of 64, as BLIP's width / 64 rule),
# 32 px input in 16 px patches; a BERT of width 32.
IR_VIT, IR_VIT_DEPTH, IR_PATCH, IR_IMAGE = 128, 2, 16, 32
IR_BERT = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64)
WORDS = "a red fox in forest blue cube on green sphere the of cat dog photo".split()


def save_bert_tokenizer(folder: Path) -> Path:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def imagereward_state(seed: int, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2):
        return std * torch.randn(shape, generator=gen)

    def lin(name, out_dim, in_dim):
        return {f"{name}.weight": rnd(out_dim, in_dim), f"{name}.bias": rnd(out_dim)}

    def ln(name, width):
        return {f"{name}.weight": 1.0 + 0.1 * torch.randn(width, generator=gen), f"{name}.bias": rnd(width)}

    v, tokens = "blip.visual_encoder.", (IR_IMAGE // IR_PATCH) ** 2 + 1
    state = {
        v + "cls_token": rnd(1, 1, IR_VIT),
        v + "pos_embed": rnd(1, tokens, IR_VIT),
        v + "patch_embed.proj.weight": rnd(IR_VIT, 3, IR_PATCH, IR_PATCH, std=0.05),
        v + "patch_embed.proj.bias": rnd(IR_VIT),
    }
    for i in range(IR_VIT_DEPTH):
        b = f"{v}blocks.{i}."
        state |= ln(b + "norm1", IR_VIT) | ln(b + "norm2", IR_VIT) | lin(b + "attn.qkv", 3 * IR_VIT, IR_VIT)
        state |= (
            lin(b + "attn.proj", IR_VIT, IR_VIT)
            | lin(b + "mlp.fc1", 4 * IR_VIT, IR_VIT)
            | lin(b + "mlp.fc2", IR_VIT, 4 * IR_VIT)
        )
    state |= ln(v + "norm", IR_VIT)

    t, h, inner = "blip.text_encoder.", IR_BERT["hidden_size"], IR_BERT["intermediate_size"]
    state |= {
        t + "embeddings.word_embeddings.weight": rnd(vocab, h),
        t + "embeddings.position_embeddings.weight": rnd(512, h),
        t + "embeddings.position_ids": torch.arange(512)[None],
    }
    state |= ln(t + "embeddings.LayerNorm", h)
    for i in range(IR_BERT["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for part, kv in (("attention", h), ("crossattention", IR_VIT)):
            state |= (
                lin(f"{b}{part}.self.query", h, h)
                | lin(f"{b}{part}.self.key", h, kv)
                | lin(f"{b}{part}.self.value", h, kv)
            )
            state |= lin(f"{b}{part}.output.dense", h, h) | ln(f"{b}{part}.output.LayerNorm", h)
        state |= (
            lin(b + "intermediate.dense", inner, h) | lin(b + "output.dense", h, inner) | ln(b + "output.LayerNorm", h)
        )
    # The real head's sizes after the input: 1024, 128, 64, 16, 1.
    for key, (o, i) in zip(("0", "2", "4", "6", "7"), ((1024, h), (128, 1024), (64, 128), (16, 64), (1, 16))):
        state |= lin(f"mlp.layers.{key}", o, i)
    # Carried by the real checkpoint, unused by the score.
    state |= lin("blip.vision_proj", 256, IR_VIT) | lin("blip.text_proj", 256, h)
    return state


def save_imagereward(folder: Path, seed: int) -> dict[str, Path]:
    """ImageReward.pt, med_config.json and a tokenizer folder."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = save_bert_tokenizer(folder / "bert")
    vocab = len(AutoTokenizer.from_pretrained(tok_dir)) + 2  # BLIP adds [DEC] and [ENC]
    config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab,
        "encoder_width": 768,
        "add_cross_attention": True,
        **IR_BERT,
    }
    (folder / "med_config.json").write_text(json.dumps(config, indent=2))
    torch.save(imagereward_state(seed, vocab), folder / "ImageReward.pt")
    return {"checkpoint": folder / "ImageReward.pt", "med_config": folder / "med_config.json", "tokenizer": tok_dir}


def save_aesthetic(folder: Path, seed: int, width: int = EMBED) -> Path:
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, (o, i) in zip(("0", "2", "4", "6", "7"), ((1024, width), (128, 1024), (64, 128), (16, 64), (1, 16))):
        state[f"layers.{key}.weight"] = 0.2 * torch.randn(o, i, generator=gen)
        state[f"layers.{key}.bias"] = 0.2 * torch.randn(o, generator=gen)
    path = folder / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, path)
    return path
