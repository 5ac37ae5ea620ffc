"""Error rates and sample use of the whole decision, per sampling mode and correction (prints a table).

Every number comes from runs simulated through qeval's own look schedule and gate
(qeval/simulation.py): 5 planned cells of 3 tasks, 0/1 items with 10% discordance,
a 5-point margin, alpha 0.05. Scenarios:
- at the margin: every cell has one task at delta = -margin, two at 0 (least favourable
  for the intersection-union test): any SHIP is a false ship;
- good: every task at delta 0 (power, and the samples used);
- clear regression: every task 15 points down (the samples a clear BLOCK needs).

Usage: python benchmarks/bench_decisions.py [--runs 2000] [--modes fixed,group-sequential,anytime]
       [--looks 5] [--spending obrien-fleming|pocock]   (the group-sequential design)
"""

from __future__ import annotations

import argparse
import time
import zlib

import numpy as np

from qeval import stats
from qeval.gate import GatePolicy
from qeval.simulation import CellTruth, TaskTruth, simulate_runs

M, F, ALPHA, CELLS = 0.05, 0.10, 0.05, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--modes", default="fixed,group-sequential,anytime")
    parser.add_argument("--corrections", default="bonferroni,holm")
    parser.add_argument("--look-size", type=int, default=48)
    parser.add_argument("--looks", type=int, default=5, help="group-sequential looks per task")
    parser.add_argument("--spending", default="obrien-fleming", choices=("obrien-fleming", "pocock"))
    args = parser.parse_args()
    # What `qeval plan` says: the score test's fixed n, times the group-sequential design's inflation.
    plan = dict(flip_rate=F, alpha=ALPHA / CELLS, power=0.8 ** (1 / 3))
    fixed_n = stats.planned_n(M, **plan)
    sequential_n = stats.planned_n(M, **plan, looks=args.looks, spending=args.spending)
    print(f"planned n per task: {fixed_n} fixed, {sequential_n} group-sequential ({args.spending}, "
          f"{args.looks} looks: inflation {sequential_n / fixed_n:.3f}); power 0.8 per cell of 3 tasks at "
          f"alpha/{CELLS}; runs per row: {args.runs}")
    scenarios = {
        "at the margin": [CellTruth(f"c{i}", (TaskTruth(-M, F), TaskTruth(0.0, F), TaskTruth(0.0, F)))
                          for i in range(CELLS)],
        "good": [CellTruth(f"c{i}", (TaskTruth(0.0, F),) * 3) for i in range(CELLS)],
        "clear regression": [CellTruth(f"c{i}", (TaskTruth(-3 * M, F + 2 * M),) * 3) for i in range(CELLS)],
    }
    print("| mode | correction | scenario | SHIP (any cell / per cell) | 95% CI of any | samples used / fixed n | s |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        for correction in args.corrections.split(","):
            if correction != "bonferroni" and mode != "fixed":
                continue  # holm and bh fall back to bonferroni in adaptive modes (qeval.gate.family)
            policy = GatePolicy(margin=100 * M, alpha=ALPHA, correction=correction)
            for name, cells in scenarios.items():
                runs = args.runs if name != "clear regression" else max(50, args.runs // 10)
                t0 = time.perf_counter()
                n = sequential_n if mode == "group-sequential" else fixed_n
                sim = simulate_runs(cells, policy, mode=mode, planned_n=n, runs=runs, seed=zlib.crc32(name.encode()),
                                    look_size=args.look_size, looks=args.looks, spending=args.spending)
                lo, hi = sim.any_ship_ci()
                per_cell = float(np.mean(list(sim.ship_rate.values())))
                used = float(np.mean(list(sim.mean_items.values()))) / (fixed_n * 3)  # of the fixed design's n
                label = f"{mode} ({args.spending}, {args.looks} looks)" if mode == "group-sequential" else mode
                print(f"| {label} | {correction} | {name} | {sim.any_ship / runs:.4f} / {per_cell:.4f} | "
                      f"[{lo:.4f}, {hi:.4f}] | {used:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
