"""The one small protocol every engine implements.

A backend knows how to call its engine and nothing else: batching across
tasks, caching and per-sample logging live in `qeval.harness` (one shared
place), statistics in `qeval.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class Capabilities:
    """What an engine can run, and how honestly.

    Attributes:
        backend: registry name ("hf", "vllm", "trtllm", "openai").
        precisions: precision names it can run.
        kernels: per precision, "real" (true low-precision kernels), "simulated"
            (fake quantization: weights/activations rounded, math in high precision)
            or "emulated" (engine-provided emulation, e.g. FP4 on Hopper).
        run_here: False where the engine could not be run on this machine
            (TensorRT-LLM: "not run here").
        notes: free text shown in reports.
        compute_dtype: the dtype the engine computes in, read from the loaded engine itself
            (None where qeval cannot know it, e.g. a server someone else started).
    """

    backend: str
    precisions: tuple[str, ...]
    kernels: dict[str, str] = field(default_factory=dict)
    run_here: bool = True
    notes: str = ""
    compute_dtype: str | None = None


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score `continuation_tokens` after `context_tokens`.

    Token ids, not text: the harness tokenizes once with the model's tokenizer
    (lm-eval's own context/continuation split), so every engine scores exactly
    the same tokens and per-token comparisons across engines line up.
    """

    context_tokens: tuple[int, ...]
    continuation_tokens: tuple[int, ...]


@dataclass(frozen=True)
class LoglikelihoodResult:
    """Log-probability of `continuation` given `context`.

    Attributes:
        logprob: sum of the continuation's token log-probabilities.
        is_greedy: every continuation token is the argmax at its position.
        token_logprobs: one log-probability per continuation token.
    """

    logprob: float
    is_greedy: bool
    token_logprobs: tuple[float, ...]


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    ignore_eos: bool = False


@dataclass(frozen=True)
class TokenEvent:
    """One streamed chunk: its text, how many tokens it carries, and when it arrived.

    `t` is `time.perf_counter()` on the client side at arrival.
    """

    text: str
    n_tokens: int
    t: float


@runtime_checkable
class Backend(Protocol):
    """An engine behind qeval. Implementations: hf, vllm, trtllm, openai_server."""

    name: str

    @property
    def capabilities(self) -> Capabilities: ...

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...

    def generate(self, requests: list[GenerationRequest]) -> list[str]: ...

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]: ...

    def close(self) -> None: ...
