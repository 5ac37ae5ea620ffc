"""Custom recipes: precisions a suite defines beside the registry, as a base recipe plus ModelOpt config edits.

```yaml
recipes:
  - name: int8_sq_keep_edges
    base: int8_sq
    disable: [lm_head, "model.layers.0.*", "model.layers.29.*"]   # these modules stay in bf16
    smoothquant_alpha: 0.8
  - name: int4_awq_g32
    base: int4_awq
    block_size: 32
    calibration_samples: 64
```

Each edit is a change of the base's ModelOpt config (qeval.precisions.modelopt_config applies them), so the
artifact cache key, which hashes that config, changes with every edit; a different calibration set or size
changes the calibration hash the key also covers. A recipe becomes a registry entry (`Precision.custom`
holds its definition, which the report shows) when its suite is validated.

Checked before anything heavy, one message each (exit 2): an unknown or unquantized base, a name that
shadows a registered precision, a knob the base's algorithm does not have, a `disable` pattern that matches no
module of the real model (module names from the model's own config, on the meta device: no weights read),
a block size on a base without one or one that does not divide the model's widths.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from qeval import precisions
from qeval.errors import QevalError
from qeval.suite_fields import FieldProblem, Strict

# ModelOpt algorithm -> the knob qeval exposes for it (modelopt.torch.quantization.config:
# SmoothQuantCalibConfig.alpha, AWQLiteCalibConfig.alpha_step).
KNOBS = {"smoothquant_alpha": ("smoothquant", "alpha"), "awq_alpha_step": ("awq_lite", "alpha_step")}


class RecipeSpec(Strict):
    """A custom recipe: a registered base precision and the ModelOpt config edits that make it another one."""

    name: str = Field(description="the new precision's name (a candidate names it); not a registered precision")
    base: str = Field(description="the registered quantized precision it starts from, e.g. int8_sq")
    description: str = Field("", description="one line for reports (default: the base's, with the edits)")
    disable: list[str] = Field(default_factory=list, description=(
        "module name patterns (fnmatch, e.g. lm_head, model.layers.0.*) whose quantizers are switched off: "
        "those modules stay in the baseline precision"))
    block_size: PositiveInt | None = Field(None, description="weight block size along the input dimension "
                                           "(bases that have one: int4_awq, w4a8_awq, nvfp4 ...)")
    kv_cache: Literal["fp8"] | None = Field(None, description="quantize the KV cache too (ModelOpt FP8_KV_CFG)")
    calibration: str | None = Field(None, description="another calibration set (name or path) for this recipe")
    calibration_samples: PositiveInt | None = Field(None, description="calibration samples (default: the set's)")
    smoothquant_alpha: float | None = Field(None, ge=0.0, le=1.0, description="SmoothQuant migration strength "
                                            "(bases whose algorithm is smoothquant; ModelOpt's default 1.0)")
    awq_alpha_step: PositiveFloat | None = Field(None, le=1.0, description="AWQ-lite search step (bases whose "
                                                 "algorithm is awq_lite; ModelOpt's default 0.1)")

    def edits(self) -> dict[str, Any]:
        """The edits only (what the report shows beside the base)."""
        return self.model_dump(exclude={"name", "base", "description"}, exclude_defaults=True)


def _algorithm_name(cfg: dict[str, Any]) -> str | None:
    algo = cfg.get("algorithm")
    return algo.get("method") if isinstance(algo, dict) else algo


def check_spec(spec: RecipeSpec) -> None:
    """Checks that need only the registry (run at suite validation). Raises ValueError with a `fix`."""

    existing = precisions.PRECISIONS.get(spec.name)
    if existing is not None and not existing.custom and not existing.external:
        raise FieldProblem(f"recipe name {spec.name!r} is a registered precision",
                           "give the custom recipe a name of its own, e.g. "
                           f"{spec.name}_custom")
    try:
        base = precisions.get(spec.base)
    except QevalError as err:
        raise FieldProblem(f"recipe {spec.name!r}: unknown base {spec.base!r}", err.fix or "") from None
    if base.external is not None:
        raise FieldProblem(f"recipe {spec.name!r}: base {spec.base!r} is an external checkpoint (qeval does not "
                           "quantize it again)", "start from a registered precision, e.g. int8_sq")
    if base.custom:
        raise FieldProblem(f"recipe {spec.name!r}: base {spec.base!r} is itself a custom recipe",
                           "start from a registered precision and list all the edits")
    if base.is_baseline:
        raise FieldProblem(f"recipe {spec.name!r}: base {spec.base!r} is the unquantized baseline",
                           "start from a quantized precision, e.g. int8_sq, fp8, int4_awq_g64")
    if spec.block_size is not None and base.block_size is None:
        with_blocks = [p.name for p in precisions.PRECISIONS.values() if p.block_size and not p.custom]
        raise FieldProblem(f"recipe {spec.name!r}: base {spec.base!r} has no weight block size to set",
                           f"drop block_size, or start from one of {', '.join(with_blocks)}")
    algorithm = _algorithm_name(precisions.modelopt_config(base) or {})
    for knob, (needs, _) in KNOBS.items():
        if getattr(spec, knob) is not None and algorithm != needs:
            raise FieldProblem(f"recipe {spec.name!r}: {knob} applies to the {needs} algorithm, but base "
                               f"{spec.base!r} calibrates with {algorithm!r}",
                               f"drop {knob}, or start from a base calibrated with {needs}")


def to_precision(spec: RecipeSpec) -> precisions.Precision:
    """The registry entry of a custom recipe: the base's entry, renamed, with the edits."""
    base = precisions.get(spec.base)
    edits = spec.edits()
    described = ", ".join(f"{k}={v}" for k, v in edits.items())
    description = spec.description or f"{base.description} [custom: {spec.base} + {described or 'no edits'}]"
    changes: dict[str, Any] = {"name": spec.name, "description": description,
                               "custom": MappingProxyType({"base": spec.base, **json.loads(json.dumps(edits))})}
    if spec.block_size is not None:
        changes["block_size"] = spec.block_size
    if spec.kv_cache == "fp8":
        changes.update(modelopt_kv_cfg="FP8_KV_CFG", trtllm_kv_cache_quant_algo="FP8")
        if base.vllm.checkpoint is not None:
            changes["vllm"] = replace(base.vllm, checkpoint=MappingProxyType({**base.vllm.checkpoint,
                                                                             "kv_cache_dtype": "fp8"}))
    return replace(base, **changes)


