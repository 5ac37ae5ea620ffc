"""Reliability of a real run: a failing cell is isolated, a corrupted cache is rebuilt, a killed run resumes.

(Bad inputs are in tests/test_bad_inputs.py.)
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
from mc_items import FIXTURE_TASKS

from qeval.cli import main

# -- (b) an engine failure in one cell ---------------------------------------------------------------

PLANTED = "fp_e9m9"
FAILING_SUITE = f"""\
name: planted-failure
model: {{source: smollm2-135m-instruct}}
baseline: bf16
candidates: [{PLANTED}, int8_wo]  # the failing cell runs first: the cells after it still run
backends: [hf]
task_dirs: [{FIXTURE_TASKS}]
tasks:
  - {{name: qeval_addition_mc, limit: 12}}
calibration: local-text
divergence: {{enabled: false}}
latency: {{enabled: false}}
gate: {{margin: 5.0}}
"""


@pytest.fixture
def planted_precision(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registry entry whose recipe ModelOpt itself refuses while quantizing: FP8's config at E9M9
    (ModelOpt supports E4M3/E5M2/E2M1 ... only). The failure is real, inside the engine build of one cell;
    the entry is removed again after the test."""
    import modelopt.torch.quantization as mtq

    from qeval import precisions

    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    for entry in cfg["quant_cfg"]:
        if entry.get("quantizer_name") in ("*weight_quantizer", "*input_quantizer") and "cfg" in entry:
            entry["cfg"]["num_bits"] = (9, 9)
    monkeypatch.setattr(mtq, "QEVAL_TEST_E9M9_CFG", cfg, raising=False)
    base = precisions.get("fp8")
    monkeypatch.setitem(precisions.PRECISIONS, PLANTED, precisions.Precision(
        name=PLANTED, description="planted failure: a float format ModelOpt does not support",
        modelopt_cfg="QEVAL_TEST_E9M9_CFG", trtllm_quant_algo=base.trtllm_quant_algo, vllm=base.vllm))
    return PLANTED


