"""Unit tests of qeval.stats: agreement with scipy/statsmodels, closed forms, edge cases.

Error-rate simulations (type I, power, coverage, sequential) live in
test_stats_simulation.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.optimize import minimize_scalar

from qeval import stats as S
from qeval.errors import QevalError

statsmodels = pytest.importorskip("statsmodels")
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402


# ---------------------------------------------------------------- references

@pytest.mark.parametrize("n10,n01,n", [(12, 5, 100), (5, 12, 100), (0, 0, 50), (7, 7, 40), (0, 9, 30),
                                       (130, 95, 4096), (1, 0, 3), (300, 260, 10_000)])
def test_mcnemar_matches_statsmodels_exact(n10: int, n01: int, n: int) -> None:
    b, c = S.paired_binary_scores(n10, n01, n, rng=np.random.default_rng(n10 + n01))
    ours = S.mcnemar_exact(b, c)
    n11 = int(np.sum((b == 1) & (c == 1)))
    table = [[n11, n10], [n01, n - n11 - n10 - n01]]
    ref = sm_mcnemar(table, exact=True)
    assert (ours.n10, ours.n01, ours.n) == (n10, n01, n)
    assert ours.flip_rate == pytest.approx((n10 + n01) / n, abs=1e-15)
    assert abs(ours.pvalue - ref.pvalue) <= 1e-12


def test_mcnemar_orientation_n10_is_baseline_right_candidate_wrong() -> None:
    ours = S.mcnemar_exact([1, 1, 1, 0, 0], [0, 0, 1, 1, 0])
    assert (ours.n10, ours.n01) == (2, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_wilcoxon_matches_scipy_on_pairs(seed: int, alternative: str) -> None:
    rng = np.random.default_rng(seed)
    n = [20, 60, 300][seed]
    b = rng.uniform(0, 1, n).round(2)           # ROUGE-like scores with ties and zero differences
    c = np.clip(b + rng.normal(-0.02, 0.05, n).round(2), 0, 1)
    ours = S.wilcoxon_signed_rank(b, c, alternative=alternative)
    ref = sps.wilcoxon(c, b, alternative=alternative, method=ours.method)
    assert abs(ours.statistic - ref.statistic) <= 1e-12
    assert abs(ours.pvalue - ref.pvalue) <= 1e-12
    assert ours.n_nonzero == int(np.count_nonzero(c - b))


def test_wilcoxon_exact_for_small_clean_samples_and_all_zero_case() -> None:
    b = np.zeros(10)
    c = np.arange(1, 11) * np.array([1, -1] * 5) / 10
    res = S.wilcoxon_signed_rank(b, c)
    assert res.method == "exact"
    assert res.pvalue == pytest.approx(sps.wilcoxon(c, method="exact").pvalue, abs=1e-15)
    same = S.wilcoxon_signed_rank([0.3, 0.5], [0.3, 0.5])
    assert same.pvalue == 1.0 and same.n_nonzero == 0


@pytest.mark.parametrize("seed", range(5))
def test_holm_and_bh_match_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.05, 7), rng.uniform(0, 1, 20), [0.01, 0.01, 1.0, 0.0]])
    rng.shuffle(p)
    for ours, method in ((S.holm_adjust(p), "holm"), (S.bh_adjust(p), "fdr_bh"),
                         (S.adjust_pvalues(p, "holm"), "holm"), (S.adjust_pvalues(p, "bh"), "fdr_bh")):
        ref = multipletests(p, method=method)[1]
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(S.adjust_pvalues(p, "none"), p)


def test_next_rejection_level() -> None:
    p = [0.001, 0.02, 0.2, 0.5]
    assert S.next_rejection_level(p, 0.05, "holm") == pytest.approx(0.05 / 3)   # one rejected
    assert S.next_rejection_level(p, 0.05, "bh") == pytest.approx(0.05 * 3 / 4)  # two rejected
    assert S.next_rejection_level(p, 0.05, "none") == 0.05


def test_clustered_se_matches_statsmodels_cluster_robust_ols() -> None:
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(40), rng.integers(1, 8, 40))
    d = rng.normal(0, 1, 40)[groups] + rng.normal(0, 1, groups.size)
    fit = sm.OLS(d, np.ones(d.size)).fit(cov_type="cluster", cov_kwds={"groups": groups})
    # statsmodels' default small-sample factor is G/(G-1) * (N-1)/(N-K); with K=1 that is G/(G-1), ours.
    assert S.clustered_se(d, groups) == pytest.approx(float(fit.bse[0]), rel=1e-12)


def test_clustered_se_with_singletons_is_the_plain_se() -> None:
    d = np.random.default_rng(1).normal(size=200)
    assert S.clustered_se(d, np.arange(200)) == pytest.approx(d.std(ddof=1) / math.sqrt(200), rel=1e-12)


def test_clustered_se_grows_with_correlated_clusters() -> None:
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(50), 6)
    d = rng.normal(0, 1, 50)[groups] + 0.3 * rng.normal(size=300)
    res = S.paired_delta(np.zeros(300), d, clusters=groups)
    assert res.n_clusters == 50
    assert res.se > 1.8 * d.std(ddof=1) / math.sqrt(300)


def _scipy_bootstrap(d: np.ndarray, method: str, seed: int) -> tuple[float, float]:
    ci = sps.bootstrap((d,), np.mean, n_resamples=20_000, method=method, rng=np.random.default_rng(seed),
                       vectorized=True).confidence_interval
    return float(ci.low), float(ci.high)


@pytest.mark.parametrize("method,scipy_method", [("bootstrap-percentile", "percentile"),
                                                 ("bootstrap-bca", "BCa")])
def test_bootstrap_agrees_with_scipy_continuous(method: str, scipy_method: str) -> None:
    rng = np.random.default_rng(11)
    b = rng.uniform(size=400)
    c = b + rng.gamma(0.5, 0.1, 400) - 0.05        # skewed differences: BCa differs from percentile
    ours = S.paired_delta(b, c, method=method, n_resamples=20_000, seed=3)
    lo, hi = _scipy_bootstrap(c - b, scipy_method, 4)
    # Two independent Monte-Carlo runs of B=20,000: quantile noise ~0.03 SE each; allow 0.15 SE.
    assert abs(ours.ci[0] - lo) < 0.15 * ours.se
    assert abs(ours.ci[1] - hi) < 0.15 * ours.se


def test_bootstrap_agrees_with_scipy_binary_multinomial_path() -> None:
    b, c = S.paired_binary_scores(60, 35, 2000, rng=np.random.default_rng(0))
    ours = S.paired_delta(b, c, method="bootstrap-percentile", n_resamples=20_000, seed=1)
    lo, hi = _scipy_bootstrap(c - b, "percentile", 2)
    assert abs(ours.ci[0] - lo) < 0.15 * ours.se and abs(ours.ci[1] - hi) < 0.15 * ours.se


def test_bootstrap_is_seeded() -> None:
    b, c = S.paired_binary_scores(30, 20, 500)
    r1 = S.paired_delta(b, c, method="bootstrap-bca", seed=5)
    r2 = S.paired_delta(b, c, method="bootstrap-bca", seed=5)
    assert r1 == r2 and r1.method == "bootstrap-bca" and r1.seed == 5


def test_vectorised_binary_bootstrap_agrees_with_scalar_path() -> None:
    """The simulations use the vectorised counts path; it must match the gate's scalar path."""
    n10, n01, n = 70, 48, 3000
    b, c = S.paired_binary_scores(n10, n01, n)
    for method in ("bootstrap-percentile", "bootstrap-bca"):
        scalar = S.noninferiority(b, c, 0.01, method=method, n_resamples=20_000, seed=1)
        vec = S._binary_ni_arrays(np.array([n10]), np.array([n01]), np.array(n), 0.01, 0.05, method,
                                  n_resamples=20_000, rng=np.random.default_rng(2))
        assert abs(vec["lo"][0] - scalar.ci[0]) < 0.15 * scalar.se
        assert abs(vec["p"][0] - scalar.pvalue) < 0.01


