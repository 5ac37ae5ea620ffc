"""`qeval report RUN --plots DIR`: comparison figures for a paper, as PNG and SVG files.

Drawn from results.json (the gate's numbers, not recomputed), with matplotlib's Agg canvas (no pyplot state,
no display; MPLCONFIGDIR is in the qeval cache, qeval.paths.confine_library_caches):

- forest.{png,svg}: per task, the paired delta (points) and its CI for every candidate x backend, the margin;
- kl_vs_accuracy.{png,svg}: mean KL(baseline || candidate) with its CI against the pooled accuracy delta;
- quality_vs_speed.{png,svg}: pooled accuracy delta against speed-up (only where latency was measured; with
  `--quality-from`, the joined view of qeval.report.join, each axis naming its run).

A figure whose data the run does not have is not drawn; `figures` says why, and the CLI prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qeval.errors import QevalError
from qeval.paths import under
from qeval.report import view
from qeval.report.plots import BACKEND_MARKERS, VERDICT_COLORS, _plain

FORMATS = ("png", "svg")


@dataclass
class Figures:
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure -> why it was not drawn


def _err(lo: float | None, hi: float | None, est: float) -> list[list[float]] | None:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [[max(est - lo, 0.0)], [max(hi - est, 0.0)]]


def _save(fig: Figure, out_dir: Path, stem: str, done: Figures) -> None:
    FigureCanvasAgg(fig)  # Agg: raster and vector output without any GUI backend
    for fmt in FORMATS:
        path = under(out_dir, out_dir / f"{stem}.{fmt}", what="plot")  # fixed names: no input picks them
        # metadata: no creation date in the SVG/PNG, so the same results give the same files
        fig.savefig(path, format=fmt, dpi=200, bbox_inches="tight",
                    metadata={"Date": None} if fmt == "svg" else {"Software": "qeval"})
        done.written.append(path)


def forest(results: dict[str, Any], out_dir: Path, done: Figures) -> None:
    sections = [s for s in view.task_sections(results) if s["rows"]]
    if not sections:
        done.skipped["forest"] = "no candidate has a task decision"
        return
    n_rows = sum(len(s["rows"]) for s in sections)
    fig = Figure(figsize=(7.0, 0.9 * len(sections) + 0.32 * n_rows), layout="constrained")
    axes = fig.subplots(len(sections), 1, squeeze=False)[:, 0]
    for ax, sec in zip(axes, sections):
        rows = sec["rows"]
        ys = list(range(len(rows)))[::-1]
        for y, x in zip(ys, rows):
            t = x["t"]
            lo, hi = t["ci"]
            ax.errorbar([t["estimate"]], [y], xerr=_err(lo, hi, t["estimate"]), fmt="o", capsize=3, ms=5,
                        color=VERDICT_COLORS.get(t["verdict"], "#57606a"))
        relative = sec["margin_kind"] == "relative"
        ax.axvline(1.0 if relative else 0.0, color="#8c959f", lw=0.8)
        if sec["margin"] is not None:
            ax.axvline(1.0 - sec["margin"] if relative else -sec["margin"], color="#cf222e", lw=1.0, ls="--")
        ax.set_yticks(ys, [_plain(f"{x['d']['candidate']} on {x['d']['backend']} (n={x['t']['n']})") for x in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(_plain(sec["task"]), loc="left", fontsize=9)
        ax.grid(axis="x", color="#eaeef2", lw=0.6)
    conf = sections[0]["confidence"]
    axes[-1].set_xlabel(("recovery (candidate / baseline)" if sections[0]["margin_kind"] == "relative"
                         else "paired delta vs baseline, points") + (f", {conf:.0%} CI" if conf else "")
                        + "; dashed: margin")
    _save(fig, out_dir, "forest", done)


def _kl_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    cells = {c["id"]: c for c in results["cells"]}
    out = []
    for d in results["decisions"]:
        heldout = ((cells.get(d["cell_id"]) or {}).get("divergence") or {}).get("heldout") or {}
        pooled = d.get("pooled") or {}
        if heldout.get("kld_mean") is None or pooled.get("estimate_pts") is None:
            continue
        out.append({"label": f"{d['candidate']} ({d['backend']})", "backend": d["backend"], "verdict": d["verdict"],
                    "kld": heldout["kld_mean"], "kld_ci": heldout.get("kld_mean_ci") or (None, None),
                    "delta": pooled["estimate_pts"], "delta_ci": pooled.get("ci_pts") or (None, None)})
    return out


def kl_vs_accuracy(results: dict[str, Any], out_dir: Path, done: Figures) -> None:
    points = _kl_points(results)
    if not points:
        done.skipped["kl_vs_accuracy"] = "no candidate has both a KL divergence and an accuracy delta"
        return
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for p in points:
        ax.errorbar([p["kld"]], [p["delta"]], xerr=_err(*p["kld_ci"], p["kld"]), yerr=_err(*p["delta_ci"], p["delta"]),
                    fmt=BACKEND_MARKERS.get(p["backend"], "o"), capsize=2, ms=6,
                    color=VERDICT_COLORS.get(p["verdict"], "#57606a"))
        ax.annotate(_plain(p["label"]), (p["kld"], p["delta"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if all(p["kld"] > 0 for p in points):
        ax.set_xscale("log")
    ax.axhline(0.0, color="#8c959f", lw=0.6)
    ax.set_xlabel("mean KL(baseline || candidate), nats/token (95% CI)")
    ax.set_ylabel("pooled paired accuracy delta, points (95% CI)")
    ax.grid(color="#eaeef2", lw=0.6)
    _save(fig, out_dir, "kl_vs_accuracy", done)


def quality_vs_speed(results: dict[str, Any], out_dir: Path, done: Figures) -> None:
    par = results.get("pareto") or {}
    points = [p for p in par.get("points") or [] if p.get("speedup") is not None and p.get("delta_pts") is not None
              and p.get("verdict") != "BASELINE"]
    if par.get("note") or not points:
        done.skipped["quality_vs_speed"] = par.get("note") or "no candidate has both latency and an accuracy delta"
        return
    sources = None
    if par.get("join"):  # a joined view (qeval.report.join): where each axis comes from
        from qeval.report.join import axis_source

        sources = {side: axis_source(par["join"], side) for side in ("speed", "quality")}
    fig = Figure(figsize=(6.5, 5.0) if sources else (5.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for p in points:
        ax.errorbar([p["speedup"]], [p["delta_pts"]], xerr=_err(*(p.get("speedup_ci") or (None, None)), p["speedup"]),
                    yerr=_err(*(p.get("delta_ci_pts") or (None, None)), p["delta_pts"]),
                    fmt=BACKEND_MARKERS.get(p["backend"], "o"), capsize=2, ms=6,
                    color=VERDICT_COLORS.get(p["verdict"], "#57606a"))
        ax.annotate(_plain(f"{p['candidate']} ({p['backend']})"), (p["speedup"], p["delta_pts"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(1.0, color="#8c959f", lw=0.6)
    ax.axhline(0.0, color="#8c959f", lw=0.6)
    ax.set_xlabel(_plain(f"speed-up: {par.get('speed_label', 'latency')}, ratio of medians (95% CI)"
                         + (f"\n{sources['speed']}" if sources else "")))
    ax.set_ylabel(_plain("pooled paired accuracy delta, points (95% CI)"
                         + (f"\n{sources['quality']}" if sources else "")))
    ax.grid(color="#eaeef2", lw=0.6)
    _save(fig, out_dir, "quality_vs_speed", done)


def write_figures(results: dict[str, Any], out_dir: Path) -> Figures:
    if out_dir.exists() and not out_dir.is_dir():
        raise QevalError(f"{out_dir} is a file, not a directory", field="--plots",
                         fix="pass a directory (it is created if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    done = Figures()
    for draw in (forest, kl_vs_accuracy, quality_vs_speed):
        draw(results, out_dir, done)
    return done
