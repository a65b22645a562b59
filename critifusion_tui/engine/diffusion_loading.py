"""Build the text-to-image pipeline a :class:`~critifusion_tui.engine.model_source.LoadPlan` describes.

The plan has already decided everything (which folder or file, which variant per component,
which configuration for a single file); this module only carries it out with diffusers, and
turns the libraries' exceptions into messages with a fix. Local sources are always read with
``local_files_only=True``: a cached or local model never waits on the network.

:func:`apply_speed_switches` then carries out the speed switches
(:class:`~critifusion_tui.engine.devices.SpeedSwitches`) on the modules in place, once they sit
on their device, and :func:`attention_record` says which attention processors and which SDPA
kernel the loaded modules use.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

from critifusion_tui.engine.devices import SpeedSwitches, sdpa_backend, sdpa_enabled
from critifusion_tui.engine.diffusion_errors import DiffusionLoadError, first_line
from critifusion_tui.engine.model_source import LoadPlan, hub_cache

__all__ = [
    "QuietLibraries",
    "apply_speed_switches",
    "attention_record",
    "build_pipeline",
    "compile_regions",
    "fuse_qkv",
    "pipeline_classes",
]


class QuietLibraries:
    """Silence diffusers / transformers / hub progress bars and their log warnings while
    loading (the front end owns the terminal); what still gets printed is captured by
    :func:`critifusion_tui.engine.load_output.capture_output`."""

    def __enter__(self) -> QuietLibraries:
        # transformers' logging module is light; set it before diffusers imports the rest.
        from transformers.utils import logging as tlog

        self._t_level = tlog.get_verbosity()
        tlog.set_verbosity_error()
        from diffusers.utils import logging as dlog

        self._d_level = dlog.get_verbosity()
        dlog.set_verbosity_error()
        self._d, self._t = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
        return self

    def __exit__(self, *exc: Any) -> None:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity(self._d_level)
        tlog.set_verbosity(self._t_level)
        if self._d:
            dlog.enable_progress_bar()
        if self._t:
            tlog.enable_progress_bar()


def pipeline_classes(kind: str) -> tuple[Any, Any]:
    """(text-to-image, img2img) pipeline classes for ``sdxl`` or ``sd``."""
    if kind == "sdxl":
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    return StableDiffusionPipeline, StableDiffusionImg2ImgPipeline


def _kind_kwargs(kind: str) -> dict[str, Any]:
    # Our decode goes through the VAE directly (as the reference does), so a safety checker
    # would never run: don't spend memory on it.
    return {} if kind == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}


def build_pipeline(plan: LoadPlan, dtype: Any, *, tiny_seed: int = 0) -> Any:
    """The text-to-image pipeline of ``plan`` in ``dtype`` (on the CPU; the caller moves it)."""
    if plan.source == "tiny":
        from critifusion_tui.engine.tiny_sdxl import build_tiny

        return build_tiny(plan.location, seed=tiny_seed, dtype=dtype)
    if plan.source in ("folder", "hub"):
        return _from_folder(plan, dtype)
    if plan.source == "file":
        return _from_single_file(plan, dtype)
    return _download(plan, dtype)


def _method_scheduler(folder: str | None) -> dict[str, Any]:
    """``{"scheduler": ...}``: SPEC 3's scheduler built from the saved config, handed to the
    loader so diffusers never instantiates the saved class with options that crash it
    (``use_beta_sigmas`` needs scipy; exponential and Karras sigmas together are refused)."""
    import json

    from diffusers import DPMSolverMultistepScheduler

    from critifusion_tui.engine.scheduler_plan import scheduler_overrides

    path = Path(folder or "") / "scheduler" / "scheduler_config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    return {"scheduler": DPMSolverMultistepScheduler.from_config(saved, **scheduler_overrides(saved))}


def _from_folder(plan: LoadPlan, dtype: Any) -> Any:
    txt_cls, _ = pipeline_classes(plan.kind)
    where = plan.model if plan.source == "hub" else plan.location
    try:
        # Components whose files are in the other variant are loaded on their own and handed in.
        loaded = {
            c.name: getattr(importlib.import_module(c.library), c.class_name).from_pretrained(
                plan.location, subfolder=c.name, variant=c.variant, dtype=dtype, local_files_only=True
            )
            for c in plan.mixed_components()
        }
        return txt_cls.from_pretrained(
            plan.location,
            dtype=dtype,
            variant=plan.variant,
            local_files_only=True,
            **_kind_kwargs(plan.kind),
            **_method_scheduler(plan.location),
            **loaded,
        )
    except Exception as exc:
        raise DiffusionLoadError(
            f"could not load the model {where}: {first_line(exc)}. Its files were all found; one "
            "of them may be damaged. Fix: copy or download the model again."
        ) from exc


def _from_single_file(plan: LoadPlan, dtype: Any) -> Any:
    txt_cls, _ = pipeline_classes(plan.kind)
    path = Path(plan.location)
    with tempfile.TemporaryDirectory(prefix="critifusion-") as scratch:
        if path.suffix != path.suffix.lower():
            # diffusers picks the reader by the exact lower-case suffix; a `.SafeTensors` file
            # would be handed to the pickle reader. A link with the right name fixes that.
            link = Path(scratch) / (path.stem + path.suffix.lower())
            os.symlink(path.resolve(), link)
            path = link
        try:
            return txt_cls.from_single_file(
                str(path),
                config=plan.config_folder,
                local_files_only=True,
                dtype=dtype,
                **_kind_kwargs(plan.kind),
                **_method_scheduler(plan.config_folder),
            )
        except Exception as exc:
            raise DiffusionLoadError(
                f"could not build a pipeline from the single file {plan.location} with the "
                f"configuration {plan.config_source}: {first_line(exc)}. Fix: if the checkpoint is "
                "a fine-tune with another architecture, set diffusion.single_file_config to its "
                "base model's diffusers folder or hub id."
            ) from exc


def _download(plan: LoadPlan, dtype: Any) -> Any:
    """A hub id that is not cached, with downloads allowed: the one path that uses the network."""
    txt_cls, _ = pipeline_classes(plan.kind)
    try:
        from diffusers import DiffusionPipeline

        index = DiffusionPipeline.load_config(plan.location)
        if index.get("_class_name") not in ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"):
            txt_cls, _ = pipeline_classes("sd")
        kwargs = _kind_kwargs("sdxl" if txt_cls.__name__.startswith("StableDiffusionXL") else "sd")
        return txt_cls.from_pretrained(plan.location, dtype=dtype, variant=plan.variant, **kwargs)
    except DiffusionLoadError:
        raise
    except Exception as exc:
        raise DiffusionLoadError(hub_error_text(plan.location, exc)) from exc


def hub_error_text(model_id: str, exc: BaseException) -> str:
    """A download failure, worded with its fix (gated, unknown id, network)."""
    from huggingface_hub import errors as hub_errors

    gated = getattr(hub_errors, "GatedRepoError", ())
    missing = getattr(hub_errors, "RepositoryNotFoundError", ())
    if gated and isinstance(exc, gated):
        return (
            f"{model_id} is a gated model on the Hugging Face Hub. Fix: accept its licence on "
            "its model page, then log in (`hf auth login`) or set HF_TOKEN."
        )
    if missing and isinstance(exc, missing):
        return (
            f"{model_id} was not found on the Hugging Face Hub. Fix: check the id (owner/name); "
            "private models need `hf auth login` or HF_TOKEN; a local model needs its folder path. "
            f"(No local folder {Path(model_id).absolute()} exists either.)"
        )
    return (
        f"could not download {model_id} from the Hugging Face Hub into {hub_cache()}: "
        f"{first_line(exc)}. Fix: check the network and the id, or set diffusion.model to a "
        "local folder or .safetensors file."
    )


# ---------------------------------------------------------------------- speed switches


def apply_speed_switches(pipe: Any, switches: SpeedSwitches) -> dict[str, Any]:
    """Carry out ``switches`` on ``pipe``'s UNet and VAE, in place: the img2img pipeline holds
    the same module objects, so both run with them. Call it once the modules sit on their
    device (``.to()`` after fusing would copy the shared weights apart). Returns what was
    done, for the manifest: the fused models and the number of compiled blocks."""
    done: dict[str, Any] = {}
    if switches.channels_last:
        import torch

        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                # Only 4-D tensors (convolution weights) change order; the modules' inputs
                # follow their weights inside the convolutions.
                module.to(memory_format=torch.channels_last)
    if switches.fuse_qkv:
        done["fused"] = fuse_qkv(pipe, skip_unsupported=switches.auto("fuse_qkv"))
    if switches.compile:
        done["compiled_blocks"] = compile_regions(pipe.unet, switches.compile_mode)
    return done


def fuse_qkv(pipe: Any, *, skip_unsupported: bool = False) -> list[str]:
    """diffusers' fused QKV projections on the UNet and an ``AutoencoderKL`` VAE: one matrix
    product for an attention's query, key and value (key and value in cross-attention), run by
    ``FusedAttnProcessor2_0`` (SDPA). Returns the names of the models fused.

    diffusers keeps the separate ``to_q``/``to_k``/``to_v`` layers beside the fused one (for
    ``unfuse_qkv_projections``); on SDXL's UNet that is ~0.6 G parameters twice (about 1.2 GB in
    float16). :func:`_share_fused_weights` makes the separate layers views of the fused
    weights, so the fusion costs no memory. A model with added KV projections (not SDXL or
    SD 1.5) cannot be fused: an error with the fix, or skipped when ``auto`` chose fusion.
    """
    from diffusers import AutoencoderKL

    fused = []
    for name in ("unet", "vae"):
        model = getattr(pipe, name, None)
        if model is None or not hasattr(model, "fuse_qkv_projections"):
            continue
        if name == "vae" and not isinstance(model, AutoencoderKL):
            continue
        try:
            model.fuse_qkv_projections()
        except ValueError as exc:
            if skip_unsupported:
                continue
            raise DiffusionLoadError(
                f"diffusion.fuse_qkv = true, but the {name} cannot fuse its attention projections "
                f'({first_line(exc)}). Fix: set diffusion.fuse_qkv = "auto" or false.'
            ) from exc
        _share_fused_weights(model)
        fused.append(name)
    return fused


def _share_fused_weights(model: Any) -> None:
    """Make each fused attention's separate projection weights slices of its fused weight."""
    from diffusers.models.attention_processor import Attention
    from torch import nn

    for attn in model.modules():
        if not isinstance(attn, Attention) or not getattr(attn, "fused_projections", False):
            continue
        parts: list[Any]
        if attn.is_cross_attention:
            fused, parts = getattr(attn, "to_kv", None), [attn.to_k, attn.to_v]
        else:
            fused, parts = getattr(attn, "to_qkv", None), [attn.to_q, attn.to_k, attn.to_v]
        if fused is None:  # pragma: no cover - diffusers always builds the fused layer
            continue
        start = 0
        for part in parts:
            end = start + part.out_features
            part.weight = nn.Parameter(fused.weight.detach()[start:end], requires_grad=part.weight.requires_grad)
            if part.bias is not None and fused.bias is not None:
                part.bias = nn.Parameter(fused.bias.detach()[start:end], requires_grad=part.bias.requires_grad)
            start = end