# ---------------------------------------------------------------- paired delta / NI

def test_paired_delta_normal_is_mean_and_paired_se() -> None:
    rng = np.random.default_rng(3)
    b = rng.uniform(size=500)
    c = b + rng.normal(-0.01, 0.05, 500)
    d = c - b
    res = S.paired_delta(b, c, method="normal")
    se = d.std(ddof=1) / math.sqrt(500)
    assert res.estimate == pytest.approx(d.mean(), abs=1e-15)
    assert res.se == pytest.approx(se, rel=1e-12)
    z = sps.norm.ppf(0.975)
    assert res.ci == pytest.approx((d.mean() - z * se, d.mean() + z * se), rel=1e-12)


@pytest.mark.parametrize("n10,n01,n", [(30, 18, 500), (5, 0, 200), (0, 4, 60), (210, 160, 4096)])
def test_tango_score_statistic_matches_numerical_restricted_mle(n10: int, n01: int, n: int) -> None:
    d0 = -0.02
    lo_q = max(1e-12, -d0 + 1e-12)

    def nll(q: float) -> float:
        return -(n01 * np.log(q + d0) if n01 else 0) - (n10 * np.log(q) if n10 else 0) \
            - (n - n10 - n01) * np.log(1 - 2 * q - d0)

    q = minimize_scalar(nll, bounds=(lo_q, (1 - d0) / 2 - 1e-12), method="bounded",
                        options={"xatol": 1e-14}).x
    z_ref = (n01 - n10 - n * d0) / math.sqrt(n * (2 * q + d0 * (1 - d0)))
    assert float(S._tango_z(np.array(n10), np.array(n01), np.array(n), d0)) == pytest.approx(z_ref, abs=1e-5)


