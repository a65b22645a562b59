"""PickScore (Kirstain et al.): a CLIP-H fine-tuned on Pick-a-Pic preferences, published as a
transformers ``CLIPModel`` folder (yuvalkirstain/PickScore_v1) used with the processor of
laion/CLIP-ViT-H-14-laion2B-s32B-b79K.

score = ``logit_scale.exp() * cos(text_embeds, image_embeds)``, as PickScore's own snippet,
taken from the forward pass's ``text_embeds``/``image_embeds``: in transformers 5
``get_image_features`` returns an output object, not a tensor, so the common snippet breaks.
"""

from __future__ import annotations

from critifusion_tui.eval.base import Scorer
from critifusion_tui.eval.loading import from_pretrained_checked, quiet_transformers


class PickScore(Scorer):
    metric = "pickscore"

    def __init__(self, model_dir, processor_dir, **kwargs) -> None:
        super().__init__(**kwargs)
        from transformers import CLIPModel, CLIPProcessor

        with quiet_transformers():
            self.processor = CLIPProcessor.from_pretrained(str(processor_dir), local_files_only=True)
        model = from_pretrained_checked(CLIPModel, model_dir, self.metric, dtype=self.dtype)
        self.model = model.to(self.device).eval()

    def _score_batch(self, images, prompts):
        inputs = self.processor(
            text=prompts, images=images, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        out = self.model(**inputs)
        image = out.image_embeds.float()
        text = out.text_embeds.float()
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        # One prompt per image: the diagonal of the similarity matrix, computed directly.
        return self.model.logit_scale.float().exp() * (image * text).sum(dim=-1)
