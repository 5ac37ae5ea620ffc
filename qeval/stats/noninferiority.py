"""Paired non-inferiority at a margin: the decision rule of a task."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import stats as sps

from qeval.errors import QevalError
from qeval.stats._inputs import Correction, MarginKind, Verdict, _paired, is_binary
from qeval.stats.bootstrap import _bootstrap_bounds, _bootstrap_pvalues, _bootstrap_statistic, _delta_units, _ratio_of_sums, _ratio_units
from qeval.stats.multiplicity import next_rejection_level
from qeval.stats.paired import _resolve_method, _se_from, recovery_ratio
from qeval.stats.planning import _n_for_distance, _required_n_binary
from qeval.stats.tango import _tango_interval, _tango_z


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
        n_clusters: clusters the SE was computed over, or None when unclustered.
        se_unclustered: where clustered (absolute margin), the plain paired SE of the same differences,
            for comparison with `se`; else None.
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
    n_clusters: int | None = None
    se_unclustered: float | None = None

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
    """The three-way rule of docs/statistics.md ("A task's rule").

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
        se, n_clusters = _se_from(d, clusters)
        if clusters is not None:
            counts["n_clusters"], counts["se_unclustered"] = n_clusters, float(_se_from(d, None)[0])
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
        se_e, n_clusters = _se_from(e, clusters)
        if clusters is not None:
            counts["n_clusters"] = n_clusters
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