@pytest.mark.slow
def test_engine_failure_in_one_cell_leaves_the_others_intact(tmp_path: Path, planted_precision: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from qeval.store import RunStore

    suite = tmp_path / "suite.yaml"
    suite.write_text(FAILING_SUITE)
    rc = main(["run", str(suite), "--reports-dir", str(tmp_path / "reports")])
    out = capsys.readouterr()
    assert rc == 1, out.err  # the documented exit code: a candidate is BLOCKed / a cell ended in ERROR
    [run_dir] = list((tmp_path / "reports").iterdir())
    store = RunStore(run_dir)

    # The failed cell: status error with its cause (ModelOpt's own refusal), no samples.
    failed = store.read_status(f"{PLANTED}-hf")
    assert failed["state"] == "error", failed
    assert "ValidationError" in failed["cause"] and "FPx" in failed["cause"], failed["cause"]
    assert "Traceback" in failed["traceback"]
    assert store.tasks(f"{PLANTED}-hf") == []

    # The other cells ran to the end: every planned sample, in the design's order, each with its score.
    for cell in ("bf16-hf", "int8_wo-hf"):
        assert store.read_status(cell)["state"] == "ok", cell
        samples = store.read_samples(cell, "qeval_addition_mc")
        assert [s["doc_id"] for s in samples] == planned_docs(run_dir, "qeval_addition_mc"), cell
        assert all(s["score"] in (0.0, 1.0) and len(s["loglikelihoods"]) == len(s["choices"]) for s in samples)

    # The gate: the failed candidate is BLOCKed and says why; the run's summary says so too.
    results = json.loads((run_dir / "results.json").read_text())
    decisions = {(d["candidate"], d["backend"]): d for d in results["decisions"]}
    planted = decisions[(PLANTED, "hf")]
    assert planted["verdict"] == "BLOCK"
    assert "FPx" in json.dumps(planted), planted
    assert decisions[("int8_wo", "hf")]["verdict"] != "BLOCK"
    assert PLANTED in out.out and "BLOCK" in out.out


def planned_docs(run_dir: Path, task: str) -> list[int]:
    """The documents the run's sampling design planned for a task, in evaluation order (from its manifest)."""
    from qeval.sampling import permutation
    from qeval.store import read_manifest

    design = read_manifest(run_dir)["sampling"]
    plan = design["tasks"][task]
    return list(permutation(plan["n_docs"], design["seed"], task, design["order"] == "shuffled")[:plan["planned_n"]])


# -- (c) a corrupted cache file is detected, rebuilt, and said ---------------------------------------

def _build_counting(calls: list[int]):
    """A builder like the quantizer's: writes the artifact's files (two, one in a subfolder) into the folder."""
    def build(folder: Path) -> dict:
        calls.append(1)
        (folder / "weights.bin").write_bytes(bytes(range(256)) * 64)
        (folder / "sub").mkdir()
        (folder / "sub" / "config.json").write_text('{"bits": 8}')
        return {"built": len(calls)}
    return build


CORRUPTIONS = {
    "flipped-bytes": (lambda f: (f / "weights.bin").write_bytes(b"\xff" + (f / "weights.bin").read_bytes()[1:]),
                      "files differ from their recorded sha256: weights.bin"),
    "truncated-file": (lambda f: (f / "sub" / "config.json").write_text('{"bi'),
                       "files differ from their recorded sha256: sub/config.json"),
    "deleted-file": (lambda f: (f / "weights.bin").unlink(), "files differ from their recorded sha256: weights.bin"),
    "extra-file": (lambda f: (f / "stray.tmp").write_text("x"), "files differ from their recorded sha256: stray.tmp"),
    "manifest-garbled": (lambda f: (f / "artifact.json").write_text('{"key": "ab'),
                         "artifact.json is unreadable (JSONDecodeError)"),
    "manifest-missing": (lambda f: (f / "artifact.json").unlink(), "no artifact.json (an interrupted build)"),
}


@pytest.mark.parametrize("corrupt, problem", CORRUPTIONS.values(), ids=list(CORRUPTIONS))
def test_corrupted_cached_artifact_is_detected_rebuilt_and_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, corrupt, problem: str) -> None:
    from qeval import artifacts

    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path / "cache"))
    key = "ab" * 32
    calls: list[int] = []
    folder, built = artifacts.get_or_build(key, _build_counting(calls), label="test")
    assert built and artifacts.verify(folder) is None
    assert artifacts.get_or_build(key, _build_counting(calls), label="test") == (folder, False)  # reused
    assert len(calls) == 1
    good = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "artifact.json"}

    corrupt(folder)
    assert artifacts.verify(folder) == problem
    with caplog.at_level(logging.WARNING, logger="qeval.artifacts"):
        again, built = artifacts.get_or_build(key, _build_counting(calls), label="test")
    assert (again, built) == (folder, True) and len(calls) == 2
    assert f"test: cached artifact {key[:12]} is corrupt ({problem}); rebuilding it" in caplog.text
    # Rebuilt whole: the same files, verified, a fresh manifest; no temp folders left in the cache.
    assert artifacts.verify(folder) is None
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != "artifact.json"} == good
    assert artifacts.read_manifest(folder)["info"] == {"built": 2}
    assert sorted(p.name for p in folder.parent.iterdir()) == [key, f"{key}.lock"]


# -- (a) kill -9 mid-run, resume: the same results as a run that was never interrupted ---------------

KILL_SUITE = """\
name: kill-resume
model: {source: smollm2-135m-instruct}
baseline: bf16
candidates: [int8_wo]
backends: [hf]
task_dirs: [TASK_DIRS]
tasks:
  - {name: qeval_addition_mc, limit: 20}
  - {name: qeval_subtraction_mc, limit: 20}
calibration: local-text
divergence: {enabled: false}
latency: {enabled: false}
gate: {margin: 5.0}
""".replace("TASK_DIRS", str(FIXTURE_TASKS))
CELLS = ("bf16-hf", "int8_wo-hf")
TASKS = ("qeval_addition_mc", "qeval_subtraction_mc")


