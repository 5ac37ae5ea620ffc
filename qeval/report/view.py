"""The results document rearranged for reading: what both report.html and report.md print.

Pure functions of the results dict (build_results); no numbers are computed here
that results.json does not hold, only grouped, sorted and counted.
"""

from __future__ import annotations

import statistics
from typing import Any

from qeval.report.results import NOT_RUN_HERE, SIMULATED_EXTERNAL_LABEL, SIMULATED_LABEL

VERDICT_ORDER = ("SHIP", "INCONCLUSIVE", "BLOCK", "NOT RUN")


def cells_by_id(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in r["cells"]}


def verdict_groups(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidate x backend entries of the matrix grouped by verdict, SHIP first; cells that were not run
    here (TensorRT-LLM) form a group of their own, whatever the gate made of having no evidence."""
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {(v, False): [] for v in VERDICT_ORDER}
    for row in r["matrix"]["rows"]:
        for e in row["cells"]:
            key = (e["verdict"], e["label"] == NOT_RUN_HERE)
            groups.setdefault(key, []).append({"candidate": row["candidate"], **e})
    return [{"verdict": v, "not_run_here": nrh, "entries": es} for (v, nrh), es in groups.items() if es]


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """The answer in one paragraph: what ships on a real engine, what passed only in simulation,
    what is open, what was not run here."""
    ship_engine: dict[str, list[str]] = {}
    ship_sim, open_, blocked, not_run = [], [], [], set()
    for row in r["matrix"]["rows"]:
        for e in row["cells"]:
            cand = row["candidate"]
            if e["label"] == NOT_RUN_HERE:
                not_run.add(f"{cand} on {e['backend']}")
            elif e["verdict"] == "SHIP" and e["label"] in (SIMULATED_LABEL, SIMULATED_EXTERNAL_LABEL):
                ship_sim.append(f"{cand} on {e['backend']}")
            elif e["verdict"] == "SHIP":
                ship_engine.setdefault(e["backend"], []).append(cand)
            elif e["verdict"] == "INCONCLUSIVE":
                open_.append(f"{cand} on {e['backend']}")
            elif e["verdict"] == "BLOCK":
                blocked.append(f"{cand} on {e['backend']}")
    return {"ship_engine": ship_engine, "ship_simulated": ship_sim, "open": open_, "blocked": blocked,
            "not_run_here": sorted(not_run)}


def decision_reasons(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules that decided the verdict: failures, then open ones; every rule when all pass."""
    failed = [x for x in d["rules"] if x["passed"] is False]
    open_ = [x for x in d["rules"] if x["passed"] is None]
    return failed + open_ if (failed or open_) else list(d["rules"])


def task_sections(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task (suite order): one row per candidate x backend that has it, with the baseline's and
    candidate's accuracy CIs from their cells."""
    cells = cells_by_id(r)
    order = [t["name"] for t in r["suite"]["tasks"]]
    sections: dict[str, dict[str, Any]] = {name: {"task": name, "rows": []} for name in order}
    for d in r["decisions"]:
        for t in d["tasks"]:
            sec = sections.setdefault(t["task"], {"task": t["task"], "rows": []})
            base_acc = (cells.get(d["baseline_cell_id"]) or {}).get("accuracy", {}).get(t["task"])
            cand_acc = (cells.get(d["cell_id"]) or {}).get("accuracy", {}).get(t["task"])
            sec["rows"].append({"d": d, "t": t, "baseline_acc": base_acc, "candidate_acc": cand_acc})
    out = []
    for sec in sections.values():
        if not sec["rows"]:
            continue
        first = sec["rows"][0]["t"]
        sec.update(metric=first["metric"], margin=first["margin"], margin_kind=first["margin_kind"],
                   confidence=first["confidence"], method=first["method"])
        out.append(sec)
    return out


def pairing_summary(r: dict[str, Any]) -> dict[str, Any] | None:
    """What pairing buys over TensorRT-LLM's rule across every task x candidate x backend of the run,
    and where the two rules decide differently."""
    rows = [(d, t) for d in r["decisions"] for t in d["tasks"]]
    ratios = [t["pairing"]["ratio"] for _, t in rows if t["pairing"]["ratio"] not in (None, float("inf"))]
    if not ratios:
        return None
    factors = [t["pairing"]["sample_factor"] for _, t in rows if t["pairing"]["sample_factor"] is not None]
    indep = [t["pairing"]["ratio_vs_independent"] for _, t in rows
             if t["pairing"]["ratio_vs_independent"] is not None]
    disagree = []
    for d, t in rows:
        ours = t["noninferiority"]["verdict"]
        theirs = "PASS" if t["trtllm"]["passed"] else "FAIL"
        if ours != theirs:
            disagree.append({"candidate": d["candidate"], "backend": d["backend"], "task": t["task"], "ours": ours,
                             "theirs": theirs, "delta_pts": t["delta_pts"], "ci": t["ci"],
                             "threshold": t["trtllm"]["threshold"], "accuracy": t["trtllm"]["accuracy"]})
    return {"n": len(rows), "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
            "ratio_max": max(ratios), "factor_median": statistics.median(factors) if factors else None,
            "indep_median": statistics.median(indep) if indep else None,
            "agree": len(rows) - len(disagree), "disagree": disagree}


SECTION_TEXT = {"heldout": "held-out text", "task_prompts": "task prompts"}


def divergence_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate cell and text (held-out, task prompts) with a divergence summary; a section whose
    KL is only a lower bound is included, flagged (`bound_only`)."""
    out = []
    for c in r["cells"]:
        div = c.get("divergence") or {}
        for key, text in SECTION_TEXT.items():
            s, bound_only = div.get(key), False
            if not s:
                s, bound_only = (div.get("lower_bound_only") or {}).get(key), True
            if s and s.get("n_tokens"):
                out.append({"cell": c, "text": text, "s": s, "simulated": div.get("simulated"),
                            "bound_only": bound_only, "route": div.get("route") or {}})
    return out


def kl_value(s: dict[str, Any] | None) -> dict[str, Any]:
    """How a section's mean KL reads: "=" exact, ">=" a lower bound (with the upper bound where one exists)."""
    if not s:
        return {"rel": "", "mean": None, "ci": None, "upper": None}
    bounds = s.get("kld_kind") == "bounds"
    return {"rel": ">=" if bounds else "", "mean": s.get("kld_mean"), "ci": s.get("kld_mean_ci"),
            "upper": (s.get("kld_upper") or {}).get("kld_mean") if bounds else None}


def unavailable_divergence(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"cell": c, "reason": (c.get("divergence") or {})["unavailable"]} for c in r["cells"]
            if (c.get("divergence") or {}).get("unavailable")]


def kld_plot_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"label": f"{x['cell']['precision']} on {x['cell']['backend']}"
                      + (" (lower bound)" if x["bound_only"] else ""), "mean": x["s"]["kld_mean"],
             "ci": x["s"].get("kld_mean_ci") if not x["bound_only"] else None, "p90": x["s"].get("kld_p90"),
             "p99": x["s"].get("kld_p99"), "p999": x["s"].get("kld_p999"), "n_tokens": x["s"]["n_tokens"]}
            for x in divergence_rows(r) if x["text"] == "held-out text"]


