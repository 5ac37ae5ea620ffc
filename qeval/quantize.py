"""ModelOpt post-training quantization: simulated on CPU, real checkpoints for the engines.

`quantize_simulated` gives the HF backend a fake-quantized model (weights and
activations rounded to the target format, math in the run's compute dtype): it measures quality,
never speed, and every output says "simulated quantization (ModelOpt
fake-quant)". `export_checkpoint` writes ModelOpt's unified HF checkpoint
(hf_quant_config.json) that vLLM and TensorRT-LLM load: one artifact for both.
Both are cached by `qeval.artifacts` (a second run skips calibration).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from qeval import artifacts, precisions
from qeval.calibration import CalibrationSet, load_calibration

log = logging.getLogger(__name__)
STATE_FILE = "modelopt_state.pt"


def calibration_for(ctx: Any, precision: str | None = None) -> CalibrationSet:
    """The calibration set of `precision`: the suite's (loaded once per run, overlap with eval tasks refused),
    or the one a custom recipe names or resizes (qeval.recipes)."""
    custom = precisions.get(precision).custom if precision is not None else None
    if custom and (custom.get("calibration") or custom.get("calibration_samples")):
        return _recipe_calibration(ctx, custom)
    cached = ctx.calibration
    if cached is None:
        from qeval.errors import QevalError

        if ctx.suite.calibration is None:
            raise QevalError("the suite quantizes candidates but names no calibration set", field="calibration",
                             fix="add e.g. `calibration: bigbench-mixed` (see calibration_sets/)")
        cached = load_calibration(ctx.suite.calibration, [t.name for t in ctx.suite.tasks], ctx.tokenizer)
        ctx.calibration = cached
    return cached


def _recipe_calibration(ctx: Any, custom: Any) -> CalibrationSet:
    from qeval.errors import QevalError

    name = custom.get("calibration") or ctx.suite.calibration
    if name is None:
        raise QevalError("a custom recipe resizes the calibration set but the suite names none",
                         field="calibration", fix="add e.g. `calibration: bigbench-mixed` to the suite")
    cache = ctx.__dict__.setdefault("_recipe_calibrations", {})
    key = (name, custom.get("calibration_samples"))
    if key not in cache:
        cache[key] = load_calibration(name, [t.name for t in ctx.suite.tasks], ctx.tokenizer,
                                      num_samples=custom.get("calibration_samples"))
    return cache[key]


def _forward_loop(calibration: CalibrationSet, counter: list[int]):
    def loop(model: torch.nn.Module) -> None:
        device = next(model.parameters()).device
        with torch.inference_mode():
            for seq in calibration.calibration:
                model(input_ids=torch.tensor([seq], device=device))
                counter[0] += 1
    return loop


def _quantize_in_place(model: torch.nn.Module, precision: str, calibration: CalibrationSet) -> int:
    """Run ModelOpt PTQ on `model`; returns the number of calibration forward passes."""
    import modelopt.torch.quantization as mtq

    from qeval import nvfp4_cpu

    if next(model.parameters()).device.type == "cpu":
        nvfp4_cpu.install()
    counter = [0]
    mtq.quantize(model, precisions.modelopt_config(precision), _forward_loop(calibration, counter))
    return counter[0]


CT_KIND = "compressed-tensors-checkpoint"
KINDS = {"modelopt": "modelopt-hf-checkpoint", "compressed-tensors": CT_KIND}


def _recipe(precision: str, kind: str) -> Any:
    """What the artifact is made from: the ModelOpt config, and for compressed-tensors the writer's version."""
    cfg = precisions.modelopt_config(precision)
    if kind != CT_KIND:
        return cfg
    from importlib import metadata

    from qeval.export_ct import EXPORT_VERSION

    return {"modelopt": cfg, "export": EXPORT_VERSION, "compressed-tensors": metadata.version("compressed-tensors")}


def _key(ctx: Any, precision: str, kind: str) -> str:
    from qeval.assets.model import model_hash

    if ctx.model_hash is None:
        ctx.model_hash = model_hash(ctx.model_dir)
    return artifacts.artifact_key(kind=kind, model_hash=ctx.model_hash, precision=precision,
                                  recipe=_recipe(precision, kind),
                                  calibration_hash=calibration_for(ctx, precision).content_hash,
                                  versions=artifacts.tool_versions(), device=artifacts.device_class(),
                                  compute_dtype=ctx.compute.dtype)


def artifact_key_for(ctx: Any, precision: str, kind: str) -> str:
    """The artifact-cache key a cell of this run will build or reuse for `precision` (kind "modelopt-fakequant",
    "modelopt-hf-checkpoint" or "compressed-tensors-checkpoint"): named in the manifest before the cell runs
    (qeval.provenance)."""
    return _key(ctx, precision, kind)


