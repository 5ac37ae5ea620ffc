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
"""

from __future__ import annotations

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


@lru_cache(maxsize=None)
def cpu_native(dtype: str) -> tuple[bool, str]:
    """(runs natively, what was seen) for a 16-bit dtype on this CPU."""
    import torch

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if dtype == "bfloat16":
            avx512_bf16, amx = torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported()
            seen = f"AVX512-BF16 {'yes' if avx512_bf16 else 'no'}, AMX {'yes' if amx else 'no'}"
            return avx512_bf16 or amx, seen
        amx_fp16 = torch.cpu._is_amx_fp16_supported()
        avx512_fp16 = "avx512_fp16" in _cpu_flags()
        return amx_fp16 or avx512_fp16, (f"AVX512-FP16 {'yes' if avx512_fp16 else 'no'}, "
                                         f"AMX-FP16 {'yes' if amx_fp16 else 'no'}")
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
                         f"this CPU emulates {weights_dtype} ({capability}; {seen}), so qeval computes in "
                         f"float32 from the same {weights_dtype} weights (several times faster, exact in the "
                         "weights)")