def test_score_interval_inverts_the_score_test() -> None:
    b, c = S.paired_binary_scores(40, 25, 1500)
    res = S.paired_delta(b, c, method="score", confidence=0.9)
    z = sps.norm.ppf(0.95)
    assert float(S._tango_z(np.array(40), np.array(25), np.array(1500), res.ci[0])) == pytest.approx(z, abs=1e-6)
    assert float(S._tango_z(np.array(40), np.array(25), np.array(1500), res.ci[1])) == pytest.approx(-z, abs=1e-6)


def test_noninferiority_normal_matches_hand_formula() -> None:
    b, c = S.paired_binary_scores(50, 30, 2000)
    d = c - b
    se = d.std(ddof=1) / math.sqrt(d.size)
    res = S.noninferiority(b, c, 0.02, method="normal", alpha=0.05)
    assert res.pvalue == pytest.approx(sps.norm.sf((d.mean() + 0.02) / se), rel=1e-10)
    assert res.ci[0] == pytest.approx(d.mean() - sps.norm.ppf(0.95) * se, rel=1e-10)
    assert res.verdict == "PASS" and res.confidence == pytest.approx(0.9)


def test_zero_flips_on_few_samples_is_not_a_pass() -> None:
    """Wald's SE is 0 with no flips and would PASS 5 samples; the default (score) does not."""
    b, c = S.paired_binary_scores(0, 0, 5)
    assert S.noninferiority(b, c, 0.01, method="normal").verdict == "PASS"   # the failure mode we avoid
    small = S.noninferiority(b, c, 0.01)
    assert small.method == "score" and small.verdict == "INCONCLUSIVE"
    assert small.n_to_settle is not None and small.n_to_settle > 100
    big = S.noninferiority(*S.paired_binary_scores(0, 0, 2000), 0.01)
    assert big.verdict == "PASS"


def test_noninferiority_three_way_rule() -> None:
    fail = S.noninferiority(*S.paired_binary_scores(120, 40, 2000), 0.01)        # -4 pts
    assert fail.verdict == "FAIL" and fail.ci[1] < -0.01 and fail.pvalue_inferior < 0.05
    ok = S.noninferiority(*S.paired_binary_scores(40, 38, 4000), 0.01)
    assert ok.verdict == "PASS" and ok.ci[0] > -0.01 and ok.pvalue < 0.05
    unsure = S.noninferiority(*S.paired_binary_scores(30, 22, 800), 0.01)        # -1 pt on 800
    assert unsure.verdict == "INCONCLUSIVE" and unsure.n_to_settle > 800
    # Point estimate below the margin at an adequate n fails even if the upper bound is above it.
    late = S.noninferiority(*S.paired_binary_scores(330, 260, 6500), 0.01)       # -1.08 pts
    assert late.ci[1] > -0.01 and late.n >= late.n_adequate and late.verdict == "FAIL"


