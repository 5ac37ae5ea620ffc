"""Reports of a run: the gate's decisions with their evidence.

`write_reports(run_dir)` gates a run directory and writes results.json (every
number, versioned schema), report.md (for a pull request), junit.xml (one
test case per gate rule) and report.html (for sign-off) into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qeval.report.results import build_results, gate_run


REPORT_FILES = {"json": "results.json", "md": "report.md", "junit": "junit.xml", "html": "report.html"}


@dataclass(frozen=True)
class ReportOutcome:
    summary: str
    any_blocked: bool
    paths: dict[str, Path]


def write_reports(run_dir: Path) -> ReportOutcome:
    from qeval.report.html import write_html
    from qeval.report.junit import write_junit
    from qeval.report.markdown import render_markdown
    from qeval.paths import under
    from qeval.store import write_json_atomic, write_text_atomic

    results = build_results(run_dir)
    # Fixed names, checked to stay in the run directory; every file is written whole (temp + rename), so a
    # reader, a crash or a second writer (pytest-xdist) never sees half a report.
    paths = {kind: under(run_dir, run_dir / name, what="report")
             for kind, name in REPORT_FILES.items()}
    write_json_atomic(paths["json"], results)
    write_text_atomic(paths["md"], render_markdown(results))
    write_junit(results, paths["junit"])
    write_html(results, paths["html"])
    lines = [f"{d['candidate']:>14} on {d['backend']:<8} {d['verdict']:<13} {d['summary']}"
             for d in results["decisions"]]
    summary = "\n".join(["qeval gate:", *lines, f"report: {paths['html']}"])
    blocked = any(d["verdict"] == "BLOCK" for d in results["decisions"])
    return ReportOutcome(summary=summary, any_blocked=blocked, paths=paths)


__all__ = ["REPORT_FILES", "ReportOutcome", "build_results", "gate_run", "write_reports"]
