"""The gate: a policy and the evidence of a run -> SHIP / BLOCK / INCONCLUSIVE per candidate x backend.

`GatePolicy` is the `gate:` section of a suite YAML. Evidence comes in as small
frozen dataclasses (per-sample task scores, divergence summaries, latency
percentiles, crashed cells). `decide` returns one `Decision` per candidate x
backend, each with one `RuleResult` per rule: a stable, filename-safe rule_id
(the pytest plugin makes one test item per rule) and a message in plain words
that carries the evidence.

Aggregation: any rule FAIL -> BLOCK; every rule PASS -> SHIP; else INCONCLUSIVE.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qeval import stats
from qeval.errors import QevalError

GateVerdict = Literal["SHIP", "BLOCK", "INCONCLUSIVE"]
RuleVerdict = Literal["PASS", "FAIL", "INCONCLUSIVE", "CONTINUE"]


# ----------------------------------------------------------------------------
# Policy (the `gate:` section of a suite)
# ----------------------------------------------------------------------------

class LatencySLO(BaseModel):
    """One latency service-level rule, e.g. p99 TTFT under 200 ms at concurrency 16."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["ttft", "tpot", "itl", "e2e"] = Field(
        description="ttft (time to first token), tpot (mean time per output token after the first), "
                    "itl (every inter-token gap) or e2e (request latency).")
    percentile: float = Field(99.0, gt=0, lt=100, description="Percentile to check, e.g. 50, 90, 99, 99.9.")
    max_ms: float = Field(gt=0, description="The percentile must stay at or under this many milliseconds.")
    concurrency: int | None = Field(None, ge=1, description="Load point: concurrent requests.")
    request_rate: float | None = Field(None, gt=0, description="Load point: requests per second (instead of "
                                                                "concurrency).")

    @model_validator(mode="after")
    def _one_load_point(self) -> "LatencySLO":
        if self.concurrency is not None and self.request_rate is not None:
            raise ValueError("give concurrency or request_rate, not both")
        return self

    @property
    def rule_id(self) -> str:
        """Stable id, e.g. latency_ttft_p99_c16 or latency_e2e_p99_9_r2_5."""
        pct = f"{self.percentile:g}".replace(".", "_")
        load = ""
        if self.concurrency is not None:
            load = f"_c{self.concurrency}"
        elif self.request_rate is not None:
            load = "_r" + f"{self.request_rate:g}".replace(".", "_")
        return f"latency_{self.metric}_p{pct}{load}"


class SequentialPolicy(BaseModel):
    """Group-sequential evaluation: stop a task as soon as its decision is settled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Evaluate in batches with alpha-spending boundaries.")
    looks: int = Field(10, ge=1, le=50, description="Equally spaced looks up to the task's planned n.")
    spending: Literal["obrien-fleming", "pocock"] = Field(
        "obrien-fleming", description="Lan-DeMets spending function: obrien-fleming (near fixed-n critical value "
                                      "at the end) or pocock (stops earlier on clear cases).")


class TrtllmRulePolicy(BaseModel):
    """Parameters of TensorRT-LLM's accuracy-test rule, reported beside ours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sigma: dict[str, float] = Field(default_factory=dict,
                                    description="Per-task sigma in points; default: TensorRT-LLM's value for "
                                                "that task if it has one, else default_sigma.")
    default_sigma: float = Field(50.0, gt=0, description="Sigma in points for other tasks (Bernoulli worst case).")
    alpha: float | None = Field(None, gt=0, lt=1, description="One-sided alpha; default: TensorRT-LLM's value "
                                                              "for the task, else 0.05.")
    beta: float = Field(0.2, gt=0, lt=1, description="Type-II error for their minimum detectable effect theta.")


