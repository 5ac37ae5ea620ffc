"""The pytest plugin, run by pytest's own `pytester` on a small real suite.

The suite runs the real model on the HF backend: a candidate that passes
(int8_wo, ModelOpt INT8 weight-only fake-quant), and one planted to regress
(`w2_broken`: a precision entry defined here, 2-bit per-channel weights through
the same real ModelOpt path — a genuinely damaged model, not a mocked verdict).
Every pytester session shares one report dir, so the model work happens once
and later sessions resume the run (which also tests that resuming recomputes
nothing).
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mc_items import FIXTURE_TASKS

pytest_plugins = ["pytester"]

SUITE = """\
name: plugin-check
model: {source: smollm2-135m-instruct}
baseline: bf16
candidates: [int8_wo, w2_broken]
backends: [hf]
task_dirs: [TASK_DIRS]
tasks:
  - {name: qeval_addition_mc, limit: 16}
calibration: local-text
divergence: {heldout_tokens: 128, task_prompts: 0}
latency: {enabled: false}
gate:
  margin: 0.5           # 16 items cannot prove a half-point margin: INCONCLUSIVE; the KLD rule decides
  max_kld_mean: 0.1
""".replace("TASK_DIRS", str(FIXTURE_TASKS))  # a task the tests make

CONFTEST = '''
import copy
import modelopt.torch.quantization as mtq
from qeval import precisions

# A deliberately damaged recipe: ModelOpt's INT8 weight-only config at 2 bits.
cfg = copy.deepcopy(mtq.INT8_WEIGHT_ONLY_CFG)
for entry in cfg["quant_cfg"]:
    if entry.get("quantizer_name") == "*weight_quantizer":
        entry["cfg"]["num_bits"] = 2
mtq.QEVAL_TEST_W2_CFG = cfg
if "w2_broken" not in precisions.PRECISIONS:
    base = precisions.get("int8_wo")
    precisions.register(precisions.Precision(
        name="w2_broken", description="planted regression: 2-bit weights", modelopt_cfg="QEVAL_TEST_W2_CFG",
        trtllm_quant_algo=base.trtllm_quant_algo, vllm=base.vllm))
'''


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plugin-reports")


@pytest.fixture
def project(pytester: pytest.Pytester, report_dir: Path) -> pytest.Pytester:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "check.yaml").write_text(SUITE)
    pytester.makeconftest(CONFTEST)
    pytester.makeini(textwrap.dedent(f"""\
        [pytest]
        testpaths = suites
        qeval_report_dir = {report_dir}
        """))
    return pytester


@pytest.mark.slow
def test_gate_rules_become_items_with_evidence(project: pytest.Pytester, report_dir: Path) -> None:
    junit = project.path / "gate.xml"
    result = project.runpytest_subprocess("-m", "quality", "-v", f"--junitxml={junit}",
                                          "--qeval-inconclusive=xfail")
    out = result.stdout.str()
    # One item per gate rule per candidate, named suite::cell::rule.
    assert "suites/check.yaml::int8_wo-hf::kld PASSED" in out
    assert "suites/check.yaml::w2_broken-hf::kld FAILED" in out
    # The accuracy rule cannot be decided on 16 items: INCONCLUSIVE -> xfail.
    assert "suites/check.yaml::int8_wo-hf::qeval_addition_mc XFAIL" in out
    # The failure shows the evidence: KL numbers with their interval, the limit, n.
    assert "w2_broken on hf: FAIL — mean KL(baseline||candidate)" in out and "max 0.1" in out and "128 tokens" in out
    assert "qeval gate" in out and "w2_broken-hf" in out and "BLOCK" in out  # terminal summary
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("failed", 0) >= 1 and outcomes.get("xfailed", 0) >= 1
    # junit names the items.
    names = {f'{case.get("classname")}::{case.get("name")}' for case in ET.parse(junit).getroot().iter("testcase")}
    assert any("int8_wo-hf" in n and n.endswith("::kld") for n in names), names
    assert any("w2_broken-hf" in n and n.endswith("::kld") for n in names), names
    # The report is written at the end of the session.
    runs = list(report_dir.glob("pytest-plugin-check-*"))
    assert len(runs) == 1 and (runs[0] / "report.html").exists() and (runs[0] / "results.json").exists()


@pytest.mark.slow
def test_selection_stop_and_inconclusive_options(project: pytest.Pytester) -> None:
    # (runs after the test above: the run dir is resumed, nothing is recomputed)
    result = project.runpytest_subprocess("-m", "quality", "-v", "-k", "int8_wo")
    result.assert_outcomes(passed=1, xfailed=1)
    assert "w2_broken-hf::" not in result.stdout.str()  # -k int8_wo deselects the broken candidate's items

    result = project.runpytest_subprocess("-m", "quality", "-x", "-v", "-k", "kld", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)

    result = project.runpytest_subprocess("-m", "quality", "-v", "-k", "addition", "--qeval-inconclusive=fail")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INCONCLUSIVE" in result.stdout.str()
    result = project.runpytest_subprocess("-m", "quality", "-v", "-k", "int8_wo and addition",
                                          "--qeval-inconclusive=skip")
    result.assert_outcomes(skipped=1)
    assert "int8_wo-hf::qeval_addition_mc SKIPPED" in result.stdout.str()


def test_plain_pytest_deselects_quality_items(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "check.yaml").write_text(SUITE.replace("w2_broken", "fp8"))
    pytester.makeini("[pytest]\ntestpaths = suites\naddopts = -m 'not quality'\n")
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    assert "deselected" in result.stdout.str()
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "quality")
    out = result.stdout.str()
    assert "suites/check.yaml::fp8-hf::kld" in out and "suites/check.yaml::int8_wo-hf::qeval_addition_mc" in out


def test_bad_suite_is_a_collection_error_with_the_message(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "bad.yaml").write_text(SUITE.replace("[int8_wo, w2_broken]", "[fp9]"))
    result = pytester.runpytest_subprocess("-m", "quality")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "unknown precision 'fp9'" in out or "fp9" in out
    assert "fix:" in out and "Traceback" not in out


def test_bad_inconclusive_option(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nqeval_inconclusive = maybe\n")
    result = pytester.runpytest_subprocess()
    assert "qeval_inconclusive='maybe'" in result.stderr.str()
