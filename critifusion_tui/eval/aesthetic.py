"""LAION aesthetic predictor v2 (improved-aesthetic-predictor): an MLP over the L2-normalised
CLIP ViT-L/14 image embedding (openai/clip-vit-large-patch14). Text-free.

The published ``sac+logos+ava1-l14-linearMSE.pth`` is the MLP's state dict: Linear 768-1024,
1024-128, 128-64, 64-16, 16-1 with dropouts between and no activations (keys ``layers.0``,
``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``; copies saved from a bare
``nn.Sequential`` have the same keys without ``layers.``). Sizes are read from the weights.
"""

from __future__ import annotations

from critifusion_tui.eval.base import Scorer
from critifusion_tui.eval.loading import (
    from_pretrained_checked,
    load_matching,
    load_state_dict,
    quiet_transformers,
    require_keys,
)

# Positions of the Linear layers inside the published nn.Sequential (dropouts between).
LINEAR_KEYS = ("0", "2", "4", "6", "7")


def build_head(state: dict, prefix: str = "layers."):
    """The published MLP (also ImageReward's head), sized from `state`, with its key names."""
    import torch.nn as nn

    sizes = [tuple(state[f"{prefix}{k}.weight"].shape) for k in LINEAR_KEYS]

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            (a_out, a_in), (b_out, _), (c_out, _), (d_out, _), (e_out, _) = sizes
            # No activations between the Linear layers: the published model has none.
            self.layers = nn.Sequential(
                nn.Linear(a_in, a_out),
                nn.Dropout(0.2),
                nn.Linear(a_out, b_out),
                nn.Dropout(0.2),
                nn.Linear(b_out, c_out),
                nn.Dropout(0.1),
                nn.Linear(c_out, d_out),
                nn.Linear(d_out, e_out),
            )

        def forward(self, x):
            return self.layers(x)

    return Head()


class Aesthetic(Scorer):
    metric = "aesthetic"

    def __init__(self, checkpoint, clip_dir, **kwargs) -> None:
        super().__init__(**kwargs)
        with quiet_transformers():  # the import itself warns when torchvision is absent
            from transformers import CLIPConfig, CLIPImageProcessor, CLIPVisionModelWithProjection

        state = load_state_dict(checkpoint, self.metric)
        if "layers.0.weight" not in state and "0.weight" in state:
            state = {f"layers.{k}": v for k, v in state.items()}
        what = "the aesthetic predictor's MLP state dict (layers.0, .2, .4, .6, .7)"
        require_keys(state, [f"layers.{k}.weight" for k in LINEAR_KEYS], self.metric, checkpoint, what)
        self.head = build_head(state)
        load_matching(self.head, state, self.metric, checkpoint, what)
        self.head = self.head.to(self.device).eval()  # float32: a tiny MLP, as the original
        with quiet_transformers():
            self.processor = CLIPImageProcessor.from_pretrained(str(clip_dir), local_files_only=True)
            config = CLIPConfig.from_pretrained(str(clip_dir), local_files_only=True)
        # Only the image tower of the CLIPModel folder. Its projection size is the top-level
        # projection_dim (some configs do not repeat it inside vision_config).
        vision = config.vision_config
        # transformers annotates vision_config with what the constructor accepts (a dict or
        # None too); its __post_init__ always leaves a CLIPVisionConfig there.
        vision.projection_dim = config.projection_dim  # type: ignore[union-attr]
        clip = from_pretrained_checked(
            CLIPVisionModelWithProjection, clip_dir, self.metric, config=vision, dtype=self.dtype
        )
        self.clip = clip.to(self.device).eval()

    def _score_batch(self, images, prompts):
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        embeds = self.clip(pixel_values=pixels.to(self.device, self.dtype)).image_embeds.float()
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return self.head(embeds)[:, 0]
