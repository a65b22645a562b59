"""ImageReward (Xu et al.): BLIP's ViT-L image encoder, BLIP's BERT reading the prompt with
cross-attention to the image, and an MLP head on the [CLS] state.

Published as ``ImageReward.pt`` (the whole model's state dict: ``blip.visual_encoder.*``,
``blip.text_encoder.*``, ``mlp.layers.{0,2,4,6,7}.*``, plus projections the score does not use)
and ``med_config.json`` (the BERT config; its ``encoder_width`` is overridden by the ViT's width,
as BLIP does). The prompt is tokenized with bert-base-uncased plus BLIP's ``[DEC]``/``[ENC]``
tokens, padded and truncated to 35 tokens; the image is resized (shorter side, bicubic),
centre-cropped to the ViT's input size and normalised with CLIP's mean/std. The head's output
is standardised as the original: ``(r - 0.16717362830052426) / 1.0333394966054072``.
"""

from __future__ import annotations

import json

from critifusion_tui.eval.base import Scorer, ScorerError
from critifusion_tui.eval.loading import load_matching, load_state_dict, quiet_transformers, require_keys

MAX_TOKENS = 35
MEAN = 0.16717362830052426
STD = 1.0333394966054072
VISION = "blip.visual_encoder."
TEXT = "blip.text_encoder."
HEAD = "mlp."


def _sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class ImageReward(Scorer):
    metric = "imagereward"

    def __init__(self, checkpoint, med_config, tokenizer_dir, **kwargs) -> None:
        super().__init__(**kwargs)
        from transformers import AutoTokenizer

        from critifusion_tui.eval.aesthetic import LINEAR_KEYS, build_head
        from critifusion_tui.eval.blip import TextEncoder, VisionTransformer

        try:
            config = json.loads(med_config.read_text(encoding="utf-8"))
            for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
                int(config[key])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ScorerError(f"{self.metric}: {med_config} is not a BERT config (med_config.json): {exc}") from None

        state = load_state_dict(checkpoint, self.metric)
        what = "an ImageReward checkpoint"
        require_keys(
            state,
            [
                f"{VISION}cls_token",
                f"{VISION}pos_embed",
                f"{VISION}patch_embed.proj.weight",
                f"{VISION}blocks.0.mlp.fc1.weight",
                f"{TEXT}embeddings.word_embeddings.weight",
                *(f"{HEAD}layers.{k}.weight" for k in LINEAR_KEYS),
            ],
            self.metric,
            checkpoint,
            what,
        )
        self.vision = VisionTransformer.from_state(state, VISION)
        self.text = TextEncoder(config, encoder_width=self.vision.cls_token.shape[-1])
        self.head = build_head(_sub(state, HEAD))
        for module, prefix in ((self.vision, VISION), (self.text, TEXT), (self.head, HEAD)):
            load_matching(
                module, _sub(state, prefix), self.metric, checkpoint, f"{what} with this med_config.json ({prefix}*)"
            )
        self.vision = self.vision.to(self.device, self.dtype).eval()
        self.text = self.text.to(self.device, self.dtype).eval()
        self.head = self.head.to(self.device).eval()  # float32, as the original's .float()

        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        # BLIP's init_tokenizer adds these two; the checkpoint's vocabulary counts them.
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        if len(tokenizer) != config["vocab_size"]:
            raise ScorerError(
                f"{self.metric}: the tokenizer ({tokenizer_dir}) has {len(tokenizer)} tokens with BLIP's two added,"
                f" med_config.json says vocab_size {config['vocab_size']}: use bert-base-uncased's tokenizer"
            )
        self.tokenizer = tokenizer
        self.image_size = self.vision.image_size

    def pixels(self, images):
        import torch

        from critifusion_tui.eval.images import normalize, resize_shorter_center_crop, to_tensor

        return torch.stack([normalize(to_tensor(resize_shorter_center_crop(im, self.image_size))) for im in images])

    def _score_batch(self, images, prompts):
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        image = self.vision(self.pixels(images).to(self.device, self.dtype))
        states = self.text(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device), image)
        reward = self.head(states[:, 0, :].float())[:, 0]
        return (reward - MEAN) / STD
