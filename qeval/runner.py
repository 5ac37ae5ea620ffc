"""`qeval run`: plan the matrix, run every cell, write results as they come.

The flow is one direction (docs/architecture.md): suite -> plan -> per cell:
backend -> lm-eval tasks (per-sample records) -> store; then stats -> gate
-> report. Every cell's results land in the run directory as they are
produced, so `--resume` recomputes nothing that finished, and a cell that
fails is marked ERROR without stopping the others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from qeval import interrupts, looks, sampling
from qeval.backends.base import EngineUnavailable
from qeval.cells import Cell, plan
from qeval.errors import QevalError
from qeval.manifest import build_manifest
from qeval.paths import check_name, under
from qeval.store import RunStore, read_manifest, write_bytes_atomic, write_json_atomic
from qeval.suite import Suite, suite_hash, suite_identity
from qeval.timings import record_step

log = logging.getLogger(__name__)


def new_run_dir(reports_dir: Path, suite: Suite) -> Path:
    """A fresh, dated run directory name (never an existing one), always directly under `reports_dir`.

    The suite name was checked at load (qeval.paths rule); checked again here because this is where it
    becomes a path, and a Suite can be built without load_suite.
    """
    name = check_name(suite.name, what="suite name", field="name")
    run_dir = reports_dir / f"{name}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    return under(reports_dir, run_dir, what="run directory")


@dataclass
class Context:
    """What every cell of a run shares: the suite, the assets, the store."""

    suite: Suite
    store: RunStore
    model_dir: Path
    tokenizer: Any
    task_manager: Any
    artifacts: dict[str, Any] = field(default_factory=dict)  # cell id -> quantized artifact info
    calibration: Any = None  # qeval.calibration.CalibrationSet, loaded on first use
    model_hash: str | None = None
    _compute: Any = None  # qeval.compute.ComputeChoice, chosen on first use
    task_plans: dict[str, Any] = field(default_factory=dict)  # task -> qeval.sampling.TaskPlan
    semantics: dict[str, Any] = field(default_factory=dict)  # task -> qeval.evaluate.MetricSemantics
    budget: Any = None  # qeval.sampling.Budget shared by every cell
    baselines: dict[str, Any] = field(default_factory=dict)  # backend -> open baseline QevalLM (extended on demand)
    engine_share: float = 0.9  # the GPU memory an engine may take (two share it in adaptive designs)
    progress: dict[str, Any] = field(default_factory=dict)  # cell id -> qeval.progress.CellProgress

    def cell_progress(self, cell_id: str) -> Any:
        """Items done / planned and the ETA of one cell (created on its first look)."""
        from qeval.progress import CellProgress

        if cell_id not in self.progress:
            done = sum(len(self.store.read_samples(cell_id, t)) for t in self.task_plans)
            self.progress[cell_id] = CellProgress(cell_id, sum(p.planned_n for p in self.task_plans.values()),
                                                  done, adaptive=self.suite.sampling.mode != "fixed")
        return self.progress[cell_id]

    def baseline_lm(self, backend: str) -> Any:
        """The baseline on `backend`, opened on first use and kept open while that backend's candidates may
        extend it."""
        from qeval.harness import QevalLM

        if backend not in self.baselines:
            cell = Cell(self.suite.baseline, backend, True)
            engine = build_backend(self, cell)
            self.baselines[backend] = QevalLM(engine, self.tokenizer, self.request_cache(cell, engine),
                                              label=cell.id)
        return self.baselines[backend]

    def request_cache(self, cell: "Cell", engine: Any) -> Any:
        """The cell's request cache, in front of the responses earlier runs of the same engine gave
        (qeval.response_cache); only where the engine's identity is known (hf, in-process vLLM)."""
        from qeval import response_cache

        local = self.store.request_cache(cell.id)
        artifact = f"baseline:{cell.precision}" if cell.is_baseline else (self.artifacts.get(cell.id) or {}).get("key")
        if cell.backend not in ("hf", "vllm") or artifact is None or self.model_hash is None:
            return local
        ident = response_cache.identity(backend=cell.backend, model_hash=self.model_hash, artifact=artifact,
                                        compute_dtype=engine.capabilities.compute_dtype,
                                        extra={"max_length": self.suite.model.max_length,
                                               "trust_remote_code": self.suite.model.trust_remote_code})
        return response_cache.for_cell(local, ident)

    def close_baseline(self, backend: str) -> None:
        lm = self.baselines.pop(backend, None)
        if lm is not None:
            lm.engine.close()

    @property
    def compute(self) -> Any:
        """The compute dtype of this run's reference engines and why (qeval.compute.choose)."""
        if self._compute is None:
            from qeval import compute

            self._compute = compute.choose(self.suite.model.compute_dtype, self.suite.model.dtype)
        return self._compute

    def checkpoint_for(self, precision: str, fmt: str = "modelopt") -> Path:
        """The exported checkpoint of a precision (built once, then from the artifact cache): ModelOpt's HF
        export feeds TensorRT-LLM and vLLM's ModelOpt loader; fmt "compressed-tensors" is the same
        calibration in vLLM's INT8 W8A8 format (qeval.export_ct)."""
        from qeval import checkpoints
        from qeval.quantize import export_checkpoint

        if checkpoints.is_external(precision):  # the user's own folder: nothing to build
            return checkpoints.folder_of(precision)
        return export_checkpoint(self, precision, fmt)


