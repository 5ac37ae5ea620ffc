"""Paired statistics behind the gate: pure functions over per-sample scores.

Conventions (see STATISTICS.md):
- `baseline` and `candidate` are per-sample scores matched by lm-eval doc_id
  (same order), in the metric's own units (0/1 for accuracy-like metrics).
  d_i = candidate_i - baseline_i, so a negative delta is a regression.
- For binary scores, n10 counts samples the baseline got right and the
  candidate got wrong (a lost answer), n01 the reverse (a gained answer).
- Non-inferiority at margin m: H0 "delta <= -m" (absolute) or
  "candidate/baseline <= 1 - m" (relative "recovery", Kurtic et al. 2024).
  One-sided level alpha, so the interval that carries the decision is the
  two-sided (1 - 2 alpha) interval: its lower end is the one-sided bound.
- Every function is deterministic: bootstraps draw from
  `np.random.default_rng(seed)`.

Nothing here reads or writes files; results are small frozen dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Literal, Sequence

import numpy as np
from scipy import special, stats as sps
from scipy.optimize import brentq

from qeval.errors import QevalError

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]
SequentialVerdict = Literal["PASS", "FAIL", "INCONCLUSIVE", "CONTINUE"]
MarginKind = Literal["absolute", "relative"]
IntervalMethod = Literal["normal", "score", "bootstrap-percentile", "bootstrap-bca"]
Correction = Literal["holm", "bh", "none"]
Spending = Literal["obrien-fleming", "pocock"]

# Elements per bootstrap chunk: bounds memory at ~32 MB per array whatever n and B are.
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


# ----------------------------------------------------------------------------
# Standard errors (Miller 2024, "Adding Error Bars to Evals", appendix A)
# ----------------------------------------------------------------------------

def _mean_covariance(columns: np.ndarray, clusters: Sequence | np.ndarray | None) -> tuple[np.ndarray, int]:
    """Covariance matrix of the column means of `columns` (n x k), cluster-robust if asked.

    Miller (2024) appendix A: Var(mean) = sum over clusters of (sum of residuals in
    the cluster)^2 / n^2. We multiply by C/(C-1), the usual small-sample factor,
    so that with one sample per cluster the result equals the textbook
    var(ddof=1)/n exactly and the clustered SE never undercuts the plain one
    merely by construction.
    """
    n = columns.shape[0]
    resid = columns - columns.mean(axis=0)
    if clusters is None:
        n_units = n
        sums = resid
    else:
        inverse, n_units = _cluster_index(clusters, n)
        sums = np.zeros((n_units, columns.shape[1]))
        np.add.at(sums, inverse, resid)
    if n_units < 2:
        return np.full((columns.shape[1], columns.shape[1]), np.nan), n_units
    cov = sums.T @ sums / n**2 * (n_units / (n_units - 1))
    return cov, n_units


def clustered_se(values: Sequence[float] | np.ndarray, clusters: Sequence | np.ndarray) -> float:
    """Cluster-robust standard error of the mean (Miller 2024, appendix A).

    Use it when samples share a source (several questions on one passage): their
    errors are correlated and the plain SE is too small.

    Args:
        values: per-sample values (e.g. paired differences d_i).
        clusters: one cluster id per sample.

    Returns:
        The standard error of mean(values); with one sample per cluster it equals
        std(values, ddof=1) / sqrt(n).
    """
    x = _as_scores(values, "values")
    cov, _ = _mean_covariance(x[:, None], clusters)
    return float(math.sqrt(cov[0, 0]))


# ----------------------------------------------------------------------------
# Bootstrap engine (hand-written: see _resample_sums for why)
# ----------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------
# Tango's score test for paired binary data
# ----------------------------------------------------------------------------

def _tango_restricted_p10(n10: np.ndarray, n01: np.ndarray, n: np.ndarray, delta0: np.ndarray) -> np.ndarray:
    """Restricted MLE of P(baseline right, candidate wrong) under p01 - p10 = delta0 (Tango 1998, eq. 3).

    Root of 2n q^2 + B q + C = 0 with B = -(n01 + n10) + (2n - n01 + n10) delta0,
    C = -n10 delta0 (1 - delta0). Written in the cancellation-free form on each side.
    """
    a, b = n01, n10
    big_b = -a - b + (2 * n - a + b) * delta0
    big_c = -b * delta0 * (1 - delta0)
    disc = np.sqrt(np.maximum(big_b * big_b - 8 * n * big_c, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        neg = (disc - big_b) / (4 * n)
        pos = np.where(big_b + disc > 0, -2 * big_c / np.where(big_b + disc > 0, big_b + disc, 1.0), 0.0)
    return np.where(big_b <= 0, neg, pos)


def _tango_z(n10: np.ndarray, n01: np.ndarray, n: np.ndarray, delta0: np.ndarray | float) -> np.ndarray:
    """Tango's (1998) score statistic for H0: delta = delta0, delta = (n01 - n10)/n; vectorised.

    Unlike the Wald statistic it uses the variance under H0 (restricted MLE), so it
    stays honest with few or no discordant pairs: zero flips on 5 samples do not
    prove anything, and the score test says so where Wald's SE of 0 would not.
    """
    n10 = np.asarray(n10, dtype=float)
    n01 = np.asarray(n01, dtype=float)
    n = np.asarray(n, dtype=float)
    delta0 = np.asarray(delta0, dtype=float)
    q = _tango_restricted_p10(n10, n01, n, delta0)
    var = n * (2 * q + delta0 * (1 - delta0))
    num = n01 - n10 - n * delta0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = num / np.sqrt(np.maximum(var, 0.0))
        return np.where(var > 1e-300, z, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))


def _tango_interval(n10: np.ndarray, n01: np.ndarray, n: np.ndarray, z_crit: float) -> tuple[np.ndarray, np.ndarray]:
    """Score interval {delta0 : |Z(delta0)| <= z_crit} by vectorised bisection (Z decreases in delta0)."""
    n10, n01, n = (np.asarray(x, dtype=float) for x in (n10, n01, n))
    est = (n01 - n10) / n

    def solve(target: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        lo, hi = lo.copy(), hi.copy()
        for _ in range(60):   # 2^-60 of a width-2 bracket: far below float noise in a delta
            mid = 0.5 * (lo + hi)
            above = _tango_z(n10, n01, n, mid) > target
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        return 0.5 * (lo + hi)

    edge = 1 - 1e-12
    lower = solve(z_crit, np.full(est.shape, -edge), est)
    upper = solve(-z_crit, est, np.full(est.shape, edge))
    return lower, upper


# ----------------------------------------------------------------------------
# Paired delta and recovery
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedDelta:
    """Mean paired difference candidate - baseline.

    Attributes:
        estimate: mean of d_i = candidate_i - baseline_i (metric units).
        se: standard error of the estimate from the paired differences (clustered if
            clusters were given); for bootstrap methods, still the analytic SE.
        ci: two-sided interval at `confidence`.
        confidence: coverage of `ci`.
        n: number of paired samples.
        method: "normal", "score" (Tango, binary only), "bootstrap-percentile" or "bootstrap-bca".
        baseline_mean: mean baseline score.
        candidate_mean: mean candidate score.
        sd: per-sample standard deviation of d (ddof=1).
        n_clusters: number of clusters, or None when unclustered.
        n_resamples: bootstrap resamples, or None.
        seed: bootstrap seed, or None.
    """

    estimate: float
    se: float
    ci: tuple[float, float]
    confidence: float
    n: int
    method: str
    baseline_mean: float
    candidate_mean: float
    sd: float
    n_clusters: int | None = None
    n_resamples: int | None = None
    seed: int | None = None


def _resolve_method(method: str, binary: bool, clustered: bool, kind: str = "absolute") -> str:
    allowed = ("auto", "normal", "score", "bootstrap-percentile", "bootstrap-bca")
    if method not in allowed:
        raise QevalError(f"unknown interval method {method!r}.", fix=f"use one of {', '.join(allowed)}")
    if method == "auto":
        return "score" if (binary and not clustered and kind == "absolute") else "normal"
    if method == "score" and not (binary and not clustered and kind == "absolute"):
        raise QevalError("the score interval (Tango 1998) needs 0/1 scores, no clusters and an absolute margin.",
                         fix="use method 'normal' or a bootstrap method for this metric")
    return method


def _se_from(d: np.ndarray, clusters: Sequence | np.ndarray | None) -> tuple[float, int | None]:
    if clusters is None:
        sd = float(np.std(d, ddof=1)) if d.size > 1 else float("nan")
        return sd / math.sqrt(d.size), None
    cov, n_clusters = _mean_covariance(d[:, None], clusters)
    return float(math.sqrt(cov[0, 0])), n_clusters


def paired_delta(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, *,
                 clusters: Sequence | np.ndarray | None = None, method: str = "normal",
                 confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> PairedDelta:
    """Mean paired delta with its interval.

    The SE comes from the paired differences, never from two independent binomials:
    pairing removes the per-item difficulty both models share.

    Args:
        baseline: per-sample baseline scores.
        candidate: per-sample candidate scores, same doc_id order.
        clusters: optional cluster id per sample; gives the clustered SE (Miller 2024,
            appendix A) and a cluster bootstrap.
        method: "normal" (mean +- z * SE), "score" (Tango's score interval, 0/1 scores
            only), "bootstrap-percentile", "bootstrap-bca", or "auto" (score for
            unclustered 0/1 scores, normal otherwise).
        confidence: two-sided coverage.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        PairedDelta.
    """
    b, c = _paired(baseline, candidate)
    d = c - b
    binary = is_binary(b, c)
    method = _resolve_method(method, binary, clusters is not None)
    se, n_clusters = _se_from(d, clusters)
    est = float(d.mean())
    sd = float(np.std(d, ddof=1)) if d.size > 1 else float("nan")
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    boot_info: dict = {}
    if method == "normal":
        ci = (est - z * se, est + z * se)
    elif method == "score":
        n10, n01 = int(np.sum((b == 1) & (c == 0))), int(np.sum((b == 0) & (c == 1)))
        lo, hi = _tango_interval(np.array(n10), np.array(n01), np.array(d.size), z)
        ci = (float(lo), float(hi))
    else:
        bs = _bootstrap_statistic(_delta_units(d, clusters), _ratio_of_sums, n_resamples, seed)
        lo, hi = _bootstrap_bounds(np.array(bs.theta), bs.boot[None, :], np.array(bs.accel),
                                   (1 - confidence) / 2, (1 + confidence) / 2, method)
        ci = (float(lo[0]), float(hi[0]))
        boot_info = {"n_resamples": n_resamples, "seed": seed}
    return PairedDelta(estimate=est, se=se, ci=ci, confidence=confidence, n=d.size, method=method,
                       baseline_mean=float(b.mean()), candidate_mean=float(c.mean()), sd=sd,
                       n_clusters=n_clusters, **boot_info)


@dataclass(frozen=True)
class Recovery:
    """Recovery ratio mean(candidate) / mean(baseline) (Kurtic et al. 2024).

    Attributes:
        estimate: the ratio.
        ci: two-sided interval at `confidence` (Fieller for "normal", or bootstrap).
        confidence: coverage of `ci`.
        se: delta-method standard error of the ratio.
        n: paired samples.
        method: "normal" (Fieller) or a bootstrap method.
        baseline_mean: mean baseline score.
        candidate_mean: mean candidate score.
        n_clusters: clusters or None.
    """

    estimate: float
    ci: tuple[float, float]
    confidence: float
    se: float
    n: int
    method: str
    baseline_mean: float
    candidate_mean: float
    n_clusters: int | None = None


def _fieller(cbar: float, bbar: float, cov: np.ndarray, z: float) -> tuple[float, float]:
    """Fieller's interval for cbar/bbar: the ratios R0 not rejected by the paired test of c - R0 b.

    Paired, so it uses the covariance of the two means; exact inversion of the same
    test the gate's relative-margin decision uses.
    """
    v_cc, v_cb, v_bb = cov[0, 0], cov[0, 1], cov[1, 1]
    qa = bbar**2 - z**2 * v_bb
    qb = -2 * (cbar * bbar - z**2 * v_cb)
    qc = cbar**2 - z**2 * v_cc
    disc = qb**2 - 4 * qa * qc
    if qa <= 0 or disc < 0:
        return (-math.inf, math.inf)   # baseline mean not distinguishable from 0: no finite interval
    root = math.sqrt(disc)
    return ((-qb - root) / (2 * qa), (-qb + root) / (2 * qa))


def recovery_ratio(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, *,
                   clusters: Sequence | np.ndarray | None = None, method: str = "normal",
                   confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> Recovery:
    """Recovery mean(candidate)/mean(baseline) with a paired interval.

    Args:
        baseline: per-sample baseline scores (higher is better, mean > 0).
        candidate: per-sample candidate scores, same order.
        clusters: optional cluster ids (clustered covariance / cluster bootstrap).
        method: "normal" (Fieller, from the paired covariance), "bootstrap-percentile"
            or "bootstrap-bca" (pairs resampled together).
        confidence: two-sided coverage.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        Recovery.
    """
    b, c = _paired(baseline, candidate)
    if b.mean() <= 0:
        raise QevalError(f"baseline mean is {b.mean():g}; a recovery ratio needs a positive baseline score.",
                         fix="use an absolute margin for this task")
    method = _resolve_method("normal" if method == "auto" else method, False, clusters is not None, "relative")
    cov, n_units = _mean_covariance(np.column_stack([c, b]), clusters)
    cbar, bbar = float(c.mean()), float(b.mean())
    ratio = cbar / bbar
    se = math.sqrt(max(cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1], 0.0)) / bbar
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    if method == "normal":
        ci = _fieller(cbar, bbar, cov, z)
    else:
        bs = _bootstrap_statistic(_ratio_units(b, c, clusters), _ratio_of_sums, n_resamples, seed)
        lo, hi = _bootstrap_bounds(np.array(bs.theta), bs.boot[None, :], np.array(bs.accel),
                                   (1 - confidence) / 2, (1 + confidence) / 2, method)
        ci = (float(lo[0]), float(hi[0]))
    return Recovery(estimate=ratio, ci=(float(ci[0]), float(ci[1])), confidence=confidence, se=se, n=b.size,
                    method=method, baseline_mean=bbar, candidate_mean=cbar,
                    n_clusters=None if clusters is None else n_units)


# ----------------------------------------------------------------------------
# McNemar and Wilcoxon
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on the discordant pairs (Dutta et al. 2024 call these flips).

    Attributes:
        n10: baseline right, candidate wrong (answers lost).
        n01: baseline wrong, candidate right (answers gained).
        n: paired samples.
        flip_rate: (n10 + n01) / n, the discordance; accuracy can stand still while it is large.
        pvalue: two-sided exact binomial p-value of n10 vs n01 at 1/2.
        method: description of the test.
    """

    n10: int
    n01: int
    n: int
    flip_rate: float
    pvalue: float
    method: str = "McNemar exact (binomial on discordant pairs)"


