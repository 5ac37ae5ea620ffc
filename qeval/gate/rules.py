"""The gate's rules: evidence -> statistics -> a verdict at the cell's level. The only place a verdict is decided.

Every rule is a one-sided test. PASS (the claim that licenses shipping) must reach the
cell's level in the family (`level`, alpha over the planned cells); FAIL stays at the
unadjusted `alpha` (blocking is the safe error). Statistics that do not depend on the
level are computed first (`task_stats`, the p-values), so the family can be settled
from them before any verdict (Holm needs every cell's p-value).

Which task rule applies follows the sampling mode that collected the samples: the
fixed-n paired rule, the group-sequential boundaries, or the anytime-valid betting test.
A rule that cannot honour its mode's stopping (a relative margin, clustered samples, the
TensorRT-LLM policy) is marked so: the runner then never stops that task early and the
fixed-n rule decides at the planned n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import norm

from qeval import stats
from qeval.errors import QevalError
from qeval.gate.evidence import DivergenceEvidence, LatencyEvidence, TaskEvidence
from qeval.gate.outcomes import GateVerdict, RuleResult, TaskDecision
from qeval.gate.policy import GatePolicy, LatencySLO

ADAPTIVE_MODES = ("group-sequential", "anytime")


# -- tasks --------------------------------------------------------------------------------------------------

@dataclass
class TaskStats:
    """Level-free statistics of one task rule."""

    ev: TaskEvidence
    rule_id: str
    ni: stats.NonInferiority  # fixed-n test at the unadjusted alpha (its p-value is level-free)
    trt: stats.TrtllmDecision
    gain: stats.PairingGain
    mcnemar: stats.McNemar | None
    wilcoxon_p: float | None
    margin_units: float
    oriented: tuple[np.ndarray, np.ndarray]  # (baseline, candidate), sign-flipped for lower-is-better


def _trtllm_params(policy: GatePolicy, task: str) -> tuple[float, float]:
    key = task.lower()
    default = next((v for k, v in stats.TRTLLM_DEFAULTS.items() if key == k or key.startswith(k + "_")), None)
    sigma = policy.trtllm.sigma.get(task, default.sigma if default else policy.trtllm.default_sigma)
    alpha = policy.trtllm.alpha if policy.trtllm.alpha is not None else (default.alpha if default else 0.05)
    return float(sigma), float(alpha)


def orient(ev: TaskEvidence) -> tuple[np.ndarray, np.ndarray]:
    """Scores oriented so that higher is better: lower-is-better 0/1 metrics become 1 - x (still 0/1, so the
    binary methods apply), other lower-is-better metrics -x."""
    b, c = ev.baseline_scores, ev.candidate_scores
    if ev.higher_is_better:
        return b, c
    if stats.is_binary(b, c):
        return 1.0 - b, 1.0 - c
    return -b, -c


def task_stats(policy: GatePolicy, ev: TaskEvidence, rule_id: str) -> TaskStats:
    b, c = ev.baseline_scores, ev.candidate_scores
    ppu = ev.points_per_unit
    if not ev.higher_is_better and policy.margin_kind == "relative":
        raise QevalError(f"{ev.task}/{ev.metric} is lower-is-better; a relative (recovery) margin is defined for "
                         "higher-is-better metrics.", field="gate.margin_kind",
                         fix="use margin_kind: absolute for this suite, or a higher-is-better metric")
    bo, co = orient(ev)
    margin = policy.margin_for(ev.task)
    margin_units = margin / ppu if policy.margin_kind == "absolute" else margin
    clusters = None if ev.clusters is None else np.asarray(ev.clusters, dtype=object)
    ni = stats.noninferiority(bo, co, margin_units, kind=policy.margin_kind, clusters=clusters,
                              method=policy.interval, alpha=policy.alpha, power=policy.power,
                              n_resamples=policy.n_resamples, seed=policy.seed)
    sigma, t_alpha = _trtllm_params(policy, ev.task)
    trt = stats.trtllm_rule(float(c.mean()) * ppu, float(b.mean()) * ppu, b.size, sigma=sigma, alpha=t_alpha,
                            beta=policy.trtllm.beta, higher_is_better=ev.higher_is_better)
    gain = stats.pairing_gain(b, c, sigma=sigma, points_per_unit=ppu, clusters=clusters)
    binary = stats.is_binary(b, c)
    mcn = stats.mcnemar_exact(b, c) if binary else None
    wil = None if binary else stats.wilcoxon_signed_rank(b, c).pvalue
    return TaskStats(ev, rule_id, ni, trt, gain, mcn, wil, margin_units, (bo, co))


def sequential_blocker(policy: GatePolicy, ev: TaskEvidence) -> str:
    """Why this task cannot use its adaptive mode's rule ("" where it can).

    The runner asks this before stopping a task early: a task its mode cannot judge runs to its
    planned n and the fixed-n rule decides, which stays valid because nothing looked at it first.
    """
    if ev.mode not in ADAPTIVE_MODES:
        return ""
    if policy.policy != "qeval":
        return "policy trtllm decides every task with its fixed-n rule"
    if policy.margin_kind != "absolute":
        return "a relative margin has no sequential rule here"
    if ev.clusters is not None:
        return "clustered samples are not independent draws, which the sequential rules assume"
    if ev.mode == "group-sequential" and not ev.looks:
        return "no look schedule was recorded"
    if ev.mode == "anytime" and ev.score_range is None:
        return "the metric's range is unknown (set tasks[].score_range), and the betting test needs bounds"
    return ""


def _design(ev: TaskEvidence, level: float, policy_spending: str) -> stats.GroupSequentialDesign:
    looks = tuple(ev.looks or ())
    return stats.group_sequential_design(looks[-1], looks, alpha=level, spending=policy_spending)  # type: ignore[arg-type]


def task_rule(policy: GatePolicy, st: TaskStats, *, level: float, multiplier: float, correction: str,
              spending: str = "obrien-fleming") -> TaskDecision:
    """The verdict of one task: its mode's rule at `level` for PASS and the unadjusted alpha for FAIL."""
    ev, ni = st.ev, st.ni
    ppu = ev.points_per_unit
    sign = 1.0 if ev.higher_is_better else -1.0
    b_pts, c_pts = float(ev.baseline_scores.mean()) * ppu, float(ev.candidate_scores.mean()) * ppu
    ni = ni.adjusted(min(1.0, ni.pvalue * multiplier), correction, policy.alpha / multiplier)  # type: ignore[arg-type]
    verdict: str = ni.verdict
    seq = any_ = None
    note = sequential_blocker(policy, ev)
    mode = "fixed" if (note or ev.mode not in ADAPTIVE_MODES) else ev.mode
    bo, co = st.oriented
    if mode == "group-sequential":
        method = "score" if ni.method == "score" else "normal"
        design = _design(ev, level, spending)
        # FAIL spends its (unadjusted) alpha the O'Brien-Fleming way whatever PASS spends: Pocock's flat
        # boundaries stop a clear PASS at look 2, but on the FAIL side they would raise the last look's
        # boundary (2.04 vs 1.72 at 4 looks, alpha 0.05), so a regression the fixed test blocks would stay open.
        fail_design = _design(ev, policy.alpha, "obrien-fleming")
        seq = stats.sequential_noninferiority(bo, co, st.margin_units, design, method=method, power=policy.power,
                                              fail_design=fail_design)
        verdict = "INCONCLUSIVE" if seq.verdict == "CONTINUE" else seq.verdict
    elif mode == "anytime":
        assert ev.score_range is not None
        lo, hi = ev.score_range
        oriented_range = (lo, hi) if ev.higher_is_better else ((1 - hi, 1 - lo) if stats.is_binary(bo, co)
                                                                else (-hi, -lo))
        any_ = stats.anytime_noninferiority(bo, co, st.margin_units, alpha_pass=level, alpha_fail=policy.alpha,
                                            score_range=oriented_range)
        verdict = "INCONCLUSIVE" if any_.verdict == "CONTINUE" else any_.verdict
    if policy.policy == "trtllm":
        verdict = "PASS" if st.trt.passed else "FAIL"
    if ni.kind == "absolute":
        est, ci, margin = ni.estimate * ppu, (ni.ci[0] * ppu, ni.ci[1] * ppu), st.margin_units * ppu
    else:
        est, ci, margin = ni.estimate, ni.ci, st.margin_units
    return TaskDecision(rule_id=st.rule_id, task=ev.task, metric=ev.metric, verdict=verdict,  # type: ignore[arg-type]
                        decided_by=policy.policy, margin_kind=ni.kind, margin=margin, estimate=est, ci=ci,
                        confidence=ni.confidence, delta_pts=sign * (c_pts - b_pts), baseline_pts=b_pts,
                        candidate_pts=c_pts, n=ni.n, pvalue=ni.pvalue, adjusted_pvalue=ni.adjusted_pvalue,
                        pvalue_inferior=ni.pvalue_inferior, correction=correction, method=ni.method,
                        n_to_settle=ni.n_to_settle if verdict == "INCONCLUSIVE" else None,
                        n10=ni.n10 if st.mcnemar else None, n01=ni.n01 if st.mcnemar else None,
                        flip_rate=st.mcnemar.flip_rate if st.mcnemar else None,
                        mcnemar_p=st.mcnemar.pvalue if st.mcnemar else None, wilcoxon_p=st.wilcoxon_p,
                        trtllm=st.trt, pairing=st.gain, noninferiority=ni, sequential=seq, anytime=any_,
                        level=level, mode=mode, note=note, higher_is_better=ev.higher_is_better,
                        semantics=ev.semantics or "")


