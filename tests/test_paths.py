"""No value from an input file chooses where a file is written.

Every place where a value from a suite, a task, a precision, a model folder or an engine becomes part of a
path is fed hostile values: `..`, absolute paths, separators, NUL, newlines, very long names and Unicode
look-alikes. Each is refused with a clear message (file, field, fix; exit 2 from the CLI), and nothing is
written anywhere. The walk over every file a real run writes is in tests/test_written_paths.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qeval.cli import main
from qeval.errors import QevalError
from qeval.paths import check_name, name_problem, under
from qeval.store import RunStore
from qeval.suite import load_suite

# (id, value): each must be refused wherever a name becomes a path.
HOSTILE = [
    ("dotdot-escape", "../../../escaped"),
    ("dotdot", ".."),
    ("dot", "."),
    ("absolute", "/tmp/qeval-escaped"),
    ("separator", "a/b"),
    ("backslash", "a\\b"),
    ("nul", "a\0b"),
    ("newline", "a\nb"),
    ("carriage-return", "a\rb"),
    ("very-long", "a" * 300),
    ("cyrillic-lookalike", "\u0455moke"),  # Cyrillic dze reads as 's'
    ("fullwidth-solidus", "a\uff0fb"),
    ("division-slash", "a\u2215b"),
    ("fullwidth-dots", "\uff0e\uff0e"),
    ("rtl-override", "smoke\u202egpj.exe"),
    ("leading-dash", "-rf"),
    ("empty", ""),
    ("space", "a b"),
    ("home", "~"),
    ("drive", "C:"),
]
IDS = [h[0] for h in HOSTILE]
VALUES = [h[1] for h in HOSTILE]

GOOD = """\
name: t
model: {source: smollm2-135m-instruct, dtype: bfloat16}
baseline: bf16
candidates: [int8_wo]
backends: [hf]
tasks:
  - {name: bigbench_mc_physics, limit: 10}
