"""The diffusion room: one SDXL (or SD 1.5) pipeline per session, base latents, img2img, decode.

Importing this module is cheap: torch, diffusers and transformers are imported inside the
functions that need them (DESIGN: the front ends' first paint must not pay ~5 s for them).

One :class:`Diffusion` object loads the model once, lazily (``load()``, or the first call that
needs it), and keeps ONE copy of every module: the text-to-image pipeline and the img2img
pipeline are built from the same components (``Img2ImgPipeline(**pipe.components)`` shares
the modules without casting them; ``from_pipe`` would cast to float32). The reference loads
SDXL twice; we don't. Each pipeline gets its own scheduler object (schedulers are stateful,
cheap, and hold no weights), both DPM-Solver++ multistep with Karras sigmas, built from the
loaded scheduler's config (SPEC 3).

Latents (diffusers 0.42.1, checked in its source):

* ``StableDiffusionXLPipeline(..., output_type="latent").images`` returns the denoised latents
  exactly as the UNet works on them, i.e. in the *scaled* latent space
  ``z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor``; with
  output_type="pil" diffusers divides by ``scaling_factor`` before ``vae.decode``. No scaling is
  applied on the way out. So the returned latent is SPEC 0's latent: "already multiplied by
  the VAE scaling factor" (0.13025 for SDXL, 0.18215 for SD 1.x).
* ``StableDiffusionXLImg2ImgPipeline(image=<tensor with 4 channels>)`` treats the tensor as
  latents: ``VaeImageProcessor.preprocess`` passes a tensor whose channel count equals
  ``vae_latent_channels`` (4) through unchanged, and ``prepare_latents`` takes
  ``init_latents = image`` without encoding and without multiplying by ``scaling_factor``
  (only a 3-channel image is encoded and then multiplied). It then adds noise for the first
  kept timestep. So the base latent goes back in as-is, in the same scaled space.
  The SD 1.5 pipelines behave the same (``image.shape[1] == 4``).
* VAEs whose config has ``latents_mean``/``latents_std`` (not SDXL base's) are normalised as
  ``(z - mean) * scaling_factor / std`` on the way in; :meth:`Diffusion.decode` inverts that
  the way diffusers does (``z * std / scaling_factor + mean``), else ``z / scaling_factor``.
* img2img runs ``int(steps * strength)`` of the ``steps`` scheduler steps (diffusers'
  ``get_timesteps``): 50 steps at strength 0.74 run 37. :meth:`Diffusion.planned_steps`
  computes that count from the scheduler, and ``on_step`` reports it as the total.

Progress and cancellation go through ``callback_on_step_end``: after every denoising step the
engine calls ``on_step(done, total)`` (``done`` = steps finished so far, 1..total) and then
checks ``cancel``; a cancel raises :class:`DiffusionCancelled` inside the callback, which
diffusers lets propagate at once (no further step, no decode).
"""

from __future__ import annotations

import gc
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.tiny_sdxl import is_tiny_folder, is_tiny_name

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image

__all__ = [
    "Diffusion",
    "DiffusionCancelled",
    "DiffusionError",
    "DiffusionLoadError",
    "DiffusionOutOfMemory",
    "StepCallback",
    "img2img_step_count",
    "resolve_device",
    "resolve_dtype",
]

StepCallback = Callable[[int, int], Any]
"""``on_step(done, total)``: called after each denoising step, ``done`` in 1..total."""

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_SDXL_CLASSES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"}
_SD_CLASSES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_DTYPE_NAMES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
# Config keys (proposed) that the out-of-memory message points at.
OOM_HINT = (
    "Settings that help: diffusion.cpu_offload = true (keeps only the running model on the GPU), "
    "diffusion.vae_tiling = true (decodes the image in tiles), a smaller diffusion.width/height, "
    'or diffusion.dtype = "float16".'
)


class DiffusionError(Exception):
    """Base of the diffusion room's errors; the message is meant for the user as it is."""


class DiffusionLoadError(DiffusionError):
    """The model could not be found or loaded; the message says how to fix it."""


class DiffusionOutOfMemory(DiffusionError):
    """The accelerator ran out of memory. The cache was emptied and the engine is still usable."""


