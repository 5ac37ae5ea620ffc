"""The whole decision's error rates, by simulation through the runner's look schedule and the real gate.

A simulated run has planned cells of several tasks each; every item is a paired 0/1
outcome drawn with a task's true delta and flip rate. Items are drawn look by look
exactly when `qeval.sampling.drive_cell` asks for them (the schedule the runner uses),
and between looks the schedule consults `qeval.gate.decide` with the suite's planned
family, as the runner does. The final verdict is `decide` on all the data. So a false
ship here is a false ship of the product, not of a formula.

Used by tests/test_decision_simulation.py (a few hundred runs) and
benchmarks/bench_decisions.py (thousands, the numbers in benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from qeval import sampling, stats
from qeval.gate import Family, GatePolicy, TaskEvidence, decide


@dataclass(frozen=True)
class TaskTruth:
    """What is true about one task of one simulated cell (metric units: 0.01 = one point)."""

    delta: float
    flip_rate: float


@dataclass(frozen=True)
class CellTruth:
    candidate: str
    tasks: tuple[TaskTruth, ...]


@dataclass
class CellOutcome:
    verdict: str
    items: int  # candidate items evaluated (the baseline's are the same documents)
    task_verdicts: dict[str, str] = field(default_factory=dict)


def _draw(n: int, truth: TaskTruth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n paired 0/1 outcomes: a lost answer with probability (f - delta)/2, a gained one (f + delta)/2."""
    p10, p01 = (truth.flip_rate - truth.delta) / 2, (truth.flip_rate + truth.delta) / 2
    kind = rng.choice(3, size=n, p=[p10, p01, 1 - p10 - p01])
    both = rng.random(n) < 0.5  # concordant items: both right or both wrong (irrelevant to every paired rule)
    b = np.where(kind == 0, 1.0, np.where(kind == 1, 0.0, both.astype(float)))
    c = np.where(kind == 0, 0.0, np.where(kind == 1, 1.0, both.astype(float)))
    return b, c


def simulate_cell(truth: CellTruth, policy: GatePolicy, family: Family, *, mode: sampling.Mode, planned_n: int,
                  looks: int | Sequence[int] = 5, look_size: int = 32, spending: str = "obrien-fleming",
                  backend: str = "hf", rng: np.random.Generator) -> CellOutcome:
    """One cell of a simulated run through drive_cell and decide."""
    schedule = sampling.look_schedule(mode, planned_n, looks=looks, look_size=look_size)
    plans = [sampling.TaskPlan(task=f"task{i}", n_docs=planned_n, planned_n=planned_n, looks=schedule,
                               order=tuple(range(planned_n))) for i in range(len(truth.tasks))]
    data: dict[str, list[np.ndarray]] = {p.task: [np.zeros(0), np.zeros(0)] for p in plans}
    score_range = (0.0, 1.0)

    def evidence() -> list[TaskEvidence]:
        out = []
        for p in plans:
            b, c = data[p.task]
            if b.size:
                out.append(TaskEvidence(task=p.task, metric="acc", candidate=truth.candidate, backend=backend,
                                        baseline_scores=b, candidate_scores=c, doc_ids=tuple(range(b.size)),
                                        planned_n=planned_n, mode=mode, looks=schedule if mode != "fixed" else None,
                                        spending=spending, score_range=score_range))
        return out

    def evaluate(plan: sampling.TaskPlan, k: int) -> None:
        t = truth.tasks[plans.index(plan)]
        b, c = _draw(len(plan.docs_for_look(k)), t, rng)
        old_b, old_c = data[plan.task]
        data[plan.task] = [np.concatenate([old_b, b]), np.concatenate([old_c, c])]

    def consult() -> sampling.Consult:
        ev = evidence()
        if not ev:  # before the first look: no rule has evidence yet (the simulation has no divergence)
            return sampling.Consult({}, False)
        [d] = decide(policy, ev, family=family)
        return sampling.Consult({td.task: td.verdict for td in d.tasks}, d.verdict == "BLOCK")

    sampling.drive_cell(mode, plans, {}, evaluate=evaluate, consult=consult)
    [final] = decide(policy, evidence(), family=family)
    return CellOutcome(final.verdict, sum(data[p.task][0].size for p in plans),
                       {td.task: td.verdict for td in final.tasks})


@dataclass(frozen=True)
class RunSimulation:
    """Error rates of many simulated runs of one design.

    Attributes:
        runs: simulated runs.
        any_ship: runs in which some cell SHIPped (the false-ship rate when every cell is at the margin).
        ship_rate: per cell, the fraction of runs it SHIPped.
        mean_items: per cell, mean candidate items evaluated.
        planned_items: items a fixed design evaluates per cell (tasks x planned n).
    """

    runs: int
    any_ship: int
    ship_rate: dict[str, float]
    mean_items: dict[str, float]
    planned_items: int

    def any_ship_ci(self, confidence: float = 0.95) -> tuple[float, float]:
        return stats.wilson_interval(self.any_ship, self.runs, confidence)


def simulate_runs(cells: Sequence[CellTruth], policy: GatePolicy, *, mode: sampling.Mode, planned_n: int,
                  runs: int, seed: int = 0, looks: int | Sequence[int] = 5, look_size: int = 32,
                  spending: str = "obrien-fleming", planned: Sequence[str] | None = None) -> RunSimulation:
    """`runs` simulated runs of the given cells (the family: `planned` candidates, default the cells')."""
    rng = np.random.default_rng(seed)
    names = list(planned) if planned is not None else [c.candidate for c in cells]
    family = Family.of([(n, "hf") for n in names], policy.correction, policy.alpha, mode)
    ships = {c.candidate: 0 for c in cells}
    items = {c.candidate: 0 for c in cells}
    any_ship = 0
    for _ in range(runs):
        shipped = False
        for cell in cells:
            out = simulate_cell(cell, policy, family, mode=mode, planned_n=planned_n, looks=looks,
                                look_size=look_size, spending=spending, rng=rng)
            ships[cell.candidate] += out.verdict == "SHIP"
            items[cell.candidate] += out.items
            shipped |= out.verdict == "SHIP"
        any_ship += shipped
    return RunSimulation(runs=runs, any_ship=any_ship, ship_rate={k: v / runs for k, v in ships.items()},
                         mean_items={k: v / runs for k, v in items.items()},
                         planned_items=planned_n * max(len(c.tasks) for c in cells))
