"""`pytest -m quality -n 2` (pytest-xdist) gives the verdicts of `-n 0`, and the report is written once.

Two real sessions of one small suite (the real model on the hf backend: int8_wo, and the planted 2-bit
regression of tests/test_pytest_plugin.py), each into a fresh report dir so each computes from scratch: one in
a single process, one with two xdist workers. Under xdist the first worker to need the suite runs it while the
other waits on the suite's lock, then resumes the finished run and gates the same records; the controller
writes the reports once.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mc_items import FIXTURE_TASKS

from test_pytest_plugin import CONFTEST

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

SUITE = """\
name: xdist-check
model: {source: smollm2-135m-instruct}
baseline: bf16
candidates: [int8_wo, w2_broken]
backends: [hf]
task_dirs: [TASK_DIRS]
tasks:
  - {name: qeval_addition_mc, limit: 10}
calibration: local-text
divergence: {heldout_tokens: 128, task_prompts: 0}  # 64 tokens of README lines are too few documents to settle KL
latency: {enabled: false}
gate: {margin: 5.0, max_kld_mean: 0.1}
""".replace("TASK_DIRS", str(FIXTURE_TASKS))  # a task the tests make


def _outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    return out


def _verdicts(report_dir: Path) -> dict[str, tuple[str, list[tuple[str, bool | None]]]]:
    [run] = list(report_dir.glob("pytest-xdist-check-*"))
    results = json.loads((run / "results.json").read_text())
    return {d["cell_id"]: (d["verdict"], sorted((r["rule_id"], r["passed"]) for r in d["rules"]))
            for d in results["decisions"]}


def test_two_workers_give_the_verdicts_of_one_process(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "check.yaml").write_text(SUITE)
    pytester.makeconftest(CONFTEST)
    pytester.makeini(textwrap.dedent("""\
        [pytest]
        testpaths = suites
        """))
    one = pytester.runpytest_subprocess("-m", "quality", "-v", "-n", "0", "--qeval-report-dir=one",
                                        "--junitxml=one.xml")
    two = pytester.runpytest_subprocess("-m", "quality", "-v", "-n", "2", "--qeval-report-dir=two",
                                        "--junitxml=two.xml")
    out_two = two.stdout.str()
    assert "[gw0]" in out_two and "[gw1]" in out_two, out_two  # both workers ran items
    assert one.ret == two.ret == pytest.ExitCode.TESTS_FAILED  # w2_broken's kld fails in both
    assert _outcomes(pytester.path / "one.xml") == _outcomes(pytester.path / "two.xml")
    assert len(_outcomes(pytester.path / "one.xml")) >= 4
    assert _verdicts(pytester.path / "one") == _verdicts(pytester.path / "two")
    assert _verdicts(pytester.path / "two")["w2_broken-hf"][0] == "BLOCK"
    # The controller wrote the reports (once) and says so in its summary.
    assert "reported once, by the xdist controller" in out_two and "w2_broken-hf" in out_two
    [run] = list((pytester.path / "two").glob("pytest-xdist-check-*"))
    assert (run / "report.html").is_file() and not list(run.glob(".*.tmp"))
    print(f"\n-n 0: {one.duration:.0f} s, -n 2: {two.duration:.0f} s")
