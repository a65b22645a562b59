"""The diffusion room's running half: base latents, img2img latents, decode, encode.

:class:`DiffusionRunning` is the half of :class:`~critifusion_tui.engine.diffusion.Diffusion`
that runs the pipelines its loading half built (``engine/diffusion.py``: ``load`` sets the
attributes declared at the top of the class). Both denoising calls go through one helper,
:meth:`DiffusionRunning._denoise`: the cancel check before the first step, the offload hooks,
``no_grad``, the seeded generator, the step callback and the out-of-memory mapping are written
once. Like the rest of the engine, this module imports torch and diffusers only inside the
methods that run.

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
  ``(z - mean) * scaling_factor / std`` on the way in; :meth:`DiffusionRunning.decode` inverts
  that the way diffusers does (``z * std / scaling_factor + mean``), else ``z / scaling_factor``.
* img2img runs ``int(steps * strength)`` of the ``steps`` scheduler steps (diffusers'
  ``get_timesteps``): 50 steps at strength 0.74 run 37. :meth:`DiffusionRunning.planned_steps`
  computes that count from the scheduler, and ``on_step`` reports it as the total.

Progress and cancellation go through ``callback_on_step_end``: after every denoising step the
engine calls ``on_step(done, total)`` (``done`` = steps finished so far, 1..total) and then
checks ``cancel``; a cancel raises :class:`DiffusionCancelled` inside the callback, which
diffusers lets propagate at once (no further step, no decode).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.devices import empty_cache, is_oom
from critifusion_tui.engine.diffusion_errors import OOM_HINT, DiffusionCancelled, DiffusionOutOfMemory, first_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image

__all__ = ["DiffusionRunning", "StepCallback", "img2img_step_count", "vae_decode_dtype"]

StepCallback = Callable[[int, int], Any]
"""``on_step(done, total)``: called after each denoising step, ``done`` in 1..total."""


def img2img_step_count(steps: int, strength: float) -> int:
    """Steps an img2img call really runs: diffusers' ``min(int(steps * strength), steps)``.

    Pure arithmetic (no torch), for front ends that size a progress bar before the model is
    loaded; equals :meth:`DiffusionRunning.planned_steps` for DPM-Solver (one timestep per
    step). Note the float product: strength 29/100 at 100 steps runs 28 steps (0.29 * 100 < 29).
    """
    return min(int(int(steps) * float(strength)), int(steps))


def vae_decode_dtype(vae: Any) -> torch.dtype:
    """The dtype :meth:`DiffusionRunning.decode` runs ``vae`` in: float32 for a float16 VAE whose
    config asks for the upcast (``force_upcast``: SDXL's VAE overflows in float16 and decodes
    black or NaN), else the VAE's own dtype. bfloat16 has float32's exponent range, so a
    bfloat16 VAE decodes as it is (diffusers' own pipelines decide the same way)."""
    import torch

    if vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False)):
        return torch.float32
    return vae.dtype


@contextmanager
def _vae_in_decode_dtype(vae: Any) -> Iterator[None]:
    """Run ``vae`` in :func:`vae_decode_dtype` for the block, then cast it back (the modules
    are shared with the pipelines, which expect the dtype they were loaded in)."""
    before = vae.dtype
    target = vae_decode_dtype(vae)
    if target != before:
        vae.to(dtype=target)
    try:
        yield
    finally:
        if target != before:
            vae.to(dtype=before)


def _latent_stats(vae: Any, z: torch.Tensor) -> tuple[Any, Any, float]:
    """The VAE's latent normalisation for ``z``: (mean, std, scaling_factor), mean and std as
    (1, C, 1, 1) tensors on ``z``'s device and dtype, or None where the VAE has none (SDXL's
    and SD 1.5's VAEs scale only)."""
    import torch

    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    scale = float(vae.config.scaling_factor)
    if mean is None or std is None:
        return None, None, scale
    shape = (1, z.shape[1], 1, 1)
    mean_t = torch.tensor(mean, device=z.device, dtype=z.dtype).view(shape)
    std_t = torch.tensor(std, device=z.device, dtype=z.dtype).view(shape)
    return mean_t, std_t, scale


