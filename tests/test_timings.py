"""Time per step charges each look to the cell that evaluated it: a baseline look evaluated on demand
(adaptive sampling) is the baseline's time, and the candidate that waited for it says so."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from qeval.looks import _charge_baseline
from qeval.store import RunStore
from qeval.timings import summary_lines


def test_baseline_looks_on_demand_are_charged_to_the_baseline(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write_status("bf16-hf", {"state": "ok", "seconds": 80.0, "task_seconds": {"a": 40.0, "b": 30.0},
                                   "step_seconds": {"divergence": 10.0}})
    store.write_status("fp8-hf", {"state": "ok", "seconds": 200.0, "task_seconds": {"a": 60.0, "b": 50.0},
                                  "step_seconds": {"baseline looks": 55.5, "divergence": 8.0}})
    ctx = SimpleNamespace(store=store)
    _charge_baseline(ctx, "bf16-hf", {"a": 30.25, "b": 25.25})
    status = store.read_status("bf16-hf")
    assert status["task_seconds"] == {"a": 70.25, "b": 55.25}
    assert status["seconds"] == 135.5
    lines = summary_lines(tmp_path)
    assert "bf16-hf: 135.5 s = divergence 10.0 s, a 70.2 s, b 55.2 s" in lines
    assert any(line.startswith("fp8-hf: 200.0 s = baseline looks 55.5 s") for line in lines)


def test_a_baseline_still_running_is_not_charged_twice(tmp_path: Path) -> None:
    """Before the baseline's own status is written its looks are still in its in-memory timings."""
    store = RunStore(tmp_path)
    _charge_baseline(SimpleNamespace(store=store), "bf16-hf", {"a": 3.0})
    assert store.read_status("bf16-hf") is None
