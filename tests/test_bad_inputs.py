"""Bad inputs through the real CLI entry point `qeval.cli.main`: exit code 2, one message naming the problem,
the file or field, and the fix; no traceback; nothing written or removed (nothing computed is lost).

Every row is refused before any model is loaded (validation comes before anything heavy). The first row that
reaches lm-eval's task registry pays for building it once (about 10 s); every other row takes milliseconds.
Bad inputs met only while an engine runs (ports in use, servers that never become healthy, engines that return
malformed output) are in tests/test_openai_backend.py; malformed-suite details in tests/test_suite.py.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import textwrap
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
from mc_items import FIXTURE_TASKS

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
        if "suite.yaml" not in (files or {}):
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


_HELD: list[socket.socket] = []  # sockets a row keeps open while the CLI runs (closed after each test)


def _busy_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    _HELD.append(s)
    return int(s.getsockname()[1])


def _port_in_use(tmp: Path) -> list[str]:
    served = GOOD.replace("[hf]", "[openai]") + f"server: {{port: {_busy_port()}}}\n"
    return _suite(served)(tmp)


def _reports_in(tmp: Path, reports: str) -> list[str]:
    argv = _suite(GOOD)(tmp)
    (tmp / "file").write_text("not a directory")
    return [*argv[:-1], str(tmp / reports)]


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
    ("suite-is-a-directory", lambda t: ["run", str(_empty(t))], ["cannot read it as a text file", "fix:"]),
    ("suite-not-utf8", _suite("", {"suite.yaml": b"\xff\xfe\x00binary"}),
     ["suite.yaml", "UnicodeDecodeError", "fix: pass a readable UTF-8 YAML file"]),
    ("reports-dir-is-a-file", lambda t: _reports_in(t, "file"),
     ["field '--reports-dir'", "is a file, not a directory", "fix:"]),
    ("reports-dir-under-a-file", lambda t: _reports_in(t, "file/reports"),
     ["field '--reports-dir'", "cannot create the run directory", "fix: choose a reports directory"]),
    ("suite-yaml-syntax-error", _suite("name: t\ncandidates: [fp8\n"),
     ["suite.yaml", "YAML syntax error at line 3", "fix: check indentation"]),
    ("suite-not-a-mapping", _suite("- just\n- a list\n"), ["suite.yaml", "must be a YAML mapping of fields, got list", "fix:"]),
    ("suite-python-object-tag", _suite(GOOD + PWNED),
     ["suite.yaml", "YAML tag refused at line 9", "python/object/apply:os.system", "fix: remove the tag"]),
    ("suite-name-escapes-reports-dir", _suite(GOOD.replace("name: t", "name: ../../../escaped")),
     ["suite.yaml: field 'name'", "suite name '../../../escaped' cannot be used in a file name",
      "fix: use letters, digits"]),
    ("suite-name-absolute", _suite(GOOD.replace("name: t", "name: /tmp/qeval-escaped")),
     ["field 'name'", "path separator", "fix: use letters, digits"]),
    ("task-name-with-separator", _suite(GOOD.replace("bigbench_mc_physics", "../bigbench_mc_physics")),
     ["field 'tasks'", "task name (tasks[0].name) '../bigbench_mc_physics' cannot be used in a file name", "fix:"]),
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
    ("unknown-metric", _suite(GOOD.replace("limit: 10", "limit: 10, metric: accuracy")),
     ["suite.yaml", "field 'tasks[0].metric'", "no per-sample metric 'accuracy'", "fix: use one of acc, acc_norm"]),
    # -- servers --------------------------------------------------------------------------------------
    ("server-port-in-use", _port_in_use,
     ["suite.yaml", "field 'server.port'", "already in use", "fix: stop what listens there"]),
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


@pytest.fixture
def _nothing_heavy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that validation let through must fail here, not start computing cells."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input reached run_cell: validation let it through")
    monkeypatch.setattr("qeval.runner.run_cell", refuse)


@pytest.fixture(autouse=True)
def _release_sockets() -> None:
    yield
    while _HELD:
        _HELD.pop().close()


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


# Cases about the task pack's own tasks: their message needs the BIG-bench archive.
NEEDS_BIGBENCH = {"unknown-task", "unknown-metric"}


@pytest.mark.usefixtures("_nothing_heavy")
@pytest.mark.parametrize("argv, fragments", [pytest.param(*c[1:], id=c[0], marks=[pytest.mark.bigbench]
                                                          if c[0] in NEEDS_BIGBENCH else [])
                                             for c in CASES])
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


# -- engines that fail once the run has started: exit 2, and what earlier cells computed is kept ---------------

class _Engine(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that lists its model but answers completions with `ANSWER(request)`."""

    ANSWER: Callable[[dict], tuple[int, bytes]] = staticmethod(lambda body: (200, b""))

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, payload: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._send(200, json.dumps({"data": [{"id": "engine"}]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send(*type(self).ANSWER(body))


@pytest.fixture
def engine_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


ENGINE_FAILURES = {
    # a socket that accepts connections and never speaks HTTP
    "endpoint-never-healthy": (None, ["field 'server.endpoints.int8_wo'", "does not answer",
                                      "did not become healthy within 2 s", "fix: start the server"]),
    "engine-answers-non-json": (lambda body: (200, b"<html>oops</html>"), ["non-JSON", "fix:"]),
    "engine-answers-no-choices": (lambda body: (200, b'{"choices": []}'), ["returned 0 choices for", "fix:"]),
    "engine-answers-no-logprobs": (  # one choice per prompt, as it should, but without the scores
        lambda body: (200, json.dumps({"choices": [{"index": i, "text": "x", "logprobs": None}
                                                   for i in range(len(body["prompt"]))]}).encode()),
        ["no per-token prompt log-probabilities", "fix:"]),
    "engine-answers-http-500": (lambda body: (500, b"engine crashed"), ["answered HTTP 500", "fix:"]),
}


@pytest.mark.parametrize("answer, fragments", ENGINE_FAILURES.values(), ids=list(ENGINE_FAILURES))
def test_engine_failure_mid_run_is_exit_2_and_keeps_computed_results(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], engine_url: str,
        answer: Callable[[dict], tuple[int, bytes]] | None,
        fragments: list[str]) -> None:
    """The baseline cell was computed by an earlier run (its records stand in the run dir); the candidate's
    endpoint is broken: `run --resume` stops with exit 2 and a clear message, and the baseline's records are
    untouched."""
    from qeval.store import RunStore

    if answer is None:
        url = f"http://127.0.0.1:{_busy_port()}"
    else:
        _Engine.ANSWER = staticmethod(answer)
        url = engine_url
    suite = tmp_path / "suite.yaml"
    # A task the tests make and a local calibration file: the engine failure needs no BIG-bench archive.
    good = (GOOD.replace("bigbench_mc_physics", "qeval_addition_mc")
            .replace("calibration: bigbench-mixed", f"calibration: local-text\ntask_dirs: [{FIXTURE_TASKS}]"))
    suite.write_text(good.replace("[hf]", "[openai]") + textwrap.dedent(f"""\
        divergence: {{enabled: false}}
        latency: {{enabled: false}}
        server: {{endpoints: {{bf16: "{url}", int8_wo: "{url}"}}, startup_timeout_s: 2}}
        """))
    # First run: the broken engine stops it at its first cell.
    assert main(["run", str(suite), "--reports-dir", str(tmp_path / "reports")]) == 2
    first = capsys.readouterr().err
    assert "Traceback" not in first and all(f in first for f in fragments if "int8_wo" not in f), first
    [run_dir] = list((tmp_path / "reports").iterdir())
    # What an earlier, healthy run of the baseline would have left: finished records of the bf16 cell.
    store = RunStore(run_dir)
    records = [{"doc_id": i, "score": float(i % 2), "metrics": {"acc": float(i % 2)}} for i in range(10)]
    store.write_samples("bf16-openai", "qeval_addition_mc", records)
    store.write_status("bf16-openai", {"state": "ok"})
    kept = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    rc = main(["run", "--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "qeval: error: " in err  # (after lm-eval's progress bars)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    # Nothing computed is lost or rewritten; the failed cell left no status or samples behind.
    assert {p: p.read_bytes() for p in kept} == kept
    assert store.read_status("int8_wo-openai") is None and store.tasks("int8_wo-openai") == []
