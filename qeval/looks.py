"""One cell's tasks, look by look: the baseline as far as some candidate needs it, candidates until settled.

The schedule itself (qeval.sampling.drive_cell) knows nothing of engines or files; this
module gives it its two hands: `evaluate` runs one look of one task on the cell's engine
(extending the baseline first where it lags) and writes the records, `consult` asks the
real gate about the cell's evidence so far. Progress (per task: its plan, looks done,
state) is written to the cell's progress.json after every look, so a resumed run
continues the same design.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from qeval import interrupts, sampling
from qeval.errors import QevalError
from qeval.evaluate import MetricSemantics, lm_eval_task, metric_semantics, run_look

log = logging.getLogger(__name__)
PROGRESS = "progress.json"


# -- the design, once per run ------------------------------------------------------------------------------

def plan_tasks(suite: Any, task_manager: Any, *, file: str | None = None
               ) -> tuple[dict[str, sampling.TaskPlan], dict[str, MetricSemantics]]:
    """Each task's plan (documents, permutation, looks) and metric semantics, before anything runs.

    Also checks, before any model is loaded, what only the task's documents can tell: that a
    cluster key names a field they have.
    """
    spec = suite.sampling
    seed = suite.seeds.sampling if spec.seed is None else spec.seed
    plans, semantics = {}, {}
    for i, task in enumerate(suite.tasks):
        lm_task = lm_eval_task(task_manager, task.name)
        docs = lm_task.eval_docs
        n_docs = len(docs)
        if task.cluster is not None and n_docs and task.cluster not in docs[0]:
            raise QevalError(f"the documents of task {task.name!r} have no field {task.cluster!r} to cluster by "
                             f"(they have {', '.join(sorted(docs[0].keys()))})", file=file,
                             field=f"tasks[{i}].cluster", fix="name one of those fields, or drop cluster")
        planned = min(x for x in (task.limit, n_docs, spec.max_items_per_task) if x is not None)
        looks = sampling.look_schedule(spec.mode, planned, looks=spec.looks, look_size=spec.look_size)
        plans[task.name] = sampling.TaskPlan(task=task.name, n_docs=n_docs, planned_n=planned, looks=looks,
                                             order=sampling.permutation(n_docs, seed, task.name,
                                                                        shuffled=spec.order == "shuffled"))
        semantics[task.name] = metric_semantics(lm_task, task, file=file)
        if spec.mode == "anytime" and semantics[task.name].score_range is None:
            raise QevalError(f"anytime sampling needs the range of {task.name}'s metric {task.metric!r}, which "
                             "qeval does not know", file=file, field=f"tasks[{i}].score_range",
                             fix="give score_range: [low, high], or use sampling mode fixed or group-sequential")
    return plans, semantics


def design_record(suite: Any, plans: dict[str, sampling.TaskPlan]) -> dict[str, Any]:
    """The sampling design as the manifest keeps it (a resume must find the same)."""
    spec = suite.sampling
    return {"mode": spec.mode, "order": spec.order, "seed": suite.seeds.sampling if spec.seed is None else spec.seed,
            "looks": spec.looks, "look_size": spec.look_size, "spending": spec.spending,
            "max_items_per_task": spec.max_items_per_task, "max_items_total": spec.max_items_total,
            "tasks": {name: p.record() for name, p in plans.items()}}


# -- progress of one cell ----------------------------------------------------------------------------------

def load_progress(ctx: Any, cell_id: str) -> dict[str, sampling.TaskProgress]:
    """Where each task of a cell stands; looks already on disk count even if progress.json lagged behind."""
    record = ctx.store.read_json(cell_id, PROGRESS) or {}
    out = {}
    for name in ctx.task_plans:
        saved = ((record.get("tasks") or {}).get(name) or {}).get("progress") or {}
        prog = sampling.TaskProgress(looks_done=int(saved.get("looks_done", 0)), state=saved.get("state", "open"),
                                     verdict=saved.get("verdict"))
        looks_on_disk = {r.get("look", 0) for r in ctx.store.read_samples(cell_id, name)}
        if looks_on_disk:
            prog.looks_done = max(prog.looks_done, max(looks_on_disk) + 1)
        out[name] = prog
    return out


def save_progress(ctx: Any, cell_id: str, progress: dict[str, sampling.TaskProgress]) -> None:
    ctx.store.write_json(cell_id, PROGRESS, {
        "mode": ctx.suite.sampling.mode,
        "tasks": {name: {"plan": ctx.task_plans[name].record(), "semantics": ctx.semantics[name].record(),
                         "progress": progress[name].record()} for name in ctx.task_plans}})


# -- evaluating a look -------------------------------------------------------------------------------------

def evaluate_look(ctx: Any, cell_id: str, lm: Any, plan: sampling.TaskPlan, k: int,
                  timings: dict[str, float]) -> int:
    """Run look k of one task on `lm` and store its records (merged by doc_id: a repeated look replaces)."""
    interrupts.stop_if_requested()  # a Ctrl-C swallowed since the last look stops the run here
    spec = next(t for t in ctx.suite.tasks if t.name == plan.task)
    docs = plan.docs_for_look(k)
    start = plan.looks[k - 1] if k > 0 else 0
    progress = ctx.cell_progress(cell_id)  # before the look: what is on disk now counts as done
    t0 = time.perf_counter()
    records = run_look(lm, spec, ctx.task_manager, ctx.suite.seeds, docs, positions=range(start, start + len(docs)),
                       look=k, aggregation=ctx.semantics[plan.task].aggregation)
    ctx.store.merge_samples(cell_id, plan.task, records)
    seconds = time.perf_counter() - t0
    timings[plan.task] = round(timings.get(plan.task, 0.0) + seconds, 2)
    mean = sum(r["score"] for r in records) / len(records) if records else float("nan")
    log.info("%s %s: look %d/%d, %d documents (n=%d), mean %s %.4f (%.1fs)", cell_id, plan.task, k + 1,
             len(plan.looks), len(records), plan.looks[k], spec.metric, mean, seconds)
    log.info("%s", progress.advance(len(records), seconds))  # items done / planned, ETA
    return len(records)


def run_baseline(ctx: Any, cell: Any, lm: Any, timings: dict[str, float]) -> None:
    """The baseline's first look of every task (its only one in fixed mode); later looks come on demand."""
    progress = load_progress(ctx, cell.id)
    for name, plan in ctx.task_plans.items():
        if progress[name].looks_done == 0 and plan.looks:
            size = len(plan.docs_for_look(0))
            if not ctx.budget.allows(size):
                progress[name].state = "budget"
                continue
            evaluate_look(ctx, cell.id, lm, plan, 0, timings)
            ctx.budget.spend(size)
            progress[name].looks_done = 1
        if ctx.suite.sampling.mode == "fixed":
            progress[name].state = "complete"
        save_progress(ctx, cell.id, progress)


