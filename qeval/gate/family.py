"""The decision family: which claims share the suite's alpha, fixed at plan time.

A cell (candidate x backend) SHIPs only if every one of its rules passes: an
intersection-union test (Berger 1982), which keeps the cell's false-ship rate at the
level of its rules with no correction across them. Across cells the family is the
suite's planned cells, never the cells that happen to have run, so `qeval run` and
`pytest -m quality -k <cell>` give a cell the same verdict on the same data:

- bonferroni (default): every cell at alpha / C. A cell's verdict depends on its own
  data only; adding or removing other cells' results changes nothing.
- holm: step-down over the cells' p-values (the IUT p-value of a cell is the largest
  of its rules'); a planned cell without results counts as not rejected (p = 1), so a
  partial run is never less conservative than the full one. More power when several
  cells ship; fixed sampling only.
- bh: Benjamini-Hochberg over the cells (false discovery rate); fixed sampling only.
- none: alpha per cell.

In group-sequential and anytime sampling the runner stops a task at the cell's level,
which must be known before other cells have run: holm and bh fall back to bonferroni
there, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from qeval import stats

CellKey = tuple[str, str]  # (candidate, backend)
FALLBACK_REASON = ("the sampling design stops tasks at each cell's level before other cells have run, so the "
                   "step-down over cells is replaced by its first step, alpha / cells")


@dataclass(frozen=True)
class Family:
    """The multiplicity family of a run.

    Attributes:
        cells: the planned candidate cells, (candidate, backend).
        correction: what the suite asked for (gate.correction).
        alpha: the family's one-sided level.
        sampling_mode: fixed, group-sequential or anytime (qeval.sampling).
    """

    cells: tuple[CellKey, ...]
    correction: str
    alpha: float
    sampling_mode: str = "fixed"

    @classmethod
    def planned(cls, suite: Any) -> "Family":
        """The family of a suite: its candidates on its backends, as planned."""
        cells = tuple((c, b) for b in suite.backends for c in suite.candidates)
        return cls(cells=cells, correction=suite.gate.correction, alpha=suite.gate.alpha,
                   sampling_mode=suite.sampling.mode)

    @classmethod
    def of(cls, keys: Iterable[CellKey], correction: str, alpha: float, sampling_mode: str = "fixed") -> "Family":
        """A family of the given cells (tests and re-analyses without a suite)."""
        return cls(cells=tuple(dict.fromkeys(keys)), correction=correction, alpha=alpha,
                   sampling_mode=sampling_mode)

    @property
    def size(self) -> int:
        return len(self.cells)

    @property
    def effective_correction(self) -> str:
        if self.correction in ("holm", "bh") and self.sampling_mode != "fixed":
            return "bonferroni"
        return self.correction

    def fixed_level(self) -> float:
        """The level of every cell where it does not depend on other cells (bonferroni, none)."""
        if self.effective_correction == "none":
            return self.alpha
        return self.alpha / max(1, self.size)

    def multipliers(self, cell_pvalues: Mapping[CellKey, float]) -> dict[CellKey, float]:
        """Per cell, s >= 1 such that a rule of the cell passes iff s * p_rule <= alpha.

        Args:
            cell_pvalues: the IUT p-value (largest rule p-value) of each cell with results;
                planned cells missing here count as p = 1.
        """
        correction = self.effective_correction
        keys = list(self.cells) + [k for k in cell_pvalues if k not in self.cells]
        if correction == "none":
            return {k: 1.0 for k in keys}
        if correction == "bonferroni":
            return {k: float(max(1, self.size)) for k in keys}
        p = np.array([float(cell_pvalues.get(k, 1.0)) for k in keys])
        adjusted = stats.adjust_pvalues(p, correction)
        out = {}
        for k, raw, adj in zip(keys, p, adjusted):
            out[k] = float(adj / raw) if raw > 0 else float(max(1, len(keys)))
        return out

    def describe(self) -> str:
        """One sentence for the report: what the family is and why."""
        c = self.size
        base = (f"{c} planned cell{'s' if c != 1 else ''} (candidates x backends of the suite); within a cell SHIP "
                "needs every rule (intersection-union test, no correction across its tasks)")
        corr = self.effective_correction
        if corr == "bonferroni":
            text = f"{base}; across cells Bonferroni, each cell at alpha/{c} = {self.alpha / max(1, c):.4g}, so a " \
                   "cell's verdict depends on its own data only"
        elif corr == "holm":
            text = f"{base}; across cells Holm's step-down over the cells' p-values (a cell without results counts " \
                   "as not rejected)"
        elif corr == "bh":
            text = f"{base}; across cells Benjamini-Hochberg (false discovery rate {self.alpha:g})"
        else:
            text = f"{base}; no correction across cells (alpha {self.alpha:g} per cell)"
        if corr != self.correction:
            text += f" ({self.correction} was asked for: {FALLBACK_REASON})"
        return text