def task_pvalue(st: TaskStats) -> float:
    """The task's level-free p-value (fixed-n test) for the family's step-down."""
    return float(st.ni.pvalue)


# -- KL divergence ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KldOutcome:
    verdict: str
    ev: DivergenceEvidence | None
    upper: float | None  # one-sided (1 - level) upper bound of the mean KL
    lower: float | None  # one-sided (1 - alpha) lower bound
    level: float
    pvalue: float | None
    reason: str = ""


def _kld_worst(divs: Sequence[DivergenceEvidence]) -> DivergenceEvidence | None:
    return max(divs, key=lambda x: x.kld_mean) if divs else None


def kld_pvalue(policy: GatePolicy, divs: Sequence[DivergenceEvidence]) -> float:
    """p-value of "mean KL >= limit" (normal, clustered SE); 1 where it cannot PASS (no evidence, a lower bound)."""
    dv = _kld_worst(divs)
    if dv is None or dv.bound == "lower_bound" or policy.max_kld_mean is None:
        return 1.0
    if dv.bound == "bounds":  # the claim rests on the upper bound
        if dv.kld_upper_mean is None or not dv.kld_upper_se:
            return 1.0
        return float(norm.sf((policy.max_kld_mean - dv.kld_upper_mean) / dv.kld_upper_se))
    se = dv.se()
    if se is None:
        return 1.0
    if se == 0:
        return 0.0 if dv.kld_mean < policy.max_kld_mean else 1.0
    return float(norm.sf((policy.max_kld_mean - dv.kld_mean) / se))


