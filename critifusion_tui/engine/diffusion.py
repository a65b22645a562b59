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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.devices import empty_cache, is_oom, resolve_device, resolve_dtype
from critifusion_tui.engine.diffusion_errors import (
    DiffusionCancelled,
    DiffusionError,
    DiffusionLoadError,
    DiffusionOutOfMemory,
)
from critifusion_tui.engine.diffusion_errors import first_line as _first_line
from critifusion_tui.engine.diffusion_loading import QuietLibraries, build_pipeline, pipeline_classes
from critifusion_tui.engine.load_output import CapturedOutput, capture_output
from critifusion_tui.engine.model_source import LoadPlan, plan_load
from critifusion_tui.engine.scheduler_plan import scheduler_overrides
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

# Config keys (proposed) that the out-of-memory message points at.
OOM_HINT = (
    "Settings that help: diffusion.cpu_offload = true (keeps only the running model on the GPU), "
    "diffusion.vae_tiling = true (decodes the image in tiles), a smaller diffusion.width/height, "
    'or diffusion.dtype = "float16".'
)


def img2img_step_count(steps: int, strength: float) -> int:
    """Steps an img2img call really runs: diffusers' ``min(int(steps * strength), steps)``.

    Pure arithmetic (no torch), for front ends that size a progress bar before the model is
    loaded; equals :meth:`Diffusion.planned_steps` for DPM-Solver (one timestep per step).
    Note the float product: strength 29/100 at 100 steps runs 28 steps (0.29 * 100 < 29).
    """
    return min(int(int(steps) * float(strength)), int(steps))


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


