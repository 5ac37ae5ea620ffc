"""The suite: what to evaluate, against what, and how to decide.

A suite is a YAML file validated by the pydantic models below. Every
validation failure becomes one `QevalError` that names the file, the field,
what was expected and a fix; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from qeval import precisions
from qeval.backends import BACKENDS
from qeval.errors import QevalError
from qeval.gate import GatePolicy
from qeval.paths import SAFE_NAME_RULE, name_problem
from qeval.checkpoints import CheckpointSpec
from qeval.recipes import RecipeSpec

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("smollm2-135m-instruct",)
DEFAULT_SUITE = "smoke"


class FieldProblem(ValueError):
    """A validator's complaint that carries its own fix (shown on the `fix:` line)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


def _safe_file_name(value: str, what: str) -> str:
    """A value that becomes part of a file or directory name (run dir, sample file): never a path."""
    problem = name_problem(value)
    if problem is not None:
        raise FieldProblem(f"{what} {value!r} cannot be used in a file name: {problem}", f"use {SAFE_NAME_RULE}")
    return value


def _known_precision(name: str) -> None:
    try:
        precisions.get(name)
    except QevalError as err:
        raise FieldProblem(err.problem, err.fix or "") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpeedOnlySpec(_Strict):
    """A speed-only model: a published architecture's shape with synthetic weights (qeval.speed_only)."""

    shape: str = Field(description="a built-in architecture (llama-3.1-8b) or a folder holding its config.json "
                       "(relative to the suite file)")
    tokenizer: str = Field("smollm2-135m-instruct", description="a built-in model whose tokenizer builds the "
                           "latency prompts and is served with the engine (any offline tokenizer will do: with "
                           "random weights the text means nothing; prompt ids stay below both vocabularies)")
    load_format: Literal["dummy"] = Field("dummy", description="vLLM's random-weight loader (the only one)")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="more vllm.LLM keyword arguments for "
                                        "every cell (e.g. enforce_eager: true to skip graph compilation)")


class ModelSpec(_Strict):
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


class TaskSpec(_Strict):
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


class SamplingSpec(_Strict):
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


class LatencySpec(_Strict):
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


class DivergenceSpec(_Strict):
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


class ServerSpec(_Strict):
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
            _known_precision(precision)
            if not url.startswith(("http://", "https://")):
                raise FieldProblem(f"endpoint {url!r} for {precision!r} is not an http(s) URL",
                                   "write the server's base URL, e.g. http://127.0.0.1:8000 (without /v1)")
        return {k: v.rstrip("/").removesuffix("/v1") for k, v in endpoints.items()}


class Seeds(_Strict):
    sampling: int = 1234
    fewshot: int = 1234
    bootstrap: int = 0


