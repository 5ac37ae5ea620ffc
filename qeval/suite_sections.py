"""The sections of a suite file, one pydantic model each: the model under test, a task, sampling, latency,
divergence, the server, seeds. The whole suite and its cross-field checks are `qeval.suite.Suite`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from qeval import precisions
from qeval.errors import QevalError
from qeval.suite_fields import FieldProblem, Strict

BUILTIN_MODELS = ("smollm2-135m-instruct",)


def known_precision(name: str) -> None:
    try:
        precisions.get(name)
    except QevalError as err:
        raise FieldProblem(err.problem, err.fix or "") from None


class SpeedOnlySpec(Strict):
    """A speed-only model: a published architecture's shape with synthetic weights (qeval.speed_only)."""

    shape: str = Field(description="a built-in architecture (llama-3.1-8b) or a folder holding its config.json "
                       "(relative to the suite file)")
    tokenizer: str = Field("smollm2-135m-instruct", description="a built-in model whose tokenizer builds the "
                           "latency prompts and is served with the engine (any offline tokenizer will do: with "
                           "random weights the text means nothing; prompt ids stay below both vocabularies)")
    load_format: Literal["dummy"] = Field("dummy", description="vLLM's random-weight loader (the only one)")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="more vllm.LLM keyword arguments for "
                                        "every cell (e.g. enforce_eager: true to skip graph compilation)")


class ModelSpec(Strict):
    """The model under test, in its baseline precision."""

    source: str = Field("smollm2-135m-instruct", description="a built-in offline model name "
                        f"({', '.join(BUILTIN_MODELS)}) or the path of a local Hugging Face folder")
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="the baseline's weights dtype")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="what the hf reference, its simulated quantization and vLLM compute in: auto = the "
        "weights dtype where the device runs it natively, else float32 from the same weights (a CPU without "
        "AVX512-BF16/AMX emulates bf16 several times slower); the choice is recorded per cell")
    # Strict: only a YAML true turns it on; a quoted 'yes' or a 1 is refused, not coerced (it runs foreign code).
    trust_remote_code: bool = Field(False, strict=True,
                                    description="run the model folder's own Python code; off unless you trust it")
    max_length: PositiveInt = 2048
    speed_only: SpeedOnlySpec | None = Field(None, description=(
        "speed only: an engine built from a published architecture's config.json with random weights "
        "(vLLM load_format='dummy'): real kernels and real shapes, meaningless text. Its cells run latency "
        "and throughput only, the report labels them 'synthetic weights, speed only' and the gate never "
        "reads them for quality; `source` is then not used"))


class TaskSpec(Strict):
    """One lm-eval task, how much of it to run, and what its metric means."""

    name: str = Field(description="an lm-eval task name, e.g. bigbench_mc_physics (offline pack) or arc_easy")
    limit: PositiveInt | None = Field(None, description="the most documents to evaluate (None: all), drawn in the "
                                      "sampling design's seeded random order")
    num_fewshot: NonNegativeInt = 0
    metric: str = Field("acc", description="the per-sample metric the gate compares (acc, acc_norm, exact_match ...)")
    higher_is_better: bool | None = Field(None, description="the metric's direction; default: what lm-eval's task "
                                          "config declares for it")
    points_per_unit: PositiveFloat | None = Field(None, description="points in one unit of the metric, for margins "
                                                  "in points: 100 for 0-1 metrics (acc), 1 for metrics already in "
                                                  "points (BLEU 0-100) or unbounded ones; default: known lm-eval "
                                                  "metrics, else read off the scores")
    score_range: tuple[float, float] | None = Field(None, description="(low, high) every per-sample score lies in; "
                                                    "anytime sampling needs it for metrics other than 0-1 ones")
    cluster: str | None = Field(None, description="a field of the task's documents that groups items (a passage, a "
                                "BIG-bench subtask, an MMLU subject): clustered standard errors use it; every "
                                "offline pack document has `subtask`")
    repeats: PositiveInt = Field(1, description="draws per document of a sampled (temperature > 0) generative "
                                 "task, each seeded from seeds.sampling, the repeat and the prompt; the document "
                                 "is the cluster of its draws (or the cluster field, where set)")
    generation: dict[str, float | int | bool | str | list[str]] | None = Field(
        None, description="lm-eval generation kwargs that override the task's, e.g. {temperature: 0.7, "
        "do_sample: true} or {max_gen_toks: 32, until: [\"\\n\"]}")
    filter: str | None = Field(None, description="which of the task's lm-eval filters gives the scored answer "
                               "(e.g. gsm8k's strict-match or flexible-extract); default: the first it lists")
    apply_chat_template: bool = Field(False, description="format prompts with the model's chat template "
                                      "(instruct models; few-shot examples become turns)")

    @model_validator(mode="after")
    def _repeats_need_sampling(self) -> "TaskSpec":
        gen = self.generation or {}
        sampled = float(gen.get("temperature", 0) or 0) > 0 and gen.get("do_sample", True) is not False
        if self.repeats > 1 and not sampled:
            raise FieldProblem(f"repeats {self.repeats} of a greedy task give the same answer each time",
                               "set generation: {temperature: 0.7, do_sample: true}, or repeats: 1")
        return self

    @field_validator("score_range")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[1] > value[0]:
            raise FieldProblem(f"score_range {list(value)} is empty", "give [low, high] with high > low, e.g. [0, 1]")
        return value


