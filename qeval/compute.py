"""Which dtype the reference engines compute in, chosen from what this machine runs natively.

The baseline's weights are bf16, but a CPU without native bf16 instructions
(x86 without AVX-512-BF16 or AMX, Arm without the BF16 extension) has torch
emulate every bf16 matmul: measured on a 2-core AVX2 machine, 44x slower than
fp32 for one layer's GEMM and 6x for the whole forward pass. Computing in fp32
from the same bf16 weights is exact in the weights and more precise in the
activations, so on such a CPU `auto` computes in fp32. The choice and its
reason are recorded in the manifest and in every cell's status, because the
two dtypes give slightly different numbers (bf16 vs fp32 compute of the same
weights is itself a measurable divergence: benchmarks/bench_compute_dtype.py).

"Native" is what torch will dispatch to in this process, not CPUID alone: ATEN_CPU_CAPABILITY below AVX512
or ONEDNN_MAX_CPU_ISA below avx512_core_bf16 make bf16 emulated on any CPU (which is how an AVX2-only CPU is
emulated on a bigger one: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]


@dataclass(frozen=True)
class ComputeChoice:
    """The dtype a run computes in, and why.

    Attributes:
        dtype: "bfloat16", "float16" or "float32".
        requested: what the suite asked for ("auto" or a dtype).
        weights_dtype: the baseline's dtype (model.dtype).
        device: "cpu" or "cuda".
        native: whether this device runs `weights_dtype` natively (None where not probed).
        cpu_capability: torch's CPU capability string (e.g. "AVX2", "AVX512"), on CPU.
        reason: one sentence for the manifest and the report.
    """

    dtype: str
    requested: str
    weights_dtype: str
    device: str
    native: bool | None
    cpu_capability: str | None
    reason: str

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_flags() -> set[str]:
    """Feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


# oneDNN's ISA names in its documented order (CPU Dispatcher Control: each level includes those before it).
# torch runs bf16 and fp16 matmuls through oneDNN; ONEDNN_MAX_CPU_ISA (or the older DNNL_MAX_CPU_ISA) caps what
# it dispatches to, whatever CPUID says. Names of one level are aliases (oneDNN 3.x renamed the AVX10 ones).
_ONEDNN_ISA_LEVELS: tuple[tuple[str, ...], ...] = (
    ("sse41",), ("avx",), ("avx2",), ("avx2_vnni",), ("avx2_vnni_2",), ("avx512_core",), ("avx512_core_vnni",),
    ("avx512_core_bf16",), ("avx512_core_fp16", "avx10_1_512"), ("avx512_core_amx", "avx10_1_512_amx"),
    ("avx512_core_amx_fp16", "avx10_1_512_amx_fp16"), ("avx10_2_512",), ("avx10_2_512_amx_2",),
)
_ONEDNN_LEVEL = {name: i for i, names in enumerate(_ONEDNN_ISA_LEVELS) for name in names}


def onednn_isa_cap() -> tuple[str, str] | None:
    """(variable, value) of the oneDNN ISA cap this process runs under; None where nothing caps it."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip()
        if value:
            return None if value.lower() in ("all", "default") else (var, value)
    return None


def _onednn_allows(isa: str) -> tuple[bool, str | None]:
    """(oneDNN may dispatch to `isa`, what the cap is, as text) under this process's ONEDNN_MAX_CPU_ISA."""
    cap = onednn_isa_cap()
    if cap is None:
        return True, None
    var, value = cap
    level = _ONEDNN_LEVEL.get(value.lower())
    if level is None:  # oneDNN ignores a value it does not know; so does this check, and says so
        return True, f"{var}={value} (not an ISA oneDNN knows: ignored)"
    return level >= _ONEDNN_LEVEL[isa], f"oneDNN capped at {value} ({var})"


