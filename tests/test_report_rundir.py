"""A run directory written the way `qeval run` writes one: the reports' input format.

`write_run` lays out manifest.json (qeval.manifest.build_manifest), suite.yaml,
cells/<cell>/status.json, cells/<cell>/samples/<task>.jsonl (records with doc_id,
prompt_hash, doc_hash, metrics, choices/chosen/gold/correct and score, as
qeval.evaluate.sample_record makes them), divergence.json (qeval.divergence.summarize
on per-token arrays) and latency.json (percentiles with bootstrap CIs from
qeval.stats.percentile_ci, plus the per-request samples). Scores are 0/1 draws from
a seeded rng with per-cell flip rates shaped like the CPU measurements in
ENVIRONMENT.md: not a model run, and labelled so in the suite description. The other
report tests import it; the tests here check that qeval's own reader pairs it right.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from qeval.manifest import build_manifest
from qeval.store import RunStore, write_json_atomic

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'

TASKS = ("bigbench_mc_phrase_relatedness", "bigbench_mc_social_iqa", "bigbench_mc_physics")
N_ITEMS = 500
BASE_ACC = {"bigbench_mc_phrase_relatedness": 0.47, "bigbench_mc_social_iqa": 0.35, "bigbench_mc_physics": 0.50}

# Per candidate: probability that a right baseline answer is lost (q10) and that a wrong
# one is gained (q01); mean KL, top-1 agreement on held-out text. The KL / top-1 values
# are the measured ones of ENVIRONMENT.md (SmolLM2-135M, ModelOpt fake-quant on CPU).
CANDIDATES: dict[str, dict[str, float]] = {
    "fp8": {"q10": 0.06, "q01": 0.05, "kld": 0.045, "top1": 0.881, "speed": 1.55},
    "fp8_kv": {"q10": 0.07, "q01": 0.05, "kld": 0.092, "top1": 0.862, "speed": 1.70},
    "int8_wo": {"q10": 0.02, "q01": 0.02, "kld": 0.0038, "top1": 0.979, "speed": 1.25},
    "int8_sq": {"q10": 0.18, "q01": 0.14, "kld": 0.341, "top1": 0.723, "speed": 1.40},
    "nvfp4": {"q10": 0.30, "q01": 0.12, "kld": 0.492, "top1": 0.613, "speed": 0.85},
    "int4_awq_g64": {},  # crashes at export (ENVIRONMENT.md): an error cell
}
KERNELS_VLLM = {"bf16": "real", "fp8": "real", "fp8_kv": "real", "int8_wo": "real", "int8_sq": "real", "nvfp4": "emulated",
                "int4_awq_g64": "real"}
INT4_CAUSE = ("ValueError: Cannot pack weight with input dimension 576 and block size 128: "
              "partial blocks are not supported")


def suite_dict(name: str = "release-check", tasks: tuple[str, ...] = TASKS, candidates: tuple[str, ...] | None = None,
               backends: tuple[str, ...] = ("hf", "vllm", "trtllm"), gate: dict | None = None,
               sampling: dict | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "description": "Report test fixture: per-sample 0/1 scores, divergence and latency drawn from a seeded "
                       "rng in the store format of a real run (not a model run).",
        "model": {"source": "smollm2-135m-instruct", "dtype": "bfloat16"},
        "baseline": "bf16",
        "candidates": list(candidates or CANDIDATES),
        "backends": list(backends),
        "tasks": [{"name": t, "limit": N_ITEMS} for t in tasks],
        "seeds": {"sampling": 1234, "fewshot": 1234, "bootstrap": 0},
        "gate": gate if gate is not None else {"margin": 5.0, "alpha": 0.05, "correction": "holm",
                                               "max_kld_mean": 0.1, "max_flip_rate": 0.25},
        "latency": {"enabled": True, "concurrency": [1, 16], "num_requests": 64, "warmup_requests": 4},
        **({"sampling": sampling} if sampling else {}),
    }


def _h(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _records(task: str, scores: np.ndarray, choice_text: str = "") -> list[dict]:
    out = []
    for doc_id, s in enumerate(scores):
        gold = doc_id % 4
        chosen = gold if s == 1 else (gold + 1 + doc_id % 3) % 4
        choices = [f"answer {k} to item {doc_id}" for k in range(4)]
        if choice_text:
            choices[chosen] = choice_text
        out.append({"doc_id": doc_id, "prompt_hash": _h(task, doc_id, "prompt"), "doc_hash": _h(task, doc_id),
                    "metrics": {"acc": float(s)}, "choices": choices,
                    "loglikelihoods": [-float(k + 1) for k in range(4)], "chosen": chosen, "gold": gold,
                    "correct": bool(s == 1), "score": float(s)})
    return out


def _flip(base: np.ndarray, q10: float, q01: float, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(base.size)
    return np.where(base == 1, (u >= q10).astype(float), (u < q01).astype(float))


TRT_REASON = "TensorRT-LLM does not import here (ModuleNotFoundError: No module named 'tensorrt_llm')"
ROUTES = {"hf": {"name": "hf-full-vocabulary", "exact": True, "top_k": None, "detail": "transformers"},
          "vllm": {"name": "vllm-prompt-logprobs-full", "exact": True, "top_k": None, "detail": "prompt_logprobs=-1"}}


def _divergence(kld: float, top1: float, rng: np.random.Generator) -> dict[str, Any]:
    from qeval.divergence import TokenComparison, summarize

    n_seq, per = 32, 64
    seq = np.repeat(np.arange(n_seq), per)
    # Per-token KL is heavy-tailed: lognormal with the target mean, a per-sequence factor.
    sigma = 1.3
    mu = np.log(kld) - sigma**2 / 2
    per_seq = rng.lognormal(0.0, 0.25, n_seq)[seq]
    tokens = rng.lognormal(mu, sigma, seq.size) * per_seq / per_seq.mean()
    nll_b = rng.gamma(2.0, 1.4, seq.size)
    return summarize(TokenComparison(kld=tokens, top1_same=(rng.random(seq.size) < top1).astype(float),
                                     nll_baseline=nll_b, nll_candidate=nll_b + tokens * 0.9, sequence=seq))


def _latency(speed: float, rng: np.random.Generator, warmup: int = 4, n: int = 64) -> dict[str, Any]:
    from qeval import stats

    loads, points = [], []
    for conc in (1, 16):
        slow = 1.0 + 0.05 * (conc - 1)
        ttft = rng.lognormal(np.log(22.0 * slow / speed**0.5), 0.25, n)
        tpot = rng.lognormal(np.log(6.0 * slow / speed), 0.12, n)
        out_tokens = rng.integers(96, 129, n)
        e2e = ttft + tpot * (out_tokens - 1)
        loads.append({"concurrency": conc, "request_rate": None, "warmup_excluded": warmup,
                      "ttft_ms": ttft.round(3).tolist(), "tpot_ms": tpot.round(4).tolist(),
                      "e2e_ms": e2e.round(3).tolist(), "output_tokens": out_tokens.tolist()})
        for metric, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
            for q in (50.0, 90.0, 99.0):
                pe = stats.percentile_ci(values, q)
                points.append({"metric": metric, "percentile": q, "value_ms": pe.estimate, "ci_ms": list(pe.ci),
                               "n": int(values.size), "concurrency": conc, "request_rate": None,
                               "warmup_excluded": warmup})
    return {"percentiles": points, "loads": loads, "engine": "vllm", "gpu": "NVIDIA H100 80GB HBM3"}


def write_run(root: Path, *, name: str = "release-check", seed: int = 7, suite: dict | None = None,
              run_id: str | None = None, xss: bool = False, shift: dict[str, float] | None = None) -> Path:
    """Write a complete run directory under `root` and return it.

    Args:
        root: parent folder.
        name: suite name.
        seed: rng seed of every draw.
        suite: suite mapping (default `suite_dict(name)`).
        run_id: run directory name (default: name + a fixed date).
        xss: put markup payloads in the suite description, a crash cause and a model answer.
        shift: per candidate, an extra loss probability (a later run that regressed).
    """
    rng = np.random.default_rng(seed)
    floor_rng = np.random.default_rng(seed + 1)  # its own stream: the other draws stay as they were
    suite = suite or suite_dict(name)
    if xss:  # (a task name with markup is refused at load: task names become file names, tests/test_paths.py)
        suite = {**suite, "description": f"evil{XSS_SCRIPT}"}
    run_dir = root / (run_id or f"{suite['name']}-20261122-120000")
    store = RunStore(run_dir)
    run_dir.mkdir(parents=True)
    suite_path = run_dir / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    cells = [f"{suite['baseline']}-{b}" for b in suite["backends"]]
    cells += [f"{p}-{b}" for b in suite["backends"] for p in suite["candidates"]]
    write_json_atomic(run_dir / "manifest.json", build_manifest(
        run_id=run_dir.name, suite_name=suite["name"], suite_path=suite_path,
        suite_hash=hashlib.sha256(suite_path.read_bytes()).hexdigest(), model_source=suite["model"]["source"],
        model_hash=_h("SmolLM2-135M-Instruct.Q4_1.gguf"), seeds=suite["seeds"], plan=cells))

    truth = {t["name"]: (rng.random(N_ITEMS) < BASE_ACC.get(t["name"], 0.4)).astype(float) for t in suite["tasks"]}
    mode = (suite.get("sampling") or {}).get("mode", "fixed")

    def write_progress(cell_id: str) -> None:
        # What the runner records beside the samples: each task's plan and its metric's semantics.
        from qeval.sampling import look_schedule

        spec = suite.get("sampling") or {}
        looks = look_schedule(mode, N_ITEMS, looks=spec.get("looks", 5), look_size=spec.get("look_size", 32))
        store.write_json(cell_id, "progress.json", {"mode": mode, "tasks": {t: {
            "plan": {"task": t, "n_docs": N_ITEMS, "planned_n": N_ITEMS, "looks": list(looks)},
            "semantics": {"higher_is_better": True, "points_per_unit": 100.0, "aggregation": "mean",
                          "score_range": [0.0, 1.0], "source": "report test fixture"},
            "progress": {"looks_done": len(looks), "state": "complete", "verdict": None}} for t in truth}})
    for backend in suite["backends"]:
        if backend == "trtllm":  # not installable here: every TensorRT-LLM cell ends NOT RUN, as the runner writes it
            for cell in [c for c in cells if c.endswith("-trtllm")]:
                store.write_status(cell, {"state": "not_run", "engine": "trtllm", "seconds": 0.01,
                                          "reason": TRT_REASON, "fix": "install TensorRT-LLM on a GPU machine",
                                          "probe": {"import tensorrt_llm": "ModuleNotFoundError: No module named "
                                                    "'tensorrt_llm'", "gpu": "none visible"}})
            continue
        kernels = "simulated" if backend == "hf" else None
        base_scores = {t: s if backend == "hf" else _flip(s, 0.01, 0.01, rng) for t, s in truth.items()}
        base_id = f"{suite['baseline']}-{backend}"
        for task, s in base_scores.items():
            store.write_samples(base_id, task, _records(task, s))
        write_progress(base_id)
        store.write_status(base_id, {"state": "ok", "seconds": 61.2, "task_seconds": {t: 20.4 for t in base_scores},
                                     "kernels": {suite["baseline"]: "real"}, "run_here": True, "notes": "",
                                     "artifact": None})
        if backend == "vllm":
            store.write_json(base_id, "latency.json", _latency(1.0, rng))
        floor = {"batch": {"description": "bf16 against itself, one sequence per engine call",
                           "heldout": _divergence(0.0004 if backend == "vllm" else 1e-8, 0.999, floor_rng)}}
        if backend == "vllm":
            floor["cross_engine"] = {"hf": {"description": "KL(bf16 on hf || bf16 on vllm) on the same tokens",
                                            "reference_cell": f"{suite['baseline']}-hf",
                                            "heldout": _divergence(0.03, 0.97, floor_rng)}}
        store.write_json(base_id, "divergence.json", {"role": "baseline", "engine": backend, "route": ROUTES[backend],
                                                      "reference": {}, "noise_floor": floor})
        for cand in suite["candidates"]:
            cid = f"{cand}-{backend}"
            spec = CANDIDATES.get(cand, {"q10": 0.05, "q01": 0.05, "kld": 0.05, "top1": 0.9, "speed": 1.2})
            if not spec:
                cause = f"{INT4_CAUSE}{' ' + XSS_SCRIPT + XSS_IMG if xss else ''}"
                store.write_status(cid, {"state": "error", "cause": cause, "traceback": "Traceback ..."})
                continue
            extra = (shift or {}).get(cand, 0.0)
            for task, s in base_scores.items():
                c = _flip(s, spec["q10"] + extra, spec["q01"], rng)
                answer = XSS_IMG if (xss and task == TASKS[0]) else ""
                store.write_samples(cid, task, _records(task, c, choice_text=answer))
            write_progress(cid)
            kind = kernels or KERNELS_VLLM.get(cand, "real")
            store.write_status(cid, {
                "state": "ok", "seconds": 95.0, "task_seconds": {t: 31.0 for t in base_scores},
                "kernels": {cand: kind}, "run_here": True, "notes": "",
                "artifact": {"key": _h(cand, "artifact")[:32], "reused": False, "seconds": 24.5}})
            div = {"role": "candidate", "baseline": base_id, "engine": backend, "simulated": backend == "hf",
                   "route": ROUTES[backend],
                   "heldout": _divergence(spec["kld"] * (1.0 if backend == "hf" else 1.15), spec["top1"], rng),
                   "noise_floor": {"batch": {"heldout": {"kld_kind": "exact", "kld_mean": floor["batch"]["heldout"][
                       "kld_mean"], "n_tokens": 2048}}}}
            store.write_json(cid, "divergence.json", div)
            if backend == "vllm":
                store.write_json(cid, "latency.json", _latency(spec["speed"], rng))
    return run_dir


# ---------------------------------------------------------------- the fixture is read as a real run is

def test_written_run_is_paired_by_qeval_evidence(tmp_path: Path) -> None:
    from qeval.collect import collect
    from qeval.gate import ErrorEvidence, TaskEvidence

    run = collect(write_run(tmp_path))
    tasks = [e for e in run.evidence if isinstance(e, TaskEvidence)]
    # 5 candidates that ran x 2 backends that ran x 3 tasks, all 200 items paired.
    assert len(tasks) == 5 * 2 * 3 and {e.baseline_scores.size for e in tasks} == {N_ITEMS}
    errors = [e for e in run.evidence if isinstance(e, ErrorEvidence)]
    crashed = {(e.candidate, e.backend) for e in errors}
    assert crashed == {("int4_awq_g64", "hf"), ("int4_awq_g64", "vllm")}
    # TensorRT-LLM: every cell NOT RUN (engine unavailable): no evidence, so no decision, not a crash.
    assert not [e for e in run.evidence if e.backend == "trtllm"]
    assert run.status["fp8-trtllm"]["state"] == "not_run"
    assert run.accuracy["bf16-hf"]["bigbench_mc_physics"]["n"] == N_ITEMS
    assert run.divergence["fp8-hf"]["heldout"]["n_tokens"] == 32 * 64
    assert {p["concurrency"] for p in run.latency["fp8-vllm"]["percentiles"]} == {1, 16}
    sample = json.loads((tmp_path / "release-check-20261122-120000/cells/fp8-hf/samples/"
                         "bigbench_mc_physics.jsonl").read_text().splitlines()[0])
    assert {"doc_id", "prompt_hash", "doc_hash", "metrics", "score"} <= set(sample)
