"""Each scorer against an independent computation on the same tiny weights."""

from __future__ import annotations

import pytest
import torch

from tests.eval import reference, tiny
from tests.eval.conftest import PROMPTS


def _load(metric, eval_config, batch_size=2):
    from critifusion_tui.eval import scorers

    prepared = scorers.prepare(metric, eval_config)
    return scorers.load(prepared, device="cpu", dtype=torch.float32, batch_size=batch_size)


def _distinct(values):
    # A scorer that answers the same number for everything would pass a loose comparison.
    assert len({round(v, 5) for v in values}) == len(values), values


def test_pickscore_is_logit_scale_times_cosine(eval_config, weights, images):
    from transformers import CLIPModel, CLIPProcessor

    scorer = _load("pickscore", eval_config)
    got = scorer.score(images[28], PROMPTS)

    model = CLIPModel.from_pretrained(weights["pickscore_model"]).eval()
    proc = CLIPProcessor.from_pretrained(weights["pickscore_processor"])
    tokens = proc.tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    pixels = torch.stack([reference.pixels_of(im) for im in images[28]])
    with torch.no_grad():
        # Through the towers by hand: pooled output, projection, cosine, scale.
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        expected = model.logit_scale.exp() * reference.cosine(image, text)
    assert got == pytest.approx(expected.tolist(), abs=1e-4)
    _distinct(got)
    # logit_scale is exp(log 50) = 50: |score| <= 50 and the cosine is not trivially 1.
    assert all(abs(v) <= 50.0 + 1e-4 for v in got)


def test_hpsv2_converts_open_clip_weights_and_scores_the_cosine(eval_config, weights, images):
    scorer = _load("hpsv2", eval_config)
    got = scorer.score(images[28], PROMPTS)

    sd = torch.load(weights["hpsv2_checkpoint"], weights_only=True)["state_dict"]
    ids = scorer.processor.tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )["input_ids"]
    pixels = torch.stack([reference.pixels_of(im) for im in images[28]])
    with torch.no_grad():
        text = reference.openclip_text(sd, ids, tiny.TEXT_HEADS, tiny.TEXT_LAYERS)
        image = reference.openclip_image(sd, pixels, tiny.VISION_HEADS, tiny.VISION_LAYERS)
    expected = reference.cosine(image, text)
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    _distinct(got)
    assert all(-1.0 <= v <= 1.0 for v in got)


def test_hpsv2_batches_give_the_same_scores_as_one_by_one(eval_config, images):
    batched = _load("hpsv2", eval_config, batch_size=4).score(images[28], PROMPTS)
    single = _load("hpsv2", eval_config, batch_size=1).score(images[28], PROMPTS)
    assert batched == pytest.approx(single, abs=1e-5)


def test_imagereward_matches_a_hand_written_blip_forward(eval_config, weights, images):
    scorer = _load("imagereward", eval_config)
    long_prompt = " ".join(["red fox"] * 40)  # past 35 tokens: truncated as the original
    prompts = [*PROMPTS[:3], long_prompt]
    got = scorer.score(images[32], prompts)

    sd = torch.load(weights["imagereward_checkpoint"], weights_only=True)
    tokens = scorer.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape == (4, 35) and tokens["attention_mask"][3].all()
    pixels = torch.stack([reference.pixels_of(im) for im in images[32]])
    with torch.no_grad():
        image = reference.blip_vit(sd, pixels, heads=tiny.IR_VIT // 64)
        cls = reference.blip_bert_cls(
            sd,
            tokens["input_ids"],
            tokens["attention_mask"],
            image,
            tiny.IR_BERT["num_attention_heads"],
            tiny.IR_BERT["num_hidden_layers"],
        )
        raw = reference.mlp_chain(sd, cls, "mlp.layers.")
    expected = (raw - 0.16717362830052426) / 1.0333394966054072
    assert got == pytest.approx(expected.tolist(), abs=1e-4)
    _distinct(got)


def test_imagereward_a_batch_neighbour_does_not_change_a_score(eval_config, images):
    # Image tokens and padded prompts of one item must not leak into another's attention.
    scorer = _load("imagereward", eval_config)
    alone = scorer.score(images[32][:1], ["a red fox"])
    beside = scorer.score(images[32][:2], ["a red fox", "a blue cube on a green sphere in the forest"])
    assert alone[0] == pytest.approx(beside[0], rel=1e-5)


def test_aesthetic_is_the_mlp_over_the_normalised_clip_embedding(eval_config, weights, images):
    from transformers import CLIPModel

    scorer = _load("aesthetic", eval_config)
    got = scorer.score(images[28], PROMPTS)
    # Text-free: other prompts, same scores.
    assert scorer.score(images[28], ["x"] * 4) == pytest.approx(got, abs=1e-6)

    model = CLIPModel.from_pretrained(weights["aesthetic_clip"]).eval()
    head = torch.load(weights["aesthetic_checkpoint"], weights_only=True)
    pixels = torch.stack([reference.pixels_of(im) for im in images[28]])
    with torch.no_grad():
        embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        expected = reference.mlp_chain(head, embeds / embeds.norm(dim=-1, keepdim=True), "layers.")
    assert got == pytest.approx(expected.tolist(), abs=1e-4)
    _distinct(got)


def test_aesthetic_reads_a_bare_sequential_state_dict(tmp_path, eval_config, weights, images):
    head = torch.load(weights["aesthetic_checkpoint"], weights_only=True)
    bare = tmp_path / "bare.pth"
    torch.save({k.removeprefix("layers."): v for k, v in head.items()}, bare)
    config = eval_config.model_copy(update={"aesthetic_checkpoint": str(bare)})
    assert _load("aesthetic", config).score(images[28], PROMPTS) == pytest.approx(
        _load("aesthetic", eval_config).score(images[28], PROMPTS), abs=1e-6
    )
