"""Load generator for the latency probes: closed-loop concurrency and open-loop Poisson arrivals.

Two load shapes, as `vllm bench serve` has them:

- **concurrency N** (closed loop): N workers; each sends its next request as
  soon as its previous one has finished, so exactly N requests are in flight
  until the queue runs dry (`vllm bench serve --max-concurrency N
  --request-rate inf`).
- **request rate r** (open loop): requests are sent at Poisson arrival times
  (seeded exponential gaps, mean 1/r), whatever the engine's state, so
  requests queue when the engine falls behind (`--request-rate r`, burstiness
  1). Unlike vLLM's client we do not rescale the gaps so that they sum to
  exactly N/r: the schedule is a true Poisson process, and the same seed gives
  the baseline and the candidate the very same arrival times.

Why threads: `Backend.stream()` is a blocking iterator, so each in-flight
request gets a thread of its own; the thread only appends each `TokenEvent` to
a list (the engine stamps `TokenEvent.t` itself, at arrival), and every
metric is computed afterwards (`qeval.latency`). Engines that do their work
outside Python (a server process, vLLM's engine core) see true concurrent
requests. The in-process HF backend has no cross-request batching: each
stream runs its own one-token forward passes on one model instance and the
same cores, so at concurrency N the requests take turns — there the numbers
measure queueing and contention, not what a serving engine would do.

Nothing here knows about suites or files: `run_load` takes a backend, the
requests and a shape, and returns timestamped records.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np

from qeval.backends.base import GenerationRequest, TokenEvent
from qeval.errors import QevalError


@dataclass(frozen=True)
class LoadShape:
    """One load point.

    Attributes:
        kind: "concurrency" (closed loop) or "rate" (Poisson arrivals).
        concurrency: in-flight requests (kind "concurrency").
        request_rate: mean arrivals per second (kind "rate").
    """

    kind: Literal["concurrency", "rate"]
    concurrency: int | None = None
    request_rate: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "concurrency" and not (self.concurrency and self.concurrency >= 1):
            raise QevalError(f"a concurrency load point needs concurrency >= 1, got {self.concurrency!r}",
                             field="latency.concurrency", fix="use a positive whole number, e.g. 4")
        if self.kind == "rate" and not (self.request_rate and self.request_rate > 0):
            raise QevalError(f"a request-rate load point needs a rate > 0, got {self.request_rate!r}",
                             field="latency.request_rate", fix="use requests per second, e.g. 2.5")

    @classmethod
    def closed(cls, n: int) -> "LoadShape":
        return cls("concurrency", concurrency=int(n))

    @classmethod
    def poisson(cls, rate: float) -> "LoadShape":
        return cls("rate", request_rate=float(rate))

    @property
    def label(self) -> str:
        return f"c{self.concurrency}" if self.kind == "concurrency" else f"r{self.request_rate:g}"


def poisson_schedule(n: int, rate: float, seed: int) -> np.ndarray:
    """Send offsets (seconds from the start) of `n` Poisson arrivals at `rate` per second.

    The first request goes at 0; the n - 1 gaps are exponential with mean 1/rate,
    drawn from `np.random.default_rng(seed)`: the same seed gives the same schedule.
    """
    if n <= 0:
        return np.zeros(0)
    if rate <= 0:
        raise QevalError(f"request rate must be > 0 requests/s, got {rate}", field="latency.request_rate",
                         fix="use a positive rate, e.g. 2.5")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


@dataclass
class RequestRecord:
    """What one request left behind: its send time, every stream event, and how it ended.

    Attributes:
        index: position in the request list.
        warmup: True for warm-up requests (excluded from every statistic).
        t_send: perf_counter() just before `backend.stream()` was called.
        events: the stream's events, untouched (each carries its own arrival time).
        t_done: perf_counter() when the stream ended (or raised).
        t_scheduled: for Poisson arrivals, the perf_counter() time it was due; else None.
        error: "ExceptionType: message" if the stream raised, else None.
        exc_type: the exception's class, if any (lets the caller tell "cannot stream" from a crash).
    """

    index: int
    warmup: bool
    t_send: float = 0.0
    events: list[TokenEvent] = field(default_factory=list)
    t_done: float = 0.0
    t_scheduled: float | None = None
    error: str | None = None
    exc_type: type | None = None


@dataclass
class LoadRun:
    """One load point's raw result.

    Attributes:
        shape: the load point.
        records: warm-up records first, then the measured ones (by index).
        t_start: perf_counter() when the measured phase began (after the warm-up).
        t_end: perf_counter() when the last measured request ended.
        max_in_flight: most measured requests seen in flight at once.
        max_send_lag_s: Poisson only: the largest delay between a request's due time and its send.
    """

    shape: LoadShape
    records: list[RequestRecord]
    t_start: float
    t_end: float
    max_in_flight: int
    max_send_lag_s: float | None = None

    @property
    def duration_s(self) -> float:
        return self.t_end - self.t_start

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.warmup]

    @property
    def warmup(self) -> list[RequestRecord]:
        return [r for r in self.records if r.warmup]


class _InFlight:
    """A counter of requests in flight that remembers its maximum."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.max = 0

    def __enter__(self) -> "_InFlight":
        with self._lock:
            self.now += 1
            self.max = max(self.max, self.now)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self.now -= 1