def test_adjusted_result_recomputes_verdict() -> None:
    res = S.noninferiority(*S.paired_binary_scores(60, 50, 3000), 0.01)
    assert res.verdict == "PASS"
    adj = res.adjusted(min(1.0, res.pvalue * 20), "holm", 0.05 / 20)
    assert adj.verdict == "INCONCLUSIVE" and adj.correction == "holm" and adj.n_to_settle > res.n


def test_relative_margin_matches_fieller_and_linear_test() -> None:
    rng = np.random.default_rng(5)
    b = (rng.uniform(size=3000) < 0.6).astype(float)
    c = b.copy()
    flip = rng.uniform(size=3000) < 0.05
    c[flip] = 1 - c[flip]
    res = S.noninferiority(b, c, 0.02, kind="relative", method="normal")
    assert res.estimate == pytest.approx(c.mean() / b.mean())
    e = c - 0.98 * b
    z = e.mean() / (e.std(ddof=1) / math.sqrt(e.size))
    assert res.pvalue == pytest.approx(sps.norm.sf(z), rel=1e-10)
    # Fieller's lower bound sits exactly where the linear test is at its critical value.
    r_lo = res.ci[0]
    e_lo = c - r_lo * b
    assert e_lo.mean() / (e_lo.std(ddof=1) / math.sqrt(e.size)) == pytest.approx(sps.norm.ppf(0.95), abs=1e-8)
    boot = S.noninferiority(b, c, 0.02, kind="relative", method="bootstrap-bca", n_resamples=5000)
    assert boot.ci[0] == pytest.approx(res.ci[0], abs=0.15 * res.se + 1e-3)


def test_input_errors_say_what_to_fix() -> None:
    with pytest.raises(QevalError, match="doc_id"):
        S.paired_delta([1, 0, 1], [1, 0])
    with pytest.raises(QevalError, match="not a finite number"):
        S.paired_delta([1, float("nan")], [1, 0])
    with pytest.raises(QevalError, match="0/1 scores"):
        S.paired_delta([0.5, 0.2], [0.1, 0.3], method="score")
    with pytest.raises(QevalError, match="cluster id"):
        S.paired_delta([1, 0], [1, 1], clusters=[1])


# ---------------------------------------------------------------- planning

def test_required_n_closed_form_and_mde_inverse() -> None:
    plan = S.required_n(0.01, flip_rate=0.1, alpha=0.05, power=0.8)
    z = sps.norm.ppf(0.95) + sps.norm.ppf(0.8)
    assert plan.n == math.ceil((z * math.sqrt(0.1) / 0.01) ** 2)
    assert S.minimum_detectable_effect(plan.n, flip_rate=0.1).mde == pytest.approx(0.01, rel=1e-3)
    cont = S.required_n(0.5, sd=4.0, expected_delta=0.1)
    assert cont.n == math.ceil((z * 4.0 / 0.6) ** 2)
    with pytest.raises(QevalError):
        S.required_n(0.01, flip_rate=0.1, sd=0.3)


def test_pairing_gain_from_discordance() -> None:
    b, c = S.paired_binary_scores(102, 102, 4096, rng=np.random.default_rng(0))   # 5% flips, delta 0
    gain = S.pairing_gain(b, c)
    assert gain.trtllm_scale == pytest.approx(math.sqrt(2) * 50 / 64)
    assert gain.ratio == pytest.approx(math.sqrt(2) * 50 / 100 / math.sqrt(204 / 4095), rel=1e-9)
    assert 3.0 < gain.ratio < 3.3 and gain.sample_factor == pytest.approx(gain.ratio ** 2)
    assert gain.ratio_vs_independent > 2.5


