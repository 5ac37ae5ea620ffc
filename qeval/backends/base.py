"""The one small protocol every engine implements.

A backend knows how to call its engine and nothing else: batching across
tasks, caching and per-sample logging live in `qeval.harness` (one shared
place), statistics in `qeval.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


class EngineUnavailable(RuntimeError):
    """This engine cannot run here: not installed, no GPU, no kernels or no load path for the precision.

    Not bad input (that is `qeval.errors.QevalError`, exit code 2, the whole run stops) and not a crash
    (an ERROR cell): the cell ends NOT RUN with this reason, and every other cell of the run goes on.
    Every backend raises it for "cannot run here"; the runner records it (status state "not_run").

    Args:
        reason: what is missing, in one sentence, as measured (the import error, the device seen).
        engine: the backend's registry name ("trtllm", "vllm", ...).
        fix: what would make it run, if anything.
        probe: what was measured to decide it, e.g. {"import": "ModuleNotFoundError: ...",
            "gpu": "none visible"}: reports show it beside the reason.
    """

    def __init__(self, reason: str, *, engine: str, fix: str | None = None,
                 probe: Mapping[str, str] | None = None) -> None:
        self.reason = reason
        self.engine = engine
        self.fix = fix
        self.probe = dict(probe or {})
        super().__init__(reason)

    def as_record(self) -> dict[str, Any]:
        """The status fields of a NOT RUN cell."""
        return {"state": "not_run", "engine": self.engine, "reason": self.reason, "fix": self.fix,
                "probe": self.probe}


@dataclass(frozen=True)
class Capabilities:
    """What an engine can run, and how honestly.

    Attributes:
        backend: registry name ("hf", "vllm", "trtllm", "openai").
        precisions: precision names it can run.
        kernels: per precision, "real" (true low-precision kernels), "simulated"
            (fake quantization: weights/activations rounded, math in high precision)
            or "emulated" (engine-provided emulation, e.g. FP4 on Hopper).
        run_here: False where the engine could not be run on this machine.
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
    engine_report: dict[str, Any] = field(default_factory=dict)  # what the engine itself says it runs


@dataclass(frozen=True)
class DistributionRoute:
    """How an engine produced next-token distributions, recorded beside every number made from them.

    Attributes:
        name: short id, e.g. "hf-full-vocabulary", "vllm-prompt-logprobs-full", "openai-echo-top-k".
        exact: True when every distribution is the full vocabulary (KL exact); False when only the
            top-k entries came back (KL can only be bounded).
        top_k: entries per position where not exact (None when exact).
        detail: what was done, in words (API parameters, patches applied, fallbacks taken).
    """

    name: str
    exact: bool
    top_k: int | None = None
    detail: str = ""


@dataclass
class PromptDistributions:
    """The next-token distributions at every position of one token sequence, as an engine returned them.

    For a sequence of T tokens there are n = T - 1 rows; row t predicts token t + 1.

    Attributes:
        targets: [n] the actual next tokens (sequence[1:]).
        target_logprobs: [n] their log-probabilities.
        full: [n, vocab] float32 log-probabilities in vocabulary order, where the engine gave all of
            them (exact route); None otherwise.
        top_ids: [n, k] the k most likely tokens, most likely first (always set; from `full` where exact).
        top_logprobs: [n, k] their log-probabilities.
        floor: [n] the smallest log-probability over the vocabulary at each position, where the engine
            reports it (it makes an upper bound on KL possible from top-k data); None otherwise.
    """

    targets: np.ndarray
    target_logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    full: np.ndarray | None = None
    floor: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])

    @classmethod
    def from_full(cls, logprobs: np.ndarray, sequence: Sequence[int], top_k: int = 1) -> "PromptDistributions":
        """From a [n, vocab] log-probability array whose row t predicts sequence[t + 1]."""
        full = np.ascontiguousarray(logprobs, dtype=np.float32)
        targets = np.asarray(sequence[1:1 + full.shape[0]], dtype=np.int64)
        return cls.from_full_top(full, targets, top_k)

    @classmethod
    def from_full_top(cls, full: np.ndarray, targets: np.ndarray, top_k: int = 1) -> "PromptDistributions":
        """As `from_full`, with the targets given."""
        if top_k >= full.shape[1]:
            top = np.argsort(-full, axis=1, kind="stable")
        elif top_k == 1:
            top = full.argmax(axis=1)[:, None]
        else:
            part = np.argpartition(-full, top_k - 1, axis=1)[:, :top_k]
            order = np.argsort(-np.take_along_axis(full, part, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(part, order, axis=1)
        return cls(targets=targets, target_logprobs=full[np.arange(full.shape[0]), targets],
                   top_ids=top, top_logprobs=np.take_along_axis(full, top, axis=1), full=full,
                   floor=full.min(axis=1))


@runtime_checkable
class DistributionSource(Protocol):
    """A backend that returns next-token distributions for token sequences (divergence needs it)."""

    @property
    def distribution_route(self) -> DistributionRoute: ...

    def prompt_distributions(self, sequences: Sequence[Sequence[int]], *,
                             batch_size: int | None = None) -> list[PromptDistributions]:
        """One PromptDistributions per sequence; `batch_size` sequences per engine call (None: the
        engine's usual batching; 1: one sequence at a time, the second batch composition of the noise
        floor)."""
        ...


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
    """Generate up to `max_tokens` after `prompt`, cut at the first of `stop`.

    Attributes:
        temperature: 0 is greedy; above 0 samples, from `seed` where given (the same seed draws the
            same sample on the same engine: repeats are reproducible, and resumable).
    """

    prompt: str | tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    ignore_eos: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    """One generated text and how it ended.

    Attributes:
        text: the text, cut at the first stop sequence (the stop sequence itself removed, as lm-eval expects).
        n_tokens: tokens the engine generated (None where it does not say).
        finish: "stop" (a stop sequence), "eos" (end of sequence), "length" (the token budget) or
            "unknown" (the engine does not say).
    """

    text: str
    n_tokens: int | None
    finish: str

    def record(self) -> dict[str, Any]:
        return {"text": self.text, "n_tokens": self.n_tokens, "finish": self.finish}


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

    def generations(self, requests: list[GenerationRequest]) -> list[Generation]:
        """As `generate`, with each text's token count and why it stopped (what per-sample records keep)."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]: ...

    def close(self) -> None: ...
