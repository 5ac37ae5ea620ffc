"""The matrix of a suite: one cell per precision and backend, baselines first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: a precision on a backend."""

    precision: str
    backend: str
    is_baseline: bool

    @property
    def id(self) -> str:
        return f"{self.precision}-{self.backend}"


def plan(suite: Any) -> list[Cell]:
    """Baselines first (every candidate is compared with the baseline on its own backend)."""
    cells = [Cell(suite.baseline, b, True) for b in suite.backends]
    cells += [Cell(p, b, False) for b in suite.backends for p in suite.candidates]
    return cells
