"""From a run directory to the gate's evidence: pair every candidate with its baseline.

A candidate on backend B is compared with the baseline on the same backend B
(same engine, same tokenization), sample by sample, matched by lm-eval doc_id.
A prompt whose hash differs between the two sides is a broken pairing and an
error, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qeval.gate import DivergenceEvidence, ErrorEvidence, Evidence, LatencyEvidence, TaskEvidence
from qeval.runner import Cell, plan
from qeval.store import RunStore
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
        record = store.read_json(cell.id, "divergence.json")
        if record:
            out.divergence[cell.id] = record
        record = store.read_json(cell.id, "latency.json")
        if record:
            out.latency[cell.id] = record
    for cell in cells:
        if not cell.is_baseline:
            out.evidence.extend(_cell_evidence(store, suite, cell, status, out))
    return out


def _cell_evidence(store: RunStore, suite: Suite, cell: Cell, status: dict[str, dict | None],
                   run: RunEvidence) -> list[Evidence]:
    baseline = Cell(suite.baseline, cell.backend, True)
    for c, role in ((baseline, "baseline"), (cell, "candidate")):
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
    simulated = (status[cell.id] or {}).get("kernels", {}).get(cell.precision) == "simulated"
    for task in suite.tasks:
        base = {r["doc_id"]: r for r in store.read_samples(baseline.id, task.name)}
        cand = {r["doc_id"]: r for r in store.read_samples(cell.id, task.name)}
        common = sorted(set(base) & set(cand))
        if not common:
            evidence.append(ErrorEvidence(cell.precision, cell.backend,
                                          f"{task.name}: no samples to pair with the baseline"))
            continue
        mismatched = [d for d in common if base[d]["prompt_hash"] != cand[d]["prompt_hash"]]
        if mismatched:
            evidence.append(ErrorEvidence(cell.precision, cell.backend, f"{task.name}: {len(mismatched)} "
                                          f"prompts differ from the baseline's (e.g. doc_id {mismatched[0]})"))
            continue
        evidence.append(TaskEvidence(
            task=task.name, metric=task.metric, candidate=cell.precision, backend=cell.backend,
            baseline_scores=[float(base[d]["score"]) for d in common],
            candidate_scores=[float(cand[d]["score"]) for d in common], doc_ids=tuple(common),
            planned_n=task.limit))
    div = run.divergence.get(cell.id)
    if div and "heldout" in div:
        h = div["heldout"]
        evidence.append(DivergenceEvidence(
            candidate=cell.precision, backend=cell.backend, kld_mean=h["kld_mean"],
            kld_mean_ci=tuple(h["kld_mean_ci"]) if h.get("kld_mean_ci") else None, kld_p99=h["kld_p99"],
            top1_agree=h["top1_agree"], n_tokens=h["n_tokens"], simulated=simulated))
    for point in (run.latency.get(cell.id) or {}).get("percentiles", []):
        evidence.append(LatencyEvidence(candidate=cell.precision, backend=cell.backend, **point))
    return evidence
