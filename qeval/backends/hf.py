"""Hugging Face transformers: the reference engine (CPU or GPU).

It runs the baseline and ModelOpt fake-quantized (simulated) models: the
quantizer hands over the quantized `torch.nn.Module` and this backend scores
with it exactly as it scores the baseline.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

from qeval.backends.base import (
    Capabilities,
    DistributionRoute,
    Generation,
    GenerationRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    PromptDistributions,
    TokenEvent,
)
from qeval.errors import QevalError

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise QevalError(f"unknown dtype {name!r}", field="model.dtype",
                         fix=f"use one of {sorted(_DTYPES)}") from None


def default_device() -> str:
    """The GPU where there is one: the reference must not run on the host's cores beside a GPU engine."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_hf_model(model_dir: str | Path, dtype: str = "auto", device: str | None = None,
                  trust_remote_code: bool = False) -> torch.nn.Module:
    """Load a causal LM from a local folder (on `default_device()` unless told); never reaches for a hub.

    Args:
        dtype: the compute dtype; "auto" lets `qeval.compute.choose` pick it for the device from bf16
            weights (float32 on a CPU that emulates bf16).
    """
    from transformers import AutoModelForCausalLM

    from qeval import compute

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise QevalError(f"{model_dir} is not a Hugging Face model folder (no config.json)",
                         field="model.path", fix="point model.path at a folder saved with save_pretrained, "
                         "or use the built-in 'smollm2-135m-instruct'")
    device = device or default_device()
    if dtype == "auto":
        dtype = compute.choose("auto", "bfloat16", device="cuda" if device.startswith("cuda") else "cpu").dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype),
                                                 trust_remote_code=trust_remote_code,
                                                 local_files_only=True)
    return model.to(device).eval()


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """Cut generated text at the earliest stop string."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


class HFBackend:
    """transformers forward passes, batched, right-padded.

    Args:
        model: a loaded causal LM (plain or ModelOpt fake-quantized).
        precision: the precision name this model stands for (for the capability record).
        simulated: True when the low precision is simulated (fake quantization).
        notes: the capability record's notes (default: says what simulates it, ModelOpt fake-quant).
        batch_size: sequences per forward pass.
        max_length: longest sequence scored; longer inputs are cut from the left,
            as lm-eval's own HF model does.
    """

    name = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer, *, precision: str = "bf16", simulated: bool = False,
                 batch_size: int = 16, max_length: int = 2048, eos_token_id: int | None = None,
                 notes: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        self.simulated = simulated
        self.notes = notes  # what the capability record says instead of the default (an external checkpoint)
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype  # kept: close() drops the model, the record still needs it
        self.eos_token_id = eos_token_id if eos_token_id is not None else model.config.eos_token_id
        # transformers' causal LMs take a tensor of positions to project to the vocabulary (logits_to_keep).
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @property
    def capabilities(self) -> Capabilities:
        kind = "simulated" if self.simulated else "real"
        return Capabilities(backend="hf", precisions=(self.precision,), kernels={self.precision: kind},
                            notes=self.notes or ("transformers reference; quantized precisions are ModelOpt "
                                                 "fake-quant" if self.simulated else "transformers reference"),
                            compute_dtype=str(self.dtype).removeprefix("torch."))

    @torch.inference_mode()
    def _forward_logprobs(self, inputs: list[list[int]], tails: list[int] | None = None) -> list[torch.Tensor]:
        """Log-softmax over the vocabulary at the positions asked for (float32).

        Args:
            inputs: token ids per row (right-padded into one batch).
            tails: per row, how many final positions are needed (None: every position). Scoring
                needs only the continuation's positions: the vocabulary projection and its
                log-softmax (a fifth of a small model's FLOPs, most of its memory traffic) then run
                on those positions only, through the model's own `logits_to_keep`.
        """
        width = max(len(x) for x in inputs)
        ids = torch.zeros((len(inputs), width), dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, seq in enumerate(inputs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        keep = None
        if tails is not None and self._keeps_logits:
            wanted = sorted({p for seq, t in zip(inputs, tails) for p in range(len(seq) - t, len(seq))})
            keep = torch.tensor(wanted, dtype=torch.long)
        kwargs = {} if keep is None else {"logits_to_keep": keep.to(self.device)}
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        if keep is None:
            return [logprobs[row, : len(seq)] for row, seq in enumerate(inputs)]
        column = {int(p): i for i, p in enumerate(keep)}
        return [logprobs[row, [column[p] for p in range(len(seq) - t, len(seq))]]
                for row, (seq, t) in enumerate(zip(inputs, tails))]  # type: ignore[arg-type]

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        results: list[LoglikelihoodResult | None] = [None] * len(requests)
        # Longest first: batches of similar length waste little padding.
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context_tokens)
                                                             + len(requests[i].continuation_tokens)))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = []
            for i in batch:
                whole = (requests[i].context_tokens + requests[i].continuation_tokens)[-(self.max_length + 1):]
                inputs.append(list(whole[:-1]))
            tails = [min(len(requests[i].continuation_tokens), len(x)) for i, x in zip(batch, inputs)]
            for i, logprobs in zip(batch, self._forward_logprobs(inputs, tails)):
                cont = torch.tensor(requests[i].continuation_tokens, dtype=torch.long)
                tail = logprobs[-len(cont):]
                token_lp = tail.gather(1, cont[:, None])[:, 0]
                greedy = bool((tail.argmax(dim=-1) == cont).all())
                results[i] = LoglikelihoodResult(logprob=float(token_lp.sum()), is_greedy=greedy,
                                                 token_logprobs=tuple(float(x) for x in token_lp))
        return results  # type: ignore[return-value]

    def prompt_logprobs(self, sequences: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Full next-token log-distributions: for a sequence of T tokens, a [T-1, vocab]
        float32 tensor whose row t predicts token t+1 (what divergence needs)."""
        out: list[torch.Tensor] = []
        for start in range(0, len(sequences), self.batch_size):
            batch = [list(s[-(self.max_length + 1):][:-1]) for s in sequences[start : start + self.batch_size]]
            out.extend(self._forward_logprobs(batch))
        return out

    @property
    def distribution_route(self) -> DistributionRoute:
        return DistributionRoute(name="hf-full-vocabulary", exact=True,
                                 detail=f"transformers forward pass, log_softmax over the vocabulary in float32 "
                                        f"({str(self.dtype).removeprefix('torch.')} weights)")

    def prompt_distributions(self, sequences: Sequence[Sequence[int]], *,
                             batch_size: int | None = None) -> list[PromptDistributions]:
        """Full next-token distributions of each sequence (`batch_size` sequences per forward pass)."""
        out: list[PromptDistributions] = []
        step = batch_size or self.batch_size
        for start in range(0, len(sequences), step):
            batch = [tuple(s)[-(self.max_length + 1):] for s in sequences[start:start + step]]
            for seq, lp in zip(batch, self._forward_logprobs([list(s[:-1]) for s in batch])):
                out.append(PromptDistributions.from_full(lp.numpy(), seq))
        return out

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if isinstance(request.prompt, str):
            return self.tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
        return list(request.prompt)

    def _decode(self, request: GenerationRequest) -> Iterator[tuple[int, float]]:
        """Decoding one token at a time with the KV cache: (token id, arrival time).

        Greedy at temperature 0; above it, sampled from the softmax at that temperature with a generator
        seeded by the request's seed (the same seed draws the same tokens)."""
        ids = torch.tensor([self._prompt_ids(request)], dtype=torch.long, device=self.device)
        past = None
        sampler = None
        if request.temperature > 0:
            sampler = torch.Generator(device="cpu")
            sampler.manual_seed(request.seed if request.seed is not None else torch.seed())
        with torch.inference_mode():
            for _ in range(request.max_tokens):
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float().cpu()
                if sampler is None:
                    next_id = int(logits.argmax())
                else:
                    probs = torch.softmax(logits / request.temperature, dim=-1)
                    next_id = int(torch.multinomial(probs, 1, generator=sampler))
                yield next_id, time.perf_counter()
                if next_id == self.eos_token_id and not request.ignore_eos:
                    return
                ids = torch.tensor([[next_id]], dtype=torch.long, device=self.device)

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        for token_id, t in self._decode(request):
            yield TokenEvent(text=self.tokenizer.decode([token_id]), n_tokens=1, t=t)

    def generations(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Generation cut at the first stop string, stopping as soon as one appears (as lm-eval's HF model
        does with its stop criteria), with the token count and why it ended."""
        out = []
        for r in requests:
            ids: list[int] = []
            finish = "length"
            text = ""
            for token_id, _ in self._decode(r):
                if token_id == self.eos_token_id and not r.ignore_eos:
                    finish = "eos"
                    break
                ids.append(token_id)
                text = self.tokenizer.decode(ids)
                if r.stop and truncate_at_stop(text, r.stop) != text:
                    finish = "stop"
                    break
            out.append(Generation(truncate_at_stop(text, r.stop), len(ids) + (finish == "eos"), finish))
        return out

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        return [g.text for g in self.generations(requests)]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
