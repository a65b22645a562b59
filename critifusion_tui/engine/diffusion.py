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

The running (base latents, img2img latents, decode; progress, cancel, out of memory) is
:class:`~critifusion_tui.engine.diffusion_running.DiffusionRunning`, mixed in below; device and
dtype resolution is ``engine/devices.py``, the load plan ``engine/model_source.py``, building
the pipeline ``engine/diffusion_loading.py``, the errors ``engine/diffusion_errors.py``. The
names other code imports from here (``Diffusion``, the errors, ``StepCallback``,
``img2img_step_count``, ``resolve_device``, ``resolve_dtype``) stay importable from here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.devices import SpeedSwitches, is_oom, resolve_device, resolve_dtype, resolve_switches
from critifusion_tui.engine.diffusion_errors import (
    OOM_HINT,
    DiffusionCancelled,
    DiffusionError,
    DiffusionLoadError,
    DiffusionOutOfMemory,
)
from critifusion_tui.engine.diffusion_errors import first_line as _first_line
from critifusion_tui.engine.diffusion_loading import (
    QuietLibraries,
    apply_speed_switches,
    attention_record,
    build_pipeline,
    pipeline_classes,
)
from critifusion_tui.engine.diffusion_running import (
    DiffusionRunning,
    StepCallback,
    img2img_step_count,
    vae_decode_dtype,
)
from critifusion_tui.engine.load_output import CapturedOutput, capture_output
from critifusion_tui.engine.model_source import LoadPlan, plan_load
from critifusion_tui.engine.scheduler_plan import scheduler_overrides
from critifusion_tui.engine.tiny_sdxl import is_tiny_folder, is_tiny_name

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

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


class Diffusion(DiffusionRunning):
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
    ``enable_model_cpu_offload`` (accelerator only), ``vae_tiling`` the VAE's tiled decode.
    The speed switches (``engine/devices.py``, :class:`SpeedSwitches`): ``channels_last`` and
    ``fuse_qkv`` (``"auto"`` = on CUDA, ``True`` forces them anywhere), ``compile``
    ``torch.compile`` of the UNet's repeated blocks with ``compile_mode`` (CUDA only); all in
    place on the shared modules, so both pipelines run with them.
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
        channels_last: bool | str = "auto",
        fuse_qkv: bool | str = "auto",
        compile_mode: str = "default",
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
        self.channels_last = channels_last
        self.fuse_qkv = fuse_qkv
        self.compile_mode = compile_mode
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
        self._switches: SpeedSwitches | None = None
        self._speed_done: dict[str, Any] = {}
        self._attention: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> Diffusion:
        """Build from a ``DiffusionConfig``-like object (duck-typed: ``model``, ``device``,
        ``dtype`` and, when present, ``variant``, ``single_file_config``, ``cpu_offload``,
        ``vae_tiling``, ``compile``, ``channels_last``, ``fuse_qkv``, ``compile_mode``)."""
        kwargs: dict[str, Any] = {
            "device": getattr(cfg, "device", "auto"),
            "dtype": getattr(cfg, "dtype", "auto"),
        }
        keys = (
            "cpu_offload",
            "vae_tiling",
            "compile",
            "channels_last",
            "fuse_qkv",
            "compile_mode",
            "variant",
            "offline",
            "single_file_config",
        )
        for key in keys:
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
        the device, dtype and scheduler actually in use, the speed switches with the reason
        for each (``speed``), the attention processors and SDPA kernel (``attention``) and the
        dtype the VAE decodes in (float32 for a float16 VAE that asks for the upcast)."""
        self.load()
        assert self._plan is not None and self._switches is not None
        record = self._plan.describe()
        speed = self._switches.record()
        if "fused" in self._speed_done:
            speed["fuse_qkv"]["models"] = list(self._speed_done["fused"])
        if "compiled_blocks" in self._speed_done:
            speed["compile"]["blocks"] = self._speed_done["compiled_blocks"]
        record.update(
            pipeline=type(self._txt2img).__name__,
            device=self._device,
            dtype=str(self._dtype).removeprefix("torch."),
            scheduler=self.scheduler_summary(),
            default_size=list(self.default_size),
            cpu_offload=self.cpu_offload,
            vae_tiling=self.vae_tiling,
            compile=self.compile,
            speed=speed,
            attention=dict(self._attention),
            vae_decode_dtype=str(vae_decode_dtype(self._txt2img.vae)).removeprefix("torch."),
        )
        return record

    def switches(self) -> SpeedSwitches:
        """The speed switches a load applies on this device, each with its reason (resolves the
        device; loads nothing). ``critifusion doctor`` prints :meth:`SpeedSwitches.line`."""
        if self._switches is not None:
            return self._switches
        return self._resolve_switches(resolve_device(self.requested_device))

    def _resolve_switches(self, device: str) -> SpeedSwitches:
        return resolve_switches(
            device,
            channels_last=self.channels_last,
            fuse_qkv=self.fuse_qkv,
            compile=self.compile,
            compile_mode=self.compile_mode,
            cpu_offload=self.cpu_offload,
        )

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
        self._resolve_switches(device)  # refuses compile off CUDA, unknown values
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
                    f"Out of GPU memory while moving {self.model} to {plan.device} ({dtype}). {OOM_HINT} ({detail})"
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
        # On the device now: the switches change the shared modules in place (fusing before a
        # .to() would copy the fused weights apart from the layers that share them).
        switches = self._resolve_switches(device)
        self._speed_done = apply_speed_switches(pipe, switches)
        self._switches = switches
        self._attention = attention_record(pipe, device, dtype)
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