class SamplingSpec(Strict):
    """How many documents each task evaluates, in which order and looks, and when it stops."""

    mode: Literal["fixed", "group-sequential", "anytime"] = Field(
        "fixed", description="fixed: every planned document, one look; group-sequential: `looks` planned looks "
        "with Lan-DeMets alpha spending, a task stops once settled; anytime: looks of `look_size` until settled or "
        "out of budget, valid however long the run goes (betting confidence sequence)")
    looks: PositiveInt | list[PositiveInt] = Field(5, description="group-sequential: number of equally spaced "
                                                   "looks up to the planned n, or the cumulative n of each look")
    spending: Literal["obrien-fleming", "pocock"] = Field("obrien-fleming", description="group-sequential "
                                                          "alpha spending")
    look_size: PositiveInt = Field(32, description="anytime: documents per look")
    order: Literal["shuffled", "first"] = Field("shuffled", description="shuffled: a seeded random permutation of "
                                                "each task's documents (datasets are often sorted); first: lm-eval's "
                                                "first N")
    seed: int | None = Field(None, description="the permutation's seed (default: seeds.sampling)")
    max_items_per_task: PositiveInt | None = Field(None, description="budget: the most documents any task of any "
                                                   "cell evaluates (caps limit)")
    max_items_total: PositiveInt | None = Field(None, description="budget: the most documents this run evaluates, "
                                                "all cells and tasks together")

    @field_validator("looks")
    @classmethod
    def _increasing(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and (not value or any(b <= a for a, b in zip(value, value[1:]))):
            raise FieldProblem(f"looks {value} must be a non-empty, strictly increasing list of sizes",
                               "e.g. [50, 100, 200], or a number of equal looks such as 5")
        return value

    @model_validator(mode="after")
    def _budget_covers_a_look(self) -> "SamplingSpec":
        first = self.look_size if self.mode == "anytime" else (
            self.looks[0] if isinstance(self.looks, list) and self.mode == "group-sequential" else 1)
        for name in ("max_items_per_task", "max_items_total"):
            cap = getattr(self, name)
            if cap is not None and cap < first:
                raise ValueError(f"{name} {cap} is below one look ({first} documents): no task could run")
            if cap is not None and self.mode == "group-sequential" and isinstance(self.looks, int) \
                    and name == "max_items_per_task" and cap < self.looks:
                raise ValueError(f"max_items_per_task {cap} is below one document per look ({self.looks} looks)")
        return self


class LatencySpec(Strict):
    """Latency probes: load shapes and request sizes."""

    enabled: bool = True
    concurrency: list[PositiveInt] = Field(default_factory=lambda: [1, 4])
    request_rate: list[float] = Field(default_factory=list, description="Poisson arrivals, requests/s")
    input_tokens: PositiveInt = 128
    output_tokens: PositiveInt = 32
    num_requests: PositiveInt = 16
    warmup_requests: NonNegativeInt = 2
    backends: list[str] | None = Field(None, description="backends to probe (default: all the suite's); e.g. "
                                       "[vllm]: HF in process has no batching, its latency says little")
    sweep: NonNegativeInt = Field(0, description=(
        "GuideLLM's rate sweep: this many strategies in all (GuideLLM's default is 10; 0: no sweep): "
        "synchronous (concurrency 1) and throughput (the highest concurrency listed) are the concurrency "
        "points, then sweep - 2 Poisson rates evenly spaced from the synchronous rate up to the throughput "
        "rate, as the baseline measured them (candidates run at the baseline's rates: same offered load)"))
    goodput: dict[Literal["ttft", "tpot", "e2e"], PositiveFloat] = Field(default_factory=dict, description=(
        "SLOs in ms for goodput (requests/s meeting every one of them, as `vllm bench serve --goodput` "
        "counts it), e.g. {ttft: 500, tpot: 50}; computed at every load point"))

    @model_validator(mode="after")
    def _sweep_has_its_ends(self) -> "LatencySpec":
        if self.sweep and (1 not in self.concurrency or len(self.concurrency) < 2):
            raise ValueError("latency.sweep needs concurrency 1 (synchronous) and a higher concurrency "
                             f"(throughput) among latency.concurrency, got {self.concurrency}")
        if self.sweep and self.sweep < 3:
            raise ValueError(f"latency.sweep {self.sweep} gives no rate (it counts synchronous and throughput)")
        return self

    @field_validator("request_rate")
    @classmethod
    def _positive_rates(cls, rates: list[float]) -> list[float]:
        if any(r <= 0 for r in rates):
            raise ValueError("request rates must be > 0 requests/s")
        return rates


class DivergenceSpec(Strict):
    """Token-level comparison with the baseline (KL divergence, top-1 agreement, PPL ratio)."""

    enabled: bool = True
    heldout_tokens: PositiveInt = Field(2048, description="tokens of held-out text (from the calibration source's"
                                        " disjoint held-out split)")
    task_prompts: NonNegativeInt = Field(64, description="task prompts compared token by token (0: none)")
    keep_reference: bool = Field(False, description=(
        "keep each engine's stored baseline distributions (cells/<baseline>/reference/, tokens x vocabulary "
        "x 4 bytes) after the run; by default they are deleted once every candidate on that engine has its "
        "divergence"))
    server_top_k: PositiveInt | Literal["full"] = Field(20, description=(
        "log-probabilities per position asked of OpenAI-compatible servers (openai backend). Below the "
        "vocabulary size the KL is a lower bound only (sound for BLOCK, never PASS); 'full' asks for the "
        "whole vocabulary (exact, and heavy: one JSON entry per token per position); qeval passes "
        "--max-logprobs to the `vllm serve` it starts, external servers may allow less (the record says)"))


class ServerSpec(Strict):
    """OpenAI-compatible servers for the `openai` backend: connect to running ones, or start `vllm serve`."""

    endpoints: dict[str, str] = Field(default_factory=dict, description="precision -> base URL of a running "
                                      "server (e.g. http://10.0.0.5:8000); precisions not listed are served by "
                                      "`vllm serve`, started on 127.0.0.1 for the cell and stopped after it")
    model_name: str | None = Field(None, description="the served model name at the endpoints (default: the "
                                   "first one /v1/models lists)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoints' API key; "
                             "read at run time, never written into records or reports")
    port: int | None = Field(None, ge=1, le=65535, description="port for `vllm serve` (default: a free one)")
    startup_timeout_s: PositiveFloat = 900.0
    request_timeout_s: PositiveFloat = 600.0
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` arguments")

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: dict[str, str]) -> dict[str, str]:
        for precision, url in endpoints.items():
            known_precision(precision)
            if not url.startswith(("http://", "https://")):
                raise FieldProblem(f"endpoint {url!r} for {precision!r} is not an http(s) URL",
                                   "write the server's base URL, e.g. http://127.0.0.1:8000 (without /v1)")
        return {k: v.rstrip("/").removesuffix("/v1") for k, v in endpoints.items()}


class Seeds(Strict):
    sampling: int = 1234
    fewshot: int = 1234
    bootstrap: int = 0
