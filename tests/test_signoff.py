"""`qeval sign-off` binds a sign-off to the run's evidence; `qeval verify` says whether anything changed since.

Each test signs a copy of the small real run (tests/conftest.py: small_run) through the real CLI and then
changes the copy the way a person with write access could: one byte of a record, the manifest, a file added or
removed, the sign-off's own verdicts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from qeval.cli import main

pytestmark = pytest.mark.slow
CELL = "int8_wo-hf"
RECORDS = Path(f"cells/{CELL}/samples/qeval_addition_mc.jsonl")


def _sign(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    rc = main(["sign-off", str(run), "--by", "A. Lee (release manager)", *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _verify(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["verify", str(run)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = data.index(b'"loglikelihoods":[') + len(b'"loglikelihoods":[-') + 2  # a digit of the first log-likelihood
    data[i] = ord("7") if data[i] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


def test_sign_verify_then_one_byte_of_a_record_fails_verify_naming_the_file(
        small_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = small_run_copy
    results_before = (run / "results.json").read_bytes()
    rc, out, err = _sign(run, capsys, "--decision", f"block:{CELL}", "--note", "135M near chance: not shippable")
    assert rc == 0, err
    record = json.loads((run / "signoff.json").read_text())
    assert record["signed_by"] == "A. Lee (release manager)" and record["note"].startswith("135M")
    assert record["decisions"] == [{"cell": CELL, "decision": "block", "gate_verdict": "INCONCLUSIVE",
                                    "overrides_gate": False}]
    files = record["files"]
    assert {"results.json", "manifest.json", "suite.yaml", str(RECORDS), f"cells/{CELL}/status.json",
            f"cells/{CELL}/divergence.json", f"cells/{CELL}/requests.jsonl",
            "cells/bf16-hf/samples/qeval_addition_mc.jsonl"} <= set(files)
    assert files["results.json"] == hashlib.sha256(results_before).hexdigest() == record["results_sha256"]
    assert (run / "results.json").read_bytes() == results_before  # signing re-renders the pages, not the evidence
    # The report shows the sign-off with its hash.
    signoff_sha = hashlib.sha256((run / "signoff.json").read_bytes()).hexdigest()
    html = (run / "report.html").read_text()
    assert "A. Lee (release manager)" in html and signoff_sha in html and record["evidence_sha256"] in html
    assert "evidence unchanged since the sign-off" in html and "BLOCK</b> int8_wo-hf" in html
    md = (run / "report.md").read_text()
    assert "**Sign-off.**" in md and signoff_sha[:16] in md
    assert f"evidence sha256 {record['evidence_sha256']}" in out

    rc, text = _verify(run, capsys)
    assert rc == 0 and text.startswith("verified: nothing changed since the sign-off"), text

    _flip_one_byte(run / RECORDS)
    rc, text = _verify(run, capsys)
    assert rc == 1, text
    assert "CHANGED since the sign-off" in text and f"changed: {RECORDS}" in text
    # Re-rendered now, the report says so too.
    main(["report", str(run)])
    capsys.readouterr()
    assert "EVIDENCE CHANGED since the sign-off" in (run / "report.html").read_text()


def test_re_reporting_a_signed_run_keeps_results_json_and_the_sign_off_valid(
        small_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _sign(small_run_copy, capsys)[0] == 0
    before = (small_run_copy / "results.json").read_bytes()
    assert main(["report", str(small_run_copy)]) in (0, 1)
    capsys.readouterr()
    assert (small_run_copy / "results.json").read_bytes() == before
    assert _verify(small_run_copy, capsys)[0] == 0


@pytest.mark.parametrize("change, named", [
    (lambda run: (run / "manifest.json").write_bytes((run / "manifest.json").read_bytes() + b" "),
     "changed: manifest.json"),
    (lambda run: (run / "results.json").write_bytes((run / "results.json").read_bytes() + b"\n"),
     "changed: results.json"),
    (lambda run: (run / f"cells/{CELL}/latency.json").unlink(), f"removed: cells/{CELL}/latency.json"),
    (lambda run: (run / f"cells/{CELL}/samples/bigbench_mc_extra.jsonl").write_text('{"doc_id": 0}\n'),
     f"added:   cells/{CELL}/samples/bigbench_mc_extra.jsonl"),
])
def test_any_change_to_the_evidence_fails_verify(small_run_copy: Path, capsys: pytest.CaptureFixture[str],
                                                change, named: str) -> None:
    assert _sign(small_run_copy, capsys)[0] == 0
    change(small_run_copy)
    rc, text = _verify(small_run_copy, capsys)
    assert rc == 1 and named in text, text


def test_verify_re_gates_the_records(small_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hashes are not all: verify gates the records again and compares with the verdicts signed."""
    assert _sign(small_run_copy, capsys)[0] == 0
    path = small_run_copy / "signoff.json"
    record = json.loads(path.read_text())
    record["gate"][CELL] = "SHIP"  # a sign-off claiming a verdict the records do not give
    path.write_text(json.dumps(record))
    rc, text = _verify(small_run_copy, capsys)
    assert rc == 1 and f"verdict: {CELL}: SHIP at sign-off, now INCONCLUSIVE" in text, text


def test_shipping_against_the_gate_is_recorded_as_an_override(small_run_copy: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _sign(small_run_copy, capsys, "--decision", f"ship:{CELL}")
    assert rc == 0 and "goes against the gate (INCONCLUSIVE)" in err
    assert json.loads((small_run_copy / "signoff.json").read_text())["decisions"][0]["overrides_gate"] is True
    assert "overridden by the signer" in (small_run_copy / "report.html").read_text()


@pytest.mark.parametrize("argv, words", [
    (["--decision", "ship-int8_wo-hf"], ["is not ACTION:CELL", "fix: write e.g. ship:fp8-vllm"]),
    (["--decision", "ship:fp8-vllm"], ["'fp8-vllm' is not a candidate cell of this run", "fix: use one of int8_wo-hf"]),
    (["--decision", f"ship:{CELL},block:{CELL}"], ["names 'int8_wo-hf' twice"]),
    (["--by", " "], ["is not a name"]),
])
def test_bad_sign_off_input_is_exit_2_and_writes_nothing(small_run_copy: Path, capsys: pytest.CaptureFixture[str],
                                                         argv: list[str], words: list[str]) -> None:
    before = {p: p.read_bytes() for p in small_run_copy.rglob("*") if p.is_file()}
    rc = main(["sign-off", str(small_run_copy), "--by", "A. Lee", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and all(w in err for w in words), err
    assert {p: p.read_bytes() for p in small_run_copy.rglob("*") if p.is_file()} == before


def test_signing_twice_verifying_unsigned_and_stale_results_are_refused(
        small_run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text = _verify(small_run_copy, capsys)
    assert rc == 2 and "has no signoff.json" in text and "fix: sign it first" in text
    results = json.loads((small_run_copy / "results.json").read_text())
    results["decisions"][0]["verdict"] = "SHIP"  # a report edited by hand (or written by older code)
    (small_run_copy / "results.json").write_text(json.dumps(results))
    rc, _, err = _sign(small_run_copy, capsys)
    assert rc == 2 and "results.json is out of date: it says int8_wo-hf is SHIP" in err and "qeval report" in err
    assert main(["report", str(small_run_copy)]) in (0, 1)
    capsys.readouterr()
    assert _sign(small_run_copy, capsys)[0] == 0
    rc, _, err = _sign(small_run_copy, capsys)
    assert rc == 2 and "is already signed" in err
