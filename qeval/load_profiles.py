"""Load profiles users know from other tools: GuideLLM's rate sweep and `vllm bench serve`'s goodput.

- **Sweep** (GuideLLM `--profile sweep`, src/guidellm/benchmark/profile.py
  `SweepProfile`): run *synchronous* (one request at a time) to find the lowest
  useful rate, then *throughput* (everything at once) to find the highest, then
  ``sweep_size - 2`` open-loop rates ``np.linspace(sync, throughput, sweep_size -
  1)[1:]`` (so the last one is the throughput rate itself). qeval's synchronous
  point is concurrency 1, its throughput point the highest concurrency the suite
  lists; the rates are sent as Poisson arrivals (qeval's open loop, as `vllm bench
  serve --request-rate`; GuideLLM's sweep defaults to constant spacing).
  Candidates are swept at the *baseline's* rates, so every speed-up compares the
  same offered load.
- **Goodput** (`vllm bench serve --goodput`, vllm/benchmarks/serve.py
  `calculate_metrics`, vLLM 0.26.0; DistServe's definition): a completed request is
  *good* when each of its SLO metrics is at or under its limit (TTFT, TPOT, E2E in
  ms; a one-token request's TPOT counts as 0); goodput = good requests / the load
  point's duration. Its interval: Wilson on the good fraction, times the completed
  requests/s (the duration is taken as fixed: the interval covers which requests
  met the SLOs, not run-to-run drift of the duration).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from qeval import stats

# qeval's metric names -> the key `vllm bench serve --goodput` uses for them.
GOODPUT_METRICS = {"ttft": "ttft", "tpot": "tpot", "e2e": "e2el"}


def sweep_rates(synchronous_rps: float, throughput_rps: float, sweep_size: int) -> list[float]:
    """The open-loop rates of a GuideLLM sweep of `sweep_size` strategies (synchronous and throughput included).

    Args:
        synchronous_rps: requests/s measured one request at a time.
        throughput_rps: requests/s measured with everything in flight.
        sweep_size: strategies in the sweep (>= 3 for any rate); GuideLLM's default is 10.

    Returns:
        ``sweep_size - 2`` rates, increasing, the last equal to `throughput_rps`.
    """
    if sweep_size < 3:
        return []
    if not (synchronous_rps > 0 and throughput_rps > 0):
        raise ValueError(f"sweep needs positive measured rates, got {synchronous_rps} and {throughput_rps}")
    lo, hi = sorted((synchronous_rps, throughput_rps))  # an engine that saturates at c1 still gets a sweep
    return [float(r) for r in np.linspace(lo, hi, sweep_size - 1)[1:]]


def good_requests(samples: Sequence[Mapping[str, Any]], slo_ms: Mapping[str, float]) -> list[bool]:
    """Per measured request (warm-ups left out), whether it completed and met every SLO.

    Args:
        samples: latency.json request samples (`ttft_ms`, `tpot_ms`, `e2e_ms`, `error`, `warmup`).
        slo_ms: metric ("ttft", "tpot", "e2e") -> limit in ms.
    """
    out = []
    for s in samples:
        if s.get("warmup"):
            continue
        if s.get("error") is not None or s.get("ttft_ms") is None:
            out.append(False)
            continue
        good = True
        for metric, limit in slo_ms.items():
            value = s.get(f"{metric}_ms")
            if metric == "tpot" and value is None:
                value = 0.0  # vLLM: "if output_len <= 1, we regard tpot as 0 for goodput"
            good &= value is not None and value <= limit
        out.append(bool(good))
    return out


def goodput(samples: Sequence[Mapping[str, Any]], slo_ms: Mapping[str, float], duration_s: float, *,
            confidence: float = 0.95) -> dict[str, Any]:
    """Goodput of one load point with its interval (see the module docstring).

    Returns:
        {"slo_ms", "vllm_goodput_arg" (the same SLOs as `vllm bench serve --goodput` takes them),
         "good", "requests", "good_fraction", "good_fraction_ci", "goodput_rps", "goodput_rps_ci",
         "confidence", "method"}.
    """
    flags = good_requests(samples, slo_ms)
    n, good = len(flags), int(sum(flags))
    rate = n / duration_s if duration_s > 0 else math.nan
    lo, hi = stats.wilson_interval(good, n, confidence) if n else (math.nan, math.nan)
    return {"slo_ms": dict(slo_ms),
            "vllm_goodput_arg": " ".join(f"{GOODPUT_METRICS[m]}:{v:g}" for m, v in slo_ms.items()),
            "good": good, "requests": n, "good_fraction": good / n if n else None,
            "good_fraction_ci": [lo, hi] if n else None,
            "goodput_rps": good / duration_s if duration_s > 0 else None,
            "goodput_rps_ci": [lo * rate, hi * rate] if n and duration_s > 0 else None,
            "confidence": confidence, "method": "Wilson interval of the good fraction x requests/s (duration fixed)"}


def goodput_speedup(baseline: Mapping[str, Any], candidate: Mapping[str, Any], slo_ms: Mapping[str, float], *,
                    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Candidate goodput / baseline goodput at one load point, with a two-sample bootstrap interval.

    Each side's goodput is mean(good indicator) x requests / duration, so the ratio of means of the
    indicators scaled by each side's requests/s is exactly the goodput ratio; resampling requests
    (durations fixed) gives its interval (`stats.speedup_ratio`, BCa on means). Where neither side's
    indicators vary (every request good, or none) the bootstrap has nothing to resample: the ratio
    is then exact given the durations and its interval is the point. None when the baseline has no
    good request (no ratio).

    Args:
        baseline, candidate: load points as latency.json stores them ("requests", "duration_s").
    """
    sides = []
    for point in (baseline, candidate):
        flags = np.asarray(good_requests(point.get("requests") or [], slo_ms), dtype=float)
        duration = float(point.get("duration_s") or 0.0)
        if flags.size < 2 or duration <= 0:
            return None
        sides.append(flags * (flags.size / duration))
    b, c = sides
    if not b.any():
        return None
    estimate = float(c.mean() / b.mean())
    if np.all(b == b[0]) and np.all(c == c[0]):
        ci, method = (estimate, estimate), "exact (no request's SLO outcome varies)"
    else:
        s = stats.speedup_ratio(b, c, statistic="mean", kind="throughput", confidence=confidence,
                                n_resamples=n_resamples, seed=seed)
        ci, method = s.ci, s.method
    return {"metric": "goodput", "estimate": estimate, "ci": [float(ci[0]), float(ci[1])],
            "confidence": confidence, "method": method, "n_baseline": int(b.size), "n_candidate": int(c.size),
            "baseline_goodput_rps": float(b.mean()), "candidate_goodput_rps": float(c.mean())}
