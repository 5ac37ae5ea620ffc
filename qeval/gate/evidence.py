"""The gate's evidence: small frozen records of what a run measured, one kind per rule family.

`qeval.collect` builds them from a run directory; the runner builds them between looks;
the simulations build them from simulated outcomes. `decide` reads nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from qeval.errors import QevalError


def _frozen_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.array(values, dtype=float)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class TaskEvidence:
    """Per-sample scores of one task for one candidate on one backend, matched by doc_id.

    Attributes:
        task: task name (lm-eval).
        metric: metric name (acc, exact_match, rouge1, ...).
        candidate: precision name (e.g. int8_sq).
        backend: engine (vllm, trtllm, hf, ...).
        baseline_scores: per-sample baseline scores.
        candidate_scores: per-sample candidate scores, same doc_id order.
        doc_ids: lm-eval doc_id of each sample.
        clusters: optional cluster id per sample (shared passage / source).
        higher_is_better: metric direction.
        points_per_unit: points per score unit (100 for 0/1 and [0, 1] metrics, 1 for
            metrics already in points); margins in points are divided by it.
        planned_n: the task's planned maximum n (the sampling design's cap), else None.
        mode: the sampling mode that collected the samples: "fixed", "group-sequential" or
            "anytime" (qeval.sampling); samples are in evaluation order.
        looks: cumulative n at each planned look (adaptive modes), else None.
        spending: the group-sequential spending function (obrien-fleming or pocock).
        score_range: (low, high) every score lies in, where known (anytime mode needs it).
        semantics: where direction and scale came from (lm-eval's task config, the suite, inferred).
    """

    task: str
    metric: str
    candidate: str
    backend: str
    baseline_scores: np.ndarray
    candidate_scores: np.ndarray
    doc_ids: tuple
    clusters: tuple | None = None
    higher_is_better: bool = True
    points_per_unit: float = 100.0
    planned_n: int | None = None
    mode: str = "fixed"
    looks: tuple[int, ...] | None = None
    spending: str = "obrien-fleming"
    score_range: tuple[float, float] | None = None
    semantics: str = ""

    def __post_init__(self) -> None:
        b, c = _frozen_array(self.baseline_scores), _frozen_array(self.candidate_scores)
        where = f"{self.task}/{self.metric} for {self.candidate} on {self.backend}"
        if b.shape != c.shape or b.ndim != 1:
            raise QevalError(f"{where}: {b.size} baseline scores but {c.size} candidate scores.",
                             fix="match samples by doc_id and keep the doc_ids present on both sides")
        if len(self.doc_ids) != b.size:
            raise QevalError(f"{where}: {len(self.doc_ids)} doc_ids for {b.size} scores.",
                             fix="give one doc_id per sample")
        if len(set(self.doc_ids)) != len(self.doc_ids):
            raise QevalError(f"{where}: doc_ids repeat, so samples cannot be paired one to one.",
                             fix="deduplicate doc_ids (one score per doc_id and side)")
        if self.clusters is not None and len(self.clusters) != b.size:
            raise QevalError(f"{where}: {len(self.clusters)} cluster ids for {b.size} samples.",
                             fix="give one cluster id per sample, or clusters=None")
        object.__setattr__(self, "baseline_scores", b)
        object.__setattr__(self, "candidate_scores", c)
        object.__setattr__(self, "doc_ids", tuple(self.doc_ids))
        if self.clusters is not None:
            object.__setattr__(self, "clusters", tuple(self.clusters))


@dataclass(frozen=True)
class DivergenceEvidence:
    """Token-level divergence of a candidate from the baseline (no labels needed).

    Attributes:
        candidate: precision name.
        backend: engine.
        kld_mean: mean KL(baseline || candidate) per token, nats.
        kld_mean_ci: 95% interval of kld_mean, or None.
        kld_p99: 99th percentile of per-token KL.
        top1_agree: fraction of tokens with the same top-1 token.
        n_tokens: tokens compared.
        simulated: True if the candidate used simulated (fake) quantization.
        kld_se: standard error of kld_mean (clustered by sequence), where recorded; else it is
            read off kld_mean_ci (a 95% normal interval).
        bound: "exact" (full distributions), "lower_bound" (top-k coarse-graining: sound for FAIL
            only), "upper_bound" (sound for PASS only) or "bounds" (kld_mean/kld_se the lower bound,
            kld_upper_mean/kld_upper_se the upper one).
        route: how the distributions were obtained (e.g. "vllm-prompt-logprobs-full").
        kld_upper_mean: the upper bound's mean where bound is "bounds".
        kld_upper_se: its standard error.
    """

    candidate: str
    backend: str
    kld_mean: float
    kld_mean_ci: tuple[float, float] | None
    kld_p99: float
    top1_agree: float
    n_tokens: int
    simulated: bool = False
    kld_se: float | None = None
    bound: str = "exact"
    route: str = ""
    kld_upper_mean: float | None = None
    kld_upper_se: float | None = None

    def se(self) -> float | None:
        """The SE of the mean KL: recorded, or from the recorded 95% interval."""
        if self.kld_se is not None:
            return float(self.kld_se)
        if self.kld_mean_ci is None or any(not math.isfinite(x) for x in self.kld_mean_ci):
            return None
        return (self.kld_mean_ci[1] - self.kld_mean_ci[0]) / (2 * 1.959963984540054)


@dataclass(frozen=True)
class LatencyEvidence:
    """One latency percentile of a candidate at one load point.

    Attributes:
        candidate: precision name.
        backend: engine.
        metric: ttft, tpot, itl or e2e.
        percentile: e.g. 99.
        value_ms: the percentile, milliseconds.
        ci_ms: its interval (either end None where the samples cannot give it), or None.
        n: requests (or gaps, for itl) measured, warm-up excluded.
        concurrency: load point (concurrent requests), or None.
        request_rate: load point (requests/s), or None.
        warmup_excluded: warm-up requests left out.
    """

    candidate: str
    backend: str
    metric: str
    percentile: float
    value_ms: float
    ci_ms: tuple[float | None, float | None] | None
    n: int
    concurrency: int | None = None
    request_rate: float | None = None
    warmup_excluded: int = 0


@dataclass(frozen=True)
class ErrorEvidence:
    """A cell that crashed: it is BLOCKed with the reason.

    Attributes:
        candidate: precision name.
        backend: engine.
        cause: what went wrong, in words (exception type and message).
    """

    candidate: str
    backend: str
    cause: str


@dataclass(frozen=True)
class NotEvaluated:
    """A task the runner never evaluated for a cell, on purpose (another rule had already FAILed).

    It counts as an open rule (INCONCLUSIVE, p = 1): the cell can never SHIP without it, and the
    rule that FAILed is what BLOCKs it.

    Attributes:
        candidate: precision name.
        backend: engine.
        task: the task's name.
        reason: why it was not evaluated, in words.
    """

    candidate: str
    backend: str
    task: str
    reason: str


Evidence = Union[TaskEvidence, DivergenceEvidence, LatencyEvidence, ErrorEvidence, NotEvaluated]
