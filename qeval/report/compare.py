"""`qeval compare RUN_A RUN_B`: what changed between two runs (e.g. the last release and now).

Both runs are gated as `qeval report` gates them. Per candidate x backend: the
verdict before and after. Per cell (baselines included) and task: the accuracy of
each run and, where the same items were scored in both (same doc_id and the same
prompt_hash in both runs' samples of that cell), the paired change B - A with
`qeval.stats.paired_delta` and, for 0/1 scores, McNemar's exact test and the
answers that flipped between the runs. The manifests say what else changed
(model, suite, package versions, hardware).

Writes compare.md and compare.json into run B's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qeval import stats
from qeval.errors import QevalError
from qeval.report.results import build_results, jsonable
from qeval.report.templating import environment
from qeval.store import RunStore, write_json_atomic, write_text_atomic

COMPARE_SCHEMA = "qeval.compare/1"
_RANK = {"SHIP": 0, "INCONCLUSIVE": 1, "BLOCK": 2, "NOT RUN": 3}


def _check_run_dir(path: Path, name: str) -> None:
    if not (path / "manifest.json").is_file():
        raise QevalError(f"{path} is not a qeval run directory (no manifest.json)", field=name,
                         fix="pass two directories that `qeval run` created under reports/")


def _setup_changes(ma: dict[str, Any], mb: dict[str, Any]) -> list[dict[str, Any]]:
    """Differences between two manifests that can move numbers."""
    rows = []
    for what, a, b in (("model sha256", ma["model"]["sha256"], mb["model"]["sha256"]),
                       ("model source", ma["model"]["source"], mb["model"]["source"]),
                       ("suite sha256", ma["suite"]["sha256"], mb["suite"]["sha256"]),
                       ("qeval commit", ma.get("qeval_commit"), mb.get("qeval_commit")),
                       ("processor", ma["hardware"].get("processor"), mb["hardware"].get("processor")),
                       ("gpus", ", ".join(ma["hardware"].get("gpus", [])) or None,
                        ", ".join(mb["hardware"].get("gpus", [])) or None)):
        if a != b:
            rows.append({"what": what, "a": a, "b": b})
    va, vb = ma.get("versions", {}), mb.get("versions", {})
    for pkg in sorted(set(va) | set(vb)):
        if va.get(pkg) != vb.get(pkg):
            rows.append({"what": f"version of {pkg}", "a": va.get(pkg), "b": vb.get(pkg)})
    for key in sorted(set(ma.get("seeds", {})) | set(mb.get("seeds", {}))):
        if ma.get("seeds", {}).get(key) != mb.get("seeds", {}).get(key):
            rows.append({"what": f"seed {key}", "a": ma["seeds"].get(key), "b": mb["seeds"].get(key)})
    return rows


def _verdicts(ra: dict[str, Any], rb: dict[str, Any]) -> list[dict[str, Any]]:
    def entries(r: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(row["candidate"], e["backend"]): e for row in r["matrix"]["rows"] for e in row["cells"]}

    ea, eb = entries(ra), entries(rb)
    keys = list(ea) + [k for k in eb if k not in ea]
    out = []
    for cand, be in keys:
        a, b = ea.get((cand, be)), eb.get((cand, be))
        va, vb = (a or {}).get("verdict", "absent"), (b or {}).get("verdict", "absent")
        if va == vb:
            change = "same"
        elif va in _RANK and vb in _RANK:
            change = "worse" if _RANK[vb] > _RANK[va] else "better"
        else:
            change = "added" if va == "absent" else "removed"
        out.append({"candidate": cand, "backend": be, "a": va, "b": vb, "change": change,
                    "label_a": (a or {}).get("label"), "label_b": (b or {}).get("label"),
                    "summary_b": (b or {}).get("summary")})
    return sorted(out, key=lambda v: v["change"] == "same")  # changes first, plan order kept within


def _task_deltas(ra: dict[str, Any], rb: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidate-vs-baseline deltas per task in each run (the gate's own numbers)."""
    def index(r: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(d["candidate"], d["backend"], t["task"]): t for d in r["decisions"] for t in d["tasks"]}

    ia, ib = index(ra), index(rb)
    out = []
    for key in list(ia) + [k for k in ib if k not in ia]:
        a, b = ia.get(key), ib.get(key)
        out.append({"candidate": key[0], "backend": key[1], "task": key[2],
                    "a": None if a is None else {"delta_pts": a["delta_pts"], "ci": a["ci"], "verdict": a["verdict"],
                                                 "n": a["n"], "confidence": a["confidence"]},
                    "b": None if b is None else {"delta_pts": b["delta_pts"], "ci": b["ci"], "verdict": b["verdict"],
                                                 "n": b["n"], "confidence": b["confidence"]}})
    return out


