"""Do concurrent in-process vLLM streams share the engine's batch? (issue 6)

The latency probe drives `VLLMBackend.stream()` from one thread per request.
If the streams take turns instead of sharing vLLM's continuous batching,
concurrency 16 measures a queue: TTFT grows with the number of requests ahead,
and requests/s stays at the concurrency-1 figure. The GPU run of 2026-12-02
showed exactly that (bf16 on an H200: c1 8.4 req/s, c16 9.6 req/s, TTFT p50
10 ms -> 1077 ms), which led to the stream driver thread.

This prints, per concurrency: requests/s, TTFT p50, TPOT p50 and the share of
token events that arrived in the same engine step as another request's
(1.0 when every step served several streams, 0 when the streams took turns).

    python benchmarks/bench_stream_batching.py [--concurrency 1 4 8] [--requests 24] [--output-tokens 32]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time


def shared_step_share(run) -> float:
    """Fraction of token events whose engine-step timestamp another request also got."""
    owners: dict[float, set[int]] = collections.defaultdict(set)
    for k, record in enumerate(run.measured):
        for event in record.events:
            owners[event.t].add(k)
    events = [(k, e.t) for k, r in enumerate(run.measured) for e in r.events]
    return sum(len(owners[t]) > 1 for _, t in events) / max(len(events), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--input-tokens", type=int, default=64)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from qeval.assets.model import ensure_model
    from qeval.backends.vllm import VLLMBackend
    from qeval.latency import build_requests, measure, synthetic_prompts
    from qeval.loadgen import LoadShape, run_load

    model = ensure_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    t0 = time.perf_counter()
    backend = VLLMBackend(model, max_model_len=1024)
    print(f"engine up in {time.perf_counter() - t0:.1f} s")
    try:
        prompts = synthetic_prompts(tokenizer, args.requests + 2, args.input_tokens, seed=0)
        requests = build_requests(prompts, args.output_tokens)
        run_load(backend, requests[:2], LoadShape.closed(2))  # warm-up
        print(f"{'concurrency':>11} {'req/s':>7} {'TTFT p50 ms':>12} {'TPOT p50 ms':>12} {'shared steps':>13}")
        for c in args.concurrency:
            run = run_load(backend, requests[2:], LoadShape.closed(c))
            ok = [r for r in run.measured if r.error is None and r.events]
            timings = [measure(r.t_send, r.events) for r in ok]  # the probe's own metric definitions
            ttft = statistics.median(t.ttft * 1e3 for t in timings)
            tpot = statistics.median(t.tpot * 1e3 for t in timings if t.tpot is not None)
            span = max(r.events[-1].t for r in ok) - min(r.t_send for r in ok)
            print(f"{c:>11} {len(ok) / span:>7.2f} {ttft:>12.1f} {tpot:>12.2f} {shared_step_share(run):>13.2f}")
    finally:
        backend.close()


if __name__ == "__main__":
    main()
