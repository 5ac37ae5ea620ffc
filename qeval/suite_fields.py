"""What every section of a suite shares: a strict pydantic base, field problems that carry their own fix, and
the translation of pydantic's errors into one QevalError that names the file, the field and the fix.

Kept apart from the sections themselves so that recipes, checkpoints, calibration sets and speed-only models,
which the suite imports, can raise field problems without importing the suite.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from qeval.errors import QevalError
from qeval.paths import SAFE_NAME_RULE, name_problem


class Strict(BaseModel):
    """A section of a YAML file: unknown fields are errors (a typo must not pass silently), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldProblem(ValueError):
    """A validator's complaint that carries its own fix (shown on the `fix:` line)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


def safe_file_name(value: str, what: str) -> str:
    """A value that becomes part of a file or directory name (run dir, sample file): never a path."""
    problem = name_problem(value)
    if problem is not None:
        raise FieldProblem(f"{what} {value!r} cannot be used in a file name: {problem}", f"use {SAFE_NAME_RULE}")
    return value


def no_duplicates(names: list[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise FieldProblem(f"{what} {name!r} is listed twice", "list each one once")
        seen.add(name)


def did_you_mean(name: str, known: Any) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


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
        return f"remove it{did_you_mean(name, known)}; allowed fields here: {', '.join(known)}"
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


def validation_error_to_qeval(err: ValidationError, file: str, model: type[BaseModel]) -> QevalError:
    """One message for a failed validation of `model` read from `file`: every problem with its field and fix."""
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
