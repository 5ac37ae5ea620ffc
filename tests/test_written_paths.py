"""Every file a real run writes is under its run directory or the qeval cache.

One real `qeval run` (tests/conftest.py: small_run, SmolLM2-135M on the hf backend, int8_wo, one task,
divergence and latency on) runs in a subprocess under a Python audit hook (tests/audited.py) that records every
path opened for writing, renamed to, created, truncated or removed, by qeval or any library it calls, with HOME
and TMPDIR pointing into a sandbox. Allowed: the run directory, the qeval cache, the folders above the run
directory that `--reports-dir` names (created, nothing written in them), /dev/null, and temporary files that no
longer exist once the run is over. The sandboxed HOME and TMPDIR are then walked for anything left behind (which
also catches writes made from C, which raise no audit event).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import SmallRun

pytestmark = pytest.mark.slow


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def test_every_written_path_is_under_the_run_directory_or_the_cache(small_run: SmallRun) -> None:
    run_dir, cache = _real(small_run.run_dir), _real(small_run.cache)
    above = {p for p in run_dir.parents if _inside(p, _real(small_run.root))}  # --reports-dir and its parents
    outside = []
    for event, raw in small_run.events:
        path = _real(raw)
        if _inside(path, run_dir) or _inside(path, cache) or path == Path("/dev/null"):
            continue
        if event == "os.mkdir" and path in above:
            continue
        if _inside(path, _real(small_run.tmp)) and not path.exists():
            continue  # a temporary file, gone once the run is over
        outside.append((event, raw))
    assert small_run.events, "the audit hook saw no writes at all"
    assert not outside, f"{len(outside)} writes outside the run directory and the cache: {outside[:20]}"
    # What a run writes lands where it should: records, reports, and the run's share of the cache.
    written = {_real(p) for _, p in small_run.events}
    for name in ("manifest.json", "suite.yaml", "results.json", "report.html", "report.md", "junit.xml",
                 "cells/int8_wo-hf/samples/qeval_addition_mc.jsonl", "cells/int8_wo-hf/status.json",
                 "cells/int8_wo-hf/divergence.json", "cells/int8_wo-hf/latency.json"):
        assert (small_run.run_dir / name).is_file(), name
    assert any(_inside(p, run_dir / "cells") for p in written)


def test_nothing_is_left_in_the_sandboxed_home_or_temp_folder(small_run: SmallRun) -> None:
    left = [str(p.relative_to(small_run.root)) for base in (small_run.home, small_run.tmp) for p in base.rglob("*")]
    assert left == [], f"the run left files outside the run directory and the cache: {left[:20]}"


def test_library_caches_went_into_the_qeval_cache(small_run: SmallRun) -> None:
    """matplotlib (report plots) and torch's inductor write caches under HOME or /tmp by default; a run points them
    into the qeval cache. (The BIG-bench pack's Arrow cache inside the pack: test_assets.)"""
    cache = _real(small_run.cache)
    written = [_real(p) for _, p in small_run.events]
    assert any(_inside(p, cache / "libs" / "matplotlib") for p in written)


def test_records_name_the_artifact_that_produced_them(small_run: SmallRun) -> None:
    """The manifest names each cell's artifact before the cell runs; every record carries its key."""
    manifest = json.loads((small_run.run_dir / "manifest.json").read_text())
    artifacts = manifest["artifacts"]
    assert artifacts["bf16-hf"] == {"kind": "model weights", "key": manifest["model"]["sha256"]}
    assert artifacts["int8_wo-hf"]["kind"] == "modelopt-fakequant"
    status = json.loads((small_run.run_dir / "cells" / "int8_wo-hf" / "status.json").read_text())
    assert status["artifact"]["key"] == artifacts["int8_wo-hf"]["key"]  # the one it built or reused
    for cell, entry in artifacts.items():
        records = [json.loads(line) for line in
                   (small_run.run_dir / "cells" / cell / "samples" / "qeval_addition_mc.jsonl")
                   .read_text().splitlines()]
        assert records and {r["artifact_key"] for r in records} == {entry["key"]}
        for name in ("status.json", "latency.json"):
            assert json.loads((small_run.run_dir / "cells" / cell / name).read_text())["artifact_key"] == entry["key"]
    identity = manifest["identity"]
    assert identity["model.weights_sha256"] == manifest["model"]["sha256"]
    assert {"model.files_sha256", "calibration.sha256", "recipe.bf16", "recipe.int8_wo", "versions.torch",
            "versions.lm_eval", "versions.nvidia-modelopt", "versions.transformers", "versions.vllm",
            "engine.device", "engine.compute_dtype"} <= set(identity)


def test_the_run_took(small_run: SmallRun) -> None:
    print(f"\nsmall real run: {small_run.seconds:.0f} s, {len(small_run.events)} write events, rc {small_run.rc}")
    assert small_run.rc in (0, 1)
