"""Planning before a run: required n and minimum detectable effect (Miller 2024, section 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from qeval.errors import QevalError
from qeval.stats.tango import _tango_restricted_p10


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
