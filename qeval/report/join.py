"""`qeval report SPEED_RUN --quality-from QUALITY_RUN`: one quality-versus-speed view from two runs.

A speed-only run (qeval.speed_only: a published architecture's shape, synthetic weights) measures the
speed of each precision at a realistic size and has no quality; a quality run on real weights has the
quality evidence, and its speed, on a small model, says little. The join pairs them per precision and
engine (the same precision name on the same backend, e.g. fp8 on vllm):

- speed: the speed run's throughput speed-up over its baseline with its CI (qeval.report.speed, the
  Pareto view's metric at the highest measured load), and the speed-up at every load point;
- quality: the quality run's pooled paired delta, mean KL on held-out text and its verdict, as that
  run's own gate gives them (both runs are gated as `qeval report` gates them; the join decides nothing).

Each axis says where it came from (run id, model, real or synthetic weights, hardware from each
manifest). A precision x engine in only one run, or in both but without a speed-up or quality
evidence on one side, or with a recipe that differs between the runs, is listed with the reason.

Refused (QevalError, exit 2): a directory that is not a qeval run, the same run twice, a quality run
whose weights are synthetic, different baselines, and a pair with nothing to join.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qeval.errors import QevalError
from qeval.report.speed import PARETO_METRIC, SPEEDUP_METRICS, mark_fronts, top_speedup

JOIN_SCHEMA = "qeval.join/1"
JOIN_FILE = "quality-join.json"
FIELD = "--quality-from"
CAVEAT = ("Speed and quality come from different runs and are paired by precision name and engine only: a "
          "kernel's speed does not depend on the weights' values, so synthetic weights time it honestly, but a "
          "format's quality can depend on the model (size, architecture), so the quality shown is the quality "
          "run's model's, not the speed run's")


def axis_source(join: dict[str, Any], side: str) -> str:
    """Where one axis of a joined plot comes from, in two short lines (side: "speed" or "quality")."""
    f = join[side]
    at = f" at {', '.join(join['loads'])}" if side == "speed" and join.get("loads") else ""
    return f"{side} run {f['run_id']}{at}\n{f['model']}, {f['weights']} weights, {f['hardware']}"


def check_run_dir(path: Path, field: str) -> Path:
    if not (path / "manifest.json").is_file():
        raise QevalError(f"{path} is not a qeval run directory (no manifest.json)", field=field,
                         fix="pass a directory that `qeval run` created under reports/")
    return path


def _hardware(manifest: dict[str, Any]) -> str:
    hw = manifest.get("hardware") or {}
    gpus = hw.get("gpus") or []
    if gpus:
        counted: dict[str, int] = {}
        for g in gpus:
            counted[g] = counted.get(g, 0) + 1
        return ", ".join(f"{n}x {g}" if n > 1 else g for g, n in counted.items())
    cores = f", {hw['cpu_count']} cores" if hw.get("cpu_count") else ""
    return f"{hw.get('processor') or 'unknown CPU'}{cores} (no GPU)"


def run_facts(results: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Where one side's numbers come from, from its manifest."""
    m = results["manifest"]
    speed_only = m.get("speed_only") or None
    source = (m.get("model") or {}).get("source", "unknown")
    model = f"{speed_only['shape']} shape" if speed_only else source
    from qeval.speed_only import LABEL

    cells = results.get("cells") or []
    synthetic = bool(speed_only) or bool(cells) and all(c.get("label") == LABEL for c in cells)
    return {"run_id": results["run"]["id"], "dir": str(run_dir), "created": results["run"]["created"],
            "suite": results["suite"]["name"], "model": model, "model_source": source,
            "model_sha256": (m.get("model") or {}).get("sha256"),
            "weights": "synthetic" if synthetic else "real", "hardware": _hardware(m),
            "gpus": list((m.get("hardware") or {}).get("gpus") or []),
            "processor": (m.get("hardware") or {}).get("processor"),
            "qeval_commit": m.get("qeval_commit"), "baseline": results["suite"]["baseline"]}