def _same_items(store_a: RunStore, store_b: RunStore, cell_id: str, task: str) -> dict[str, Any] | None:
    """Run B vs run A on the items both runs scored with the same prompt, for one cell and task."""
    recs_a = {r["doc_id"]: r for r in store_a.read_samples(cell_id, task)}
    recs_b = {r["doc_id"]: r for r in store_b.read_samples(cell_id, task)}
    if not recs_a or not recs_b:
        return None
    common = sorted(set(recs_a) & set(recs_b), key=str)
    matched = [d for d in common if recs_a[d].get("prompt_hash") == recs_b[d].get("prompt_hash")]
    out: dict[str, Any] = {"n_a": len(recs_a), "n_b": len(recs_b), "n_matched": len(matched),
                           "n_prompt_changed": len(common) - len(matched),
                           "n_only_a": len(set(recs_a) - set(recs_b)), "n_only_b": len(set(recs_b) - set(recs_a)),
                           "paired": None, "mcnemar": None}
    if len(matched) < 2:
        return out
    a = np.array([float(recs_a[d]["score"]) for d in matched])
    b = np.array([float(recs_b[d]["score"]) for d in matched])
    out["paired"] = jsonable(stats.paired_delta(a, b, method="auto", confidence=0.95))
    if stats.is_binary(a, b):
        out["mcnemar"] = jsonable(stats.mcnemar_exact(a, b))
    return out


def _cells(ra: dict[str, Any], rb: dict[str, Any], run_a: Path, run_b: Path) -> list[dict[str, Any]]:
    store_a, store_b = RunStore(run_a), RunStore(run_b)
    ca, cb = {c["id"]: c for c in ra["cells"]}, {c["id"]: c for c in rb["cells"]}
    out = []
    for cell_id in list(ca) + [c for c in cb if c not in ca]:
        a, b = ca.get(cell_id) or {}, cb.get(cell_id) or {}
        tasks = list(a.get("accuracy", {})) + [t for t in b.get("accuracy", {}) if t not in a.get("accuracy", {})]
        rows = []
        for task in tasks:
            acc_a, acc_b = a.get("accuracy", {}).get(task), b.get("accuracy", {}).get(task)
            change = (acc_b["mean"] - acc_a["mean"]) * 100 if acc_a and acc_b else None
            same = _same_items(store_a, store_b, cell_id, task)
            unchanged = bool(same and same["mcnemar"] and same["n_only_a"] == same["n_only_b"] == 0
                             and same["n_prompt_changed"] == 0
                             and same["mcnemar"]["n10"] == same["mcnemar"]["n01"] == 0)
            rows.append({"task": task, "a": acc_a, "b": acc_b, "change_pts": change, "same_items": same,
                         "unchanged": unchanged})
        out.append({"cell_id": cell_id, "baseline": (b or a).get("baseline", False),
                    "label_a": a.get("label"), "label_b": b.get("label"), "state_a": a.get("state"),
                    "state_b": b.get("state"), "tasks": rows})
    return out


def build_comparison(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Everything that changed from run A to run B (a results-like, JSON-ready dict).

    Args:
        run_a: the earlier run directory (e.g. the last release).
        run_b: the later run directory.

    Returns:
        {"schema", "run_a", "run_b", "setup" (manifest differences), "verdicts" (per candidate
        x backend), "task_deltas" (the gate's candidate-vs-baseline delta per task in each run),
        "cells" (per cell and task: accuracy in each run and the paired change B - A on the
        same items)}.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    _check_run_dir(run_a, "RUN_A")
    _check_run_dir(run_b, "RUN_B")
    ra, rb = build_results(run_a), build_results(run_b)
    return jsonable({
        "schema": COMPARE_SCHEMA,
        "run_a": {**ra["run"], "suite": ra["suite"]["name"]},
        "run_b": {**rb["run"], "suite": rb["suite"]["name"]},
        "setup": _setup_changes(ra["manifest"], rb["manifest"]),
        "verdicts": _verdicts(ra, rb),
        "task_deltas": _task_deltas(ra, rb),
        "cells": _cells(ra, rb, run_a, run_b),
    })


def render_comparison(comparison: dict[str, Any]) -> str:
    return environment().get_template("compare.md.j2").render(c=comparison)


def compare_runs(run_a: Path, run_b: Path) -> str:
    """Compare two runs; write compare.md and compare.json into run B; return the Markdown text."""
    comparison = build_comparison(run_a, run_b)
    text = render_comparison(comparison)
    run_b = Path(run_b)
    write_text_atomic(run_b / "compare.md", text)
    write_json_atomic(run_b / "compare.json", comparison)
    return text