class Diffusion:
    """SDXL / SD 1.5 diffusion for one session: load once, base latent, img2img latent, decode.

    ``model`` is a Hugging Face hub id (read from the cache's snapshot folder with no request;
    downloaded only when not cached and neither ``offline`` nor ``HF_HUB_OFFLINE=1``), a local
    diffusers folder, a single-file ``.safetensors`` / ``.ckpt`` checkpoint, or
    ``"tiny-random"`` / ``"tiny-random-sd15"`` (tiny random pipelines built offline in about a
    second; their images are noise, see :attr:`is_tiny_random`). What a load will read is
    decided first, without loading, by :meth:`plan` (``engine/model_source.py``), which
    ``doctor`` calls too.

    ``device`` ``auto`` picks CUDA, then Apple MPS, then the CPU; ``dtype`` ``auto`` is float16
    on CUDA and MPS, float32 on the CPU (``bfloat16`` is selectable). ``variant`` ``auto``,
    ``fp16`` or ``none`` picks the weight files (see the plan). ``cpu_offload`` uses
    ``enable_model_cpu_offload`` (accelerator only), ``vae_tiling`` the VAE's tiled decode,
    ``compile`` ``torch.compile`` of the UNet (CUDA only; in place, so both pipelines share it).
    ``capture_fds`` are the file descriptors pointed away from the terminal while loading
    (the app draws on fd 2, so it passes ``(1,)``); what was caught is in :attr:`load_messages`.

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
        variant: str | None = "auto",
        offline: bool = False,
        single_file_config: str | None = None,
        tiny_seed: int = 0,
        capture_fds: tuple[int, ...] = (1, 2),
    ) -> None:
        self.model = str(model).strip()
        self.requested_device = device
        self.requested_dtype = dtype
        self.cpu_offload = bool(cpu_offload)
        self.vae_tiling = bool(vae_tiling)
        self.compile = bool(compile)
        self.variant = variant or "auto"
        self.offline = bool(offline)
        self.single_file_config = single_file_config or None
        self.tiny_seed = int(tiny_seed)
        self.capture_fds = tuple(capture_fds)
        self.load_messages: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._txt2img: Any = None
        self._img2img: Any = None
        self._planner: Any = None
        self._offload_owner: Any = None
        self._plan: LoadPlan | None = None
        self._device: str | None = None
        self._dtype: Any = None

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> Diffusion:
        """Build from a ``DiffusionConfig``-like object (duck-typed: ``model``, ``device``,
        ``dtype`` and, when present, ``variant``, ``single_file_config``, ``cpu_offload``,
        ``vae_tiling``, ``compile``)."""
        kwargs: dict[str, Any] = {
            "device": getattr(cfg, "device", "auto"),
            "dtype": getattr(cfg, "dtype", "auto"),
        }
        for key in ("cpu_offload", "vae_tiling", "compile", "variant", "offline", "single_file_config"):
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
        if self._plan is not None:
            return self._plan.tiny
        if is_tiny_name(self.model):
            return True
        path = Path(self.model).expanduser()
        return path.is_dir() and is_tiny_folder(path)

    @property
    def kind(self) -> str:
        """``"sdxl"`` or ``"sd"`` (SD 1.x / 2.x); loads the model."""
        self.load()
        assert self._plan is not None
        return self._plan.kind

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
        """What was loaded, for the manifest and ``critifusion doctor`` (loads the model):
        the plan's record (source, variant, weight files with sizes, single-file config) with
        the device, dtype and scheduler actually in use."""
        self.load()
        assert self._plan is not None
        record = self._plan.describe()
        record.update(
            pipeline=type(self._txt2img).__name__,
            device=self._device,
            dtype=str(self._dtype).removeprefix("torch."),
            scheduler=self.scheduler_summary(),
            default_size=list(self.default_size),
            cpu_offload=self.cpu_offload,
            vae_tiling=self.vae_tiling,
            compile=self.compile,
        )
        return record

    def scheduler_summary(self) -> dict[str, Any]:
        """The scheduler that runs (read back from the built object, not from the plan)."""
        config = self.txt2img.scheduler.config
        return {
            "class": type(self._txt2img.scheduler).__name__,
            "algorithm": config.get("algorithm_type"),
            "sigmas": "karras" if config.get("use_karras_sigmas") else "default",
            "timestep_spacing": config.get("timestep_spacing"),
            "prediction_type": config.get("prediction_type"),
        }

    # ------------------------------------------------------------------ loading

    def plan(self) -> LoadPlan:
        """What :meth:`load` will read, decided from configs and file headers only.

        Resolves the device and dtype, refuses settings that cannot work on them, and returns
        the :class:`LoadPlan` (or raises :class:`DiffusionLoadError` naming the missing piece).
        ``critifusion doctor`` calls this too, so both always agree.
        """
        device = resolve_device(self.requested_device)
        dtype = resolve_dtype(self.requested_dtype, device)
        if self.cpu_offload and device == "cpu":
            raise DiffusionLoadError(
                "diffusion.cpu_offload needs a GPU (it moves models between the CPU and the "
                "GPU), but the device is the CPU. Fix: set diffusion.cpu_offload = false."
            )
        if self.compile and not device.startswith("cuda"):
            raise DiffusionLoadError(
                f"diffusion.compile = true needs a CUDA GPU, but the device is {device}: "
                "compiling the UNet there takes minutes and gains nothing. "
                "Fix: set diffusion.compile = false."
            )
        return plan_load(
            self.model,
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            variant=self.variant,
            single_file_config=self.single_file_config,
            offline=self.offline,
        )

    def load(self) -> Diffusion:
        """Load the model once (later calls return at once). Raises :class:`DiffusionLoadError`."""
        if self._txt2img is not None:
            return self
        with self._lock:
            if self._txt2img is not None:
                return self
            plan = self.plan()
            dtype = resolve_dtype(plan.dtype, plan.device)
            caught: CapturedOutput | None = None
            try:
                with capture_output(self.capture_fds) as caught, QuietLibraries():
                    pipe = build_pipeline(plan, dtype, tiny_seed=self.tiny_seed)
            finally:  # also on failure: what a library printed often says why
                self.load_messages = caught.messages() if caught is not None else []
            if plan.source == "download":
                plan = self.plan()  # now cached: record the files really read
            self._plan = plan
            detail: str | None = None
            try:
                self._assemble(pipe, plan.kind, plan.device, dtype)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                detail = _first_line(exc)
            if detail is not None:  # outside the except block: the frames are released
                del pipe
                self._offload_owner = self._planner = None
                self._device = plan.device
                self._free_memory()
                raise DiffusionOutOfMemory(
                    f"Out of GPU memory while moving {self.model} to {plan.device} ({dtype}). "
                    f"{OOM_HINT} ({detail})"
                )
            return self

    def unload(self) -> None:
        """Drop the pipelines and free their memory (a later call loads again)."""
        with self._lock:
            self._txt2img = self._img2img = self._planner = self._offload_owner = None
            self._free_memory()

    def _scheduler(self, saved: Any) -> Any:
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(saved, **scheduler_overrides(dict(saved)))

    def _assemble(self, pipe: Any, kind: str, device: str, dtype: Any) -> None:
        self._check_tokenizers(pipe)
        txt_cls, img_cls = pipeline_classes(kind)
        if not isinstance(pipe, txt_cls):  # pragma: no cover - loaders above use txt_cls
            pipe = txt_cls(**pipe.components)
        saved = pipe.scheduler.config
        pipe.scheduler = self._scheduler(saved)
        components = dict(pipe.components)
        # Its own scheduler instance: schedulers keep per-run state (step index, history).
        components["scheduler"] = self._scheduler(saved)
        extra: dict[str, Any] = {"add_watermarker": False} if kind == "sdxl" else {"requires_safety_checker": False}
        # The constructor shares the module objects as they are; `from_pipe` would cast them.
        img = img_cls(**components, **extra)
        self._planner = self._scheduler(saved)

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
        self._device, self._dtype = device, dtype
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
            if not is_oom(exc):
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
        empty_cache(self._device or "")

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
