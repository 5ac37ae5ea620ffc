"""Which artifact produced which records, and the report's check that the pairing is between those the manifest
names.

Before any cell runs, the manifest names each planned cell's artifact (`artifacts`: cell id -> kind and key):
the baseline's weights hash, the ModelOpt fake-quant or checkpoint key of the artifact cache (the same function
that builds it computes it), vLLM's online quantization of the weights, an endpoint, or the content hash of an
external checkpoint folder (qeval.checkpoints). The run store stamps
every record a cell writes (per-sample records, status, divergence, latency) with that key (`artifact_key`).
`qeval report` reads the stamps back: a candidate whose records, or whose baseline's records, came from
another artifact than the manifest names (a run directory stitched from two runs, records copied in, a resume
across a change nobody vouched for) is an ERROR with the reason, never a paired comparison.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from qeval.errors import QevalError
from qeval.store import RunStore, read_jsonl

STAMP = "artifact_key"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def planned_artifact(ctx: Any, cell: Any) -> dict[str, Any]:
    """The artifact that will produce `cell`'s records: {"kind", "key"} (key None, with a note, where it cannot
    be known before the cell runs)."""
    from qeval.quantize import artifact_key_for

    suite = ctx.suite
    endpoint = suite.server.endpoints.get(cell.precision) if cell.backend == "openai" else None
    if endpoint:  # what a running server serves is not ours to hash: its URL names it
        return {"kind": "endpoint", "key": _hash({"endpoint": endpoint, "model": suite.server.model_name})}
    if cell.is_baseline:
        return {"kind": "model weights", "key": ctx.model_hash}
    from qeval import checkpoints

    if checkpoints.is_external(cell.precision):  # the user's own folder: its content hash, whatever the engine
        record = checkpoints.artifact(cell.precision)
        return {"kind": record["kind"], "key": record["key"]}
    if cell.backend != "hf" and cell.precision in suite.vllm_online:
        from qeval import precisions

        online = precisions.get(cell.precision).vllm.online
        return {"kind": "vllm online quantization", "key": _hash({"weights": ctx.model_hash, "load": online})}
    from qeval import precisions
    from qeval.quantize import KINDS

    entry = precisions.get(cell.precision)
    engine_format = entry.vllm.checkpoint_format if cell.backend in ("vllm", "openai") else "modelopt"
    kind = "modelopt-fakequant" if cell.backend == "hf" else KINDS[engine_format]
    try:
        return {"kind": kind, "key": artifact_key_for(ctx, cell.precision, kind)}
    except QevalError as err:  # e.g. no calibration set: the cell fails when it builds, with this reason
        return {"kind": kind, "key": None, "note": err.problem}
    except Exception as exc:  # noqa: BLE001 - a recipe that cannot build fails in its own cell (ERROR), not here
        return {"kind": kind, "key": None, "note": f"{type(exc).__name__}: {exc}"}


def planned_artifacts(ctx: Any, cells: Iterable[Any]) -> dict[str, dict[str, Any]]:
    return {cell.id: planned_artifact(ctx, cell) for cell in cells}


def merge_on_resume(recorded: dict[str, Any] | None, now: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The manifest's artifacts after a resume: the key now, and earlier keys kept as `accepted` (the resume
    that changed them was allowed, so their records stand)."""
    out = {}
    for cell, entry in now.items():
        before = (recorded or {}).get(cell) or {}
        accepted = list(before.get("accepted", []))
        if before.get("key") and before.get("key") != entry.get("key") and before["key"] not in accepted:
            accepted.append(before["key"])
        out[cell] = {**entry, **({"accepted": accepted} if accepted else {})}
    return out


def _stamps(store: RunStore, cell: str) -> dict[str, list[str]]:
    """stamp -> the record files carrying it ('' for records without a stamp)."""
    found: dict[str, list[str]] = {}
    base = store.root / "cells" / cell
    files = sorted((base / "samples").glob("*.jsonl")) if (base / "samples").is_dir() else []
    for path in files:
        for stamp in {r.get(STAMP, "") for r in read_jsonl(path)}:
            found.setdefault(stamp, []).append(str(path.relative_to(store.root)))
    for name in ("status.json", "divergence.json", "latency.json"):
        record = store.read_json(cell, name)
        if isinstance(record, dict):
            found.setdefault(record.get(STAMP, ""), []).append(f"cells/{cell}/{name}")
    return found


def check(run_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Cells whose records do not come from the artifact the manifest names: cell id -> why.

    A manifest without `artifacts` (a run older than this check) is not checked.
    """
    planned = manifest.get("artifacts")
    if not isinstance(planned, dict):
        return {}
    store = RunStore(run_dir)
    problems = {}
    for cell, entry in planned.items():
        key = entry.get("key") if isinstance(entry, dict) else None
        if key is None or not (store.root / "cells" / cell).is_dir():
            continue
        accepted = {key, *entry.get("accepted", [])}
        foreign = {s: files for s, files in _stamps(store, cell).items() if s not in accepted}
        built = ((store.read_json(cell, "status.json") or {}).get("artifact") or {}).get("key")
        if built and built not in accepted:  # the cell's own account of what it loaded
            foreign.setdefault(built, []).append(f"cells/{cell}/status.json (artifact.key)")
        if foreign:
            stamp, files = sorted(foreign.items())[0]
            what = "carry no artifact key" if stamp == "" else f"come from artifact {stamp[:12]}"
            problems[cell] = (f"records of {cell} ({', '.join(files[:2])}{' ...' if len(files) > 2 else ''}) "
                              f"{what}, but the manifest names {entry.get('kind')} {key[:12]}: they were not "
                              "produced by this run's artifact")
    return problems
