"""A resume refuses what it cannot reuse, and the report refuses records from another artifact.

Each test works on a copy of the small real run (tests/conftest.py: small_run) through the real CLI. The
weights test changes one byte of the model folder's real safetensors file (and restores it); the other changes
are made in the copy's manifest, standing for a run recorded with another recipe or tool version, since
reinstalling torch or ModelOpt inside a test is not possible here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SmallRun
from qeval.cli import main

pytestmark = pytest.mark.slow
TASK_FILE = Path("cells/bf16-hf/samples/qeval_addition_mc.jsonl")


def _files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _edit_manifest(run: Path, **identity: object) -> None:
    manifest = _manifest(run)
    manifest["identity"].update(identity)
    (run / "manifest.json").write_text(json.dumps(manifest))


def _validate_manifest(manifest: dict) -> None:
    """The manifest part of results.json against the checked-in schema (identity, artifacts, resumes)."""
    import jsonschema

    from qeval.report.schema import load_schema

    schema = load_schema()
    jsonschema.validate(manifest, {"$defs": schema["$defs"], **schema["$defs"]["Manifest"]})


def test_a_resume_of_an_unchanged_run_is_accepted_and_changes_nothing(
        small_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _manifest(small_run_copy)
    records = (small_run_copy / TASK_FILE).read_bytes()
    rc = main(["run", "--resume", str(small_run_copy)])
    out = capsys.readouterr()
    assert rc in (0, 1), out.err
    assert _manifest(small_run_copy) == before and "resumes" not in before
    assert (small_run_copy / TASK_FILE).read_bytes() == records  # nothing recomputed


def test_one_byte_of_the_weights_changed_refuses_the_resume_then_allow_changed_records_it(
        small_run: SmallRun, small_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = small_run.model_dir / "model.safetensors"
    old_hash = _manifest(small_run_copy)["model"]["sha256"]
    old_artifacts = _manifest(small_run_copy)["artifacts"]
    with open(weights, "r+b") as f:  # a byte of the last tensor's data (not the header): still loadable
        f.seek(-1000, 2)
        original = f.read(1)
        f.seek(-1000, 2)
        f.write(bytes([original[0] ^ 0x01]))
    try:
        kept = _files(small_run_copy)
        rc = main(["run", "--resume", str(small_run_copy)])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err and err.startswith("qeval: error: ")
        assert "field 'model.weights_sha256'" in err and f"the model's weights hash) was {old_hash[:12]}" in err
        assert "would mix records" in err
        assert f"--resume {small_run_copy} --allow-changed model.weights_sha256" in err and "start a new run" in err
        assert _files(small_run_copy) == kept  # refused: nothing written, nothing lost

        rc = main(["run", "--resume", str(small_run_copy), "--allow-changed", "model.weights_sha256"])
        err = capsys.readouterr().err
        assert rc in (0, 1), err
        manifest = _manifest(small_run_copy)
        [resume] = manifest["resumes"]
        [change] = resume["allowed_changes"]
        assert change["field"] == "model.weights_sha256" and change["was"] == old_hash
        assert change["now"] == manifest["model"]["sha256"] == manifest["identity"]["model.weights_sha256"] != old_hash
        assert resume["allowed_by"] == ["model.weights_sha256"]
        # The artifacts of before the change stay accepted for the records they made: the report still pairs them.
        assert manifest["artifacts"]["bf16-hf"]["accepted"] == [old_artifacts["bf16-hf"]["key"]]
        assert manifest["artifacts"]["int8_wo-hf"]["accepted"] == [old_artifacts["int8_wo-hf"]["key"]]
        results = json.loads((small_run_copy / "results.json").read_text())
        assert all(r["kind"] != "error" for d in results["decisions"] for r in d["rules"]), results["decisions"]
        _validate_manifest(results["manifest"])
        assert (small_run_copy / TASK_FILE).read_bytes() == kept[small_run_copy / TASK_FILE]
    finally:
        with open(weights, "r+b") as f:
            f.seek(-1000, 2)
            f.write(original)


@pytest.mark.parametrize("field, value, words", [
    ("versions.torch", "0.0.1", "versions.torch (the installed torch version) was '0.0.1'"),
    ("versions.lm_eval", "0.3.0", "the installed lm_eval version"),
    ("versions.nvidia-modelopt", "0.1.0", "the installed nvidia-modelopt version"),
    ("recipe.int8_wo", "0" * 64, "recipe.int8_wo (the int8_wo recipe definition) was 000000000000"),
    ("calibration.sha256", "1" * 64, "the calibration set's content"),
    # float16: a dtype qeval never picks on a CPU, so the edit is a change on every CPU (AVX2 or AMX)
    ("engine.compute_dtype", "float16", "the dtype the reference engines compute in"),
    ("engine.device", "NVIDIA H200", "the device the engines ran on"),
])
def test_a_recorded_change_refuses_the_resume_and_names_it(small_run_copy: Path, capsys: pytest.CaptureFixture[str],
                                                           field: str, value: str, words: str) -> None:
    _edit_manifest(small_run_copy, **{field: value})
    kept = _files(small_run_copy)
    rc = main(["run", "--resume", str(small_run_copy)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert words in err and f"--allow-changed {field}" in err and "Traceback" not in err
    assert _files(small_run_copy) == kept


def test_allow_changed_takes_a_group_and_refuses_a_typo(small_run_copy: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _edit_manifest(small_run_copy, **{"versions.torch": "0.0.1", "versions.transformers": "1.0"})
    kept = _files(small_run_copy)
    assert main(["run", "--resume", str(small_run_copy), "--allow-changed", "versoins"]) == 2
    err = capsys.readouterr().err
    assert "--allow-changed 'versoins' names no recorded field" in err and "fix: use a field" in err
    assert _files(small_run_copy) == kept
    assert main(["run", "--resume", str(small_run_copy), "--allow-changed", "versions"]) in (0, 1)
    capsys.readouterr()
    [resume] = _manifest(small_run_copy)["resumes"]
    assert {c["field"] for c in resume["allowed_changes"]} == {"versions.torch", "versions.transformers"}


def test_a_run_older_than_the_check_is_refused_for_what_it_did_not_record(
        small_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(small_run_copy)
    for key in ("identity", "artifacts"):
        manifest.pop(key)
    (small_run_copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["run", "--resume", str(small_run_copy)]) == 2
    err = capsys.readouterr().err
    assert "calibration.sha256" in err and "not recorded: the run predates this field" in err
    assert "model.weights_sha256 (" not in err  # what an old manifest did record, and still matches, is not named


def test_allow_changed_without_resume_is_bad_input(small_run: SmallRun, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    rc = main(["run", str(small_run.suite), "--reports-dir", str(tmp_path), "--allow-changed", "versions"])
    assert rc == 2 and "--allow-changed applies to a resume only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- the report: records from another artifact are an error, not a comparison ------------------------------------

def test_records_from_another_artifact_are_an_error_in_the_report(small_run_copy: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = small_run_copy / TASK_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[3]["artifact_key"] = "f" * 64  # one baseline record stitched in from another model's run
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rc = main(["report", str(small_run_copy)])
    out = capsys.readouterr().out
    assert rc == 1, out
    [decision] = json.loads((small_run_copy / "results.json").read_text())["decisions"]
    assert decision["verdict"] == "BLOCK"
    [rule] = [r for r in decision["rules"] if r["kind"] == "error"]
    assert "come from artifact ffffffffffff" in rule["message"]
    assert str(TASK_FILE) in rule["message"] and "not produced by this run's artifact" in rule["message"]


def test_a_resume_recomputes_a_baseline_whose_reference_distributions_were_lost(
        small_run_copy: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    # On the H200 (2026-12-03) a run directory moved to the next machine without its big arrays kept the
    # baseline "ok" without references while the candidates' engines had crashed: on resume every candidate
    # ran again and found nothing to compare with. Here: the candidate crashed before its divergence (its
    # record removed, its status ERROR) and the baseline's references are gone (the small run pruned them).
    from qeval.engine_divergence import missing_references

    baseline, candidate = small_run_copy / "cells" / "bf16-hf", small_run_copy / "cells" / "int8_wo-hf"
    assert missing_references(baseline)  # pruned at the end of the run: every candidate had its divergence
    (candidate / "divergence.json").unlink()
    (candidate / "status.json").write_text(json.dumps({"state": "error", "cause": "RuntimeError: engine died"}))
    rc = main(["run", "--resume", str(small_run_copy)])
    out = capsys.readouterr()
    assert rc in (0, 1), out.err
    said = out.out + out.err + caplog.text  # the CLI's own log handler writes to stderr
    assert "bf16-hf: finished, but its reference distributions" in said and "int8_wo-hf still need" in said
    record = json.loads((candidate / "divergence.json").read_text())
    assert json.loads((candidate / "status.json").read_text())["state"] == "ok"
    assert "unavailable" not in record and record.get("heldout")
