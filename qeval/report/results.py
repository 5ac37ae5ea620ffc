"""results.json: every number of a run, gated, in one versioned document.

The schema is checked in (qeval/schemas/results.schema.json) and validated in
the tests; bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from qeval import precisions, speed_only, stats
from qeval.collect import RunEvidence, collect
from qeval.gate import Decision, Family, TaskEvidence, decide
from qeval.report.speed import compare_latency, pareto
from qeval.store import RunStore, pair_key, read_manifest

SCHEMA_VERSION = "qeval.results/1"
SIMULATED_LABEL = "simulated quantization (ModelOpt fake-quant)"
SIMULATED_EXTERNAL_LABEL = "simulated quantization (external checkpoint: its own weights and scales)"
ENGINE_UNAVAILABLE_LABEL = "not run: engine unavailable here"
NOT_RUN_HERE = ENGINE_UNAVAILABLE_LABEL  # the old name of this label
REAL_LABEL = "real kernels"
EMULATED_LABEL = "emulated by the engine"
EXTERNAL_LABEL = "external server"
CRASHED_LABEL = "crashed: no results"
NOT_RUN_LABEL = "not run"
UNFINISHED_LABEL = "unfinished: the run stopped inside this cell"
SPEED_ONLY_LABEL = speed_only.LABEL

# What each "how it ran" label means, in the words the report prints beside it.
LABEL_MEANING = {
    REAL_LABEL: "true low-precision kernels on the engine: quality and speed are both the precision's own",
    EMULATED_LABEL: "the engine emulates the format (e.g. FP4 on a GPU without FP4 tensor cores): quality is the "
                    "format's, speed is not",
    SIMULATED_LABEL: "weights and activations rounded to the format by ModelOpt fake-quant, math in high precision: "
                     "measures quality, says nothing about speed",
    SIMULATED_EXTERNAL_LABEL: "an external checkpoint on transformers: weights dequantized from the checkpoint, "
                              "activations fake-quantized with its own scales where its scheme quantizes them "
                              "(compressed-tensors' forward; qeval's FP8 fake-quant for a ModelOpt FP8 export), math "
                              "in high precision: measures quality, says nothing about speed",
    ENGINE_UNAVAILABLE_LABEL: "the engine could not run this cell on this machine (not installed, no GPU, no kernels "
                              "or no load path for the precision, as the cell's reason says it was measured): no "
                              "number in this report comes from it",
    EXTERNAL_LABEL: "an OpenAI-compatible server qeval did not start: qeval cannot see its kernels, dtype or build; "
                    "the cell's notes say what its API reports, nothing more",
    CRASHED_LABEL: "the cell crashed; its cause is in the decisions table",
    NOT_RUN_LABEL: "the cell has no results in this run directory",
    UNFINISHED_LABEL: "the run was stopped (budget, interrupt) after this cell began and before it ended: what it "
                      "measured is kept on disk but not judged; `qeval run --resume RUN_DIR` continues it",
    SPEED_ONLY_LABEL: speed_only.LABEL_MEANING,
}
EXAMPLES_PER_TASK = 3  # flipped answers shown per task and direction
ANSWER_CHARS = 160


def gate_run(run_dir: Path) -> list[Decision]:
    """The gate's decisions for a run directory."""
    run = collect_checked(run_dir)
    return decide(run.suite.gate, run.evidence, family=Family.planned(run.suite))


def collect_checked(run_dir: Path) -> RunEvidence:
    """The run's evidence, where a candidate whose records (or whose baseline's) do not come from the artifacts
    the manifest names is an error with the reason, not a comparison (qeval.provenance)."""
    from qeval import provenance
    from qeval.gate import ErrorEvidence

    run = collect(run_dir)
    problems = provenance.check(run_dir, read_manifest(run_dir))
    if not problems:
        return run
    baseline = run.suite.baseline
    bad: dict[tuple[str, str], str] = {}
    for cell in run.cells:
        if cell.is_baseline:
            continue
        why = problems.get(cell.id) or problems.get(f"{baseline}-{cell.backend}")
        if why:
            bad[(cell.precision, cell.backend)] = why
    run.evidence = [e for e in run.evidence if (e.candidate, e.backend) not in bad]
    run.evidence += [ErrorEvidence(candidate, backend, why) for (candidate, backend), why in bad.items()]
    return run


