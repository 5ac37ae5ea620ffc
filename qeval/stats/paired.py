"""Paired differences: standard errors (plain and clustered), the paired delta, the recovery ratio
(Fieller), McNemar's exact test and the Wilcoxon signed-rank test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import stats as sps

from qeval.errors import QevalError
from qeval.stats._inputs import _as_scores, _cluster_index, _paired, is_binary
from qeval.stats.bootstrap import _bootstrap_bounds, _bootstrap_statistic, _delta_units, _ratio_of_sums, _ratio_units
from qeval.stats.tango import _tango_interval


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
