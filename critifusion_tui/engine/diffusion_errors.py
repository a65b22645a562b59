"""The diffusion room's errors, apart so the torch-free loading plan can raise them too.

Every message is meant for the user as it is: what went wrong, where, and the fix.
"""

from __future__ import annotations

__all__ = [
    "OOM_HINT",
    "DiffusionCancelled",
    "DiffusionError",
    "DiffusionLoadError",
    "DiffusionOutOfMemory",
    "first_line",
]

# The settings an out-of-memory message points at (loading and running both say it).
OOM_HINT = (
    "Settings that help: diffusion.cpu_offload = true (keeps only the running model on the GPU), "
    "diffusion.vae_tiling = true (decodes the image in tiles), a smaller diffusion.width/height, "
    'or diffusion.dtype = "float16".'
)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (library messages can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(". ") if text else type(exc).__name__


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