def jsonable(value: Any) -> Any:
    """Dataclasses, numpy values and tuples -> plain JSON (NaN/inf -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _cell_label(run: RunEvidence, cell_id: str, precision: str, backend: str) -> str:
    """How a cell ran, from what its status recorded (what the run measured), never from the backend's name."""
    status = run.status.get(cell_id) or {}
    if not status:
        # Measured something (divergence, latency) but never wrote its status: stopped mid-cell, not "not run".
        started = cell_id in run.divergence or cell_id in run.latency or cell_id in run.progress
        return UNFINISHED_LABEL if started else NOT_RUN_LABEL
    if status.get("state") == "not_run" or status.get("run_here") is False:
        return ENGINE_UNAVAILABLE_LABEL
    if status.get("state") == "error":
        return CRASHED_LABEL
    if status.get("weights") == "synthetic":
        return SPEED_ONLY_LABEL
    kind = (status.get("kernels") or {}).get(precision)
    if kind == "simulated" and (status.get("artifact") or {}).get("kind") == "external checkpoint":
        return SIMULATED_EXTERNAL_LABEL
    if kind == "simulated":
        return SIMULATED_LABEL
    return {"real": REAL_LABEL, "emulated": EMULATED_LABEL, "external": EXTERNAL_LABEL}.get(
        kind, kind or "kernels not recorded")