def speedup_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Per candidate x backend x load point: its speed-ups keyed by metric."""
    rows = []
    for d in r["decisions"]:
        lat = d.get("latency") or {}
        by_load: dict[str, dict[str, Any]] = {}
        for s in lat.get("speedups", []):
            row = by_load.setdefault(s["load"], {"d": d, "load": s["load"], "metrics": {},
                                                 "n": (s["n_candidate"], s["n_baseline"])})
            row["metrics"][s["metric"]] = s
        rows.extend(by_load.values())
    return rows


def load_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cell's load points (throughput and goodput), baselines included."""
    from qeval.report.speed import load_label

    return [{"cell": c, "p": p, "load": p.get("load") or load_label(p)}
            for c in r["cells"] for p in ((c.get("latency") or {}).get("loads") or [])]


def sweeps(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"cell": c, "s": c["latency"]["sweep"]} for c in r["cells"] if (c.get("latency") or {}).get("sweep")]


def latency_notes(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"d": d, "note": d["latency"]["note"]} for d in r["decisions"] if d.get("latency") and d["latency"]["note"]]


def plan_counts(r: dict[str, Any]) -> dict[str, int]:
    rows = r["matrix"]["rows"]
    return {"candidates": len(rows), "backends": len(r["matrix"]["backends"]),
            "tasks": len(r["suite"]["tasks"]), "cells": len(r["cells"])}
