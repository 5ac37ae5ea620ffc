"""The researcher's front door through `qeval.cli.main`: runs from flags, list / show, export, plots, bad flags.

One tiny real run is made from flags (1 candidate, 1 task, 4 documents, hf, no divergence or latency); export
and plots read a copy of the shared small real run (tests/conftest.py: small_run), which has divergence and
latency. The bad-flag tests load no model: each is refused before anything runs.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

from mc_items import FIXTURE_TASKS
from qeval import precisions
from qeval.cli import interrupted_message, main
from qeval.suite import Suite, load_suite, suite_identity

TASK = "bigbench_mc_sentence_ambiguity"
# The flag-built run: a task of data the tests make and a local calibration file, so it needs no BIG-bench archive.
RUN_TASK = "qeval_addition_mc"
FLAGS = ["--candidates", "int8_wo", "--tasks", RUN_TASK, "--limit", "4", "--backends", "hf", "--margin", "5",
         "--calibration", "local-text", "--set", f"task_dirs=[{FIXTURE_TASKS}]",
         "--set", "divergence.enabled=false", "--set", "latency.enabled=false", "--name", "flags"]
# The same suite as FLAGS, written by hand as a researcher would (defaults left out).
EQUIVALENT_YAML = f"""\
name: flags
candidates: [int8_wo]
backends: [hf]
task_dirs: [{FIXTURE_TASKS}]
tasks:
  - {{name: {RUN_TASK}, limit: 4}}
calibration: local-text
gate: {{margin: 5}}
divergence: {{enabled: false}}
latency: {{enabled: false}}
"""


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("qeval: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return err[err.index("qeval: error:"):]


def _interrupted_flag_run(reports: Path) -> tuple[Path, str]:
    """`qeval run FLAGS` in a subprocess, stopped by a real SIGINT (Ctrl-C) once its run directory exists (the
    manifest is written before the first cell): (the run directory, stderr)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "qeval.cli", "run", *FLAGS, "--out", str(reports)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    while proc.poll() is None and not list(reports.glob("*/manifest.json")):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    [run_dir] = list(reports.iterdir())
    return run_dir, err


@pytest.mark.slow
def test_a_flag_built_run_and_the_equivalent_yaml_are_one_suite(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Ctrl-C prints the exact command that continues the run; that command finishes it.
    run_dir, err = _interrupted_flag_run(tmp_path / "reports")
    assert f"continue with: qeval run --resume {run_dir}" in err and "Traceback" not in err
    rc = main(["run", "--resume", str(run_dir)])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert f"run directory: {run_dir}" in out.out
    # Progress: each cell's items done / planned with an ETA, after its look.
    assert "int8_wo-hf: 4/4 items (100%), ETA 0:00:00" in out.err and "bf16-hf: 4/4 items" in out.err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    written, _ = load_suite(run_dir / "suite.yaml")  # the effective suite, every field: it repeats the run
    assert written.candidates == ["int8_wo"] and [t.limit for t in written.tasks] == [4]
    assert written.divergence.enabled is False and written.gate.margin == 5
    assert manifest["suite"]["path"] == "command line"
    assert manifest["suite"]["overrides"] == {
        "name": "flags", "candidates": ["int8_wo"], "backends": ["hf"], "tasks": [RUN_TASK], "tasks.limit": 4,
        "gate.margin": 5.0, "calibration": "local-text", "task_dirs": [str(FIXTURE_TASKS)], "divergence.enabled": False,
        "latency.enabled": False}
    # The hand-written YAML is the same suite: same identity, and resuming the flag run with it is accepted
    # (the resume compares identities) and recomputes nothing: the same records, the same decisions.
    yaml_file = tmp_path / "flags.yaml"
    yaml_file.write_text(EQUIVALENT_YAML)
    from_yaml, _ = load_suite(yaml_file)
    assert from_yaml == written and suite_identity(from_yaml) == manifest["suite"]["sha256"]
    records = {p: p.read_bytes() for p in (run_dir / "cells").rglob("samples/*.jsonl")}
    results = json.loads((run_dir / "results.json").read_text())
    assert main(["run", str(yaml_file), "--resume", str(run_dir)]) == rc
    assert {p: p.read_bytes() for p in (run_dir / "cells").rglob("samples/*.jsonl")} == records
    again = json.loads((run_dir / "results.json").read_text())
    assert again["decisions"] == results["decisions"]
    capsys.readouterr()
    # A flag that changes the recorded suite is a conflicting override of a resume: refused, nothing touched.
    assert main(["run", "--resume", str(run_dir), "--limit", "5"]) == 2
    assert "the suite changed" in _one_error(capsys.readouterr().err)
    assert {p: p.read_bytes() for p in (run_dir / "cells").rglob("samples/*.jsonl")} == records


CAPPED_SUITE = f"""\
name: capped
candidates: [fp8]
vllm_online: [fp8]
tasks: [{{name: {TASK}, limit: 10}}]
calibration: bigbench-mixed
sampling: {{max_items_per_task: 20}}
"""


@pytest.mark.parametrize("argv, says", [
    (["--candidates", "fp9", "--tasks", TASK], ["--candidates", "unknown precision 'fp9'", "did you mean 'fp8'"]),
    (["--candidates", "fp8,,int8_wo", "--tasks", TASK], ["--candidates", "empty item (position 2)"]),
    (["--candidates", "[fp8]", "--tasks", TASK], ["--candidates", "not a plain list"]),
    (["--candidates", "fp8", "--tasks", TASK, "--limit", "0"], ["--limit", "at least 1"]),
    (["--candidates", "fp8", "--tasks", TASK, "--backends", "hf,vlm"], ["unknown backend 'vlm'", "'vllm'"]),
    (["--candidates", "fp8", "--tasks", TASK, "--margin", "1", "--set", "gate.margin=2"],
     ["conflicts with --margin", "gate.margin"]),
    (["--candidates", "bf16", "--tasks", TASK], ["--candidates", "baseline 'bf16' is also listed"]),
    (["--candidates", "fp8"], ["needs --tasks"]),
    (["--candidates", "fp8", "--tasks", TASK, "--set", "gate.nope=1"], ["--set gate.nope", "remove it"]),
    (["SUITE", "--limit", "50"], ["--limit 50 conflicts with", "max_items_per_task 20"]),
    (["SUITE", "--candidates", "int8_wo"], ["vllm_online", "after the command-line overrides: --candidates"]),
])
def test_bad_flags_get_one_message_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], says: list[str]) -> None:
    suite = tmp_path / "capped.yaml"
    suite.write_text(CAPPED_SUITE)
    argv = [str(suite) if a == "SUITE" else a for a in argv]
    assert main(["run", *argv, "--out", str(tmp_path / "reports")]) == 2
    message = _one_error(capsys.readouterr().err)
    assert all(s in message for s in says), message
    assert "fix:" in message and not (tmp_path / "reports").exists()  # refused before anything was written