class GatePolicy(BaseModel):
    """The gate policy: the `gate:` section of a suite YAML.

    Margins are in points (1.0 = one accuracy point) when margin_kind is absolute,
    and a fraction of the baseline score (0.01 = the candidate keeps 99%,
    Kurtic et al. 2024 "recovery") when relative.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(1.0, gt=0, description="Non-inferiority margin for every task (points, or a fraction "
                                                 "when margin_kind is relative).")
    margin_kind: Literal["absolute", "relative"] = Field(
        "absolute", description="absolute: delta > -margin points; relative: candidate/baseline > 1 - margin.")
    task_margins: dict[str, float] = Field(default_factory=dict, description="Per-task margin overrides.")
    alpha: float = Field(0.05, gt=0, le=0.25, description="One-sided level of every non-inferiority test.")
    power: float = Field(0.8, gt=0.5, lt=1, description="Power (1 - beta) for planned n and 'samples to settle'.")
    correction: Literal["holm", "bh", "none"] = Field(
        "holm", description="Multiplicity across tasks x candidates: holm (family-wise error), bh "
                            "(Benjamini-Hochberg false discovery rate) or none.")
    interval: Literal["auto", "normal", "score", "bootstrap-percentile", "bootstrap-bca"] = Field(
        "auto", description="Interval/test: auto = Tango score test for 0/1 scores (keeps alpha with few flips, "
                            "where Wald does not), normal (paired or clustered SE) otherwise.")
    n_resamples: int = Field(10_000, ge=100, description="Bootstrap resamples (bootstrap intervals).")
    seed: int = Field(0, description="Bootstrap seed.")
    max_kld_mean: float | None = Field(None, gt=0, description="Largest allowed mean KL(baseline||candidate), "
                                                               "nats per token.")
    max_flip_rate: float | None = Field(None, gt=0, le=1, description="Largest allowed fraction of 0/1-scored "
                                                                      "answers that flip (either way).")
    latency: list[LatencySLO] = Field(default_factory=list, description="Latency SLO rules.")
    agree_backends: list[str] = Field(default_factory=list,
                                      description="Backends on which a precision must ship for it to ship on "
                                                  "any of them (the same artifact feeds every engine).")
    policy: Literal["qeval", "trtllm"] = Field(
        "qeval", description="Which rule decides the task verdicts: qeval (paired non-inferiority) or trtllm "
                             "(TensorRT-LLM's independent-samples threshold). Both are always reported.")
    trtllm: TrtllmRulePolicy = Field(default_factory=TrtllmRulePolicy,
                                     description="Parameters of the TensorRT-LLM rule.")
    sequential: SequentialPolicy = Field(default_factory=SequentialPolicy,
                                         description="Group-sequential mode (true/false or a mapping).")

    @field_validator("sequential", mode="before")
    @classmethod
    def _sequential_shorthand(cls, value: object) -> object:
        # `sequential: true` in YAML is the common case; a mapping sets looks/spending.
        return {"enabled": value} if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _check_margins(self) -> "GatePolicy":
        for task, m in {"margin": self.margin, **self.task_margins}.items():
            if m <= 0:
                raise ValueError(f"margin for {task!r} must be positive, got {m}")
            if self.margin_kind == "relative" and m >= 1:
                raise ValueError(f"relative margin for {task!r} must be below 1 (0.01 = keep 99%), got {m}")
        return self

    def margin_for(self, task: str) -> float:
        """Margin for a task (per-task override, else the global margin)."""
        return float(self.task_margins.get(task, self.margin))


# ----------------------------------------------------------------------------
# Evidence
# ----------------------------------------------------------------------------

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
        planned_n: the task's planned maximum n (sequential mode), else None.
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
    """

    candidate: str
    backend: str
    kld_mean: float
    kld_mean_ci: tuple[float, float] | None
    kld_p99: float
    top1_agree: float
    n_tokens: int
    simulated: bool = False


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


Evidence = Union[TaskEvidence, DivergenceEvidence, LatencyEvidence, ErrorEvidence]


# ----------------------------------------------------------------------------
# Decisions
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleResult:
    """One gate rule for one candidate x backend.

    Attributes:
        rule_id: stable, filename-safe id (task name, "kld", "flip_rate",
            "latency_ttft_p99_c16", "backends_agree", "error").
        passed: True (PASS), False (FAIL) or None (INCONCLUSIVE / CONTINUE / no evidence).
        message: plain words with the evidence numbers.
        kind: "task", "kld", "flip_rate", "latency", "backends_agree" or "error".
    """

    rule_id: str
    passed: bool | None
    message: str
    kind: str


