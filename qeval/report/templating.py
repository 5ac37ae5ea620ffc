"""One jinja2 environment for every report.

Autoescape is on for the HTML and XML templates (file names *.html.j2 / *.xml.j2:
select_autoescape matches on the name's ending, so "html" alone would leave
"report.html.j2" unescaped). Model outputs, task names and crash causes are
untrusted text. The Markdown template escapes through the `md` filter instead:
GitHub renders inline HTML in comments.
"""

from __future__ import annotations

import html
import math
from functools import lru_cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from qeval.gate.messages import fmt_p as _gate_fmt_p
from qeval.report import results as labels, view

DASH = "–"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt_num(value: object, digits: int = 2) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else DASH
    return str(value)


def fmt_ci(ci: object, digits: int = 2, scale: float = 1.0) -> str:
    if not ci:
        return DASH
    lo, hi = ci  # type: ignore[misc]
    if not (_finite(lo) or _finite(hi)):
        return DASH
    # One end missing: too few samples to bound that side (e.g. p99 of 64 requests has no upper bound).
    return "[" + ", ".join(fmt_num(v * scale, digits) if _finite(v) else DASH for v in (lo, hi)) + "]"


def fmt_signed(value: object, digits: int = 2) -> str:
    return f"{value:+.{digits}f}" if _finite(value) else DASH


def fmt_signed_ci(ci: object, digits: int = 2, scale: float = 1.0) -> str:
    if not ci:
        return DASH
    lo, hi = ci  # type: ignore[misc]
    if not (_finite(lo) and _finite(hi)):
        return DASH
    return f"[{fmt_signed(lo * scale, digits)}, {fmt_signed(hi * scale, digits)}]"


def fmt_pct(value: object, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%" if _finite(value) else DASH


def fmt_pct_ci(ci: object, digits: int = 1) -> str:
    if not ci:
        return DASH
    lo, hi = ci  # type: ignore[misc]
    return f"[{fmt_pct(lo, digits)}, {fmt_pct(hi, digits)}]" if _finite(lo) and _finite(hi) else DASH


def fmt_p(value: object) -> str:
    """p-values as the gate's messages print them (2 significant digits, scientific below 0.001)."""
    return _gate_fmt_p(value) if _finite(value) else DASH  # type: ignore[arg-type]


def fmt_sig(value: object, digits: int = 3) -> str:
    """A positive quantity spanning decades (KL divergence): significant digits."""
    return f"{value:.{digits}g}" if _finite(value) else DASH


def fmt_times(value: object, digits: int = 2) -> str:
    return f"{value:.{digits}f}×" if _finite(value) else DASH


def fmt_int(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else DASH


def verdict_class(verdict: object) -> str:
    """CSS class of a verdict or rule outcome (SHIP/PASS/True ok, BLOCK/FAIL/False bad, open warn)."""
    if verdict in ("SHIP", "PASS", True):
        return "ok"
    if verdict in ("BLOCK", "FAIL", False):
        return "bad"
    if verdict in ("NOT RUN", "BASELINE"):
        return "na"
    return "warn"


def rule_word(passed: object) -> str:
    return {True: "PASS", False: "FAIL"}.get(passed, "OPEN")  # type: ignore[arg-type]


def md_escape(value: object) -> str:
    """Text for a Markdown table cell: HTML-escaped (GitHub renders inline HTML), pipes and newlines neutralised."""
    text = html.escape("" if value is None else str(value), quote=False)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ").replace("`", "'")


@lru_cache(maxsize=None)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("qeval.report", "templates"),
                      autoescape=select_autoescape(["html", "xml", "html.j2", "xml.j2"], default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=fmt_num, ci=fmt_ci, signed=fmt_signed, signed_ci=fmt_signed_ci, pct=fmt_pct,
                       pct_ci=fmt_pct_ci, p=fmt_p, sig=fmt_sig, times=fmt_times, thousands=fmt_int, vclass=verdict_class,
                       rule_word=rule_word, md=md_escape)
    env.globals.update(view=view, labels=labels)
    return env
