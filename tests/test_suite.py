"""Suite validation: every malformed suite gives one clear message (file, field, fix) and exit code 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from qeval.cli import main
from qeval.errors import QevalError
from qeval.suite import Suite, load_suite

GOOD = """\
name: t
model: {source: smollm2-135m-instruct, dtype: bfloat16}
baseline: bf16
candidates: [fp8, int8_wo]
backends: [hf]
tasks:
  - {name: bigbench_mc_physics, limit: 10}
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_smoke_suite_is_valid() -> None:
    suite, path = load_suite(None)
    assert suite.name == "smoke"
    assert path.name == "smoke.yaml"
    assert suite.baseline not in suite.candidates
    assert len(suite.tasks) >= 3


def test_good_suite_loads(tmp_path: Path) -> None:
    suite, _ = load_suite(write(tmp_path, GOOD))
    assert isinstance(suite, Suite)
    assert suite.precisions == ["bf16", "fp8", "int8_wo"]
    assert suite.model.trust_remote_code is False  # safe default


def test_an_slo_too_few_requests_can_bound_is_named_at_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slo = "gate:\n  latency:\n    - {metric: ttft, percentile: 99, max_ms: 200, concurrency: 4}\n"
    with caplog.at_level("WARNING", logger="qeval.suite"):
        load_suite(write(tmp_path, GOOD + slo + "latency: {num_requests: 64}\n"))
    # Two candidate cells under Bonferroni: each at 0.025, where a p99 upper bound takes 368 requests
    # (299 would do at 0.05, the suite's alpha, which no cell is tested at).
    assert "num_requests is 64" in caplog.text and "level 0.025" in caplog.text and "at least 368" in caplog.text
    assert "latency_ttft_p99_c4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="qeval.suite"):
        load_suite(write(tmp_path, GOOD + slo + "latency: {num_requests: 368}\n", name="enough.yaml"))
    assert "num_requests" not in caplog.text


# (what to change in GOOD, the field the message must name, words the message must contain)
MALFORMED = [
    ("limit_string", GOOD.replace("limit: 10", "limit: ten"), "tasks[0].limit", "whole number"),
    ("limit_negative", GOOD.replace("limit: 10", "limit: -5"), "tasks[0].limit", "greater than 0"),
    ("limit_zero", GOOD.replace("limit: 10", "limit: 0"), "tasks[0].limit", "greater than 0"),
    ("unknown_precision", GOOD.replace("[fp8, int8_wo]", "[fp9, int8_wo]"), "candidates", "fp9"),
    ("unknown_backend", GOOD.replace("backends: [hf]", "backends: [vlm]"), "backends", "did you mean 'vllm'"),
    ("duplicate_candidate", GOOD.replace("[fp8, int8_wo]", "[fp8, fp8]"), "candidates", "listed twice"),
    ("duplicate_backend", GOOD.replace("backends: [hf]", "backends: [hf, hf]"), "backends", "listed twice"),
    ("baseline_is_candidate", GOOD.replace("[fp8, int8_wo]", "[bf16, fp8]"), "candidates", "baseline"),
    ("unknown_baseline", GOOD.replace("baseline: bf16", "baseline: bf17"), "baseline", "bf17"),
    ("empty_candidates", GOOD.replace("[fp8, int8_wo]", "[]"), "candidates", "at least 1"),
    ("missing_tasks", GOOD.split("tasks:")[0], "tasks", "required"),
    ("missing_name", GOOD.replace("name: t\n", ""), "name", "required"),
    ("unknown_field", GOOD + "tsks: []\n", "tsks", "did you mean 'tasks'"),
    ("unknown_nested_field", GOOD.replace("dtype: bfloat16", "dtyp: bfloat16"), "model.dtyp", "dtype"),
    ("bad_dtype", GOOD.replace("dtype: bfloat16", "dtype: fp64"), "model.dtype", "bfloat16"),
    ("candidates_not_list", GOOD.replace("[fp8, int8_wo]", "{a: 1}"), "candidates", "list"),
    ("duplicate_task", GOOD + "  - {name: bigbench_mc_physics}\n", "tasks", "listed twice"),
    ("trust_remote_code_string", GOOD.replace("dtype: bfloat16", "dtype: bfloat16, trust_remote_code: maybe"),
     "model.trust_remote_code", "true or false"),
    ("missing_model_folder", GOOD.replace("source: smollm2-135m-instruct", "source: ./no/such/model"),
     "model.source", "does not exist"),
    ("negative_margin", GOOD + "gate: {margin: -1}\n", "gate.margin", "greater than 0"),
    ("bad_correction", GOOD + "gate: {correction: bonferoni}\n", "gate.correction", "holm"),
    ("negative_request_rate", GOOD + "latency: {request_rate: [-1]}\n", "latency.request_rate", "> 0"),
]


@pytest.mark.parametrize("case,text,field,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_suite_names_file_field_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  case: str, text: str, field: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(QevalError) as info:
        load_suite(path)
    err = info.value
    assert err.file == str(path)
    assert err.field == field, err.render()
    assert words in err.render(), err.render()
    assert err.fix, "every message carries a fix"
    # The CLI: one message on stderr, exit code 2, no traceback.
    code = main(["run", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert str(path) in captured.err and "fix:" in captured.err


@pytest.mark.parametrize("text,words", [
    ("name: t\ncandidates: [fp8\n", "YAML syntax error at line"),
    ("name: t\n\tcandidates: [fp8]\n", "YAML syntax error"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("", "must be a YAML mapping"),
], ids=["unclosed_bracket", "tab_indent", "list_not_mapping", "empty_file"])
def test_unparseable_suites(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str) -> None:
    path = write(tmp_path, text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(path) in err and "Traceback" not in err


def test_missing_suite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_yaml_is_loaded_safely(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A python/object tag must not execute anything: safe_load refuses it.
    path = write(tmp_path, GOOD + "description: !!python/object/apply:os.system ['echo pwned']\n")
    assert main(["run", str(path)]) == 2
    assert "YAML tag refused at line" in capsys.readouterr().err


def test_resume_of_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "--resume" in capsys.readouterr().err