@dataclass(frozen=True)
class TaskDecision:
    """Everything a report needs about one task of one candidate x backend.

    Deltas and margins are in points, oriented so that negative is worse (lower-is-better
    metrics are sign-flipped). For relative margins `estimate`/`ci` are the recovery ratio.

    Attributes:
        rule_id: the task's rule id.
        task: task name.
        metric: metric name.
        verdict: PASS, FAIL, INCONCLUSIVE (or CONTINUE in sequential mode).
        decided_by: "qeval" or "trtllm".
        margin_kind: "absolute" or "relative".
        margin: points (absolute) or fraction (relative).
        estimate: delta in points (absolute) or recovery ratio (relative).
        ci: (1 - 2 alpha) interval of `estimate`; its ends are the one-sided bounds.
        confidence: coverage of ci.
        delta_pts: delta in points (also for relative margins).
        baseline_pts: baseline mean, points.
        candidate_pts: candidate mean, points.
        n: paired samples.
        pvalue: non-inferiority p-value.
        adjusted_pvalue: after `correction`.
        pvalue_inferior: p-value of "below the margin".
        correction: multiplicity correction.
        method: interval / test method.
        n_to_settle: total n that would likely settle an INCONCLUSIVE, else None.
        n10: answers lost (0/1 metrics), else None.
        n01: answers gained, else None.
        flip_rate: discordance, else None.
        mcnemar_p: McNemar exact p (0/1 metrics), else None.
        wilcoxon_p: Wilcoxon signed-rank p (continuous metrics), else None.
        trtllm: TensorRT-LLM rule on the same inputs.
        pairing: what pairing buys on these data.
        noninferiority: the full test result (metric units).
        sequential: the sequential decision, when sequential mode ran.
    """

    rule_id: str
    task: str
    metric: str
    verdict: RuleVerdict
    decided_by: str
    margin_kind: str
    margin: float
    estimate: float
    ci: tuple[float, float]
    confidence: float
    delta_pts: float
    baseline_pts: float
    candidate_pts: float
    n: int
    pvalue: float
    adjusted_pvalue: float
    pvalue_inferior: float
    correction: str
    method: str
    n_to_settle: int | None
    n10: int | None
    n01: int | None
    flip_rate: float | None
    mcnemar_p: float | None
    wilcoxon_p: float | None
    trtllm: stats.TrtllmDecision
    pairing: stats.PairingGain
    noninferiority: stats.NonInferiority
    sequential: stats.SequentialDecision | None = None


@dataclass(frozen=True)
class Decision:
    """The gate's verdict for one candidate on one backend.

    Attributes:
        candidate: precision name.
        backend: engine.
        verdict: SHIP, BLOCK or INCONCLUSIVE.
        rules: one RuleResult per rule (rule_ids unique within the decision).
        tasks: per-task detail for reports.
        summary: one line: verdict and the rules that drove it.
        policy: "qeval" or "trtllm".
        correction: multiplicity correction used.
        family_size: number of non-inferiority tests in the correction family.
        alpha: one-sided level.
        simulated: True if any evidence came from simulated quantization.
    """

    candidate: str
    backend: str
    verdict: GateVerdict
    rules: tuple[RuleResult, ...]
    tasks: tuple[TaskDecision, ...] = field(default_factory=tuple)
    summary: str = ""
    policy: str = "qeval"
    correction: str = "holm"
    family_size: int = 0
    alpha: float = 0.05
    simulated: bool = False

    def rule(self, rule_id: str) -> RuleResult:
        """The rule with this id (KeyError if absent)."""
        for r in self.rules:
            if r.rule_id == rule_id:
                return r
        raise KeyError(rule_id)


# ----------------------------------------------------------------------------
# decide
# ----------------------------------------------------------------------------

_CORRECTION_NAME = {"holm": "Holm", "bh": "BH", "none": "unadjusted"}
_RESERVED = {"kld", "flip_rate", "backends_agree", "error"}


