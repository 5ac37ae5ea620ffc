"""The sampling design: which documents, in which order, in which looks, and when a task stops.

Every task is evaluated over a seeded random permutation of its documents (datasets
are often sorted: the first N are not a sample), in looks of consecutive slices of that
permutation. Between looks the runner asks the gate; a candidate's task stops as soon as
its rule is settled (PASS or FAIL), and every task of a cell stops once one of the cell's
rules FAILs (the cell is BLOCKed whatever the rest shows). The baseline is evaluated only
as far as some candidate needs it. The same look boundaries on both sides keep the
pairing exact, few-shot contexts included.

Modes (suite `sampling.mode`):
- fixed: one look of the planned n (no early stop), the classic evaluation.
- group-sequential: `looks` planned looks up to the planned n, Lan-DeMets alpha spending.
- anytime: looks of `look_size` documents until settled or the budget is spent; a betting
  confidence sequence keeps alpha whenever the run stops or is extended.

`drive_cell` is the look schedule itself, free of I/O: the runner feeds it engine
evaluations and the real gate, the error-rate simulations feed it simulated outcomes and
the same gate, so both exercise one code path.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

Mode = Literal["fixed", "group-sequential", "anytime"]
TaskState = Literal["open", "settled", "stopped", "complete", "budget"]


@dataclass(frozen=True)
class TaskPlan:
    """One task's share of the design, fixed before its first look and recorded for resume.

    Attributes:
        task: task name.
        n_docs: documents the task has.
        planned_n: the most documents this run may evaluate (limit, documents, budget).
        looks: cumulative n at each look (the last is planned_n).
        order: the permutation: doc ids in evaluation order (its first planned_n are used).
    """

    task: str
    n_docs: int
    planned_n: int
    looks: tuple[int, ...]
    order: tuple[int, ...]

    def docs_for_look(self, k: int) -> list[int]:
        """Doc ids of look k (0-based): the slice of the permutation between looks k-1 and k."""
        start = self.looks[k - 1] if k > 0 else 0
        return list(self.order[start : self.looks[k]])

    def record(self) -> dict:
        return {"task": self.task, "n_docs": self.n_docs, "planned_n": self.planned_n, "looks": list(self.looks)}


def permutation(n_docs: int, seed: int, task: str, shuffled: bool = True) -> tuple[int, ...]:
    """The evaluation order of a task's documents: seeded by the run's seed and the task's name.

    The name enters the seed so two tasks of equal size are not drawn in the same order.
    """
    if not shuffled:
        return tuple(range(n_docs))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(task.encode())])
    return tuple(int(i) for i in rng.permutation(n_docs))


def look_schedule(mode: Mode, planned_n: int, *, looks: int | Sequence[int] = 5, look_size: int = 32) -> tuple[int, ...]:
    """Cumulative n at each look for a task with `planned_n` documents to spend.

    Args:
        mode: fixed (one look), group-sequential (`looks` equal looks, or cumulative sizes cut at
            planned_n), anytime (every `look_size` documents).
    """
    if planned_n <= 0:
        return ()
    if mode == "fixed":
        return (planned_n,)
    if mode == "group-sequential":
        if isinstance(looks, int):
            cuts = [int(np.ceil(planned_n * k / looks)) for k in range(1, looks + 1)]
        else:
            cuts = [min(int(x), planned_n) for x in looks] + [planned_n]
        return tuple(sorted({c for c in cuts if c > 0}))
    cuts = list(range(look_size, planned_n, look_size)) + [planned_n]
    return tuple(cuts)


@dataclass
class TaskProgress:
    """Where one task of one candidate cell stands (the runner persists it in progress.json)."""

    looks_done: int = 0
    state: TaskState = "open"
    verdict: str | None = None  # the gate's verdict of the task's rule at the last consult

    def record(self) -> dict:
        return {"looks_done": self.looks_done, "state": self.state, "verdict": self.verdict}


@dataclass(frozen=True)
class Consult:
    """What the gate says between looks: each task rule's verdict, and whether some rule of the cell FAILed."""

    task_verdicts: Mapping[str, str]
    cell_failed: bool


@dataclass
class Budget:
    """Items this run may still evaluate (None: no cap). Shared by every cell of a run."""

    remaining: int | None = None

    def allows(self, n: int) -> bool:
        return self.remaining is None or n <= self.remaining

    def spend(self, n: int) -> None:
        if self.remaining is not None:
            self.remaining -= n


@dataclass
class CellRun:
    """The outcome of driving one candidate cell: progress per task and the looks evaluated."""

    progress: dict[str, TaskProgress] = field(default_factory=dict)
    looks_evaluated: int = 0


def drive_cell(mode: Mode, plans: Sequence[TaskPlan], progress: Mapping[str, TaskProgress], *,
               evaluate: Callable[[TaskPlan, int], None], consult: Callable[[], Consult],
               budget: Budget | None = None, save: Callable[[dict[str, TaskProgress]], None] | None = None
               ) -> CellRun:
    """Run a candidate cell's tasks look by look until each is settled, stopped, complete or out of budget.

    Look-major: the next look of every open task, then one consult of the gate. A task whose rule
    is PASS or FAIL is settled; once any rule of the cell FAILs, every open task stops (the cell is
    BLOCKed) — before the first look too, when the divergence measured ahead of the tasks already
    FAILs. Fixed mode never stops early.

    Args:
        mode: the sampling mode.
        plans: the cell's task plans.
        progress: where each task stands (resumed runs pass what progress.json holds).
        evaluate: evaluate look k of a task (baseline first where needed) and store its records.
        consult: ask the gate about the cell's evidence so far.
        budget: items the run may still evaluate.
        save: persist progress after every change (resume picks up from it).
    """
    budget = budget or Budget()
    state = {p.task: progress.get(p.task) or TaskProgress() for p in plans}
    run = CellRun(progress=state)

    def persist() -> None:
        if save is not None:
            save(state)

    if mode != "fixed" and consult().cell_failed:
        # A rule the cell already has evidence for (its divergence, measured before any task) FAILs:
        # the cell is BLOCKed whatever its tasks say, so none of them is evaluated.
        for plan in plans:
            if state[plan.task].state == "open":
                state[plan.task].state = "stopped"
        persist()
        return run

    while True:
        open_plans = [p for p in plans if state[p.task].state == "open"]
        if not open_plans:
            break
        evaluated = False
        for plan in open_plans:
            prog = state[plan.task]
            if prog.looks_done >= len(plan.looks):
                prog.state = "complete"
                continue
            size = len(plan.docs_for_look(prog.looks_done))
            if not budget.allows(size):
                prog.state = "budget"
                continue
            evaluate(plan, prog.looks_done)
            budget.spend(size)
            prog.looks_done += 1
            run.looks_evaluated += 1
            evaluated = True
            if prog.looks_done >= len(plan.looks):
                prog.state = "complete"
        persist()
        if mode == "fixed":
            if not evaluated:
                break
            continue
        verdicts = consult()
        for plan in plans:
            prog = state[plan.task]
            prog.verdict = verdicts.task_verdicts.get(plan.task, prog.verdict)
            if prog.state == "open" and prog.verdict in ("PASS", "FAIL"):
                prog.state = "settled"
            if verdicts.cell_failed and prog.state == "open":
                prog.state = "stopped"
        persist()
        if not evaluated:
            break
    return run
