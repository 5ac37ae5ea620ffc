"""Reports of a run: the gate's decisions with their evidence.

`write_reports(run_dir)` gates a run directory and writes results.json (every
number, versioned schema), report.md (for a pull request), junit.xml (one
test case per gate rule) and report.html (for sign-off) into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qeval.report.results import build_results, gate_run


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


def write_reports(run_dir: Path) -> ReportOutcome:
    from qeval.report.html import write_html
    from qeval.report.junit import write_junit
    from qeval.report.markdown import render_markdown
    from qeval.store import write_json_atomic

    results = build_results(run_dir)
    paths = {"json": run_dir / "results.json", "md": run_dir / "report.md",
             "junit": run_dir / "junit.xml", "html": run_dir / "report.html"}
    write_json_atomic(paths["json"], results)
    markdown = render_markdown(results)
    paths["md"].write_text(markdown, encoding="utf-8")
    write_junit(results, paths["junit"])
    write_html(results, paths["html"])
    lines = [f"{d['candidate']:>14} on {d['backend']:<8} {d['verdict']:<13} {d['summary']}"
             for d in results["decisions"]]
    not_run = [f"{c['id']:>22} NOT RUN       {c['reason']}" for c in results["not_run"]]
    summary = "\n".join(["qeval gate:", *lines, *(["not run here:", *not_run] if not_run else []),
                         f"report: {paths['html']}"])
    blocked = any(d["verdict"] == "BLOCK" for d in results["decisions"])
    return ReportOutcome(summary=summary, any_blocked=blocked, paths=paths,
                         not_run=tuple(c["id"] for c in results["not_run"]))


__all__ = ["ReportOutcome", "build_results", "gate_run", "write_reports"]