def _torch_dispatch(feature_isa: dict[str, tuple[bool, str]]) -> tuple[bool, str]:
    """(some present feature is what torch will actually run, what was seen) for {feature: (present, oneDNN ISA)}.

    CPUID alone is not what runs: torch's ATen kernels dispatch to its CPU capability (ATEN_CPU_CAPABILITY caps
    it), and the 16-bit matmuls go through oneDNN, which ONEDNN_MAX_CPU_ISA caps and which may be off. A bf16
    matmul on this code path with oneDNN capped at AVX2 was measured 46x slower than fp32 on an AMX Xeon: it is
    emulated there as on an AVX2-only CPU.
    """
    import torch

    seen = [f"{name} {'yes' if present else 'no'}" for name, (present, _) in feature_isa.items()]
    capability = torch.backends.cpu.get_cpu_capability()
    blockers = []
    if capability != "AVX512":
        blockers.append(f"torch dispatches {capability} kernels"
                        + (" (ATEN_CPU_CAPABILITY)" if os.environ.get("ATEN_CPU_CAPABILITY") else ""))
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        blockers.append("oneDNN is off in this torch")
    usable = False
    for present, isa in feature_isa.values():
        allowed, cap_text = _onednn_allows(isa)
        if cap_text and cap_text not in seen:
            seen.append(cap_text)
        usable = usable or (present and allowed)
    if any(present for present, _ in feature_isa.values()) and not usable:
        blockers.append("oneDNN may not use them")
    seen += blockers
    return usable and not blockers, ", ".join(seen)


@lru_cache(maxsize=None)
def cpu_native(dtype: str) -> tuple[bool, str]:
    """(runs natively, what was seen) for a 16-bit dtype on this CPU, as torch will dispatch it in this process.

    Native needs the instructions (CPUID) and torch using them: its CPU capability AVX512 and oneDNN allowed
    the ISA that has them (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA cap both, and emulate a smaller CPU).
    """
    import torch

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if dtype == "bfloat16":
            return _torch_dispatch({"AVX512-BF16": (torch.cpu._is_avx512_bf16_supported(), "avx512_core_bf16"),
                                    "AMX": (torch.cpu._is_amx_tile_supported(), "avx512_core_amx")})
        return _torch_dispatch({"AVX512-FP16": ("avx512_fp16" in _cpu_flags(), "avx512_core_fp16"),
                                "AMX-FP16": (torch.cpu._is_amx_fp16_supported(), "avx512_core_amx_fp16")})
    if machine in ("aarch64", "arm64"):
        flags = _cpu_flags()
        flag = "bf16" if dtype == "bfloat16" else "fphp"
        return flag in flags, f"Arm feature {flag!r} {'present' if flag in flags else 'absent'}"
    return False, f"no probe for {machine}"


def choose(requested: str = "auto", weights_dtype: str = "bfloat16", device: str | None = None) -> ComputeChoice:
    """The compute dtype for `device` (default: cuda where there is one, else cpu).

    Args:
        requested: "auto" (choose from the hardware) or a dtype the suite forces.
        weights_dtype: the baseline's dtype.
        device: "cpu" or "cuda"; None detects.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    capability = torch.backends.cpu.get_cpu_capability() if device == "cpu" else None
    if requested != "auto":
        return ComputeChoice(requested, requested, weights_dtype, device, None, capability,
                             f"{requested} as the suite asks (model.compute_dtype)")
    if weights_dtype == "float32":
        return ComputeChoice("float32", requested, weights_dtype, device, True, capability,
                             "the weights are float32")
    if device == "cuda":
        native = bool(torch.cuda.is_bf16_supported()) if weights_dtype == "bfloat16" else True
        name = torch.cuda.get_device_name(0)
        if native:
            return ComputeChoice(weights_dtype, requested, weights_dtype, device, True, None,
                                 f"{weights_dtype} runs natively on {name}")
        return ComputeChoice("float32", requested, weights_dtype, device, False, None,
                             f"{name} has no native {weights_dtype}: float32 from the same weights")
    native, seen = cpu_native(weights_dtype)
    if native:
        return ComputeChoice(weights_dtype, requested, weights_dtype, device, True, capability,
                             f"{weights_dtype} runs natively on this CPU ({capability}; {seen})")
    return ComputeChoice("float32", requested, weights_dtype, device, False, capability,
                         f"torch emulates {weights_dtype} on this CPU as it dispatches here ({capability}; {seen}), "
                         f"so qeval computes in float32 from the same {weights_dtype} weights (several times faster, "
                         "exact in the weights)")
