"""The compute dtype: chosen from what this CPU runs natively, forced by the suite, recorded per cell."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from qeval import compute
from qeval.suite import Suite


def _matmul_seconds(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best of `repeats` for one layer's GEMM of the CPU default model (64 x 576 by 576 x 1536)."""
    a, b = torch.randn(64, 576).to(dtype), torch.randn(576, 1536).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


def test_auto_follows_this_cpus_native_bf16() -> None:
    choice = compute.choose("auto", "bfloat16", device="cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert choice.native is native and choice.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert choice.dtype == ("bfloat16" if native else "float32")
    assert choice.cpu_capability in choice.reason
    if not native:
        # What the choice is for: on this CPU a bf16 GEMM is slower than the fp32 one (an ordering, measured
        # best-of-5; seen 44x on an AVX2 machine), so fp32 from the same weights is the faster exact route.
        assert _matmul_seconds(torch.bfloat16) > _matmul_seconds(torch.float32)


def test_a_cpu_with_native_bf16_keeps_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another machine's CPU cannot be had here: its feature probe is the one thing replaced.
    compute.cpu_native.cache_clear()
    monkeypatch.setattr(compute.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    try:
        choice = compute.choose("auto", "bfloat16", device="cpu")
        assert (choice.dtype, choice.native) == ("bfloat16", True) and "AVX512-BF16 yes" in choice.reason
    finally:
        compute.cpu_native.cache_clear()


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
