"""The device a model runs on: which one, in which dtype, its memory, and its speed switches.

Shared by the diffusion room (``Diffusion.plan`` resolves both settings before the load plan)
and the eval scorers. torch is imported inside each function, never at module import: the
front ends import the engine before they need torch.

The speed switches (``channels_last``, fused QKV projections, regional ``torch.compile``) are
resolved here from the settings and the device, without torch, so ``critifusion doctor`` says
which will be used and why before anything loads; ``diffusion_loading.apply_speed_switches``
carries them out. What attention kernel runs is asked of torch by :func:`sdpa_backend`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.diffusion_errors import DiffusionLoadError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = [
    "COMPILE_MODES",
    "DIFFUSION_HEADROOM_BYTES",
    "SpeedSwitches",
    "cuda_memory_short",
    "empty_cache",
    "is_oom",
    "resolve_device",
    "resolve_dtype",
    "resolve_switches",
    "sdpa_backend",
    "sdpa_enabled",
]

# What one SDXL pass at 1024 px and its VAE decode take beside the loaded weights (activations,
# the decode's float32 upcast), with a margin: less free than this is "short".
DIFFUSION_HEADROOM_BYTES = 6 * 2**30

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
                f'(torch {torch.__version__}). Fix: set diffusion.device = "auto" or "cpu", '
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
    raise DiffusionLoadError(f"unknown diffusion.device {device!r}: expected auto, cpu, mps, cuda or cuda:N")


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
            raise DiffusionLoadError(f"unknown diffusion.dtype {dtype!r}: expected auto, float16, bfloat16 or float32")
        resolved = getattr(torch, _DTYPE_NAMES[name])
    if resolved not in (torch.float16, torch.bfloat16, torch.float32):
        raise DiffusionLoadError(f"diffusion.dtype {resolved} is not supported")
    if device == "cpu" and resolved == torch.float16:
        raise DiffusionLoadError(
            "float16 is not supported for diffusion on the CPU (slow or missing kernels). "
            'Fix: set diffusion.dtype = "auto" (float32) or "bfloat16".'
        )
    return resolved


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` says the accelerator ran out of memory (CUDA, MPS, other allocators)."""
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


def empty_cache(device: str) -> None:
    """Hand the allocator's cached blocks on ``device`` back (CUDA, MPS; nothing on the CPU)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


# ---------------------------------------------------------------------- speed switches

# torch.compile modes offered for the UNet's repeated blocks. The CUDA-graph modes
# ("reduce-overhead", "max-autotune") are left out: each compiled block would keep its own
# graph and memory pool, at two latent sizes (base and refinement share one, a new size adds
# more), and none of that has been measured.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def _switch_value(name: str, value: Any) -> bool | str:
    """``"auto"``, ``True`` or ``False`` (TOML booleans; the words true/false/on/off too)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word == "auto":
        return "auto"
    if word in ("true", "on", "1"):
        return True
    if word in ("false", "off", "0"):
        return False
    raise DiffusionLoadError(f'unknown diffusion.{name} {value!r}: expected "auto", true or false')


@dataclass(frozen=True)
class SpeedSwitches:
    """The speed switches one load applies, each with the reason it is on or off.

    ``channels_last``: the UNet's and the VAE's 4-D weights in NHWC order (cuDNN's fast
    convolutions on tensor cores). ``fuse_qkv``: one matrix product for an attention's query,
    key and value (key and value in cross-attention), diffusers' ``fuse_qkv_projections``.
    ``compile``: ``torch.compile`` of the UNet's repeated transformer blocks only (regional),
    with ``compile_mode``.
    """

    channels_last: bool
    fuse_qkv: bool
    compile: bool
    compile_mode: str = "default"
    why: dict[str, str] = field(default_factory=dict)

    def auto(self, name: str) -> bool:
        """Whether switch ``name`` was decided by ``"auto"`` (not set by a person)."""
        return self.why.get(name, "").startswith("auto")

    def record(self) -> dict[str, Any]:
        """For the manifest: each switch as ``{"on": bool, "why": str}`` (compile with its mode)."""
        compile_record: dict[str, Any] = {"on": self.compile, "why": self.why.get("compile", "")}
        if self.compile:
            compile_record.update(mode=self.compile_mode, scope="regional")
        return {
            "channels_last": {"on": self.channels_last, "why": self.why.get("channels_last", "")},
            "fuse_qkv": {"on": self.fuse_qkv, "why": self.why.get("fuse_qkv", "")},
            "compile": compile_record,
        }

    def line(self) -> str:
        """One line for a person: ``channels_last on (auto: CUDA); fused QKV off (...); ...``."""

        def part(label: str, key: str, on: bool) -> str:
            return f"{label} {'on' if on else 'off'} ({self.why.get(key, '')})"

        compiled = part("compile", "compile", self.compile)
        if self.compile:
            compiled = f"compile on, regional, mode {self.compile_mode} ({self.why.get('compile', '')})"
        return "; ".join(
            (
                part("channels_last", "channels_last", self.channels_last),
                part("fused QKV", "fuse_qkv", self.fuse_qkv),
                compiled,
            )
        )