def mcnemar_from_counts(n10: int, n01: int, n: int) -> McNemar:
    """McNemar's exact test from discordant counts.

    Args:
        n10: baseline right, candidate wrong.
        n01: baseline wrong, candidate right.
        n: all paired samples (for the flip rate).

    Returns:
        McNemar.
    """
    discordant = n10 + n01
    # binomtest needs at least one trial; with no discordant pair there is no evidence of a change.
    p = float(sps.binomtest(n10, discordant, 0.5, alternative="two-sided").pvalue) if discordant else 1.0
    return McNemar(n10=int(n10), n01=int(n01), n=int(n), flip_rate=discordant / n if n else float("nan"),
                   pvalue=p)


def mcnemar_exact(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray) -> McNemar:
    """McNemar's exact test for paired 0/1 scores.

    Args:
        baseline: per-sample 0/1 baseline scores.
        candidate: per-sample 0/1 candidate scores, same order.

    Returns:
        McNemar with discordant counts, flip rate and p-value.
    """
    b, c = _paired(baseline, candidate)
    if not is_binary(b, c):
        raise QevalError("McNemar's test needs 0/1 scores; these scores take other values.",
                         fix="use wilcoxon_signed_rank for continuous metrics")
    n10 = int(np.sum((b == 1) & (c == 0)))
    n01 = int(np.sum((b == 0) & (c == 1)))
    return mcnemar_from_counts(n10, n01, b.size)


@dataclass(frozen=True)
class Wilcoxon:
    """Wilcoxon signed-rank test of d = candidate - baseline.

    Attributes:
        statistic: scipy's statistic (sum of ranks of one sign).
        pvalue: p-value for `alternative`.
        n: paired samples.
        n_nonzero: samples with d != 0 (the ones "wilcox" zero handling ranks).
        alternative: "two-sided", "less" or "greater" (for d).
        zero_method: how zero differences are treated.
        method: scipy's method ("exact" or "approx").
    """

    statistic: float
    pvalue: float
    n: int
    n_nonzero: int
    alternative: str
    zero_method: str
    method: str


def wilcoxon_signed_rank(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, *,
                         alternative: Literal["two-sided", "less", "greater"] = "two-sided",
                         zero_method: Literal["wilcox", "pratt", "zsplit"] = "wilcox") -> Wilcoxon:
    """Wilcoxon signed-rank test for continuous paired metrics (scipy.stats.wilcoxon on d).

    Args:
        baseline: per-sample baseline scores.
        candidate: per-sample candidate scores, same order.
        alternative: alternative for the location of d.
        zero_method: "wilcox" drops ties (identical scores, common for quantized models).
        alternative hypotheses follow scipy.

    Returns:
        Wilcoxon.
    """
    b, c = _paired(baseline, candidate)
    d = c - b
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        # scipy cannot rank an all-zero sample; identical scores carry no evidence of a shift.
        return Wilcoxon(0.0, 1.0, d.size, 0, alternative, zero_method, "none (all differences are zero)")
    # Chosen here and passed to scipy so the result says which was used: the exact null
    # distribution only holds without zeros and ties; otherwise the normal approximation.
    exact = nonzero == d.size <= 50 and np.unique(np.abs(d)).size == d.size
    method = "exact" if exact else "approx"
    res = sps.wilcoxon(d, zero_method=zero_method, alternative=alternative, method=method)
    return Wilcoxon(float(res.statistic), float(res.pvalue), d.size, nonzero, alternative, zero_method, method)


