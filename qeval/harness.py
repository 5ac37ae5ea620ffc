"""The lm-eval adapter: any qeval backend becomes an lm-eval `LM`.

lm-eval owns the tasks, the prompts, the context/continuation split and the
metrics; this module owns the one shared place where engine calls are
batched and cached. Every engine response is appended to the cell's request
cache as soon as its batch returns, so a killed run loses at most the batch
in flight and a resumed run recomputes nothing that finished.
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval.api.model import TemplateLM

from qeval.backends.base import Backend, Generation, GenerationRequest, LoglikelihoodRequest
from qeval.store import RequestCache, request_key
from qeval.progress import progress_bar

log = logging.getLogger(__name__)


class QevalLM(TemplateLM):
    """lm-eval model over a qeval backend.

    Args:
        backend: the engine (hf, vllm, trtllm, openai).
        tokenizer: the model's Hugging Face tokenizer; tokenization happens here,
            once, so every engine scores the same token ids.
        cache: the cell's append-only request cache (resume).
        batch_size: requests per engine call, and per durable write.
        label: shown on the progress bar.
    """

    backend_type = "causal"

    def __init__(self, backend: Backend, tokenizer: Any, cache: RequestCache, *, batch_size: int = 64,
                 label: str = "") -> None:
        super().__init__()
        self.engine = backend
        self.tokenizer = tokenizer
        self.cache = cache
        self.batch_size = batch_size
        self.label = label or backend.name
        self.sampling_seed = 0  # base seed of sampled requests (the suite's seeds.sampling)
        self.repeat = 0  # which draw of a sampled task this pass is (TaskSpec.repeats)
        # What each generation of the current look was, by (context, stop, budget): per-sample records read it.
        self.generation_log: dict[tuple[str, tuple[str, ...], int], dict] = {}

    # -- tokenization (lm-eval's TemplateLM splits context/continuation with these) --
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's chat path (`apply_chat_template: true` in a suite): the model's own template, as text."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # -- scoring --
    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        scored = self.score_tokens([LoglikelihoodRequest(tuple(ctx), tuple(cont)) for _, ctx, cont in requests],
                                   disable_progress=disable_tqdm)
        return [(r["logprob"], r["is_greedy"]) for r in scored]

    def score_tokens(self, requests: list[LoglikelihoodRequest], disable_progress: bool = False) -> list[dict]:
        """Score token requests, from the cache where possible, else from the engine in durable batches."""
        keys = [request_key("loglikelihood", r.context_tokens, r.continuation_tokens) for r in requests]

        def compute(batch: list[LoglikelihoodRequest]) -> list[dict]:
            return [{"logprob": r.logprob, "is_greedy": r.is_greedy, "token_logprobs": list(r.token_logprobs)}
                    for r in self.engine.loglikelihood(batch)]

        return self._cached(keys, requests, compute, "loglikelihood", disable_progress)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood (perplexity tasks): windows of the text scored
        after the prefix token, as lm-eval's own models do."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        max_length = getattr(self.engine, "max_length", 2048)
        flat: list[LoglikelihoodRequest] = []
        owners: list[int] = []
        for n, (text,) in enumerate(req.args for req in requests):
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=max_length, context_len=1))
            for ctx, cont in windows:
                flat.append(LoglikelihoodRequest(tuple(ctx), tuple(cont)))
                owners.append(n)
        totals = [0.0] * len(requests)
        for owner, result in zip(owners, self.score_tokens(flat, disable_progress=disable_tqdm)):
            totals[owner] += result["logprob"]
        return totals

    def _generation_params(self, kwargs: dict[str, Any]) -> tuple[tuple[str, ...], int, float]:
        """(stop sequences, token budget, temperature) of lm-eval's generation kwargs."""
        until = kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
        if isinstance(until, str):
            until = [until]
        temperature = float(kwargs.get("temperature", 0.0) or 0.0)
        if not kwargs.get("do_sample", temperature > 0):
            temperature = 0.0  # lm-eval's do_sample: false means greedy whatever the temperature says
        return tuple(until), int(kwargs.get("max_gen_toks", 256)), temperature

    def generation_info(self, context: str, kwargs: dict[str, Any]) -> dict | None:
        """How the generation for this lm-eval request of the current look went (text, n_tokens, finish,
        seed); None where this LM did not generate it."""
        until, max_tokens, _ = self._generation_params(kwargs)
        return self.generation_log.get((context, until, max_tokens))

    def draw_seed(self, prompt: tuple[int, ...]) -> int:
        """The seed of one sampled request: from the suite's seed, the repeat and the prompt's tokens, so a
        draw does not depend on batching or order, differs per repeat and is the same on every engine."""
        digest = request_key("draw", self.sampling_seed, self.repeat, prompt)
        return int(digest[:8], 16) & 0x7FFFFFFF

    def _cached(self, keys: list[str], requests: list[Any], compute: Any, what: str,
                disable_progress: bool) -> list[dict]:
        return _cached(self, self.cache, keys, requests, compute, what, disable_progress)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generation with lm-eval's stop sequences and token budget, cached like scoring.

        Greedy requests are keyed by their inputs. Sampled ones (temperature > 0) get a seed per draw
        (`draw_seed`) that is part of their key: each repeat is its own sample, a resumed run replays the
        same draws from the cell's cache, and no sampled answer is shared across runs (the shared response
        cache is skipped for them).
        """
        gen_requests, contexts = [], []
        for req in requests:
            context, kwargs = req.args
            until, max_tokens, temperature = self._generation_params(kwargs)
            prompt = tuple(self.tok_encode(context))
            gen_requests.append(GenerationRequest(
                prompt=prompt, max_tokens=max_tokens, stop=until,
                temperature=temperature, seed=self.draw_seed(prompt) if temperature > 0 else None))
            contexts.append(context)
        keys = [request_key("generation", r.prompt, r.stop, r.max_tokens, r.temperature)
                if r.temperature <= 0 else request_key("generate-sampled", r.prompt, r.stop, r.max_tokens,
                                                        r.temperature, r.seed)
                for r in gen_requests]

        def compute(batch: list[GenerationRequest]) -> list[dict]:
            if hasattr(self.engine, "generations"):
                return [g.record() for g in self.engine.generations(batch)]
            return [Generation(t, None, "unknown").record() for t in self.engine.generate(batch)]

        greedy = [i for i, r in enumerate(gen_requests) if r.temperature <= 0]
        sampled = [i for i, r in enumerate(gen_requests) if r.temperature > 0]
        results: dict[int, dict] = {}
        for indices, cache in ((greedy, self.cache), (sampled, getattr(self.cache, "local", self.cache))):
            if indices:
                got = _cached(self, cache, [keys[i] for i in indices], [gen_requests[i] for i in indices],
                              compute, "generate", disable_tqdm)
                results.update(zip(indices, got))
        for i, (context, r) in enumerate(zip(contexts, gen_requests)):
            self.generation_log[(context, r.stop, r.max_tokens)] = {**results[i], "seed": r.seed}
        return [results[i]["text"] for i in range(len(gen_requests))]


def _cached(lm: QevalLM, cache: Any, keys: list[str], requests: list[Any], compute: Any, what: str,
            disable_progress: bool) -> list[dict]:
    """The one place engine calls happen: cached results are reused, the rest is computed batch by batch
    and each batch is appended to `cache` before the next starts."""
    cached = cache.lookup(keys)
    todo = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in cached))
    if len(todo) < len(requests):
        log.info("%s: %d of %d %s requests reused from the request cache", lm.label,
                 len(requests) - len(todo), len(requests), what)
    with progress_bar(f"{lm.label} {what}", total=len(todo), disable=disable_progress) as advance:
        for start in range(0, len(todo), lm.batch_size):
            batch = todo[start : start + lm.batch_size]
            results = compute([requests[i] for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{lm.engine.name} returned {len(results)} results for {len(batch)} requests")
            new = {keys[i]: r for i, r in zip(batch, results)}
            cache.append(new)
            cached.update(new)
            advance(len(batch))
    return [cached[k] for k in keys]
