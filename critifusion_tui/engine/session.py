"""A session: what outlives one run of the method.

:class:`Session` holds the settings, the provider router (one client per backend), the
diffusion model (loaded once, and started loading ahead of the stage that draws first:
:meth:`Session.preload`) and the eval scorers. It makes runs (:meth:`Session.new_run`) and
reopens them (:meth:`Session.resume`) the same way for every front end; a run itself is
:class:`~critifusion_tui.engine.pipeline.Run`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
from concurrent.futures import Future
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from critifusion_tui import __version__
from critifusion_tui.engine.events import Emit, ignore
from critifusion_tui.engine.store import RunStore
from critifusion_tui.redact import configure as remember_secrets

if TYPE_CHECKING:  # pragma: no cover - typing only
    from critifusion_tui.engine.pipeline import Run

VARIANTS = ("full", "all")

# One preload at a time in a process: sessions made one after another (a test suite, the app
# reloading its settings) queue their loads instead of building models side by side.
_ONE_PRELOAD = threading.Lock()


def versions(model: str) -> dict[str, str]:
    """Package versions for the manifest, read from metadata (importing nothing heavy)."""
    found = {"critifusion-tui": __version__, "model": model}
    for dist in ("torch", "diffusers", "transformers"):
        with suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


class Session:
    """What outlives one run: settings, the provider clients, the loaded diffusion model."""

    def __init__(self, settings, *, router=None, diffusion=None, make_diffusion=None, overrides=()) -> None:
        from critifusion_tui.engine.diffusion import Diffusion
        from critifusion_tui.engine.offline import with_rules
        from critifusion_tui.providers.router import ProviderRouter

        self.settings = settings
        # The --set overrides of this process: a reopened run applies them on its own settings.
        self.overrides = list(overrides)
        remember_secrets(settings)
        self.router = router or with_rules(ProviderRouter(settings))  # `rules` is the engine's own
        # How a diffusion model is made (the app captures only fd 1 while loading).
        self._make_diffusion = make_diffusion or Diffusion.from_config
        self.diffusion = diffusion or self._make_diffusion(settings.diffusion)
        self._diffusion_config = settings.diffusion
        self._scorers = None
        # The model load started ahead of the base stage (preload): which model, and its end.
        self._loading: tuple[Any, Future[bool]] | None = None
        self._closed = False
        self._untold_load: Any = None  # a model preloaded whose load messages no run showed yet

    def diffusion_for(self, cfg) -> Any:
        """The diffusion model for a run's `cfg`: the loaded one when it loads the same model
        the same way, else a new one that replaces it (one model in memory at a time)."""
        from critifusion_tui.engine.resume import same_model

        if not same_model(cfg, self._diffusion_config):
            self.diffusion = self._make_diffusion(cfg)
            self._diffusion_config = cfg
        return self.diffusion

    # ---------------------------------------------------------------- loading ahead

    def preload(self, cfg=None) -> None:
        """Start importing the diffusion stack and loading the model for `cfg` (the session's
        settings when None) in a worker thread, and return at once.

        A run calls this when it starts, so the load runs while the text stages wait on the
        providers; the app calls it when it is idle after start-up. The stage that draws
        first waits for the load only if it has not ended (:meth:`Run.load_model`), and a
        load that failed is reported there, once, as the stage's failure. Calling it again
        while a load is in flight, after it succeeded, or before its failure was reported
        does nothing. The thread is a daemon: quitting does not wait for a load. Preloads of
        several sessions run one after another, and one whose session was closed before its
        turn loads nothing.
        """
        diffusion = self.diffusion_for(cfg if cfg is not None else self.settings.diffusion)
        if diffusion.loaded:
            return
        if self._loading is not None and self._loading[0] is diffusion:
            return  # in flight, or ended and not yet taken by a stage
        future: Future[bool] = Future()  # True: loaded; False: skipped (the session closed)
        future.set_running_or_notify_cancel()  # a waiter's cancel never cancels the load

        def load() -> None:
            with _ONE_PRELOAD:
                if self._closed:
                    future.set_result(False)
                    return
                try:
                    diffusion.load()
                except BaseException as exc:  # kept for the stage that draws first
                    future.set_exception(exc)
                else:
                    self._untold_load = diffusion
                    future.set_result(True)

        self._loading = (diffusion, future)
        threading.Thread(target=load, name="critifusion-preload", daemon=True).start()

    def load_state(self, diffusion) -> str:
        """``ready``, ``loading`` (a preload in flight), ``failed`` (a preload that failed and
        was not reported yet) or ``idle`` (nobody loads it: the stage that draws will)."""
        if diffusion.loaded:
            return "ready"
        if self._loading is None or self._loading[0] is not diffusion:
            return "idle"
        future = self._loading[1]
        if not future.done():
            return "loading"
        if future.exception() is not None:
            return "failed"
        return "ready" if future.result() else "idle"

    async def wait_loaded(self, diffusion) -> None:
        """Until a preload of `diffusion` in flight ends, however it ends."""
        if self._loading is not None and self._loading[0] is diffusion:
            await _ended(self._loading[1])

    async def take_load(self, diffusion) -> bool:
        """Wait for the preload of `diffusion`, if one was started; raise its failure (once:
        the next call loads afresh). Returns whether it loaded the model."""
        if self._loading is None or self._loading[0] is not diffusion:
            return False
        future = self._loading[1]
        await _ended(future)  # a cancel here leaves the load alone
        if future.exception() is not None:
            self._loading = None
            future.result()  # raises the load's own exception
        return future.result()

    def untold_load_messages(self, diffusion) -> list[tuple[str, str]]:
        """What the libraries printed while a preload of `diffusion` ran, the first time a
        run asks (the notices of one load are shown once)."""
        if self._untold_load is not diffusion:
            return []
        self._untold_load = None
        return list(diffusion.load_messages)

    @property
    def scorers(self):
        """The eval scorers of this session (:class:`~critifusion_tui.eval.scorers.ScorerCache`):
        each metric's model is loaded on first use and kept. Nothing loads until one is used."""
        if self._scorers is None:
            from critifusion_tui.eval.scorers import ScorerCache

            self._scorers = ScorerCache(self.settings)
        return self._scorers

    async def aclose(self) -> None:
        self._closed = True  # a preload still queued behind another one does not start
        await self.router.aclose()

    def new_run(
        self,
        prompt: str,
        *,
        seed: int | None = None,
        out: Path | None = None,
        variants: str = "full",
        emit: Emit = ignore,
        force: bool = False,
    ) -> Run:
        """A fresh run folder for `prompt` (exactly `out` when given)."""
        from critifusion_tui.config import settings_for_manifest

        if variants not in VARIANTS:
            raise ValueError(f"variants must be one of {', '.join(VARIANTS)}, got {variants!r}")
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        seed = self.settings.diffusion.seed if seed is None else seed
        store = RunStore.create(
            prompt=prompt.strip(),
            seed=seed,
            config=settings_for_manifest(self.settings),
            versions=versions(self.settings.diffusion.model),
            output_dir=self.settings.output.path(),
            folder=out,
            extra={"variants": variants, "tiny_random": self.diffusion.is_tiny_random},
            force=force,
        )
        from critifusion_tui.engine.pipeline import Run

        return Run(self, store, emit=emit)

    def resume(self, folder: Path, *, emit: Emit = ignore, overrides=None) -> Run:
        """Reopen a run folder the same way for every front end; the stages it completed are
        not run again.

        The run goes on with its own method settings (sizes, steps, seeds, models), plus this
        session's ``--set`` overrides (or `overrides`), and with the current configuration's
        provider connections, never the folder's recorded URLs or key variables
        (engine/resume.py). What differs from the current configuration is in
        ``run.differences`` and said as notices when the run starts working again. Opening
        changes nothing on disk (the app reopens runs just to look at them). Raises
        StoreError for a folder that is no readable run, ConfigError for its settings.
        """
        from critifusion_tui.engine.resume import resumed_settings
        from critifusion_tui.engine.store_paths import MANIFEST

        store = RunStore.open(folder)
        where = f"{folder}/{MANIFEST}"
        settings, differences = resumed_settings(
            store.record, self.settings, self.overrides if overrides is None else overrides, where
        )
        from critifusion_tui.engine.pipeline import Run

        run = Run(self, store, emit=emit, settings=settings)
        run.differences = differences
        run.reopened = True
        return run


async def _ended(future: Future[Any]) -> None:
    """Until a thread's future ends, however it ends; its exception stays for the caller to
    read from `future` (the loop's copy of it is read here, so it is never logged as lost)."""
    waiter = asyncio.wrap_future(future)
    waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
    await asyncio.wait([waiter])