# ----------------------------------------------------------------------------
# Multiplicity
# ----------------------------------------------------------------------------

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
    """Adjust p-values for many tasks x candidates.

    Args:
        pvalues: raw p-values.
        correction: "holm" (family-wise error), "bh" (false discovery rate) or "none".

    Returns:
        Adjusted p-values, same order.
    """
    if correction == "holm":
        return holm_adjust(pvalues)
    if correction == "bh":
        return bh_adjust(pvalues)
    if correction == "none":
        return np.asarray(pvalues, dtype=float).copy()
    raise QevalError(f"unknown correction {correction!r}.", fix="use holm, bh or none")


def next_rejection_level(pvalues: Sequence[float] | np.ndarray, alpha: float, correction: Correction) -> float:
    """Raw p-value level a not-yet-rejected hypothesis must reach to be rejected next.

    Used to size "how many more samples would settle it" under a correction.
    Holm: alpha / (m - R); BH: alpha (R + 1) / m; none: alpha; R = current rejections.

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
    rejected = int(np.sum(adjust_pvalues(p, correction) <= alpha))
    if rejected >= m:
        return alpha
    return alpha / (m - rejected) if correction == "holm" else alpha * (rejected + 1) / m


# ----------------------------------------------------------------------------
# Planning: required n and minimum detectable effect (Miller 2024, section 5)
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplePlan:
    """Sample size and the effect it can detect, for a paired non-inferiority test.

    Attributes:
        n: paired samples.
        mde: margin (metric units) that n samples resolve with the given power:
            a candidate whose true delta is `expected_delta` passes the
            non-inferiority test at margin `mde` with probability `power`.
        alpha: one-sided level.
        power: 1 - beta.
        flip_rate: expected discordance (binary metrics), or None.
        sd: per-sample SD of d used (sqrt(flip_rate - delta^2) for binary).
        expected_delta: true delta assumed (0 = no regression).
        method: "normal" (Wald) or "score" (Tango; Nam 1997 sample size).
    """

    n: int
    mde: float
    alpha: float
    power: float
    flip_rate: float | None
    sd: float
    expected_delta: float
    method: str


def _sd_for_plan(flip_rate: float | None, sd: float | None, expected_delta: float) -> float:
    if (flip_rate is None) == (sd is None):
        raise QevalError("give exactly one of flip_rate (binary metrics) or sd (per-sample SD of d).",
                         fix="e.g. flip_rate=0.1 for a model expected to flip one answer in ten")
    if flip_rate is not None:
        if not 0 < flip_rate <= 1 or abs(expected_delta) > flip_rate:
            raise QevalError(f"flip_rate {flip_rate} must be in (0, 1] and at least |expected_delta| "
                             f"({abs(expected_delta)}): every net change is a flip.",
                             fix="raise flip_rate or lower expected_delta")
        return math.sqrt(flip_rate - expected_delta**2)
    assert sd is not None
    if sd <= 0:
        raise QevalError(f"sd must be positive, got {sd}.")
    return float(sd)


def _required_n_binary(margin: np.ndarray, flip_rate: np.ndarray, expected_delta: np.ndarray, alpha: float,
                       power: float, method: str) -> np.ndarray:
    """Vectorised n for binary data; score method uses Nam (1997): variance under H0 from the restricted MLE."""
    z_a, z_b = sps.norm.ppf(1 - alpha), sps.norm.ppf(power)
    sd1 = np.sqrt(np.maximum(flip_rate - expected_delta**2, 1e-300))
    if method == "score":
        p01, p10 = (flip_rate + expected_delta) / 2, (flip_rate - expected_delta) / 2
        q = _tango_restricted_p10(p10, p01, np.ones_like(p10), -margin)
        sd0 = np.sqrt(np.maximum(2 * q - margin * (1 + margin), 1e-300))
    else:
        sd0 = sd1
    return np.ceil(((z_a * sd0 + z_b * sd1) / (expected_delta + margin)) ** 2)


def required_n(margin: float, *, flip_rate: float | None = None, sd: float | None = None,
               expected_delta: float = 0.0, alpha: float = 0.05, power: float = 0.8,
               method: Literal["normal", "score"] = "normal") -> SamplePlan:
    """Paired samples needed before the run so a candidate at `expected_delta` passes at margin m.

    n = ((z_{1-alpha} sd0 + z_{power} sd1) / (expected_delta + m))^2, sd1^2 = f - delta^2 for
    binary data with flip rate f (the discordance sets the paired variance: Miller 2024);
    sd0 = sd1 for the Wald test, the restricted-MLE SD at the margin for the score test.

    Args:
        margin: non-inferiority margin, metric units (0.01 = 1 point of accuracy).
        flip_rate: expected discordance (binary metrics).
        sd: expected per-sample SD of d (continuous metrics); give one of the two.
        expected_delta: assumed true delta (default 0: no regression).
        alpha: one-sided level.
        power: desired probability to pass (1 - beta).
        method: "normal" or "score" (binary only), matching the test that will run.

    Returns:
        SamplePlan.
    """
    if margin <= 0:
        raise QevalError(f"margin must be positive, got {margin}.")
    if expected_delta <= -margin:
        raise QevalError(f"expected_delta {expected_delta} is at or below -margin: no n can show non-inferiority.")
    sd1 = _sd_for_plan(flip_rate, sd, expected_delta)
    if flip_rate is not None:
        n = _required_n_binary(np.array(margin), np.array(flip_rate), np.array(expected_delta), alpha, power,
                               method)
    else:
        if method == "score":
            raise QevalError("the score method is for binary metrics; pass flip_rate, or method='normal'.")
        z = sps.norm.ppf(1 - alpha) + sps.norm.ppf(power)
        n = np.ceil((z * sd1 / (expected_delta + margin)) ** 2)
    return SamplePlan(n=int(max(n, 2)), mde=float(margin), alpha=alpha, power=power, flip_rate=flip_rate,
                      sd=sd1, expected_delta=expected_delta, method=method)


def minimum_detectable_effect(n: int, *, flip_rate: float | None = None, sd: float | None = None,
                              alpha: float = 0.05, power: float = 0.8) -> SamplePlan:
    """Smallest margin n paired samples can resolve: (z_{1-alpha} + z_power) sd / sqrt(n).

    With sd = sqrt(flip_rate) this is also the smallest true regression a run of n
    detects with that power: the paired counterpart of TensorRT-LLM's theta.

    Args:
        n: paired samples.
        flip_rate: expected discordance (binary metrics).
        sd: expected per-sample SD of d; give one of the two.
        alpha: one-sided level.
        power: 1 - beta.

    Returns:
        SamplePlan with `mde` set.
    """
    sd1 = _sd_for_plan(flip_rate, sd, 0.0)
    mde = (sps.norm.ppf(1 - alpha) + sps.norm.ppf(power)) * sd1 / math.sqrt(n)
    return SamplePlan(n=int(n), mde=float(mde), alpha=alpha, power=power, flip_rate=flip_rate, sd=sd1,
                      expected_delta=0.0, method="normal")


def _n_for_distance(distance: float, sd: float, alpha: float, power: float) -> float:
    if distance == 0 or not math.isfinite(sd):
        return math.inf
    if sd == 0:
        return 0.0
    return ((sps.norm.ppf(1 - alpha) + sps.norm.ppf(power)) * sd / abs(distance)) ** 2


# ----------------------------------------------------------------------------
# Non-inferiority
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class NonInferiority:
    """Non-inferiority test of the candidate against the baseline at margin m.

    Attributes:
        verdict: PASS (non-inferior), FAIL (inferior beyond the margin) or INCONCLUSIVE.
        kind: "absolute" (delta > -m, metric units) or "relative" (recovery > 1 - m).
        estimate: delta (absolute) or recovery ratio (relative).
        threshold: -m (absolute) or 1 - m (relative).
        margin: m.
        ci: two-sided (1 - 2 alpha) interval; each end is the one-sided bound the rule uses.
        confidence: 1 - 2 alpha.
        alpha: one-sided level of the decision.
        pvalue: one-sided p-value of H0 "estimate <= threshold" (small = non-inferior).
        pvalue_inferior: one-sided p-value of H0 "estimate >= threshold" (small = inferior).
        adjusted_pvalue: `pvalue` after multiplicity correction (equals `pvalue` until adjusted).
        correction: "none", "holm" or "bh".
        n: paired samples.
        n_adequate: planned n for this discordance (power `power` at true delta 0); at or
            beyond it a point estimate below the threshold is a FAIL.
        n_to_settle: total n that would likely settle an INCONCLUSIVE (assuming the true
            effect is the observed one), else None.
        method: interval / test method.
        se: standard error of the estimate.
        sd_test: per-sample SD on the test scale (d, or c - (1-m) b), clustering included;
            for unclustered 0/1 scores sqrt(f - delta^2) with the add-one-smoothed flip rate
            f = (n10 + n01 + 1)/(n + 2), so that zero observed flips do not plan as zero variance.
        distance: estimate minus threshold on the test scale (mean of d + m, or of c - (1-m) b).
        power: power used for n_adequate and n_to_settle.
        n10: lost answers (binary), else None.
        n01: gained answers (binary), else None.
        flip_rate: discordance (binary), else None.
    """

    verdict: Verdict
    kind: str
    estimate: float
    threshold: float
    margin: float
    ci: tuple[float, float]
    confidence: float
    alpha: float
    pvalue: float
    pvalue_inferior: float
    adjusted_pvalue: float
    correction: str
    n: int
    n_adequate: int
    n_to_settle: int | None
    method: str
    se: float
    sd_test: float
    distance: float
    power: float
    n10: int | None = None
    n01: int | None = None
    flip_rate: float | None = None

    def adjusted(self, adjusted_pvalue: float, correction: Correction, alpha_next: float) -> "NonInferiority":
        """The same test after multiplicity correction.

        Only PASS uses the adjusted p-value: it is the claim that licenses shipping.
        FAIL stays at the per-test level (blocking is the safe error).

        Args:
            adjusted_pvalue: this test's adjusted p-value.
            correction: the correction used.
            alpha_next: raw level this test must reach to be rejected (next_rejection_level),
                for the n that would settle it.

        Returns:
            A new NonInferiority with verdict and n_to_settle recomputed.
        """
        verdict = noninferiority_verdict(adjusted_pvalue, self.pvalue_inferior, self.distance, self.n,
                                         self.n_adequate, self.alpha)
        settle = _n_to_settle(verdict, self.distance, self.sd_test, self.n, self.n_adequate, alpha_next,
                              self.alpha, self.power)
        return replace(self, verdict=verdict, adjusted_pvalue=float(adjusted_pvalue), correction=correction,
                       n_to_settle=settle)


def noninferiority_verdict(pvalue: float, pvalue_inferior: float, distance: float, n: int, n_adequate: int,
                           alpha: float) -> Verdict:
    """The three-way rule of STATISTICS.md.

    Args:
        pvalue: (adjusted) one-sided non-inferiority p-value; <= alpha means the lower
            bound is above the threshold.
        pvalue_inferior: one-sided p-value for "below the threshold"; <= alpha means the
            upper bound is below it.
        distance: estimate minus threshold on the test scale.
        n: samples.
        n_adequate: planned n; at or beyond it a point estimate below the threshold fails.
        alpha: one-sided level.

    Returns:
        "PASS", "FAIL" or "INCONCLUSIVE".
    """
    if pvalue <= alpha:
        return "PASS"
    if pvalue_inferior <= alpha or (distance < 0 and n >= n_adequate):
        return "FAIL"
    return "INCONCLUSIVE"


def _n_to_settle(verdict: str, distance: float, sd: float, n: int, n_adequate: int, alpha_pass: float,
                 alpha: float, power: float) -> int | None:
    """Total n at which, if the true effect is the observed one, the decision is likely made."""
    if verdict != "INCONCLUSIVE":
        return None
    if distance > 0:
        need = _n_for_distance(distance, sd, alpha_pass, power)
    else:
        # Below the threshold: either the upper bound crosses it, or n reaches n_adequate
        # and the point-estimate rule fails it, whichever comes first.
        need = min(_n_for_distance(distance, sd, alpha, power), float(n_adequate))
    if not math.isfinite(need):
        return None
    return int(max(math.ceil(need), n + 1))


def _binary_wald(n10: np.ndarray, n01: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean delta and paired SE (ddof=1) from counts; equals mean(d), std(d, ddof=1)/sqrt(n)."""
    n10, n01, n = (np.asarray(x, dtype=float) for x in (n10, n01, n))
    est = (n01 - n10) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = ((n01 + n10) / n - est**2) * n / (n - 1)
        return est, np.sqrt(np.maximum(var, 0.0) / n)