@pytest.mark.bigbench
def test_list_says_what_runs_here(capsys: pytest.CaptureFixture[str]) -> None:
    arch = precisions.current_arch()
    assert main(["list", "precisions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"({arch})" in lines[0] and len(lines) == 1 + len(precisions.names())
    for name, line in zip(precisions.names(), lines[1:]):
        assert line.split()[0] == name
        for engine in ("hf", "vllm", "trtllm"):
            assert f"{engine} {precisions.kernel_kind(name, engine, arch)}" in line
    assert main(["list", "backends"]) == 0
    backends = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    installed = importlib.util.find_spec("vllm") is not None
    assert backends["vllm"].split()[1] == ("installed" if installed else "not")
    assert main(["list", "tasks", "--grep", "PHYSICS"]) == 0
    tasks = capsys.readouterr().out.splitlines()[1:]
    assert tasks and all("physics" in t for t in tasks) and any(t.startswith("bigbench_mc_physics ") for t in tasks)
    assert main(["list", "calibration-sets"]) == 0
    assert "bigbench-mixed" in capsys.readouterr().out
    assert main(["list", "tasks", "--grep", "no-such-task-anywhere"]) == 2
    _one_error(capsys.readouterr().err)


def test_show_precision_gives_the_whole_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "precision", "fp8"]) == 0
    out = capsys.readouterr().out
    p = precisions.get("fp8")
    assert f"config: {p.modelopt_cfg}" in out and f"QuantAlgo: {p.trtllm_quant_algo}" in out
    assert "vllm.LLM(quantization='modelopt')" in out and '"quantizer_name": "*weight_quantizer"' in out
    assert main(["show", "precision", "fp9"]) == 2
    assert "did you mean 'fp8'" in _one_error(capsys.readouterr().err)