def _qeval(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "qeval.cli", *args]


def _env() -> dict[str, str]:
    import os

    # The subprocess imports this checkout's qeval (not another installed copy).
    repo = str(Path(__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _results(run_dir: Path) -> dict[tuple[str, str], dict[int, tuple[float, list[float]]]]:
    """Per cell and task: doc id -> (score, every choice's log-likelihood)."""
    from qeval.store import RunStore

    store = RunStore(run_dir)
    return {(cell, task): {s["doc_id"]: (s["score"], s["loglikelihoods"]) for s in store.read_samples(cell, task)}
            for cell in CELLS for task in TASKS}


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_results(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    suite = tmp_path / "suite.yaml"
    suite.write_text(KILL_SUITE)

    # The reference: the same suite, never interrupted.
    # No timeouts: a slower machine takes longer, it is not a failure (a hung run shows in CI's own limit).
    ref = subprocess.run(_qeval("run", str(suite), "--reports-dir", str(tmp_path / "ref")), env=_env(),
                         capture_output=True, text=True)
    assert ref.returncode in (0, 1), ref.stderr[-3000:]
    [ref_dir] = list((tmp_path / "ref").iterdir())

    # The victim: killed (SIGKILL, its whole process group) once the baseline cell and the candidate's first task
    # are on disk and a batch of the candidate's second task is in its request cache: mid-task, mid-run.
    reports = tmp_path / "killed"
    proc = subprocess.Popen(_qeval("run", str(suite), "--reports-dir", str(reports)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    watermark = None
    try:
        while True:
            assert proc.poll() is None, f"the run ended before it was killed:\n{proc.stderr.read()[-3000:]}"
            samples = list(reports.glob("*/cells/*/samples/*.jsonl"))
            requests = next(iter(reports.glob("*/cells/int8_wo-hf/requests.jsonl")), None)
            if len(samples) == 3 and requests is not None:
                if watermark is None:
                    watermark = _lines(requests)  # the first task's requests
                elif _lines(requests) > watermark:
                    break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    [run_dir] = list(reports.iterdir())
    done = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("cells/*/samples/*.jsonl"))
    assert len(done) == 3, f"killed too late: {done}"  # some but not all results were on disk
    assert (run_dir / "cells/bf16-hf/status.json").exists() and not (run_dir / "cells/int8_wo-hf/status.json").exists()

    resumed = subprocess.run(_qeval("run", "--resume", str(run_dir)), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == ref.returncode, resumed.stderr[-3000:]
    # Nothing that finished was recomputed: the finished cell is reused, the partial task starts from its cache.
    import re

    assert "bf16-hf: finished in an earlier run, reused" in resumed.stderr
    reuse = re.search(r"int8_wo-hf: (\d+) of (\d+) loglikelihood requests reused", resumed.stderr)
    assert reuse and 0 < int(reuse[1]) < int(reuse[2]), resumed.stderr[-3000:]  # the partial task, from its cache
    # Only the interrupted task is evaluated again (a finished task or cell logs no new result line).
    finished_now = sorted(set(re.findall(r"(\S+-hf) (qeval_\w+_mc): look \d+/\d+", resumed.stderr)))
    assert finished_now == [("int8_wo-hf", "qeval_subtraction_mc")], finished_now
    print(f"resume: {reuse[0]}")

    # Identical to the uninterrupted run: every cell, task and doc id, score and log-likelihoods.
    got, want = _results(run_dir), _results(ref_dir)
    for key in want:
        assert sorted(got[key]) == sorted(want[key]) == sorted(planned_docs(ref_dir, key[1])), key
        assert {d: s for d, (s, _) in got[key].items()} == {d: s for d, (s, _) in want[key].items()}, key
        assert got[key] == want[key], f"{key}: log-likelihoods differ after resume"
    verdicts = [{(d["candidate"], d["backend"]): d["verdict"] for d in json.loads((r / "results.json").read_text())
                 ["decisions"]} for r in (run_dir, ref_dir)]
    assert verdicts[0] == verdicts[1]
