"""report.html: one self-contained page (inline CSS, inline SVG plots, no script, no network) for release sign-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markupsafe import Markup

from qeval.report import view
from qeval.report.templating import environment


def build_plots(results: dict[str, Any]) -> dict[str, Any]:
    """The page's plots as inline SVG markup: a forest plot per task, the KL plot, the Pareto plot.

    The SVG comes from matplotlib, which writes text as escaped XML; it is the only markup
    the template inserts unescaped.
    """
    from qeval.report import plots

    forest = {}
    for sec in view.task_sections(results):
        rows = [{"label": f"{x['d']['candidate']} on {x['d']['backend']}", "estimate": x["t"]["estimate"],
                 "ci": x["t"]["ci"], "verdict": x["t"]["verdict"], "n": x["t"]["n"]} for x in sec["rows"]]
        forest[sec["task"]] = Markup(plots.forest_plot(sec["task"], rows, margin=sec["margin"],
                                                       margin_kind=sec["margin_kind"], confidence=sec["confidence"]))
    kld_rows = view.kld_plot_rows(results)
    kld = Markup(plots.kld_plot(kld_rows, limit=results["gate"]["policy"].get("max_kld_mean"))) if kld_rows else None
    par = results["pareto"]
    sources = None
    if par.get("join"):  # a joined view: each axis says which run it comes from
        from qeval.report.join import axis_source

        sources = {side: axis_source(par["join"], side) for side in ("speed", "quality")}
    pareto = None if par["note"] else Markup(plots.pareto_plot(par["points"], speed_label=par["speed_label"],
                                                               sources=sources))
    return {"forest": forest, "kld": kld, "pareto": pareto}


def render_html(results: dict[str, Any], signoff: dict[str, Any] | None = None) -> str:
    """The page; `signoff` is qeval.signoff.view of the run's sign-off (None: an unsigned run, blank lines)."""
    return environment().get_template("report.html.j2").render(r=results, plots=build_plots(results),
                                                               signoff=signoff)


def write_html(results: dict[str, Any], path: Path, signoff: dict[str, Any] | None = None) -> None:
    from qeval.store import write_text_atomic

    write_text_atomic(path, render_html(results, signoff))