def kld_rule(policy: GatePolicy, divs: Sequence[DivergenceEvidence], level: float) -> KldOutcome:
    limit = policy.max_kld_mean
    assert limit is not None
    dv = _kld_worst(divs)
    if dv is None:
        return KldOutcome("INCONCLUSIVE", None, None, None, level, None, "no divergence evidence for this cell")
    se = dv.se()
    if se is None:
        upper = lower = dv.kld_mean
    else:
        upper = dv.kld_mean + float(norm.isf(level)) * se
        lower = dv.kld_mean - float(norm.isf(policy.alpha)) * se
    if dv.bound == "bounds" and dv.kld_upper_mean is not None and dv.kld_upper_se is not None:
        upper = dv.kld_upper_mean + float(norm.isf(level)) * dv.kld_upper_se  # the upper bound's own upper end
    p = kld_pvalue(policy, divs)
    can_pass = dv.bound != "lower_bound" and se is not None
    can_fail = dv.bound != "upper_bound"
    if can_pass and upper <= limit:
        return KldOutcome("PASS", dv, upper, lower, level, p)
    if can_fail and lower > limit:
        return KldOutcome("FAIL", dv, upper, lower, level, p)
    reason = ("the interval straddles the limit" if (can_pass or upper > limit) and (can_fail or lower <= limit)
              else f"a {dv.bound.replace('_', ' ')} of KL cannot {'PASS' if not can_pass else 'FAIL'}")
    if se is None:
        reason = "no interval was recorded"
    return KldOutcome("INCONCLUSIVE", dv, upper, lower, level, p, reason)