# ---------------------------------------------------------------- TensorRT-LLM rule

def test_trtllm_mmlu_defaults_reproduce_their_numbers() -> None:
    p = S.TRTLLM_DEFAULTS["mmlu"]
    thr = S.trtllm_threshold(70.0, p.num_samples, sigma=p.sigma, alpha=p.alpha)
    assert round(thr - 70.0, 2) == -1.82
    assert round(S.trtllm_theta(p.num_samples, sigma=p.sigma, alpha=p.alpha, beta=p.beta), 2) == 2.75
    # Same inputs, same decision: accuracy >= threshold passes (inclusive), just below fails.
    assert S.trtllm_rule(thr, 70.0, 4096).passed
    assert not S.trtllm_rule(thr - 1e-9, 70.0, 4096).passed
    assert S.trtllm_rule(68.5, 70.0, 4096).passed and not S.trtllm_rule(68.0, 70.0, 4096).passed


@pytest.mark.parametrize("task", ["cnn_dailymail", "humaneval"])
def test_trtllm_other_defaults_follow_the_formula(task: str) -> None:
    p = S.TRTLLM_DEFAULTS[task]
    scale = math.sqrt(2 * p.sigma**2 / p.num_samples)
    z_a, z_b = sps.norm.ppf(p.alpha), sps.norm.ppf(p.beta)
    assert S.trtllm_threshold(30.0, p.num_samples, sigma=p.sigma, alpha=p.alpha) == pytest.approx(30 + z_a * scale)
    assert S.trtllm_theta(p.num_samples, sigma=p.sigma, alpha=p.alpha, beta=p.beta) == pytest.approx(
        -(z_a + z_b) * scale)
    # Lower-is-better metrics mirror the threshold above the reference.
    lower = S.trtllm_rule(9.0 - z_a * scale + 0.01, 9.0, p.num_samples, sigma=p.sigma, alpha=p.alpha,
                          higher_is_better=False)
    assert lower.threshold == pytest.approx(9.0 - z_a * scale) and not lower.passed


# ---------------------------------------------------------------- sequential design

def test_obrien_fleming_boundaries_match_published_values() -> None:
    # Lan-DeMets O'Brien-Fleming, 5 equally spaced looks, one-sided alpha 0.025
    # (gsDesign sfLDOF / rpact designGroupSequential typeOfDesign="asOF").
    d = S.group_sequential_design(500, 5, alpha=0.025)
    np.testing.assert_allclose(d.upper, [4.877, 3.357, 2.680, 2.290, 2.031], atol=2e-3)
    assert S.group_sequential_design(100, 1, alpha=0.05).upper[0] == pytest.approx(sps.norm.ppf(0.95), abs=1e-8)


@pytest.mark.parametrize("spending,looks", [("obrien-fleming", [300, 700, 1000]), ("pocock", 6)])
def test_boundaries_spend_alpha_as_planned_monte_carlo(spending: str, looks) -> None:
    design = S.group_sequential_design(1000, looks, alpha=0.05, spending=spending)
    rng = np.random.default_rng(0)
    t = np.array(design.info)
    paths = np.cumsum(rng.normal(size=(400_000, t.size)) * np.sqrt(np.diff(np.concatenate([[0], t]))), axis=1)
    z = paths / np.sqrt(t)
    crossed = np.maximum.accumulate(z > np.array(design.upper), axis=1)
    # Cumulative crossing probability at each look = alpha spent (MC SE ~3.5e-4 at 0.05).
    np.testing.assert_allclose(crossed.mean(axis=0), design.spent, atol=1.5e-3)


def test_sequential_function_stops_and_is_consistent() -> None:
    design = S.group_sequential_design(6000, 10, alpha=0.05)
    rng = np.random.default_rng(3)
    b, c = S.paired_binary_scores(40, 40, 6000, rng=rng)                        # clearly good: 1.3% flips
    first = S.sequential_noninferiority(b[:500], c[:500], 0.01, design)
    assert first.verdict == "CONTINUE" and first.look == 0 and first.next_n == 600
    res = S.sequential_noninferiority(b[:3000], c[:3000], 0.01, design)
    assert res.verdict == "PASS" and res.n < 3000 and res.z > res.boundary
    # More data after the stop does not move it: the run should have stopped there.
    assert S.sequential_noninferiority(b, c, 0.01, design).look == res.look
    bad_b, bad_c = S.paired_binary_scores(450, 90, 6000, rng=rng)              # -6 pts
    bad = S.sequential_noninferiority(bad_b, bad_c, 0.01, design)
    assert bad.verdict == "FAIL" and bad.look <= 3


