"""bf16 against fp32 compute of the same bf16 weights: the divergence the CPU's dtype choice brings.

qeval computes the hf reference in fp32 on a CPU without native bf16 (qeval.compute). The weights are
the same bf16 numbers either way; only the arithmetic differs. This prints, on the held-out text of the
default calibration set (SmolLM2-135M), exact KL(fp32 || bf16) per token with its interval, top-1
agreement, and the largest per-token log-probability difference, beside the bf16 batch-composition noise
floor (the same sequences one per forward pass vs 16), and each dtype's seconds for the forward passes.
Run it where bf16 is native to time bf16 fairly; the divergence is the same anywhere.

    PYTHONPATH=. python benchmarks/bench_compute_dtype.py [--tokens 2048]

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from qeval import compute, divergence
from qeval.assets.model import ensure_model
from qeval.backends.hf import HFBackend, load_hf_model
from qeval.calibration import load_calibration


KEYS = ("kld_mean", "kld_mean_ci", "kld_p99", "kld_max", "top1_agree", "top1_agree_ci", "ppl_ratio")


def distributions(backend: HFBackend, seqs: list[list[int]], batch_size: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = backend.prompt_distributions(seqs, batch_size=batch_size)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    model_dir = ensure_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    seqs = divergence.take_tokens(load_calibration("bigbench-mixed", [], tok).heldout, args.tokens)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        backend = HFBackend(load_hf_model(model_dir, dtype, device="cpu"), tok)
        seconds, dists = distributions(backend, seqs, 16)
        runs[dtype] = {"seconds": round(seconds, 2), "dists": dists}
        if dtype == "bfloat16":
            _, one_by_one = distributions(backend, seqs, 1)
            runs["bf16 floor"] = divergence.summarize(divergence.compare_distributions(zip(one_by_one, dists)))
    between = divergence.summarize(divergence.compare_distributions(zip(runs["float32"]["dists"],
                                                                        runs["bfloat16"]["dists"])))
    print(json.dumps({
        "machine": compute.choose("auto", "bfloat16", device="cpu").reason,
        "tokens": between.get("n_tokens"),
        "kl_fp32_vs_bf16": {k: between.get(k) for k in KEYS},
        "bf16_batch_floor": {k: runs["bf16 floor"].get(k) for k in KEYS},
        "seconds": {d: runs[d]["seconds"] for d in ("float32", "bfloat16")},
    }, indent=1))


if __name__ == "__main__":
    main()
