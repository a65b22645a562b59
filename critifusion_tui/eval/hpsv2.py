"""HPSv2 (Wu et al.): open_clip's ViT-H-14 fine-tuned on human preference pairs.

Published as ``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt`` (xswu/HPSv2): a dict whose
``state_dict`` is an open_clip ViT-H-14 state dict (``visual.transformer.resblocks.N...``,
``token_embedding``, ``text_projection``, ``logit_scale`` ...). It is converted on load into a
transformers ``CLIPModel`` built from ``eval.hpsv2_clip``'s config (see ``openclip``).

Scoring follows HPSv2's own ``score()``: the image through its validation transform (longer side
to 224, padded to a square; the mean/std of the CLIP processor), the prompt through CLIP's
tokenizer (77 tokens, truncated), score = cosine of the normalised features (no logit scale).
"""

from __future__ import annotations

from critifusion_tui.eval.base import Scorer, ScorerError
from critifusion_tui.eval.loading import load_state_dict, quiet_transformers, require_keys

PUBLISHED = {"v2.1": "xswu/HPSv2/HPS_v2.1_compressed.pt", "v2.0": "xswu/HPSv2/HPS_v2_compressed.pt"}


class HPSv2(Scorer):
    metric = "hpsv2"

    def __init__(self, checkpoint, clip_dir, **kwargs) -> None:
        super().__init__(**kwargs)
        import torch
        from transformers import CLIPConfig, CLIPModel, CLIPProcessor

        from critifusion_tui.eval.openclip import REQUIRED, openclip_to_transformers

        state = load_state_dict(checkpoint, self.metric, inner="state_dict")
        require_keys(state, REQUIRED, self.metric, checkpoint, "an open_clip CLIP state dict")
        try:
            converted = openclip_to_transformers(state)
        except KeyError as exc:
            raise ScorerError(
                f"{self.metric}: {checkpoint} is not an open_clip CLIP state dict: it lacks {exc}"
            ) from None
        with quiet_transformers():
            config = CLIPConfig.from_pretrained(str(clip_dir), local_files_only=True)
            self.processor = CLIPProcessor.from_pretrained(str(clip_dir), local_files_only=True)
            # Checked before loading: transformers would fill a missing tensor with random
            # values and only warn; a score from half-random weights must not happen.
            with torch.device("meta"):
                expected = CLIPModel(config).state_dict()
            missing = [k for k in expected if k not in converted]
            wrong = [
                f"{k} {tuple(converted[k].shape)} vs {tuple(v.shape)}"
                for k, v in expected.items()
                if k in converted and tuple(converted[k].shape) != tuple(v.shape)
            ]
            if missing or wrong:
                detail = f"lacks {', '.join(missing[:4])}" if missing else f"has other shapes: {', '.join(wrong[:3])}"
                raise ScorerError(
                    f"{self.metric}: {checkpoint} does not fit the architecture of eval.hpsv2_clip ({clip_dir}): it {detail}"
                )
            model = CLIPModel.from_pretrained(None, config=config, state_dict=converted, dtype=self.dtype)
        # transformers wraps PreTrainedModel.to with functools.wraps, which typeshed types as an
        # unbound callable: mypy takes the device for `self`.
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        # transformers annotates vision_config with what the constructor accepts (a dict or
        # None too); its __post_init__ always leaves a CLIPVisionConfig there.
        self.image_size = config.vision_config.image_size  # type: ignore[union-attr]
        self.mean = tuple(self.processor.image_processor.image_mean)
        self.std = tuple(self.processor.image_processor.image_std)

    def pixels(self, images):
        import torch

        from critifusion_tui.eval.images import normalize, resize_longest_pad, to_tensor

        return torch.stack(
            [normalize(resize_longest_pad(to_tensor(im), self.image_size), self.mean, self.std) for im in images]
        )

    def _score_batch(self, images, prompts):
        tokens = self.processor.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        )
        out = self.model(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
            pixel_values=self.pixels(images).to(self.device, self.dtype),
        )
        image = out.image_embeds.float()
        text = out.text_embeds.float()
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return (image * text).sum(dim=-1)