# -- flips --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlipOutcome:
    verdict: str
    flips: int
    n: int
    rate: float
    lo: float
    hi: float
    tasks: str
    pvalue: float | None
    method: str
    level: float


def _stratified_bounds(binary: Sequence[TaskStats], level_upper: float, level_lower: float) -> tuple[float, float]:
    """Pooled flip-rate bounds valid at any stopping time: one confidence sequence per task, combined.

    Each task's items come in a seeded random permutation of its documents, so within a task the flips
    are exchangeable with one mean. Pooled over tasks they are not: the tasks' flip rates differ (on the
    H200, 2026-12-03: social_iqa 18%, sports_understanding 0%), and a running intersection over a
    sequence whose mean changes with the task mix excludes the pooled rate itself (8.46% outside
    [11.76%, 12.84%]). So: each task's sequence at level/K (Bonferroni over the K tasks), and the
    n-weighted sum of the task bounds, which holds for any weights, including the stopped n's.
    """
    k = len(binary)
    n_all = sum(st.ev.baseline_scores.size for st in binary)
    lo = hi = 0.0
    for st in binary:
        flips = (st.ev.baseline_scores != st.ev.candidate_scores).astype(float)
        t_lo, t_hi = stats.confidence_sequence(flips, 0.0, 1.0, level_lower / k, level_upper / k)
        lo += flips.size / n_all * t_lo
        hi += flips.size / n_all * t_hi
    return lo, hi


def _stratified_pvalue(binary: Sequence[TaskStats], limit: float, level: float) -> float:
    """The smallest level at which the stratified upper bound is at most `limit` (PASS), by bisection
    in log-level: {p <= l} is {PASS at level l}, so it is a valid p-value of "rate >= limit"."""
    if _stratified_bounds(binary, level, level)[1] > limit:
        return 1.0 if _stratified_bounds(binary, 0.5, 0.5)[1] > limit else 0.5
    lo, hi = math.log(1e-12), math.log(level)  # PASS at exp(hi); at exp(lo) assume not
    if _stratified_bounds(binary, 1e-12, 1e-12)[1] <= limit:
        return 1e-12
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        if _stratified_bounds(binary, math.exp(mid), math.exp(mid))[1] <= limit:
            hi = mid
        else:
            lo = mid
    return float(math.exp(hi))


