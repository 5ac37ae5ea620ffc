"""Multiplicity adjustments: Holm, Benjamini-Hochberg, and the next rejection level."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats as sps

from qeval.errors import QevalError
from qeval.stats._inputs import Correction


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (family-wise error control).

    Hand-written because scipy has no Holm; checked against statsmodels'
    multipletests(method="holm") in the tests.

    Args:
        pvalues: raw p-values.

    Returns:
        Adjusted p-values, same order.
    """
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def bh_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg (1995) adjusted p-values (false discovery rate), via scipy.

    Args:
        pvalues: raw p-values.

    Returns:
        Adjusted p-values, same order.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return p.copy()
    return np.asarray(sps.false_discovery_control(p, method="bh"), dtype=float)


def adjust_pvalues(pvalues: Sequence[float] | np.ndarray, correction: Correction = "holm") -> np.ndarray:
    """Adjust p-values of a family of hypotheses.

    Args:
        pvalues: raw p-values.
        correction: "bonferroni" or "holm" (family-wise error), "bh" (false discovery rate) or "none".

    Returns:
        Adjusted p-values, same order.
    """
    if correction == "bonferroni":
        p = np.asarray(pvalues, dtype=float)
        return np.minimum(p * max(1, p.size), 1.0)
    if correction == "holm":
        return holm_adjust(pvalues)
    if correction == "bh":
        return bh_adjust(pvalues)
    if correction == "none":
        return np.asarray(pvalues, dtype=float).copy()
    raise QevalError(f"unknown correction {correction!r}.", fix="use bonferroni, holm, bh or none")


def next_rejection_level(pvalues: Sequence[float] | np.ndarray, alpha: float, correction: Correction) -> float:
    """Raw p-value level a not-yet-rejected hypothesis must reach to be rejected next.

    Used to size "how many more samples would settle it" under a correction.
    Bonferroni: alpha / m; Holm: alpha / (m - R); BH: alpha (R + 1) / m; none: alpha; R = current rejections.

    Args:
        pvalues: raw p-values of the family.
        alpha: family level.
        correction: "holm", "bh" or "none".

    Returns:
        The per-test level.
    """
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if correction == "none" or m == 0:
        return alpha
    if correction == "bonferroni":
        return alpha / m
    rejected = int(np.sum(adjust_pvalues(p, correction) <= alpha))
    if rejected >= m:
        return alpha
    return alpha / (m - rejected) if correction == "holm" else alpha * (rejected + 1) / m