class DiffusionCancelled(DiffusionError):
    """A run was cancelled; raised within one denoising step of the request."""

    def __init__(self, done: int = 0, total: int = 0, what: str = "diffusion") -> None:
        self.done, self.total, self.what = done, total, what
        where = f" after step {done} of {total}" if total else " before the first step"
        super().__init__(f"{what} cancelled{where}")


def img2img_step_count(steps: int, strength: float) -> int:
    """Steps an img2img call really runs: diffusers' ``min(int(steps * strength), steps)``.

    Pure arithmetic (no torch), for front ends that size a progress bar before the model is
    loaded; equals :meth:`Diffusion.planned_steps` for DPM-Solver (one timestep per step).
    Note the float product: strength 29/100 at 100 steps runs 28 steps (0.29 * 100 < 29).
    """
    return min(int(int(steps) * float(strength)), int(steps))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(". ") if text else type(exc).__name__


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - hub library missing or changed
        return False


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``mps``, else ``cpu``; an explicit device is checked."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if name == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise DiffusionLoadError(
                f'diffusion.device is "{device}" but this torch build sees no CUDA GPU '
                f"(torch {torch.__version__}). Fix: set diffusion.device = \"auto\" or \"cpu\", "
                "or install a CUDA build of torch."
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DiffusionLoadError(
                f'diffusion.device is "{device}" but only {torch.cuda.device_count()} CUDA '
                'device(s) exist. Fix: use "cuda" or "cuda:0".'
            )
        return name
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DiffusionLoadError(
                'diffusion.device is "mps" but Apple Metal is not available here. '
                'Fix: set diffusion.device = "auto" or "cpu".'
            )
        return "mps"
    raise DiffusionLoadError(
        f"unknown diffusion.device {device!r}: expected auto, cpu, mps, cuda or cuda:N"
    )


