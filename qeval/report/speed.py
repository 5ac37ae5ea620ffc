"""Latency of a candidate beside its baseline, speed-ups with CIs, and the quality-vs-speed Pareto front.

Input: each cell's latency.json. Its `percentiles` list (one entry per metric x
percentile x load point, with a bootstrap CI and n: what the gate's latency rules
read) gives the percentile table. Its optional `loads` list carries the per-request
samples of each load point (`ttft_ms`, `tpot_ms`, `e2e_ms`, `output_tokens`, warm-up
excluded); where both the candidate and its baseline have them, speed-ups are
computed here with `qeval.stats.speedup_ratio` (ratio of medians, two-sample
bootstrap: requests under load are not paired). Without per-request samples no
speed-up is claimed: a ratio of two percentiles has no honest interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qeval import stats
from qeval.load_profiles import goodput_speedup

# (name, kind, label): what a speed-up is computed on, per request.
SPEEDUP_METRICS = (
    ("output_tok_s", "throughput", "output tokens/s per request (output tokens / E2E)"),
    ("tpot", "latency", "TPOT (time per output token after the first)"),
    ("ttft", "latency", "TTFT (time to first token)"),
    ("e2e", "latency", "E2E request latency"),
)
PARETO_METRIC = "output_tok_s"


def load_key(point: dict[str, Any]) -> tuple[int | None, float | None]:
    return point.get("concurrency"), point.get("request_rate")


def load_label(point: dict[str, Any]) -> str:
    conc, rate = load_key(point)
    if conc is not None:
        return f"concurrency {conc}"
    if rate is not None:
        return f"{rate:g} req/s"
    return "the measured load"


def _per_request(load: dict[str, Any], metric: str) -> np.ndarray | None:
    if metric == "output_tok_s":
        e2e, toks = load.get("e2e_ms"), load.get("output_tokens")
        if not e2e or not toks or len(e2e) != len(toks):
            return None
        return np.asarray(toks, dtype=float) / (np.asarray(e2e, dtype=float) / 1000.0)
    values = load.get(f"{metric}_ms")
    return np.asarray(values, dtype=float) if values else None


def compare_latency(candidate: dict[str, Any] | None, baseline: dict[str, Any] | None, *, seed: int = 0,
                    n_resamples: int = 2000) -> dict[str, Any] | None:
    """A candidate's latency beside its baseline's (same backend), with speed-ups.

    Args:
        candidate: the candidate cell's latency.json record, or None.
        baseline: the baseline cell's latency.json record, or None.
        seed: bootstrap seed.
        n_resamples: bootstrap resamples per speed-up.

    Returns:
        None when the candidate has no latency record; else {"percentiles": rows with the
        candidate's and the baseline's value, CI and n; "speedups": one row per load point
        and metric; "note": why something is missing, or None}.
    """
    if not candidate:
        return None
    base_pts = {(p["metric"], float(p["percentile"]), *load_key(p)): p for p in (baseline or {}).get("percentiles", [])}
    rows = []
    for p in candidate.get("percentiles", []):
        b = base_pts.get((p["metric"], float(p["percentile"]), *load_key(p)))
        rows.append({"metric": p["metric"], "percentile": float(p["percentile"]),
                     "concurrency": p.get("concurrency"), "request_rate": p.get("request_rate"),
                     "load": load_label(p),
                     "candidate": {"value_ms": p["value_ms"], "ci_ms": p.get("ci_ms"), "n": p["n"],
                                   "warmup_excluded": p.get("warmup_excluded", 0)},
                     "baseline": None if b is None else {"value_ms": b["value_ms"], "ci_ms": b.get("ci_ms"),
                                                         "n": b["n"], "warmup_excluded": b.get("warmup_excluded", 0)}})
    speedups = []
    base_loads = {load_key(x): x for x in (baseline or {}).get("loads", [])}
    for load in candidate.get("loads", []):
        ref = base_loads.get(load_key(load))
        if ref is None:
            continue
        for metric, kind, label in SPEEDUP_METRICS:
            c, b = _per_request(load, metric), _per_request(ref, metric)
            if c is None or b is None or c.size < 2 or b.size < 2:
                continue
            sp = stats.speedup_ratio(b, c, statistic="median", kind=kind, n_resamples=n_resamples, seed=seed)
            speedups.append({"metric": metric, "label": label, "kind": kind, "concurrency": load.get("concurrency"),
                             "request_rate": load.get("request_rate"), "load": load_label(load),
                             "estimate": sp.estimate, "ci": list(sp.ci), "confidence": sp.confidence,
                             "statistic": sp.statistic, "n_baseline": sp.n_baseline, "n_candidate": sp.n_candidate,
                             "method": sp.method,
                             "candidate_median": float(np.median(c)), "baseline_median": float(np.median(b))})
        slo = (load.get("goodput") or {}).get("slo_ms")
        if slo and (ref.get("goodput") or {}).get("slo_ms") == slo:  # goodput ratio (qeval.load_profiles)
            gp = goodput_speedup(ref, load, slo, n_resamples=n_resamples, seed=seed)
            if gp is not None:
                speedups.append({"metric": "goodput", "kind": "throughput",
                                 "label": f"goodput: requests/s meeting {load['goodput']['vllm_goodput_arg']} (ms)",
                                 "concurrency": load.get("concurrency"), "request_rate": load.get("request_rate"),
                                 "load": load_label(load), "estimate": gp["estimate"], "ci": gp["ci"],
                                 "confidence": gp["confidence"], "statistic": "goodput (mean of good x req/s)",
                                 "n_baseline": gp["n_baseline"], "n_candidate": gp["n_candidate"],
                                 "method": gp["method"], "candidate_median": gp["candidate_goodput_rps"],
                                 "baseline_median": gp["baseline_goodput_rps"]})
    note = None
    if not baseline:
        note = "the baseline on this backend has no latency record: no comparison"
    elif not speedups:
        note = ("no per-request latency samples (latency.json 'loads') on both sides: percentiles are shown, "
                "no speed-up is claimed")
    return {"percentiles": rows, "speedups": speedups, "note": note}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def pareto_front(points: list[dict[str, Any]], x: str, y: str, *, y_higher_is_better: bool) -> set[int]:
    """Indices of the points no other point beats on both axes (x higher is better)."""
    sign = 1.0 if y_higher_is_better else -1.0
    usable = [(i, p[x], sign * p[y]) for i, p in enumerate(points) if _finite(p.get(x)) and _finite(p.get(y))]
    front = set()
    for i, xi, yi in usable:
        dominated = any(xj >= xi and yj >= yi and (xj > xi or yj > yi) for j, xj, yj in usable if j != i)
        if not dominated:
            front.add(i)
    return front


def top_speedup(decision: dict[str, Any]) -> dict[str, Any] | None:
    """The Pareto view's speed-up of one decision: PARETO_METRIC at its highest measured load (None: none)."""
    speed = [s for s in (decision.get("latency") or {}).get("speedups", []) if s["metric"] == PARETO_METRIC]
    if not speed:
        return None
    return max(speed, key=lambda s: (s["concurrency"] or 0, s["request_rate"] or 0.0))


