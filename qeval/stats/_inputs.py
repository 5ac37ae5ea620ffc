"""Shared input checks and type names of the statistics package."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from qeval.errors import QevalError


Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]
SequentialVerdict = Literal["PASS", "FAIL", "INCONCLUSIVE", "CONTINUE"]
MarginKind = Literal["absolute", "relative"]
IntervalMethod = Literal["normal", "score", "bootstrap-percentile", "bootstrap-bca"]
Correction = Literal["bonferroni", "holm", "bh", "none"]
Spending = Literal["obrien-fleming", "pocock"]
_CHUNK_ELEMENTS = 4_000_000

# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------

def _as_scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise QevalError(f"{name} scores must be a flat list of per-sample numbers, got shape {arr.shape}.",
                         fix="pass one score per sample, in doc_id order")
    if arr.size == 0:
        raise QevalError(f"{name} scores are empty.", fix="run at least one sample")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise QevalError(f"{name} score at position {bad} is {arr[bad]}, not a finite number.",
                         fix="drop or re-score that sample on both sides")
    return arr


def _paired(baseline: Sequence[float] | np.ndarray,
            candidate: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = _as_scores(baseline, "baseline")
    c = _as_scores(candidate, "candidate")
    if b.shape != c.shape:
        raise QevalError(f"baseline has {b.size} scores but candidate has {c.size}; paired statistics "
                         "need one candidate score per baseline score.",
                         fix="match samples by doc_id and keep only doc_ids present on both sides")
    return b, c


def is_binary(*arrays: np.ndarray) -> bool:
    """True when every value is 0 or 1 (accuracy-like metrics).

    Args:
        arrays: score arrays.

    Returns:
        Whether all arrays hold only 0 and 1.
    """
    return all(bool(np.all((a == 0) | (a == 1))) for a in arrays)


def _cluster_index(clusters: Sequence | np.ndarray, n: int) -> tuple[np.ndarray, int]:
    ids = np.asarray(clusters)
    if ids.shape != (n,):
        raise QevalError(f"clusters has {ids.size} ids for {n} samples; every sample needs a cluster id "
                         "(e.g. the passage its question is about).",
                         fix="pass one cluster id per sample, or clusters=None")
    _, inverse = np.unique(ids, return_inverse=True)
    n_clusters = int(inverse.max()) + 1
    return inverse.ravel(), n_clusters
