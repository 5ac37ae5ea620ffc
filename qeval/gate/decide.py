"""`decide`: a policy, a family and the evidence of a run -> SHIP / BLOCK / INCONCLUSIVE per cell.

1. Group the evidence by cell (candidate x backend) and compute each rule's level-free
   statistics.
2. Settle the family (qeval.gate.family): each cell's level from the planned cells
   (and, for Holm/BH, from every cell's IUT p-value, the largest of its rules').
3. Decide every rule at its cell's level (qeval.gate.rules) and render its message
   (qeval.gate.messages).
4. Aggregate: any rule FAIL -> BLOCK; every rule PASS -> SHIP; else INCONCLUSIVE. The
   backends_agree rule, where the suite asks for it, reads the other backends' verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Sequence

from qeval.errors import QevalError
from qeval.gate import messages, rules
from qeval.gate.evidence import (DivergenceEvidence, ErrorEvidence, Evidence, LatencyEvidence, NotEvaluated,
                                 TaskEvidence)
from qeval.gate.family import CellKey, Family
from qeval.gate.outcomes import Decision, RuleResult, TaskDecision
from qeval.gate.policy import GatePolicy

RESERVED = {"kld", "flip_rate", "backends_agree", "error"}


def safe_rule_id(text: str) -> str:
    """Filename-safe id: letters, digits, '_', '-', '.'; other runs become '_'.

    Args:
        text: a task name or other label.

    Returns:
        The id (never empty).
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "rule"


def _flatten(evidence: tuple) -> list[Evidence]:
    out: list[Evidence] = []
    for item in evidence:
        if isinstance(item, (TaskEvidence, DivergenceEvidence, LatencyEvidence, ErrorEvidence, NotEvaluated)):
            out.append(item)
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            out.extend(_flatten(tuple(item)))
        else:
            raise QevalError(f"decide() got {type(item).__name__}, which is not gate evidence.",
                             fix="pass TaskEvidence, DivergenceEvidence, LatencyEvidence or ErrorEvidence")
    return out


def _group(items: list[Evidence]) -> dict[CellKey, dict[str, list]]:
    cells: dict[CellKey, dict[str, list]] = {}
    kind = {TaskEvidence: "task", DivergenceEvidence: "div", LatencyEvidence: "lat", ErrorEvidence: "err",
            NotEvaluated: "skip"}
    for ev in items:
        cells.setdefault((ev.candidate, ev.backend), {"task": [], "div": [], "lat": [], "err": [], "skip": []}
                         )[kind[type(ev)]].append(ev)
    return cells


def _task_rule_ids(tasks: list[TaskEvidence]) -> list[str]:
    metrics: dict[str, set[str]] = {}
    for ev in tasks:
        metrics.setdefault(ev.task, set()).add(ev.metric)
    used: set[str] = set()
    ids = []
    for ev in tasks:
        rid = safe_rule_id(ev.task if len(metrics[ev.task]) == 1 else f"{ev.task}_{ev.metric}")
        if rid in RESERVED or rid.startswith("latency_"):
            rid = f"task_{rid}"
        while rid in used:
            rid += "_dup"
        used.add(rid)
        ids.append(rid)
    return ids


def _cell_pvalue(policy: GatePolicy, cell: dict[str, list], task_stats: list[rules.TaskStats],
                 fixed_level: float) -> float:
    """The cell's IUT p-value: the largest of its rules' (a crashed cell: 1)."""
    if cell["err"] or cell["skip"]:  # a crash, or a task never evaluated: nothing licenses shipping
        return 1.0
    ps = [rules.task_pvalue(st) for st in task_stats]
    if policy.max_kld_mean is not None:
        ps.append(rules.kld_pvalue(policy, cell["div"]))
    if policy.max_flip_rate is not None:
        flip = rules.flip_rule(policy, task_stats, fixed_level)
        ps.append(1.0 if flip is None or flip.pvalue is None else flip.pvalue)
    ps += [rules.latency_pvalue(slo, cell["lat"], fixed_level, policy.alpha) for slo in policy.latency]
    return max(ps) if ps else 1.0