def prepare_assets(suite: Suite, suite_path: Path, model_dir: Path | None = None) -> tuple[Path, Any]:
    """The model folder (`model_dir` where the caller resolved it already) and lm-eval's task manager (offline
    pack included where the suite names a pack task); fetched on first use.

    Every input a run needs is checked here, before anything heavy (the cheap checks first): bad input is
    exit code 2 in seconds, not after the baseline has been computed.
    """
    from qeval.assets import bigbench

    check_server_port(suite, suite_path)
    model_dir = model_dir or resolve_model_dir(suite, suite_path)
    from qeval.recipes import check_against_model

    # A recipe's own fields first: the message names the edit (recipes[i]...), not the candidate using it.
    check_against_model(suite.recipes, model_dir, str(suite_path), suite.model.trust_remote_code)
    check_quantization_inputs(suite, suite_path, model_dir)
    from qeval.checkpoints import prepare as prepare_checkpoints

    # The user's own quantized folders: found, quantized, loadable by a suite backend, the baseline's tokenizer
    # and architecture; registered with their format and content hash (the manifest and every record name it).
    prepare_checkpoints(suite, suite_path, model_dir)
    task_manager = bigbench.suite_task_manager(suite, suite_path)
    for i, task in enumerate(suite.tasks):
        bigbench.resolve_task(task.name, task_manager, file=str(suite_path))
        # Pack tasks' metrics are known here; a typo would otherwise end every cell in ERROR after computing it.
        info = bigbench.task_info(task.name) if task.name.startswith(bigbench.PREFIXES) else None
        metrics = (info.get("metrics") or list(bigbench.PACK_METRICS)) if info else None
        if metrics is not None and task.metric not in metrics:
            raise QevalError(f"task {task.name!r} has no per-sample metric {task.metric!r}", file=str(suite_path),
                             field=f"tasks[{i}].metric", fix=f"use one of {', '.join(metrics)}")
    return model_dir, task_manager


def check_server_port(suite: Suite, suite_path: Path) -> None:
    """A busy server.port is refused before the run starts, not when the first `vllm serve` cell reaches it
    (the cell checks again: the port may be taken in between)."""
    from qeval.serving import LOOPBACK, port_in_use

    spec = suite.server
    served_here = [p for p in suite.precisions if p not in spec.endpoints]
    if "openai" not in suite.backends or spec.port is None or not served_here:
        return
    if port_in_use(spec.port):
        raise QevalError(f"port {spec.port} on {LOOPBACK} is already in use, so `vllm serve` cannot bind it "
                         f"(needed for {', '.join(served_here)}, which have no endpoint)", file=str(suite_path),
                         field="server.port", fix="stop what listens there, pick another port, or leave the "
                                                  "port unset and qeval takes a free one")


