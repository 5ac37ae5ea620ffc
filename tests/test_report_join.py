"""`qeval report SPEED_RUN --quality-from QUALITY_RUN`: the quality-versus-speed view joined from two runs.

Both run directories are written the way qeval writes them, no model runs: the quality run is the report
tests' fixture (tests/test_report_rundir.write_run: per-sample records, divergence and latency of a run on
real weights), the speed run is a speed-only run (manifest.speed_only, cells with `weights: synthetic`
and latency.json with per-request samples only, as qeval.speed_only writes them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from qeval.cli import main
from qeval.errors import QevalError
from qeval.manifest import build_manifest
from qeval.report import same_results, write_reports
from qeval.report.join import JOIN_FILE, _recipe_problem, axis_source, build_join
from qeval.report.results import build_results
from qeval.speed_only import LABEL, ROUTES
from qeval.store import RunStore, write_json_atomic
from test_report_rundir import _latency, suite_dict, write_run

SPEED_CANDIDATES = {"fp8": 1.4, "nvfp4": 0.7, "int8_sq": None, "int4_awq": 1.0}  # None: NOT RUN on this machine
QUALITY_CANDIDATES = ("fp8", "nvfp4", "int8_sq", "int8_wo")
GPU = "NVIDIA H200"


def write_speed_run(root: Path, *, seed: int = 3, gpus: tuple[str, ...] = (GPU,)) -> Path:
    """A speed-only run directory (Llama-3.1-8B shape, synthetic weights) as qeval.speed_only writes one."""
    rng = np.random.default_rng(seed)
    suite = {"name": "t-speed-8b", "model": {"dtype": "bfloat16", "max_length": 2048,
                                             "speed_only": {"shape": "llama-3.1-8b"}},
             "baseline": "bf16", "candidates": list(SPEED_CANDIDATES), "backends": ["vllm"],
             "seeds": {"sampling": 1234, "fewshot": 1234, "bootstrap": 0},
             "latency": {"concurrency": [1, 16], "num_requests": 64, "warmup_requests": 4}}
    run_dir = root / "t-speed-8b-20261203-120000"
    run_dir.mkdir(parents=True)
    suite_path = run_dir / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    cells = ["bf16-vllm"] + [f"{p}-vllm" for p in SPEED_CANDIDATES]
    manifest = build_manifest(run_id=run_dir.name, suite_name=suite["name"], suite_path=suite_path,
                              suite_hash=hashlib.sha256(suite_path.read_bytes()).hexdigest(),
                              model_source="speed_only:llama-3.1-8b", model_hash="synthetic:" + "0" * 64,
                              seeds=suite["seeds"], plan=cells)
    manifest["hardware"] = {**manifest["hardware"], "gpus": list(gpus)}
    manifest["speed_only"] = {"label": LABEL, "shape": "llama-3.1-8b", "config": {},
                              "tokenizer": "smollm2-135m-instruct", "load_format": "dummy", "routes": {p: {"how": ROUTES[p].how} for p in SPEED_CANDIDATES}}
    write_json_atomic(run_dir / "manifest.json", manifest)
    store = RunStore(run_dir)
    for precision, speed in {"bf16": 1.0, **SPEED_CANDIDATES}.items():
        cell = f"{precision}-vllm"
        if speed is None:
            store.write_status(cell, {"state": "not_run", "engine": "vllm", "weights": "synthetic", "seconds": 0.1,
                                      "reason": "no INT8 kernels on this device", "fix": "run it on a GPU"})
            continue
        store.write_status(cell, {"state": "ok", "weights": "synthetic", "label": LABEL, "seconds": 90.0,
                                  "kernels": {precision: "real"}, "run_here": True, "notes": LABEL})
        store.write_json(cell, "latency.json", _latency(speed, rng))
    return run_dir


def write_quality_run(root: Path, *, candidates: tuple[str, ...] = QUALITY_CANDIDATES,
                      backends: tuple[str, ...] = ("hf", "vllm"), baseline: str = "bf16") -> Path:
    suite = {**suite_dict("t-quality", candidates=candidates, backends=backends), "baseline": baseline}
    run_dir = write_run(root, suite=suite)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["hardware"] = {**manifest["hardware"], "gpus": [GPU]}
    write_json_atomic(run_dir / "manifest.json", manifest)
    return run_dir


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def point(join: dict, cell_id: str) -> dict:
    return next(p for p in join["points"] if p["cell_id"] == cell_id)


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("join")
    speed, quality = write_speed_run(root / "s"), write_quality_run(root / "q")
    assert main(["report", str(quality)]) == 1  # the quality run's own report (some of its candidates BLOCK)
    plain_code = main(["report", str(speed)])
    plain = json.loads((speed / "results.json").read_text())
    plain_junit = (speed / "junit.xml").read_text()
    quality_before = tree_digest(quality)
    code = main(["report", str(speed), "--quality-from", str(quality)])
    return {"speed": speed, "quality": quality, "code": code, "plain_code": plain_code, "plain": plain,
            "plain_junit": plain_junit, "quality_before": quality_before,
            "quality_results": json.loads((quality / "results.json").read_text()),
            "join": json.loads((speed / JOIN_FILE).read_text()),
            "html": (speed / "report.html").read_text(), "md": (speed / "report.md").read_text()}


def test_each_point_takes_speed_from_the_speed_run_and_quality_from_the_quality_run(joined: dict) -> None:
    j, s, q = joined["join"], joined["plain"], joined["quality_results"]
    assert j["schema"] == "qeval.join/1" and j["speed_metric"] == "output_tok_s" and j["note"] is None
    assert {p["cell_id"] for p in j["points"]} == {"fp8-vllm", "nvfp4-vllm", "bf16-vllm"}
    q_cells = {c["id"]: c for c in q["cells"]}
    for cell in ("fp8-vllm", "nvfp4-vllm"):
        p = point(j, cell)
        own = next(x for x in s["pareto"]["points"] if x["cell_id"] == cell)  # the speed run's own speed-up
        assert (p["speedup"], p["speedup_ci"], p["load"]) == (own["speedup"], own["speedup_ci"], "concurrency 16")
        assert own["delta_pts"] is None and own["kld"] is None  # synthetic weights: no quality of its own
        qd = next(d for d in q["decisions"] if d["cell_id"] == cell)  # the quality run's evidence, as it gated it
        assert (p["verdict"], p["label"]) == (qd["verdict"], qd["label"])
        assert (p["delta_pts"], p["delta_ci_pts"], p["pooled_n"]) == (qd["pooled"]["estimate_pts"],
                                                                      qd["pooled"]["ci_pts"], qd["pooled"]["n"])
        assert (p["kld"], p["kld_ci"]) == (q_cells[cell]["divergence"]["heldout"]["kld_mean"],
                                           q_cells[cell]["divergence"]["heldout"]["kld_mean_ci"])
        assert p["speed_verdict"] == next(d for d in s["decisions"] if d["cell_id"] == cell)["verdict"]
        assert p["speed_how"] == ROUTES[p["candidate"]].how and p["speed_label"] == LABEL
        assert p["quality_how"] == f"{qd['label']}: {q_cells[cell]['description']}"
        assert [b["load"] for b in p["speedups_by_load"]] == ["concurrency 1", "concurrency 16"]
        assert p["speedup_ci"][0] <= p["speedup"] <= p["speedup_ci"][1]
    # The speed-up is the speed run's (fp8 at 1.4x there), not the quality run's own latency (1.55x planted).
    quality_own = next(x for x in q["pareto"]["points"] if x["cell_id"] == "fp8-vllm")["speedup"]
    assert point(j, "fp8-vllm")["speedup"] != quality_own
    assert point(j, "nvfp4-vllm")["speedup_ci"][1] < 1.0 < point(j, "fp8-vllm")["speedup_ci"][0]
    base = point(j, "bf16-vllm")
    assert (base["verdict"], base["speedup"], base["delta_pts"], base["kld"]) == ("BASELINE", 1.0, 0.0, 0.0)
    assert point(j, "fp8-vllm")["front_delta"] and not point(j, "nvfp4-vllm")["front_delta"]


def test_each_axis_names_its_run_model_weights_and_hardware(joined: dict) -> None:
    j = joined["join"]["join"]
    speed_id, quality_id = joined["speed"].name, joined["quality"].name
    assert j["axes"]["speed"] == f"speed run {speed_id}: llama-3.1-8b shape, synthetic weights, {GPU}"
    assert j["axes"]["quality"] == f"quality run {quality_id}: smollm2-135m-instruct, real weights, {GPU}"
    assert (j["speed"]["weights"], j["quality"]["weights"]) == ("synthetic", "real")
    assert j["same_hardware"] and j["hardware_note"] == f"Same hardware: {GPU}"
    for side in ("speed", "quality"):  # in the plot's axis labels, two short lines
        first, second = axis_source(j, side).split("\n")
        at = " at concurrency 16" if side == "speed" else ""
        assert first == f"{side} run {j[side]['run_id']}{at}" and first in joined["html"] and second in joined["html"]
    assert j["axes"]["speed"] in joined["md"] and j["axes"]["quality"] in joined["md"]


def test_what_is_in_one_run_only_is_listed_with_the_reason(joined: dict) -> None:
    un = {(u["candidate"], u["backend"]): u for u in joined["join"]["join"]["unmatched"]}
    assert {k: u["in"] for k, u in un.items()} == {
        ("int8_sq", "vllm"): "both runs",  # NOT RUN in the speed run: matched, but no speed-up
        ("int4_awq", "vllm"): "speed run only",
        ("int8_wo", "vllm"): "quality run only",
        **{(p, "hf"): "quality run only" for p in QUALITY_CANDIDATES}}
    assert "no output_tok_s speed-up" in un[("int8_sq", "vllm")]["reason"]
    assert "not_run" in un[("int8_sq", "vllm")]["reason"] and "no INT8 kernels" in un[("int8_sq", "vllm")]["reason"]
    assert un[("int4_awq", "vllm")]["reason"] == "int4_awq is not a precision of the quality run"
    assert un[("int8_wo", "vllm")]["reason"] == "int8_wo is not a precision of the speed run"
    assert un[("fp8", "hf")]["reason"] == "the speed run has fp8 but not on hf (its backends: vllm)"
    html = joined["html"]
    assert 'id="pareto-join"' in html and 'id="pareto-unmatched"' in html and 'id="pareto-points"' in html
    for cand, be in un:
        assert f'<tr data-candidate="{cand}" data-backend="{be}"><td><b>{cand}</b> on {be}</td><td>' in html
    assert "Not joined: " in joined["md"] and "int4_awq on vllm (speed run only" in joined["md"]


def test_the_join_changes_no_verdict_and_writes_nothing_into_the_quality_run(joined: dict) -> None:
    speed = joined["speed"]
    assert joined["code"] == joined["plain_code"] == 3  # the speed run's own exit: int8_sq NOT RUN, nothing BLOCKed
    now = json.loads((speed / "results.json").read_text())
    assert same_results(now, joined["plain"]) and "join" not in now["pareto"]  # the gate's record is the run's own
    assert (speed / "junit.xml").read_text() == joined["plain_junit"]
    assert tree_digest(joined["quality"]) == joined["quality_before"]


def test_a_plain_report_afterwards_drops_the_join(joined: dict, tmp_path: Path) -> None:
    import shutil

    speed = tmp_path / joined["speed"].name
    shutil.copytree(joined["speed"], speed)
    assert main(["report", str(speed)]) == 3
    html = (speed / "report.html").read_text()
    assert not (speed / JOIN_FILE).exists() and 'id="pareto-join"' not in html
    assert 'id="pareto-join-hint"' in html and "--quality-from" in html


def test_the_plots_draw_the_joined_view_with_its_sources(joined: dict, tmp_path: Path) -> None:
    import shutil

    speed = tmp_path / joined["speed"].name
    shutil.copytree(joined["speed"], speed)
    plots = tmp_path / "plots"
    assert main(["report", str(speed), "--quality-from", str(joined["quality"]), "--plots", str(plots)]) == 3
    svg = (plots / "quality_vs_speed.svg").read_text()
    j = joined["join"]["join"]
    assert "fp8 (vllm)" in svg and "nvfp4 (vllm)" in svg and "int4_awq" not in svg
    for side in ("speed", "quality"):
        assert all(line in svg for line in axis_source(j, side).split("\n"))


def test_different_hardware_is_shown(tmp_path: Path, joined: dict) -> None:
    speed = write_speed_run(tmp_path, gpus=("NVIDIA H100 80GB HBM3",) * 2)
    j = build_join(build_results(speed), joined["quality_results"], speed, joined["quality"])["join"]
    assert not j["same_hardware"]
    assert j["hardware_note"] == f"Different hardware: speed on 2x NVIDIA H100 80GB HBM3, quality on {GPU}"
    assert "2x NVIDIA H100 80GB HBM3" in j["axes"]["speed"]


def test_a_recipe_of_the_same_name_must_be_the_same_recipe() -> None:
    def res(recipes: list, identity: dict) -> dict:
        return {"suite": {"recipes": recipes}, "manifest": {"identity": identity}}

    keep = {"name": "fp8_keep", "base": "fp8", "exclude": ["lm_head"], "description": "a"}
    assert _recipe_problem(res([keep], {}), res([{**keep, "description": "b"}], {}), "fp8_keep") is None
    assert "different recipe" in _recipe_problem(res([keep], {}), res([{**keep, "exclude": []}], {}), "fp8_keep")
    assert "different recipe" in _recipe_problem(res([keep], {}), res([], {}), "fp8_keep")
    assert _recipe_problem(res([], {}), res([], {"recipe.fp8": "abc"}), "fp8") is None  # not recorded on one side
    assert "changed between the runs" in _recipe_problem(res([], {"recipe.fp8": "abc"}),
                                                         res([], {"recipe.fp8": "def"}), "fp8")


# ---------------------------------------------------------------- refusals: exit 2, the run and the fix named

def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "fix:" in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_a_directory_that_is_not_a_run_is_refused(joined: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(capsys, ["report", str(joined["speed"]), "--quality-from", str(empty)],
             f"{empty} is not a qeval run directory", "--quality-from")
    _refused(capsys, ["report", str(joined["speed"]), "--quality-from", str(tmp_path / "missing")],
             "is not a qeval run directory")
    _refused(capsys, ["report", str(empty), "--quality-from", str(joined["quality"])],
             f"{empty} is not a qeval run directory", "RUN_DIR")
    _refused(capsys, ["report", str(joined["speed"]), "--quality-from", str(joined["speed"])],
             "cannot be joined with itself")


def test_a_quality_run_with_synthetic_weights_is_refused_and_the_swap_named(
        joined: dict, capsys: pytest.CaptureFixture[str]) -> None:
    speed, quality = joined["speed"], joined["quality"]
    err = _refused(capsys, ["report", str(quality), "--quality-from", str(speed)],
                   f"run {speed.name} has synthetic weights", str(speed), "swap them",
                   f"qeval report {speed} --quality-from {quality}")
    assert "--quality-from" in err


def test_nothing_to_join_and_different_baselines_are_refused(tmp_path: Path, joined: dict,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    other = write_quality_run(tmp_path / "a", candidates=("int8_wo",), backends=("hf", "vllm"))
    err = _refused(capsys, ["report", str(joined["speed"]), "--quality-from", str(other)],
                   "nothing to join", joined["speed"].name, other.name, str(other))
    assert "int8_wo on vllm: int8_wo is not a precision of the speed run" in err
    assert "int4_awq on vllm: int4_awq is not a precision of the quality run" in err
    fp8_base = write_quality_run(tmp_path / "b", candidates=("nvfp4",), backends=("vllm",), baseline="fp8")
    _refused(capsys, ["report", str(joined["speed"]), "--quality-from", str(fp8_base)],
             "different baselines", "against bf16", "against fp8", "whose baseline is bf16")
    assert not list(joined["speed"].glob("*.tmp"))
    with pytest.raises(QevalError):  # the library raises what the CLI prints
        build_join(joined["plain"], build_results(other), joined["speed"], other)


def test_chromium_renders_the_joined_report(joined: dict, tmp_path: Path) -> None:
    from test_report_browser import CHROMIUM, chromium, console_messages

    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    dom = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", (joined["speed"] / "report.html").as_uri()],
                   tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    for element in ('id="pareto-join"', 'id="pareto-sources"', 'id="pareto-points"', 'id="pareto-unmatched"'):
        assert element in dom.stdout
    assert 'aria-label="Quality versus speed-up per candidate, with the Pareto front"' in dom.stdout
    assert dom.stdout.count('data-verdict="') == 3  # the speed run's own decisions (int8_sq: NOT RUN, no row)
