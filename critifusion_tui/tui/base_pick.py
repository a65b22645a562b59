"""A person picks another best-of-N base in the app (docs/method.md 10.2).

The thumbnails (``widgets/base_candidates.py``) post the pick; this asks first, since the
critique and the refinement of the old base are discarded, then has the engine rewrite the
base (``Run.pick_base``) and runs the critique again as a move of the app, like a re-run.
Kept out of ``app.py``, which only routes the message here.
"""

from __future__ import annotations

from typing import Any

from critifusion_tui.engine.stages import Stage, spec


def ask_and_pick(app: Any, number: int) -> None:
    """Confirm, then make candidate `number` (1-based) the base and criticise it again."""
    run = app.active_run
    if run is None or app.busy:
        app.bell()
        return
    lost = [spec(s).title for s in run.rerun_discards(Stage.CRITIQUE) if run.done(s)]
    discards = f" This discards: {', '.join(lost)}." if lost else ""

    def go() -> None:
        from critifusion_tui.engine.flow import FlowError
        from critifusion_tui.engine.store import StoreError

        try:
            run.pick_base(number)
        except (FlowError, StoreError, OSError) as exc:
            app.notify(f"Cannot pick base candidate {number}: {exc}", severity="error", timeout=10, markup=False)
            return
        app.composing = False
        app._show_where()  # the rail says at once that the critique and what follows are to run
        app._drive(run.rerun(Stage.CRITIQUE), f"critique of base candidate {number}")

    app._confirm(
        f"Make base candidate {number} the base? The critique runs again on it.{discards}",
        go,
        yes="Pick it",
        no="Keep",
    )