def resolve_model_dir(suite: Suite, suite_path: Path) -> Path:
    """The model folder: a built-in model (fetched on first use) or a path relative to the suite file."""
    from qeval.assets import model as model_assets

    if suite.model.source in model_assets.BUILTIN:
        return model_assets.ensure_model(suite.model.source)
    src = Path(suite.model.source)
    return src if src.is_absolute() else (suite_path.parent / src).resolve()


def check_quantization_inputs(suite: Suite, suite_path: Path, model_dir: Path) -> None:
    """Calibration set and recipe/model fit, checked up front for the cells that certainly quantize.

    hf cells always quantize their candidate (simulated), so a missing or empty calibration set, or a
    block size that does not divide the model's widths, would otherwise stop the run only after the
    baseline was computed. Other backends may not quantize at all (a served endpoint, no kernels on
    this machine): their cells check when they build.
    """
    from qeval import precisions
    from qeval.calibration import check_calibration

    from qeval.checkpoints import is_external

    quantized_here = [(i, n) for i, n in enumerate(suite.candidates) if not is_external(n)]
    if not quantized_here and suite.divergence.enabled and suite.calibration is None:
        # A checkpoint someone else quantized needs no calibration, but the KL's held-out text comes from the set.
        raise QevalError("the suite measures divergence, whose held-out text comes from the calibration set's "
                         "held-out split, but names no calibration set", file=str(suite_path), field="calibration",
                         fix="add e.g. `calibration: bigbench-mixed` (see calibration_sets/), or set "
                             "divergence: {enabled: false}")
    if "hf" not in suite.backends or not quantized_here:
        if suite.calibration is not None and not quantized_here and suite.divergence.enabled:
            check_calibration(suite.calibration, [t.name for t in suite.tasks], suite_file=str(suite_path))
        return
    if suite.calibration is None:
        raise QevalError("the suite quantizes candidates (hf backend) but names no calibration set",
                         file=str(suite_path), field="calibration",
                         fix="add e.g. `calibration: bigbench-mixed` (see calibration_sets/)")
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))  # readable JSON: checked by load_suite
    for i, name in quantized_here:  # from config.json alone: before the calibration set is read
        try:
            precisions.check_compatible(name, config, source=str(config_path))
        except QevalError as err:
            raise QevalError(err.problem, file=str(suite_path), field=f"candidates[{i}]", fix=err.fix) from None
    check_calibration(suite.calibration, [t.name for t in suite.tasks], suite_file=str(suite_path))