def decide(policy: GatePolicy, *evidence: Evidence | Iterable[Evidence], family: Family | None = None
           ) -> list[Decision]:
    """Apply the policy to a run's evidence.

    Args:
        policy: the gate policy.
        evidence: evidence objects, or iterables of them.
        family: the planned family (Family.planned(suite)); None takes the cells present in the
            evidence, in fixed sampling unless the task evidence says otherwise.

    Returns:
        One Decision per cell with evidence, in order of first appearance.
    """
    cells = _group(_flatten(evidence))
    if family is None:
        modes = {ev.mode for cell in cells.values() for ev in cell["task"]}
        mode = next((m for m in ("anytime", "group-sequential") if m in modes), "fixed")
        family = Family.of(cells, policy.correction, policy.alpha, mode)
    fixed_level = family.fixed_level()

    task_stats: dict[CellKey, list[rules.TaskStats]] = {
        key: [rules.task_stats(policy, ev, rid) for ev, rid in zip(cell["task"], _task_rule_ids(cell["task"]))]
        for key, cell in cells.items()}
    multipliers = family.multipliers({key: _cell_pvalue(policy, cell, task_stats[key], fixed_level)
                                      for key, cell in cells.items()})
    correction = family.effective_correction

    preliminary: dict[CellKey, tuple[list[RuleResult], list[TaskDecision], bool, float]] = {}
    for key, cell in cells.items():
        cand, backend = key
        label = f"{cand} on {backend}"
        s = multipliers.get(key, float(max(1, family.size)))
        level = policy.alpha / s
        out: list[RuleResult] = []
        tds: list[TaskDecision] = []
        for i, err in enumerate(cell["err"]):
            out.append(RuleResult("error" if i == 0 else f"error_{i + 1}", False,
                                  f"{label}: FAIL — the cell crashed, so nothing it produced can be trusted: "
                                  f"{err.cause}", "error"))
        for skipped in cell["skip"]:
            rid = safe_rule_id(skipped.task)
            out.append(RuleResult(f"task_{rid}" if rid in RESERVED or rid.startswith("latency_") else rid, None,
                                  f"{label}: INCONCLUSIVE — {skipped.task} was not evaluated: {skipped.reason}",
                                  "task"))
        for st in task_stats[key]:
            td = rules.task_rule(policy, st, level=level, multiplier=s, correction=correction,
                                 spending=st.ev.spending)
            tds.append(td)
            out.append(RuleResult(st.rule_id, rules.passed_of(td.verdict), messages.task_message(label, st, td, policy),
                                  "task", td.pvalue))
        if policy.max_kld_mean is not None:
            kld = rules.kld_rule(policy, cell["div"], level)
            out.append(RuleResult("kld", rules.passed_of(kld.verdict), messages.kld_message(label, kld, policy),
                                  "kld", kld.pvalue))
        if policy.max_flip_rate is not None:
            flip = rules.flip_rule(policy, task_stats[key], level)
            out.append(RuleResult("flip_rate", rules.passed_of(flip.verdict) if flip else None,
                                  messages.flip_message(label, flip, policy), "flip_rate",
                                  flip.pvalue if flip else None))
        for slo in policy.latency:
            lat = rules.latency_rule(slo, cell["lat"], level, policy.alpha)
            out.append(RuleResult(slo.rule_id, rules.passed_of(lat.verdict), messages.latency_message(label, lat),
                                  "latency"))
        simulated = any(d.simulated for d in cell["div"])
        preliminary[key] = (out, tds, simulated, level)

    decisions: list[Decision] = []
    for key, (out, tds, simulated, level) in preliminary.items():
        cand, backend = key
        out = list(out)
        if policy.agree_backends and backend in policy.agree_backends:
            out.append(_agree_rule(cand, policy.agree_backends, preliminary))
        if not out:
            out.append(RuleResult("evidence", None, f"{cand} on {backend}: INCONCLUSIVE — no rule had evidence "
                                                    "to judge.", "evidence"))
        verdict = rules.aggregate(out)
        decisions.append(Decision(candidate=cand, backend=backend, verdict=verdict, rules=tuple(out),
                                  tasks=tuple(tds), summary=messages.summary(cand, backend, verdict, out, simulated),
                                  policy=policy.policy, correction=correction, family_size=family.size,
                                  alpha=policy.alpha, simulated=simulated, level=level, family=family.describe()))
    return decisions


def _agree_rule(cand: str, required: list[str],
                preliminary: dict[CellKey, tuple[list[RuleResult], list[TaskDecision], bool, float]]) -> RuleResult:
    verdicts = {be: rules.aggregate(preliminary[(cand, be)][0]) if (cand, be) in preliminary else None
                for be in required}
    if any(v == "BLOCK" for v in verdicts.values()):
        passed: bool | None = False
    elif all(v == "SHIP" for v in verdicts.values()):
        passed = True
    else:
        passed = None
    return RuleResult("backends_agree", passed, messages.agree_message(cand, required, verdicts, passed),
                      "backends_agree")


def planned_rules(policy: GatePolicy, tasks: Sequence[str], backend: str) -> list[str]:
    """The rule ids `decide` will report for one candidate on `backend`, known before the run.

    The pytest plugin makes one test item per id at collection time. (A crashed cell
    adds an "error" rule, which the items of that cell report instead.)
    """
    ids = []
    for task in tasks:
        rid = safe_rule_id(task)
        ids.append(f"task_{rid}" if rid in RESERVED or rid.startswith("latency_") else rid)
    if policy.max_kld_mean is not None:
        ids.append("kld")
    if policy.max_flip_rate is not None:
        ids.append("flip_rate")
    ids += [slo.rule_id for slo in policy.latency]
    if policy.agree_backends and backend in policy.agree_backends:
        ids.append("backends_agree")
    return ids