def _normal_pvalues(distance: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(se > 0, distance / np.where(se > 0, se, 1.0), np.sign(distance) * np.inf)
    z = np.where(np.isnan(z), 0.0, z)
    return sps.norm.sf(z), sps.norm.cdf(z)


def _binary_ni_arrays(n10: np.ndarray, n01: np.ndarray, n: np.ndarray, margin: float, alpha: float,
                      method: str, n_resamples: int = 2000,
                      rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Vectorised absolute non-inferiority for binary paired data given (n10, n01, n) per run.

    The gate's scalar path and the error-rate simulations both go through here (or
    through the same bound / p-value helpers), so simulations measure the shipped code.
    """
    n10, n01 = np.asarray(n10, dtype=float), np.asarray(n01, dtype=float)
    n = np.broadcast_to(np.asarray(n, dtype=float), n10.shape)
    est, se = _binary_wald(n10, n01, n)
    z_crit = float(sps.norm.ppf(1 - alpha))
    if method == "normal":
        p, p_inf = _normal_pvalues(est + margin, se)
        lo, hi = est - z_crit * se, est + z_crit * se
    elif method == "score":
        z = _tango_z(n10, n01, n, -margin)
        p, p_inf = sps.norm.sf(z), sps.norm.cdf(z)
        lo, hi = _tango_interval(n10, n01, n, z_crit)
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        probs = np.stack([n10, n - n10 - n01, n01], axis=-1) / n[..., None]
        counts = rng.multinomial(n.astype(np.int64)[..., None], probs[..., None, :],
                                 size=n10.shape + (n_resamples,))
        boot = (counts[..., 2] - counts[..., 0]) / n[..., None]
        # Closed-form jackknife acceleration for a mean: sum(u^3) / (6 sum(u^2)^1.5), u = d - mean.
        u3 = n10 * (-1 - est) ** 3 + (n - n10 - n01) * (-est) ** 3 + n01 * (1 - est) ** 3
        u2 = n10 * (-1 - est) ** 2 + (n - n10 - n01) * est**2 + n01 * (1 - est) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            accel = np.where(u2 > 0, u3 / (6 * np.where(u2 > 0, u2, 1.0) ** 1.5), 0.0)
        lo, hi = _bootstrap_bounds(est, boot, accel, alpha, 1 - alpha, method)
        p, p_inf = _bootstrap_pvalues(est, boot, accel, -margin, method)
    return {"estimate": est, "se": se, "lo": lo, "hi": hi, "p": p, "p_inf": p_inf}


def noninferiority(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray,
                   margin: float, *, kind: MarginKind = "absolute",
                   clusters: Sequence | np.ndarray | None = None, method: str = "auto", alpha: float = 0.05,
                   power: float = 0.8, n_resamples: int = 10_000, seed: int = 0) -> NonInferiority:
    """Paired non-inferiority test and the PASS / FAIL / INCONCLUSIVE rule.

    PASS if the one-sided (1 - alpha) lower bound is above the threshold; FAIL if the
    upper bound is below it, or the point estimate is below it and n is at least the
    planned n for the observed discordance; INCONCLUSIVE otherwise, with the n that
    would settle it.

    Args:
        baseline: per-sample baseline scores (higher is better; negate scores for
            lower-is-better metrics with an absolute margin).
        candidate: per-sample candidate scores, same order.
        margin: m, in metric units (absolute: 0.01 = 1 accuracy point) or as a fraction
            (relative: 0.01 = candidate keeps 99% of the baseline score).
        kind: "absolute" or "relative".
        clusters: optional cluster ids (clustered SE / cluster bootstrap).
        method: "auto" (score for unclustered 0/1 scores with an absolute margin, else
            normal), "normal", "score", "bootstrap-percentile", "bootstrap-bca".
        alpha: one-sided level.
        power: power for the planned n and for "n to settle".
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        NonInferiority.
    """
    if margin <= 0 or (kind == "relative" and margin >= 1):
        raise QevalError(f"margin must be > 0 (and < 1 for a relative margin), got {margin}.")
    if kind not in ("absolute", "relative"):
        raise QevalError(f"unknown margin kind {kind!r}.", fix="use absolute or relative")
    b, c = _paired(baseline, candidate)
    n = b.size
    binary = is_binary(b, c)
    method = _resolve_method(method, binary, clusters is not None, kind)
    z_crit = float(sps.norm.ppf(1 - alpha))
    counts: dict = {}
    if binary:
        n10, n01 = int(np.sum((b == 1) & (c == 0))), int(np.sum((b == 0) & (c == 1)))
        counts = {"n10": n10, "n01": n01, "flip_rate": (n10 + n01) / n}

    if kind == "absolute":
        d = c - b
        threshold = -margin
        estimate = float(d.mean())
        se, _ = _se_from(d, clusters)
        distance = estimate + margin
        if method in ("normal", "score") and binary and clusters is None:
            r = _binary_ni_arrays(np.array(counts["n10"]), np.array(counts["n01"]), np.array(n), margin,
                                  alpha, method)
            lo, hi, p, p_inf = (float(r[k]) for k in ("lo", "hi", "p", "p_inf"))
        elif method == "normal":
            pa, pb = _normal_pvalues(np.array(distance), np.array(se))
            p, p_inf = float(pa), float(pb)
            lo, hi = estimate - z_crit * se, estimate + z_crit * se
        else:
            bs = _bootstrap_statistic(_delta_units(d, clusters), _ratio_of_sums, n_resamples, seed)
            lo_a, hi_a = _bootstrap_bounds(np.array(bs.theta), bs.boot[None, :], np.array(bs.accel), alpha,
                                           1 - alpha, method)
            pa, pb = _bootstrap_pvalues(np.array(bs.theta), bs.boot[None, :], np.array(bs.accel), threshold,
                                        method)
            lo, hi, p, p_inf = float(lo_a[0]), float(hi_a[0]), float(pa[0]), float(pb[0])
        sd_test = se * math.sqrt(n)
        if binary and clusters is None:
            # Plan from an add-one-smoothed flip rate: zero flips seen on 5 samples must not
            # plan as if the paired variance were zero.
            flip = (counts["n10"] + counts["n01"] + 1) / (n + 2)
            sd_test = math.sqrt(max(flip - estimate**2, flip / 2))
            n_adequate = int(_required_n_binary(np.array(margin), np.array(flip), np.array(0.0), alpha, power,
                                                "score" if method == "score" else "normal"))
        else:
            n_adequate = int(math.ceil(_n_for_distance(margin, sd_test, alpha, power))) if sd_test > 0 else 2
    else:
        if b.mean() <= 0:
            raise QevalError(f"baseline mean is {b.mean():g}; a relative margin needs a positive baseline score.",
                             fix="use an absolute margin for this task")
        r0 = 1.0 - margin
        threshold = r0
        rec = recovery_ratio(b, c, clusters=clusters, method=method, confidence=1 - 2 * alpha,
                             n_resamples=n_resamples, seed=seed)
        estimate, lo, hi, se = rec.estimate, rec.ci[0], rec.ci[1], rec.se
        # The test of "recovery > r0" is the paired test of mean(c - r0 b) > 0 (Fieller's pivot).
        e = c - r0 * b
        se_e, _ = _se_from(e, clusters)
        distance = float(e.mean())
        sd_test = se_e * math.sqrt(n)
        if method == "normal":
            pa, pb = _normal_pvalues(np.array(distance), np.array(se_e))
            p, p_inf = float(pa), float(pb)
        else:
            bs = _bootstrap_statistic(_ratio_units(b, c, clusters), _ratio_of_sums, n_resamples, seed)
            pa, pb = _bootstrap_pvalues(np.array(bs.theta), bs.boot[None, :], np.array(bs.accel), r0, method)
            p, p_inf = float(pa[0]), float(pb[0])
        # Planned n: a candidate with no regression has mean(e) = m * mean(b).
        plan_distance = margin * float(b.mean())
        n_adequate = int(math.ceil(_n_for_distance(plan_distance, sd_test, alpha, power))) if sd_test > 0 else 2

    n_adequate = max(n_adequate, 2)
    verdict = noninferiority_verdict(p, p_inf, distance, n, n_adequate, alpha)
    return NonInferiority(verdict=verdict, kind=kind, estimate=estimate, threshold=threshold, margin=margin,
                          ci=(float(lo), float(hi)), confidence=1 - 2 * alpha, alpha=alpha, pvalue=p,
                          pvalue_inferior=p_inf, adjusted_pvalue=p, correction="none", n=n,
                          n_adequate=n_adequate,
                          n_to_settle=_n_to_settle(verdict, distance, sd_test, n, n_adequate, alpha, alpha, power),
                          method=method, se=float(se), sd_test=float(sd_test), distance=float(distance),
                          power=power, **counts)


# ----------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PercentileEstimate:
    """A latency percentile with its distribution-free interval.

    Attributes:
        estimate: the q-th percentile (numpy's linear interpolation).
        ci: two-sided interval from order statistics; a bound that `n` samples cannot
            give at this confidence is None (e.g. the upper end of p99 below 299 samples
            at 90%: the sample maximum is then too likely to sit below the true p99).
        confidence: coverage of `ci` (at least this, for any continuous distribution).
        q: percentile in (0, 100).
        n: samples.
        method: "order-statistic".
    """

    estimate: float
    ci: tuple[float | None, float | None]
    confidence: float
    q: float
    n: int
    method: str = "order-statistic"


def samples_for_upper_bound(q: float, alpha: float) -> int:
    """Fewest samples whose maximum is a (1 - alpha) upper confidence bound for the q-th percentile.

    The maximum of n independent draws sits below the true q-th percentile with probability
    (q/100)^n; it must be at most alpha. p99 at alpha 0.05: 299 samples.
    """
    return math.ceil(math.log(alpha) / math.log(q / 100.0))


def percentile_ci(samples: Sequence[float] | np.ndarray, q: float, *,
                  confidence: float = 0.95) -> PercentileEstimate:
    """Percentile (p50/p90/p99) of latency samples with an order-statistic interval.

    Why not a bootstrap: a bootstrap percentile of p99 can never exceed the sample
    maximum, and with 64 requests the maximum is below the true p99 half the time
    (0.99^64 = 0.53). Simulated for an SLO that the true p99 breaks by 2%, a gate
    reading the bootstrap's upper end passed it in 51% of runs at n = 64 and 7.7% at
    n = 600 (promised: 5%). The binomial interval of `scipy.stats.quantile_test`
    holds its coverage for any continuous distribution, and says when n is too
    small for a bound (None) instead of inventing one (tests/test_stats.py).

    Args:
        samples: per-request latencies (warm-up excluded upstream).
        q: percentile in (0, 100).
        confidence: two-sided coverage.

    Returns:
        PercentileEstimate.
    """
    x = _as_scores(samples, "latency")
    if not 0 < q < 100:
        raise ValueError(f"percentile must be in (0, 100), got {q}")
    est = float(np.percentile(x, q))
    bounds = sps.quantile_test(x, q=est, p=q / 100.0).confidence_interval(confidence_level=confidence)
    ci = tuple(None if np.isnan(b) else float(b) for b in (bounds.low, bounds.high))
    return PercentileEstimate(estimate=est, ci=ci, confidence=confidence, q=float(q), n=x.size)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SpeedUp:
    """Speed-up of the candidate over the baseline at one load point.

    Attributes:
        estimate: stat(baseline)/stat(candidate) for latencies, stat(candidate)/stat(baseline)
            for throughputs; > 1 means the candidate is faster.
        ci: two-sided bootstrap interval (baseline and candidate resampled independently:
            requests under load are not paired).
        confidence: coverage.
        statistic: "median" or "mean".
        kind: "latency" or "throughput".
        n_baseline: baseline samples.
        n_candidate: candidate samples.
        method: bootstrap method.
    """

    estimate: float
    ci: tuple[float, float]
    confidence: float
    statistic: str
    kind: str
    n_baseline: int
    n_candidate: int
    method: str


def speedup_ratio(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, *,
                  statistic: Literal["median", "mean"] = "median",
                  kind: Literal["latency", "throughput"] = "latency", confidence: float = 0.95,
                  n_resamples: int = 2000, seed: int = 0) -> SpeedUp:
    """Speed-up ratio with a two-sample bootstrap CI (scipy.stats.bootstrap, independent samples).

    Default is the ratio of medians: one stalled request moves a mean, not a median.
    Means use BCa; medians use the percentile method (the jackknife behind BCa is
    unreliable for medians).

    Args:
        baseline: baseline per-request latencies (or throughputs).
        candidate: candidate per-request latencies (or throughputs).
        statistic: "median" or "mean".
        kind: "latency" (lower is better) or "throughput" (higher is better).
        confidence: two-sided coverage.
        n_resamples: bootstrap resamples.
        seed: seed.

    Returns:
        SpeedUp.
    """
    b = _as_scores(baseline, "baseline latency")
    c = _as_scores(candidate, "candidate latency")
    fn = np.median if statistic == "median" else np.mean

    def ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        num, den = (fn(x, axis=axis), fn(y, axis=axis)) if kind == "latency" else (fn(y, axis=axis),
                                                                                    fn(x, axis=axis))
        return num / den

    method = "percentile" if statistic == "median" else "BCa"
    res = sps.bootstrap((b, c), ratio, vectorized=True, paired=False, n_resamples=n_resamples,
                        batch=max(1, _CHUNK_ELEMENTS // max(b.size, c.size)), confidence_level=confidence,
                        method=method, rng=np.random.default_rng(seed))
    return SpeedUp(estimate=float(ratio(b, c)), ci=(float(res.confidence_interval.low),
                                                    float(res.confidence_interval.high)),
                   confidence=confidence, statistic=statistic, kind=kind, n_baseline=b.size, n_candidate=c.size,
                   method=f"bootstrap-{method.lower()}")


# ----------------------------------------------------------------------------
# TensorRT-LLM's accuracy-test rule (the anchor to beat)
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TrtllmParams:
    """Hypothesis-testing defaults of one TensorRT-LLM accuracy task.

    Read from NVIDIA/TensorRT-LLM tests/integration/defs/accuracy/accuracy_core.py
    (class attributes ALPHA, BETA, SIGMA, NUM_SAMPLES); sigma is in points.
    """

    alpha: float
    beta: float
    sigma: float
    num_samples: int


TRTLLM_DEFAULTS: dict[str, TrtllmParams] = {
    "mmlu": TrtllmParams(alpha=0.05, beta=0.2, sigma=50.0, num_samples=4096),
    "cnn_dailymail": TrtllmParams(alpha=0.002, beta=0.2, sigma=11.06, num_samples=512),
    "humaneval": TrtllmParams(alpha=0.002, beta=0.2, sigma=15.08, num_samples=164),
    "gsm8k": TrtllmParams(alpha=0.05, beta=0.2, sigma=50.0, num_samples=1319),
    "gpqa_diamond": TrtllmParams(alpha=0.05, beta=0.2, sigma=50.0, num_samples=198),
}


def trtllm_scale(n: int, sigma: float = 50.0) -> float:
    """Their SE of a difference of two independent accuracies: sqrt(2 sigma^2 / n), points."""
    return math.sqrt(2 * sigma**2 / n)


def trtllm_threshold(ref_accuracy: float, n: int, *, sigma: float = 50.0, alpha: float = 0.05,
                     higher_is_better: bool = True) -> float:
    """Pass threshold: ref + z(alpha) * scale (z(alpha) < 0), mirrored for lower-is-better metrics.

    Args:
        ref_accuracy: reference accuracy, points.
        n: samples evaluated.
        sigma: assumed per-sample SD, points (50 = Bernoulli worst case).
        alpha: one-sided level.
        higher_is_better: metric direction.

    Returns:
        Threshold in points.
    """
    shift = sps.norm.ppf(alpha) * trtllm_scale(n, sigma)
    return ref_accuracy + shift if higher_is_better else ref_accuracy - shift


def trtllm_theta(n: int, *, sigma: float = 50.0, alpha: float = 0.05, beta: float = 0.2) -> float:
    """Their minimum detectable effect: -(z(alpha) + z(beta)) * scale, points."""
    return float(-(sps.norm.ppf(alpha) + sps.norm.ppf(beta)) * trtllm_scale(n, sigma))


@dataclass(frozen=True)
class TrtllmDecision:
    """TensorRT-LLM's accuracy-test decision on the same inputs.

    Attributes:
        passed: accuracy >= threshold (<= for lower-is-better), their rule exactly.
        accuracy: evaluated accuracy, points.
        ref_accuracy: reference accuracy, points (for us: the baseline of the same run).
        threshold: pass threshold, points.
        theta: their minimum detectable effect, points.
        scale: sqrt(2 sigma^2 / n), points.
        n: samples.
        sigma: assumed SD, points.
        alpha: one-sided level.
        beta: type-II error for theta.
        higher_is_better: metric direction.
    """

    passed: bool
    accuracy: float
    ref_accuracy: float
    threshold: float
    theta: float
    scale: float
    n: int
    sigma: float
    alpha: float
    beta: float
    higher_is_better: bool


def trtllm_rule(accuracy: float, ref_accuracy: float, n: int, *, sigma: float = 50.0, alpha: float = 0.05,
                beta: float = 0.2, higher_is_better: bool = True) -> TrtllmDecision:
    """TensorRT-LLM's rule: independent samples, worst-case sigma, no pairing, no multiplicity.

    Args:
        accuracy: candidate accuracy, points.
        ref_accuracy: reference accuracy, points.
        n: samples.
        sigma: per-sample SD, points.
        alpha: one-sided level.
        beta: type-II error used for theta.
        higher_is_better: metric direction.

    Returns:
        TrtllmDecision.
    """
    threshold = trtllm_threshold(ref_accuracy, n, sigma=sigma, alpha=alpha, higher_is_better=higher_is_better)
    passed = accuracy >= threshold if higher_is_better else accuracy <= threshold
    return TrtllmDecision(passed=bool(passed), accuracy=float(accuracy), ref_accuracy=float(ref_accuracy),
                          threshold=float(threshold), theta=trtllm_theta(n, sigma=sigma, alpha=alpha, beta=beta),
                          scale=trtllm_scale(n, sigma), n=int(n), sigma=sigma, alpha=alpha, beta=beta,
                          higher_is_better=higher_is_better)


@dataclass(frozen=True)
class PairingGain:
    """What pairing buys over TensorRT-LLM's independent-samples scale.

    Attributes:
        trtllm_scale: sqrt(2) sigma / sqrt(n), points.
        independent_se: SE of the difference of two independent means at the observed
            variances (their scale without the worst-case sigma), points.
        paired_se: SE from the paired differences (clustered if given), points.
        ratio: trtllm_scale / paired_se: how many times narrower our interval is.
        ratio_vs_independent: independent_se / paired_se: the gain from pairing alone.
        sample_factor: ratio^2: how many times more samples their rule needs for the same
            detectable effect.
        n: samples.
        flip_rate: discordance (binary scores), else None.
    """

    trtllm_scale: float
    independent_se: float
    paired_se: float
    ratio: float
    ratio_vs_independent: float
    sample_factor: float
    n: int
    flip_rate: float | None


def pairing_gain(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, *,
                 sigma: float = 50.0, points_per_unit: float = 100.0,
                 clusters: Sequence | np.ndarray | None = None) -> PairingGain:
    """Ratio of TensorRT-LLM's scale to our paired SE on the observed data.

    For binary scores with flip rate f and delta ~ 0 the paired SE is ~ 100 sqrt(f / n)
    points, so ratio ~ 0.707 / sqrt(f): 3.2x at 5% flips, 2.2x at 10%.

    Args:
        baseline: per-sample baseline scores.
        candidate: per-sample candidate scores, same order.
        sigma: their sigma, points.
        points_per_unit: points per score unit (100 for 0/1 scores).
        clusters: optional cluster ids for the paired SE.

    Returns:
        PairingGain.
    """
    b, c = _paired(baseline, candidate)
    n = b.size
    se, _ = _se_from(c - b, clusters)
    paired = se * points_per_unit
    indep = math.sqrt((np.var(b, ddof=1) + np.var(c, ddof=1)) / n) * points_per_unit if n > 1 else math.nan
    scale = trtllm_scale(n, sigma)
    with np.errstate(divide="ignore"):
        ratio = scale / paired if paired > 0 else math.inf
        ratio_ind = indep / paired if paired > 0 else math.inf
    flip = float(np.mean(b != c)) if is_binary(b, c) else None
    return PairingGain(trtllm_scale=scale, independent_se=float(indep), paired_se=float(paired), ratio=float(ratio),
                       ratio_vs_independent=float(ratio_ind), sample_factor=float(ratio**2), n=n, flip_rate=flip)


# ----------------------------------------------------------------------------
# Sequential: group-sequential boundaries with Lan-DeMets alpha spending
# ----------------------------------------------------------------------------

def spending_function(t: np.ndarray | float, alpha: float, spending: Spending = "obrien-fleming") -> np.ndarray:
    """Cumulative one-sided alpha spent by information fraction t (Lan & DeMets 1983).

    O'Brien–Fleming type: 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) (spends almost nothing
    early, so the final look keeps nearly the fixed-n critical value).
    Pocock type: alpha log(1 + (e - 1) t) (spends evenly, stops earlier on clear cases).

    Args:
        t: information fraction(s) in (0, 1].
        alpha: total one-sided alpha.
        spending: "obrien-fleming" or "pocock".

    Returns:
        Alpha spent up to t.
    """
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if spending == "obrien-fleming":
        with np.errstate(divide="ignore"):
            return np.where(t > 0, 2 - 2 * sps.norm.cdf(sps.norm.ppf(1 - alpha / 2) / np.sqrt(np.maximum(t, 1e-300))),
                            0.0)
    if spending == "pocock":
        return alpha * np.log1p((math.e - 1) * t)
    raise QevalError(f"unknown spending function {spending!r}.", fix="use obrien-fleming or pocock")


@lru_cache(maxsize=256)
def _upper_boundaries(info: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """Upper z boundaries so the chance of ever crossing under H0 spends alpha as planned.

    Hand-written (scipy has no group-sequential design): the standard recursive
    numerical integration of Armitage, McPherson & Rowe (1969) on the Brownian-motion
    scale W(t) = Z sqrt(t), Simpson's rule on a fine grid. The FAIL boundary is not in
    the recursion (non-binding), which can only lower the false-ship rate.
    """
    spent = spending_function(np.array(info), alpha, spending)  # type: ignore[arg-type]
    increments = np.diff(np.concatenate([[0.0], spent]))
    bounds: list[float] = []
    grid = weights = density = None
    prev_t = 0.0
    lower_w = -10.0     # W(t) has variance t <= 1: 10 SD below zero holds no mass worth keeping
    for t, pi in zip(info, increments):
        dt = t - prev_t
        sd = math.sqrt(dt)
        if grid is None:
            def cross(u: float) -> float:
                return float(sps.norm.sf(u / sd))
        else:
            g, w, f = grid, weights, density

            def cross(u: float) -> float:
                return float(np.sum(w * f * sps.norm.sf((u - g) / sd)))
        if pi <= 1e-15:
            u = math.inf
        else:
            available = cross(-20.0)
            u = brentq(lambda x: cross(x) - pi, -20.0, 40.0, xtol=1e-12) if available > pi else -math.inf
        bounds.append(u / math.sqrt(t))
        # Sub-density of W(t) on the continuation region (-inf, u].
        top = min(u, 10.0)
        new_grid = np.linspace(lower_w, top, 2001)
        h = new_grid[1] - new_grid[0]
        simpson = np.ones(new_grid.size)
        simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
        simpson *= h / 3
        if grid is None:
            new_density = sps.norm.pdf(new_grid / sd) / sd
        else:
            # np.exp directly: sps.norm.pdf's overhead dominates on a 2001 x 2001 kernel.
            kernel = np.exp(-0.5 * ((new_grid[:, None] - grid[None, :]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            new_density = kernel @ (weights * density)
        grid, weights, density, prev_t = new_grid, simpson, new_density, t
    return tuple(bounds)


@dataclass(frozen=True)
class GroupSequentialDesign:
    """Look schedule and boundaries of a group-sequential non-inferiority test.

    Attributes:
        looks: cumulative paired samples at each look; the last is the planned maximum n.
        info: information fractions n_k / max_n.
        upper: PASS boundary on the z scale at each look (z > upper: non-inferior).
            The FAIL boundary is its mirror (z < -upper: inferior), not counted against
            alpha (a non-binding futility boundary can only lower the false-ship rate).
        alpha: one-sided level spent over the looks.
        spending: spending function.
        spent: cumulative alpha spent at each look.
    """

    looks: tuple[int, ...]
    info: tuple[float, ...]
    upper: tuple[float, ...]
    alpha: float
    spending: str
    spent: tuple[float, ...]

    @property
    def max_n(self) -> int:
        return self.looks[-1]


def group_sequential_design(max_n: int, looks: int | Sequence[int] = 10, *, alpha: float = 0.05,
                            spending: Spending = "obrien-fleming") -> GroupSequentialDesign:
    """Boundaries for looks at planned sample sizes (Lan-DeMets alpha spending).

    Args:
        max_n: planned maximum paired samples (the fixed-n plan, e.g. from required_n).
        looks: number of equally spaced looks, or the cumulative n at each look
            (increasing, ending at max_n).
        alpha: one-sided level.
        spending: "obrien-fleming" (default) or "pocock".

    Returns:
        GroupSequentialDesign.
    """
    if isinstance(looks, (int, np.integer)):
        if looks < 1:
            raise QevalError(f"looks must be >= 1, got {looks}.")
        schedule = tuple(int(math.ceil(max_n * k / looks)) for k in range(1, int(looks) + 1))
    else:
        schedule = tuple(int(x) for x in looks)
        if not schedule or schedule[-1] != max_n or any(b <= a for a, b in zip(schedule, schedule[1:])):
            raise QevalError(f"look schedule {schedule} must be strictly increasing and end at max_n={max_n}.")
    schedule = tuple(sorted(set(schedule)))
    info = tuple(n / max_n for n in schedule)
    upper = _upper_boundaries(info, float(alpha), spending)
    spent = tuple(float(x) for x in spending_function(np.array(info), alpha, spending))
    return GroupSequentialDesign(looks=schedule, info=info, upper=upper, alpha=alpha, spending=spending,
                                 spent=spent)


@dataclass(frozen=True)
class SequentialDecision:
    """Decision of a group-sequential non-inferiority test on the data so far.

    Attributes:
        verdict: PASS / FAIL (stop), CONTINUE (run the next batch), or INCONCLUSIVE
            (final look reached without a decision).
        look: 1-based index of the look that decided (or the last look evaluated).
        n: samples used by that look.
        next_n: cumulative n of the next look when CONTINUE, else None.
        z: test statistic at that look.
        boundary: PASS boundary at that look (FAIL boundary is -boundary).
        estimate: mean delta at that look.
        margin: m.
        method: "normal" or "score".
        design: the design.
    """

    verdict: SequentialVerdict
    look: int
    n: int
    next_n: int | None
    z: float
    boundary: float
    estimate: float
    margin: float
    method: str
    design: GroupSequentialDesign


def _sequential_outcome(z: np.ndarray, distance: np.ndarray, n_adequate: np.ndarray, upper: np.ndarray,
                        max_n: int, n_looks_done: int, n_looks_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over runs (axis 0) x looks (axis 1). Returns (code, look index).

    code: 1 PASS, -1 FAIL, 0 INCONCLUSIVE (final look), 2 CONTINUE.
    """
    up = z > upper[None, :n_looks_done]
    down = z < -upper[None, :n_looks_done]
    stop = up | down
    any_stop = stop.any(axis=1)
    first = np.where(any_stop, stop.argmax(axis=1), n_looks_done - 1)
    rows = np.arange(z.shape[0])
    code = np.where(up[rows, first], 1, np.where(down[rows, first], -1, 0))
    final = n_looks_done == n_looks_total
    if final:
        # Final look without crossing: the fixed-n point-estimate rule applies.
        late_fail = (~any_stop) & (distance[:, -1] < 0) & (max_n >= n_adequate)
        code = np.where(late_fail, -1, code)
    else:
        code = np.where(any_stop, code, 2)
    return code, first


def sequential_noninferiority(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray,
                              margin: float, design: GroupSequentialDesign, *, method: str = "auto",
                              power: float = 0.8) -> SequentialDecision:
    """PASS / FAIL / CONTINUE for an absolute-margin non-inferiority test run in batches.

    The arrays hold every sample evaluated so far in run order. Every look the design
    has reached is re-evaluated in order, so the answer is the look at which the run
    should have stopped: peeking more often than the schedule cannot inflate alpha.

    Args:
        baseline: per-sample baseline scores so far.
        candidate: per-sample candidate scores so far, same order.
        margin: absolute margin, metric units.
        design: from group_sequential_design (planned max n and look schedule).
        method: "auto" (score for 0/1 scores, else normal), "normal" or "score".
        power: power for the final-look "n adequate" rule.

    Returns:
        SequentialDecision.
    """
    b, c = _paired(baseline, candidate)
    binary = is_binary(b, c)
    method = _resolve_method(method, binary, False)
    if method.startswith("bootstrap"):
        raise QevalError("sequential mode uses the normal or score statistic, not a bootstrap.",
                         fix="set method to auto, normal or score")
    done = [k for k, n_k in enumerate(design.looks) if n_k <= b.size]
    upper = np.array(design.upper)
    if not done:
        return SequentialDecision("CONTINUE", 0, b.size, design.looks[0], math.nan, float(upper[0]),
                                  float(np.mean(c - b)), margin, method, design)
    z_list, dist_list = [], []
    n_adequate = 2
    for k in done:
        bk, ck = b[: design.looks[k]], c[: design.looks[k]]
        if binary:
            n10, n01 = np.sum((bk == 1) & (ck == 0)), np.sum((bk == 0) & (ck == 1))
            n_k = design.looks[k]
            if method == "score":
                z = float(_tango_z(np.array(n10), np.array(n01), np.array(n_k), -margin))
            else:
                est, se = _binary_wald(np.array(n10), np.array(n01), np.array(n_k))
                z = float((est + margin) / se) if se > 0 else math.copysign(math.inf, float(est) + margin)
            flip = (n10 + n01) / n_k
            if flip > 0:
                n_adequate = int(_required_n_binary(np.array(margin), np.array(flip), np.array(0.0),
                                                    design.alpha, power, method))
        else:
            d = ck - bk
            se, _ = _se_from(d, None)
            z = float((d.mean() + margin) / se) if se > 0 else math.copysign(math.inf, float(d.mean()) + margin)
            n_adequate = int(math.ceil(_n_for_distance(margin, se * math.sqrt(d.size), design.alpha, power)))
        z_list.append(z)
        dist_list.append(float(np.mean(ck - bk)) + margin)
    code, first = _sequential_outcome(np.array([z_list]), np.array([dist_list]), np.array([n_adequate]), upper,
                                      design.max_n, len(done), len(design.looks))
    k = int(first[0])
    verdict = {1: "PASS", -1: "FAIL", 0: "INCONCLUSIVE", 2: "CONTINUE"}[int(code[0])]
    next_n = design.looks[len(done)] if verdict == "CONTINUE" else None
    return SequentialDecision(verdict, k + 1, design.looks[k], next_n, z_list[k], float(upper[k]),
                              dist_list[k] - margin, margin, method, design)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------
# Simulation helpers (binary paired data with a given flip rate and delta)
# ----------------------------------------------------------------------------

def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (scipy's binomtest.proportion_ci).

    Args:
        successes: count.
        trials: total.
        confidence: two-sided coverage.

    Returns:
        (low, high).
    """
    if trials == 0:
        return (0.0, 1.0)
    ci = sps.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def simulate_paired_binary(n: int, delta: float, flip_rate: float, *, n_runs: int,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Discordant counts of `n_runs` simulated paired binary runs.

    Each sample is a flip down (baseline right, candidate wrong) with probability
    (f - delta)/2, a flip up with probability (f + delta)/2, else concordant; so the
    true delta is `delta` and the true discordance is f. Only (n10, n01) matter for
    every paired statistic of 0/1 scores, so drawing the counts is exact.

    Args:
        n: samples per run.
        delta: true delta (metric units).
        flip_rate: true discordance f, f >= |delta|.
        n_runs: runs.
        rng: generator.

    Returns:
        (n10, n01) arrays of length n_runs.
    """
    if not 0 <= abs(delta) <= flip_rate <= 1:
        raise QevalError(f"need |delta| <= flip_rate <= 1, got delta={delta}, flip_rate={flip_rate}.")
    p10, p01 = (flip_rate - delta) / 2, (flip_rate + delta) / 2
    counts = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=n_runs)
    return counts[:, 0], counts[:, 1]


def paired_binary_scores(n10: int, n01: int, n: int, *, n11: int | None = None,
                         rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample 0/1 score arrays with the given discordant counts (for gate-level tests).

    Args:
        n10: baseline right, candidate wrong.
        n01: baseline wrong, candidate right.
        n: samples.
        n11: both right (default: half of the concordant samples).
        rng: if given, shuffles the sample order.

    Returns:
        (baseline, candidate) arrays.
    """
    concordant = n - n10 - n01
    n11 = concordant // 2 if n11 is None else n11
    b = np.concatenate([np.ones(n10), np.zeros(n01), np.ones(n11), np.zeros(concordant - n11)])
    c = np.concatenate([np.zeros(n10), np.ones(n01), np.ones(n11), np.zeros(concordant - n11)])
    if rng is not None:
        order = rng.permutation(n)
        b, c = b[order], c[order]
    return b, c


@dataclass(frozen=True)
class DecisionSimulation:
    """Error rates of the fixed-n non-inferiority rule over simulated runs.

    Attributes:
        ship_rate: fraction of runs with verdict PASS.
        ship_ci: 95% Wilson interval of ship_rate.
        fail_rate: fraction FAIL.
        inconclusive_rate: fraction INCONCLUSIVE.
        coverage: fraction of runs whose (1 - 2 alpha) interval holds the true delta.
        n_runs: runs.
        n: samples per run.
        delta: true delta.
        flip_rate: true discordance.
        margin: m.
        alpha: one-sided level.
        method: test method.
    """

    ship_rate: float
    ship_ci: tuple[float, float]
    fail_rate: float
    inconclusive_rate: float
    coverage: float
    n_runs: int
    n: int
    delta: float
    flip_rate: float
    margin: float
    alpha: float
    method: str


def simulate_noninferiority(*, n: int, delta: float, flip_rate: float, margin: float, alpha: float = 0.05,
                            power: float = 0.8, method: str = "score", n_runs: int = 2000, seed: int = 0,
                            n_resamples: int = 2000) -> DecisionSimulation:
    """Simulate the fixed-n rule on binary paired data (the shipped vectorised code path).

    Args:
        n: samples per run.
        delta: true delta.
        flip_rate: true discordance.
        margin: absolute margin.
        alpha: one-sided level.
        power: power for "n adequate".
        method: "normal", "score", "bootstrap-percentile" or "bootstrap-bca".
        n_runs: runs.
        seed: seed.
        n_resamples: bootstrap resamples per run (bootstrap methods).

    Returns:
        DecisionSimulation.
    """
    rng = np.random.default_rng(seed)
    n10, n01 = simulate_paired_binary(n, delta, flip_rate, n_runs=n_runs, rng=rng)
    r = _binary_ni_arrays(n10, n01, np.array(n), margin, alpha, method, n_resamples=n_resamples, rng=rng)
    flips = (n10 + n01) / n
    n_adequate = _required_n_binary(np.full(n_runs, margin), np.maximum(flips, 1e-12), np.zeros(n_runs), alpha,
                                    power, "score" if method == "score" else "normal")
    distance = r["estimate"] + margin
    ship = r["p"] <= alpha
    fail = ~ship & ((r["p_inf"] <= alpha) | ((distance < 0) & (n >= n_adequate)))
    covered = (r["lo"] <= delta) & (delta <= r["hi"])
    k = int(ship.sum())
    return DecisionSimulation(ship_rate=k / n_runs, ship_ci=wilson_interval(k, n_runs), fail_rate=float(fail.mean()),
                              inconclusive_rate=float((~ship & ~fail).mean()), coverage=float(covered.mean()),
                              n_runs=n_runs, n=n, delta=delta, flip_rate=flip_rate, margin=margin, alpha=alpha,
                              method=method)


def simulate_coverage(*, n: int, delta: float, flip_rate: float, confidence: float = 0.95, method: str = "normal",
                      n_runs: int = 2000, seed: int = 0, n_resamples: int = 2000) -> tuple[float, tuple[float, float]]:
    """Coverage of the two-sided `confidence` interval for the delta on simulated binary runs.

    Args:
        n: samples per run.
        delta: true delta.
        flip_rate: true discordance.
        confidence: nominal two-sided coverage.
        method: interval method.
        n_runs: runs.
        seed: seed.
        n_resamples: bootstrap resamples per run.

    Returns:
        (coverage, its 95% Wilson interval).
    """
    rng = np.random.default_rng(seed)
    n10, n01 = simulate_paired_binary(n, delta, flip_rate, n_runs=n_runs, rng=rng)
    # A one-sided level of (1 - confidence)/2 gives the two-sided interval at `confidence`.
    r = _binary_ni_arrays(n10, n01, np.array(n), 1.0, (1 - confidence) / 2, method, n_resamples=n_resamples,
                          rng=rng)
    k = int(np.sum((r["lo"] <= delta) & (delta <= r["hi"])))
    return k / n_runs, wilson_interval(k, n_runs)


@dataclass(frozen=True)
class SequentialSimulation:
    """Operating characteristics of a group-sequential design over simulated runs.

    Attributes:
        ship_rate: fraction PASS.
        ship_ci: 95% Wilson interval of ship_rate.
        fail_rate: fraction FAIL.
        inconclusive_rate: fraction INCONCLUSIVE at the final look.
        mean_n: average samples used.
        max_n: samples of the fixed-n run (the design's maximum).
        sample_ratio: mean_n / max_n.
        n_runs: runs.
        delta: true delta.
        flip_rate: true discordance.
        margin: m.
        design: the design.
        method: statistic.
    """

    ship_rate: float
    ship_ci: tuple[float, float]
    fail_rate: float
    inconclusive_rate: float
    mean_n: float
    max_n: int
    sample_ratio: float
    n_runs: int
    delta: float
    flip_rate: float
    margin: float
    design: GroupSequentialDesign
    method: str


def simulate_sequential(*, delta: float, flip_rate: float, margin: float, design: GroupSequentialDesign,
                        method: Literal["normal", "score"] = "score", power: float = 0.8, n_runs: int = 2000,
                        seed: int = 0) -> SequentialSimulation:
    """Simulate a group-sequential run on binary paired data, batch by batch.

    Args:
        delta: true delta.
        flip_rate: true discordance.
        margin: absolute margin.
        design: from group_sequential_design.
        method: "normal" or "score".
        power: power for the final-look "n adequate" rule.
        n_runs: runs.
        seed: seed.

    Returns:
        SequentialSimulation.
    """
    rng = np.random.default_rng(seed)
    looks = np.array(design.looks)
    batches = np.diff(np.concatenate([[0], looks]))
    p10, p01 = (flip_rate - delta) / 2, (flip_rate + delta) / 2
    per_batch = rng.multinomial(batches[None, :], [p10, p01, 1 - p10 - p01], size=(n_runs, looks.size))
    cum = per_batch.cumsum(axis=1)
    n10, n01 = cum[..., 0].astype(float), cum[..., 1].astype(float)
    nn = np.broadcast_to(looks[None, :].astype(float), n10.shape)
    if method == "score":
        z = _tango_z(n10, n01, nn, -margin)
    else:
        est, se = _binary_wald(n10, n01, nn)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(se > 0, (est + margin) / np.where(se > 0, se, 1.0), np.sign(est + margin) * np.inf)
    distance = (n01 - n10) / nn + margin
    final_flip = np.maximum((n10[:, -1] + n01[:, -1]) / looks[-1], 1e-12)
    n_adequate = _required_n_binary(np.full(n_runs, margin), final_flip, np.zeros(n_runs), design.alpha, power,
                                    method)
    code, first = _sequential_outcome(z, distance, n_adequate, np.array(design.upper), design.max_n, looks.size,
                                      looks.size)
    used = looks[first]
    k = int(np.sum(code == 1))
    return SequentialSimulation(ship_rate=k / n_runs, ship_ci=wilson_interval(k, n_runs),
                                fail_rate=float(np.mean(code == -1)), inconclusive_rate=float(np.mean(code == 0)),
                                mean_n=float(used.mean()), max_n=design.max_n,
                                sample_ratio=float(used.mean() / design.max_n), n_runs=n_runs, delta=delta,
                                flip_rate=flip_rate, margin=margin, design=design, method=method)