@pytest.mark.slow
def test_export_tables_and_plots_of_a_real_run(small_run_copy: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    results = json.loads((small_run_copy / "results.json").read_text())
    for fmt in ("csv", "jsonl", "parquet"):
        assert main(["export", str(small_run_copy), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    with open(tmp_path / "csv" / "decisions.csv", newline="") as f:
        decisions = list(csv.DictReader(f))
    gate = [(d, t) for d in results["decisions"] for t in d["tasks"]]
    assert [(r["cell"], r["task"], r["task_verdict"]) for r in decisions] == \
        [(d["cell_id"], t["task"], t["verdict"]) for d, t in gate]
    assert [float(r["delta_pts"]) for r in decisions] == [t["delta_pts"] for _, t in gate]
    paired = [json.loads(line) for line in (tmp_path / "jsonl" / "paired.jsonl").read_text().splitlines()]
    for d, t in gate:  # every paired document the gate used, with its flips counted as the gate counts them
        rows = [r for r in paired if (r["cell"], r["task"]) == (d["cell_id"], t["task"])]
        assert len(rows) == t["n"] and all(r["same_prompt"] for r in rows)
        assert sum(r["flip_direction"] == "lost" for r in rows) == t["n10"]
        assert sum(r["flip_direction"] == "gained" for r in rows) == t["n01"]
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "parquet" / "paired.parquet").to_pylist() == paired
    capsys.readouterr()
    assert main(["report", str(small_run_copy), "--plots", str(tmp_path / "plots")]) in (0, 1)
    out = capsys.readouterr().out
    drawn = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"forest.png", "forest.svg", "kl_vs_accuracy.png", "kl_vs_accuracy.svg"} <= drawn
    if results["pareto"]["note"]:  # no speed axis: said, not drawn
        assert "quality_vs_speed not drawn" in out and "quality_vs_speed.png" not in drawn
    else:
        assert {"quality_vs_speed.png", "quality_vs_speed.svg"} <= drawn
    assert (tmp_path / "plots" / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert RUN_TASK in (tmp_path / "plots" / "forest.svg").read_text()


def test_list_tasks_without_the_archive_says_why_and_what_still_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import bigbench_unavailable

    if bigbench_unavailable() is None:
        pytest.skip("the BIG-bench archive is at hand here: test_list_says_what_runs_here lists the pack")
    assert main(["list", "tasks"]) == 0  # a listing, not an error: the rest of `qeval list` still answers
    out = capsys.readouterr().out
    assert "offline BIG-bench pack: not available here: the package registry does not offer bigbench==1.0.0" in out
    assert "fix: copy bigbench-1.0.0.tar.gz (sha256 1bb398a5" in out and "task_dirs" in out


def test_parquet_without_pyarrow_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from qeval import export

    real = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda n, *a: None if n == "pyarrow" else real(n, *a))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    assert main(["export", str(tmp_path / "run"), "--format", "parquet"]) == 2
    assert "pip install pyarrow" in _one_error(capsys.readouterr().err)


def test_an_interrupted_run_prints_its_resume_command(tmp_path: Path) -> None:
    run_dir = tmp_path / "reports" / "my run-1"
    run_dir.mkdir(parents=True)
    assert "nothing to resume" in interrupted_message(run_dir)
    (run_dir / "manifest.json").write_text("{}")
    assert f"qeval run --resume '{run_dir}'" in interrupted_message(run_dir)


def test_the_written_suite_round_trips() -> None:
    from qeval import suite_flags

    suite, over = suite_flags.build(None, suite_flags.SuiteFlags(candidates="fp8,int8_wo", tasks=TASK, limit=3),
                                    base_file=None)
    import yaml

    again = Suite.model_validate(yaml.safe_load(suite_flags.suite_yaml(suite, over, None)))
    assert again == suite and suite_identity(again) == suite_identity(suite)



@pytest.mark.bigbench
def test_plan_takes_the_same_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """`qeval plan` before a flag-built run: the n it needs for the margin, from the same flags (no model runs)."""
    assert main(["plan", "--candidates", "fp8,int8_wo", "--tasks", "bigbench_mc_physics", "--limit", "50",
                 "--margin", "5"]) == 0
    out = capsys.readouterr().out
    assert "2 planned cells" in out and "| bigbench_mc_physics | 5 pts |" in out
    assert "items per cell: 50 as the suite stands" in out
    assert main(["plan", "--candidates", "fp8", "--tasks", "bigbench_mc_physics", "--limit", "0"]) == 2
    assert "--limit" in _one_error(capsys.readouterr().err)


@pytest.mark.bigbench
def test_plan_of_the_smoke_suite_is_stats_required_n_times_the_designs_inflation(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`qeval plan` answers with the fixed-n plan of the test the gate runs (the score test on 0/1 scores) at the
    cell's level and per-task power, times the group-sequential design's inflation factor."""
    from pathlib import Path

    import yaml

    from qeval import stats

    path = Path(__file__).resolve().parents[1] / "qeval" / "suites" / "smoke.yaml"
    spec = yaml.safe_load(path.read_text())
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    cells, tasks = len(spec["candidates"]) * len(spec["backends"]), len(spec["tasks"])
    level, power = spec["gate"]["alpha"] / cells, 0.8 ** (1 / tasks)
    sampling = spec["sampling"]
    r = stats.inflation_factor(sampling["looks"], level, power, sampling["spending"])
    n = math.ceil(stats.required_n(spec["gate"]["margin"] / 100, flip_rate=0.1, alpha=level, power=power,
                                   method="score").n * r)
    for task in spec["tasks"]:
        assert f"| {task['name']} | 5 pts | 10.0% (assumed 10%) | {n:,} |" in out, out
    assert f"times {r:.3f}" in out and f"{sampling['spending']}, {sampling['looks']} looks" in out
