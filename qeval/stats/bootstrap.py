"""The seeded bootstrap engine (percentile and BCa) behind the paired intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special

from qeval.stats._inputs import _CHUNK_ELEMENTS, _cluster_index


def _resample_sums(units: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column sums of `n_resamples` bootstrap resamples of the rows of `units` (U x k).

    Why not scipy.stats.bootstrap: it materialises every resample (B x n values, 10^8
    for one 10k-item cell at B=10k) and the gate runs dozens of cells. A resample of
    the mean only depends on how often each *distinct* row is drawn, which is
    Multinomial(U, counts/U) over the distinct rows: exact, and for binary paired
    data (three distinct differences -1, 0, 1) it costs 3 binomial draws per resample;
    scores rounded to 0.01 (ROUGE, F1) give a few dozen distinct differences.
    With many distinct rows we fall back to drawing indices, in chunks.
    """
    n_units, k = units.shape
    # Group rows equal up to float noise (0.3-0.1 != 0.5-0.3 in binary floating point); each
    # group is represented by its exact mean, so the full-sample sum is unchanged.
    _, inverse, counts = np.unique(np.round(units, 12), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    distinct = np.column_stack([np.bincount(inverse, weights=units[:, j]) for j in range(k)]) / counts[:, None]
    out = np.empty((n_resamples, k))
    if len(distinct) * 8 <= n_units:
        probs = counts / n_units
        step = max(1, _CHUNK_ELEMENTS // len(distinct))
        for start in range(0, n_resamples, step):
            stop = min(n_resamples, start + step)
            weights = rng.multinomial(n_units, probs, size=stop - start)
            out[start:stop] = weights @ distinct
    else:
        step = max(1, _CHUNK_ELEMENTS // n_units)
        for start in range(0, n_resamples, step):
            stop = min(n_resamples, start + step)
            idx = rng.integers(0, n_units, size=(stop - start, n_units))
            for j in range(k):
                out[start:stop, j] = units[idx, j].sum(axis=1)
    return out


def _jackknife_acceleration(theta_jack: np.ndarray) -> np.ndarray:
    """BCa acceleration from leave-one-unit-out estimates (last axis): Efron & Tibshirani (1993) 14.15."""
    u = theta_jack.mean(axis=-1, keepdims=True) - theta_jack
    num = (u**3).sum(axis=-1)
    den = 6.0 * (u**2).sum(axis=-1) ** 1.5
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _bias_z0(theta: np.ndarray, boot: np.ndarray) -> np.ndarray:
    """BCa bias correction z0; ties with the estimate count half (binary deltas tie often)."""
    n_boot = boot.shape[-1]
    below = (boot < theta[..., None]).sum(axis=-1)
    equal = (boot == theta[..., None]).sum(axis=-1)
    frac = np.clip((below + 0.5 * equal) / n_boot, 0.5 / n_boot, 1 - 0.5 / n_boot)
    return special.ndtri(frac)


def _quantile_sorted(sorted_boot: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Linear-interpolated quantiles (numpy's default) of sorted rows at per-row levels."""
    n_boot = sorted_boot.shape[-1]
    pos = np.clip(np.asarray(probs, dtype=float), 0.0, 1.0) * (n_boot - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_boot - 1)
    frac = pos - lo
    v_lo = np.take_along_axis(sorted_boot, lo[..., None], axis=-1)[..., 0]
    v_hi = np.take_along_axis(sorted_boot, hi[..., None], axis=-1)[..., 0]
    return v_lo + frac * (v_hi - v_lo)


def _bootstrap_bounds(theta: np.ndarray, boot: np.ndarray, accel: np.ndarray, level_lo: float,
                      level_hi: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Percentile or BCa bounds at quantile levels (level_lo, level_hi); vectorised over leading axes."""
    theta = np.broadcast_to(np.asarray(theta, dtype=float), boot.shape[:-1])
    sorted_boot = np.sort(boot, axis=-1)
    lo_p = np.full(theta.shape, level_lo)
    hi_p = np.full(theta.shape, level_hi)
    if method == "bootstrap-bca":
        z0 = _bias_z0(theta, boot)
        lo_p, hi_p = (_bca_level(z0, accel, special.ndtri(p)) for p in (lo_p, hi_p))
    return _quantile_sorted(sorted_boot, lo_p), _quantile_sorted(sorted_boot, hi_p)


def _bca_level(z0: np.ndarray, accel: np.ndarray, z: np.ndarray) -> np.ndarray:
    """BCa-adjusted quantile level Phi(z0 + w / (1 - a w)), w = z0 + z (Efron 1987).

    Saturates instead of returning NaN: beyond the pole 1 - a w = 0 (and at z = +-inf)
    the adjusted level is 0 or 1 by continuity.
    """
    w = np.asarray(z0 + z, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = 1 - np.where(np.isfinite(w), accel * w, 0.0)
        inner = np.where(np.isfinite(w) & (denom > 0), w / np.where(denom > 0, denom, 1.0),
                         np.where(w > 0, np.inf, -np.inf))
    return special.ndtr(z0 + inner)


def _bootstrap_pvalues(theta: np.ndarray, boot: np.ndarray, accel: np.ndarray, threshold: float,
                       method: str) -> tuple[np.ndarray, np.ndarray]:
    """One-sided bootstrap p-values for H0 "theta <= threshold" and for H0 "theta >= threshold".

    Monte-Carlo p-values use (k + 1) / (B + 1) (Davison & Hinkley 1997, 4.2), and ties
    with the threshold count against rejection, so both are conservative. For BCa the
    level at which the BCa bound equals the threshold is found by inverting the BCa
    quantile map, so "p <= alpha" and "bound beyond threshold" agree.
    """
    n_boot = boot.shape[-1]
    at_or_below = (boot <= threshold).sum(axis=-1)
    at_or_above = (boot >= threshold).sum(axis=-1)
    p_ni = (at_or_below + 1) / (n_boot + 1)
    p_inf = (at_or_above + 1) / (n_boot + 1)
    if method != "bootstrap-bca":
        return p_ni, p_inf
    z0 = _bias_z0(np.asarray(theta, dtype=float), boot)

    def invert(cdf_at_threshold: np.ndarray) -> np.ndarray:
        # Solve Phi(z0 + (z0+z)/(1 - a(z0+z))) = G(threshold) for z.
        v = special.ndtri(cdf_at_threshold) - z0
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = 1 + np.where(np.isfinite(v), accel * v, 0.0)
            w = np.where(denom > 0, v / np.where(denom > 0, denom, 1.0), np.where(v < 0, -np.inf, np.inf))
        return w - z0

    z_lo = invert(p_ni)                  # lower bound at level Phi(z_lo) sits at the threshold
    z_hi = invert(1.0 - p_inf)
    floor = 1.0 / (n_boot + 1)
    return np.clip(special.ndtr(z_lo), floor, 1.0), np.clip(special.ndtr(-z_hi), floor, 1.0)


@dataclass(frozen=True)
class _Bootstrap:
    theta: float
    boot: np.ndarray
    accel: float


def _bootstrap_statistic(units: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int,
                         seed: int) -> _Bootstrap:
    """Bootstrap a statistic of the column sums of `units`; BCa acceleration by jackknife over units."""
    rng = np.random.default_rng(seed)
    total = units.sum(axis=0)
    boot = statistic(_resample_sums(units, n_resamples, rng))
    with np.errstate(invalid="ignore", divide="ignore"):
        jack = statistic(total - units)     # leave one unit (item or cluster) out, O(U)
    jack = jack[np.isfinite(jack)]
    accel = float(_jackknife_acceleration(jack)) if jack.size > 2 else 0.0
    return _Bootstrap(theta=float(statistic(total[None, :])[0]), boot=boot, accel=accel)


def _ratio_of_sums(s: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return s[:, 0] / s[:, 1]


def _delta_units(d: np.ndarray, clusters: Sequence | np.ndarray | None) -> np.ndarray:
    """Resampling units for the mean of d: (sum of d, count) per item, or per cluster (cluster bootstrap)."""
    if clusters is None:
        return np.column_stack([d, np.ones_like(d)])
    inverse, n_clusters = _cluster_index(clusters, d.size)
    return np.column_stack([np.bincount(inverse, weights=d, minlength=n_clusters),
                            np.bincount(inverse, minlength=n_clusters).astype(float)])


def _ratio_units(b: np.ndarray, c: np.ndarray, clusters: Sequence | np.ndarray | None) -> np.ndarray:
    """Resampling units for sum(c)/sum(b): pairs stay together, clusters stay together."""
    if clusters is None:
        return np.column_stack([c, b])
    inverse, n_clusters = _cluster_index(clusters, b.size)
    return np.column_stack([np.bincount(inverse, weights=c, minlength=n_clusters),
                            np.bincount(inverse, weights=b, minlength=n_clusters)])