def _send(backend: Any, request: GenerationRequest, record: RequestRecord) -> None:
    """Run one request to its end. The loop body is one list append: the probe's cost per token."""
    events = record.events
    record.t_send = time.perf_counter()
    try:
        for event in backend.stream(request):
            events.append(event)
    except Exception as exc:  # noqa: BLE001 - one failed request is recorded, not fatal to the load point
        record.error = f"{type(exc).__name__}: {exc}"
        record.exc_type = type(exc)
    record.t_done = time.perf_counter()


def _closed_loop(backend: Any, requests: Sequence[GenerationRequest], records: list[RequestRecord], workers: int,
                 in_flight: _InFlight, on_done: Callable[[RequestRecord], None]) -> None:
    """`workers` threads; each takes the next request when its previous one has finished."""
    lock = threading.Lock()
    queue = iter(range(len(requests)))
    n_workers = min(workers, len(requests))
    # Every worker is up before any sends: otherwise starting thread k+1 waits for CPU time while
    # thread k already streams, and the first wave goes out spread over a quarter second on a busy
    # 2-core machine (seen: 265 ms at concurrency 4, where `vllm bench serve`'s asyncio sends in 1 ms).
    start = threading.Barrier(max(n_workers, 1))

    def worker() -> None:
        start.wait()
        while True:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            with in_flight:
                _send(backend, requests[i], records[i])
            on_done(records[i])

    threads = [threading.Thread(target=worker, name=f"qeval-load-{k}", daemon=True) for k in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _open_loop(backend: Any, requests: Sequence[GenerationRequest], records: list[RequestRecord],
               offsets: np.ndarray, t0: float, in_flight: _InFlight,
               on_done: Callable[[RequestRecord], None]) -> None:
    """Send request i at t0 + offsets[i] on a thread of its own, whatever is still in flight."""

    def one(i: int) -> None:
        with in_flight:
            _send(backend, requests[i], records[i])
        on_done(records[i])

    threads = []
    for i, offset in enumerate(offsets):
        due = t0 + float(offset)
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        records[i].t_scheduled = due
        t = threading.Thread(target=one, args=(i,), name=f"qeval-load-{i}", daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


def run_load(backend: Any, requests: Sequence[GenerationRequest], shape: LoadShape, *,
             warmup: Sequence[GenerationRequest] = (), seed: int = 0,
             on_done: Callable[[RequestRecord], None] | None = None) -> LoadRun:
    """Drive `backend.stream()` with `requests` at one load point.

    Warm-up requests run first, at the same concurrency (Poisson load points: up to
    that many at once, back to back), and are recorded with `warmup=True`; the
    measured phase starts when they have all finished.

    Args:
        backend: anything with `stream(GenerationRequest) -> Iterator[TokenEvent]`.
        requests: the measured requests, sent in this order.
        shape: the load point.
        warmup: warm-up requests (excluded from the statistics downstream).
        seed: Poisson schedule seed (the same for every cell, so baseline and candidate
            see the same arrival times).
        on_done: called (from a worker thread) after each request, warm-up included.

    Returns:
        LoadRun.
    """
    done = on_done or (lambda record: None)
    warm = [RequestRecord(index=i, warmup=True) for i in range(len(warmup))]
    if warm:
        width = shape.concurrency if shape.kind == "concurrency" else len(warm)
        _closed_loop(backend, warmup, warm, width or 1, _InFlight(), done)
    records = [RequestRecord(index=i, warmup=False) for i in range(len(requests))]
    in_flight = _InFlight()
    lag = None
    t_start = time.perf_counter()
    if shape.kind == "concurrency":
        _closed_loop(backend, requests, records, shape.concurrency or 1, in_flight, done)
    else:
        offsets = poisson_schedule(len(requests), shape.request_rate or 1.0, seed)
        _open_loop(backend, requests, records, offsets, t_start, in_flight, done)
        lag = max((r.t_send - r.t_scheduled for r in records if r.t_scheduled is not None), default=0.0)
    t_end = max((r.t_done for r in records), default=t_start)
    return LoadRun(shape=shape, records=warm + records, t_start=t_start, t_end=t_end,
                   max_in_flight=in_flight.max, max_send_lag_s=lag)
