"""Bad inputs through the real CLI entry point `qeval.cli.main`: exit code 2, one message naming the problem,
the file or field, and the fix; no traceback; nothing written or removed (nothing computed is lost).

Every row is refused before any model is loaded (validation comes before anything heavy). The first row that
reaches lm-eval's task registry pays for building it once (about 10 s); every other row takes milliseconds.
Bad inputs met only while an engine runs (ports in use, servers that never become healthy, engines that return
malformed output) are in tests/test_openai_backend.py; malformed-suite details in tests/test_suite.py.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from qeval.cli import main

REPO = Path(__file__).parents[1]

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


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _corrupt_run(tmp: Path, manifest: str) -> Path:
    """A run dir whose suite.yaml is fine but whose manifest.json is damaged."""
    run = tmp / "run"
    run.mkdir()
    (run / "suite.yaml").write_bytes((REPO / "suites" / "smoke.yaml").read_bytes())
    (run / "manifest.json").write_text(manifest)
    return run


def _suite(text: str, files: dict[str, str | bytes] | None = None) -> Callable[[Path], list[str]]:
    """argv for `qeval run <tmp>/in/suite.yaml`; `files` are written next to it first ({IN} in the text and
    in file contents becomes that folder's absolute path). --reports-dir is inside tmp: a row that validation
    let through would leave a run directory there, which the test refuses."""
    def build(tmp: Path) -> list[str]:
        folder = tmp / "in"
        folder.mkdir()
        for name, content in (files or {}).items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content.replace("{IN}", str(folder)))
        suite = folder / "suite.yaml"
        suite.write_text(textwrap.dedent(text).replace("{IN}", str(folder)))
        return ["run", str(suite), "--reports-dir", str(tmp / "reports")]
    return build


def _local_model(text_for_source: str) -> str:
    return GOOD.replace("source: smollm2-135m-instruct", f"source: {text_for_source}")


def _unreadable_model(tmp: Path) -> list[str]:
    argv = _suite(_local_model("./model"), {"model/config.json": "{}"})(tmp)
    (tmp / "in" / "model").chmod(0)
    if os.access(tmp / "in" / "model", os.R_OK | os.X_OK):  # root reads through chmod 000
        (tmp / "in" / "model").chmod(0o755)
        pytest.skip("running as a user that chmod 000 does not stop (root)")
    return argv


# A model folder that passes every file check but has no tokenizer (the weights file only needs to hash).
NO_TOKENIZER = {"model/config.json": '{"model_type": "llama", "hidden_size": 576}',
                "model/model.safetensors": b"not really weights"}
EMPTY_CAL = {"cal.yaml": "name: empty\nsource: {kind: text, path: empty.txt}\n", "empty.txt": "\n  \n"}
JSONL_CAL = {"cal.yaml": "name: j\nsource: {kind: jsonl, path: c.jsonl, field: text}\n",
             "c.jsonl": '{"text": "fine"}\n{"body": "no text field"}\n'}
PWNED = "description: !!python/object/apply:os.system ['touch {IN}/PWNED']\n"

# (id, argv builder, fragments expected in stderr)
CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    # -- run directories ------------------------------------------------------------------------------
    ("report-missing-dir", lambda t: ["report", str(t / "nope")], ["not a qeval run directory", "RUN_DIR", "fix:"]),
    ("report-dir-not-a-run", lambda t: ["report", str(_empty(t))], ["no manifest.json", "RUN_DIR", "fix:"]),
    ("compare-missing-dirs", lambda t: ["compare", str(t / "a"), str(t / "b")], ["RUN_A", "not a qeval run", "fix:"]),
    ("resume-missing-dir", lambda t: ["run", "--resume", str(t / "nope")], ["does not exist", "--resume", "fix:"]),
    ("resume-dir-not-a-run", lambda t: ["run", "--resume", str(_empty(t))],
     ["not a qeval run directory", "--resume", "fix:"]),
    ("report-manifest-not-json", lambda t: ["report", str(_corrupt_run(t, "{bad"))],
     ["manifest.json is corrupt", "manifest.json", "fix:"]),
    ("report-manifest-no-suite-hash", lambda t: ["report", str(_corrupt_run(t, "{}"))],
     ["manifest.json is corrupt", "KeyError", "fix:"]),
    ("resume-manifest-not-json", lambda t: ["run", "--resume", str(_corrupt_run(t, "{bad"))],
     ["manifest.json is corrupt", "manifest.json", "fix:"]),
    ("resume-suite-changed", lambda t: ["run", "--resume", str(_corrupt_run(t, '{"suite": {"sha256": "0"}}'))],
     ["the suite changed", "suite.sha256", "start a new run"]),
    # -- the suite file -------------------------------------------------------------------------------
    ("suite-file-missing", lambda t: ["run", str(t / "nosuite.yaml")], ["file not found", "nosuite.yaml", "fix:"]),
    ("suite-yaml-syntax-error", _suite("name: t\ncandidates: [fp8\n"),
     ["suite.yaml", "YAML syntax error at line 3", "fix: check indentation"]),
    ("suite-not-a-mapping", _suite("- just\n- a list\n"), ["suite.yaml", "must be a YAML mapping of fields, got list", "fix:"]),
    ("suite-python-object-tag", _suite(GOOD + PWNED),
     ["suite.yaml", "YAML tag refused at line 9", "python/object/apply:os.system", "fix: remove the tag"]),
    ("unknown-field", _suite(GOOD + "tsks: []\n"), ["field 'tsks'", "did you mean 'tasks'", "allowed fields"]),
    ("unknown-precision", _suite(GOOD.replace("[int8_wo]", "[fp9]")),
     ["field 'candidates'", "unknown precision 'fp9'", "did you mean 'fp8'"]),
    ("unknown-backend", _suite(GOOD.replace("[hf]", "[vlm]")),
     ["field 'backends'", "unknown backend 'vlm'", "did you mean 'vllm'", "fix: use one of"]),
    ("baseline-among-candidates", _suite(GOOD.replace("[int8_wo]", "[int8_wo, bf16]")),
     ["field 'candidates'", "baseline 'bf16' is also listed", "fix: remove it"]),
    ("duplicate-task", _suite(GOOD.replace("calibration:", "  - {name: bigbench_mc_physics, limit: 5}\ncalibration:")),
     ["field 'tasks'", "'bigbench_mc_physics' is listed twice", "fix: list each one once"]),
    ("limit-zero", _suite(GOOD.replace("limit: 10", "limit: 0")),
     ["field 'tasks[0].limit'", "greater than 0", "fix: use a number > 0"]),
    ("gate-alpha-above-range", _suite(GOOD + "gate: {alpha: 1.5}\n"),
     ["field 'gate.alpha'", "(got 1.5)", "fix: use a number <= 0.25"]),
    ("gate-alpha-zero", _suite(GOOD + "gate: {alpha: 0}\n"), ["field 'gate.alpha'", "fix: use a number > 0"]),
    ("latency-concurrency-zero", _suite(GOOD + "latency: {concurrency: [0]}\n"),
     ["field 'latency.concurrency[0]'", "fix: use a number > 0"]),
    ("server-endpoint-not-http", _suite(GOOD + "server: {endpoints: {int8_wo: 'ftp://10.0.0.5'}}\n"),
     ["field 'server.endpoints'", "'ftp://10.0.0.5'", "not an http(s) URL", "fix: write the server's base URL"]),
    ("server-port-out-of-range", _suite(GOOD + "server: {port: 70000}\n"),
     ["field 'server.port'", "fix: use a number <= 65535"]),
    ("trust-remote-code-string", _suite(GOOD.replace("dtype: bfloat16", "dtype: bfloat16, trust_remote_code: 'yes'")),
     ["field 'model.trust_remote_code'", "fix: use true or false"]),
    # -- tasks ----------------------------------------------------------------------------------------
    ("unknown-task", _suite(GOOD.replace("bigbench_mc_physics", "bigbench_mc_physix")),
     ["suite.yaml", "tasks[bigbench_mc_physix]", "unknown task 'bigbench_mc_physix'",
      "fix: did you mean bigbench_mc_physics,"]),
    # -- the model folder -----------------------------------------------------------------------------
    ("model-folder-missing", _suite(_local_model("./no/such/model")),
     ["field 'model.source'", "'./no/such/model' does not exist", "fix:"]),
    ("model-source-is-a-file", _suite(_local_model("./weights.bin"), {"weights.bin": b"\0"}),
     ["field 'model.source'", "is a file, not a model folder", "fix:"]),
    ("model-folder-without-config", _suite(_local_model("./model"), {"model/README": "x"}),
     ["field 'model.source'", "has no config.json", "fix: point it at a folder written by save_pretrained"]),
    ("model-config-not-json", _suite(_local_model("./model"), {"model/config.json": "{not json"}),
     ["field 'model.source'", "config.json is not valid JSON", "fix: restore"]),
    ("model-folder-unreadable", _unreadable_model, ["field 'model.source'", "not readable", "fix: give this user"]),
    ("model-folder-without-weights", _suite(_local_model("./model"), {"model/config.json": "{}"}),
     ["has no weight files", "fix: point model.source"]),
    ("model-folder-without-tokenizer", _suite(_local_model("./model"), NO_TOKENIZER),
     ["field 'model.source'", "cannot load a tokenizer", "fix: point it at a folder with the tokenizer files"]),
    ("block-size-does-not-divide-width", _suite(GOOD.replace("[int8_wo]", "[int8_wo, int4_awq]")),
     ["field 'candidates[1]'", "int4_awq", "hidden_size=576", "fix: use 'int4_awq_g64'"]),
    # -- calibration ----------------------------------------------------------------------------------
    ("calibration-missing", _suite(GOOD.replace("calibration: bigbench-mixed\n", "")),
     ["field 'calibration'", "names no calibration set", "fix: add e.g. `calibration: bigbench-mixed`"]),
    ("calibration-unknown", _suite(GOOD.replace("bigbench-mixed", "no-such-set")),
     ["suite.yaml", "field 'calibration'", "'no-such-set' not found", "fix: use one of bigbench-mixed"]),
    ("calibration-empty-set", _suite(GOOD.replace("bigbench-mixed", "{IN}/cal.yaml"), EMPTY_CAL),
     ["cal.yaml: field 'source.path'", "empty.txt has no text", "fix: point it at a file with"]),
    ("calibration-jsonl-without-field", _suite(GOOD.replace("bigbench-mixed", "{IN}/cal.yaml"), JSONL_CAL),
     ["cal.yaml: field 'source.field'", "line 2 of", "no 'text' text field", "fix:"]),
    ("calibration-overlaps-eval-task", _suite(GOOD.replace("bigbench_mc_physics", "bigbench_mc_strategyqa")),
     ["bigbench-mixed.yaml: field 'source.tasks'", "also an evaluation task", "fix: remove bigbench_mc_strategyqa"]),
]


@pytest.fixture(autouse=True)
def _nothing_heavy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that validation let through must fail here, not start computing cells."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input reached run_cell: validation let it through")
    monkeypatch.setattr("qeval.runner.run_cell", refuse)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: Callable[[Path], list[str]],
                   fragments: list[str]) -> None:
    args = argv(tmp_path)
    after_setup = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("qeval: error: ") and "fix:" in err, err
    for fragment in fragments:
        assert fragment.replace("{IN}", str(tmp_path / "in")) in err, (fragment, err)
    # Nothing written or removed by a refused command (and a refused YAML tag ran nothing: no PWNED file).
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == after_setup