def resolve_switches(
    device: str,
    *,
    channels_last: Any = "auto",
    fuse_qkv: Any = "auto",
    compile: Any = False,
    compile_mode: str = "default",
    cpu_offload: bool = False,
) -> SpeedSwitches:
    """The switches a load on ``device`` applies: ``auto`` is on for CUDA only (and fused QKV
    also off with ``cpu_offload``); ``true`` forces a switch anywhere torch runs it, except
    compile, which is refused off CUDA (minutes of compiling for no gain)."""
    cuda = device.startswith("cuda")
    why: dict[str, str] = {}

    cl = _switch_value("channels_last", channels_last)
    if cl == "auto":
        why["channels_last"] = "auto: CUDA" if cuda else f"auto: CUDA only, the device is {device}"
        cl = cuda
    else:
        why["channels_last"] = f"diffusion.channels_last = {'true' if cl else 'false'}"

    fq = _switch_value("fuse_qkv", fuse_qkv)
    if fq == "auto":
        if not cuda:
            why["fuse_qkv"] = f"auto: CUDA only, the device is {device}"
            fq = False
        elif cpu_offload:
            # Offload moves the modules with .to(), which copies the fused weights apart from
            # the ones they share memory with: each attention would cost its weights twice.
            why["fuse_qkv"] = "auto: off with diffusion.cpu_offload, which would hold the fused weights twice"
            fq = False
        else:
            why["fuse_qkv"] = "auto: CUDA"
            fq = True
    else:
        why["fuse_qkv"] = f"diffusion.fuse_qkv = {'true' if fq else 'false'}"

    cp = _switch_value("compile", compile)
    if cp == "auto":
        raise DiffusionLoadError('diffusion.compile takes true or false, not "auto"')
    if cp and not cuda:
        raise DiffusionLoadError(
            f"diffusion.compile = true needs a CUDA GPU, but the device is {device}: "
            "compiling the UNet there takes minutes and gains nothing. "
            "Fix: set diffusion.compile = false."
        )
    mode = str(compile_mode or "default").strip().lower()
    if mode not in COMPILE_MODES:
        raise DiffusionLoadError(
            f"unknown diffusion.compile_mode {compile_mode!r}: expected {' or '.join(repr(m) for m in COMPILE_MODES)}"
        )
    why["compile"] = f"diffusion.compile = {'true' if cp else 'false'}"
    return SpeedSwitches(bool(cl), bool(fq), bool(cp), mode, why)


# ---------------------------------------------------------------------- attention kernels

_SDPA_FLAGS = (
    ("flash", "flash_sdp_enabled"),
    ("mem_efficient", "mem_efficient_sdp_enabled"),
    ("cudnn", "cudnn_sdp_enabled"),
    ("math", "math_sdp_enabled"),
)


def sdpa_enabled() -> list[str]:
    """The CUDA SDPA kernels torch may pick (``torch.backends.cuda.*_sdp_enabled()``)."""
    import torch

    names = []
    for name, flag in _SDPA_FLAGS:
        check = getattr(torch.backends.cuda, flag, None)
        if check is not None and check():
            names.append(name)
    return names


def sdpa_backend(device: str, dtype: Any, *, heads: int, head_dim: int, tokens: int = 256, context: int = 77) -> str:
    """The kernel ``F.scaled_dot_product_attention`` picks on ``device`` for attention of these
    shapes without a mask (what diffusers' attention processors call): ``flash_attention``,
    ``efficient_attention``, ``cudnn_attention``, ``math``; ``"unknown"`` where torch cannot say.

    Asks torch's own dispatcher (``torch._fused_sdp_choice``) with a tiny probe, so no kernel
    runs. Self-attention (``tokens`` keys) and cross-attention (``context`` keys) are asked
    separately; where they differ both are named.
    """
    try:
        import torch
        from torch.nn.attention import SDPBackend

        choose = getattr(torch, "_fused_sdp_choice", None)
        if choose is None:
            return "unknown"
        # SDPBackend is a pybind11 enum: its members convert with .value.
        names = {int(member.value): name.lower() for name, member in SDPBackend.__members__.items()}
        q = torch.zeros(2, heads, tokens, head_dim, device=device, dtype=dtype)
        kv = torch.zeros(2, heads, context, head_dim, device=device, dtype=dtype)
        self_kernel = names.get(int(choose(q, q, q)), "unknown")
        cross_kernel = names.get(int(choose(q, kv, kv)), "unknown")
    except Exception:  # a private helper: any change in it must not stop a load
        return "unknown"
    if self_kernel == cross_kernel:
        return self_kernel
    return f"self-attention {self_kernel}, cross-attention {cross_kernel}"


def cuda_memory_short(device: str, headroom: int = DIFFUSION_HEADROOM_BYTES) -> bool:
    """Whether a CUDA device has less memory free for the next diffusion than `headroom`.

    Free is the device's own count (other processes, an Ollama server among them, take from
    it) plus what torch's allocator holds cached but unused (torch reuses that). Never short
    off CUDA: there is no GPU memory to share.
    """
    if not device.startswith("cuda"):
        return False
    import torch

    target = torch.device(device)
    free, _total = torch.cuda.mem_get_info(target)
    cached = torch.cuda.memory_reserved(target) - torch.cuda.memory_allocated(target)
    return free + cached < headroom
