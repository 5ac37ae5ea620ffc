"""Two processes on one run dir: the second waits for the cell lock, then reuses what the first finished."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from qeval.runner import Cell, Context, run_cell
from qeval.store import RunStore

# A second, real process holds the cell's lock, finishes the cell (status ok) after a delay, then releases.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from filelock import FileLock
    from qeval.store import RunStore
    root = Path(sys.argv[1])
    with FileLock(str(root / "locks" / "int8_wo-hf.lock")):
        (root / "held").write_text("1")
        time.sleep(2.0)
        RunStore(root).write_status("int8_wo-hf", {"state": "ok", "by": "holder"})
""")


def test_second_process_waits_then_reuses(tmp_path: Path, caplog) -> None:
    root = tmp_path / "run"
    (root / "locks").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)])
    deadline = time.monotonic() + 60
    while not (root / "held").exists():
        assert holder.poll() is None and time.monotonic() < deadline, "holder process did not take the lock"
        time.sleep(0.05)
    store = RunStore(root)
    # Nothing beyond the store is touched when the cell is finished: a computation would fail on these Nones.
    ctx = Context(suite=None, store=store, model_dir=root, tokenizer=None, task_manager=None)  # type: ignore[arg-type]
    t0 = time.monotonic()
    with caplog.at_level("INFO", logger="qeval.runner"):
        run_cell(ctx, Cell("int8_wo", "hf", False))
    waited = time.monotonic() - t0
    assert holder.wait(timeout=30) == 0
    assert waited > 1.0, f"did not wait for the lock ({waited:.2f}s)"
    assert "another process is computing this cell" in caplog.text
    assert "finished in an earlier run, reused" in caplog.text
    assert store.read_status("int8_wo-hf") == {"state": "ok", "by": "holder"}  # not overwritten