def provenance(run: RunEvidence, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Who made each candidate's artifact: a qeval recipe (ModelOpt, the artifact-cache keys its cells used) or an
    external folder (where it was, its format, the producer its files name, its content hash), from the manifest."""
    external = manifest.get("checkpoints") or {}
    artifacts = manifest.get("artifacts") or {}
    out = []
    for cand in run.suite.candidates:
        keys = {be: (artifacts.get(f"{cand}-{be}") or {}) for be in run.suite.backends}
        if cand in external:
            e = external[cand]
            fmt = e.get("format") or {}
            out.append({"candidate": cand, "made_by": "external folder", "source": e.get("source"),
                        "folder": e.get("folder"), "format": fmt.get("scheme"), "producer": fmt.get("producer"),
                        "sha256": e.get("sha256"), "files": e.get("files"), "bytes": e.get("bytes"),
                        "checks": e.get("checks") or {}, "artifacts": {}})
            continue
        entry = precisions.get(cand)
        how = (f"custom recipe: {entry.custom.get('base')} + edits" if entry.custom else "registered recipe")
        out.append({"candidate": cand, "made_by": "qeval recipe", "source": f"{how} ({entry.modelopt_cfg})",
                    "folder": None, "format": entry.description, "producer": "qeval (ModelOpt calibration)",
                    "sha256": None, "files": None, "bytes": None, "checks": {},
                    "artifacts": {be: {"kind": k.get("kind"), "key": k.get("key")} for be, k in keys.items() if k}})
    return out


def not_run_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells an engine could not run here, with the reason and what was measured."""
    return [{"id": c["id"], "backend": c["backend"], "reason": c.get("reason") or c.get("cause") or "",
             "fix": c.get("fix"), "probe": c.get("probe") or {}} for c in cells if c["state"] == "not_run"]


def _kl_entry(cell: dict[str, Any], section: str) -> dict[str, Any] | None:
    div = cell.get("divergence") or {}
    s = div.get(section) or (div.get("lower_bound_only") or {}).get(section)
    if not s or not s.get("n_tokens"):
        return {"unavailable": div["unavailable"]} if div.get("unavailable") else None
    floor = (div.get("noise_floor") or {})
    # Records written before the top-k routes existed carry no kld_kind: they were all exact (full vocabulary).
    return {"kld_mean": s["kld_mean"], "kld_mean_ci": s.get("kld_mean_ci"), "kld_kind": s.get("kld_kind", "exact"),
            "kld_upper_mean": (s.get("kld_upper") or {}).get("kld_mean"), "top1_agree": s["top1_agree"],
            "ppl_ratio": s["ppl_ratio"], "n_tokens": s["n_tokens"], "route": (div.get("route") or {}).get("name"),
            "exact": (div.get("route") or {}).get("exact"), "simulated": div.get("simulated"),
            "floor_batch": (floor.get("batch") or {}).get(section),
            "floor_cross": {o: e.get(section) for o, e in (floor.get("cross_engine") or {}).items() if e.get(section)}}


def distribution_table(cells: list[dict[str, Any]], candidates: list[str], backends: list[str]) -> dict[str, Any]:
    """Each candidate's KL per engine beside that engine's noise floor (and the cross-engine floor), per text.

    Only numbers from the cells' divergence records, regrouped: the hf (simulated) and engine KL of one
    precision sit in one row.
    """
    by_id = {c["id"]: c for c in cells}
    rows = []
    for section in ("heldout", "task_prompts"):
        for cand in candidates:
            entries = {be: _kl_entry(by_id.get(f"{cand}-{be}") or {}, section) for be in backends}
            if any(entries.values()):
                rows.append({"section": section, "candidate": cand, "by_backend": entries})
    floors = {}
    for be in backends:
        base = next((c for c in cells if c["baseline"] and c["backend"] == be), None)
        floor = ((base or {}).get("divergence") or {}).get("noise_floor")
        if floor:
            floors[be] = {"batch": {k: v for k, v in floor.get("batch", {}).items() if isinstance(v, dict)},
                          "batch_description": floor.get("batch", {}).get("description"),
                          "cross_engine": floor.get("cross_engine") or {},
                          "route": ((base or {}).get("divergence") or {}).get("route")}
    return {"rows": rows, "floors": floors}


def _interval(scores: np.ndarray, confidence: float = 0.95) -> tuple[float, float, str]:
    """CI of a mean score: Wilson for 0/1 scores, else mean +- z SE."""
    n = scores.size
    if stats.is_binary(scores):
        lo, hi = stats.wilson_interval(int(scores.sum()), n, confidence)
        return lo, hi, "wilson"
    z = float(norm.ppf(0.5 + confidence / 2))
    se = float(np.std(scores, ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return float(scores.mean()) - z * se, float(scores.mean()) + z * se, "normal"


class _Samples:
    """Per-sample records of a run, each file read once."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], list[dict]] = {}

    def __call__(self, cell_id: str, task: str) -> list[dict]:
        key = (cell_id, task)
        if key not in self._cache:
            self._cache[key] = self.store.read_samples(cell_id, task)
        return self._cache[key]


def _accuracy(samples: _Samples, cell_id: str, tasks: list[str]) -> dict[str, dict]:
    out = {}
    for task in tasks:
        scores = np.array([float(r["score"]) for r in samples(cell_id, task)])
        if scores.size:
            lo, hi, method = _interval(scores)
            out[task] = {"mean": float(scores.mean()), "n": int(scores.size), "ci": [lo, hi], "ci_method": method,
                         "confidence": 0.95}
    return out


def _answer(record: dict) -> str | None:
    choices, chosen = record.get("choices"), record.get("chosen")
    text = choices[chosen] if isinstance(choices, list) and isinstance(chosen, int) and chosen < len(choices) \
        else record.get("extracted", record.get("response"))  # generative: the answer that was scored
    return None if text is None else str(text)[:ANSWER_CHARS]


def _gold(record: dict) -> str | None:
    choices, gold = record.get("choices"), record.get("gold")
    if isinstance(choices, list) and isinstance(gold, int) and gold < len(choices):
        return str(choices[gold])[:ANSWER_CHARS]
    target = record.get("target", gold)
    return None if target is None else str(target)[:ANSWER_CHARS]


def _flip_examples(samples: _Samples, baseline_id: str, cell_id: str, task: str) -> list[dict]:
    """A few items the candidate got wrong where the baseline was right (and the reverse), with both answers."""
    base = {pair_key(r): r for r in samples(baseline_id, task)}
    found: dict[str, list[dict]] = {"lost": [], "gained": []}
    for r in samples(cell_id, task):
        b = base.get(pair_key(r))
        if b is None or b.get("prompt_hash") != r.get("prompt_hash"):
            continue
        direction = {(1.0, 0.0): "lost", (0.0, 1.0): "gained"}.get((float(b["score"]), float(r["score"])))
        if direction and len(found[direction]) < EXAMPLES_PER_TASK:
            found[direction].append({"doc_id": r["doc_id"], "direction": direction, "baseline_answer": _answer(b),
                                     "candidate_answer": _answer(r), "gold": _gold(r)})
    return found["lost"] + found["gained"]


def _pooled(evidence: list[TaskEvidence]) -> dict[str, Any] | None:
    """Paired mean delta over every item of every task of one cell (each item weighs the same)."""
    if not evidence or len({e.points_per_unit for e in evidence}) != 1:
        return None
    sign = [1.0 if e.higher_is_better else -1.0 for e in evidence]
    b = np.concatenate([s * e.baseline_scores for s, e in zip(sign, evidence)])
    c = np.concatenate([s * e.candidate_scores for s, e in zip(sign, evidence)])
    pd = stats.paired_delta(b, c, method="normal", confidence=0.95)
    ppu = evidence[0].points_per_unit
    return {"estimate_pts": pd.estimate * ppu, "ci_pts": [pd.ci[0] * ppu, pd.ci[1] * ppu], "se_pts": pd.se * ppu,
            "confidence": pd.confidence, "n": pd.n, "n_tasks": len(evidence), "method": "normal, paired SE",
            "tasks": sorted(e.task for e in evidence)}


def _decision_item(run: RunEvidence, samples: _Samples, d: Decision) -> dict[str, Any]:
    policy = run.suite.gate
    cell_id = f"{d.candidate}-{d.backend}"
    baseline_id = f"{run.suite.baseline}-{d.backend}"
    item = jsonable(d)
    item["cell_id"] = cell_id
    item["baseline_cell_id"] = baseline_id
    item["label"] = _cell_label(run, cell_id, d.candidate, d.backend)
    for t, td in zip(item["tasks"], d.tasks):
        flips = None if td.n10 is None else td.n10 + td.n01
        t["flip_rate_ci"] = None if flips is None else list(stats.wilson_interval(flips, td.n, 0.95))
        # TRT-LLM's theta uses their alpha/beta and scale; the same formula with our paired SE is theta / ratio
        # (undefined without a single discordant pair: a paired SE of 0 detects nothing honestly).
        ratio = td.pairing.ratio
        t["mde_paired_pts"] = td.trtllm.theta / ratio if math.isfinite(ratio) and ratio > 0 else None
        t["examples"] = _flip_examples(samples, baseline_id, cell_id, td.task) if td.n10 is not None else []
    evidence = [e for e in run.evidence if isinstance(e, TaskEvidence) and e.candidate == d.candidate
                and e.backend == d.backend]
    item["pooled"] = _pooled(evidence)
    item["latency"] = compare_latency(run.latency.get(cell_id), run.latency.get(baseline_id), seed=policy.seed)
    return item


def _matrix(run: RunEvidence, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    by_key = {(d["candidate"], d["backend"]): d for d in decisions}
    rows = []
    for cand in run.suite.candidates:
        entries = []
        for be in run.suite.backends:
            d = by_key.get((cand, be))
            cell_id = f"{cand}-{be}"
            label = _cell_label(run, cell_id, cand, be)
            entries.append({"backend": be, "cell_id": cell_id, "verdict": d["verdict"] if d else "NOT RUN",
                            "label": label, "summary": d["summary"] if d else _no_decision_summary(label, cand, be)})
        rows.append({"candidate": cand, "cells": entries})
    return {"baseline": run.suite.baseline, "backends": list(run.suite.backends), "rows": rows}


def _no_decision_summary(label: str, cand: str, be: str) -> str:
    if label == UNFINISHED_LABEL:
        return f"{cand} on {be}: unfinished (the run stopped inside this cell; resume the run to judge it)"
    return f"{cand} on {be}: not run (no results)"


def _how_it_ran(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[str]] = {}
    for c in cells:
        groups.setdefault(c["label"], []).append(c["id"])
    return [{"label": label, "meaning": LABEL_MEANING.get(label, ""), "cells": ids} for label, ids in groups.items()]


def build_results(run_dir: Path) -> dict[str, Any]:
    """Gate a run directory and gather every number its reports print (the results.json document).

    The document is described field by field in qeval/schemas/results.schema.json.
    """
    run = collect_checked(run_dir)
    samples = _Samples(RunStore(run_dir))
    family = Family.planned(run.suite)
    decisions = decide(run.suite.gate, run.evidence, family=family)
    manifest = read_manifest(run_dir)
    task_names = [t.name for t in run.suite.tasks]
    cells = []
    for cell in run.cells:
        status = run.status.get(cell.id)
        cells.append({
            "id": cell.id, "precision": cell.precision, "backend": cell.backend, "baseline": cell.is_baseline,
            "state": (status or {}).get("state", "not run"),
            "cause": (status or {}).get("cause") or (status or {}).get("reason"),
            "reason": (status or {}).get("reason"), "fix": (status or {}).get("fix"),
            "probe": (status or {}).get("probe"),
            "seconds": (status or {}).get("seconds"),
            "label": _cell_label(run, cell.id, cell.precision, cell.backend),
            "description": precisions.get(cell.precision).description,
            "accuracy": _accuracy(samples, cell.id, task_names),
            "divergence": run.divergence.get(cell.id),
            "latency": run.latency.get(cell.id),
            "artifact": (status or {}).get("artifact"),
            "notes": (status or {}).get("notes") or "",
            "compute": (status or {}).get("compute"),
            "task_seconds": (status or {}).get("task_seconds"),
            "progress": run.progress.get(cell.id),
        })
    out_decisions = [_decision_item(run, samples, d) for d in decisions]
    # Records read from the run (divergence, latency, manifest) may hold NaN: strict JSON has none.
    return jsonable({
        "schema": SCHEMA_VERSION,
        "run": {"id": manifest["run_id"], "dir": str(run_dir), "created": manifest["created"]},
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "manifest": manifest,
        "suite": run.suite.model_dump(),
        "gate": {"policy": run.suite.gate.model_dump(), "correction": family.effective_correction,
                 "alpha": run.suite.gate.alpha, "family_size": family.size, "family": family.describe()},
        "cells": cells,
        "decisions": out_decisions,
        "matrix": _matrix(run, out_decisions),
        "how_it_ran": _how_it_ran(cells),
        "not_run": not_run_cells(cells),
        "provenance": provenance(run, manifest),
        "distribution": distribution_table(cells, list(run.suite.candidates), list(run.suite.backends)),
        "pareto": pareto(out_decisions, {c["id"]: c for c in cells}, run.suite.baseline),
    })
