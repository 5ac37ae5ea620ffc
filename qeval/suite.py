"""The suite: what to evaluate, against what, and how to decide.

A suite is a YAML file validated by pydantic: `Suite` below holds the whole and
its cross-field checks, `qeval.suite_sections` one model per section. Every
validation failure becomes one `QevalError` (qeval.suite_fields) that names the
file, the field, what was expected and a fix; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from qeval import precisions
from qeval.backends import BACKENDS
from qeval.checkpoints import CheckpointSpec
from qeval.errors import QevalError
from qeval.gate import GatePolicy
from qeval.recipes import RecipeSpec
from qeval.suite_fields import (FieldProblem, Strict, did_you_mean, no_duplicates, safe_file_name,
                                validation_error_to_qeval)
from qeval.suite_sections import (BUILTIN_MODELS, DivergenceSpec, LatencySpec, ModelSpec, SamplingSpec, Seeds,
                                  ServerSpec, TaskSpec, known_precision)

log = logging.getLogger(__name__)

DEFAULT_SUITE = "smoke"


class Suite(Strict):
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
        known_precision(name)
        return name

    @field_validator("recipes")
    @classmethod
    def _valid_recipes(cls, specs: list[RecipeSpec]) -> list[RecipeSpec]:
        from qeval import recipes

        no_duplicates([r.name for r in specs], "recipe")
        for spec in specs:
            # A recipe names its cells' directories like any precision: never a path.
            safe_file_name(spec.name, "recipe name")
            recipes.check_spec(spec)
        recipes.register(specs)  # the candidates after this field, and every later look-up, see them
        return specs

    @field_validator("checkpoints")
    @classmethod
    def _valid_checkpoints(cls, specs: list[CheckpointSpec], info: ValidationInfo) -> list[CheckpointSpec]:
        from qeval import checkpoints

        recipe_names = {r.name for r in info.data.get("recipes") or []}
        no_duplicates([c.name for c in specs], "checkpoint")
        for spec in specs:
            # A checkpoint names its cells' directories like any precision: never a path.
            safe_file_name(spec.name, "checkpoint name")
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
            known_precision(name)
        no_duplicates(names, "candidate")
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
                raise FieldProblem(f"unknown backend {name!r}{did_you_mean(name, BACKENDS)}",
                                   f"use one of: {', '.join(BACKENDS)}")
        no_duplicates(names, "backend")
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
        no_duplicates(names, "vllm_online precision")
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
            safe_file_name(task.name, f"task name (tasks[{i}].name)")
        no_duplicates([t.name for t in tasks], "task")
        return tasks

    @field_validator("name")
    @classmethod
    def _file_safe_suite_name(cls, name: str) -> str:
        # The suite name starts the run directory's name (reports/<name>-<time>): never a path.
        return safe_file_name(name, "suite name")

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


# -- loading ----------------------------------------------------------------

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
        raise validation_error_to_qeval(err, str(path), Suite) from None
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