def compile_regions(unet: Any, mode: str = "default") -> int:
    """``torch.compile`` of the UNet's repeated blocks only (regional compilation, diffusers'
    ``compile_repeated_blocks``): each ``BasicTransformerBlock`` is compiled in place, and as
    they share their code, one compiled graph per shape serves all of them. The first image
    pays seconds of compiling instead of the minutes a whole-UNet compile takes. Returns the
    number of blocks compiled."""
    blocks = set(getattr(unet, "_repeated_blocks", None) or ())
    count = sum(1 for module in unet.modules() if type(module).__name__ in blocks)
    if not count:
        raise DiffusionLoadError(
            f"diffusion.compile = true, but the {type(unet).__name__} declares no repeated blocks to "
            "compile (diffusers' _repeated_blocks). Fix: set diffusion.compile = false."
        )
    unet.compile_repeated_blocks(mode=mode)
    return count


def attention_record(pipe: Any, device: str, dtype: Any) -> dict[str, Any]:
    """Which attention runs: the UNet's and the VAE's processor classes (diffusers uses torch
    SDPA through ``AttnProcessor2_0``, or ``FusedAttnProcessor2_0`` when fused), the SDPA
    kernel torch picks for the UNet's head size in ``dtype`` on ``device``, and on CUDA the
    SDPA kernels torch is allowed to pick from."""
    record: dict[str, Any] = {}
    for name in ("unet", "vae"):
        processors = getattr(getattr(pipe, name, None), "attn_processors", None) or {}
        classes = sorted({type(p).__name__ for p in processors.values()})
        record[name] = classes[0] if len(classes) == 1 else classes
    heads, head_dim = _attention_shape(pipe.unet)
    if heads:
        record["sdpa_kernel"] = sdpa_backend(device, dtype, heads=heads, head_dim=head_dim)
        record["head_dim"] = head_dim
    if device.startswith("cuda"):
        record["sdpa_enabled"] = sdpa_enabled()
    return record


def _attention_shape(unet: Any) -> tuple[int, int]:
    from diffusers.models.attention_processor import Attention

    for module in unet.modules():
        if isinstance(module, Attention) and module.heads:
            return int(module.heads), int(module.inner_dim) // int(module.heads)
    return 0, 0
