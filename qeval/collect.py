"""From a run directory to the gate's evidence: pair every candidate with its baseline.

A candidate on backend B is compared with the baseline on the same backend B
(same engine, same tokenization), sample by sample, matched by lm-eval doc_id, in
the order the sampling design evaluated them. A prompt whose hash differs between
the two sides is a broken pairing and an error, never silently dropped. What each
metric means (direction, scale, range) and how the samples were collected (mode,
look schedule) come from the cell's progress record, which the runner writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qeval.evaluate import MetricSemantics, resolve_scale
from qeval.gate import DivergenceEvidence, ErrorEvidence, Evidence, LatencyEvidence, NotEvaluated, TaskEvidence
from qeval.cells import Cell, plan
from qeval.store import RunStore, pair_key
from qeval.suite import Suite


@dataclass
class RunEvidence:
    """Everything the gate and the reports need from one run directory."""

    suite: Suite
    cells: list[Cell]
    status: dict[str, dict | None]
    evidence: list[Evidence] = field(default_factory=list)
    accuracy: dict[str, dict[str, dict]] = field(default_factory=dict)  # cell -> task -> {mean, n}
    divergence: dict[str, dict] = field(default_factory=dict)  # cell -> divergence record
    latency: dict[str, dict] = field(default_factory=dict)  # cell -> latency record
    progress: dict[str, dict] = field(default_factory=dict)  # cell -> progress record (sampling design)


def load_suite_of_run(run_dir: Path) -> Suite:
    from qeval.suite import load_suite

    suite, _ = load_suite(run_dir / "suite.yaml")
    return suite


def collect(run_dir: Path) -> RunEvidence:
    store = RunStore(run_dir)
    suite = load_suite_of_run(run_dir)
    cells = plan(suite)
    status = {c.id: store.read_status(c.id) for c in cells}
    out = RunEvidence(suite=suite, cells=cells, status=status)
    for cell in cells:
        out.accuracy[cell.id] = {}
        for task in suite.tasks:
            records = store.read_samples(cell.id, task.name)
            if records:
                scores = [r["score"] for r in records]
                out.accuracy[cell.id][task.name] = {"mean": sum(scores) / len(scores), "n": len(scores)}
        for name, target in (("divergence.json", out.divergence), ("latency.json", out.latency),
                             ("progress.json", out.progress)):
            record = store.read_json(cell.id, name)
            if record:
                target[cell.id] = record
    for cell in cells:
        if not cell.is_baseline:
            out.evidence.extend(cell_evidence(store, suite, cell, status, out.divergence.get(cell.id),
                                              out.latency.get(cell.id)))
    return out


def _ordered(records: list[dict]) -> dict[Any, dict]:
    """Records by doc_id, in evaluation order (runs before the sampling design: by doc_id)."""
    ordered = sorted(records, key=lambda r: (r.get("order", r["doc_id"]), r["doc_id"], r.get("repeat", 0)))
    return {pair_key(r): r for r in ordered}


def task_evidence(store: RunStore, suite: Suite, cell: Cell, task: Any, progress: dict | None,
                  in_progress: bool = False) -> Evidence | None:
    """One task's paired evidence (or the error that prevents pairing); None where nothing was evaluated yet."""
    info = ((progress or {}).get("tasks") or {}).get(task.name) or {}
    state = info.get("progress") or {}
    cand = _ordered(store.read_samples(cell.id, task.name))
    if not cand and state.get("state") == "stopped" and not state.get("looks_done"):
        return NotEvaluated(cell.precision, cell.backend, task.name,
                            "another rule of the cell had already FAILed (its divergence, measured before any "
                            "task), so the run spent no documents on it")
    if not cand and in_progress:
        return None  # the runner's consult before the task's first look
    baseline = Cell(suite.baseline, cell.backend, True)
    base = _ordered(store.read_samples(baseline.id, task.name))
    common = [d for d in cand if d in base]
    if not common:
        return ErrorEvidence(cell.precision, cell.backend, f"{task.name}: no samples to pair with the baseline")
    mismatched = [d for d in common if base[d]["prompt_hash"] != cand[d]["prompt_hash"]]
    if mismatched:
        return ErrorEvidence(cell.precision, cell.backend, f"{task.name}: {len(mismatched)} prompts differ from "
                                                           f"the baseline's (e.g. doc_id {mismatched[0]})")
    sem = MetricSemantics.from_record(info["semantics"]) if info.get("semantics") else None
    b_scores = [float(base[d]["score"]) for d in common]
    c_scores = [float(cand[d]["score"]) for d in common]
    if sem is None:  # a run directory from before the sampling design: 0-1 scores, higher is better
        hib, ppu, rng, source = (True if task.higher_is_better is None else task.higher_is_better,
                                 task.points_per_unit or 100.0, task.score_range, "assumed (no progress record)")
    else:
        ppu, source = resolve_scale(sem, b_scores + c_scores)
        hib, rng = sem.higher_is_better, sem.score_range
    plan_info = info.get("plan") or {}
    mode = (progress or {}).get("mode", "fixed")
    clusters = None
    if task.cluster is not None or task.repeats > 1:  # repeats: the document is the cluster of its draws
        clusters = tuple(str(cand[d].get("cluster")) for d in common)
    return TaskEvidence(
        task=task.name, metric=task.metric, candidate=cell.precision, backend=cell.backend,
        baseline_scores=b_scores, candidate_scores=c_scores, doc_ids=tuple(common), clusters=clusters,
        higher_is_better=hib, points_per_unit=ppu, planned_n=plan_info.get("planned_n", task.limit), mode=mode,
        looks=tuple(plan_info["looks"]) if plan_info.get("looks") and mode != "fixed" else None,
        spending=suite.sampling.spending, score_range=tuple(rng) if rng else None, semantics=source)


