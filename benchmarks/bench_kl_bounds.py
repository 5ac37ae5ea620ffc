"""How tight the top-k KL bounds are, against the exact value, on every token of real quantized models (hf).

The hf backend gives full distributions, so the exact KL(baseline || candidate) is known at every
position. From the same distributions the bench cuts what a top-k API would return (the top k of
each side plus the actual token) and computes qeval.kl_bounds' lower bound (no floor: what a server
allows) and upper bound (with the candidate's smallest log-probability as the floor, which no server
returns). Candidates are ModelOpt simulated quantizations of SmolLM2-135M (the artifact cache is reused).

For k in --ks: whether both bounds hold on every token (the largest violation, which must be <= 0
up to float rounding), the means of lower bound / exact / upper bound, their ratios, and the same for
the 99th percentile.

    PYTHONPATH=. python benchmarks/bench_kl_bounds.py [--tokens 1024] [--precisions fp8 int8_sq int8_wo] [--ks 5 20 100]

Prints JSON; numbers measured here are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class _Ctx:
    """What qeval.quantize reads of a run's context."""

    suite: Any
    model_dir: Path
    tokenizer: Any
    calibration: Any = None
    model_hash: str | None = None
    artifacts: dict = field(default_factory=dict)
    compute: Any = None


def tightness(exact: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> dict[str, Any]:
    return {"tokens": int(exact.size),
            "lower_holds": bool((lower <= exact + 1e-9).all()), "max_lower_minus_exact": float((lower - exact).max()),
            "upper_holds": bool((upper >= exact - 1e-9).all()), "max_exact_minus_upper": float((exact - upper).max()),
            "mean_exact": float(exact.mean()), "mean_lower": float(lower.mean()), "mean_upper": float(upper.mean()),
            "lower_over_exact": float(lower.mean() / exact.mean()), "upper_over_exact": float(upper.mean() / exact.mean()),
            "p99_exact": float(np.percentile(exact, 99)), "p99_lower": float(np.percentile(lower, 99)),
            "p99_upper": float(np.percentile(upper, 99)),
            "share_tokens_gap_below_0.01": float(((upper - lower) < 0.01).mean())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--precisions", nargs="+", default=["fp8", "int8_sq", "int8_wo"])
    ap.add_argument("--ks", nargs="+", type=int, default=[5, 20, 100])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from qeval import compute, divergence, kl_bounds
    from qeval.assets.model import ensure_model
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.quantize import calibration_for, quantize_simulated
    from qeval.suite import Suite

    model_dir = ensure_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    suite = Suite.model_validate({"name": "bounds", "candidates": args.precisions, "calibration": "bigbench-mixed",
                                  "tasks": [{"name": "bigbench_mc_physics", "limit": 4}]})
    ctx = _Ctx(suite=suite, model_dir=model_dir, tokenizer=tok, compute=compute.choose())
    seqs = divergence.take_tokens(calibration_for(ctx).heldout, args.tokens)
    base = HFBackend(load_hf_model(model_dir, ctx.compute.dtype), tok).prompt_distributions(seqs)
    out: dict[str, Any] = {"tokens": sum(d.n for d in base), "sequences": len(seqs), "dtype": ctx.compute.dtype,
                           "vocab": int(base[0].full.shape[1]), "precisions": {}}
    for precision in args.precisions:
        model, _ = quantize_simulated(load_hf_model(model_dir, ctx.compute.dtype), precision, ctx)
        cand = HFBackend(model, tok).prompt_distributions(seqs)
        exact = np.concatenate([divergence.exact_kld(b.full, c.full) for b, c in zip(base, cand)])
        entry: dict[str, Any] = {"exact_mean": float(exact.mean())}
        for k in args.ks:
            lo, up = [], []
            for b, c in zip(base, cand):
                bounds = kl_bounds.topk_bounds(kl_bounds.truncate(b, k, keep_floor=False),
                                               kl_bounds.truncate(c, k, keep_floor=True))
                lo.append(bounds.lower)
                up.append(bounds.upper)
            entry[f"k{k}"] = tightness(exact, np.concatenate(lo), np.concatenate(up))
        out["precisions"][precision] = entry
        del model, cand
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
