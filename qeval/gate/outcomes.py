"""What the gate decides: one Decision per cell, one RuleResult per rule, TaskDecision details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qeval import stats

GateVerdict = Literal["SHIP", "BLOCK", "INCONCLUSIVE"]
RuleVerdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]


@dataclass(frozen=True)
class RuleResult:
    """One gate rule for one candidate x backend.

    Attributes:
        rule_id: stable, filename-safe id (task name, "kld", "flip_rate",
            "latency_ttft_p99_c16", "backends_agree", "error").
        passed: True (PASS), False (FAIL) or None (INCONCLUSIVE / no evidence).
        message: plain words with the evidence numbers (rendered by qeval.gate.messages).
        kind: "task", "kld", "flip_rate", "latency", "backends_agree", "error" or "evidence".
        pvalue: the rule's p-value for the claim that licenses shipping, where it has one (the
            cell's p-value in the family is the largest of its rules').
    """

    rule_id: str
    passed: bool | None
    message: str
    kind: str
    pvalue: float | None = None

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL"}.get(self.passed, "INCONCLUSIVE")  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskDecision:
    """Everything a report needs about one task of one candidate x backend.

    Deltas and margins are in points, oriented so that negative is worse (lower-is-better
    metrics are sign-flipped). For relative margins `estimate`/`ci` are the recovery ratio.

    Attributes:
        rule_id: the task's rule id.
        task: task name.
        metric: metric name.
        verdict: PASS, FAIL or INCONCLUSIVE.
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
        adjusted_pvalue: after the family's correction (compared with alpha).
        pvalue_inferior: p-value of "below the margin".
        correction: the family's correction (bonferroni, holm, bh, none).
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
        sequential: the group-sequential decision, when that mode collected the samples.
        anytime: the anytime-valid decision, when that mode collected the samples.
        level: the one-sided level this task's PASS had to reach (alpha over the family).
        mode: the sampling mode whose rule decided (fixed, group-sequential, anytime).
        note: why a task was decided by another rule than its mode's (e.g. clustered samples).
        higher_is_better: the metric's direction as the gate read it (False: lower is better, deltas sign-flipped).
        semantics: where the direction and scale came from (lm-eval's task config, the suite ...).
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
    anytime: stats.AnytimeDecision | None = None
    level: float = 0.05
    mode: str = "fixed"
    note: str = ""
    higher_is_better: bool = True
    semantics: str = ""


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
        correction: the correction across cells actually used (see family).
        family_size: planned cells in the family.
        alpha: the family's one-sided level.
        simulated: True if any evidence came from simulated quantization.
        level: the level this cell's rules had to reach to PASS.
        family: the family in words (what and why).
    """

    candidate: str
    backend: str
    verdict: GateVerdict
    rules: tuple[RuleResult, ...]
    tasks: tuple[TaskDecision, ...] = field(default_factory=tuple)
    summary: str = ""
    policy: str = "qeval"
    correction: str = "bonferroni"
    family_size: int = 0
    alpha: float = 0.05
    simulated: bool = False
    level: float = 0.05
    family: str = ""

    def rule(self, rule_id: str) -> RuleResult:
        """The rule with this id (KeyError if absent)."""
        for r in self.rules:
            if r.rule_id == rule_id:
                return r
        raise KeyError(rule_id)