def mark_fronts(points: list[dict[str, Any]]) -> None:
    """Set front_delta / front_kld on each point: on its backend's speed/quality Pareto front."""
    for p in points:
        p["front_delta"] = p["front_kld"] = False
    for be in sorted({p["backend"] for p in points}):
        idx = [i for i, p in enumerate(points) if p["backend"] == be]
        sub = [points[i] for i in idx]
        for key, y, higher in (("front_delta", "delta_pts", True), ("front_kld", "kld", False)):
            for j in pareto_front(sub, "speedup", y, y_higher_is_better=higher):
                points[idx[j]][key] = True


def pareto(decisions: list[dict[str, Any]], cells: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """Quality-vs-speed points of every candidate with both, and which lie on the Pareto front.

    Speed: the throughput speed-up (output tokens/s per request, ratio of medians) at the
    highest load point measured for that candidate. Quality: the pooled mean delta over
    all tasks' items (points, higher is better) and, where measured, the mean KL divergence
    on held-out text (lower is better). Each backend's baseline is the point (1, 0, 0).
    """
    points = []
    for d in decisions:
        top = top_speedup(d)
        if top is None:
            continue
        heldout = ((cells.get(d["cell_id"]) or {}).get("divergence") or {}).get("heldout") or {}
        pooled = d.get("pooled") or {}
        points.append({"cell_id": d["cell_id"], "candidate": d["candidate"], "backend": d["backend"],
                       "verdict": d["verdict"], "label": d["label"], "load": top["load"],
                       "speedup": top["estimate"], "speedup_ci": top["ci"],
                       "delta_pts": pooled.get("estimate_pts"), "delta_ci_pts": pooled.get("ci_pts"),
                       "kld": heldout.get("kld_mean"), "kld_ci": heldout.get("kld_mean_ci")})
    backends = sorted({p["backend"] for p in points})
    for be in backends:
        points.append({"cell_id": f"{baseline}-{be}", "candidate": baseline, "backend": be, "verdict": "BASELINE",
                       "label": "baseline", "load": None, "speedup": 1.0, "speedup_ci": None, "delta_pts": 0.0,
                       "delta_ci_pts": None, "kld": 0.0, "kld_ci": None})
    mark_fronts(points)
    note = None
    if not any(p["verdict"] != "BASELINE" for p in points):
        note = ("no candidate has per-request latency samples beside its baseline's, so there is no speed axis: "
                "the quality-vs-speed plot is left out")
    return {"speed_metric": PARETO_METRIC, "speed_label": dict((m, lbl) for m, _, lbl in SPEEDUP_METRICS)[PARETO_METRIC],
            "points": points, "note": note}
