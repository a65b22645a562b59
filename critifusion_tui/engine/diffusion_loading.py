"""Build the text-to-image pipeline a :class:`~critifusion_tui.engine.model_source.LoadPlan` describes.

The plan has already decided everything (which folder or file, which variant per component,
which configuration for a single file); this module only carries it out with diffusers, and
turns the libraries' exceptions into messages with a fix. Local sources are always read with
``local_files_only=True``: a cached or local model never waits on the network.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

from critifusion_tui.engine.diffusion_errors import DiffusionLoadError, first_line
from critifusion_tui.engine.model_source import LoadPlan, hub_cache

__all__ = ["QuietLibraries", "build_pipeline", "pipeline_classes"]


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
            plan.location, dtype=dtype, variant=plan.variant, local_files_only=True,
            **_kind_kwargs(plan.kind), **_method_scheduler(plan.location), **loaded,
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
                str(path), config=plan.config_folder, local_files_only=True, dtype=dtype,
                **_kind_kwargs(plan.kind), **_method_scheduler(plan.config_folder),
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
