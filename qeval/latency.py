"""Latency probes: TTFT, TPOT, ITL, E2E and throughput under load, on any engine with `stream()`.

Definitions (per request, from the engine's timestamped stream; they are the
ones `vllm bench serve` uses, vllm/benchmarks/lib/endpoint_request_func.py and
serve.py `calculate_metrics`, so our numbers and theirs mean the same thing):

- A *chunk* is a `TokenEvent` with ``n_tokens >= 1``; events with no token
  (keep-alives, a usage-only tail) carry no timing. ``t_send`` is
  `perf_counter()` just before `backend.stream()` is called; each chunk's time
  is its `TokenEvent.t`, stamped by the engine at arrival.
- **TTFT** = t(first chunk) - t_send.
- **E2E** = t(last chunk) - t_send (the last token's arrival, not the end of
  the HTTP stream).
- **ITL**: one gap per chunk after the first, t(chunk j) - t(chunk j-1). A
  chunk that carries k tokens gives ONE gap, not k gaps of 1/k each (vLLM's
  client does the same: it appends one ITL per received chunk), so sum(ITL) =
  E2E - TTFT exactly. With one token per chunk (vLLM's default
  stream interval, HF here) ITL is the inter-token latency proper.
- **TPOT** = (E2E - TTFT) / (output tokens - 1), output tokens = the sum of
  the chunks' n_tokens; undefined (left out) for a request with one token.
- Per load point: **requests/s** = completed requests / duration and
  **output tokens/s** = their output tokens / duration, duration = from the
  start of the measured phase (after the warm-up) to the end of its last
  request.

Percentiles p50/p90/p99 of TTFT, TPOT and E2E carry order-statistic
intervals (`stats.percentile_ci`, at confidence 1 - 2 alpha: the gate's SLO
check reads the upper end as a one-sided bound at the gate's alpha). An end
that the number of requests cannot give is null: p99 needs 299 requests for
an upper bound at alpha 0.05, and below that the SLO rule says INCONCLUSIVE
and how many it needs. ITL pools every gap of every request; gaps of one
request are not independent, so its interval resamples whole requests (a
cluster bootstrap) rather than gaps. Warm-up requests run before
each load point, are stored (flagged) and are excluded from every number.

Workload: `num_requests` prompts of exactly `input_tokens` token ids per load
point, built like vLLM's `random` dataset (consecutive non-special vocabulary
ids from a seeded start, `synthetic_prompts`) but sent as token ids, so there
is no decode/re-encode drift; every prompt starts at a different token, so a
prefix cache never serves one request from another. Greedy, `ignore_eos`,
`max_tokens = output_tokens`: baseline and candidates do the same work, on the
same prompts and (Poisson) the same arrival times.

Speed-ups are computed at report time from the per-request samples that
`latency.json` keeps (`compare`), as ratios with a bootstrap interval
(`stats.speedup_ratio`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qeval import stats
from qeval.backends.base import GenerationRequest, TokenEvent
from qeval.errors import QevalError
from qeval.loadgen import LoadRun, LoadShape, RequestRecord, run_load
from qeval.progress import progress_bar

log = logging.getLogger(__name__)

SCHEMA = "qeval.latency/1"
METRICS = ("ttft", "tpot", "itl", "e2e")
PERCENTILES = (50.0, 90.0, 99.0)

# Raised by a backend's stream() when the engine cannot stream at all (e.g. in-process
# vllm.LLM): the cell's latency is recorded as unavailable, the cell itself is fine.
_CANNOT_STREAM = (QevalError, NotImplementedError)


# ----------------------------------------------------------------------------
# One request
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestTiming:
    """The metrics of one request (seconds).

    Attributes:
        ttft: time to first token.
        e2e: time to the last token.
        tpot: (e2e - ttft) / (output_tokens - 1); None with fewer than two tokens.
        itl: one gap per chunk after the first.
        output_tokens: tokens received (sum of the chunks' n_tokens).
        chunks: token-carrying events received.
    """

    ttft: float
    e2e: float
    tpot: float | None
    itl: tuple[float, ...]
    output_tokens: int
    chunks: int


def measure(t_send: float, events: Iterable[TokenEvent]) -> RequestTiming | None:
    """TTFT, ITL, E2E and TPOT of one streamed request; None if no token arrived.

    Args:
        t_send: perf_counter() when the request was sent.
        events: the stream's events in arrival order.
    """
    times: list[float] = []
    tokens = 0
    for e in events:
        if e.n_tokens > 0:
            times.append(e.t)
            tokens += e.n_tokens
    if not times:
        return None
    ttft = times[0] - t_send
    e2e = times[-1] - t_send
    itl = tuple(b - a for a, b in zip(times, times[1:]))
    tpot = (e2e - ttft) / (tokens - 1) if tokens > 1 else None
    return RequestTiming(ttft=ttft, e2e=e2e, tpot=tpot, itl=itl, output_tokens=tokens, chunks=len(times))


# ----------------------------------------------------------------------------
# Workload
# ----------------------------------------------------------------------------

def synthetic_prompts(tokenizer: Any, n: int, input_tokens: int, seed: int) -> list[tuple[int, ...]]:
    """`n` prompts of exactly `input_tokens` token ids, deterministic in (tokenizer, seed).

    Prompt i is a run of consecutive non-special vocabulary ids starting at a seeded
    start token, as vLLM's `random` dataset builds its prompts. Starts are drawn
    without replacement, so no two prompts share a first token (or any prefix-cache block).
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = int(tokenizer.vocab_size)
    allowed = np.array([t for t in range(vocab) if t not in special], dtype=np.int64)
    if allowed.size == 0:
        raise QevalError("the tokenizer has no non-special tokens to build latency prompts from",
                         field="model.source", fix="use the model's own tokenizer")
    rng = np.random.default_rng(seed)
    starts = rng.choice(allowed.size, size=n, replace=n > allowed.size)
    span = np.arange(input_tokens)
    return [tuple(int(x) for x in allowed[(s + span) % allowed.size]) for s in starts]


def prompts_digest(prompts: Sequence[Sequence[int] | str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update((p if isinstance(p, str) else ",".join(map(str, p))).encode())
        h.update(b"\n")
    return h.hexdigest()


def build_requests(prompts: Sequence[tuple[int, ...] | str], output_tokens: int) -> list[GenerationRequest]:
    """Greedy, ignore_eos, exactly `output_tokens` new tokens: every cell does the same work."""
    return [GenerationRequest(prompt=p, max_tokens=output_tokens, temperature=0.0, ignore_eos=True) for p in prompts]


# ----------------------------------------------------------------------------
# One load point: samples and summaries
# ----------------------------------------------------------------------------

def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 4)


def request_sample(record: RequestRecord, t0: float) -> dict[str, Any]:
    """The per-request sample kept in latency.json (ms; t_send_s relative to the measured phase start)."""
    timing = None if record.error else measure(record.t_send, record.events)
    error = record.error or (None if timing else "no token arrived")
    out: dict[str, Any] = {"i": record.index, "warmup": record.warmup, "t_send_s": round(record.t_send - t0, 6),
                           "error": error}
    if record.t_scheduled is not None:
        out["send_lag_ms"] = _ms(record.t_send - record.t_scheduled)
    if timing is not None:
        out.update(ttft_ms=_ms(timing.ttft), tpot_ms=_ms(timing.tpot), e2e_ms=_ms(timing.e2e),
                   itl_ms=[_ms(g) for g in timing.itl], output_tokens=timing.output_tokens, chunks=timing.chunks)
    return out


def metric_samples(samples: Sequence[dict]) -> dict[str, list]:
    """Measured, successful requests -> {ttft, tpot, e2e: [ms per request], itl: [[ms per gap] per request]}."""
    ok = [s for s in samples if not s["warmup"] and s["error"] is None]
    return {"ttft": [s["ttft_ms"] for s in ok], "e2e": [s["e2e_ms"] for s in ok],
            "tpot": [s["tpot_ms"] for s in ok if s["tpot_ms"] is not None],
            "itl": [s["itl_ms"] for s in ok]}


def clustered_percentile_ci(groups: Sequence[Sequence[float]], q: float, *, confidence: float = 0.95,
                            n_resamples: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """Percentile of pooled values with a cluster bootstrap: resample whole groups (requests).

    The gaps of one request share its prompt, its batch-mates and its stalls, so
    resampling single gaps would give too narrow an interval. Percentile method,
    as `stats.percentile_ci`.

    Returns:
        (estimate over all pooled values, (low, high), number of pooled values).
    """
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    pooled = np.concatenate(groups) if groups else np.zeros(0)
    if pooled.size == 0:
        raise QevalError("no inter-token gaps to summarize", fix="use output_tokens >= 2")
    est = float(np.percentile(pooled, q))
    if len(groups) < 2 or np.all(pooled == pooled[0]):
        return est, (est, est), pooled.size
    width = max(g.size for g in groups)
    padded = np.full((len(groups), width), np.nan)
    for row, g in enumerate(groups):
        padded[row, : g.size] = g
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // padded.size)
    boot = []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        picks = rng.integers(0, len(groups), size=(b, len(groups)))
        boot.append(np.nanpercentile(padded[picks].reshape(b, -1), q, axis=1))
    dist = np.concatenate(boot)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(dist, [alpha, 1 - alpha])
    return est, (float(lo), float(hi)), pooled.size


def summarize_load_point(samples: Sequence[dict], shape: LoadShape, *, warmup_excluded: int,
                         confidence: float, n_resamples: int = 2000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Mean and p50/p90/p99 (with intervals) of each metric at one load point.

    Returns:
        (summary {metric: {"mean_ms", "n", "p50": {"value_ms", "ci_ms"}, ...}},
         percentile rows in the shape of `gate.LatencyEvidence` minus candidate/backend).
    """
    per_metric = metric_samples(samples)
    summary: dict[str, Any] = {}
    rows: list[dict] = []
    for metric in METRICS:
        values = per_metric[metric]
        flat = [g for gaps in values for g in gaps] if metric == "itl" else values
        if not flat:
            continue
        entry: dict[str, Any] = {"mean_ms": float(np.mean(flat)), "n": len(flat)}
        for q in PERCENTILES:
            if metric == "itl":
                est, ci, n = clustered_percentile_ci(values, q, confidence=confidence, n_resamples=n_resamples,
                                                     seed=seed)
            else:
                p = stats.percentile_ci(flat, q, confidence=confidence)
                est, ci, n = p.estimate, p.ci, p.n
            entry[f"p{q:g}"] = {"value_ms": est, "ci_ms": [ci[0], ci[1]]}
            rows.append({"metric": metric, "percentile": q, "value_ms": est, "ci_ms": [ci[0], ci[1]], "n": n,
                         "concurrency": shape.concurrency, "request_rate": shape.request_rate,
                         "warmup_excluded": warmup_excluded})
        summary[metric] = entry
    return summary, rows


def load_point_record(run: LoadRun, *, confidence: float, n_resamples: int = 2000, seed: int = 0,
                      expected_output_tokens: int | None = None) -> tuple[dict, list[dict]]:
    """A load point as stored in latency.json, and its percentile rows for the gate."""
    samples = [request_sample(r, run.t_start) for r in run.records]
    measured = [s for s in samples if not s["warmup"]]
    ok = [s for s in measured if s["error"] is None]
    out_tokens = sum(s["output_tokens"] for s in ok)
    duration = run.duration_s
    warm = len(run.warmup)
    summary, rows = (summarize_load_point(samples, run.shape, warmup_excluded=warm, confidence=confidence,
                                          n_resamples=n_resamples, seed=seed) if ok else ({}, []))
    short = (sum(1 for s in ok if s["output_tokens"] != expected_output_tokens)
             if expected_output_tokens is not None else 0)
    columns = metric_samples(samples)
    point = {"load": run.shape.label, "shape": run.shape.kind, "concurrency": run.shape.concurrency,
             "request_rate": run.shape.request_rate, "warmup_excluded": warm, "completed": len(ok),
             "failed": len(measured) - len(ok), "wrong_length": short, "duration_s": duration,
             "requests_per_s": len(ok) / duration if duration > 0 else None,
             "output_tokens_per_s": out_tokens / duration if duration > 0 else None,
             "total_output_tokens": out_tokens, "max_in_flight": run.max_in_flight,
             "max_send_lag_ms": _ms(run.max_send_lag_s), "summary": summary,
             # Per-request columns (measured, successful requests, in order) for the report's speed-ups.
             "ttft_ms": columns["ttft"], "tpot_ms": columns["tpot"], "e2e_ms": columns["e2e"],
             "output_tokens": [s["output_tokens"] for s in ok],
             "requests": samples}
    return point, rows


# ----------------------------------------------------------------------------
# A whole probe
# ----------------------------------------------------------------------------

def load_shapes(concurrency: Sequence[int], request_rate: Sequence[float]) -> list[LoadShape]:
    """The concurrency sweep first, then the Poisson request rates."""
    return [LoadShape.closed(c) for c in concurrency] + [LoadShape.poisson(r) for r in request_rate]


def probe(backend: Any, tokenizer: Any, *, concurrency: Sequence[int] = (1, 4), request_rate: Sequence[float] = (),
          input_tokens: int = 128, output_tokens: int = 32, num_requests: int = 16, warmup_requests: int = 2,
          seed: int = 0, bootstrap_seed: int = 0, confidence: float = 0.90, n_resamples: int = 2000,
          prompts: Sequence[tuple[int, ...] | str] | None = None, label: str = "latency", sweep: int = 0,
          sweep_rates: Sequence[float] | None = None, sweep_source: str = "",
          goodput_slo: Mapping[str, float] | None = None) -> dict:
    """Measure every load point on one backend and return the latency record (not written anywhere).

    Args:
        backend: anything with `stream(GenerationRequest)`.
        tokenizer: builds the synthetic prompts (vocabulary and special ids).
        concurrency: closed-loop load points.
        request_rate: Poisson load points (requests/s).
        input_tokens, output_tokens, num_requests, warmup_requests: the workload per load point.
        seed: prompts and Poisson schedules (keep it equal across the cells compared).
        bootstrap_seed: ITL percentile intervals (cluster bootstrap; the others use order statistics).
        confidence: two-sided coverage of the intervals.
        n_resamples: bootstrap resamples (ITL intervals).
        prompts: your own prompts instead of the synthetic ones (warm-up ones first: each load
            point takes the next warmup_requests + num_requests of them, cycling).
        label: progress bar text.
        sweep: GuideLLM sweep size (qeval.load_profiles.sweep_rates; 0: none): after the listed points,
            sweep - 2 Poisson rates from the concurrency-1 rate up to the highest concurrency's rate.
        sweep_rates: the sweep's rates given (the baseline's, so a candidate sees the same offered load);
            None measures them here.
        sweep_source: where given sweep_rates come from (recorded).
        goodput_slo: metric -> ms; each load point then records its goodput (qeval.load_profiles.goodput).

    Returns:
        The record written to latency.json (see `run_latency`).
    """
    from qeval import load_profiles

    shapes = load_shapes(concurrency, request_rate)
    n_sweep = max(0, sweep - 2) if sweep else 0
    per_point = warmup_requests + num_requests
    if prompts is None:
        prompts = synthetic_prompts(tokenizer, per_point * (len(shapes) + n_sweep), input_tokens, seed)
        source = f"synthetic token ids (seed {seed}), exactly {input_tokens} per prompt"
    else:
        source = "given prompts"
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "workload": {"input_tokens": input_tokens, "output_tokens": output_tokens, "num_requests": num_requests,
                     "warmup_requests": warmup_requests, "ignore_eos": True, "temperature": 0.0, "seed": seed,
                     "prompts": source, "prompts_sha256": prompts_digest(prompts)},
        "confidence": confidence, "bootstrap": {"n_resamples": n_resamples, "seed": bootstrap_seed},
        "loads": [], "percentiles": [],
    }
    with progress_bar(label, per_point * (len(shapes) + n_sweep)) as advance:
        k = 0
        while k < len(shapes):
            shape = shapes[k]
            chunk = [prompts[(k * per_point + j) % len(prompts)] for j in range(per_point)]
            warm = build_requests(chunk[:warmup_requests], output_tokens)
            measured = build_requests(chunk[warmup_requests:], output_tokens)
            run = run_load(backend, measured, shape, warmup=warm, seed=seed + k, on_done=lambda r: advance(1))
            unavailable = _cannot_stream(run)
            if unavailable:
                record["unavailable"] = unavailable
                record["loads"], record["percentiles"] = [], []
                return record
            point, rows = load_point_record(run, confidence=confidence, n_resamples=n_resamples,
                                            seed=bootstrap_seed, expected_output_tokens=output_tokens)
            if point["completed"] == 0:
                first = next(r.error for r in run.records if r.error) if any(r.error for r in run.records) \
                    else "no token arrived"
                raise RuntimeError(f"latency at {shape.label}: every request failed (first error: {first})")
            if point["failed"] or point["wrong_length"]:
                log.warning("%s %s: %d failed requests, %d with a length other than %d tokens", label, shape.label,
                            point["failed"], point["wrong_length"], output_tokens)
            if goodput_slo:
                point["goodput"] = load_profiles.goodput(point["requests"], goodput_slo, point["duration_s"],
                                                         confidence=confidence)
            record["loads"].append(point)
            record["percentiles"].extend(rows)
            s = point["summary"]
            log.info("%s %s: TTFT p50 %.1f ms, TPOT p50 %.2f ms, %.2f req/s, %.1f tok/s", label, shape.label,
                     s["ttft"]["p50"]["value_ms"], s.get("tpot", {}).get("p50", {}).get("value_ms", math.nan),
                     point["requests_per_s"], point["output_tokens_per_s"])
            k += 1
            if n_sweep and k == len(concurrency) + len(request_rate):  # the listed points are done: the sweep
                record["sweep"] = _sweep_record(record["loads"], concurrency, sweep, sweep_rates, sweep_source)
                shapes += [LoadShape.poisson(r) for r in record["sweep"]["rates"]]
    return record


def _sweep_record(loads: Sequence[dict], concurrency: Sequence[int], sweep: int,
                  given: Sequence[float] | None, source: str) -> dict:
    """The sweep's ends as measured at concurrency 1 and at the highest concurrency, and its rates."""
    from qeval import load_profiles

    by_c = {p["concurrency"]: p for p in loads if p["shape"] == "concurrency"}
    top = max(concurrency)
    sync, thr = by_c[1]["requests_per_s"], by_c[top]["requests_per_s"]
    rates = [float(r) for r in given] if given else load_profiles.sweep_rates(sync, thr, sweep)
    return {"size": sweep, "synchronous_load": "c1", "throughput_load": f"c{top}", "synchronous_rps": sync,
            "throughput_rps": thr, "rates": rates, "arrivals": "poisson",
            "rates_from": source if given else "this cell's own synchronous and throughput points",
            "definition": "GuideLLM sweep: np.linspace(synchronous, throughput, size - 1)[1:]"}


def _cannot_stream(run: LoadRun) -> str | None:
    """The reason, if every request raised the engine's 'cannot stream' error."""
    if run.records and all(r.exc_type is not None and issubclass(r.exc_type, _CANNOT_STREAM) for r in run.records):
        return run.records[0].error
    return None


def run_latency(ctx: Any, cell: Any, backend: Any) -> dict:
    """The runner's latency step for one cell: probe every load point of the suite, write latency.json.

    Resumable: a cell whose latency.json exists (same schema) is not measured again.

    Args:
        ctx: the run's `runner.Context` (suite, store, tokenizer).
        cell: the `runner.Cell`.
        backend: the cell's open backend.

    Returns:
        The record written to `cells/<cell>/latency.json`: "percentiles" (rows read by
        `evidence.collect` as `gate.LatencyEvidence`), "loads" (one per load point:
        throughput, summaries, per-request columns `ttft_ms`/`tpot_ms`/`e2e_ms`/`output_tokens`
        for the report's speed-ups, and every per-request sample with its ITL gaps under
        "requests", warm-ups flagged), "workload", "kernels", and "unavailable" when the
        engine cannot stream.
    """
    existing = ctx.store.read_json(cell.id, "latency.json")
    if existing and existing.get("schema") == SCHEMA:
        return existing
    spec = ctx.suite.latency
    rates, source = None, ""
    if spec.sweep and not cell.is_baseline:  # the baseline's offered loads, so every speed-up compares like with like
        base_id = f"{ctx.suite.baseline}-{cell.backend}"
        base_sweep = (ctx.store.read_json(base_id, "latency.json") or {}).get("sweep") or {}
        if base_sweep.get("rates"):
            rates, source = base_sweep["rates"], f"the baseline cell {base_id}"
    record = probe(backend, ctx.tokenizer, concurrency=spec.concurrency, request_rate=spec.request_rate,
                   input_tokens=spec.input_tokens, output_tokens=spec.output_tokens, num_requests=spec.num_requests,
                   warmup_requests=spec.warmup_requests, seed=ctx.suite.seeds.sampling,
                   bootstrap_seed=ctx.suite.seeds.bootstrap, confidence=1 - 2 * ctx.suite.gate.alpha,
                   label=f"latency {cell.id}", sweep=spec.sweep, sweep_rates=rates, sweep_source=source,
                   goodput_slo=dict(spec.goodput))
    kernels = dict(backend.capabilities.kernels)
    record.update(cell=cell.id, precision=cell.precision, backend=cell.backend, kernels=kernels)
    notes = []
    if cell.backend == "hf":
        notes.append("HF in process has no cross-request batching: concurrent streams take turns on one model, "
                     "so concurrency measures queueing, not serving throughput")
    if kernels.get(cell.precision) == "simulated":
        notes.append("simulated (fake) quantization: these timings are not those of low-precision kernels")
    if notes:
        record["notes"] = notes
    if "unavailable" in record:
        log.warning("%s: no latency measured: %s", cell.id, record["unavailable"])
    ctx.store.write_json(cell.id, "latency.json", record)
    return record


# ----------------------------------------------------------------------------
# Report time: candidate vs baseline
# ----------------------------------------------------------------------------

def compare(baseline: dict, candidate: dict, *, confidence: float = 0.95, n_resamples: int = 2000,
            seed: int = 0) -> list[dict]:
    """Speed-up of a candidate over its baseline at every load point both measured.

    Latency metrics: ratio of medians baseline/candidate (> 1: the candidate is faster)
    with a two-sample bootstrap interval (`stats.speedup_ratio`) over the saved
    per-request samples (ITL: every gap). Throughputs are one number per load
    point, so their ratio (candidate/baseline) has no interval.

    Raises:
        QevalError: the two records did not run the same workload.
    """
    wb, wc = baseline.get("workload", {}), candidate.get("workload", {})
    keys = ("input_tokens", "output_tokens", "prompts_sha256")
    if any(wb.get(k) != wc.get(k) for k in keys):
        raise QevalError("baseline and candidate latency were measured on different workloads "
                         f"({ {k: wb.get(k) for k in keys} } vs { {k: wc.get(k) for k in keys} })",
                         field="latency", fix="rerun both cells with the same latency settings and seed")
    base_points = {p["load"]: p for p in baseline.get("loads", [])}
    out = []
    for pc in candidate.get("loads", []):
        pb = base_points.get(pc["load"])
        if pb is None:
            continue
        sb, sc = metric_samples(pb["requests"]), metric_samples(pc["requests"])
        common = {"load": pc["load"], "concurrency": pc["concurrency"], "request_rate": pc["request_rate"]}
        for metric in METRICS:
            b, c = sb[metric], sc[metric]
            if metric == "itl":
                b, c = [g for gaps in b for g in gaps], [g for gaps in c for g in gaps]
            if len(b) < 2 or len(c) < 2:
                continue
            s = stats.speedup_ratio(b, c, statistic="median", kind="latency", confidence=confidence,
                                    n_resamples=n_resamples, seed=seed)
            out.append({**common, "metric": metric, "speedup": s.estimate, "ci": list(s.ci), "statistic": s.statistic,
                        "n_baseline": s.n_baseline, "n_candidate": s.n_candidate, "method": s.method})
        for metric in ("requests_per_s", "output_tokens_per_s"):
            if pb.get(metric) and pc.get(metric):
                out.append({**common, "metric": metric, "speedup": pc[metric] / pb[metric], "ci": None,
                            "statistic": "point", "n_baseline": 1, "n_candidate": 1, "method": "ratio"})
    return out