def _plan(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(candidate, backend) -> the matrix entry (cell_id, verdict, label, summary), plan order."""
    return {(row["candidate"], e["backend"]): e for row in results["matrix"]["rows"] for e in row["cells"]}


def _recipe(results: dict[str, Any], precision: str) -> Any:
    """What a precision name stands for in a run: its custom recipe, else its recorded recipe hash, else None."""
    for spec in results["suite"].get("recipes") or []:
        if spec.get("name") == precision:
            return {k: v for k, v in spec.items() if k != "description"}
    return ((results["manifest"].get("identity") or {}).get(f"recipe.{precision}"))


def _recipe_problem(speed: dict[str, Any], quality: dict[str, Any], precision: str) -> str | None:
    a, b = _recipe(speed, precision), _recipe(quality, precision)
    if isinstance(a, dict) or isinstance(b, dict):  # a custom recipe on either side: the definitions must agree
        if a != b:
            return (f"the name {precision} is a different recipe in each run (speed run: "
                    f"{json.dumps(a, sort_keys=True)}; quality run: {json.dumps(b, sort_keys=True)})")
        return None
    if a is not None and b is not None and a != b:
        return (f"the {precision} recipe changed between the runs (recorded recipe hash {str(a)[:12]} in the speed "
                f"run, {str(b)[:12]} in the quality run)")
    return None


def _speed_how(speed: dict[str, Any], precision: str) -> str | None:
    route = ((speed["manifest"].get("speed_only") or {}).get("routes") or {}).get(precision) or {}
    return route.get("how")


def _quality_how(quality: dict[str, Any], cell_id: str, precision: str, backend: str) -> str:
    """How the quality run built a cell: its label, and vLLM's online quantization or the precision's recipe."""
    cell = next((c for c in quality["cells"] if c["id"] == cell_id), None) or {}
    online = backend == "vllm" and precision in (quality["suite"].get("vllm_online") or [])
    how = (f"vLLM online quantization of the real bf16 weights (suite vllm_online; {precision})" if online
           else cell.get("description") or precision)
    return f"{cell.get('label') or 'unknown'}: {how}"


def _by_load(decision: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"load": s["load"], "concurrency": s.get("concurrency"), "request_rate": s.get("request_rate"),
             "estimate": s["estimate"], "ci": s["ci"]}
            for s in ((decision or {}).get("latency") or {}).get("speedups", []) if s["metric"] == PARETO_METRIC]


def _cell_problem(results: dict[str, Any], cell_id: str) -> str:
    cell = next((c for c in results["cells"] if c["id"] == cell_id), None)
    if cell is None:
        return "no such cell"
    cause = cell.get("cause") or cell.get("reason")
    return f"cell {cell_id} {cell['state']}" + (f" ({cause})" if cause else "")


def _only_in(other: dict[str, Any], cand: str, backend: str, other_name: str) -> str:
    precisions = {c for c, _ in _plan(other)}
    if cand not in precisions:
        return f"{cand} is not a precision of the {other_name} run"
    backends = ", ".join(other["matrix"]["backends"])
    return f"the {other_name} run has {cand} but not on {backend} (its backends: {backends})"


def build_join(speed: dict[str, Any], quality: dict[str, Any], speed_dir: Path, quality_dir: Path) -> dict[str, Any]:
    """The joined Pareto view (a `pareto` object of results.json plus `join`), from both runs' results.

    Args:
        speed: build_results of the run whose speed-ups are plotted.
        quality: build_results of the run whose quality evidence is plotted (real weights).
        speed_dir, quality_dir: their directories (shown, and recorded in the join).

    Raises:
        QevalError: the quality run has synthetic weights, the baselines differ, or nothing joins.
    """
    sf, qf = run_facts(speed, speed_dir), run_facts(quality, quality_dir)
    if qf["weights"] == "synthetic":
        swap = "" if sf["weights"] == "synthetic" else (
            f"; to plot {sf['run_id']}'s quality against these speed-ups, swap them: "
            f"qeval report {quality_dir} --quality-from {speed_dir}")
        raise QevalError(f"run {qf['run_id']} has synthetic weights (speed only): it has no quality to join",
                         file=str(quality_dir), field=FIELD,
                         fix=f"pass a run on real weights (e.g. of suites/gpu/smoke.yaml) as {FIELD}{swap}")
    if sf["baseline"] != qf["baseline"]:
        raise QevalError(f"the runs have different baselines: {sf['run_id']} is measured against {sf['baseline']}, "
                         f"{qf['run_id']} against {qf['baseline']}, so a speed-up and a quality delta would not share "
                         "a reference", file=str(quality_dir), field=FIELD,
                         fix=f"join a quality run whose baseline is {sf['baseline']}")
    sp, qp = _plan(speed), _plan(quality)
    s_dec = {(d["candidate"], d["backend"]): d for d in speed["decisions"]}
    q_dec = {(d["candidate"], d["backend"]): d for d in quality["decisions"]}
    q_cells = {c["id"]: c for c in quality["cells"]}
    points, unmatched = [], []
    for key in list(sp) + [k for k in qp if k not in sp]:
        cand, be = key
        if key not in qp:
            unmatched.append({"candidate": cand, "backend": be, "in": "speed run only",
                              "reason": _only_in(quality, cand, be, "quality")})
            continue
        if key not in sp:
            unmatched.append({"candidate": cand, "backend": be, "in": "quality run only",
                              "reason": _only_in(speed, cand, be, "speed")})
            continue
        why = []
        recipe = _recipe_problem(speed, quality, cand)
        if recipe:
            why.append(recipe)
        sd, qd = s_dec.get(key), q_dec.get(key)
        top = top_speedup(sd) if sd else None
        if top is None:
            why.append(f"the speed run has no {PARETO_METRIC} speed-up for it ("
                       + (f"{_cell_problem(speed, sp[key]['cell_id'])}" if not sd else
                          ((sd.get("latency") or {}).get("note") or "no latency record")) + ")")
        pooled = (qd or {}).get("pooled") or {}
        heldout = ((q_cells.get(qp[key]["cell_id"]) or {}).get("divergence") or {}).get("heldout") or {}
        if qd is None or (pooled.get("estimate_pts") is None and heldout.get("kld_mean") is None):
            why.append("the quality run has no quality evidence for it ("
                       + _cell_problem(quality, qp[key]["cell_id"]) + ")")
        if why:
            unmatched.append({"candidate": cand, "backend": be, "in": "both runs", "reason": "; ".join(why),
                              "speed_verdict": sp[key]["verdict"], "quality_verdict": qp[key]["verdict"]})
            continue
        assert sd is not None and qd is not None and top is not None
        points.append({
            "cell_id": sd["cell_id"], "candidate": cand, "backend": be, "verdict": qd["verdict"], "label": qd["label"],
            "load": top["load"], "speedup": top["estimate"], "speedup_ci": top["ci"],
            "delta_pts": pooled.get("estimate_pts"), "delta_ci_pts": pooled.get("ci_pts"), "pooled_n": pooled.get("n"),
            "kld": heldout.get("kld_mean"), "kld_ci": heldout.get("kld_mean_ci"),
            "speed_cell_id": sd["cell_id"], "quality_cell_id": qd["cell_id"], "speed_verdict": sd["verdict"],
            "speed_label": sd["label"], "speed_how": _speed_how(speed, cand),
            "quality_how": _quality_how(quality, qd["cell_id"], cand, be), "quality_summary": qd["summary"],
            "speedups_by_load": _by_load(sd)})
    if not points:
        listed = "; ".join(f"{u['candidate']} on {u['backend']}: {u['reason']}" for u in unmatched) or "no candidates"
        raise QevalError(f"nothing to join: no precision and engine has both a speed-up in run {sf['run_id']} and "
                         f"quality evidence in run {qf['run_id']} ({listed})", file=str(quality_dir), field=FIELD,
                         fix="join runs that share a precision on the same backend (e.g. a speed-only run of "
                             "suites/gpu/speed-8b.yaml with a quality run of suites/gpu/smoke.yaml, both on vllm), "
                             "the speed run first")
    for be in sorted({p["backend"] for p in points}):
        points.append({"cell_id": f"{sf['baseline']}-{be}", "candidate": sf["baseline"], "backend": be,
                       "verdict": "BASELINE", "label": "baseline", "load": None, "speedup": 1.0, "speedup_ci": None,
                       "delta_pts": 0.0, "delta_ci_pts": None, "pooled_n": None, "kld": 0.0, "kld_ci": None,
                       "speed_cell_id": f"{sf['baseline']}-{be}", "quality_cell_id": f"{qf['baseline']}-{be}",
                       "speed_verdict": "BASELINE", "speed_label": "baseline", "speed_how": None, "quality_how": None,
                       "quality_summary": None, "speedups_by_load": []})
    mark_fronts(points)
    same_hw = (sf["gpus"], sf["processor"]) == (qf["gpus"], qf["processor"])
    label = dict((m, lbl) for m, _, lbl in SPEEDUP_METRICS)[PARETO_METRIC]
    loads = sorted({p["load"] for p in points if p["load"]})
    return {
        "schema": JOIN_SCHEMA, "speed_metric": PARETO_METRIC, "speed_label": label, "points": points, "note": None,
        "join": {
            "speed": sf, "quality": qf, "same_hardware": same_hw,
            "hardware_note": (f"Same hardware: {sf['hardware']}" if same_hw else
                              f"Different hardware: speed on {sf['hardware']}, quality on {qf['hardware']}"),
            "axes": {"speed": f"speed run {sf['run_id']}: {sf['model']}, {sf['weights']} weights, {sf['hardware']}",
                     "quality": f"quality run {qf['run_id']}: {qf['model']}, {qf['weights']} weights, "
                                f"{qf['hardware']}"},
            "loads": loads, "caveat": CAVEAT, "unmatched": unmatched,
        },
    }


def join_runs(speed_dir: Path, quality_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the speed run's own results, the joined Pareto view). Reads the quality run; writes nothing into it."""
    from qeval.report.results import build_results

    check_run_dir(speed_dir, "RUN_DIR")
    check_run_dir(quality_dir, FIELD)
    if speed_dir.resolve() == quality_dir.resolve():
        raise QevalError(f"{FIELD} names the run being reported ({speed_dir}): a run cannot be joined with itself",
                         field=FIELD, fix="pass a different run on real weights, or drop --quality-from")
    speed = build_results(speed_dir)
    return speed, build_join(speed, build_results(quality_dir), speed_dir, quality_dir)