# ---------------------------------------------------------------- latency

def test_percentile_ci_and_speedup() -> None:
    rng = np.random.default_rng(0)
    base = rng.lognormal(np.log(100), 0.4, 2000)
    res = S.percentile_ci(base, 99)
    assert res.estimate == pytest.approx(np.percentile(base, 99))
    assert res.ci[0] < res.estimate < res.ci[1] and res.n == 2000 and res.method == "order-statistic"
    # The interval is two order statistics of the sample, as scipy's binomial quantile test gives them.
    ref = sps.quantile_test(base, q=res.estimate, p=0.99).confidence_interval(0.95)
    assert res.ci == (ref.low, ref.high) and ref.low in base and ref.high in base
    cand = rng.lognormal(np.log(50), 0.4, 2000)                                 # twice as fast
    sp = S.speedup_ratio(base, cand)
    assert sp.ci[0] < 2.0 < sp.ci[1] and 1.85 < sp.estimate < 2.15
    thr = S.speedup_ratio(1000 / base, 1000 / cand, kind="throughput", statistic="mean")
    assert 1.85 < thr.estimate < 2.15 and thr.method == "bootstrap-bca"


def test_a_p99_of_few_requests_has_no_upper_bound() -> None:
    """The maximum of n draws sits below the true p99 with probability 0.99^n: 0.53 at n = 64."""
    assert S.samples_for_upper_bound(99, 0.05) == 299
    assert 0.99 ** 299 <= 0.05 < 0.99 ** 298
    x = np.random.default_rng(1).lognormal(3, 0.5, 64)
    res = S.percentile_ci(x, 99, confidence=0.90)
    assert res.ci[1] is None and res.ci[0] is not None and res.ci[0] <= res.estimate
    big = np.random.default_rng(2).lognormal(3, 0.5, 299)
    assert S.percentile_ci(big[:298], 99, confidence=0.90).ci[1] is None
    assert S.percentile_ci(big, 99, confidence=0.90).ci[1] == big.max()  # from 299 on, the maximum bounds p99


@pytest.mark.parametrize("n", [64, 300, 600])
def test_p99_slo_false_pass_rate_is_at_most_alpha(n: int) -> None:
    """STATISTICS.md: the gate's SLO rule through `decide`, on lognormal latencies whose true p99 breaks
    the SLO by 2%. Any PASS is a false pass; it may happen at most alpha (0.05) of the time. (The
    bootstrap interval used before passed 51% at n = 64, 16.5% at 300, 7.7% at 600.)"""
    from qeval import gate as G

    sims, alpha, sigma = 400, 0.05, 0.5
    true_p99 = float(np.exp(np.log(40) + sigma * sps.norm.ppf(0.99)))
    slo = G.LatencySLO(metric="ttft", percentile=99, max_ms=true_p99 / 1.02, concurrency=16)
    policy = G.GatePolicy(alpha=alpha, latency=[slo])
    rng = np.random.default_rng(n)
    passes = 0
    for _ in range(sims):
        p = S.percentile_ci(rng.lognormal(np.log(40), sigma, n), 99, confidence=1 - 2 * alpha)
        ev = G.LatencyEvidence("fp8", "vllm", "ttft", 99, p.estimate, p.ci, n, concurrency=16)
        passes += G.decide(policy, ev)[0].rule(slo.rule_id).passed is True
    assert passes / sims <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / sims), passes / sims


