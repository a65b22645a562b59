"""The single-file fixture writer gives back, through diffusers, exactly the weights it was given.

``tests.engine.single_file_layout`` writes a diffusers pipeline in the ORIGINAL single-file
layout (``model.diffusion_model.`` / ``first_stage_model.`` / ``conditioner.embedders.*`` or
``cond_stage_model.``). These tests load that file back with diffusers' own
``from_single_file(file, config=<the pipeline's diffusers folder>, local_files_only=True)`` and
require every tensor of every component to be bit-identical (``torch.equal``), so a test of the
app's single-file loading can trust the fixture.

Architecture detection, as diffusers 0.42 does it (``single_file_utils.CHECKPOINT_KEY_NAMES`` /
``infer_diffusers_model_type``), is one key per type:

* ``xl_base`` needs ``conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias``,
  i.e. an OpenCLIP text encoder with at least 10 layers. The tiny one has 2, so a tiny SDXL
  file is detected as ``v1``.
* ``v1`` is not detected at all: it is the ``else`` at the end of the chain, whatever the
  file holds (its key ``model.diffusion_model.output_blocks.11.0.skip_connection.weight`` is
  listed in ``CHECKPOINT_KEY_NAMES`` but never consulted).

Detection only matters when ``config=`` is NOT passed (diffusers then fetches the detected
type's diffusers config from the Hub). With ``config=`` a folder, ``from_single_file`` never
calls it: the round trips below pass although both tiny files are "v1". A loader that
works offline therefore has to tell SDXL from SD 1.5 itself, from key prefixes, and pass
``config=``.

One more diffusers behaviour the tiny SDXL runs into (see
``test_equal_width_text_encoders_confuse_diffusers``): each CLIP model is converted from the
first matching key family, and the CLIP-L family of SDXL matches ``text_encoder_2`` too when
both encoders have the same width, which the tiny SDXL's do (32 and 32; real SDXL: 768 and
1280). The exact SDXL round trip therefore uses ``build_tiny_sdxl_distinct_widths``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from critifusion_tui.engine.tiny_sdxl import build_tiny_sd15, build_tiny_sdxl, save_tiny
from tests.engine.single_file_layout import (
    SD15_PREFIXES,
    SDXL_OPEN_CLIP_PREFIX,
    SDXL_PREFIXES,
    build_tiny_sdxl_distinct_widths,
    save_single_file,
    to_original_sd15,
    to_original_sdxl,
)

# The keys diffusers 0.42 tests to name a checkpoint's type (CHECKPOINT_KEY_NAMES).
XL_BASE_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
V1_KEY = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"

SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
SD15_COMPONENTS = ("unet", "vae", "text_encoder")


def _load(pipeline_class, file: Path, config: Path, **components):
    return pipeline_class.from_single_file(str(file), config=str(config), local_files_only=True, **components)


def _assert_same_weights(original, loaded, names) -> None:
    """Same keys, no tensor left on the meta device, every tensor bit-identical."""
    for name in names:
        want = getattr(original, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert set(got) == set(want), f"{name}: key sets differ: {sorted(set(got) ^ set(want))[:8]}"
        meta = [k for k, v in got.items() if v.device.type == "meta"]
        assert not meta, f"{name}: never loaded (meta): {meta[:8]}"
        different = [k for k in want if want[k].dtype != got[k].dtype or not torch.equal(want[k], got[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:8]}"


def _round_trip(pipe, convert, pipeline_class, tmp_path: Path, suffix: str):
    config = save_tiny(pipe, tmp_path / "diffusers")
    file = save_single_file(convert(pipe), tmp_path / f"model{suffix}")
    return file, config, _load(pipeline_class, file, config)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sdxl_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = build_tiny_sdxl_distinct_widths(seed=0)
    _, _, loaded = _round_trip(pipe, to_original_sdxl, StableDiffusionXLPipeline, tmp_path, suffix)
    _assert_same_weights(pipe, loaded, SDXL_COMPONENTS)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sd15_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = build_tiny_sd15(seed=0)
    _, _, loaded = _round_trip(pipe, to_original_sd15, StableDiffusionPipeline, tmp_path, suffix)
    _assert_same_weights(pipe, loaded, SD15_COMPONENTS)


def test_tiny_sdxl_as_built_round_trips_with_text_encoder_2_passed_in(tmp_path: Path) -> None:
    """``build_tiny_sdxl`` itself: exact, when text encoder 2 is converted outside the dispatch.

    Loads text encoder 2 with diffusers' own OpenCLIP converter (the one ``from_single_file``
    would use if it picked the right key family) and passes it in; the other three components
    come from the file as usual. This proves the OpenCLIP layout of the equal-width tiny
    encoder, and is the workaround a loader can use for any SDXL file.
    """
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint, load_single_file_checkpoint
    from transformers import CLIPTextModelWithProjection

    pipe = build_tiny_sdxl(seed=0)
    config = save_tiny(pipe, tmp_path / "diffusers")
    file = save_single_file(to_original_sdxl(pipe), tmp_path / "model.safetensors")

    checkpoint = load_single_file_checkpoint(str(file))
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        config, subfolder="text_encoder_2", local_files_only=True
    )
    state = convert_open_clip_checkpoint(text_encoder_2, checkpoint, prefix=SDXL_OPEN_CLIP_PREFIX)
    text_encoder_2.load_state_dict(state, strict=True)  # strict: no key missing or left over

    loaded = _load(StableDiffusionXLPipeline, file, config, text_encoder_2=text_encoder_2)
    _assert_same_weights(pipe, loaded, SDXL_COMPONENTS)
    # Not just the folder's copy: the weights came from the file (the folder has the same
    # values, so compare against the file's OpenCLIP tensors directly too).
    in_proj = checkpoint[SDXL_OPEN_CLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"]
    q_proj = loaded.text_encoder_2.state_dict()["text_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(in_proj[: q_proj.shape[0]], q_proj)


def test_equal_width_text_encoders_confuse_diffusers(tmp_path: Path) -> None:
    """Documents diffusers 0.42: with equal widths, text_encoder_2 gets text encoder 1's weights.

    ``create_diffusers_clip_model_from_ldm`` checks "CLIP-L keys of SDXL present and
    ``position_embedding`` as wide as this model?" before "OpenCLIP keys of SDXL present?".
    For the tiny SDXL (32 and 32) the first test is true for ``text_encoder_2`` as well, so it
    is loaded from ``conditioner.embedders.0`` and its ``text_projection`` (which CLIP-L does
    not have) stays on the meta device. If this test fails, diffusers changed that order and
    ``build_tiny_sdxl_distinct_widths`` / the text_encoder_2 workaround may be unnecessary.
    """
    from diffusers import StableDiffusionXLPipeline

    pipe = build_tiny_sdxl(seed=0)
    assert pipe.text_encoder.config.hidden_size == pipe.text_encoder_2.config.hidden_size
    _, _, loaded = _round_trip(pipe, to_original_sdxl, StableDiffusionXLPipeline, tmp_path, ".safetensors")

    _assert_same_weights(pipe, loaded, ("unet", "vae", "text_encoder"))
    te1 = pipe.text_encoder.state_dict()
    te2 = loaded.text_encoder_2.state_dict()
    assert te2["text_projection.weight"].device.type == "meta"
    token = "embeddings.token_embedding.weight"
    assert torch.equal(te2["text_model." + token], te1[token])
    assert not torch.equal(te2["text_model." + token], pipe.text_encoder_2.state_dict()["text_model." + token])


def test_layout_names_match_the_original_files() -> None:
    """Spot checks against names and shapes of ``sd_xl_base_1.0.safetensors``."""
    pipe = build_tiny_sdxl_distinct_widths(seed=0)
    state = to_original_sdxl(pipe)
    assert all(k.startswith(SDXL_PREFIXES) for k in state)

    unet = "model.diffusion_model."
    # 2 levels, 1 layer each: conv_in, level 0 resnet, its downsampler, level 1 resnet + attention.
    for key in (
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.2.0.op.weight",
        "input_blocks.3.0.skip_connection.weight",
        "input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight",
        "middle_block.1.proj_in.weight",
        "middle_block.2.out_layers.3.weight",
        # decoder: 2 entries per level (layers_per_block + 1); level 0 has attention, so its
        # upsampler is item 2 of its last entry (item 1 on a level without attention)
        "output_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "output_blocks.1.2.conv.weight",
        "output_blocks.3.0.out_layers.3.weight",
        "time_embed.0.weight",
        "time_embed.2.weight",
        "label_emb.0.0.weight",
        "label_emb.0.2.weight",
        "out.0.weight",
        "out.2.weight",
    ):
        assert unet + key in state, key
    assert not any(k.startswith(unet + "input_blocks.4") for k in state)
    assert not any(k.startswith(unet + "output_blocks.4") for k in state)

    vae = "first_stage_model."
    c = pipe.vae.config.block_out_channels[-1]
    assert state[vae + "encoder.mid.attn_1.q.weight"].shape == (c, c, 1, 1)
    assert state[vae + "decoder.mid.attn_1.proj_out.weight"].shape == (c, c, 1, 1)
    for key in (
        "encoder.down.2.block.0.nin_shortcut.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.norm_out.weight",
        "decoder.up.3.upsample.conv.weight",  # LDM numbers decoder levels from the deepest
        "decoder.up.1.block.0.nin_shortcut.weight",
        "decoder.mid.block_2.conv2.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
    ):
        assert vae + key in state, key
    assert vae + "decoder.up.0.upsample.conv.weight" not in state

    clip_l = "conditioner.embedders.0.transformer.text_model."
    assert clip_l + "embeddings.position_embedding.weight" in state
    assert clip_l + "encoder.layers.1.self_attn.q_proj.weight" in state
    assert state[clip_l + "embeddings.position_ids"].dtype == torch.int64

    g = SDXL_OPEN_CLIP_PREFIX
    width = pipe.text_encoder_2.config.hidden_size
    projection = pipe.text_encoder_2.config.projection_dim
    assert state[g + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
    assert state[g + "transformer.resblocks.1.attn.in_proj_bias"].shape == (3 * width,)
    assert state[g + "text_projection"].shape == (width, projection)  # (width, proj): x @ P
    for key in (
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "logit_scale",
        "transformer.resblocks.1.ln_1.weight",
        "transformer.resblocks.1.ln_2.bias",
        "transformer.resblocks.1.mlp.c_fc.weight",
        "transformer.resblocks.1.mlp.c_proj.bias",
        "transformer.resblocks.1.attn.out_proj.weight",
    ):
        assert g + key in state, key

    sd15 = to_original_sd15(build_tiny_sd15(seed=0))
    assert all(k.startswith(SD15_PREFIXES) for k in sd15)
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in sd15


def test_diffusers_detection_of_the_tiny_files() -> None:
    """What ``infer_diffusers_model_type`` says, and which single key decides it."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    assert CHECKPOINT_KEY_NAMES["xl_base"] == XL_BASE_KEY
    assert CHECKPOINT_KEY_NAMES["v1"] == V1_KEY

    sdxl = to_original_sdxl(build_tiny_sdxl(seed=0))
    # Tiny text encoder 2 has 2 layers: no resblocks.9, so not SDXL for diffusers.
    assert XL_BASE_KEY not in sdxl
    assert infer_diffusers_model_type(sdxl) == "v1"
    # That one key is all it takes (diffusers reads its presence, not its shape).
    assert infer_diffusers_model_type({**sdxl, XL_BASE_KEY: torch.zeros(1)}) == "xl_base"

    sd15 = to_original_sd15(build_tiny_sd15(seed=0))
    # "v1" is the fallback: the tiny SD 1.5 has no output_blocks.11 either, and it is still v1.
    assert V1_KEY not in sd15
    assert infer_diffusers_model_type(sd15) == "v1"

    # Prefixes that do tell the two apart, tiny or real: SDXL's conditioner vs SD 1.x's
    # cond_stage_model (SD 2.x would be cond_stage_model.model., the SDXL refiner has only
    # conditioner.embedders.0.model.).
    assert any(k.startswith("conditioner.embedders.1.model.") for k in sdxl)
    assert any(k.startswith("conditioner.embedders.0.transformer.") for k in sdxl)
    assert not any(k.startswith("cond_stage_model.") for k in sdxl)
    assert any(k.startswith("cond_stage_model.transformer.") for k in sd15)
    assert not any(k.startswith("conditioner.") for k in sd15)
    assert "model.diffusion_model.label_emb.0.0.weight" in sdxl  # SDXL's text_time embedding
    assert not any(k.startswith("model.diffusion_model.label_emb") for k in sd15)
