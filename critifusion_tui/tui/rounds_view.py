"""The app's side of critique rounds (engine/rounds.py): the round strip under the images.

The strip (tui/widgets/round_strip.py) shows every round with its score as the engine reports
them (``RoundScored``), and the highlighted round's image in the "Refined" view. Its keys
become the engine's moves here: pick a round as the final image, one more round, stop the
rounds in flight. Where the run stands afterwards is the app's ``_show_where``, as for every
other move.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from critifusion_tui.engine.events import RoundScored
from critifusion_tui.engine.stages import Stage
from critifusion_tui.tui.app_surface import AppSurface
from critifusion_tui.tui.widgets.image_view import ImageView
from critifusion_tui.tui.widgets.round_strip import RoundStrip


class RoundsView(AppSurface):
    """Mixed into the app, beside EngineEventsView."""

    if TYPE_CHECKING:  # CritiFusionApp's own helpers (tui/app_surface.py has the rest)

        def _drive(self, move: Any, description: str) -> None: ...
        def _noise_label(self) -> str: ...

        @property
        def busy(self) -> bool: ...

    # ---------------------------------------------------------------- from the engine

    def _on_round_scored(self, event: RoundScored) -> None:
        self.query_one(RoundStrip).show_rounds(
            event.rounds, final=event.final, stopped=event.stopped, running=not event.final
        )

    def _on_rounds_started(self) -> None:
        strip = self.query_one(RoundStrip)
        strip.show_rounds(strip.rounds, final=0, stopped="", running=True)

    def _show_round_image(self, number: int, image: str) -> None:
        run = self.active_run
        if run is None or not image:
            return
        view = self.query_one("#image-refine", ImageView)
        view.border_title = f"Refined, round {number}"
        view.show(run.store.path(image), self._noise_label())

    def _fill_rounds(self, run: Any) -> None:
        """The strip as the run folder has it (a reopened run, the end of a move)."""
        strip = self.query_one(RoundStrip)
        record = run.store.stages.get(Stage.ROUNDS) if run is not None else None
        if not record or not record.get("rounds"):
            strip.clear()
            return
        done = record.get("status") == "done"
        strip.show_rounds(
            record["rounds"], final=record.get("final", 0) if done else 0, stopped=record.get("stopped", "")
        )
        if done and record.get("final_image"):
            self._show_round_image(record["final"], record["final_image"])
            strip.highlighted = record["final"]
            strip.focus()

    # ---------------------------------------------------------------- the strip's keys

    def on_round_strip_highlighted(self, message: RoundStrip.Highlighted) -> None:
        self._show_round_image(message.number, message.image)

    def on_round_strip_picked(self, message: RoundStrip.Picked) -> None:
        run = self.active_run
        if run is None or self.busy:
            self.bell()
            return
        try:
            run.pick_round(message.number)
        except (ValueError, OSError) as exc:
            self.notify(str(exc), severity="warning", markup=False)
            return
        self._fill_rounds(run)
        self.notify(f"Round {message.number} is the final image (recorded as your choice).", markup=False)

    def on_round_strip_more_wanted(self, _message: RoundStrip.MoreWanted) -> None:
        run = self.active_run
        if run is None or self.busy:
            self.bell()
            return
        self._drive(run.more_rounds(), "one more round")

    def on_round_strip_stop_wanted(self, _message: RoundStrip.StopWanted) -> None:
        run = self.active_run
        if run is not None and run.stop_rounds():
            self._hint("Stopping the rounds: the round under way is dropped, the ones done are kept.")
