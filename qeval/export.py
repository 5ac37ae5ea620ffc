"""`qeval export RUN_DIR --format csv|parquet|jsonl`: a run's numbers as two tidy tables for pandas.

decisions: one row per (candidate cell, task) the gate decided, read from results.json (the gate's own
numbers, not recomputed); paired: one row per (candidate cell, task, document), the candidate's record next
to its baseline's on the same backend, matched by lm-eval doc_id as the gate pairs them (qeval.collect).
The columns are documented in docs/export.md; DECISION_COLUMNS and PAIRED_COLUMNS are their order.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

from qeval.errors import QevalError
from qeval.paths import under
from qeval.store import RunStore, write_bytes_atomic

FORMATS = ("csv", "parquet", "jsonl")
DECISION_COLUMNS = (
    "run_id", "cell", "candidate", "backend", "baseline_cell", "label", "simulated", "cell_verdict", "task",
    "metric", "task_verdict", "n", "baseline_pts", "candidate_pts", "delta_pts", "ci_low_pts", "ci_high_pts",
    "confidence", "margin", "margin_kind", "pvalue", "adjusted_pvalue", "method", "mode", "flip_rate", "n10",
    "n01", "n_to_settle", "kld_mean", "top1_agree")
PAIRED_COLUMNS = (
    "run_id", "cell", "candidate", "backend", "baseline_cell", "task", "doc_id", "order", "look",
    "baseline_score", "candidate_score", "delta", "flip", "flip_direction", "baseline_chosen", "candidate_chosen",
    "gold", "prompt_hash", "same_prompt")


def _results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise QevalError(f"{run_dir} has no results.json yet (the run was not gated)", file=str(path),
                         fix=f"run `qeval report {run_dir}` first; it gates the records and writes it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QevalError(f"results.json is not valid JSON ({type(exc).__name__})", file=str(path),
                         fix=f"rewrite it with `qeval report {run_dir}`") from None


def decision_rows(run_dir: Path) -> list[dict[str, Any]]:
    results = _results(run_dir)
    run_id = results["run"]["id"]
    divergence = {c["id"]: ((c.get("divergence") or {}).get("heldout") or {}) for c in results["cells"]}
    rows = []
    for d in results["decisions"]:
        div = divergence.get(d["cell_id"], {})
        for t in d["tasks"]:
            lo, hi = (t.get("ci") or (None, None))
            rows.append({
                "run_id": run_id, "cell": d["cell_id"], "candidate": d["candidate"], "backend": d["backend"],
                "baseline_cell": d["baseline_cell_id"], "label": d["label"], "simulated": d["simulated"],
                "cell_verdict": d["verdict"], "task": t["task"], "metric": t.get("metric"),
                "task_verdict": t["verdict"], "n": t.get("n"), "baseline_pts": t.get("baseline_pts"),
                "candidate_pts": t.get("candidate_pts"), "delta_pts": t.get("delta_pts"), "ci_low_pts": lo,
                "ci_high_pts": hi, "confidence": t.get("confidence"), "margin": t.get("margin"),
                "margin_kind": t.get("margin_kind"), "pvalue": t.get("pvalue"),
                "adjusted_pvalue": t.get("adjusted_pvalue"), "method": t.get("method"), "mode": t.get("mode"),
                "flip_rate": t.get("flip_rate"), "n10": t.get("n10"), "n01": t.get("n01"),
                "n_to_settle": t.get("n_to_settle"), "kld_mean": div.get("kld_mean"),
                "top1_agree": div.get("top1_agree")})
    return rows


def paired_rows(run_dir: Path) -> list[dict[str, Any]]:
    from qeval.cells import Cell, plan
    from qeval.collect import load_suite_of_run

    suite = load_suite_of_run(run_dir)
    store = RunStore(run_dir)
    run_id = run_dir.name
    rows = []
    for cell in plan(suite):
        if cell.is_baseline:
            continue
        baseline = Cell(suite.baseline, cell.backend, True)
        for task in suite.tasks:
            base = {r["doc_id"]: r for r in store.read_samples(baseline.id, task.name)}
            cand = sorted(store.read_samples(cell.id, task.name), key=lambda r: (r.get("order", 0), str(r["doc_id"])))
            for r in cand:
                b = base.get(r["doc_id"])
                if b is None:  # not paired (the gate does not use it either)
                    continue
                bs, cs = b["score"], r["score"]
                rows.append({
                    "run_id": run_id, "cell": cell.id, "candidate": cell.precision, "backend": cell.backend,
                    "baseline_cell": baseline.id, "task": task.name, "doc_id": r["doc_id"], "order": r.get("order"),
                    "look": r.get("look"), "baseline_score": bs, "candidate_score": cs, "delta": cs - bs,
                    "flip": cs != bs, "flip_direction": "" if cs == bs else ("gained" if cs > bs else "lost"),
                    "baseline_chosen": b.get("chosen"), "candidate_chosen": r.get("chosen"), "gold": r.get("gold"),
                    "prompt_hash": r.get("prompt_hash"), "same_prompt": r.get("prompt_hash") == b.get("prompt_hash")})
    return rows


def _encode(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False) + "\n"
                       for r in rows).encode("utf-8")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows],
                                 schema=None) if rows else pa.table({c: pa.array([], pa.null()) for c in columns})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def check_format(fmt: str) -> None:
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise QevalError("--format parquet needs the Python package pyarrow, which is not installed",
                         field="--format", fix="pip install pyarrow, or use --format csv or jsonl")


def export(run_dir: Path, fmt: str, out_dir: Path | None = None) -> dict[str, Path]:
    """Write decisions.<fmt> and paired.<fmt> (default: RUN_DIR/export/); returns table name -> path."""
    check_format(fmt)
    tables = {"decisions": (decision_rows(run_dir), DECISION_COLUMNS),
              "paired": (paired_rows(run_dir), PAIRED_COLUMNS)}
    out_dir = out_dir if out_dir is not None else run_dir / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise QevalError(f"{out_dir} is a file, not a directory", field="--out",
                         fix="pass a directory (it is created if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (rows, columns) in tables.items():
        path = under(out_dir, out_dir / f"{name}.{fmt}", what="export file")  # fixed names: no input picks them
        write_bytes_atomic(path, _encode(rows, columns, fmt))
        written[name] = path
    return written
