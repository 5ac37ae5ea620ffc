"""Progress bars (rich), one helper so every long step looks the same."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int, disable: bool = False) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; draws a bar on a terminal, stays quiet in logs and CI."""
    if disable or total == 0 or not sys.stderr.isatty():
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


class CellProgress:
    """Items done / planned for one cell, with an ETA from the seconds per item measured in this process.

    Planned is the most the design can evaluate (every task's planned n); an adaptive design may stop a
    task sooner, so the ETA is an upper bound there. Items already on disk (a resumed run) count as done
    but not in the rate, which only this process's own evaluation measures.
    """

    def __init__(self, cell_id: str, planned: int, done: int = 0, adaptive: bool = False) -> None:
        self.cell_id, self.planned, self.done, self.adaptive = cell_id, planned, done, adaptive
        self._items = 0
        self._seconds = 0.0

    def advance(self, items: int, seconds: float) -> str:
        """Count `items` evaluated in `seconds`; the progress line to show."""
        self.done += items
        self._items += items
        self._seconds += seconds
        return self.line()

    def eta_seconds(self) -> float | None:
        if not self._items:
            return None
        return max(self.planned - self.done, 0) * self._seconds / self._items

    def line(self) -> str:
        share = f" ({self.done / self.planned:.0%})" if self.planned else ""
        eta = self.eta_seconds()
        when = "" if eta is None else (f", ETA {_clock(eta)}" + (" at most" if self.adaptive else "")
                                       + f" at {self._seconds / self._items:.2f} s/item")
        return f"{self.cell_id}: {self.done}/{self.planned} items{share}{when}"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
