"""Hugging Face transformers: the reference engine (CPU or GPU).

It runs the baseline and ModelOpt fake-quantized (simulated) models: the
quantizer hands over the quantized `torch.nn.Module` and this backend scores
with it exactly as it scores the baseline.
"""

from __future__ import annotations

import inspect
import logging
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
from qeval.backends import packing
from qeval.errors import QevalError

log = logging.getLogger(__name__)

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


def _scored(tail: torch.Tensor, continuation: Sequence[int]) -> LoglikelihoodResult:
    """One request's result from the log-distributions that predict its continuation's tokens."""
    target = torch.tensor(continuation, dtype=torch.long)
    token_lp = tail.gather(1, target[:, None])[:, 0]
    return LoglikelihoodResult(logprob=float(token_lp.sum()), is_greedy=bool((tail.argmax(dim=-1) == target).all()),
                               token_logprobs=tuple(float(x) for x in token_lp))


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
        share_context: score requests that share a context (a question's choices) in one packed row,
            once checked on the model (False: one row per request, lm-eval's way; None: in float32 only).
        batch_generation: decode greedy requests `batch_size` at a time (left-padded), once checked on the
            model against one at a time (False: one at a time; None: in float32 only).
    """

    name = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer, *, precision: str = "bf16", simulated: bool = False,
                 batch_size: int = 16, max_length: int = 2048, eos_token_id: int | None = None,
                 notes: str | None = None, share_context: bool | None = None,
                 batch_generation: bool | None = None) -> None:
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
        # Shared-context scoring: None until checked on this model's first multiple-choice batch. By default
        # only in float32, where the check is sharp (packed and one-row scores agree to ~3e-5) and where a
        # CPU without native bf16 needs the time; in bf16 a packed row's other shape moves scores by
        # bf16 rounding (up to ~0.5 nats on a token, measured), so bf16 keeps lm-eval's one row per request.
        if share_context is None:
            share_context = self.dtype == torch.float32
        self.share_context: bool | None = None if share_context else False
        # Batched greedy generation: the same rule (float32 by default, checked once on this model).
        if batch_generation is None:
            batch_generation = self.dtype == torch.float32
        self.batch_generation: bool | None = None if batch_generation else False

    @property
    def capabilities(self) -> Capabilities:
        kind = "simulated" if self.simulated else "real"
        notes = self.notes or ("transformers reference; quantized precisions are ModelOpt "
                               "fake-quant" if self.simulated else "transformers reference")
        batching = [what for what, on in (("a question's choices scored in one packed row", self.share_context),
                                          ("greedy generation batched", self.batch_generation)) if on]
        if batching:  # each checked on this model against one request at a time (the log has the numbers)
            notes += "; " + " and ".join(batching) + " (checked against one at a time)"
        return Capabilities(backend="hf", precisions=(self.precision,), kernels={self.precision: kind},
                            notes=notes, compute_dtype=str(self.dtype).removeprefix("torch."))

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
        # The choices of one multiple-choice question share their context: scored in one packed row, the
        # context is computed once instead of once per choice (qeval.backends.packing).
        one_row_each = list(range(len(requests)))
        if self.share_context is not False:
            groups, rest = packing.shared_context_groups(requests, self.max_length)
            if groups and self.share_context is None:
                self.share_context = self._packing_agrees(requests, groups[0])
            if self.share_context:
                for start in range(0, len(groups), self.batch_size):
                    batch = groups[start : start + self.batch_size]
                    for group, scored in zip(batch, self._score_packed(requests, batch)):
                        for i, result in zip(group, scored):
                            results[i] = result
                one_row_each = rest
        self._score_rows(requests, one_row_each, results)
        return results  # type: ignore[return-value]

    def _packing_agrees(self, requests: list[LoglikelihoodRequest], group: list[int]) -> bool:
        """Check once per engine that this model honours a packed row's attention mask: the packed scores of
        one group against the same requests scored one row each (a model that ignores 4-D masks would let
        one choice see another's tokens and disagree by far more than rounding)."""
        packed = self._score_packed(requests, [group])[0]
        plain: list[LoglikelihoodResult | None] = [None] * len(requests)
        self._score_rows(requests, group, plain)
        worst = max(abs(a - b) for p, q in zip(packed, (plain[i] for i in group))
                    for a, b in zip(p.token_logprobs, q.token_logprobs))  # type: ignore[union-attr]
        tolerance = packing.tolerance(self.dtype)
        agrees = worst <= tolerance
        log.info("hf: shared-context scoring %s (packed vs one row per request: max |d logprob| %.2e, "
                 "tolerance %.0e in %s)", "on" if agrees else "OFF", worst, tolerance,
                 str(self.dtype).removeprefix("torch."))
        return agrees

    @torch.inference_mode()
    def _score_packed(self, requests: list[LoglikelihoodRequest],
                      groups: list[list[int]]) -> list[list[LoglikelihoodResult]]:
        rows = [packing.pack([requests[i] for i in group]) for group in groups]
        batch = packing.batch(rows)
        keep = batch.keep
        kwargs = {"logits_to_keep": keep.to(self.device)} if self._keeps_logits else {}
        logits = self.model(input_ids=batch.input_ids.to(self.device), attention_mask=batch.mask.to(self.device),
                            position_ids=batch.position_ids.to(self.device), **kwargs).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        column = {int(p): c for c, p in enumerate(keep)} if self._keeps_logits else None
        out = []
        for row_index, row in enumerate(rows):
            scored = []
            for positions, cont in zip(row.predicting, row.continuations):
                cols = [column[p] for p in positions] if column is not None else positions
                scored.append(_scored(logprobs[row_index, cols], cont))
            out.append(scored)
        return out

    def _score_rows(self, requests: list[LoglikelihoodRequest], indices: list[int],
                    results: list[LoglikelihoodResult | None]) -> None:
        """One row per request (right-padded batches), into `results` at the requests' indices."""
        # Longest first: batches of similar length waste little padding.
        order = sorted(indices, key=lambda i: -(len(requests[i].context_tokens)
                                                + len(requests[i].continuation_tokens)))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = []
            for i in batch:
                whole = (requests[i].context_tokens + requests[i].continuation_tokens)[-(self.max_length + 1):]
                inputs.append(list(whole[:-1]))
            tails = [min(len(requests[i].continuation_tokens), len(x)) for i, x in zip(batch, inputs)]
            for i, logprobs in zip(batch, self._forward_logprobs(inputs, tails)):
                cont = requests[i].continuation_tokens
                results[i] = _scored(logprobs[-len(cont):], cont)

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
        does with its stop criteria), with the token count and why it ended.

        Greedy requests are decoded `batch_size` at a time (left-padded, one KV cache) where batching is on
        (`batch_generation`, float32 by default, checked once against one-at-a-time decoding); sampled
        requests and everything else one at a time."""
        out: list[Generation | None] = [None] * len(requests)
        greedy = [i for i, r in enumerate(requests) if r.temperature <= 0 and not r.ignore_eos]
        if self.batch_generation is not False and len(greedy) > 1:
            if self.batch_generation is None:
                self.batch_generation = self._batching_agrees([requests[i] for i in greedy[:2]])
            if self.batch_generation:
                for start in range(0, len(greedy), self.batch_size):
                    chunk = greedy[start : start + self.batch_size]
                    for i, g in zip(chunk, self._generate_batch([requests[i] for i in chunk])):
                        out[i] = g
        todo = [i for i, g in enumerate(out) if g is None]
        for i, g in zip(todo, self._generate_one_by_one([requests[i] for i in todo])):
            out[i] = g
        return out  # type: ignore[return-value]

    def _batching_agrees(self, requests: list[GenerationRequest]) -> bool:
        """Check once per engine that batched greedy decoding gives the texts one-at-a-time decoding gives."""
        batched = self._generate_batch(requests)
        alone = self._generate_one_by_one(requests)
        agrees = all(a == b for a, b in zip(batched, alone))
        log.info("hf: batched greedy generation %s (%d of %d checked texts the same as one at a time)",
                 "on" if agrees else "OFF", sum(a == b for a, b in zip(batched, alone)), len(requests))
        return agrees

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Greedy decoding of several prompts at once: left-padded, positions counted from each prompt's
        first token, one KV cache; each row stops at its EOS, its first stop string or its budget."""
        prompts = [self._prompt_ids(r) for r in requests]
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generated: list[list[int]] = [[] for _ in requests]
        texts = [""] * len(requests)
        finish: list[str | None] = [None] * len(requests)
        past, step_ids = None, ids
        for _ in range(max(r.max_tokens for r in requests)):
            out = self.model(input_ids=step_ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=positions.to(self.device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            next_ids = out.logits[:, -1].float().argmax(dim=-1).cpu()
            for row, r in enumerate(requests):
                if finish[row] is None:
                    texts[row], finish[row] = self._advance(r, generated[row], int(next_ids[row]), texts[row])
            if all(f is not None for f in finish):
                break
            step_ids = next_ids[:, None]  # a finished row decodes on unseen: its tokens are not kept
            mask = torch.cat([mask, torch.ones((len(requests), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
        return [Generation(truncate_at_stop(text, r.stop), len(gen) + (f == "eos"), f or "length")
                for r, text, gen, f in zip(requests, texts, generated, finish)]

    def _generate_one_by_one(self, requests: list[GenerationRequest]) -> list[Generation]:
        out = []
        for r in requests:
            ids: list[int] = []
            finish: str | None = None
            text = ""
            for token_id, _ in self._decode(r):
                text, finish = self._advance(r, ids, token_id, text)
                if finish is not None:
                    break
            finish = finish or "length"
            out.append(Generation(truncate_at_stop(text, r.stop), len(ids) + (finish == "eos"), finish))
        return out

    def _advance(self, r: GenerationRequest, ids: list[int], token_id: int, text: str) -> tuple[str, str | None]:
        """One decoded token of a generation (batched or not): its text so far, and why it ends here, if it
        does ("eos": the token is not kept; "stop": a stop string appeared; "length": the budget is spent)."""
        if token_id == self.eos_token_id and not r.ignore_eos:
            return text, "eos"
        ids.append(token_id)
        text = self.tokenizer.decode(ids)
        if r.stop and truncate_at_stop(text, r.stop) != text:
            return text, "stop"
        return text, "length" if len(ids) >= r.max_tokens else None

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        return [g.text for g in self.generations(requests)]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