def safe_rule_id(text: str) -> str:
    """Filename-safe id: letters, digits, '_', '-', '.'; other runs become '_'.

    Args:
        text: a task name or other label.

    Returns:
        The id (never empty).
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "rule"


def aggregate(rules: Sequence[RuleResult]) -> GateVerdict:
    """Any FAIL -> BLOCK; all PASS -> SHIP; else (or no rules) INCONCLUSIVE."""
    if any(r.passed is False for r in rules):
        return "BLOCK"
    if rules and all(r.passed is True for r in rules):
        return "SHIP"
    return "INCONCLUSIVE"


def _flatten(evidence: tuple) -> list[Evidence]:
    out: list[Evidence] = []
    for item in evidence:
        if isinstance(item, (TaskEvidence, DivergenceEvidence, LatencyEvidence, ErrorEvidence)):
            out.append(item)
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            out.extend(_flatten(tuple(item)))
        else:
            raise QevalError(f"decide() got {type(item).__name__}, which is not gate evidence.",
                             fix="pass TaskEvidence, DivergenceEvidence, LatencyEvidence or ErrorEvidence")
    return out


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _pts(x: float) -> str:
    return f"{x:+.2f}"


def _trtllm_params(policy: GatePolicy, task: str) -> tuple[float, float]:
    key = task.lower()
    default = next((v for k, v in stats.TRTLLM_DEFAULTS.items() if key == k or key.startswith(k + "_")), None)
    sigma = policy.trtllm.sigma.get(task, default.sigma if default else policy.trtllm.default_sigma)
    alpha = policy.trtllm.alpha if policy.trtllm.alpha is not None else (default.alpha if default else 0.05)
    return float(sigma), float(alpha)


@dataclass
class _TaskWork:
    ev: TaskEvidence
    rule_id: str
    ni: stats.NonInferiority
    trt: stats.TrtllmDecision
    gain: stats.PairingGain
    mcnemar: stats.McNemar | None
    wilcoxon_p: float | None
    margin_units: float


def _task_work(policy: GatePolicy, ev: TaskEvidence, rule_id: str) -> _TaskWork:
    b, c = ev.baseline_scores, ev.candidate_scores
    ppu = ev.points_per_unit
    if not ev.higher_is_better and policy.margin_kind == "relative":
        raise QevalError(f"{ev.task}/{ev.metric} is lower-is-better; a relative (recovery) margin is defined for "
                         "higher-is-better metrics.", field="gate.margin_kind",
                         fix="use margin_kind: absolute for this suite, or a higher-is-better metric")
    # Orient so that negative deltas are regressions whatever the metric's direction.
    bo, co = (b, c) if ev.higher_is_better else (-b, -c)
    margin = policy.margin_for(ev.task)
    margin_units = margin / ppu if policy.margin_kind == "absolute" else margin
    ni = stats.noninferiority(bo, co, margin_units, kind=policy.margin_kind,
                              clusters=None if ev.clusters is None else np.asarray(ev.clusters, dtype=object),
                              method=policy.interval, alpha=policy.alpha, power=policy.power,
                              n_resamples=policy.n_resamples, seed=policy.seed)
    sigma, t_alpha = _trtllm_params(policy, ev.task)
    trt = stats.trtllm_rule(float(c.mean()) * ppu, float(b.mean()) * ppu, b.size, sigma=sigma, alpha=t_alpha,
                            beta=policy.trtllm.beta, higher_is_better=ev.higher_is_better)
    gain = stats.pairing_gain(b, c, sigma=sigma, points_per_unit=ppu,
                              clusters=None if ev.clusters is None else np.asarray(ev.clusters, dtype=object))
    binary = stats.is_binary(b, c)
    mcn = stats.mcnemar_exact(b, c) if binary else None
    wil = None if binary else stats.wilcoxon_signed_rank(b, c).pvalue
    return _TaskWork(ev, rule_id, ni, trt, gain, mcn, wil, margin_units)


def _task_message(cell: str, w: _TaskWork, td: TaskDecision, policy: GatePolicy) -> str:
    ev, ni = w.ev, w.ni
    corr = _CORRECTION_NAME[td.correction]
    conf = f"{td.confidence:.0%}"
    name = f"{ev.task} {ev.metric}"
    if td.margin_kind == "absolute":
        what = (f"delta {_pts(td.estimate)} pts [{_pts(td.ci[0])}, {_pts(td.ci[1])}] ({conf} CI, {td.method}), "
                f"margin -{td.margin:.2f} pts")
        where_lo, where_hi = "lower bound above the margin", "upper bound below the margin"
    else:
        what = (f"recovery {td.estimate:.2%} [{td.ci[0]:.2%}, {td.ci[1]:.2%}] ({conf} CI, {td.method}; "
                f"delta {_pts(td.delta_pts)} pts), required {1 - td.margin:.2%}")
        where_lo, where_hi = "lower bound above the requirement", "upper bound below the requirement"
    direction = "" if ev.higher_is_better else " (lower is better; sign flipped so negative is worse)"
    flips = ""
    if td.n10 is not None:
        flips = (f", {td.n10} answers lost / {td.n01} gained (flip rate {td.flip_rate:.1%}, "
                 f"McNemar p={_fmt_p(td.mcnemar_p)})")
    elif td.wilcoxon_p is not None:
        flips = f", Wilcoxon p={_fmt_p(td.wilcoxon_p)}"
    p_text = f"non-inferiority p={_fmt_p(td.pvalue)}"
    if td.correction != "none":
        p_text += f", {corr}-adjusted p={_fmt_p(td.adjusted_pvalue)}"
    trt = w.trt
    op = ">=" if trt.higher_is_better else "<="
    trt_text = (f"TRT-LLM rule: {'PASS' if trt.passed else 'FAIL'} ({trt.accuracy:.2f} "
                f"{op if trt.passed else ('<' if trt.higher_is_better else '>')} threshold {trt.threshold:.2f}; "
                f"sigma {trt.sigma:g}, theta {trt.theta:.2f} pts, scale {trt.scale:.2f} vs our paired SE "
                f"{w.gain.paired_se:.2f} pts: {w.gain.ratio:.1f}x)")
    verdict = td.verdict
    if td.sequential is not None and td.sequential.verdict in ("PASS", "FAIL", "CONTINUE"):
        s = td.sequential
        if s.verdict == "CONTINUE":
            why = (f"sequential look {s.look}/{len(s.design.looks)}: z={s.z:.2f} within boundaries "
                   f"+/-{s.boundary:.2f}; continue to n={s.next_n}")
        else:
            side = "above" if s.verdict == "PASS" else "below"
            why = (f"stopped at sequential look {s.look}/{len(s.design.looks)} (n={s.n} of {s.design.max_n}): "
                   f"z={s.z:.2f} {side} the {s.design.spending} boundary "
                   f"{'+' if s.verdict == 'PASS' else '-'}{s.boundary:.2f}")
    elif td.decided_by == "trtllm":
        why = "decided by the TRT-LLM rule (policy: trtllm)"
    elif verdict == "PASS":
        why = f"{where_lo} ({p_text} <= alpha {policy.alpha:g})"
    elif verdict == "FAIL":
        if ni.pvalue_inferior <= ni.alpha:
            why = f"{where_hi} (inferiority p={_fmt_p(ni.pvalue_inferior)}; {p_text})"
        else:
            why = (f"point estimate below the margin with n={td.n} >= planned n={ni.n_adequate} "
                   f"for this discordance ({p_text})")
    else:
        why = f"not settled ({p_text} > alpha {policy.alpha:g}"
        if ni.pvalue <= policy.alpha:
            why += f"; passes unadjusted but not after {corr} correction"
        why += ")"
        if td.n_to_settle is not None:
            more = td.n_to_settle - td.n
            why += (f"; about {more:,} more samples (n={td.n_to_settle:,} in all) would settle it if the true "
                    f"{'delta' if td.margin_kind == 'absolute' else 'recovery'} is near the observed one")
    if td.decided_by == "trtllm":
        why += f"; qeval paired rule: {ni.verdict} ({p_text})"
    if policy.sequential.enabled and td.sequential is None and td.decided_by == "qeval":
        why += ("; sequential mode skipped for this task (it needs planned_n, an absolute margin and no "
                "clusters): fixed-n rule used")
    return f"{cell}: {verdict} — {name} {what}{direction}, n={td.n}{flips}; {why}. {trt_text}."


def _flip_rule(cell: str, works: list[_TaskWork], policy: GatePolicy) -> RuleResult:
    assert policy.max_flip_rate is not None
    binary = [w for w in works if w.mcnemar is not None]
    if not binary:
        return RuleResult("flip_rate", None, f"{cell}: INCONCLUSIVE — max flip rate {policy.max_flip_rate:.1%} is "
                                             "set but no 0/1-scored task was run, so flips cannot be counted.",
                          "flip_rate")
    flips = sum(w.mcnemar.n10 + w.mcnemar.n01 for w in binary)  # type: ignore[union-attr]
    n = sum(w.mcnemar.n for w in binary)  # type: ignore[union-attr]
    lo, hi = stats.wilson_interval(flips, n, 1 - 2 * policy.alpha)
    rate = flips / n
    tasks = ", ".join(sorted({w.ev.task for w in binary}))
    evidence = (f"flip rate {rate:.2%} [{lo:.2%}, {hi:.2%}] ({1 - 2 * policy.alpha:.0%} Wilson CI; {flips} of {n} "
                f"answers over {tasks}), max {policy.max_flip_rate:.2%}")
    if hi <= policy.max_flip_rate:
        return RuleResult("flip_rate", True, f"{cell}: PASS — {evidence}.", "flip_rate")
    if lo > policy.max_flip_rate:
        return RuleResult("flip_rate", False, f"{cell}: FAIL — {evidence}: even the lower bound is above it "
                                              "(Dutta et al. 2024: flips hide behind a steady accuracy).",
                          "flip_rate")
    return RuleResult("flip_rate", None, f"{cell}: INCONCLUSIVE — {evidence}: the interval straddles the limit.",
                      "flip_rate")


def _kld_rule(cell: str, divs: list[DivergenceEvidence], policy: GatePolicy) -> RuleResult:
    limit = policy.max_kld_mean
    assert limit is not None
    if not divs:
        return RuleResult("kld", None, f"{cell}: INCONCLUSIVE — max KLD mean {limit:g} is set but there is no "
                                       "divergence evidence for this cell.", "kld")
    dv = max(divs, key=lambda x: x.kld_mean)
    lo, hi = dv.kld_mean_ci if dv.kld_mean_ci is not None else (dv.kld_mean, dv.kld_mean)
    ci = f" [{lo:.4g}, {hi:.4g}]" if dv.kld_mean_ci is not None else " (no CI given)"
    sim = " (simulated quantization)" if dv.simulated else ""
    evidence = (f"mean KL(baseline||candidate) {dv.kld_mean:.4g}{ci} nats/token over {dv.n_tokens:,} tokens, "
                f"max {limit:g}; p99 {dv.kld_p99:.4g}, top-1 agreement {dv.top1_agree:.2%}{sim}")
    if hi <= limit:
        return RuleResult("kld", True, f"{cell}: PASS — {evidence}.", "kld")
    if lo > limit:
        return RuleResult("kld", False, f"{cell}: FAIL — {evidence}.", "kld")
    return RuleResult("kld", None, f"{cell}: INCONCLUSIVE — {evidence}: the interval straddles the limit.", "kld")


def _latency_rule(cell: str, slo: LatencySLO, lats: list[LatencyEvidence], alpha: float) -> RuleResult:
    match = [x for x in lats if x.metric == slo.metric and math.isclose(x.percentile, slo.percentile)
             and x.concurrency == slo.concurrency
             and (x.request_rate == slo.request_rate or (x.request_rate is not None and slo.request_rate is not None
                                                         and math.isclose(x.request_rate, slo.request_rate)))]
    load = (f"concurrency {slo.concurrency}" if slo.concurrency is not None
            else f"{slo.request_rate:g} req/s" if slo.request_rate is not None else "the measured load")
    label = f"{slo.metric.upper()} p{slo.percentile:g} at {load}"
    if not match:
        return RuleResult(slo.rule_id, None, f"{cell}: INCONCLUSIVE — no latency evidence for {label} "
                                             f"(SLO {slo.max_ms:g} ms).", "latency")
    x = match[-1]
    lo, hi = x.ci_ms if x.ci_ms is not None else (x.value_ms, x.value_ms)
    ci = (f" [{_ms_or_dash(lo)}, {_ms_or_dash(hi)}]" if x.ci_ms is not None else " (no CI given)")
    evidence = (f"{label} = {x.value_ms:.1f} ms{ci}, SLO <= {slo.max_ms:g} ms (n={x.n}, "
                f"{x.warmup_excluded} warm-up requests excluded)")
    # Below this many samples even their maximum is too likely (> alpha) to sit under the true
    # percentile, so no upper bound exists, whatever interval an older record carries (a bootstrap's
    # never exceeds the maximum: 51% false PASS at n=64 in simulation; stats.percentile_ci).
    needed = stats.samples_for_upper_bound(slo.percentile, alpha)
    if hi is not None and hi <= slo.max_ms and x.n >= needed:
        return RuleResult(slo.rule_id, True, f"{cell}: PASS — {evidence}.", "latency")
    if lo is not None and lo > slo.max_ms:
        return RuleResult(slo.rule_id, False, f"{cell}: FAIL — {evidence}.", "latency")
    if x.n < needed or hi is None:
        return RuleResult(slo.rule_id, None, f"{cell}: INCONCLUSIVE — {evidence}: {x.n} samples cannot bound a "
                                             f"p{slo.percentile:g} from above at alpha {alpha:g}; it takes at "
                                             f"least {needed:,} (latency.num_requests).", "latency")
    return RuleResult(slo.rule_id, None, f"{cell}: INCONCLUSIVE — {evidence}: the interval straddles the SLO.",
                      "latency")


def _ms_or_dash(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def decide(policy: GatePolicy, *evidence: Evidence | Iterable[Evidence]) -> list[Decision]:
    """Apply the policy to a run's evidence.

    Every TaskEvidence yields one non-inferiority test; their p-values form one
    multiplicity family (all tasks x candidates x backends of this call), adjusted by
    `policy.correction`. Only PASS uses the adjusted p-value (it licenses shipping);
    FAIL uses the per-test level. In sequential mode every task uses a Lan-DeMets
    boundary at level alpha / family size for holm and bh (Bonferroni: valid at any
    look) and alpha for none.

    Args:
        policy: the gate policy.
        evidence: evidence objects, or iterables of them.

    Returns:
        One Decision per candidate x backend, in order of first appearance.
    """
    items = _flatten(evidence)
    cells: dict[tuple[str, str], dict[str, list]] = {}
    for ev in items:
        cell = cells.setdefault((ev.candidate, ev.backend), {"task": [], "div": [], "lat": [], "err": []})
        key = {TaskEvidence: "task", DivergenceEvidence: "div", LatencyEvidence: "lat", ErrorEvidence: "err"}
        cell[key[type(ev)]].append(ev)

    # Per-task statistics.
    works: dict[tuple[str, str], list[_TaskWork]] = {}
    for key, cell in cells.items():
        tasks: list[TaskEvidence] = cell["task"]
        metrics_per_task: dict[str, set[str]] = {}
        for ev in tasks:
            metrics_per_task.setdefault(ev.task, set()).add(ev.metric)
        used: set[str] = set()
        works[key] = []
        for ev in tasks:
            base = ev.task if len(metrics_per_task[ev.task]) == 1 else f"{ev.task}_{ev.metric}"
            rid = safe_rule_id(base)
            if rid in _RESERVED or rid.startswith("latency_"):
                rid = f"task_{rid}"
            while rid in used:
                rid += "_dup"
            used.add(rid)
            works[key].append(_task_work(policy, ev, rid))

    # One multiplicity family over every non-inferiority test of the run.
    flat = [w for key in works for w in works[key]]
    raw = np.array([w.ni.pvalue for w in flat])
    adjusted = stats.adjust_pvalues(raw, policy.correction)
    alpha_next = stats.next_rejection_level(raw, policy.alpha, policy.correction)
    family = len(flat)
    seq_alpha = policy.alpha / family if (policy.correction != "none" and family) else policy.alpha
    for w, p_adj in zip(flat, adjusted):
        w.ni = w.ni.adjusted(float(p_adj), policy.correction, alpha_next)

    preliminary: dict[tuple[str, str], tuple[list[RuleResult], list[TaskDecision], bool]] = {}
    for key, cell in cells.items():
        cand, backend = key
        label = f"{cand} on {backend}"
        rules: list[RuleResult] = []
        tds: list[TaskDecision] = []
        for i, err in enumerate(cell["err"]):
            rid = "error" if i == 0 else f"error_{i + 1}"
            rules.append(RuleResult(rid, False, f"{label}: FAIL — the cell crashed, so nothing it produced can be "
                                                f"trusted: {err.cause}", "error"))
        for w in works[key]:
            td = _task_decision(policy, w, seq_alpha)
            tds.append(td)
            passed = {"PASS": True, "FAIL": False}.get(td.verdict)
            rules.append(RuleResult(w.rule_id, passed, _task_message(label, w, td, policy), "task"))
        if policy.max_kld_mean is not None:
            rules.append(_kld_rule(label, cell["div"], policy))
        if policy.max_flip_rate is not None:
            rules.append(_flip_rule(label, works[key], policy))
        for slo in policy.latency:
            rules.append(_latency_rule(label, slo, cell["lat"], policy.alpha))
        simulated = any(d.simulated for d in cell["div"])
        preliminary[key] = (rules, tds, simulated)

    decisions: list[Decision] = []
    for key, (rules, tds, simulated) in preliminary.items():
        cand, backend = key
        rules = list(rules)
        if policy.agree_backends and backend in policy.agree_backends:
            rules.append(_agree_rule(cand, policy.agree_backends, preliminary))
        if not rules:
            rules.append(RuleResult("evidence", None, f"{cand} on {backend}: INCONCLUSIVE — no rule had evidence "
                                                      "to judge.", "evidence"))
        verdict = aggregate(rules)
        decisions.append(Decision(candidate=cand, backend=backend, verdict=verdict, rules=tuple(rules),
                                  tasks=tuple(tds), summary=_summary(cand, backend, verdict, rules, simulated),
                                  policy=policy.policy, correction=policy.correction, family_size=family,
                                  alpha=policy.alpha, simulated=simulated))
    return decisions


def _task_decision(policy: GatePolicy, w: _TaskWork, seq_alpha: float) -> TaskDecision:
    ev, ni = w.ev, w.ni
    ppu = ev.points_per_unit
    sign = 1.0 if ev.higher_is_better else -1.0
    b_pts, c_pts = float(ev.baseline_scores.mean()) * ppu, float(ev.candidate_scores.mean()) * ppu
    verdict: str = ni.verdict
    seq = None
    if policy.sequential.enabled and ev.planned_n and policy.margin_kind == "absolute" \
            and ev.clusters is None and policy.policy == "qeval":
        design = stats.group_sequential_design(int(ev.planned_n), policy.sequential.looks, alpha=seq_alpha,
                                               spending=policy.sequential.spending)
        method = "score" if ni.method == "score" else "normal"
        bo, co = (ev.baseline_scores, ev.candidate_scores) if ev.higher_is_better else \
            (-ev.baseline_scores, -ev.candidate_scores)
        seq = stats.sequential_noninferiority(bo, co, w.margin_units, design, method=method, power=policy.power)
        verdict = seq.verdict
    if policy.policy == "trtllm":
        verdict = "PASS" if w.trt.passed else "FAIL"
    if ni.kind == "absolute":
        est, ci, margin = ni.estimate * ppu, (ni.ci[0] * ppu, ni.ci[1] * ppu), w.margin_units * ppu
    else:
        est, ci, margin = ni.estimate, ni.ci, w.margin_units
    return TaskDecision(rule_id=w.rule_id, task=ev.task, metric=ev.metric, verdict=verdict,  # type: ignore[arg-type]
                        decided_by=policy.policy, margin_kind=ni.kind, margin=margin, estimate=est, ci=ci,
                        confidence=ni.confidence, delta_pts=sign * (c_pts - b_pts), baseline_pts=b_pts,
                        candidate_pts=c_pts, n=ni.n, pvalue=ni.pvalue, adjusted_pvalue=ni.adjusted_pvalue,
                        pvalue_inferior=ni.pvalue_inferior, correction=ni.correction, method=ni.method,
                        n_to_settle=ni.n_to_settle if verdict == "INCONCLUSIVE" else None,
                        n10=ni.n10 if w.mcnemar else None, n01=ni.n01 if w.mcnemar else None,
                        flip_rate=w.mcnemar.flip_rate if w.mcnemar else None,
                        mcnemar_p=w.mcnemar.pvalue if w.mcnemar else None, wilcoxon_p=w.wilcoxon_p,
                        trtllm=w.trt, pairing=w.gain, noninferiority=ni, sequential=seq)


def _agree_rule(cand: str, required: list[str],
                preliminary: dict[tuple[str, str], tuple[list[RuleResult], list[TaskDecision], bool]]) -> RuleResult:
    verdicts = {be: aggregate(preliminary[(cand, be)][0]) if (cand, be) in preliminary else None for be in required}
    listing = ", ".join(f"{be} {v or 'not run'}" for be, v in verdicts.items())
    if any(v == "BLOCK" for v in verdicts.values()):
        blocked = ", ".join(be for be, v in verdicts.items() if v == "BLOCK")
        return RuleResult("backends_agree", False, f"{cand}: FAIL — it must ship on every one of "
                                                   f"{', '.join(required)} but is blocked on {blocked} ({listing}).",
                          "backends_agree")
    if all(v == "SHIP" for v in verdicts.values()):
        return RuleResult("backends_agree", True, f"{cand}: PASS — ships on every required backend ({listing}).",
                          "backends_agree")
    return RuleResult("backends_agree", None, f"{cand}: INCONCLUSIVE — not yet shippable on every required "
                                              f"backend ({listing}).", "backends_agree")


def _summary(cand: str, backend: str, verdict: str, rules: list[RuleResult], simulated: bool) -> str:
    failed = [r.rule_id for r in rules if r.passed is False]
    open_ = [r.rule_id for r in rules if r.passed is None]
    text = f"{cand} on {backend}: {verdict}"
    if failed:
        text += f" — failed: {', '.join(failed)}"
    elif open_:
        text += f" — not settled: {', '.join(open_)}"
    else:
        text += f" — all {len(rules)} rules pass"
    if simulated:
        text += " (simulated quantization)"
    return text


def planned_rules(policy: GatePolicy, tasks: Sequence[str], backend: str) -> list[str]:
    """The rule ids `decide` will report for one candidate on `backend`, known before the run.

    The pytest plugin makes one test item per id at collection time. (A crashed cell
    adds an "error" rule, which the items of that cell report instead.)
    """
    ids = []
    for task in tasks:
        rid = safe_rule_id(task)
        ids.append(f"task_{rid}" if rid in _RESERVED or rid.startswith("latency_") else rid)
    if policy.max_kld_mean is not None:
        ids.append("kld")
    if policy.max_flip_rate is not None:
        ids.append("flip_rate")
    ids += [slo.rule_id for slo in policy.latency]
    if policy.agree_backends and backend in policy.agree_backends:
        ids.append("backends_agree")
    return ids
