"""report.md: the decisions and key numbers, for a pull-request comment."""

from __future__ import annotations

from typing import Any

from qeval.report.templating import environment


def render_markdown(results: dict[str, Any], signoff: dict[str, Any] | None = None) -> str:
    """`signoff`: qeval.signoff.view of the run's sign-off, or None."""
    return environment().get_template("report.md.j2").render(r=results, signoff=signoff)
