"""Latency probes: metric definitions, load shapes, warm-up exclusion, the probe's own cost.

Definitions are checked on hand-built streams with known timestamps; the load
generator runs against the real HF backend (SmolLM2-135M, a few tokens) and,
for its overhead, against a source that yields pre-built events instantly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from qeval import latency
from qeval.backends.base import GenerationRequest, TokenEvent
from qeval.errors import QevalError
from qeval.gate import LatencyEvidence
from qeval.loadgen import LoadRun, LoadShape, RequestRecord, poisson_schedule, run_load


def ev(t: float, n: int = 1) -> TokenEvent:
    return TokenEvent(text="x" * n, n_tokens=n, t=t)


# ----------------------------------------------------------------------------
# Definitions on synthetic streams
# ----------------------------------------------------------------------------

def test_request_metrics_on_a_known_stream() -> None:
    # Sent at 10.000; chunks at .100 (1 token), .150 (1), a keep-alive with no token at .200,
    # .300 (a chunk of 2 tokens), .350 (1): 5 tokens in 4 chunks.
    events = [ev(10.100), ev(10.150), ev(10.200, 0), ev(10.300, 2), ev(10.350)]
    m = latency.measure(10.0, events)
    assert m.ttft == pytest.approx(0.100)
    assert m.e2e == pytest.approx(0.350)
    assert m.output_tokens == 5 and m.chunks == 4
    # One gap per chunk (a 2-token chunk gives one gap, as vLLM's client counts), the keep-alive none.
    assert m.itl == pytest.approx((0.050, 0.150, 0.050))
    assert sum(m.itl) == pytest.approx(m.e2e - m.ttft)
    assert m.tpot == pytest.approx((0.350 - 0.100) / (5 - 1))


def test_one_token_has_no_tpot_and_no_token_is_no_measurement() -> None:
    m = latency.measure(1.0, [ev(1.25)])
    assert (m.ttft, m.e2e, m.tpot, m.itl, m.output_tokens) == (pytest.approx(0.25), pytest.approx(0.25), None, (), 1)
    assert latency.measure(1.0, [ev(1.1, 0)]) is None
    assert latency.measure(1.0, []) is None


def _record(i: int, t_send: float, times: list[float], *, warmup: bool = False, n: int = 1) -> RequestRecord:
    return RequestRecord(index=i, warmup=warmup, t_send=t_send, events=[ev(t, n) for t in times],
                         t_done=times[-1] + 0.001)


def _synthetic_run(scale: float = 1.0, warmups: int = 2) -> LoadRun:
    """Four measured requests with 4 tokens each, at known times (scale stretches every gap)."""
    warm = [_record(i, -5.0 + i, [-4.0 + i, -3.9 + i, -3.8 + i, -3.7 + i], warmup=True) for i in range(warmups)]
    measured = []
    for i in range(4):
        t0 = 0.5 * i
        ttft, gap = scale * (0.1 + 0.01 * i), scale * 0.02 * (i + 1)
        measured.append(_record(i, t0, [t0 + ttft + k * gap for k in range(4)]))
    t_end = max(r.t_done for r in measured)
    return LoadRun(shape=LoadShape.closed(2), records=warm + measured, t_start=0.0, t_end=t_end, max_in_flight=2)


def test_load_point_throughput_percentiles_and_warmup_exclusion() -> None:
    run = _synthetic_run()
    point, rows = latency.load_point_record(run, confidence=0.9, expected_output_tokens=4)
    duration = run.t_end  # t_start is 0
    assert point["warmup_excluded"] == 2 and point["completed"] == 4 and point["failed"] == 0
    assert point["wrong_length"] == 0
    assert point["requests_per_s"] == pytest.approx(4 / duration)
    assert point["output_tokens_per_s"] == pytest.approx(16 / duration)
    assert sum(s["warmup"] for s in point["requests"]) == 2  # kept, flagged
    ttft = [1e3 * (0.1 + 0.01 * i) for i in range(4)]
    tpot = [1e3 * 0.02 * (i + 1) for i in range(4)]
    s = point["summary"]
    assert s["ttft"]["p50"]["value_ms"] == pytest.approx(np.percentile(ttft, 50))
    assert s["ttft"]["p99"]["value_ms"] == pytest.approx(np.percentile(ttft, 99))
    assert s["tpot"]["mean_ms"] == pytest.approx(np.mean(tpot))
    assert s["itl"]["n"] == 12 and s["e2e"]["n"] == 4  # warm-ups are in neither
    # Per-request columns of the measured requests (what the report's speed-ups read).
    assert point["ttft_ms"] == pytest.approx(ttft) and point["tpot_ms"] == pytest.approx(tpot)
    assert point["output_tokens"] == [4] * 4 and point["total_output_tokens"] == 16
    # Rows are exactly what evidence.collect turns into gate.LatencyEvidence.
    wanted = {f.name for f in dataclasses.fields(LatencyEvidence)} - {"candidate", "backend"}
    for row in rows:
        assert set(row) == wanted
        assert row["warmup_excluded"] == 2 and row["concurrency"] == 2 and row["request_rate"] is None
        lo, hi = row["ci_ms"]
        if row["metric"] == "itl":  # cluster bootstrap
            assert lo <= row["value_ms"] <= hi
        else:  # order statistics: ends are observed values, or None where 4 requests cannot give one
            observed = set(point[f"{row['metric']}_ms"])
            assert all(end is None or end in observed for end in (lo, hi))
            if row["percentile"] == 99:
                assert hi is None
        LatencyEvidence(candidate="fp8", backend="hf", **row)
    assert {(r["metric"], r["percentile"]) for r in rows} == {(m, q) for m in latency.METRICS
                                                               for q in latency.PERCENTILES}


def test_itl_interval_resamples_requests_not_gaps() -> None:
    # One request is uniformly slow: a gap-level bootstrap would treat its 30 gaps as 30
    # independent draws and give a narrow interval; resampling requests does not.
    groups = [[10.0] * 30 for _ in range(9)] + [[50.0] * 30]
    est, (lo, hi), n = latency.clustered_percentile_ci(groups, 95, confidence=0.9, seed=1)
    assert n == 300 and est == pytest.approx(np.percentile(np.concatenate(groups), 95))
    assert lo == 10.0 and hi == 50.0
    assert latency.clustered_percentile_ci([[1.0, 2.0]], 50) == (1.5, (1.5, 1.5), 2)


def test_speedup_from_saved_samples() -> None:
    base, _ = latency.load_point_record(_synthetic_run(scale=2.0), confidence=0.9)
    cand, _ = latency.load_point_record(_synthetic_run(scale=1.0), confidence=0.9)
    workload = {"input_tokens": 8, "output_tokens": 4, "prompts_sha256": "abc"}
    out = latency.compare({"workload": workload, "loads": [base]},
                          {"workload": workload, "loads": [cand]}, n_resamples=500)
    by = {r["metric"]: r for r in out}
    for metric in ("ttft", "tpot", "itl"):  # every gap and TTFT halved: exactly 2x faster
        assert by[metric]["speedup"] == pytest.approx(2.0)
        assert by[metric]["ci"][0] <= 2.0 <= by[metric]["ci"][1]
    assert by["output_tokens_per_s"]["speedup"] == pytest.approx(base["duration_s"] / cand["duration_s"])
    with pytest.raises(QevalError, match="different workloads"):
        latency.compare({"workload": workload, "loads": [base]},
                        {"workload": {**workload, "output_tokens": 8}, "loads": [cand]})


# ----------------------------------------------------------------------------
# Workload and schedules
# ----------------------------------------------------------------------------

def test_poisson_schedule_is_seeded_and_has_the_right_rate() -> None:
    a, b = poisson_schedule(20_000, 5.0, seed=7), poisson_schedule(20_000, 5.0, seed=7)
    assert np.array_equal(a, b) and a[0] == 0.0 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, poisson_schedule(20_000, 5.0, seed=8))
    assert (len(a) - 1) / a[-1] == pytest.approx(5.0, rel=0.03)  # SE of the rate here is 0.7%
    assert sps.kstest(np.diff(a), "expon", args=(0, 1 / 5.0)).pvalue > 0.01
    with pytest.raises(QevalError, match="rate must be > 0"):
        poisson_schedule(3, 0.0, seed=0)


def test_synthetic_prompts_exact_length_deterministic_distinct(qeval_tokenizer) -> None:
    p = latency.synthetic_prompts(qeval_tokenizer, 40, 128, seed=3)
    assert p == latency.synthetic_prompts(qeval_tokenizer, 40, 128, seed=3)
    assert p != latency.synthetic_prompts(qeval_tokenizer, 40, 128, seed=4)
    assert all(len(x) == 128 for x in p)
    assert len({x[0] for x in p}) == 40  # no two prompts share a prefix-cache block
    special = set(qeval_tokenizer.all_special_ids)
    assert not any(t in special for x in p for t in x)


# ----------------------------------------------------------------------------
# The load generator on real and instant sources
# ----------------------------------------------------------------------------

class InstantSource:
    """Yields pre-built events as fast as Python can: what is left is the probe's own cost."""

    name = "instant"

    def __init__(self, n_tokens: int) -> None:
        now = time.perf_counter()
        self.events = [TokenEvent(text="", n_tokens=1, t=now) for _ in range(n_tokens)]

    def stream(self, request: GenerationRequest):
        yield from self.events[: request.max_tokens]