def cell_evidence(store: RunStore, suite: Suite, cell: Cell, status: dict[str, dict | None],
                  divergence: dict | None = None, latency: dict | None = None, *,
                  in_progress: bool = False) -> list[Evidence]:
    """Every piece of evidence of one candidate cell (the runner asks between looks; reports at the end).

    Args:
        in_progress: the candidate cell is still running (the runner's consult between looks): its
            missing status is not "not run".
    """
    baseline = Cell(suite.baseline, cell.backend, True)
    for c, role in ((baseline, "baseline"), (cell, "candidate")):
        if in_progress and c is cell:
            continue
        st = status.get(c.id)
        if st is None:
            if c is cell:
                return []  # not run (e.g. deselected in pytest): no decision rather than a false one
            return [ErrorEvidence(cell.precision, cell.backend, f"the {role} cell {c.id} has not run")]
        if st.get("state") == "not_run":
            return []  # the engine cannot run here (cause in the status): no decision, the matrix says NOT RUN
        if st.get("state") == "error":
            return [ErrorEvidence(cell.precision, cell.backend, f"{role} cell {c.id} failed: {st.get('cause')}")]
    evidence: list[Evidence] = []
    if suite.speed_only or (status.get(cell.id) or {}).get("weights") == "synthetic":
        # Synthetic weights have no quality: only latency is evidence, whatever else lies in the cell's folder.
        return [LatencyEvidence(candidate=cell.precision, backend=cell.backend, **point)
                for point in (latency or {}).get("percentiles", [])]
    simulated = ((status.get(cell.id) or {}).get("kernels") or {}).get(cell.precision) == "simulated"
    progress = store.read_json(cell.id, "progress.json")
    for task in suite.tasks:
        ev = task_evidence(store, suite, cell, task, progress, in_progress)
        if ev is not None:
            evidence.append(ev)
    div = divergence_evidence(cell, divergence, simulated)
    if div is not None:
        evidence.append(div)
    for point in (latency or {}).get("percentiles", []):
        evidence.append(LatencyEvidence(candidate=cell.precision, backend=cell.backend, **point))
    return evidence


def divergence_evidence(cell: Cell, record: dict | None, simulated: bool) -> DivergenceEvidence | None:
    """The held-out KL of a cell, with what kind of number it is (qeval.divergence: exact, or bounds from
    top-k; a section that is only a lower bound is kept under lower_bound_only, so it can never PASS)."""
    if not record:
        return None
    section = record.get("heldout")
    if section is None:
        section = (record.get("lower_bound_only") or {}).get("heldout")
    if not section or not section.get("n_tokens"):
        return None
    route = (record.get("route") or {}).get("name", "")
    ci = section.get("kld_mean_ci")
    common = dict(candidate=cell.precision, backend=cell.backend, kld_p99=section["kld_p99"],
                  top1_agree=section["top1_agree"], n_tokens=section["n_tokens"], simulated=simulated, route=route)
    if section.get("kld_kind", "exact") == "exact":
        return DivergenceEvidence(kld_mean=section["kld_mean"], kld_mean_ci=tuple(ci) if ci else None,
                                  kld_se=section.get("kld_se"), bound="exact", **common)
    lower, upper = section["kld_lower"], section.get("kld_upper")
    return DivergenceEvidence(kld_mean=lower["kld_mean"], kld_mean_ci=tuple(lower["kld_mean_ci"]),
                              kld_se=lower.get("kld_se"), bound="lower_bound" if upper is None else "bounds",
                              kld_upper_mean=None if upper is None else upper["kld_mean"],
                              kld_upper_se=None if upper is None else upper.get("kld_se"), **common)