def extend_baseline(ctx: Any, backend: str, plan: sampling.TaskPlan, k: int) -> float:
    """Make sure the baseline on `backend` has looks 0..k of a task (the same slices the candidate uses).

    Returns the seconds it spent. They are added to the baseline's own status (its task seconds and
    total), so the time per step charges each look to the cell that evaluated it, not to the candidate
    that asked for it.
    """
    from qeval.cells import Cell

    cell = Cell(ctx.suite.baseline, backend, True)
    progress = load_progress(ctx, cell.id)
    prog = progress[plan.task]
    if prog.looks_done > k:
        return 0.0
    lm = ctx.baseline_lm(backend)
    timings: dict[str, float] = {}
    while prog.looks_done <= k:
        n = evaluate_look(ctx, cell.id, lm, plan, prog.looks_done, timings)
        ctx.budget.spend(n)
        prog.looks_done += 1
        save_progress(ctx, cell.id, progress)
    _charge_baseline(ctx, cell.id, timings)
    return sum(timings.values())


def _charge_baseline(ctx: Any, cell_id: str, timings: dict[str, float]) -> None:
    """Add looks evaluated on demand to the finished baseline's task seconds and total."""
    status = ctx.store.read_status(cell_id)
    if not (status and status.get("state") == "ok"):
        return  # the baseline's own run has not written its status yet; its timings dict holds these
    tasks = status.setdefault("task_seconds", {})
    for task, seconds in timings.items():
        tasks[task] = round(tasks.get(task, 0.0) + seconds, 2)
    status["seconds"] = round(status.get("seconds", 0.0) + sum(timings.values()), 2)
    ctx.store.write_status(cell_id, status)


def run_candidate(ctx: Any, cell: Any, lm: Any, timings: dict[str, float],
                  steps: dict[str, float] | None = None) -> sampling.CellRun:
    """A candidate cell's tasks through the look schedule, consulting the gate between looks.

    `steps` gets "baseline looks": the seconds this cell waited for the baseline's later looks (inside the
    cell's total, charged to the baseline's tasks too)."""
    plans = list(ctx.task_plans.values())

    def evaluate(plan: sampling.TaskPlan, k: int) -> None:
        waited = extend_baseline(ctx, cell.backend, plan, k)
        if waited and steps is not None:
            steps["baseline looks"] = round(steps.get("baseline looks", 0.0) + waited, 2)
        evaluate_look(ctx, cell.id, lm, plan, k, timings)

    def consult() -> sampling.Consult:
        return consult_gate(ctx, cell)

    progress = load_progress(ctx, cell.id)
    run = sampling.drive_cell(ctx.suite.sampling.mode, plans, progress, evaluate=evaluate, consult=consult,
                              budget=ctx.budget, save=lambda state: save_progress(ctx, cell.id, state))
    states = {name: p.state for name, p in run.progress.items()}
    log.info("%s: %s", cell.id, ", ".join(f"{n} {s} after {run.progress[n].looks_done} look(s)"
                                           for n, s in states.items()))
    return run


def consult_gate(ctx: Any, cell: Any) -> sampling.Consult:
    """The gate's view of a cell between looks, through the same collect -> decide path as the report."""
    from qeval.collect import cell_evidence
    from qeval.gate import Family, decide, sequential_blocker

    status = {c: ctx.store.read_status(c) for c in (f"{ctx.suite.baseline}-{cell.backend}",)}
    evidence = cell_evidence(ctx.store, ctx.suite, cell, status, ctx.store.read_json(cell.id, "divergence.json"),
                             in_progress=True)
    decisions = [d for d in decide(ctx.suite.gate, evidence, family=Family.planned(ctx.suite))
                 if (d.candidate, d.backend) == (cell.precision, cell.backend)]
    if not decisions:
        return sampling.Consult({}, False)
    decision = decisions[0]
    task_ev = {getattr(e, "task", None): e for e in evidence}
    verdicts = {td.task: td.verdict for td in decision.tasks
                if td.task in task_ev and not sequential_blocker(ctx.suite.gate, task_ev[td.task])}
    return sampling.Consult(verdicts, decision.verdict == "BLOCK")
