"""Plots of the report as inline SVG (matplotlib's SVG backend, no pyplot state, no network).

Every plot draws an estimate with its interval and says n. Text stays text
(svg.fonttype "none"): smaller files, selectable labels, and matplotlib escapes
it as XML, so a task or model name cannot inject markup. Names pass through
`_plain`, so a "$" in a name prints as itself rather than starting mathtext.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from typing import Any, Iterator

import matplotlib

matplotlib.use("svg", force=False)  # headless; never a GUI backend

from matplotlib.figure import Figure  # noqa: E402

VERDICT_COLORS = {"PASS": "#1a7f37", "SHIP": "#1a7f37", "FAIL": "#cf222e", "BLOCK": "#cf222e",
                  "INCONCLUSIVE": "#9a6700", "CONTINUE": "#9a6700", "BASELINE": "#57606a"}
BACKEND_MARKERS = {"hf": "s", "vllm": "o", "trtllm": "D", "openai": "^"}
_RC = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
       "axes.spines.top": False, "axes.spines.right": False, "font.family": "sans-serif",
       "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"]}


def _plain(text: str) -> str:
    """A name as literal plot text: "$" would start mathtext."""
    return text.replace("$", r"\$")


def _svg(fig: Figure, key: str, title: str) -> str:
    """The figure as an <svg> element for inlining: no XML prolog, natural size, shrinks to its container."""
    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": key}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # Several figures share one page: matplotlib's element ids (figure_1, axes_1, clip paths) repeat
    # across figures, so every id and every in-page reference to one gets this figure's prefix.
    prefix = "f" + hashlib.sha1(key.encode()).hexdigest()[:8] + "-"
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', text)
    text = re.sub(r'(url\(#|href="#)([^)"]+)', lambda m: f"{m[1]}{prefix}{m[2]}", text)
    # Root element: labelled for screen readers; CSS max-width keeps it inside the page (viewBox keeps the aspect).
    head_end = text.index(">")
    head = text[:head_end]
    title_xml = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    head += f' class="plot" role="img" aria-label="{title_xml}"'
    return head + text[head_end:]


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def _err(lo: float | None, hi: float | None, est: float) -> tuple[list[float], list[float]] | None:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [max(est - lo, 0.0)], [max(hi - est, 0.0)]


def forest_plot(task: str, rows: list[dict[str, Any]], *, margin: float | None, margin_kind: str,
                confidence: float | None) -> str:
    """One row per candidate x backend: the paired delta (points) and its interval, the margin line.

    Args:
        task: task name (title).
        rows: dicts with label, estimate, ci (lo, hi), verdict, n.
        margin: the non-inferiority margin (points, or fraction for relative margins).
        margin_kind: "absolute" or "relative".
        confidence: coverage of the intervals (1 - 2 alpha), for the axis label.
    """
    with matplotlib.rc_context(_RC):
        fig = _figure(9.5, 0.8 + 0.26 * len(rows))
        ax = fig.add_subplot()
        ys = list(range(len(rows)))[::-1]
        for y, r in zip(ys, rows):
            color = VERDICT_COLORS.get(r["verdict"], "#57606a")
            lo, hi = r["ci"]
            ax.errorbar([r["estimate"]], [y], xerr=_err(lo, hi, r["estimate"]), fmt="o", color=color, ms=5,
                        capsize=3, lw=1.6)
        relative = margin_kind == "relative"
        ref = 1.0 if relative else 0.0
        ax.axvline(ref, color="#8c959f", lw=0.8)
        if margin is not None:
            line = 1.0 - margin if relative else -margin
            ax.axvline(line, color="#cf222e", lw=1.0, ls="--")
            ax.annotate(f"margin {line:+.2f}" if not relative else f"required {line:.2%}", (line, 1.0),
                        xycoords=("data", "axes fraction"), textcoords="offset points", xytext=(3, -2),
                        color="#cf222e", fontsize=8, va="top")
        ax.set_yticks(ys, [_plain(f"{r['label']}  (n={r['n']:,})") for r in rows])
        conf = f"{confidence:.0%} CI" if confidence else "CI"
        ax.set_xlabel(("recovery (candidate / baseline)" if relative else "paired delta, points") + f" — {conf}")
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.grid(axis="x", color="#eaeef2", lw=0.6)
    return _svg(fig, f"forest-{task}", f"Forest plot of the paired delta per candidate for {task}")


def kld_plot(rows: list[dict[str, Any]], *, limit: float | None) -> str:
    """Per cell: mean KL(baseline || candidate) with its CI, and the p90 / p99 / p99.9 of per-token KL (log axis)."""
    with matplotlib.rc_context(_RC):
        fig = _figure(9.5, 1.0 + 0.26 * len(rows))
        ax = fig.add_subplot()
        ys = list(range(len(rows)))[::-1]
        for y, r in zip(ys, rows):
            lo, hi = r.get("ci") or (None, None)
            ax.errorbar([r["mean"]], [y], xerr=_err(lo, hi, r["mean"]), fmt="o", color="#0969da", ms=5, capsize=3,
                        label="mean (95% CI)" if y == ys[0] else None)
            for key, marker, name in (("p90", "|", "p90"), ("p99", "x", "p99"), ("p999", "^", "p99.9")):
                if r.get(key) is not None:
                    ax.plot([r[key]], [y], marker=marker, color="#57606a", ms=6, ls="none",
                            label=name if y == ys[0] else None)
        if limit is not None:
            ax.axvline(limit, color="#cf222e", lw=1.0, ls="--")
            ax.annotate(f"max mean {limit:g}", (limit, 1.0), xycoords=("data", "axes fraction"),
                        textcoords="offset points", xytext=(3, -2), color="#cf222e", fontsize=8, va="top")
        ax.set_xscale("log")
        ax.set_yticks(ys, [_plain(f"{r['label']}  (n={r['n_tokens']:,} tokens)") for r in rows])
        ax.set_xlabel("KL(baseline || candidate), nats per token (log scale)")
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.grid(axis="x", color="#eaeef2", lw=0.6, which="both")
        fig.legend(loc="outside upper right", fontsize=8, frameon=False, ncols=4)
    return _svg(fig, "kld", "KL divergence per candidate: mean with CI and tail percentiles")


def _points(points: list[dict[str, Any]], y: str) -> Iterator[tuple[dict[str, Any], float]]:
    for p in points:
        v = p.get(y)
        if v is not None and math.isfinite(v) and p.get("speedup") is not None:
            yield p, v


def pareto_plot(points: list[dict[str, Any]], *, speed_label: str, sources: dict[str, str] | None = None) -> str:
    """Quality vs speed-up: pooled delta (left) and mean KL (right, where measured); the front is drawn.

    sources: for a joined view (qeval.report.join), where each axis comes from ({"speed": ..., "quality": ...}),
    printed under its label.
    """
    src_x = f"\n{sources['speed']}" if sources else ""
    src_y = f"\n{sources['quality']}" if sources else ""
    has_kld = any(p.get("kld") is not None and p["verdict"] != "BASELINE" for p in points)
    panels = [("delta_pts", "delta_ci_pts", "front_delta", "pooled paired delta, points (95% CI; higher is better)")]
    if has_kld:
        panels.append(("kld", "kld_ci", "front_kld", "mean KL(baseline || candidate), nats/token (lower is better)"))
    with matplotlib.rc_context(_RC):
        fig = _figure((6.0 if len(panels) == 1 else 12.0) + (1.5 if sources else 0.0), 4.2 + (0.4 if sources else 0.0))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (y, yci, front_key, ylabel) in zip(axes, panels):
            for p, v in _points(points, y):
                color = VERDICT_COLORS.get(p["verdict"], "#57606a")
                xe = _err(*(p.get("speedup_ci") or (None, None)), p["speedup"])
                ye = _err(*(p.get(yci) or (None, None)), v)
                ax.errorbar([p["speedup"]], [v], xerr=xe, yerr=ye, fmt=BACKEND_MARKERS.get(p["backend"], "o"),
                            color=color, ms=6, capsize=2, lw=1.0, mfc=color if p.get(front_key) else "white")
                ax.annotate(_plain(f"{p['candidate']} ({p['backend']})"), (p["speedup"], v),
                            textcoords="offset points", xytext=(6, 4), fontsize=8, color="#24292f")
            for be in sorted({p["backend"] for p in points}):
                front = sorted(((p["speedup"], v) for p, v in _points(points, y)
                                if p["backend"] == be and p.get(front_key)))
                if len(front) > 1:
                    ax.plot(*zip(*front), color="#8c959f", lw=0.8, ls=":", zorder=0)
            ax.axvline(1.0, color="#8c959f", lw=0.6)
            ax.axhline(0.0, color="#8c959f", lw=0.6)
            ax.set_xlabel(_plain(f"speed-up: {speed_label}, ratio of medians (95% CI){src_x}"), fontsize=8)
            ax.set_ylabel(_plain(ylabel + src_y), fontsize=8)
            ax.grid(color="#eaeef2", lw=0.6)
    return _svg(fig, "pareto", "Quality versus speed-up per candidate, with the Pareto front")
