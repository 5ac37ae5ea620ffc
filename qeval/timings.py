"""Where a run's time went: run-level steps in timings.jsonl, per-cell steps in each status.json.

A user sees it at the end of `qeval run` and in the run directory; the README's
numbers come from these records of real runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from qeval.store import RunStore, append_jsonl, read_jsonl

TIMINGS_FILE = "timings.jsonl"


def record_step(run_dir: Path, step: str, seconds: float) -> None:
    """Append one run-level step (fetch and checks, report) to the run's timings.jsonl."""
    append_jsonl(Path(run_dir) / TIMINGS_FILE, [{
        "step": step, "seconds": round(seconds, 2),
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}])


def summary_lines(run_dir: Path) -> list[str]:
    """One line per step: the run-level ones, then per cell load (with quantization), tasks, divergence, latency.

    Only what this run directory recorded; a cell reused from an earlier run shows the times of the run
    that computed it.
    """
    store = RunStore(Path(run_dir))
    latest = {r["step"]: r["seconds"] for r in read_jsonl(Path(run_dir) / TIMINGS_FILE)}  # a re-report: its last
    lines = [f"{step}: {seconds:.1f} s" for step, seconds in latest.items()]
    for cell in store.cells():
        status = store.read_status(cell) or {}
        if status.get("state") != "ok":
            continue
        parts = [f"{name} {secs:.1f} s" for name, secs in (status.get("step_seconds") or {}).items()]
        parts += [f"{task} {secs:.1f} s" for task, secs in (status.get("task_seconds") or {}).items()]
        artifact = status.get("artifact") or {}
        if artifact.get("quantize_seconds") is not None and not artifact.get("reused"):
            parts.append(f"(quantize {artifact['quantize_seconds']:.1f} s, in load)")
        lines.append(f"{cell}: {status.get('seconds', 0):.1f} s" + (f" = {', '.join(parts)}" if parts else ""))
    return lines