def _cancel_requested(cancel: Any) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)  # threading.Event, asyncio.Event
    if callable(is_set):
        return bool(is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(f"cancel must be a callable returning bool or an object with is_set(), got {type(cancel).__name__}")


def _step_callback(what: str, on_step: StepCallback | None, cancel: Any) -> Callable[..., Any]:
    """diffusers' ``callback_on_step_end``: report the step, then stop if a cancel was asked.

    It reads only Python numbers (the step index and the pipeline's step count), never the
    timestep ``t`` or a latent in ``kwargs``: reading a GPU tensor (``.item()``, ``.cpu()``,
    ``bool(t)``) would make the CPU wait for the GPU after every step, and the GPU would idle
    while the next step is queued.
    """

    def on_step_end(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        total = int(pipe.num_timesteps)
        if on_step is not None:
            on_step(i + 1, total)
        if _cancel_requested(cancel):
            raise DiffusionCancelled(i + 1, total, what)
        return kwargs

    return on_step_end


class DiffusionRunning:
    """Running the loaded pipelines; mixed into ``Diffusion``, whose ``load`` sets the state.

    Calls are serialised by the engine's lock: one UNet, one run at a time.
    """

    # Set by the loading half (Diffusion.__init__ and Diffusion.load).
    cpu_offload: bool
    _lock: threading.RLock
    _txt2img: Any
    _img2img: Any
    _planner: Any
    _offload_owner: Any
    _device: str | None
    _dtype: Any

    if TYPE_CHECKING:  # pragma: no cover - provided by the loading half

        def load(self) -> Any: ...

        @property
        def device(self) -> str: ...

        @property
        def default_size(self) -> tuple[int, int]: ...

        @property
        def vae_scale_factor(self) -> int: ...

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
        self.load()
        width, height = self._check_size(width, height)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return self._denoise(
            self._txt2img,
            "base image",
            prompt=prompt,
            negative=negative,
            steps=steps,
            guidance=guidance,
            seed=seed,
            on_step=on_step,
            cancel=cancel,
            width=width,
            height=height,
        )

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
        return self._denoise(
            self._img2img,
            "refinement",
            prompt=prompt,
            negative=negative,
            steps=steps,
            guidance=guidance,
            seed=seed,
            on_step=on_step,
            cancel=cancel,
            image=latent,
            strength=float(strength),
        )

    def _denoise(
        self,
        pipe: Any,
        what: str,
        *,
        prompt: str,
        negative: str | None,
        steps: int,
        guidance: float,
        seed: int,
        on_step: StepCallback | None,
        cancel: Any,
        **inputs: Any,
    ) -> torch.Tensor:
        """One denoising run of ``pipe`` to a latent: the helper behind :meth:`base_latent` and
        :meth:`img2img_latent`, which add their own ``inputs`` (size; image and strength).

        Under the lock: a cancel asked before the start stops here; the pipeline takes the
        offload hooks; it runs under ``no_grad`` with a generator seeded with ``seed`` and
        ``on_step`` / ``cancel`` checked after every step; out of memory becomes
        :class:`DiffusionOutOfMemory`. ``what`` names the run in progress and errors.
        """
        import torch

        with self._lock:
            if _cancel_requested(cancel):
                raise DiffusionCancelled(0, 0, what)
            pipe = self._use(pipe)

            def call() -> Any:
                # no_grad, not inference_mode: inference tensors refuse later in-place updates.
                with torch.no_grad():
                    return pipe(
                        prompt=prompt,
                        negative_prompt=negative,
                        **inputs,
                        num_inference_steps=int(steps),
                        guidance_scale=float(guidance),
                        generator=self.generator(seed),
                        output_type="latent",
                        callback_on_step_end=_step_callback(what, on_step, cancel),
                    ).images

            return self._run(pipe, what, call)

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
                with _vae_in_decode_dtype(vae), torch.no_grad():
                    z = latent.to(device=get_module_execution_device(vae), dtype=vae.dtype)
                    mean, std, scale = _latent_stats(vae, z)
                    z = z * std / scale + mean if mean is not None else z / scale
                    image = vae.decode(z, return_dict=False)[0]
                    if getattr(pipe, "watermark", None) is not None:
                        image = pipe.watermark.apply_watermark(image)
                    return pipe.image_processor.postprocess(image.float(), output_type="pil")[0]

            return self._run_vae(pipe, "decode", call)

    def encode(self, image: Image.Image) -> torch.Tensor:
        """A PIL image to a latent in the scaled space: the inverse of :meth:`decode`, so the
        result goes into :meth:`img2img_latent` like a base latent (``critifusion refine``).

        The image must already have the size to work at (positive multiples of
        :attr:`vae_scale_factor`; ``engine/image_input.fit`` brings it there). It is encoded
        the way diffusers' img2img encodes a 3-channel image (its image processor, float32 when
        an fp16 VAE asks for upcasting, ``(z - mean) * scaling_factor / std`` where the VAE has
        latents mean/std, else ``z * scaling_factor``), but with the posterior's mean instead
        of a sample: the same image always gives the same latent and no seed is drawn from.
        Returns (1, C, H/8, W/8) in the UNet's dtype, on the execution device.
        """
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        self.load()
        width, height = self._check_size(*image.size)
        with self._lock:
            pipe = self._use(self._txt2img)
            vae = pipe.vae

            def call() -> Any:
                with _vae_in_decode_dtype(vae), torch.no_grad():
                    pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
                    x = pixels.to(device=get_module_execution_device(vae), dtype=vae.dtype)
                    z = vae.encode(x).latent_dist.mode()
                    mean, std, scale = _latent_stats(vae, z)
                    z = (z - mean) * scale / std if mean is not None else z * scale
                    return z.to(dtype=pipe.unet.dtype).contiguous()  # a view of the moments otherwise

            return self._run_vae(pipe, "encode", call)

    # ------------------------------------------------------------------ helpers

    def _run_vae(self, pipe: Any, what: str, call: Callable[[], Any]) -> Any:
        """A VAE pass (decode, encode): errors mapped as for the UNet, and with CPU offload the
        modules given back afterwards (no denoising loop ends it with the pipeline's hooks)."""
        try:
            return self._run(pipe, what, call)
        finally:
            if self.cpu_offload:
                self._release_offload(pipe)

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
            detail = first_line(exc)
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
                # Silent on purpose: the caller is already raising the error the person sees
                # (out of memory, a failed pass); a second one from the clean-up would hide it.
                pass

    def _free_memory(self) -> None:
        gc.collect()
        empty_cache(self._device or "")