class CannotStream:
    name = "nostream"

    def stream(self, request: GenerationRequest):
        raise QevalError("this engine has no per-token stream", field="backends", fix="use another backend")


@pytest.fixture(scope="module")
def hf_backend(qeval_model_dir: Path, qeval_tokenizer):
    from qeval.backends.hf import HFBackend, load_hf_model

    backend = HFBackend(load_hf_model(qeval_model_dir), qeval_tokenizer)
    yield backend
    backend.close()


def _ctx(tmp_path: Path, tokenizer, **latency_spec):
    from qeval.runner import Cell, Context
    from qeval.store import RunStore
    from qeval.suite import Suite

    suite = Suite.model_validate({"name": "t", "candidates": ["fp8"], "tasks": [{"name": "x"}],
                                  "latency": latency_spec})
    ctx = Context(suite=suite, store=RunStore(tmp_path), model_dir=tmp_path, tokenizer=tokenizer, task_manager=None)
    return ctx, Cell("bf16", "hf", True)


def test_run_latency_on_hf_caps_concurrency_and_excludes_warmup(tmp_path: Path, qeval_tokenizer, hf_backend) -> None:
    ctx, cell = _ctx(tmp_path, qeval_tokenizer, concurrency=[3], input_tokens=8, output_tokens=3, num_requests=6,
                     warmup_requests=2)
    record = latency.run_latency(ctx, cell, hf_backend)
    assert ctx.store.read_json(cell.id, "latency.json") == record
    (point,) = record["loads"]
    assert point["max_in_flight"] == 3  # the cap, reached
    assert (point["completed"], point["failed"], point["warmup_excluded"], point["wrong_length"]) == (6, 0, 2, 0)
    assert [s["warmup"] for s in point["requests"]] == [True, True] + [False] * 6
    assert all(s["output_tokens"] == 3 and s["chunks"] == 3 for s in point["requests"])
    rows = {(r["metric"], r["percentile"]): r for r in record["percentiles"]}
    assert rows[("ttft", 99.0)]["n"] == 6 and rows[("itl", 50.0)]["n"] == 12
    assert all(r["warmup_excluded"] == 2 and r["concurrency"] == 3 for r in rows.values())
    assert record["workload"]["input_tokens"] == 8 and record["kernels"] == {"bf16": "real"}
    assert record["confidence"] == pytest.approx(0.90)  # 1 - 2 alpha: the SLO check's one-sided bound
    assert "queueing" in record["notes"][0]
    # Resume: a cell whose latency.json exists is not measured again.
    t0 = time.perf_counter()
    assert latency.run_latency(ctx, cell, hf_backend) == record
    assert time.perf_counter() - t0 < 1.0