def quantize_simulated(model: torch.nn.Module, precision: str, ctx: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fake-quantize `model` in place for `precision`, from the artifact cache when possible.

    Returns:
        (the model, what happened: artifact key, reused or built, seconds, calibration passes).
    """
    import modelopt.torch.opt as mto
    import modelopt.torch.quantization as mtq

    from qeval import nvfp4_cpu

    precisions.check_compatible(precision, model.config.to_dict())
    if next(model.parameters()).device.type == "cpu":
        nvfp4_cpu.install()
    calibration = calibration_for(ctx, precision)
    key = _key(ctx, precision, "modelopt-fakequant")
    info: dict[str, Any] = {}

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        passes = _quantize_in_place(model, precision, calibration)
        mto.save(model, folder / STATE_FILE)
        info.update(calibration_passes=passes, quantize_seconds=round(time.perf_counter() - started, 2))
        return dict(info, precision=precision)

    folder, built = artifacts.get_or_build(key, build, label=f"{precision} fake-quant")
    if not built:
        started = time.perf_counter()
        mto.restore(model, folder / STATE_FILE)
        info.update(restored_seconds=round(time.perf_counter() - started, 2))
    # Replace each weight by its quantized value once, instead of re-quantizing it on every
    # forward pass: the same numbers, several times faster for evaluation.
    mtq.fold_weight(model)
    return model, {"key": key, "reused": not built, **artifacts.read_manifest(folder)["info"], **info}


def export_checkpoint(ctx: Any, precision: str, fmt: str = "modelopt") -> Path:
    """A checkpoint of `precision` for the engines, cached: ModelOpt's unified HF export (fmt "modelopt", for
    vLLM's ModelOpt loader and TensorRT-LLM) or the same calibration as compressed-tensors INT8 W8A8 (fmt
    "compressed-tensors", qeval.export_ct: vLLM's INT8 path)."""
    from modelopt.torch.export import export_hf_checkpoint

    from qeval.backends.hf import load_hf_model

    if precisions.get(precision).is_baseline:
        return Path(ctx.model_dir)
    if fmt == "compressed-tensors":
        return _export_compressed_tensors(ctx, precision)
    key = _key(ctx, precision, "modelopt-hf-checkpoint")

    def build(folder: Path) -> dict[str, Any]:
        from qeval.backends.hf import default_device

        from qeval.backends.hf import resolve_dtype

        device = default_device()
        # Calibrated in the run's compute dtype (float32 on a CPU that emulates bf16), written in the
        # baseline's dtype: the engines load the same checkpoint whatever computed the scales.
        model = load_hf_model(ctx.model_dir, ctx.compute.dtype, device=device,
                              trust_remote_code=ctx.suite.model.trust_remote_code)
        precisions.check_compatible(precision, model.config.to_dict())
        passes = _quantize_in_place(model, precision, calibration_for(ctx, precision))
        export_hf_checkpoint(model, dtype=resolve_dtype(ctx.suite.model.dtype), export_dir=folder)
        ctx.tokenizer.save_pretrained(folder)
        return {"precision": precision, "calibration_passes": passes, "device": device,
                "compute_dtype": ctx.compute.dtype}

    folder, _ = artifacts.get_or_build(key, build, label=f"{precision} checkpoint")
    return folder


def _export_compressed_tensors(ctx: Any, precision: str) -> Path:
    from qeval import export_ct
    from qeval.backends.hf import default_device, load_hf_model

    key = _key(ctx, precision, CT_KIND)

    def build(folder: Path) -> dict[str, Any]:
        device = default_device()
        trust = ctx.suite.model.trust_remote_code
        model = load_hf_model(ctx.model_dir, ctx.compute.dtype, device=device, trust_remote_code=trust)
        precisions.check_compatible(precision, model.config.to_dict())
        calibration = calibration_for(ctx, precision)
        passes = _quantize_in_place(model, precision, calibration)
        # Written in the baseline's dtype, like ModelOpt's export: the engine loads what a user would ship.
        plain = load_hf_model(ctx.model_dir, ctx.suite.model.dtype, device="cpu", trust_remote_code=trust)
        info = export_ct.export(model, plain, folder, ctx.tokenizer, _forward_loop(calibration, [0]))
        return {"precision": precision, "calibration_passes": passes, "device": device,
                "compute_dtype": ctx.compute.dtype, **info}

    folder, _ = artifacts.get_or_build(key, build, label=f"{precision} compressed-tensors checkpoint")
    return folder
