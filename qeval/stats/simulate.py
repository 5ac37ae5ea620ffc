"""Simulation helpers: paired binary data with a given flip rate and delta, and error-rate runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from qeval.errors import QevalError
from qeval.stats.noninferiority import _binary_ni_arrays, _binary_wald
from qeval.stats.planning import _required_n_binary
from qeval.stats.sequential import GroupSequentialDesign, _sequential_outcome, group_sequential_design
from qeval.stats.tango import _tango_z


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
