"""Reports of a run: the gate's decisions with their evidence.

`write_reports(run_dir)` gates a run directory and writes results.json (every
number, versioned schema), report.md (for a pull request), junit.xml (one
test case per gate rule) and report.html (for sign-off) into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qeval.report.results import build_results, gate_run


REPORT_FILES = {"json": "results.json", "md": "report.md", "junit": "junit.xml", "html": "report.html"}


@dataclass(frozen=True)
class ReportOutcome:
    """What `qeval run` / `qeval report` print and exit with.

    Attributes:
        not_run: cell ids an engine could not run here (NOT RUN, with their reasons in `summary`).
    """

    summary: str
    any_blocked: bool
    paths: dict[str, Path]
    not_run: tuple[str, ...] = ()


def same_results(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two results documents say the same, apart from when they were generated and how the run dir was typed."""
    def core(doc: dict[str, Any]) -> Any:
        doc = json.loads(json.dumps(doc, sort_keys=True, default=str))
        doc.pop("generated", None)
        doc.get("run", {}).pop("dir", None)
        return doc
    return core(a) == core(b)


def write_reports(run_dir: Path, quality_from: Path | None = None) -> ReportOutcome:
    """Gate `run_dir` and write its reports into it.

    quality_from: a run on real weights whose quality evidence the quality-versus-speed view joins with this
    run's speed-ups (qeval.report.join). The join changes no verdict and neither results.json nor junit.xml
    (the gate's record, which a sign-off binds): it goes to quality-join.json, and report.html and report.md
    show it in place of this run's own quality-versus-speed view. Nothing is written into `quality_from`.
    """
    from qeval import signoff
    from qeval.paths import under
    from qeval.report.html import write_html
    from qeval.report.junit import write_junit
    from qeval.report.markdown import render_markdown
    from qeval.store import write_json_atomic, write_text_atomic

    joined = None
    if quality_from is not None:
        from qeval.report.join import join_runs

        results, joined = join_runs(run_dir, quality_from)
    else:
        results = build_results(run_dir)
        from qeval.report.join import JOIN_FILE

        stale = under(run_dir, run_dir / JOIN_FILE, what="report")
        if stale.is_file():  # a join the pages no longer show must not lie beside them
            stale.unlink()
    # Fixed names, checked to stay in the run directory; every file is written whole (temp + rename), so a
    # reader, a crash or a second writer (pytest-xdist) never sees half a report.
    paths = {kind: under(run_dir, run_dir / name, what="report")
             for kind, name in REPORT_FILES.items()}
    signed = signoff.load(run_dir)
    previous = _read(paths["json"]) if signed else None
    if previous is not None and same_results(previous, results):
        results = previous  # a signed run's results.json is kept byte for byte while the records say the same
    else:
        write_json_atomic(paths["json"], results)
    shown = signoff.view(run_dir, signed) if signed else None
    write_junit(results, paths["junit"])
    if joined is not None:
        from qeval.report.join import JOIN_FILE

        paths["join"] = under(run_dir, run_dir / JOIN_FILE, what="report")
        write_json_atomic(paths["join"], joined)
        results = {**results, "pareto": joined}  # what the pages show; results.json keeps the run's own view
    write_text_atomic(paths["md"], render_markdown(results, signoff=shown))
    write_html(results, paths["html"], signoff=shown)
    lines = [f"{d['candidate']:>14} on {d['backend']:<8} {d['verdict']:<13} {d['summary']}"
             for d in results["decisions"]]
    not_run = [f"{c['id']:>22} NOT RUN       {c['reason']}" for c in results["not_run"]]
    if shown:
        lines.append(f"sign-off: {shown['status']}")
    if joined is not None:
        j = joined["join"]
        n = sum(p["verdict"] != "BASELINE" for p in joined["points"])
        lines.append(f"quality from {j['quality']['run_id']} ({j['quality']['model']}, real weights): {n} joined, "
                     f"{len(j['unmatched'])} listed as not joined; {j['hardware_note']}; the verdicts above are this "
                     f"run's own (join: {paths['join']})")
    summary = "\n".join(["qeval gate:", *lines, *(["not run here:", *not_run] if not_run else []),
                         f"report: {paths['html']}"])
    blocked = any(d["verdict"] == "BLOCK" for d in results["decisions"])
    return ReportOutcome(summary=summary, any_blocked=blocked, paths=paths,
                         not_run=tuple(c["id"] for c in results["not_run"]))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["REPORT_FILES", "ReportOutcome", "same_results", "build_results", "gate_run", "write_reports"]
