"""Anytime-valid non-inferiority: betting e-processes for a paired mean, valid at every stopping time.

A user of `sampling.mode: anytime` may stop a task at any look or extend it past its
plan without losing the error guarantee. For paired differences d_i in a known range
[lo, hi] (d in [-1, 1] for 0/1 and [0, 1] scores), rescale x = (d - lo) / (hi - lo) in
[0, 1]. "Non-inferior at margin m" rejects H0: E[d] <= -m, i.e. E[x] <= x0 with
x0 = (-m - lo) / (hi - lo). The wealth of a gambler betting against H0,

    K_t = prod_{i <= t} (1 + lambda_i (x_i - x0)),  lambda_i >= 0 chosen from x_1 .. x_{i-1},

is a nonnegative supermartingale under H0, so by Ville's inequality
P(sup_t K_t >= 1/alpha) <= alpha: PASS the first time K_t reaches 1/alpha. FAIL is the
mirror bet against H0': E[x] >= x0. Bets are the predictable plug-in empirical-Bernstein
bets of Waudby-Smith & Ramdas (2024, JRSS-B, "Estimating means of bounded random
variables by betting", eq. 26-27; `lambda_predmix_eb` in Howard's confseq package),
truncated at c / x0 (c = 1/2) so a single draw never costs more than half the wealth.
The confidence sequence is the set of null means not yet rejected (running intersection).

Hand-written: scipy and statsmodels have no confidence sequences; confseq (the authors'
package) needs a C++/Boost build that CI cannot count on. Checked against confseq 0.0.11's
`betting_mart` on the same data (tests/test_stats_anytime.py states what is compared).
Sampling is treated as i.i.d. draws from the task's population of items, as the fixed-n
rules do (the documents come in a seeded random order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qeval.errors import QevalError
from qeval.stats._inputs import _paired

TRUNCATION = 0.5  # c in lambda <= c / x0: Waudby-Smith & Ramdas' recommended 1/2


def predictable_bets(x: np.ndarray, alpha: float, prior_mean: float = 0.5, prior_variance: float = 0.25,
                     fake_obs: int = 1) -> np.ndarray:
    """lambda_t from x_1 .. x_{t-1} only: sqrt(2 log(1/alpha) / (sigma2_{t-1} t log(1 + t))).

    sigma2 is the regularised running variance (one fake observation at the prior), so the
    first bets are finite and the sequence shrinks like 1 / sqrt(t log t), which keeps the
    test powerful at every horizon rather than at one planned n.
    """
    t = np.arange(1, x.size + 1, dtype=float)
    mu_t = np.minimum((fake_obs * prior_mean + np.cumsum(x)) / (t + fake_obs), 1.0)
    sigma2_t = (fake_obs * prior_variance + np.cumsum((x - mu_t) ** 2)) / (t + fake_obs)
    sigma2_prev = np.concatenate([[prior_variance], sigma2_t[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.sqrt(2 * math.log(1 / alpha) / (t * np.log1p(t) * sigma2_prev))
    return np.nan_to_num(lam, nan=0.0, posinf=0.0)


def wealth(x: np.ndarray, null_mean: float, alpha: float, *, side: str = "above") -> np.ndarray:
    """Running wealth of the bet against H0 "mean <= null_mean" (side above) or ">= null_mean" (below).

    Args:
        x: observations in [0, 1], in the order they were drawn.
        null_mean: the boundary null value x0 in [0, 1].
        alpha: the level the bets are tuned for.
        side: "above" rejects small means (evidence the mean is above x0); "below" the mirror.

    Returns:
        K_1 .. K_t (1.0 before any observation is implied).
    """
    if side == "below":
        x, null_mean = 1.0 - x, 1.0 - null_mean
    if null_mean <= 0:  # no mean in [0, 1] lies below 0: H0 is empty, rejected from the start
        return np.full(x.size, math.inf)
    if null_mean >= 1:  # H0 holds for every distribution on [0, 1]: never rejected
        return np.ones(x.size)
    lam = np.minimum(predictable_bets(x, alpha), TRUNCATION / null_mean)
    return np.cumprod(1.0 + lam * (x - null_mean))


@dataclass(frozen=True)
class AnytimeDecision:
    """An anytime-valid non-inferiority decision on the paired samples so far.

    Attributes:
        verdict: PASS, FAIL, or CONTINUE (neither bet has reached its threshold yet).
        n: samples seen.
        stopped_at: n at which the verdict was reached (the first crossing), else None.
        e_pass: largest wealth so far of the bet against "inferior" (PASS at >= 1/alpha_pass).
        e_fail: largest wealth so far of the bet against "non-inferior" (FAIL at >= 1/alpha_fail).
        pvalue: anytime-valid p-value of "inferior", min(1, 1 / e_pass).
        lower: lower end of the confidence sequence for the mean delta at n (level alpha_pass).
        upper: upper end (level alpha_fail).
        estimate: mean delta at n.
        margin: m (metric units).
        alpha_pass: level of the PASS bet.
        alpha_fail: level of the FAIL bet.
        score_range: (lo, hi) of the per-sample differences.
        method: the construction, in words.
    """

    verdict: str
    n: int
    stopped_at: int | None
    e_pass: float
    e_fail: float
    pvalue: float
    lower: float
    upper: float
    estimate: float
    margin: float
    alpha_pass: float
    alpha_fail: float
    score_range: tuple[float, float]
    method: str = "betting e-process (Waudby-Smith & Ramdas 2024), anytime-valid"


def _scaled(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray,
            score_range: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    b, c = _paired(baseline, candidate)
    lo_s, hi_s = score_range
    if not hi_s > lo_s:
        raise QevalError(f"score range {score_range} is empty.", fix="give (low, high) with high > low")
    lo, hi = lo_s - hi_s, hi_s - lo_s  # range of d = c - b
    d = c - b
    if d.size and (d.min() < lo - 1e-12 or d.max() > hi + 1e-12):
        raise QevalError(f"scores fall outside their declared range {score_range}.",
                         fix="declare the metric's real range (tasks[].score_range), or use sampling mode "
                             "fixed or group-sequential, which need no bounds")
    return (np.clip(d, lo, hi) - lo) / (hi - lo), lo, hi


def _rejected(x: np.ndarray, null_mean: float, alpha: float, side: str) -> bool:
    return bool(wealth(x, null_mean, alpha, side=side).max() >= 1 / alpha)


def confidence_sequence(x: np.ndarray, lo: float, hi: float, alpha_lower: float, alpha_upper: float,
                        tol: float = 1e-4) -> tuple[float, float]:
    """[lower, upper] for the mean of d at the last sample: the null means not rejected so far.

    Running intersection: a null mean rejected at any earlier time stays rejected. The wealth against
    "mean <= m0" falls as m0 rises (each factor 1 + lambda (x - m0) does, and so does the truncation
    c / m0), so the rejected nulls form an interval [0, L) and bisection finds L (likewise U above).
    """
    if x.size == 0:
        return lo, hi

    def edge(side: str, alpha: float) -> float:
        # side above: the largest rejected m0 (lower end); below: the smallest rejected m0 (upper end).
        inside, outside = (1.0, 0.0) if side == "above" else (0.0, 1.0)  # not rejected / rejected (limits)
        if not _rejected(x, outside + (inside - outside) * tol, alpha, side):
            return outside
        while abs(inside - outside) > tol:
            mid = 0.5 * (inside + outside)
            if _rejected(x, mid, alpha, side):
                outside = mid
            else:
                inside = mid
        return outside

    lower, upper = edge("above", alpha_lower), edge("below", alpha_upper)
    if lower > upper:  # both sides rejected everything between (only in tiny-alpha corner cases)
        lower = upper = float(x.mean())
    return float(lo + lower * (hi - lo)), float(lo + upper * (hi - lo))


def anytime_noninferiority(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray,
                           margin: float, *, alpha_pass: float, alpha_fail: float | None = None,
                           score_range: tuple[float, float] = (0.0, 1.0), with_interval: bool = True
                           ) -> AnytimeDecision:
    """PASS / FAIL / CONTINUE of non-inferiority at margin m, valid however the run is stopped.

    Args:
        baseline: per-sample baseline scores, in the order they were evaluated.
        candidate: per-sample candidate scores, same order.
        margin: absolute margin in metric units (> 0).
        alpha_pass: level of the PASS claim (the cell's share of the family's alpha).
        alpha_fail: level of FAIL (default alpha_pass; the gate passes its unadjusted alpha).
        score_range: (low, high) every score lies in; d = c - b lies in [low - high, high - low].
        with_interval: also compute the confidence sequence at n (a grid, ~800 bets).

    Returns:
        AnytimeDecision; the first crossing of either bet decides.
    """
    alpha_fail = alpha_pass if alpha_fail is None else alpha_fail
    x, lo, hi = _scaled(baseline, candidate, score_range)
    x0 = (-margin - lo) / (hi - lo)
    k_pass = wealth(x, x0, alpha_pass, side="above")
    k_fail = wealth(x, x0, alpha_fail, side="below")
    hit_pass = np.flatnonzero(k_pass >= 1 / alpha_pass)
    hit_fail = np.flatnonzero(k_fail >= 1 / alpha_fail)
    first_pass = int(hit_pass[0]) if hit_pass.size else None
    first_fail = int(hit_fail[0]) if hit_fail.size else None
    if first_pass is not None and (first_fail is None or first_pass <= first_fail):
        verdict, stopped = "PASS", first_pass + 1
    elif first_fail is not None:
        verdict, stopped = "FAIL", first_fail + 1
    else:
        verdict, stopped = "CONTINUE", None
    e_pass = float(k_pass.max()) if x.size else 1.0
    e_fail = float(k_fail.max()) if x.size else 1.0
    lower, upper = confidence_sequence(x, lo, hi, alpha_pass, alpha_fail) if with_interval else (math.nan, math.nan)
    estimate = float(lo + x.mean() * (hi - lo)) if x.size else math.nan
    return AnytimeDecision(verdict=verdict, n=int(x.size), stopped_at=stopped, e_pass=e_pass, e_fail=e_fail,
                           pvalue=min(1.0, 1.0 / e_pass) if e_pass > 0 else 1.0, lower=lower, upper=upper,
                           estimate=estimate, margin=float(margin), alpha_pass=float(alpha_pass),
                           alpha_fail=float(alpha_fail), score_range=(float(score_range[0]),
                                                                       float(score_range[1])))