class Suite(_Strict):
    """A suite: model × precisions × backends × tasks, and the gate that decides."""

    name: str
    description: str = ""
    model: ModelSpec = Field(default_factory=ModelSpec)
    baseline: str = "bf16"
    # Before `candidates`: pydantic validates fields in order, and a candidate may name a recipe defined here.
    recipes: list[RecipeSpec] = Field(default_factory=list, description=(
        "custom recipes: a registered base precision plus ModelOpt config edits (qeval.recipes); a candidate "
        "names one like any precision"))
    checkpoints: list[CheckpointSpec] = Field(default_factory=list, description=(
        "your own quantized Hugging Face folders (compressed-tensors, ModelOpt export, AWQ, GPTQ, FP8; "
        "qeval.checkpoints): a candidate names one like any precision; it runs on every suite backend that "
        "loads its format, compared with the baseline on the same backend"))
    candidates: list[str] = Field(min_length=1)
    backends: list[str] = Field(default_factory=lambda: ["hf"], min_length=1)
    tasks: list[TaskSpec] = Field(default_factory=list, validate_default=True,
                                  description="required, except for a speed_only model (which has none)")
    calibration: str | None = Field(None, description="name of a calibration set in calibration_sets/")
    gate: GatePolicy = Field(default_factory=GatePolicy)
    latency: LatencySpec = Field(default_factory=LatencySpec)
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    vllm_online: list[str] = Field(default_factory=list, description=(
        "candidates that vLLM (vllm and openai backends) quantizes itself at load time from the bf16 model "
        "(e.g. fp8 -> quantization='fp8') instead of loading ModelOpt's checkpoint"))
    seeds: Seeds = Field(default_factory=Seeds)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    task_dirs: list[str] = Field(default_factory=list, description=(
        "folders of your own lm-eval task YAML (relative to the suite file), e.g. lm-eval's gsm8k.yaml "
        "included and pointed at local data files: their tasks run like any other"))

    @field_validator("baseline")
    @classmethod
    def _known_baseline(cls, name: str) -> str:
        _known_precision(name)
        return name

    @field_validator("recipes")
    @classmethod
    def _valid_recipes(cls, specs: list[RecipeSpec]) -> list[RecipeSpec]:
        from qeval import recipes

        _no_duplicates([r.name for r in specs], "recipe")
        for spec in specs:
            # A recipe names its cells' directories like any precision: never a path.
            _safe_file_name(spec.name, "recipe name")
            recipes.check_spec(spec)
        recipes.register(specs)  # the candidates after this field, and every later look-up, see them
        return specs

    @field_validator("checkpoints")
    @classmethod
    def _valid_checkpoints(cls, specs: list[CheckpointSpec], info: ValidationInfo) -> list[CheckpointSpec]:
        from qeval import checkpoints

        recipe_names = {r.name for r in info.data.get("recipes") or []}
        _no_duplicates([c.name for c in specs], "checkpoint")
        for spec in specs:
            # A checkpoint names its cells' directories like any precision: never a path.
            _safe_file_name(spec.name, "checkpoint name")
            if spec.name in recipe_names:
                raise FieldProblem(f"checkpoint name {spec.name!r} is also a recipe of this suite",
                                   "give the checkpoint a name of its own")
            checkpoints.check_spec(spec)
        checkpoints.register(specs)  # unresolved until the run checks the folders (qeval.checkpoints.prepare)
        return specs

    @field_validator("candidates")
    @classmethod
    def _known_unique_candidates(cls, names: list[str], info: ValidationInfo) -> list[str]:
        for name in names:
            _known_precision(name)
        _no_duplicates(names, "candidate")
        baseline = info.data.get("baseline")
        if baseline in names:
            raise FieldProblem(f"the baseline {baseline!r} is also listed as a candidate",
                               "remove it from candidates: a precision is not compared with itself")
        return names

    @field_validator("backends")
    @classmethod
    def _known_unique_backends(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in BACKENDS:
                raise FieldProblem(f"unknown backend {name!r}{_did_you_mean(name, BACKENDS)}",
                                   f"use one of: {', '.join(BACKENDS)}")
        _no_duplicates(names, "backend")
        return names

    @field_validator("vllm_online")
    @classmethod
    def _online_candidates(cls, names: list[str], info: ValidationInfo) -> list[str]:
        candidates = info.data.get("candidates") or []
        for name in names:
            if name not in candidates:
                raise FieldProblem(f"{name!r} is not a candidate of this suite",
                                   f"list only candidates here ({', '.join(candidates)})")
            if precisions.get(name).vllm.online is None:
                online = [p for p in precisions.names() if precisions.get(p).vllm.online is not None]
                raise FieldProblem(f"vLLM has no online quantization for {name!r}",
                                   f"use one of: {', '.join(online)}")
        _no_duplicates(names, "vllm_online precision")
        return names

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskSpec], info: ValidationInfo) -> list[TaskSpec]:
        model = info.data.get("model")
        speed_only = model is not None and model.speed_only is not None
        if not tasks and not speed_only and "model" in info.data:
            raise FieldProblem("tasks is required: a suite without tasks measures no quality",
                               "add e.g. `tasks: [{name: bigbench_mc_physics, limit: 100}]` (see suites/smoke.yaml), "
                               "or set model.speed_only for a latency-only suite")
        if tasks and speed_only:
            raise FieldProblem("a speed_only model has synthetic (random) weights: task scores would be noise",
                               "remove tasks from this suite, or drop model.speed_only to test real weights")
        for i, task in enumerate(tasks):
            # A task name names its per-sample file (cells/<cell>/samples/<task>.jsonl): never a path.
            _safe_file_name(task.name, f"task name (tasks[{i}].name)")
        _no_duplicates([t.name for t in tasks], "task")
        return tasks

    @field_validator("name")
    @classmethod
    def _file_safe_suite_name(cls, name: str) -> str:
        # The suite name starts the run directory's name (reports/<name>-<time>): never a path.
        return _safe_file_name(name, "suite name")

    @model_validator(mode="after")
    def _speed_only_matrix(self) -> "Suite":
        if self.model.speed_only is None:
            return self
        from qeval.speed_only import check_matrix

        check_matrix(self)
        return self

    @property
    def precisions(self) -> list[str]:
        return [self.baseline, *self.candidates]

    @property
    def speed_only(self) -> bool:
        """Synthetic weights: latency and throughput only, never quality (qeval.speed_only)."""
        return self.model.speed_only is not None