def resolve_dtype(dtype: Any = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` -> float16 on CUDA and MPS, float32 on the CPU; float16 on the CPU is refused."""
    import torch

    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        name = str(dtype or "auto").strip().lower().removeprefix("torch.")
        if name == "auto":
            return torch.float32 if device == "cpu" else torch.float16
        if name not in _DTYPE_NAMES:
            raise DiffusionLoadError(
                f"unknown diffusion.dtype {dtype!r}: expected auto, float16, bfloat16 or float32"
            )
        resolved = getattr(torch, _DTYPE_NAMES[name])
    if resolved not in (torch.float16, torch.bfloat16, torch.float32):
        raise DiffusionLoadError(f"diffusion.dtype {resolved} is not supported")
    if device == "cpu" and resolved == torch.float16:
        raise DiffusionLoadError(
            "float16 is not supported for diffusion on the CPU (slow or missing kernels). "
            'Fix: set diffusion.dtype = "auto" (float32) or "bfloat16".'
        )
    return resolved


def _is_oom(exc: BaseException) -> bool:
    import torch

    kinds = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    )
    if kinds and isinstance(exc, kinds):
        return True
    # MPS and some allocators raise a plain RuntimeError ("MPS backend out of memory").
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _cancel_requested(cancel: Any) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)  # threading.Event, asyncio.Event
    if callable(is_set):
        return bool(is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(
        f"cancel must be a callable returning bool or an object with is_set(), got {type(cancel).__name__}"
    )


@dataclass(frozen=True)
class _Source:
    kind: str  # "tiny", "folder", "file" or "hub"
    location: str


def _classify(model: str) -> _Source:
    text = (model or "").strip()
    if not text:
        raise DiffusionLoadError("diffusion.model is empty. Fix: name a hub id, a folder or a .safetensors file.")
    if is_tiny_name(text):
        return _Source("tiny", text.lower())
    path = Path(text).expanduser()
    if path.is_dir():
        return _Source("folder", str(path))
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return _Source("file", str(path))
        raise DiffusionLoadError(
            f"{text} is a file but not a checkpoint (.safetensors or .ckpt). Fix: point "
            "diffusion.model at a diffusers folder (with model_index.json), a .safetensors / "
            ".ckpt file, or a Hugging Face hub id."
        )
    looks_like_path = (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or path.suffix.lower() in SINGLE_FILE_SUFFIXES
        or not _HUB_ID.fullmatch(text)
    )
    if looks_like_path:
        raise DiffusionLoadError(
            f"model not found: {text} does not exist (resolved to {path.absolute()}). Fix: set "
            "diffusion.model to an existing diffusers folder (containing model_index.json), a "
            ".safetensors / .ckpt file, a Hugging Face hub id such as owner/name, or "
            '"tiny-random" to try the app without a model.'
        )
    return _Source("hub", text)


class _QuietLoad:
    """Silence diffusers / transformers / hub tqdm bars and their import-time warnings while
    loading (the TUI owns stderr; "CLIPImageProcessor requires torchvision" is not news to a
    user who only runs diffusion). Errors still raise and are reported by the engine."""

    def __enter__(self) -> _QuietLoad:
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


class Diffusion:
    """SDXL / SD 1.5 diffusion for one session: load once, base latent, img2img latent, decode.

    ``model`` is a Hugging Face hub id (standard cache; the cache is tried first without any
    network, then the hub unless ``offline`` or ``HF_HUB_OFFLINE=1``), a local diffusers folder,
    a single-file ``.safetensors`` / ``.ckpt`` checkpoint, or ``"tiny-random"`` /
    ``"tiny-random-sd15"`` (tiny random pipelines built offline in about a second; their images
    are noise, see :attr:`is_tiny_random`).

    ``device`` ``auto`` picks CUDA, then Apple MPS, then the CPU; ``dtype`` ``auto`` is float16
    on CUDA and MPS, float32 on the CPU (``bfloat16`` is selectable). ``cpu_offload`` uses
    ``enable_model_cpu_offload`` (accelerator only), ``vae_tiling`` the VAE's tiled decode,
    ``compile`` ``torch.compile`` of the UNet (in place, so both pipelines share it).

    Construction is cheap and imports nothing heavy; :meth:`load` (or any generating call)
    loads. Calls are serialised by a lock: one UNet, one run at a time.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: Any = "auto",
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        compile: bool = False,
        variant: str | None = None,
        offline: bool = False,
        single_file_config: str | None = None,
        tiny_seed: int = 0,
    ) -> None:
        self.model = str(model).strip()
        self.requested_device = device
        self.requested_dtype = dtype
        self.cpu_offload = bool(cpu_offload)
        self.vae_tiling = bool(vae_tiling)
        self.compile = bool(compile)
        self.variant = variant
        self.offline = bool(offline)
        self.single_file_config = single_file_config
        self.tiny_seed = int(tiny_seed)
        self._lock = threading.RLock()
        self._txt2img: Any = None
        self._img2img: Any = None
        self._planner: Any = None
        self._offload_owner: Any = None
        self._source: _Source | None = None
        self._kind: str | None = None
        self._device: str | None = None
        self._dtype: Any = None
        self._tiny = False

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> Diffusion:
        """Build from a ``DiffusionConfig``-like object (duck-typed: ``model``, ``device``,
        ``dtype`` and, when present, ``cpu_offload``, ``vae_tiling``, ``compile``)."""
        kwargs: dict[str, Any] = {
            "device": getattr(cfg, "device", "auto"),
            "dtype": getattr(cfg, "dtype", "auto"),
        }
        for key in ("cpu_offload", "vae_tiling", "compile", "variant", "offline"):
            if hasattr(cfg, key):
                kwargs[key] = getattr(cfg, key)
        kwargs.update(overrides)
        return cls(cfg.model, **kwargs)

    # ------------------------------------------------------------------ state

    @property
    def loaded(self) -> bool:
        return self._txt2img is not None

    @property
    def is_tiny_random(self) -> bool:
        """True when the model is a tiny random pipeline (its images are noise: label them)."""
        if self._source is not None:
            return self._tiny
        if is_tiny_name(self.model):
            return True
        path = Path(self.model).expanduser()
        return path.is_dir() and is_tiny_folder(path)

    @property
    def kind(self) -> str:
        """``"sdxl"`` or ``"sd"`` (SD 1.x / 2.x); loads the model."""
        self.load()
        assert self._kind is not None
        return self._kind

    @property
    def device(self) -> str:
        """The execution device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); loads the model."""
        self.load()
        assert self._device is not None
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        self.load()
        return self._dtype

    @property
    def txt2img(self) -> Any:
        """The text-to-image pipeline (``StableDiffusionXLPipeline`` or ``StableDiffusionPipeline``)."""
        self.load()
        return self._txt2img

    @property
    def img2img(self) -> Any:
        """The img2img pipeline, built on the very same modules as :attr:`txt2img`."""
        self.load()
        return self._img2img

    @property
    def vae_scale_factor(self) -> int:
        return int(self.txt2img.vae_scale_factor)

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the model was trained at: 1024 for SDXL base, 512 for SD 1.5."""
        pipe = self.txt2img
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def describe(self) -> dict[str, Any]:
        """What was loaded, for the manifest and ``critifusion doctor`` (loads the model)."""
        self.load()
        return {
            "model": self.model,
            "source": self._source.kind if self._source else None,
            "kind": self._kind,
            "pipeline": type(self._txt2img).__name__,
            "device": self._device,
            "dtype": str(self._dtype).removeprefix("torch."),
            "tiny_random": self._tiny,
            "scheduler": f"{type(self._txt2img.scheduler).__name__} (karras sigmas)",
            "cpu_offload": self.cpu_offload,
            "vae_tiling": self.vae_tiling,
            "compile": self.compile,
        }

    # ------------------------------------------------------------------ loading

    def load(self) -> Diffusion:
        """Load the model once (later calls return at once). Raises :class:`DiffusionLoadError`."""
        if self._txt2img is not None:
            return self
        with self._lock:
            if self._txt2img is not None:
                return self
            source = _classify(self.model)
            device = resolve_device(self.requested_device)
            dtype = resolve_dtype(self.requested_dtype, device)
            if self.cpu_offload and device == "cpu":
                raise DiffusionLoadError(
                    "diffusion.cpu_offload needs a GPU (it moves models between the CPU and the "
                    "GPU), but the device is the CPU. Fix: set diffusion.cpu_offload = false."
                )
            with _QuietLoad():
                if source.kind == "tiny":
                    pipe, kind = self._load_tiny(source.location, dtype)
                elif source.kind == "folder":
                    pipe, kind = self._load_folder(Path(source.location), dtype)
                elif source.kind == "file":
                    pipe, kind = self._load_single_file(Path(source.location), dtype)
                else:
                    pipe, kind = self._load_hub(source.location, dtype)
            self._source = source
            self._tiny = source.kind == "tiny" or (source.kind == "folder" and is_tiny_folder(source.location))
            detail: str | None = None
            try:
                self._assemble(pipe, kind, device, dtype)
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                detail = _first_line(exc)
            if detail is not None:  # outside the except block: the frames are released
                del pipe
                self._offload_owner = self._planner = None
                self._device = device
                self._free_memory()
                raise DiffusionOutOfMemory(
                    f"Out of GPU memory while moving {self.model} to {device} ({dtype}). "
                    f"{OOM_HINT} ({detail})"
                )
            return self

    def unload(self) -> None:
        """Drop the pipelines and free their memory (a later call loads again)."""
        with self._lock:
            self._txt2img = self._img2img = self._planner = self._offload_owner = None
            self._free_memory()

    def _load_tiny(self, name: str, dtype: Any) -> tuple[Any, str]:
        from critifusion_tui.engine.tiny_sdxl import TINY_RANDOM, build_tiny

        return build_tiny(name, seed=self.tiny_seed, dtype=dtype), ("sdxl" if name == TINY_RANDOM else "sd")

    @staticmethod
    def _pipeline_kind(config: dict[str, Any], where: str) -> str:
        name = str(config.get("_class_name", ""))
        if name in _SDXL_CLASSES:
            text_encoder = config.get("text_encoder")
            if config.get("requires_aesthetics_score") or not text_encoder or text_encoder == [None, None]:
                raise DiffusionLoadError(
                    f"{where} is an SDXL refiner (no first text encoder), not a base model. "
                    "Fix: use an SDXL base checkpoint such as stable-diffusion-xl-base-1.0."
                )
            return "sdxl"
        if name in _SD_CLASSES:
            return "sd"
        raise DiffusionLoadError(
            f"{where} holds a {name or 'unknown'} pipeline; this app runs SDXL "
            "(StableDiffusionXLPipeline) and SD 1.x/2.x (StableDiffusionPipeline) models."
        )

    @staticmethod
    def _classes(kind: str) -> tuple[Any, Any]:
        if kind == "sdxl":
            from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

            return StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        return StableDiffusionPipeline, StableDiffusionImg2ImgPipeline

    def _pretrained_kwargs(self, kind: str, dtype: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dtype": dtype}
        if self.variant:
            kwargs["variant"] = self.variant
        if kind == "sd":
            # Our decode goes through the VAE directly (as the reference does), so a safety
            # checker would never run: don't spend memory on it.
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        return kwargs

    def _load_folder(self, folder: Path, dtype: Any) -> tuple[Any, str]:
        index = folder / "model_index.json"
        if not index.is_file():
            hint = ""
            if any((folder / sub).is_dir() for sub in ("unet", "vae", "text_encoder")):
                hint = " It has component folders: is model_index.json missing from a partial copy?"
            raise DiffusionLoadError(
                f"{folder} is not a diffusers pipeline folder (no model_index.json).{hint} Fix: "
                "point diffusion.model at the folder that contains model_index.json, or at a "
                ".safetensors checkpoint file."
            )
        try:
            config = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DiffusionLoadError(f"{index} could not be read: {_first_line(exc)}") from exc
        kind = self._pipeline_kind(config, str(folder))
        txt_cls, _ = self._classes(kind)
        try:
            pipe = txt_cls.from_pretrained(str(folder), **self._pretrained_kwargs(kind, dtype))
        except Exception as exc:
            raise DiffusionLoadError(
                f"could not load the model folder {folder}: {_first_line(exc)}. Fix: check that the "
                "folder is complete (unet, vae, text encoders, tokenizers, scheduler), e.g. by "
                "downloading it again."
            ) from exc
        return pipe, kind

    def _single_file_kind(self, path: Path) -> str:
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    keys = list(handle.keys())
            else:
                import torch

                try:
                    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                    state = torch.load(str(path), map_location="cpu", weights_only=True)
                if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                    state = state["state_dict"]
                keys = list(state) if isinstance(state, dict) else []
        except Exception as exc:
            raise DiffusionLoadError(
                f"{path} is not a readable checkpoint ({_first_line(exc)}). It may be truncated or "
                "not a model file. Fix: download it again, or point diffusion.model at another "
                "checkpoint."
            ) from exc
        has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
        if has("conditioner.embedders.1."):
            return "sdxl"
        if has("conditioner.embedders.0."):
            raise DiffusionLoadError(
                f"{path} looks like an SDXL refiner checkpoint, not a base model. Fix: use an "
                "SDXL base checkpoint."
            )
        if has("cond_stage_model.") or has("model.diffusion_model."):
            return "sd"
        raise DiffusionLoadError(
            f"{path} is not an SDXL or Stable Diffusion 1.x/2.x checkpoint (no UNet / text "
            "encoder keys of the original layout). Fix: use an SDXL or SD 1.5 checkpoint."
        )

    def _load_single_file(self, path: Path, dtype: Any) -> tuple[Any, str]:
        kind = self._single_file_kind(path)
        txt_cls, _ = self._classes(kind)
        kwargs = self._pretrained_kwargs(kind, dtype)
        kwargs.pop("variant", None)
        if self.single_file_config:
            kwargs["config"] = self.single_file_config

        def attempt(local_only: bool) -> Any:
            return txt_cls.from_single_file(str(path), local_files_only=local_only, **kwargs)

        try:
            return self._local_first(attempt), kind
        except DiffusionLoadError:
            raise
        except Exception as exc:
            base = "stabilityai/stable-diffusion-xl-base-1.0" if kind == "sdxl" else "an SD 1.5 base"
            raise DiffusionLoadError(
                f"could not build a pipeline from the single file {path}: {_first_line(exc)}. "
                "A single-file checkpoint also needs the diffusers configuration of its base "
                f"model ({base}) from the Hugging Face cache. Fix: run once with network access "
                "(without HF_HUB_OFFLINE), or convert the checkpoint to a diffusers folder."
            ) from exc

    def _local_first(self, attempt: Callable[[bool], Any]) -> Any:
        """Try the local cache only (no network at all), then the hub when allowed."""
        try:
            return attempt(True)
        except OSError:
            if self.offline or _hub_offline():
                raise
        return attempt(False)

    def _load_hub(self, model_id: str, dtype: Any) -> tuple[Any, str]:
        from diffusers import DiffusionPipeline

        offline = self.offline or _hub_offline()
        try:
            config = self._local_first(lambda local: DiffusionPipeline.load_config(model_id, local_files_only=local))
            kind = self._pipeline_kind(dict(config), model_id)
            txt_cls, _ = self._classes(kind)
            kwargs = self._pretrained_kwargs(kind, dtype)
            pipe = self._local_first(
                lambda local: txt_cls.from_pretrained(model_id, local_files_only=local, **kwargs)
            )
        except DiffusionLoadError:
            raise
        except Exception as exc:
            raise DiffusionLoadError(self._hub_error_message(model_id, exc, offline)) from exc
        return pipe, kind

    @classmethod
    def _hub_error_message(cls, model_id: str, exc: BaseException, offline: bool) -> str:
        # "owner/name" is also a relative path: say that no such folder exists either.
        folder = f" (No local folder {Path(model_id).absolute()} exists either.)"
        return cls._hub_error_text(model_id, exc, offline) + folder

    @staticmethod
    def _hub_error_text(model_id: str, exc: BaseException, offline: bool) -> str:
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
                "private models need `hf auth login` or HF_TOKEN; a local model needs its folder path."
            )
        if offline:
            return (
                f"{model_id} is not (fully) in the Hugging Face cache ({_hub_cache()}) and downloads "
                "are off (HF_HUB_OFFLINE=1 or offline mode). Fix: download it once with network "
                f"access (`hf download {model_id}`), or set diffusion.model to a local folder or "
                f".safetensors file. ({_first_line(exc)})"
            )
        return (
            f"could not load {model_id} from the Hugging Face Hub or its cache ({_hub_cache()}): "
            f"{_first_line(exc)}. Fix: check the network and the id, or set diffusion.model to a "
            "local folder or .safetensors file."
        )

    def _assemble(self, pipe: Any, kind: str, device: str, dtype: Any) -> None:
        from diffusers import DPMSolverMultistepScheduler

        self._check_tokenizers(pipe)
        txt_cls, img_cls = self._classes(kind)
        if not isinstance(pipe, txt_cls):  # pragma: no cover - loaders above use txt_cls
            pipe = txt_cls(**pipe.components)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
        components = dict(pipe.components)
        # Its own scheduler instance: schedulers keep per-run state (step index, history).
        components["scheduler"] = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        extra: dict[str, Any] = {"add_watermarker": False} if kind == "sdxl" else {"requires_safety_checker": False}
        # The constructor shares the module objects as they are; `from_pipe` would cast them.
        img = img_cls(**components, **extra)
        self._planner = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
            self._offload_owner = pipe
        else:
            pipe.to(device)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        if self.compile:
            pipe.unet.compile()  # in place: the object both pipelines hold stays the same
        for p in (pipe, img):
            p.set_progress_bar_config(disable=True)
        self._kind, self._device, self._dtype = kind, device, dtype
        self._img2img = img
        self._txt2img = pipe  # last: `loaded` turns true only on a complete engine

    @staticmethod
    def _check_tokenizers(pipe: Any) -> None:
        pairs = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")]
        for tok_name, enc_name in pairs:
            tok, enc = getattr(pipe, tok_name, None), getattr(pipe, enc_name, None)
            if tok is None or enc is None:
                continue
            vocab = getattr(enc.config, "vocab_size", None)
            if vocab is not None and len(tok) > vocab:
                raise DiffusionLoadError(
                    f"the model's {tok_name} has {len(tok)} tokens but its {enc_name} only "
                    f"{vocab}: the files do not belong together (an incomplete download?). "
                    "Fix: download the model again."
                )
            limit = getattr(enc.config, "max_position_embeddings", None)
            if limit and (tok.model_max_length is None or tok.model_max_length > limit):
                tok.model_max_length = int(limit)

    # ------------------------------------------------------------------ running

    def generator(self, seed: int) -> torch.Generator:
        """A ``torch.Generator`` on the execution device, seeded (also for the fusion noise)."""
        import torch

        device = self.device
        return torch.Generator(device=device).manual_seed(int(seed))

    def planned_steps(self, steps: int, strength: float | None = None) -> int:
        """Denoising steps a call will run: ``steps`` for a base image, and for img2img the
        scheduler's last ``int(steps * strength)`` steps (what diffusers' get_timesteps keeps)."""
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.load()
        with self._lock:
            planner = self._planner
            planner.set_timesteps(steps)
            timesteps = planner.timesteps
        if strength is None:
            return len(timesteps)
        strength = float(strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        init = min(int(steps * strength), steps)
        t_start = max(steps - init, 0)
        return len(timesteps[t_start * planner.order :])

    def _check_size(self, width: int | None, height: int | None) -> tuple[int, int]:
        default_w, default_h = self.default_size
        width = default_w if width is None else int(width)
        height = default_h if height is None else int(height)
        factor = self.vae_scale_factor
        if width < factor or height < factor or width % factor or height % factor:
            raise ValueError(f"width and height must be positive multiples of {factor}, got {width}x{height}")
        return width, height

    def _use(self, pipe: Any) -> Any:
        # With model offload both pipelines would fight over the hooks of the shared modules:
        # only the pipeline about to run holds them.
        if self.cpu_offload and self._offload_owner is not pipe:
            pipe.enable_model_cpu_offload(device=self._device)
            self._offload_owner = pipe
        return pipe

    def _callback(self, what: str, on_step: StepCallback | None, cancel: Any) -> Callable[..., Any]:
        def on_step_end(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            total = int(pipe.num_timesteps)
            if on_step is not None:
                on_step(i + 1, total)
            if _cancel_requested(cancel):
                raise DiffusionCancelled(i + 1, total, what)
            return kwargs

        return on_step_end

    def _run(self, pipe: Any, what: str, call: Callable[[], Any]) -> Any:
        """Run ``call``; an out-of-memory error becomes :class:`DiffusionOutOfMemory`.

        The original exception (whose traceback holds the run's tensors) is dropped before the
        cache is emptied, so the memory really comes back and the engine stays usable.
        """
        detail: str | None = None
        try:
            return call()
        except BaseException as exc:
            if not _is_oom(exc):
                self._release_offload(pipe)
                raise
            detail = _first_line(exc)
        # Outside the except block: the exception and its frames are gone.
        self._release_offload(pipe)
        self._free_memory()
        raise DiffusionOutOfMemory(
            f"Out of GPU memory during the {what} on {self._device} ({self._dtype}). {OOM_HINT} "
            f"The engine is still usable. ({detail})"
        )

    def _release_offload(self, pipe: Any) -> None:
        # A pipeline stopped by an exception never reached maybe_free_model_hooks().
        if self.cpu_offload and pipe is not None:
            try:
                pipe.maybe_free_model_hooks()
            except Exception:  # pragma: no cover - best effort on an error path
                pass

    def _free_memory(self) -> None:
        gc.collect()
        try:
            import torch
        except ImportError:  # pragma: no cover
            return
        device = self._device or ""
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif device == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()

    def base_latent(
        self,
        prompt: str,
        negative: str | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
        steps: int = 50,
        guidance: float = 4.5,
        seed: int,
        on_step: StepCallback | None = None,
        cancel: Any = None,
    ) -> torch.Tensor:
        """Text to latent (SPEC 3): a (1, 4, height/8, width/8) latent in the scaled space.

        ``width``/``height`` default to the model's own size (1024 for SDXL). The seed goes
        through a ``torch.Generator`` on the execution device.
        """
        import torch

        self.load()
        width, height = self._check_size(width, height)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        with self._lock:
            if _cancel_requested(cancel):
                raise DiffusionCancelled(0, 0, "base image")
            pipe = self._use(self._txt2img)

            def call() -> Any:
                # no_grad, not inference_mode: inference tensors refuse later in-place updates.
                with torch.no_grad():
                    return pipe(
                        prompt=prompt,
                        negative_prompt=negative,
                        width=width,
                        height=height,
                        num_inference_steps=int(steps),
                        guidance_scale=float(guidance),
                        generator=self.generator(seed),
                        output_type="latent",
                        callback_on_step_end=self._callback("base image", on_step, cancel),
                    ).images

            return self._run(pipe, "base image", call)

    def img2img_latent(
        self,
        latent: torch.Tensor,
        prompt: str,
        negative: str | None = None,
        *,
        strength: float,
        guidance: float,
        steps: int,
        seed: int,
        on_step: StepCallback | None = None,
        cancel: Any = None,
    ) -> torch.Tensor:
        """Latent to latent (SPEC 6.1): noise ``latent`` to ``strength`` and denoise it again.

        ``latent`` is a base latent as :meth:`base_latent` returns it (scaled space); diffusers
        takes a 4-channel tensor as latents and does not re-encode or re-scale it. Runs
        :meth:`planned_steps` ``(steps, strength)`` steps; fewer than one is a ``ValueError``.
        """
        import torch

        self.load()
        if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
            raise ValueError("latent must be a (B, C, H, W) tensor")
        channels = int(self._txt2img.unet.config.in_channels)
        if latent.shape[1] != channels:
            raise ValueError(f"latent must have {channels} channels, got shape {tuple(latent.shape)}")
        planned = self.planned_steps(steps, strength)
        if planned < 1:
            raise ValueError(
                f"img2img at strength {strength} with {steps} steps would run int(steps * strength)"
                " = 0 steps: raise the strength or the steps"
            )
        with self._lock:
            if _cancel_requested(cancel):
                raise DiffusionCancelled(0, 0, "refinement")
            pipe = self._use(self._img2img)

            def call() -> Any:
                with torch.no_grad():
                    return pipe(
                        prompt=prompt,
                        negative_prompt=negative,
                        image=latent,
                        strength=float(strength),
                        num_inference_steps=int(steps),
                        guidance_scale=float(guidance),
                        generator=self.generator(seed),
                        output_type="latent",
                        callback_on_step_end=self._callback("refinement", on_step, cancel),
                    ).images

            return self._run(pipe, "refinement", call)

    def decode(self, latent: torch.Tensor) -> Image.Image:
        """Latent (scaled space, batch of one) to a PIL image (SPEC 6.3).

        Divides by ``vae.config.scaling_factor`` (or undoes latents_mean/std normalisation),
        decodes in float32 when the VAE is float16 and its config asks for upcasting
        (``force_upcast``), then casts the VAE back.
        """
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        self.load()
        if not isinstance(latent, torch.Tensor):
            raise TypeError("decode takes a latent tensor")
        if latent.ndim == 3:
            latent = latent.unsqueeze(0)
        if latent.ndim != 4 or latent.shape[0] != 1:
            raise ValueError(f"decode takes one latent of shape (1, C, H, W), got {tuple(latent.shape)}")
        with self._lock:
            pipe = self._use(self._txt2img)
            vae = pipe.vae

            def call() -> Any:
                needs_upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
                try:
                    if needs_upcast:
                        vae.to(dtype=torch.float32)
                    with torch.no_grad():
                        z = latent.to(device=get_module_execution_device(vae), dtype=vae.dtype)
                        mean = getattr(vae.config, "latents_mean", None)
                        std = getattr(vae.config, "latents_std", None)
                        scale = float(vae.config.scaling_factor)
                        if mean is not None and std is not None:
                            shape = (1, z.shape[1], 1, 1)
                            mean_t = torch.tensor(mean, device=z.device, dtype=z.dtype).view(shape)
                            std_t = torch.tensor(std, device=z.device, dtype=z.dtype).view(shape)
                            z = z * std_t / scale + mean_t
                        else:
                            z = z / scale
                        image = vae.decode(z, return_dict=False)[0]
                        if getattr(pipe, "watermark", None) is not None:
                            image = pipe.watermark.apply_watermark(image)
                        return pipe.image_processor.postprocess(image.float(), output_type="pil")[0]
                finally:
                    if needs_upcast:
                        vae.to(dtype=torch.float16)

            try:
                return self._run(pipe, "decode", call)
            finally:
                if self.cpu_offload:
                    self._release_offload(pipe)
