"""What each process of a batch prints.

Several processes share one terminal or one log: each line says which rank wrote it
(``[rank 1] [base] started``), except when there is only one process, whose lines stay as
they were. On a terminal rank 0 also draws one progress bar for the whole batch (prompts
finished by any process, read from the run folders); the other ranks print plain lines, as
their Rich bars would fight rank 0's for the same lines of the screen.
"""

from __future__ import annotations

from typing import TextIO

from critifusion_tui.engine.events import Event
from critifusion_tui.headless import PlainReporter, RichReporter, describe


class RankedPlainReporter(PlainReporter):
    def __init__(self, stream: TextIO, prefix: str) -> None:
        super().__init__(stream)
        self.prefix = prefix

    def __call__(self, event: Event) -> None:
        line = describe(event)
        if line:
            print(f"{self.prefix}{line}", file=self.stream, flush=True)

    def batch_progress(self, finished: int, total: int) -> None:
        pass  # plain output has its "finished" lines


class BatchRichReporter(RichReporter):
    """Rank 0 on a terminal: the run's own lines and bars, plus one bar for the batch."""

    def __init__(self, stream: TextIO, total: int) -> None:
        super().__init__(stream)
        self._batch = self.progress.add_task("prompts", total=total, rate="")

    def batch_progress(self, finished: int, total: int) -> None:
        self.progress.update(self._batch, completed=finished, total=total)


def make_batch_reporter(stream: TextIO, *, rank: int, world_size: int, total: int):
    if rank == 0 and stream.isatty():
        return BatchRichReporter(stream, total)
    return RankedPlainReporter(stream, f"[rank {rank}] " if world_size > 1 else "")
