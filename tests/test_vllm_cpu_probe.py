"""The probe that decides whether vLLM's CPU INT8 GEMM can run here, before any engine loads a model."""

from __future__ import annotations

import os

import pytest
import torch

from qeval.backends.vllm_cpu_probe import run_int8_gemm_probe

CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


@pytest.mark.slow
def test_the_kernel_vllm_picks_runs_where_nothing_caps_onednn() -> None:
    uncapped = {k: v for k, v in os.environ.items() if k not in CAPS}
    probe = run_int8_gemm_probe(uncapped)
    assert probe.ok, probe
    amx = torch.cpu._is_amx_tile_supported()
    assert probe.route.startswith("AMX sgl kernel" if amx else "oneDNN"), (amx, probe)
    assert float(probe.detail.split()[2]) < 0.05  # "relative error X against float32"


@pytest.mark.slow
def test_onednn_capped_below_the_amx_vllm_chose_is_caught_not_crashed_into() -> None:
    if not torch.cpu._is_amx_tile_supported():
        pytest.skip("no AMX on this CPU: vLLM chooses oneDNN, which a cap cannot break this way")
    probe = run_int8_gemm_probe({**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not probe.ok
    assert "Brgemm" in probe.detail and probe.detail.startswith("exit -6"), probe  # the C++ abort, read back


@pytest.mark.slow
def test_the_onednn_route_every_cpu_without_amx_takes_runs() -> None:
    """vLLM's oneDNN INT8 route (every x86 CPU without AMX), forced here so an AMX machine checks it too.
    The probe once handed oneDNN a contiguous [K, N] weight where vLLM hands a transposed view, and so
    called every INT8 cell on a CPU without AMX NOT RUN ("Expected b.stride(0) == 1", an AMD EPYC)."""
    if not any(f in open("/proc/cpuinfo").read().split() for f in ("avx512_vnni", "avx_vnni")):
        pytest.skip("this CPU has no VNNI: its oneDNN INT8 GEMM saturates (the next test)")
    probe = run_int8_gemm_probe({k: v for k, v in os.environ.items() if k not in CAPS}, force_onednn=True)
    assert probe.ok and probe.route.startswith("oneDNN"), probe
    assert float(probe.detail.split()[2]) < 0.05


@pytest.mark.slow
def test_onednn_without_vnni_saturates_and_the_cell_would_not_run() -> None:
    """Without VNNI (AVX2, or AVX-512 without it) oneDNN sums pairs of u8 x s8 products in int16
    (vpmaddubsw) and saturates: on full-range int8 weights the GEMM is ~14% off (measured on an AMD EPYC,
    capped; ~5% on Gaussian weights of sigma 30, 1% with VNNI). vLLM gives no warning; the probe must say no."""
    env = {**{k: v for k, v in os.environ.items() if k not in CAPS}, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    probe = run_int8_gemm_probe(env, force_onednn=True)
    assert not probe.ok and probe.route.startswith("oneDNN"), probe
    assert float(probe.detail.split()[2]) > 0.05 and "saturates" in probe.detail