def register(specs: list[RecipeSpec]) -> None:
    """Put a suite's recipes into the registry (a recipe of the same name from an earlier suite is replaced)."""
    for spec in specs:
        precisions.register_custom(to_precision(spec))


def apply_edits(cfg: dict[str, Any], custom: Any) -> dict[str, Any]:
    """A ModelOpt config with a custom recipe's `disable` patterns and algorithm knobs applied (a copy)."""
    cfg = copy.deepcopy(cfg)
    entries = list(cfg.get("quant_cfg") or [])
    for pattern in custom.get("disable", ()):
        # Every quantizer of every module the pattern names (ModelOpt matches quantizer names with fnmatch).
        entries.append({"quantizer_name": f"{pattern}.*", "enable": False})
    cfg["quant_cfg"] = entries
    for knob, (method, key) in KNOBS.items():
        if custom.get(knob) is not None:
            algo = cfg.get("algorithm")
            cfg["algorithm"] = {**(algo if isinstance(algo, dict) else {"method": algo}), "method": method,
                                key: custom[knob]}
    return cfg


def module_names(model_dir: Path, trust_remote_code: bool = False) -> list[str]:
    """The model's module names, built from its config on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return [name for name, _ in model.named_modules() if name]


def check_against_model(specs: list[RecipeSpec], model_dir: Path, suite_file: str,
                        trust_remote_code: bool = False) -> None:
    """Every `disable` pattern names a module of this model; every block size divides its widths."""
    if not specs:
        return
    names = module_names(model_dir, trust_remote_code)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for i, spec in enumerate(specs):
        for j, pattern in enumerate(spec.disable):
            if not fnmatch.filter(names, pattern):
                sample = ", ".join(n for n in names if n.count(".") <= 3 and "layers.0" in n or "." not in n)
                raise QevalError(f"recipe {spec.name!r}: disable pattern {pattern!r} matches no module of "
                                 f"{model_dir}", file=suite_file, field=f"recipes[{i}].disable[{j}]",
                                 fix=f"use fnmatch patterns over module names, e.g. lm_head, model.layers.0.*, "
                                     f"*.mlp.down_proj (this model has: {sample[:300]} ...)")
        try:
            precisions.check_compatible(spec.name, config, source=str(config_path))
        except QevalError as err:
            raise QevalError(err.problem, file=suite_file, field=f"recipes[{i}].block_size",
                             fix="use a block size that divides every width listed (e.g. 64 or 32 for "
                                 "hidden 576), or drop block_size") from None


def definitions(specs: list[RecipeSpec]) -> list[dict[str, Any]]:
    """What the report shows for each custom recipe: name, base, edits."""
    return [{"name": s.name, "base": s.base, "edits": s.edits(),
             "description": precisions.get(s.name).description} for s in specs]