def load_tokenizer(model_dir: Path, suite: Suite, suite_path: Path) -> Any:
    """The model folder's tokenizer; a folder without one is bad input, named, not a traceback."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                             trust_remote_code=suite.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError ... here
        raise QevalError(f"cannot load a tokenizer from {model_dir} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})", file=str(suite_path),
                         field="model.source", fix="point it at a folder with the tokenizer files "
                         "(tokenizer.save_pretrained into the model folder)") from None


def check_resume(store: RunStore, suite_sha: str, legacy_sha: str | None = None) -> None:
    """Refuse a resume with another suite. `legacy_sha`: the file-bytes hash runs made before the content
    identity (qeval.suite.suite_identity) recorded; they resume with the same file."""
    path = store.root / "manifest.json"
    if not path.exists():
        raise QevalError(f"{store.root} is not a qeval run directory (no manifest.json)",
                         fix="pass the directory that a previous `qeval run` printed")
    previous = read_manifest(store.root)["suite"]["sha256"]
    if previous not in (suite_sha, legacy_sha):
        raise QevalError(f"the suite changed since {store.root} was started; resuming would mix results",
                         file=str(path), field="suite.sha256",
                         fix="resume with the same suite file, or start a new run")


def resume_manifest(store: RunStore, now: dict[str, Any], artifacts: dict[str, dict[str, Any]],
                    allow_changed: list[str]) -> tuple[dict[str, Any], bool]:
    """The manifest of a resumed run, after refusing what it cannot reuse (qeval.identity).

    Returns:
        (the manifest, whether it changed and must be written): allowed changes are recorded in it, and the
        artifacts of before an allowed change stay accepted for the records they produced.
    """
    from qeval import identity, provenance

    manifest = read_manifest(store.root)
    updated, allowed = identity.accept_resume(store.root, manifest, now, allow_changed)
    before = manifest.get("artifacts") or {}
    moved = sorted(c for c, a in artifacts.items() if c in before and before[c].get("key") != a.get("key"))
    if moved and not allowed:  # a key that moved though nothing recorded did: refuse rather than guess
        raise QevalError(f"cannot resume {store.root}: the artifact of {', '.join(moved)} is not the one its "
                         f"records were made with ({before[moved[0]].get('key')} -> {artifacts[moved[0]].get('key')})",
                         file=str(store.root / "manifest.json"), field=f"artifacts.{moved[0]}",
                         fix="start a new run")
    if "artifacts" in manifest:  # (a run older than the check has unstamped records: it stays unchecked)
        updated["artifacts"] = provenance.merge_on_resume(before, artifacts)
    return updated, updated != manifest


def run_suite(suite: Suite, suite_path: Path, run_dir: Path, *, resume: bool = False,
              only: set[str] | None = None, allow_changed: list[str] | None = None,
              suite_text: bytes | None = None, overrides: dict[str, Any] | None = None) -> RunStore:
    """Run (or resume) a suite into `run_dir`.

    Args:
        resume: continue a run directory that exists (same suite, same model, calibration, recipes, tool
            versions and engine: qeval.identity), reusing every finished result.
        only: cell ids to run (the baselines they need are added); None runs the whole plan.
        allow_changed: identity fields (or groups) whose change a resume lets through, recorded in the manifest.
        suite_text: what the run directory's suite.yaml holds (default: the bytes of `suite_path`); the
            effective suite when command-line flags built or changed it (qeval.suite_flags).
        overrides: the fields those flags set, recorded in the manifest (suite.overrides).
    """
    from qeval import identity, provenance
    from qeval.assets.model import model_hash

    if allow_changed and not resume:
        raise QevalError("--allow-changed applies to a resume only", field="--allow-changed",
                         fix="add --resume RUN_DIR, or drop --allow-changed for a new run")
    if suite.speed_only:  # synthetic weights: latency only, no tasks, no artifacts to vouch for
        from qeval import speed_only

        if allow_changed:
            raise QevalError("--allow-changed does not apply to a speed_only suite (its records depend on the "
                             "shape's config, which the suite hash covers)", field="--allow-changed",
                             fix="drop --allow-changed")
        return speed_only.run(suite, suite_path, run_dir, resume=resume)
    sha = suite_identity(suite)
    store = RunStore(run_dir)
    if resume:
        check_resume(store, sha, suite_hash(suite_path) if suite_path.is_file() else None)
    # Assets and task names are checked before the run directory exists: bad input leaves nothing behind.
    t0 = time.perf_counter()
    # The model folder first (seconds): a folder without weights or tokenizer is refused before the task pack
    # or the calibration set is fetched or read, and before the run dir exists.
    model_dir = resolve_model_dir(suite, suite_path)
    weights_hash, tokenizer = model_hash(model_dir), load_tokenizer(model_dir, suite, suite_path)
    model_dir, task_manager = prepare_assets(suite, suite_path, model_dir)
    prepare_seconds = round(time.perf_counter() - t0, 2)
    cells = plan(suite)
    ctx = Context(suite=suite, store=store, model_dir=model_dir, tokenizer=tokenizer, task_manager=task_manager,
                  model_hash=weights_hash)
    ctx.task_plans, ctx.semantics = looks.plan_tasks(suite, task_manager, file=str(suite_path))
    design = looks.design_record(suite, ctx.task_plans)
    # What the records will be made with, and by which artifact: recorded, or compared with the record on resume
    # (refused there before anything is written).
    now = identity.current(ctx, weights_hash)
    artifacts = provenance.planned_artifacts(ctx, cells)
    if resume:
        check_design(store, design)
        manifest, changed = resume_manifest(store, now, artifacts, list(allow_changed or []))
        if changed:
            write_json_atomic(store.root / "manifest.json", manifest)
    else:
        try:
            store.root.mkdir(parents=True, exist_ok=False)
        except OSError as exc:  # a parent that is a file, a read-only disk ...: say so, not a traceback
            raise QevalError(f"cannot create the run directory {store.root} ({type(exc).__name__}: "
                             f"{exc.strerror or exc})", field="--reports-dir",
                             fix="choose a reports directory you can write to") from None
        write_bytes_atomic(store.root / "suite.yaml", suite_text if suite_text is not None else suite_path.read_bytes())
        manifest = build_manifest(
            run_id=store.root.name, suite_name=suite.name, suite_path=suite_path, suite_hash=sha,
            model_source=suite.model.source, model_hash=weights_hash,
            seeds=suite.seeds.model_dump(), plan=[c.id for c in cells], compute=ctx.compute.as_record(),
            sampling=design)
        if overrides:
            manifest["suite"]["overrides"] = overrides
        from qeval.checkpoints import MANIFEST_KEY, manifest_records

        manifest.update(identity=now, artifacts=artifacts)
        if manifest_records(suite):  # who made each external candidate: where it was, what it is, its hash
            manifest[MANIFEST_KEY] = manifest_records(suite)
        write_json_atomic(store.root / "manifest.json", manifest)
    store.bind_artifacts({cell: entry.get("key") for cell, entry in manifest.get("artifacts", artifacts).items()})
    log.info("compute dtype: %s (%s)", ctx.compute.dtype, ctx.compute.reason)
    ctx.budget = sampling.Budget(None if suite.sampling.max_items_total is None
                                 else suite.sampling.max_items_total - items_evaluated(store))
    if suite.sampling.mode != "fixed":
        ctx.engine_share = 0.45  # a candidate engine and the baseline it extends share one GPU
    if only is not None:
        wanted_backends = {c.backend for c in cells if c.id in only}
        cells = [c for c in cells if c.id in only or (c.is_baseline and c.backend in wanted_backends)]
    try:
        for backend in suite.backends:  # the baseline first, then its candidates, one backend at a time
            for cell in (c for c in cells if c.backend == backend):
                run_cell(ctx, cell)
                if cell.is_baseline and suite.sampling.mode == "fixed":
                    ctx.close_baseline(backend)  # fixed: no candidate extends it, free the engine
            ctx.close_baseline(backend)
    finally:
        for backend in list(ctx.baselines):
            ctx.close_baseline(backend)
    if ctx.suite.divergence.enabled and not ctx.suite.divergence.keep_reference:  # once no candidate needs them
        from qeval.engine_divergence import prune_references

        prune_references(ctx, plan(suite))
    # Written once the cells are through: a resume stopped by bad input leaves the run directory as it was.
    record_step(store.root, "fetch and check assets" if not resume else "check assets (resume)", prepare_seconds)
    return store


def items_evaluated(store: RunStore) -> int:
    """Documents already evaluated in a run directory, every cell and task (the total budget counts them)."""
    return sum(len(store.read_samples(cell, task)) for cell in store.cells() for task in store.tasks(cell))


def check_design(store: RunStore, design: dict[str, Any]) -> None:
    """A resume continues the design its run started with; anything else would mix two designs in one run."""
    recorded = read_manifest(store.root).get("sampling")
    if recorded is None:
        return  # a run directory from before the sampling design: fixed, first N (nothing to compare)
    changed = [k for k in sorted(set(recorded) | set(design)) if recorded.get(k) != design.get(k)]
    if changed:
        raise QevalError(f"the sampling design differs from the one {store.root} was started with "
                         f"({', '.join(changed)}); resuming would mix two designs in one run",
                         file=str(store.root / "manifest.json"), field="sampling",
                         fix="resume with the suite and task data the run started with, or start a new run")


def cell_done(ctx: Context, cell: Cell) -> bool:
    status = ctx.store.read_status(cell.id)
    if not (status and status.get("state") == "ok"):
        return False
    if cell.is_baseline and ctx.suite.divergence.enabled:
        from qeval.engine_divergence import missing_references, waiting_for_reference

        # Deleted on purpose once every candidate has its divergence (prune_references); lost otherwise.
        missing = missing_references(ctx.store.cell_dir(cell.id))
        waiting = waiting_for_reference(ctx, plan(ctx.suite), cell.backend) if missing else []
        if waiting:
            log.warning("%s: finished, but its reference distributions (%s) are missing from %s and %s still "
                        "need them: the cell runs again", cell.id, ", ".join(missing), ctx.store.cell_dir(cell.id),
                        ", ".join(waiting))
            return False
    return True


def run_cell(ctx: Context, cell: Cell) -> None:
    """Run every task of one cell; a failure marks the cell ERROR with its cause and returns."""
    interrupts.stop_if_requested()
    # One process per cell: two resumes of one run dir must not compute or interleave the same cell.
    lock_path = ctx.store.root / "locks" / f"{cell.id}.lock"
    lock_path.parent.mkdir(exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("%s: another process is computing this cell (%s held); waiting for it", cell.id, lock_path)
        lock.acquire()
    try:
        _run_cell_locked(ctx, cell)
    finally:
        lock.release()


def _run_cell_locked(ctx: Context, cell: Cell) -> None:
    from qeval import looks
    from qeval.harness import QevalLM
    from qeval.latency import run_latency

    # Checked under the lock: a cell the other process finished while we waited is reused, not recomputed.
    if cell_done(ctx, cell):
        log.info("%s: finished in an earlier run, reused", cell.id)
        return
    started = time.perf_counter()
    timings: dict[str, float] = {}
    steps: dict[str, float] = {}  # load (quantization included), divergence, latency: where the time went
    try:
        with (contextlib.nullcontext(ctx.baseline_lm(cell.backend).engine) if cell.is_baseline
              else open_backend(ctx, cell)) as backend:
            steps["load"] = round(time.perf_counter() - started, 2)
            if cell.is_baseline:
                looks.run_baseline(ctx, cell, ctx.baseline_lm(cell.backend), timings)
            # Divergence before a candidate's tasks: one whose KL already FAILs is BLOCKed, so in an adaptive
            # design its tasks stop after their first look. The baseline stores the reference and measures
            # the engine's noise floor.
            if ctx.suite.divergence.enabled:
                with _timed(steps, "divergence"):
                    run_divergence(ctx, cell, backend)
            if not cell.is_baseline:
                lm = QevalLM(backend, ctx.tokenizer, ctx.request_cache(cell, backend), label=cell.id)
                looks.run_candidate(ctx, cell, lm, timings, steps)
            if ctx.suite.latency.enabled and cell.backend in (ctx.suite.latency.backends or ctx.suite.backends):
                with _timed(steps, "latency"):
                    run_latency(ctx, cell, backend)
            capabilities = backend.capabilities
    except EngineUnavailable as exc:  # this engine cannot run here: NOT RUN with the reason, the run goes on
        log.warning("%s: NOT RUN: %s", cell.id, exc.reason)
        ctx.store.write_status(cell.id, {**exc.as_record(), "seconds": round(time.perf_counter() - started, 2)})
        return
    except QevalError:
        raise  # bad input: the whole run stops with exit code 2 (nothing computed is lost)
    except Exception as exc:  # noqa: BLE001 - fault isolation: one cell's crash must not end the run
        log.error("%s: ERROR %s: %s", cell.id, type(exc).__name__, exc)
        ctx.store.write_status(cell.id, {"state": "error", "cause": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc(limit=20)})
        return
    ctx.store.write_status(cell.id, {"state": "ok", "seconds": round(time.perf_counter() - started, 2),
                                     "task_seconds": timings, "step_seconds": steps,
                                     "kernels": capabilities.kernels,
                                     "run_here": capabilities.run_here, "notes": capabilities.notes,
                                     "compute": compute_record(ctx, capabilities),
                                     "artifact": ctx.artifacts.get(cell.id)})


@contextlib.contextmanager
def _timed(steps: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        steps[name] = round(time.perf_counter() - t0, 2)


def compute_record(ctx: Context, capabilities: Any) -> dict[str, Any] | None:
    """What a cell computed in (read from its engine) and why (the run's choice, where it applies)."""
    dtype = capabilities.compute_dtype
    if dtype is None:
        return None
    choice = ctx.compute
    reason = choice.reason if dtype == choice.dtype else f"{dtype}, as this engine loads the cell's checkpoint"
    return {"dtype": dtype, "requested": choice.requested, "reason": reason}


def run_divergence(ctx: Context, cell: Cell, backend: Any) -> None:
    """KL / top-1 / PPL ratio of a cell on its own engine (qeval.engine_divergence): a baseline stores its
    reference distributions and measures the engine's noise floor; a candidate is compared with them."""
    from qeval import engine_divergence

    if ctx.store.read_json(cell.id, "divergence.json") and not (
            cell.is_baseline and engine_divergence.missing_references(ctx.store.cell_dir(cell.id))):
        return  # done (a baseline whose references were lost computes them again: cell_done)
    record = engine_divergence.run(ctx, cell, backend)
    if "unavailable" in record:
        log.warning("%s: no divergence: %s", cell.id, record["unavailable"])
    ctx.store.write_json(cell.id, "divergence.json", record)


@contextlib.contextmanager
def open_backend(ctx: Context, cell: Cell) -> Iterator[Any]:
    """Build the engine for a cell and always close it (engine processes included)."""
    backend = build_backend(ctx, cell)
    try:
        yield backend
    finally:
        backend.close()


def build_backend(ctx: Context, cell: Cell) -> Any:
    from qeval import checkpoints
    from qeval.backends.hf import HFBackend, load_hf_model

    suite = ctx.suite
    if cell.backend == "hf" and checkpoints.is_external(cell.precision):
        return checkpoints.hf_backend(ctx, cell)
    if cell.backend == "hf":
        model = load_hf_model(ctx.model_dir, ctx.compute.dtype, trust_remote_code=suite.model.trust_remote_code)
        if cell.is_baseline:
            return HFBackend(model, ctx.tokenizer, precision=cell.precision, max_length=suite.model.max_length)
        from qeval.quantize import quantize_simulated

        model, ctx.artifacts[cell.id] = quantize_simulated(model, cell.precision, ctx)
        return HFBackend(model, ctx.tokenizer, precision=cell.precision, simulated=True,
                         max_length=suite.model.max_length)
    from qeval.backends import load_backend_class

    if checkpoints.is_external(cell.precision):
        checkpoints.check_engine(cell)  # no load path or no kernels for its format here: NOT RUN, with the reason
        ctx.artifacts[cell.id] = checkpoints.artifact(cell.precision)
    return load_backend_class(cell.backend).from_cell(ctx, cell)
