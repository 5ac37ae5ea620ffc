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
