"""TensorRT-LLM's accuracy-test rule (independent samples, worst-case sigma): the anchor to beat."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

from qeval.stats._inputs import _paired, is_binary
from qeval.stats.paired import _se_from


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
