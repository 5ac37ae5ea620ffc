"""Bad inputs beyond malformed suite YAML, through the real CLI entry point: exit code 2 and a message
naming the problem, the file or field, and the fix; nothing computed is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from qeval.cli import main


def _setup_empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _corrupt_run(tmp: Path, manifest: str) -> Path:
    """A run dir whose suite.yaml is fine but whose manifest.json is damaged."""
    run = tmp / "run"
    run.mkdir()
    (run / "suite.yaml").write_bytes((Path(__file__).parents[1] / "suites" / "smoke.yaml").read_bytes())
    (run / "manifest.json").write_text(manifest)
    return run


# (id, argv builder, fragments expected in stderr)
CASES = [
    ("report-missing-dir", lambda t: ["report", str(t / "nope")], ["not a qeval run directory", "RUN_DIR", "fix:"]),
    ("report-dir-not-a-run", lambda t: ["report", str(_setup_empty(t))], ["no manifest.json", "RUN_DIR", "fix:"]),
    ("compare-missing-dirs", lambda t: ["compare", str(t / "a"), str(t / "b")], ["RUN_A", "not a qeval run", "fix:"]),
    ("resume-missing-dir", lambda t: ["run", "--resume", str(t / "nope")], ["does not exist", "--resume", "fix:"]),
    ("resume-dir-not-a-run", lambda t: ["run", "--resume", str(_setup_empty(t))],
     ["not a qeval run directory", "--resume", "fix:"]),
    ("report-manifest-not-json", lambda t: ["report", str(_corrupt_run(t, "{bad"))],
     ["manifest.json is corrupt", "manifest.json", "fix:"]),
    ("report-manifest-no-suite-hash", lambda t: ["report", str(_corrupt_run(t, "{}"))],
     ["manifest.json is corrupt", "KeyError", "fix:"]),
    ("resume-manifest-not-json", lambda t: ["run", "--resume", str(_corrupt_run(t, "{bad"))],
     ["manifest.json is corrupt", "manifest.json", "fix:"]),
    ("suite-file-missing", lambda t: ["run", str(t / "nosuite.yaml")], ["file not found", "nosuite.yaml", "fix:"]),
]


@pytest.mark.parametrize("argv, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(tmp_path: Path, capsys, argv, fragments: list[str]) -> None:
    args = argv(tmp_path)
    after_setup = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    # Nothing written or removed by a refused command.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == after_setup
