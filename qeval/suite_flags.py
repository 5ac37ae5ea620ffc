"""Suites from command-line flags: `qeval run --model M --candidates fp8,int8_wo --tasks t1,t2 --limit N`.

The flags build (or override fields of) the same dict a suite YAML file holds, and that dict goes through the
same pydantic models and messages (qeval.suite). The effective suite is written into the run directory as
suite.yaml (every field, defaults filled in), so the run can be repeated from that file alone; its identity
(qeval.suite.suite_identity) is the hash of the validated content, so a flag-built run and the equivalent YAML
file are the same suite. Which fields the flags set is recorded in the manifest (suite.overrides).

--limit N is a per-task limit, like lm-eval's: every task's `limit` becomes N (the sampling design's
max_items_per_task still caps it; a suite whose cap is below N is refused rather than silently capped).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qeval.errors import QevalError

CLI_SOURCE = "command line"
DEFAULT_NAME = "cli"
# A flag-only suite that quantizes on hf needs a calibration set; the built-in mixed BIG-bench set is the default
# (the eval tasks are refused from it by the calibration check, so it never overlaps them).
DEFAULT_CALIBRATION = "bigbench-mixed"


@dataclass
class SuiteFlags:
    """The suite-changing flags of `qeval run` (None: not given)."""

    model: str | None = None
    candidates: str | None = None
    tasks: str | None = None
    backends: str | None = None
    limit: int | None = None
    margin: float | None = None
    alpha: float | None = None
    name: str | None = None
    calibration: str | None = None
    sets: list[str] = field(default_factory=list)  # --set FIELD=VALUE, repeatable

    def given(self) -> bool:
        return any(v not in (None, []) for v in vars(self).values())


def parse_list(value: str, flag: str) -> list[str]:
    """A comma-separated flag value: `fp8,int8_wo`. Empty items, spaces inside and brackets are refused."""
    example = {"--candidates": "fp8,int8_wo", "--tasks": "bigbench_mc_physics,bigbench_mc_social_iqa",
               "--backends": "hf,vllm"}.get(flag, "a,b")
    fix = f"a comma-separated list without spaces or brackets, e.g. {flag} {example}"
    items = value.split(",")
    stripped = [item.strip() for item in items]
    if not value.strip():
        raise QevalError(f"{flag} is empty", file=CLI_SOURCE, field=flag, fix=fix)
    for i, item in enumerate(stripped):
        if not item:
            raise QevalError(f"{flag} {value!r} has an empty item (position {i + 1})", file=CLI_SOURCE,
                             field=flag, fix=fix)
        if any(c in item for c in " []{}'\""):
            raise QevalError(f"{flag} {value!r} is not a plain list: item {item!r}", file=CLI_SOURCE, field=flag,
                             fix=fix)
    return stripped


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise QevalError(f"--set {dotted}: {key!r} is not a section", file=CLI_SOURCE, field="--set",
                             fix="set a field inside a section, e.g. --set divergence.enabled=false")
        node = child
    node[keys[-1]] = value


def _parse_set(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise QevalError(f"--set {text!r} is not FIELD=VALUE", file=CLI_SOURCE, field="--set",
                         fix="e.g. --set latency.enabled=false or --set gate.max_kld_mean=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw  # the same typing as in a suite file
    except yaml.YAMLError:
        raise QevalError(f"--set {text!r}: the value is not a YAML value", file=CLI_SOURCE, field="--set",
                         fix="quote it, e.g. --set description='a note'") from None
    return key.strip(), value


def _model_source(value: str) -> str:
    """A built-in name as is; a folder by absolute path (the run's suite.yaml must not depend on the cwd)."""
    from qeval.suite_sections import BUILTIN_MODELS

    return value if value in BUILTIN_MODELS else str(Path(value).expanduser().absolute())


def overrides(flags: SuiteFlags, base: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted field -> value for every field the flags set, in a fixed order (what the manifest records)."""
    out: dict[str, Any] = {}
    if flags.name is not None:
        out["name"] = flags.name
    if flags.model is not None:
        out["model.source"] = _model_source(flags.model)
    if flags.candidates is not None:
        out["candidates"] = parse_list(flags.candidates, "--candidates")
    if flags.backends is not None:
        out["backends"] = parse_list(flags.backends, "--backends")
    if flags.tasks is not None:
        out["tasks"] = parse_list(flags.tasks, "--tasks")
    if flags.limit is not None:
        if flags.limit < 1:
            raise QevalError(f"--limit must be at least 1 document per task, got {flags.limit}", file=CLI_SOURCE,
                             field="--limit", fix="e.g. --limit 100, or leave it out to run every document")
        out["tasks.limit"] = flags.limit
    if flags.margin is not None:
        out["gate.margin"] = flags.margin
    if flags.alpha is not None:
        out["gate.alpha"] = flags.alpha
    if flags.calibration is not None:
        out["calibration"] = flags.calibration
    for text in flags.sets:
        key, value = _parse_set(text)
        if key in out or (key == "tasks" and "tasks.limit" in out):
            owner = FLAG_OF.get(key, "--set")
            raise QevalError(f"--set {text!r} conflicts with {owner}, which also sets {key}", file=CLI_SOURCE,
                             field="--set", fix=f"give {key} once: either {owner} or --set")
        out[key] = value
    return out


# Which flag sets which field: a validation error on that field names the flag.
FLAG_OF = {"name": "--name", "model.source": "--model", "candidates": "--candidates", "backends": "--backends",
           "tasks": "--tasks", "tasks.limit": "--limit", "gate.margin": "--margin", "gate.alpha": "--alpha",
           "calibration": "--calibration"}


def apply(base: dict[str, Any] | None, over: dict[str, Any], *, base_file: str | None) -> dict[str, Any]:
    """The suite dict with the overrides applied (the base is not changed)."""
    data = copy.deepcopy(base) if base is not None else {"name": DEFAULT_NAME}
    source = (data.get("model") or {}).get("source") if isinstance(data.get("model"), dict) else None
    if base_file is not None and isinstance(source, str) and "model.source" not in over:
        from qeval.suite_sections import BUILTIN_MODELS

        if source not in BUILTIN_MODELS and not Path(source).is_absolute():
            # The run directory's suite.yaml must name the same folder from wherever it is read.
            data["model"]["source"] = str((Path(base_file).parent / source).absolute())
    if base is None and "calibration" not in over:
        data["calibration"] = DEFAULT_CALIBRATION
    for key, value in over.items():
        if key == "tasks":
            # A task the suite file already has keeps its settings (metric, few-shot ...); a new one gets defaults.
            known = {t.get("name"): t for t in (data.get("tasks") or []) if isinstance(t, dict)}
            data["tasks"] = [copy.deepcopy(known.get(name, {"name": name})) for name in value]
        elif key == "tasks.limit":
            tasks = data.get("tasks") or []
            for t in tasks:
                if isinstance(t, dict):
                    t["limit"] = value
            cap = (data.get("sampling") or {}).get("max_items_per_task")
            if isinstance(cap, int) and cap < value:
                raise QevalError(f"--limit {value} conflicts with the suite's sampling.max_items_per_task {cap}: "
                                 f"no task could run more than {cap} documents", file=base_file or CLI_SOURCE,
                                 field="sampling.max_items_per_task",
                                 fix=f"use --limit {cap} or less, or --set sampling.max_items_per_task={value}")
        else:
            _set_path(data, key, value)
    return data


def build(base: dict[str, Any] | None, flags: SuiteFlags, *, base_file: str | None) -> tuple[Any, dict[str, Any]]:
    """Validate the suite the flags describe: (Suite, the overrides). Bad flags raise one QevalError naming the
    flag (exit code 2)."""
    from qeval.suite import Suite
    from qeval.suite_fields import validation_error_to_qeval

    over = overrides(flags, base)
    if base is None:
        missing = [f for f, key in (("--candidates", "candidates"), ("--tasks", "tasks")) if key not in over]
        if missing:
            raise QevalError(f"a run without a suite file needs {' and '.join(missing)}", file=CLI_SOURCE,
                             field=missing[0], fix="e.g. qeval run --candidates fp8,int8_wo --tasks "
                             "bigbench_mc_physics --limit 50 (or pass a suite YAML file)")
    data = apply(base, over, base_file=base_file)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        raise _blame_flag(validation_error_to_qeval(err, base_file or CLI_SOURCE, Suite), over, base_file) from None
    return suite, over


def _flag_for(field_path: str, over: dict[str, Any]) -> str | None:
    """The flag that set the field a validation error names, if a flag set it."""
    head = field_path.split("[")[0]
    for key in over:
        if key == "tasks.limit":
            hit = head == "tasks" and field_path.endswith(".limit")
        elif key == "tasks":
            hit = head == "tasks"
        else:
            hit = field_path == key or field_path.startswith((key + ".", key + "["))
        if hit:
            return FLAG_OF.get(key, f"--set {key}")
    return None


def _blame_flag(err: QevalError, over: dict[str, Any], base_file: str | None) -> QevalError:
    """The same message, naming the flag when the field is one a flag set (the file only had the rest)."""
    flag = _flag_for(err.field or "", over)
    if flag is not None:
        return QevalError(err.problem, file=CLI_SOURCE, field=f"{flag} ({err.field})", fix=err.fix)
    if over and base_file is not None:  # e.g. --candidates dropped one that vllm_online still names
        flags = ", ".join(FLAG_OF.get(k, f"--set {k}") for k in over)
        return QevalError(f"{err.problem} (after the command-line overrides: {flags})", file=err.file,
                          field=err.field, fix=err.fix)
    return err


def suite_yaml(suite: Any, over: dict[str, Any], base_file: str | None) -> bytes:
    """The effective suite as YAML: every field (defaults filled in), a header that says where it came from."""
    lines = [f"# Written by `qeval run` from {'the command line' if base_file is None else base_file}"
             + (" with overrides" if base_file is not None else "") + "."]
    if over:
        lines.append("# Set by flags: " + ", ".join(sorted(over)))
    lines.append("# Every field is spelled out, defaults included: this file alone repeats the run.")
    body = yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return ("\n".join(lines) + "\n" + body).encode("utf-8")
