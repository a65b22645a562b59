"""The diffusers configurations shipped for single-file checkpoints, checked against the
published models: parameter counts on the meta device (no memory, no weights), tokenizers
that match CLIP's, and one full-size SD 1.5 single file loaded offline with an empty cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from critifusion_tui.engine.single_file_configs import BUILTIN_CONFIGS, builtin_config, materialise

# Parameter counts of the published models (SDXL base 1.0 and SD 1.5, as diffusers and
# transformers build them): a wrong width, depth or head count cannot match all of these.
PUBLISHED = {
    "unet": {"sdxl-base": 2_567_463_684, "sdxl-turbo": 2_567_463_684, "sd15": 859_520_964},
    "vae": 83_653_863,
    "clip-l": 123_060_480,
    "clip-bigg": 694_659_840,
}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _text_model(config: dict):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if config["architectures"] == ["CLIPTextModelWithProjection"] else CLIPTextModel
    return cls(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))


@pytest.mark.parametrize("name", sorted(BUILTIN_CONFIGS))
def test_builtin_configs_have_the_published_sizes(name):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    spec = builtin_config(name)
    with torch.device("meta"):
        assert _count(UNet2DConditionModel.from_config(spec["unet/config.json"])) == PUBLISHED["unet"][name]
        assert _count(AutoencoderKL.from_config(spec["vae/config.json"])) == PUBLISHED["vae"]
        assert _count(_text_model(spec["text_encoder/config.json"])) == PUBLISHED["clip-l"]
        if spec["kind"] == "sdxl":
            assert _count(_text_model(spec["text_encoder_2/config.json"])) == PUBLISHED["clip-bigg"]


@pytest.mark.parametrize("name", sorted(BUILTIN_CONFIGS))
def test_materialised_folder_is_a_diffusers_config_with_clip_tokenizers(name, tmp_path):
    from transformers import CLIPTokenizer

    from critifusion_tui.engine.tiny_sdxl import build_tiny_clip_tokenizer

    folder = materialise(name, root=tmp_path)
    assert materialise(name, root=tmp_path) == folder  # written once
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left behind
    index = json.loads((folder / "model_index.json").read_text())
    reference = build_tiny_clip_tokenizer()
    text = "a photo of a cat, high detailed, 8k"
    for sub, pad in BUILTIN_CONFIGS[name]["tokenizers"].items():
        assert index[sub] == ["transformers", "CLIPTokenizer"]
        tokenizer = CLIPTokenizer.from_pretrained(folder / sub)
        assert tokenizer(text).input_ids == reference(text).input_ids
        assert tokenizer.model_max_length == 77 and tokenizer.pad_token == pad
    for sub in ("unet", "vae", "text_encoder"):
        assert (folder / sub / "config.json").is_file()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()


def test_a_full_size_sd15_single_file_loads_offline_with_an_empty_cache(tmp_path, monkeypatch):
    """What a ComfyUI/A1111 user has: one SD 1.5 .safetensors and no diffusers cache at all.

    The weights are random (about 2 GB in fp16, written here); the shapes are SD 1.5's, so only
    the shipped configuration can build it. About 40 s and 8 GB of memory on 2 cores.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from critifusion_tui.engine.diffusion import Diffusion
    from tests.engine.single_file_layout import save_single_file, to_original_sd15

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    spec = builtin_config("sd15")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(spec["unet/config.json"])
        vae = AutoencoderKL.from_config(spec["vae/config.json"])
        text = _text_model(spec["text_encoder/config.json"])
    generator = torch.Generator().manual_seed(0)
    for module in (unet, vae, text):
        module.to_empty(device="cpu")
        with torch.no_grad():
            for param in module.parameters():
                param.normal_(0, 0.02, generator=generator)
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    buffer.zero_()
    state = to_original_sd15(SimpleNamespace(unet=unet, vae=vae, text_encoder=text))
    probe_key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    probe = state[probe_key].half()
    path = save_single_file(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "v1-5-random.safetensors"
    )
    del state, unet, vae, text

    engine = Diffusion(str(path), device="cpu").load()
    record = engine.describe()
    assert record["single_file_config"] == "built-in: sd15" and engine.default_size == (512, 512)
    loaded = engine.txt2img.unet.down_blocks[0].attentions[0].proj_in.weight
    assert torch.equal(loaded.detach().half().reshape(probe.shape), probe)
    latent = engine.base_latent("a fox", "blurry", width=64, height=64, steps=1, guidance=7.5, seed=1)
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