def _no_duplicates(names: list[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise FieldProblem(f"{what} {name!r} is listed twice", "list each one once")
        seen.add(name)


def _did_you_mean(name: str, known: Any) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# -- loading ----------------------------------------------------------------

_TYPE_HINTS = {
    "int_type": "a whole number, e.g. 100",
    "int_parsing": "a whole number, e.g. 100",
    "greater_than": "a positive number",
    "greater_than_equal": "a number >= 0",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list, e.g. [fp8, int8_wo]",
    "float_type": "a number",
    "float_parsing": "a number",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "missing": "this field is required",
    "too_short": "a non-empty list",
    "literal_error": "one of the allowed values",
}


# pydantic's numeric bound errors: the fix states the bound itself (ctx holds its value).
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part not in ("function-after", "function-before"):
            out += f".{part}" if out else part
    return out


def _fix_for(error: dict, model: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, error["loc"][:-1])
        name = str(error["loc"][-1])
        known = list(parent.model_fields) if parent else []
        return f"remove it{_did_you_mean(name, known)}; allowed fields here: {', '.join(known)}"
    if kind == "missing":
        return f"add '{error['loc'][-1]}' (see suites/smoke.yaml for an example)"
    if kind == "literal_error":
        return f"use {error.get('ctx', {}).get('expected', 'an allowed value')}"
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        return getattr(cause, "fix", None) or "see the message above; suites/smoke.yaml is a working example"
    bound = _BOUNDS.get(kind)
    if bound is not None:
        op, key = bound
        return f"use a number {op} {error.get('ctx', {}).get(key)}"
    return f"use {_TYPE_HINTS.get(kind, 'a value of the right type')}"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` (to list its allowed fields)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return None
    return current if isinstance(current, type) else None


def validation_error_to_qeval(err: ValidationError, file: str, model: type[BaseModel] = Suite) -> QevalError:
    """One message for a failed validation: every problem with its field and fix."""
    errors = err.errors()
    first = errors[0]
    field = _field_path(first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    problem = f"{msg} (got {got!r})" if first["type"] not in ("missing", "extra_forbidden", "value_error") and not isinstance(got, dict) else msg
    if len(errors) > 1:
        others = "; ".join(f"{_field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in errors[1:4])
        problem += f" [and {len(errors) - 1} more: {others}]"
    return QevalError(problem, file=file, field=field, fix=_fix_for(first, model))


def read_yaml(path: Path) -> Any:
    """Safe-load a YAML file; syntax errors become a QevalError with line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QevalError("file not found", file=str(path), fix="check the path; `qeval run` with no "
                         "argument runs the built-in smoke suite") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise QevalError(f"cannot read it as a text file ({exc.__class__.__name__})", file=str(path),
                         fix="pass a readable UTF-8 YAML file") from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        # A tag such as !!python/object/apply: safe loading refuses it (nothing is constructed or run).
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise QevalError(f"YAML tag refused{where}: {exc.problem} (qeval loads YAML safely and never builds "
                         "Python objects from it)", file=str(path),
                         fix="remove the tag and write plain YAML values (strings, numbers, lists, mappings)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise QevalError(f"YAML syntax error{where}: {problem}", file=str(path),
                         fix="check indentation and quoting there (tabs are not allowed in YAML)") from None


def builtin_suite_path(name: str) -> Path:
    return Path(str(resources.files("qeval") / "suites" / f"{name}.yaml"))


def resolve_suite_path(arg: str | Path | None) -> Path:
    """A suite argument: None (the built-in smoke suite), a built-in name, or a path."""
    if arg is None:
        return builtin_suite_path(DEFAULT_SUITE)
    path = Path(arg)
    if not path.exists() and path.suffix == "" and builtin_suite_path(str(arg)).exists():
        return builtin_suite_path(str(arg))
    return path


def load_suite(arg: str | Path | None = None) -> tuple[Suite, Path]:
    """Load and validate a suite. Raises QevalError (exit code 2) on any problem."""
    path = resolve_suite_path(arg)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise QevalError(f"a suite must be a YAML mapping of fields, got {type(data).__name__}",
                         file=str(path), fix="start from suites/smoke.yaml")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_qeval(err, str(path)) from None
    _check_model_source(suite, path)
    # The shape's folder exists and is a model config: checked now, not at the first cell. A run directory's copy
    # of the suite is not checked: its manifest holds the config the run used (the shape may be relative).
    if suite.speed_only and not (path.parent / "manifest.json").is_file():
        from qeval.speed_only import read_config, shape_dir

        read_config(shape_dir(suite, path), path)
    _warn_unreachable_slos(suite, path)
    return suite, path


def _warn_unreachable_slos(suite: Suite, path: Path) -> None:
    """Say at load time, not after the run, when an SLO rule can never PASS for want of requests."""
    from qeval.gate import Family
    from qeval.stats import samples_for_upper_bound

    if not suite.latency.enabled or not suite.gate.latency:
        return
    # Each cell's rules run at the family's per-cell level (e.g. alpha / cells under Bonferroni), not alpha.
    level = Family.planned(suite).fixed_level()
    for slo in suite.gate.latency:
        needed = samples_for_upper_bound(slo.percentile, level)
        if slo.metric != "itl" and suite.latency.num_requests < needed:
            log.warning("%s: latency.num_requests is %d, but bounding a p%g from above at the cell's level %.3g "
                        "takes at least %d requests: rule %s can only be INCONCLUSIVE. Set latency.num_requests "
                        ">= %d.", path, suite.latency.num_requests, slo.percentile, level, needed, slo.rule_id,
                        needed)


def check_model_source(suite: Suite, path: Path) -> None:
    """model.source names a built-in model or a readable Hugging Face folder (relative: to the suite file)."""
    _check_model_source(suite, path)


def _check_model_source(suite: Suite, path: Path) -> None:
    source = suite.model.source
    if source in BUILTIN_MODELS:
        return
    folder = Path(source) if Path(source).is_absolute() else (path.parent / source)
    if not folder.exists():
        raise QevalError(f"model folder {source!r} does not exist (looked at {folder})", file=str(path),
                         field="model.source", fix=f"use a built-in model ({', '.join(BUILTIN_MODELS)}) "
                         "or the path of a local Hugging Face folder (relative to the suite file)")
    if not folder.is_dir():
        raise QevalError(f"{folder} is a file, not a model folder", file=str(path), field="model.source",
                         fix="point it at the folder that holds config.json and the weights")
    # Unreadable is not the same as missing: say which, so the fix is permissions, not the path.
    if not os.access(folder, os.R_OK | os.X_OK):
        raise QevalError(f"model folder {folder} is not readable by this user", file=str(path),
                         field="model.source", fix=f"give this user read access (chmod -R u+rX {folder})")
    config = folder / "config.json"
    if not config.is_file():
        raise QevalError(f"{folder} has no config.json: not a Hugging Face model folder", file=str(path),
                         field="model.source", fix="point it at a folder written by save_pretrained")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except PermissionError:
        raise QevalError(f"{config} is not readable by this user", file=str(path), field="model.source",
                         fix=f"give this user read access (chmod u+r {config})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QevalError(f"{config} is not valid JSON ({type(exc).__name__}: {exc})", file=str(path),
                         field="model.source", fix="restore the model folder's config.json "
                         "(save_pretrained writes it)") from None
    if not isinstance(parsed, dict):
        raise QevalError(f"{config} is not a JSON object (got {type(parsed).__name__})", file=str(path),
                         field="model.source", fix="restore the model folder's config.json "
                         "(save_pretrained writes it)")


def suite_hash(path: Path) -> str:
    """sha256 of a suite file's bytes (comments and layout included)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def suite_identity(suite: Suite) -> str:
    """sha256 of what a suite says: the validated suite, defaults filled in, as canonical JSON.

    A suite built from `qeval run` flags and the equivalent YAML file get the same identity; comments,
    key order and spelled-out defaults do not change it. The manifest records it (suite.sha256).
    """
    text = json.dumps(suite.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