calibration: bigbench-mixed
"""


def _tree(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_safe_names_pass() -> None:
    for name in ("smoke", "gpu-smoke-online", "bigbench_mc_physics", "int4_awq_g64-hf", "a.b", "A1", "x" * 128):
        assert name_problem(name) is None, name


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_name_rule_refuses(value: str) -> None:
    assert name_problem(value) is not None
    with pytest.raises(QevalError) as err:
        check_name(value, what="suite name", file="s.yaml", field="name")
    assert "cannot be used in a file name" in err.value.render() and "fix: use letters, digits" in err.value.render()


def test_name_rule_says_why() -> None:
    assert "path separator" in name_problem("a/b")
    assert "NUL" in name_problem("a\0b")
    assert "control character" in name_problem("a\nb")
    assert "U+0455" in name_problem("\u0455moke") and "look like an ASCII" in name_problem("\u0455moke")
    assert "300 characters" in name_problem("a" * 300)
    assert "start with a letter or a digit" in name_problem("..")


# -- the suite: its name (the run directory) and its task names (the sample files) -------------------------------

@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_suite_name_is_refused_at_load(tmp_path: Path, value: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(GOOD.replace("name: t", f"name: {json.dumps(value)}"), encoding="utf-8")
    with pytest.raises(QevalError) as err:
        load_suite(path)
    text = err.value.render()
    assert err.value.file == str(path) and err.value.field == "name", text
    assert "suite name" in text and "cannot be used in a file name" in text and "fix: use letters" in text


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_task_name_is_refused_at_load(tmp_path: Path, value: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(GOOD.replace("name: bigbench_mc_physics", f"name: {json.dumps(value)}"), encoding="utf-8")
    with pytest.raises(QevalError) as err:
        load_suite(path)
    assert err.value.field == "tasks" and "task name (tasks[0].name)" in err.value.problem, err.value.render()


@pytest.mark.parametrize("value", ["../../../escaped", "/tmp/qeval-escaped-abs", "a/b", "a\0b", "a\nb", "a" * 300,
                                   "\uff0e\uff0e"], ids=["dotdot", "absolute", "separator", "nul", "newline",
                                                          "very-long", "fullwidth-dots"])
def test_cli_refuses_a_hostile_suite_name_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             value: str) -> None:
    """The issue's example: a suite named ../../../escaped used to put its run directory outside --reports-dir."""
    inside = tmp_path / "a" / "b" / "c"
    inside.mkdir(parents=True)
    suite = inside / "suite.yaml"
    suite.write_text(GOOD.replace("name: t", f"name: {json.dumps(value)}"), encoding="utf-8")
    before = _tree(tmp_path)
    rc = main(["run", str(suite), "--reports-dir", str(inside / "reports")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("qeval: error: ") and "field 'name'" in err and "fix:" in err and "Traceback" not in err
    assert _tree(tmp_path) == before
    assert not Path("/tmp/qeval-escaped-abs").exists()


# -- names that reach the run directory from code: the store, the registry, the caches ---------------------------

@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_run_store_refuses_hostile_cell_and_task_names(tmp_path: Path, value: str) -> None:
    store = RunStore(tmp_path / "run")
    for write in (lambda: store.write_samples(value, "task", [{"doc_id": 0}]),
                  lambda: store.write_samples("bf16-hf", value, [{"doc_id": 0}]),
                  lambda: store.write_json("bf16-hf", value, {}),
                  lambda: store.write_status(value, {"state": "ok"}),
                  lambda: store.request_cache(value).append({"k": {}}),
                  lambda: store.read_samples("bf16-hf", value)):
        with pytest.raises(QevalError, match="cannot be used in a file name"):
            write()
    assert not (tmp_path / "run").exists() and _tree(tmp_path) == []


def test_a_symlink_inside_the_run_directory_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    os.symlink(outside, run / "cells" / "bf16-hf")
    store = RunStore(run)
    with pytest.raises(QevalError, match="outside"):
        store.write_samples("bf16-hf", "task", [{"doc_id": 0}])
    assert list(outside.iterdir()) == []


def test_under_allows_the_root_and_its_children(tmp_path: Path) -> None:
    assert under(tmp_path, tmp_path / "a" / "b.json") == tmp_path / "a" / "b.json"
    assert under(tmp_path, tmp_path) == tmp_path
    with pytest.raises(QevalError, match="outside"):
        under(tmp_path / "a", tmp_path / "a" / ".." / "b")
    with pytest.raises(QevalError, match="NUL"):
        under(tmp_path, tmp_path / "a\0b")


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_precision_registry_refuses_hostile_names(value: str) -> None:
    from qeval import precisions

    base = precisions.get("int8_wo")
    with pytest.raises(ValueError, match="cannot be used in a file name"):
        precisions.register(precisions.Precision(name=value, description="hostile", modelopt_cfg=base.modelopt_cfg,
                                                 trtllm_quant_algo=base.trtllm_quant_algo, vllm=base.vllm))
    assert value not in precisions.PRECISIONS


@pytest.mark.parametrize("key", ["../" + "0" * 61, "/tmp/x", "0" * 63, "0" * 64 + "/..", "A" * 64, ""])
def test_artifact_keys_must_be_sha256(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qeval import artifacts

    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="not a sha256"):
        artifacts.get_or_build(key, lambda folder: {}, label="hostile")
    assert not (tmp_path / "cache" / "artifacts").exists() or list((tmp_path / "cache" / "artifacts").iterdir()) == []


@pytest.mark.parametrize("sku", ["..", "../../etc", "/abs", ".", "a/../..", "\uff0e\uff0e", "a\0b"])
def test_engine_cache_folder_stays_under_its_root(sku: str, tmp_path: Path) -> None:
    """The TensorRT-LLM engine cache key holds the GPU name an engine reports: a slug, never a path."""
    from qeval.backends import trtllm

    key = trtllm.engine_cache_key(gpu_sku=sku, trtllm_version="..", artifact_key="../" + "a" * 64)
    path = trtllm.engine_dir(tmp_path, key)
    assert path.resolve().is_relative_to(tmp_path.resolve()) and len(path.relative_to(tmp_path).parts) == 3
    for bad in ("../x", "/abs", "a/../../b", "."):
        with pytest.raises(ValueError):
            trtllm.engine_dir(tmp_path, bad)


def test_cache_subfolders_are_plain_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qeval.paths import cache_subdir

    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path))
    assert cache_subdir("models") == tmp_path / "models"
    for bad in ("..", "../x", "/tmp"):
        with pytest.raises(QevalError):
            cache_subdir(bad)


def test_new_run_dir_is_directly_under_the_reports_dir(tmp_path: Path) -> None:
    from qeval.runner import new_run_dir
    from qeval.suite import Suite

    good = Suite.model_validate({"name": "t", "candidates": ["int8_wo"], "tasks": [{"name": "x"}]})
    assert new_run_dir(tmp_path, good).parent == tmp_path
    # A Suite built without validation (model_construct) is checked again where its name becomes a path.
    hostile = Suite.model_construct(**{**good.__dict__, "name": "../../escaped"})
    with pytest.raises(QevalError, match="cannot be used in a file name"):
        new_run_dir(tmp_path, hostile)


# -- the pytest plugin ------------------------------------------------------------------------------------------

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("value", ["../../escaped", "/tmp/qeval-plugin-escaped"], ids=["dotdot", "absolute"])
def test_plugin_refuses_a_hostile_suite_name_at_collection(pytester: pytest.Pytester, value: str) -> None:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "bad.yaml").write_text(GOOD.replace("name: t", f"name: {json.dumps(value)}"))
    pytester.makeini("[pytest]\ntestpaths = suites\nqeval_report_dir = reports\n")
    result = pytester.runpytest_subprocess("-m", "quality")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "cannot be used in a file name" in out and "fix:" in out and "Traceback" not in out
    assert not (pytester.path / "reports").exists() and not Path("/tmp/qeval-plugin-escaped").exists()
    assert not (pytester.path.parent / "escaped").exists()


def test_plugin_refuses_a_report_dir_with_control_characters(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--qeval-report-dir=rep\x01orts")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "qeval_report_dir=" in result.stderr.str() and "control character" in result.stderr.str()