def test_p99_slo_passes_when_it_is_clearly_met_and_enough_requests_ran() -> None:
    from qeval import gate as G

    slo = G.LatencySLO(metric="ttft", percentile=99, max_ms=200, concurrency=16)
    policy = G.GatePolicy(alpha=0.05, latency=[slo])
    rng = np.random.default_rng(3)
    verdicts = []
    for n in (64, 600):
        x = rng.lognormal(np.log(60), 0.3, n)                                    # true p99 ~121 ms
        p = S.percentile_ci(x, 99, confidence=0.90)
        rule = G.decide(policy, G.LatencyEvidence("fp8", "vllm", "ttft", 99, p.estimate, p.ci, n,
                                                  concurrency=16))[0].rule(slo.rule_id)
        verdicts.append((rule.passed, rule.message))
    assert verdicts[0][0] is None and "it takes at least 299" in verdicts[0][1]
    assert verdicts[1][0] is True


@pytest.mark.parametrize("method", ["bootstrap-percentile", "bootstrap-bca"])
def test_bootstrap_pvalue_inverts_the_bootstrap_bound(method: str) -> None:
    """'p <= alpha' and 'bound beyond the threshold' are the same statement for bootstrap tests."""
    rng = np.random.default_rng(0)
    d = rng.gamma(0.5, 0.1, 300) - 0.06                       # skewed: acceleration is not 0
    bs = S._bootstrap_statistic(S._delta_units(d, None), S._ratio_of_sums, 20_000, 1)
    theta, boot, accel = np.array(bs.theta), bs.boot[None, :], np.array(bs.accel)
    assert abs(bs.accel) > 0.01
    for threshold in (-0.02, -0.015, -0.01):
        p, p_inf = S._bootstrap_pvalues(theta, boot, accel, threshold, method)
        lo, _ = S._bootstrap_bounds(theta, boot, accel, float(p[0]), 0.5, method)
        _, hi = S._bootstrap_bounds(theta, boot, accel, 0.5, 1 - float(p_inf[0]), method)
        assert lo[0] == pytest.approx(threshold, abs=2e-4) and hi[0] == pytest.approx(threshold, abs=2e-4)
    # Extreme levels saturate instead of producing NaN.
    lo, hi = S._bootstrap_bounds(theta, boot, accel, 0.0, 1.0, method)
    assert np.isfinite(lo[0]) and np.isfinite(hi[0])


def test_crossing_probability_spends_alpha_and_matches_monte_carlo_under_drift() -> None:
    design = S.group_sequential_design(400, 4, alpha=0.05, spending="pocock")
    assert S.crossing_probability(design.info, design.upper, 0.0) == pytest.approx(0.05, abs=1e-6)
    rng = np.random.default_rng(1)
    t = np.array(design.info)
    drift = 2.5
    steps = rng.normal(size=(400_000, t.size)) * np.sqrt(np.diff(np.r_[0, t])) + drift * np.diff(np.r_[0, t])
    z = np.cumsum(steps, axis=1) / np.sqrt(t)
    mc = (z > np.array(design.upper)).any(axis=1).mean()
    assert S.crossing_probability(design.info, design.upper, drift) == pytest.approx(mc, abs=3e-3)


def test_inflation_factors_are_jennison_and_turnbulls() -> None:
    """Max n over fixed n for the same power (one-sided 0.025, power 0.8; Jennison & Turnbull 2000, Tables
    2.3-2.4 and 7.x: about 1.02 for O'Brien-Fleming-type and 1.2 for Pocock-type spending at 4 looks)."""
    assert S.inflation_factor(1, 0.025, 0.8) == 1.0
    assert 1.01 < S.inflation_factor(4, 0.025, 0.8, "obrien-fleming") < 1.03
    assert 1.17 < S.inflation_factor(4, 0.025, 0.8, "pocock") < 1.23
    # The inflated maximum n gives the planned power: check with the design's own crossing probability.
    r = S.inflation_factor(4, 0.01, 0.9, "pocock")
    design = S.group_sequential_design(1000, 4, alpha=0.01, spending="pocock")
    drift = (sps.norm.ppf(0.99) + sps.norm.ppf(0.9)) * math.sqrt(r)
    assert S.crossing_probability(design.info, design.upper, drift) == pytest.approx(0.9, abs=1e-4)
