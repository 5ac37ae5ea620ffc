"""`qeval plan SUITE`: what a run needs and costs, answered before any model runs.

Per task: the paired samples that give each cell the suite's power at its margin and at
the cell's level in the family (alpha over the planned cells; within a cell every task
must pass, so each task is planned for power^(1/tasks)) with the test the gate runs on 0/1
scores (Tango's score test), times the group-sequential design's inflation factor (its maximum n
over the fixed n for the same power: `stats.inflation_factor`), at an assumed flip rate — given,
or measured on a small pilot look of the baseline and the first candidate on hf — whether
the task has that many documents, and the projected cost (items x seconds per item,
measured on the pilot, or given).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qeval import stats
from qeval.gate import Family


@dataclass(frozen=True)
class TaskForecast:
    task: str
    metric: str
    margin_pts: float
    flip_rate: float
    flip_source: str
    required_n: int
    documents: int
    limit: int | None
    planned_n: int  # what this suite will evaluate at most (limit, documents, budget)
    enough: bool
    seconds_per_item: float | None


@dataclass(frozen=True)
class Forecast:
    suite: str
    cells: int
    level: float
    task_power: float
    tasks: tuple[TaskForecast, ...]
    candidate_cells: int
    backends: tuple[str, ...]
    mode: str
    design: str = ""  # the group-sequential design the inflation is for ("pocock, 4 looks")
    inflation: float = 1.0

    def items_per_cell(self, which: str = "planned") -> int:
        return sum(min(t.required_n, t.documents) if which == "required" else t.planned_n for t in self.tasks)

    def seconds(self, which: str = "planned") -> float | None:
        if any(t.seconds_per_item is None for t in self.tasks):
            return None
        per_cell = sum((min(t.required_n, t.documents) if which == "required" else t.planned_n) * t.seconds_per_item
                       for t in self.tasks)  # type: ignore[operator]
        return per_cell * (self.candidate_cells + len(self.backends))  # candidates and one baseline per backend


def forecast(suite: Any, suite_path: Path, *, flip_rate: float | None = None, pilot: int = 0,
             seconds_per_item: float | None = None) -> Forecast:
    """The plan of a suite; with `pilot` > 0 the flip rate and cost come from a pilot look on hf."""
    from qeval import looks
    from qeval.assets import bigbench

    task_manager = bigbench.suite_task_manager(suite, suite_path)
    for task in suite.tasks:
        bigbench.resolve_task(task.name, task_manager, file=str(suite_path))
    plans, semantics = looks.plan_tasks(suite, task_manager, file=str(suite_path))
    family = Family.planned(suite)
    level = family.fixed_level()
    power = suite.gate.power ** (1 / len(suite.tasks))
    measured: dict[str, tuple[float, float]] = _pilot(suite, suite_path, plans, pilot) if pilot else {}
    # Equally spaced looks (an explicit list of sizes is planned as that many equal looks: close enough for a plan).
    sampling = suite.sampling
    n_looks = len(sampling.looks) if isinstance(sampling.looks, list) else sampling.looks
    design = f"{sampling.spending}, {n_looks} looks" if sampling.mode == "group-sequential" else ""
    inflation = stats.inflation_factor(n_looks, level, power, sampling.spending) if design else 1.0
    out = []
    for task in suite.tasks:
        plan, sem = plans[task.name], semantics[task.name]
        ppu = sem.points_per_unit or 100.0
        margin_units = suite.gate.margin_for(task.name) / ppu
        f, source = (measured[task.name][0], f"pilot of {pilot}") if task.name in measured else (
            (flip_rate, "given") if flip_rate is not None else (0.1, "assumed 10%"))
        if task.name in measured:
            f = max(f, 1.0 / (2 * pilot))  # no flip seen in a pilot is not a flip rate of zero
        need = stats.planned_n(margin_units, flip_rate=min(max(f, margin_units), 1.0), alpha=level, power=power,
                               looks=n_looks if design else 1, spending=sampling.spending)
        spi = measured[task.name][1] if task.name in measured else seconds_per_item
        out.append(TaskForecast(task=task.name, metric=task.metric, margin_pts=suite.gate.margin_for(task.name),
                                flip_rate=f, flip_source=source, required_n=need, documents=plan.n_docs,
                                limit=task.limit, planned_n=plan.planned_n, enough=plan.n_docs >= need,
                                seconds_per_item=spi))
    return Forecast(suite=suite.name, cells=family.size, level=level, task_power=power, tasks=tuple(out),
                    candidate_cells=len(suite.candidates) * len(suite.backends), backends=tuple(suite.backends),
                    mode=suite.sampling.mode, design=design, inflation=inflation)


def _pilot(suite: Any, suite_path: Path, plans: dict, n: int) -> dict[str, tuple[float, float]]:
    """Flip rate and seconds per item of each task from `n` documents on the baseline and the first candidate (hf)."""
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.evaluate import run_look
    from qeval.harness import QevalLM
    from qeval.quantize import quantize_simulated
    from qeval.runner import Context, load_tokenizer, prepare_assets
    from qeval.store import RequestCache, RunStore

    model_dir, task_manager = prepare_assets(suite, suite_path)
    tokenizer = load_tokenizer(model_dir, suite, suite_path)
    with tempfile.TemporaryDirectory(prefix="qeval-pilot-") as tmp:
        ctx = Context(suite=suite, store=RunStore(Path(tmp)), model_dir=model_dir, tokenizer=tokenizer,
                      task_manager=task_manager)
        base = HFBackend(load_hf_model(model_dir, ctx.compute.dtype), tokenizer, max_length=suite.model.max_length)
        model, _ = quantize_simulated(load_hf_model(model_dir, ctx.compute.dtype), suite.candidates[0], ctx)
        cand = HFBackend(model, tokenizer, simulated=True, max_length=suite.model.max_length)
        out = {}
        for task in suite.tasks:
            docs = list(plans[task.name].order[:n])
            scores = []
            t0 = time.perf_counter()
            for i, backend in enumerate((base, cand)):
                lm = QevalLM(backend, tokenizer, RequestCache(Path(tmp) / f"{i}-{task.name}.jsonl"), label="pilot")
                scores.append([r["score"] for r in run_look(lm, task, task_manager, suite.seeds, docs,
                                                            positions=range(len(docs)), look=0)])
            seconds = (time.perf_counter() - t0) / (2 * len(docs))
            flips = sum(a != b for a, b in zip(*scores)) / len(docs)
            out[task.name] = (flips, seconds)
    return out


def render(fc: Forecast) -> str:
    """The table `qeval plan` prints."""
    lines = [f"qeval plan: {fc.suite} ({fc.mode} sampling) — {fc.cells} planned cells, each at level "
             f"{fc.level:.4g}; SHIP needs every task, so each is planned for power {fc.task_power:.3f}",
             *([f"n needed: the fixed-n plan of the score test times {fc.inflation:.3f}, the inflation of the "
                f"group-sequential design ({fc.design}) for the same power"] if fc.design else []),
             "",
             "| task | margin | flip rate | n needed | documents | this suite | enough | s/item |",
             "|---|---|---|---|---|---|---|---|"]
    for t in fc.tasks:
        spi = f"{t.seconds_per_item:.3f}" if t.seconds_per_item is not None else "–"
        lines.append(f"| {t.task} | {t.margin_pts:g} pts | {t.flip_rate:.1%} ({t.flip_source}) | {t.required_n:,} | "
                     f"{t.documents:,} | {t.planned_n:,} | {'yes' if t.enough else 'no'} | {spi} |")
    planned, required = fc.items_per_cell("planned"), fc.items_per_cell("required")
    lines.append("")
    lines.append(f"items per cell: {planned:,} as the suite stands, {required:,} for the planned power "
                 f"(documents permitting); {fc.candidate_cells} candidate cells + {len(fc.backends)} baseline(s)")
    for which in ("planned", "required"):
        secs = fc.seconds(which)
        if secs is not None:
            lines.append(f"projected cost ({which}): {secs / 60:.1f} min of engine time "
                         f"({'as the suite stands' if which == 'planned' else 'for the planned power'}; adaptive "
                         "sampling stops settled tasks earlier)")
    if any(not t.enough for t in fc.tasks):
        short = ", ".join(t.task for t in fc.tasks if not t.enough)
        lines.append(f"not enough documents for the planned power: {short} (a larger margin, or more tasks' power "
                     "from elsewhere)")
    if all(t.seconds_per_item is None for t in fc.tasks):
        lines.append("cost: pass --pilot N to measure seconds per item (and the flip rate) on N documents, or "
                     "--seconds-per-item")
    return "\n".join(lines)


__all__ = ["Forecast", "TaskForecast", "forecast", "render"]
