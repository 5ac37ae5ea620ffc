"""The `gate:` section of a suite: margins, levels, the decision family, the rules' limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    correction: Literal["bonferroni", "holm", "bh", "none"] = Field(
        "bonferroni", description="Multiplicity across the suite's planned cells (candidate x backend); within a "
        "cell, SHIP needs every rule to pass (an intersection-union test: no correction across its tasks). "
        "bonferroni: each cell at alpha / cells, so a cell's verdict never depends on other cells' results; holm: "
        "step-down over the cells' p-values (more power when several cells ship; a cell without results counts as "
        "not rejected; fixed sampling only, else bonferroni); bh: Benjamini-Hochberg false discovery rate over "
        "the cells (fixed sampling only); none: alpha per cell.")
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
    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: object) -> object:
        if isinstance(data, dict) and "sequential" in data:
            raise ValueError("gate.sequential has moved: the look schedule is part of the sampling design. "
                             "Write `sampling: {mode: group-sequential, looks: 5}` at the top level of the suite "
                             "(or mode: anytime) and remove gate.sequential")
        return data

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
