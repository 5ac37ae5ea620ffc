"""The compute dtype: chosen from what this CPU runs natively, forced by the suite, recorded per cell."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from qeval import compute
from qeval.suite import Suite


def _gemm_seconds() -> dict[torch.dtype, float]:
    """Best of 15 per dtype, alternating bf16 and fp32, one thread, for one layer's GEMM of the CPU default model
    (64 x 576 by 576 x 1536): other processes on shared cores slow both alike, and one thread waits on no barrier
    that a core another process holds would stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pairs = {d: (torch.randn(64, 576).to(d), torch.randn(576, 1536).to(d)) for d in (torch.bfloat16, torch.float32)}
        best = {d: float("inf") for d in pairs}
        for _ in range(15):
            for d, (a, b) in pairs.items():
                t0 = time.perf_counter()
                a @ b
                best[d] = min(best[d], time.perf_counter() - t0)
        return best
    finally:
        torch.set_num_threads(threads)


def test_auto_follows_this_cpus_native_bf16() -> None:
    choice = compute.choose("auto", "bfloat16", device="cpu")
    has_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    capability = torch.backends.cpu.get_cpu_capability()
    assert choice.cpu_capability == capability and capability in choice.reason
    # Native needs the instructions and torch dispatching to them: no CPUID bf16 is never native; CPUID bf16
    # with torch's capability AVX512 and oneDNN uncapped (this process's environment) is native.
    if not has_bf16:
        assert choice.native is False
    elif capability == "AVX512" and compute.onednn_isa_cap() is None and torch.backends.mkldnn.enabled:
        assert choice.native is True
    assert choice.dtype == ("bfloat16" if choice.native else "float32")
    if not choice.native:
        # What the choice is for: on this CPU a bf16 GEMM is slower than the fp32 one (an ordering, measured
        # best-of-15; seen 10.7x on an AVX2 EPYC, 46x under ONEDNN_MAX_CPU_ISA=AVX2 on an AMX Xeon), so fp32 from
        # the same weights is the faster exact route.
        best = _gemm_seconds()
        assert best[torch.bfloat16] > best[torch.float32], best


def test_a_cpu_with_native_bf16_keeps_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another machine's CPU cannot be had here: its feature probes are the one thing replaced (CPUID and the
    # capability torch would dispatch to there; no dispatch cap in the environment).
    compute.cpu_native.cache_clear()
    monkeypatch.setattr(compute.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(var, raising=False)
    try:
        choice = compute.choose("auto", "bfloat16", device="cpu")
        assert (choice.dtype, choice.native) == ("bfloat16", True) and "AVX512-BF16 yes" in choice.reason
    finally:
        compute.cpu_native.cache_clear()


_CHOOSE_IN_A_SUBPROCESS = """
import json, time, torch
from qeval import compute
c = compute.choose("auto", "bfloat16", device="cpu")
torch.set_num_threads(1)  # one thread: no thread barrier waiting on a core another process holds
pairs = {d: (torch.randn(64, 576).to(d), torch.randn(576, 1536).to(d)) for d in (torch.bfloat16, torch.float32)}
best = {d: float("inf") for d in pairs}
for _ in range(15):  # alternating, best of 15: other processes on the shared cores slow both alike
    for d, (a, b) in pairs.items():
        t0 = time.perf_counter(); a @ b; best[d] = min(best[d], time.perf_counter() - t0)
print(json.dumps({**c.as_record(), "cpuid_bf16": torch.cpu._is_avx512_bf16_supported() or
                  torch.cpu._is_amx_tile_supported(), "bf16_s": best[torch.bfloat16], "fp32_s": best[torch.float32]}))
"""


@pytest.mark.parametrize("env, named", [
    # The AVX2-only CPU as CI may get it, emulated on a bigger one: every library capped at AVX2.
    ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
     ["AVX2", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"]),
    # oneDNN alone capped below its bf16 ISA (torch's own kernels still AVX512): the matmuls are emulated.
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, ["oneDNN capped at AVX512_CORE"]),
    # torch's kernels alone capped at AVX2: a bf16 model then fails outright here ("pack_vnni2 is only supported
    # when avx512 is supported", seen on an AMX Xeon), so AVX2 dispatch is never native bf16.
    ({"ATEN_CPU_CAPABILITY": "avx2"}, ["AVX2", "torch dispatches AVX2 kernels"]),
])
def test_a_dispatch_capped_below_native_bf16_computes_in_float32(env: dict[str, str], named: list[str]) -> None:
    import json
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    proc = subprocess.run([sys.executable, "-c", _CHOOSE_IN_A_SUBPROCESS], env={**clean, **env},
                          capture_output=True, text=True, check=True)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (seen["dtype"], seen["native"]) == ("float32", False), seen
    for text in named:
        assert text in seen["reason"], (text, seen["reason"])
    if seen["cpuid_bf16"] and "ONEDNN_MAX_CPU_ISA" in env:
        # The instructions are there but the cap keeps oneDNN off them: the bf16 GEMM is emulated (slower than
        # fp32; an ordering, not a time), which is what makes the cap an honest emulation of a smaller CPU.
        assert seen["bf16_s"] > seen["fp32_s"], seen


def test_an_uncapped_or_unknown_onednn_cap_leaves_the_choice_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in [("ALL", None), ("default", None), ("AVX2", ("ONEDNN_MAX_CPU_ISA", "AVX2"))]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", value)
        assert compute.onednn_isa_cap() == expected
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert compute._onednn_allows("avx512_core_bf16")[0] and not compute._onednn_allows("avx512_core_amx")[0]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx10_1_512_amx")
    assert compute._onednn_allows("avx512_core_amx")[0]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "NOT_AN_ISA")
    allowed, text = compute._onednn_allows("avx512_core_bf16")
    assert allowed and "not an ISA oneDNN knows" in text


@pytest.mark.parametrize("forced", ["bfloat16", "float32", "float16"])
def test_the_suite_can_force_a_dtype(forced: str) -> None:
    choice = compute.choose(forced, "bfloat16", device="cpu")
    assert (choice.dtype, choice.requested) == (forced, forced) and "model.compute_dtype" in choice.reason


def test_float32_weights_compute_in_float32() -> None:
    assert compute.choose("auto", "float32", device="cpu").dtype == "float32"


def test_suite_field_defaults_to_auto_and_refuses_unknown_dtypes() -> None:
    base = {"name": "s", "candidates": ["fp8"], "tasks": [{"name": "bigbench_mc_physics"}]}
    assert Suite.model_validate(base).model.compute_dtype == "auto"
    with pytest.raises(ValueError):
        Suite.model_validate({**base, "model": {"compute_dtype": "float64"}})


def test_load_hf_model_computes_in_the_chosen_dtype(qeval_model_dir: Path) -> None:
    from qeval.backends.hf import HFBackend, load_hf_model

    auto = load_hf_model(qeval_model_dir)
    assert next(auto.parameters()).dtype == getattr(torch, compute.choose("auto", "bfloat16", device="cpu").dtype)
    forced = HFBackend(load_hf_model(qeval_model_dir, "float32"), None)
    assert forced.capabilities.compute_dtype == "float32"
