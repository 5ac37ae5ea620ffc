"""Reopen the latency step of finished GPU runs, so `qeval run --resume` measures it again.

    python3 benchmarks/gpu/reopen_latency.py RUNS_TGZ REPORTS_DIR

Why: the first H200 run (results/2026-12-02-h200/) measured latency with a
stream driver that stepped vLLM's engine once per stream, so at concurrency 16
the requests did not batch (fixed in qeval.backends.vllm_backend). Its quality
samples are sound and took most of the device time; only latency needs a rerun.

This unpacks RUNS_TGZ (a `runs.tgz` returned by run_suites.sh) into REPORTS_DIR
and, in every run, deletes `latency.json` and `status.json` of each cell on a
latency backend (the suite's `latency.backends`, else its `backends`). A cell
without status.json is not finished, so `qeval run --resume` opens its engine
again, finds every task's samples on disk (recomputes none), runs the latency
probe, and writes the gate and reports anew. run_suites.sh then does exactly
that, since REPORTS_DIR is no longer empty.
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import yaml


def latency_backends(run_dir: Path) -> set[str]:
    suite = yaml.safe_load((run_dir / "suite.yaml").read_text())
    latency = suite.get("latency") or {}
    return set(latency.get("backends") or suite.get("backends") or [])


def reopen(run_dir: Path) -> list[str]:
    """Delete the latency record and finished mark of every latency cell of one run; return the cell ids."""
    backends = latency_backends(run_dir)
    reopened = []
    for cell in sorted((run_dir / "cells").iterdir()):
        if cell.name.rsplit("-", 1)[-1] not in backends:
            continue
        for name in ("latency.json", "status.json"):
            (cell / name).unlink(missing_ok=True)
        reopened.append(cell.name)
    return reopened


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs_tgz", type=Path)
    ap.add_argument("reports_dir", type=Path)
    args = ap.parse_args()
    args.reports_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.runs_tgz) as tar:
        tar.extractall(args.reports_dir, filter="data")  # "data": no links or paths out of reports_dir
    for run_dir in sorted(p.parent for p in args.reports_dir.glob("*/suite.yaml")):
        print(f"{run_dir.name}: latency reopened for {', '.join(reopen(run_dir)) or 'no cell'}")


if __name__ == "__main__":
    main()