def flip_rule(policy: GatePolicy, all_stats: Sequence[TaskStats], level: float) -> FlipOutcome | None:
    """Fraction of 0/1 answers that flip, against policy.max_flip_rate; None without 0/1 tasks."""
    limit = policy.max_flip_rate
    assert limit is not None
    binary = [st for st in all_stats if st.mcnemar is not None]
    if not binary:
        return None
    flips = sum(st.mcnemar.n10 + st.mcnemar.n01 for st in binary)  # type: ignore[union-attr]
    n = sum(st.mcnemar.n for st in binary)  # type: ignore[union-attr]
    rate = flips / n
    tasks = ", ".join(sorted({st.ev.task for st in binary}))
    adaptive = any(st.ev.mode in ADAPTIVE_MODES and not sequential_blocker(policy, st.ev) for st in binary)
    if adaptive:
        # The tasks stopped when their own rules settled, which depends on the flips: a fixed-n interval at
        # that point is biased; per-task confidence sequences (betting) are valid at any stop.
        lo, hi = _stratified_bounds(binary, level, policy.alpha)
        verdict = "PASS" if hi <= limit else "FAIL" if lo > limit else "INCONCLUSIVE"
        return FlipOutcome(verdict, flips, n, rate, lo, hi, tasks, _stratified_pvalue(binary, limit, level),
                           "betting, anytime-valid, per task", level)
    _, hi = stats.wilson_interval(flips, n, 1 - 2 * level)
    lo, _ = stats.wilson_interval(flips, n, 1 - 2 * policy.alpha)
    # The score test the Wilson interval inverts: p-value of "rate >= limit".
    p = float(norm.cdf((rate - limit) / math.sqrt(limit * (1 - limit) / n))) if 0 < limit < 1 else 1.0
    verdict = "PASS" if hi <= limit else "FAIL" if lo > limit else "INCONCLUSIVE"
    return FlipOutcome(verdict, flips, n, rate, lo, hi, tasks, p, "Wilson", level)


# -- latency ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyOutcome:
    verdict: str
    slo: LatencySLO
    x: LatencyEvidence | None
    needed: int
    level: float
    reason: str = ""


def _matches(x: LatencyEvidence, slo: LatencySLO) -> bool:
    same_rate = x.request_rate == slo.request_rate or (
        x.request_rate is not None and slo.request_rate is not None and math.isclose(x.request_rate, slo.request_rate))
    return x.metric == slo.metric and math.isclose(x.percentile, slo.percentile) and \
        x.concurrency == slo.concurrency and same_rate


def latency_rule(slo: LatencySLO, lats: Sequence[LatencyEvidence], level: float, alpha: float) -> LatencyOutcome:
    """The percentile's upper bound (order statistics) under the SLO to PASS, its lower bound over it to FAIL.

    Below `samples_for_upper_bound(q, level)` requests even the sample maximum is too likely to sit under
    the true percentile, so no upper bound exists whatever interval a record carries.
    """
    match = [x for x in lats if _matches(x, slo)]
    needed = stats.samples_for_upper_bound(slo.percentile, level)
    if not match:
        return LatencyOutcome("INCONCLUSIVE", slo, None, needed, level, "no latency evidence")
    x = match[-1]
    lo, hi = x.ci_ms if x.ci_ms is not None else (x.value_ms, x.value_ms)
    if hi is not None and hi <= slo.max_ms and x.n >= needed:
        return LatencyOutcome("PASS", slo, x, needed, level)
    if lo is not None and lo > slo.max_ms:
        return LatencyOutcome("FAIL", slo, x, needed, level)
    if x.n < needed or hi is None:
        return LatencyOutcome("INCONCLUSIVE", slo, x, needed, level, "too few samples to bound it")
    return LatencyOutcome("INCONCLUSIVE", slo, x, needed, level, "the interval straddles the SLO")


def latency_pvalue(slo: LatencySLO, lats: Sequence[LatencyEvidence], level: float, alpha: float) -> float:
    """A valid p-value bound for the family: `level` where the rule passes at `level`, else 1.

    (The records keep percentiles and their intervals, not every request: P(p <= u) <= u holds for
    this two-valued p, which is all Holm needs.)
    """
    return level if latency_rule(slo, lats, level, alpha).verdict == "PASS" else 1.0


# -- aggregation --------------------------------------------------------------------------------------------

def aggregate(rules: Sequence[RuleResult]) -> GateVerdict:
    """Any FAIL -> BLOCK; all PASS -> SHIP; else (or no rules) INCONCLUSIVE."""
    if any(r.passed is False for r in rules):
        return "BLOCK"
    if rules and all(r.passed is True for r in rules):
        return "SHIP"
    return "INCONCLUSIVE"


def passed_of(verdict: str) -> bool | None:
    return {"PASS": True, "FAIL": False}.get(verdict)