def test_poisson_load_point_sends_on_schedule() -> None:
    source = InstantSource(4)
    requests = [GenerationRequest(prompt=(1, 2), max_tokens=4, ignore_eos=True)] * 8
    run = run_load(source, requests, LoadShape.poisson(40.0), seed=11)
    offsets = poisson_schedule(8, 40.0, seed=11)
    sent = np.array([r.t_send - run.t_start for r in run.measured])
    assert np.all(sent >= offsets - 1e-4)  # never early
    assert run.max_send_lag_s == pytest.approx(max(sent - offsets), abs=1e-4)
    assert all(len(r.events) == 4 and r.error is None for r in run.measured)


def test_engine_that_cannot_stream_is_recorded_unavailable(qeval_tokenizer) -> None:
    record = latency.probe(CannotStream(), qeval_tokenizer, concurrency=[2], input_tokens=4, output_tokens=2,
                           num_requests=2, warmup_requests=1)
    assert "no per-token stream" in record["unavailable"] and record["percentiles"] == []


def test_probe_overhead_per_token_is_negligible(hf_backend, record_property, capsys) -> None:
    # The probe's work per token during a run: resume the engine's generator, append the event.
    n = 200_000
    source = InstantSource(n)
    request = GenerationRequest(prompt=(1,), max_tokens=n, ignore_eos=True)
    best = min((lambda r: r.t_done - r.t_send)(run_load(source, [request], LoadShape.closed(1)).measured[0])
               for _ in range(3))
    ns_per_token = best / n * 1e9
    # A real token, measured now on this machine: HF decode time per token (TPOT).
    real = latency.measure(*_timed(hf_backend, GenerationRequest(prompt=(1, 2, 3, 4), max_tokens=4, ignore_eos=True)))
    hf_ns = real.tpot * 1e9
    record_property("probe_ns_per_token", ns_per_token)
    record_property("hf_ns_per_token", hf_ns)
    with capsys.disabled():
        print(f"\nprobe overhead {ns_per_token:.0f} ns/token; HF decode {hf_ns / 1e6:.1f} ms/token "
              f"({100 * ns_per_token / hf_ns:.4f}%)")
    assert ns_per_token < 0.01 * hf_ns


def _timed(backend, request: GenerationRequest) -> tuple[float, list[TokenEvent]]:
    t_send = time.perf_counter()
    return t_send, list(backend.stream(request))
