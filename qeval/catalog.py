"""`qeval list precisions|tasks|backends|calibration-sets` and `qeval show precision NAME`: what qeval knows.

Every line says what runs it on this machine: the accelerator is detected now (qeval.precisions.current_arch),
the kernel kind per engine comes from the precision registry, and whether an engine is installed is looked up
without importing it (importlib.util.find_spec: importing vLLM alone takes seconds).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from qeval import precisions
from qeval.errors import QevalError

# The Python package each engine needs (backends/<name>.py imports it). openai: a running server needs only
# httpx; a server qeval starts itself is `vllm serve`, hence vllm's kernels.
ENGINE_PACKAGES = {"hf": ("transformers", "modelopt"), "vllm": ("vllm",), "trtllm": ("tensorrt_llm",),
                   "openai": ("httpx",)}
KERNEL_ENGINE = {"hf": "hf", "vllm": "vllm", "trtllm": "trtllm", "openai": "vllm"}
KINDS = ("precisions", "tasks", "backends", "calibration-sets")


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Machine:
    """What this machine has, detected once per command."""

    arch: str
    engines: dict[str, bool]  # backend -> its packages are installed

    @classmethod
    def detect(cls) -> "Machine":
        from qeval.backends import BACKENDS

        return cls(arch=precisions.current_arch(),
                   engines={b: all(installed(p) for p in ENGINE_PACKAGES.get(b, ())) for b in BACKENDS})


def _here(p: precisions.Precision, machine: Machine) -> str:
    parts = []
    for backend in ("hf", "vllm", "trtllm"):
        kind = precisions.kernel_kind(p, KERNEL_ENGINE[backend], machine.arch)
        parts.append(f"{backend} {kind}" + ("" if machine.engines.get(backend) else " (not installed)"))
    return ", ".join(parts)


def list_precisions(machine: Machine) -> list[str]:
    rows = [(p.name, _here(p, machine), p.description) for p in map(precisions.get, precisions.names())]
    return _table(("PRECISION", f"ON THIS MACHINE ({machine.arch})", "WHAT"), rows)


def list_backends(machine: Machine) -> list[str]:
    from qeval.backends import BACKENDS

    rows = []
    for name in BACKENDS:
        missing = [p for p in ENGINE_PACKAGES.get(name, ()) if not installed(p)]
        state = "installed" if not missing else f"not installed (needs {', '.join(missing)})"
        engine = KERNEL_ENGINE[name]
        real = [p for p in precisions.names() if not precisions.get(p).is_baseline
                and precisions.kernel_kind(p, engine, machine.arch) == "real"]
        kernels = f"real kernels here: {', '.join(real)}" if real else "no real low-precision kernels here"
        rows.append((name, state, kernels))
    return _table(("BACKEND", "INSTALLED", f"KERNELS ({machine.arch})"), rows)


def list_tasks(machine: Machine) -> list[str]:
    from qeval.assets import bigbench
    from qeval.assets.download import NotServed

    try:
        tasks = bigbench.index()["tasks"]  # pack.json: document counts and metrics, no data file read
    except NotServed as err:  # the rest of `qeval list` still answers
        return [f"offline BIG-bench pack: not available here: {err.problem}", f"  fix: {err.fix}",
                "(a suite's own task_dirs, and lm-eval tasks where the dataset hub is reachable, still run)"]
    rows = []
    for name in bigbench.list_tasks():
        info = tasks[name]
        rows.append((name, f"{info['n_docs']} docs", f"{', '.join(info.get('metrics') or ['acc'])}, offline "
                                                     "BIG-bench pack: runs here"))
    return _table(("TASK", "DOCUMENTS", "METRIC, WHERE"), rows) + [
        "(other lm-eval task names also work where the Hugging Face dataset hub is reachable)"]


def _calibration_dir() -> Path:
    return Path(str(resources.files("qeval") / "calibration_sets"))


def list_calibration_sets(machine: Machine) -> list[str]:
    from qeval.calibration import load_spec

    rows = []
    for path in sorted(_calibration_dir().glob("*.yaml")):
        spec, _ = load_spec(str(path))
        src = spec.source
        what = {"bigbench": lambda: f"bigbench: {len(getattr(src, 'tasks', []))} pack tasks",
                "hub": lambda: f"hub dataset {getattr(src, 'dataset', '')} (needs the hub)"}.get(
                    src.kind, lambda: f"{src.kind} file {getattr(src, 'path', '')}")()
        rows.append((spec.name, f"{spec.num_samples} x {spec.seq_len} tokens, seed {spec.seed}", what))
    return _table(("CALIBRATION SET", "SAMPLES", "SOURCE"), rows)


LISTERS: dict[str, Callable[[Machine], list[str]]] = {
    "precisions": list_precisions, "tasks": list_tasks, "backends": list_backends,
    "calibration-sets": list_calibration_sets}


def listing(kind: str, grep: str | None = None) -> list[str]:
    """The lines of `qeval list KIND`: a header, then one line per entry (those matching `grep`, if given)."""
    lines = LISTERS[kind](Machine.detect())
    if grep is None:
        return lines
    needle = grep.lower()
    kept = [line for line in lines[1:] if needle in line.lower()]
    if not kept:
        raise QevalError(f"no {kind} match {grep!r}", field="--grep",
                         fix=f"try a shorter word, or `qeval list {kind}` for all of them")
    return [lines[0], *kept]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    # By hand: three columns, one line each, no wrapping (a pipe into grep must see whole lines).
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    return ["  ".join([*(str(c).ljust(w) for c, w in zip(r[:-1], widths)), str(r[-1])]).rstrip()
            for r in [header, *rows]]


def show_precision(name: str) -> list[str]:
    """The whole recipe: ModelOpt config, TensorRT-LLM QuantAlgo, vLLM load arguments, kernels per engine."""
    p = precisions.get(name, field="NAME")
    machine = Machine.detect()
    lines = [f"precision {p.name}: {p.description}",
             f"  on this machine ({machine.arch}): {_here(p, machine)}",
             "ModelOpt:",
             f"  config: {p.modelopt_cfg or 'none (the unquantized baseline)'}"
             + (f" + {p.modelopt_kv_cfg}" if p.modelopt_kv_cfg else ""),
             f"  export format: {p.modelopt_qformat or 'none'}"
             + (f", weight block size {p.block_size}" if p.block_size else "")]
    if p.modelopt_cfg is not None:
        if installed("modelopt"):
            lines.append("  mtq config (as qeval passes it to mtq.quantize):")
            cfg = precisions.modelopt_config(p) or {}
            for key, value in cfg.items():  # one quantizer entry per line: readable, and grep finds each
                if isinstance(value, list):
                    lines.append(f"    {key}:")
                    lines += [f"      {json.dumps(v, default=str)}" for v in value]
                else:
                    lines.append(f"    {key}: {json.dumps(value, default=str)}")
        else:
            lines.append("  mtq config: nvidia-modelopt is not installed here (pip install nvidia-modelopt)")
    lines += ["TensorRT-LLM:",
              f"  QuantAlgo: {p.trtllm_quant_algo or 'none'}; KV cache: {p.trtllm_kv_cache_quant_algo or 'none'}",
              "vLLM:",
              f"  ModelOpt checkpoint: {_kwargs(p.vllm.checkpoint)}",
              f"  online (vLLM quantizes the bf16 model at load): {_kwargs(p.vllm.online)}"]
    if p.vllm.note:
        lines.append(f"  note: {p.vllm.note}")
    lines.append("kernels (engine, arch: kind; source):")
    lines += [f"  {k.engine:6} {k.arch:9} {k.kind:9} {k.source}" for k in p.kernels]
    return lines


def _kwargs(args: Any) -> str:
    return "not loadable" if args is None else (f"vllm.LLM({', '.join(f'{k}={v!r}' for k, v in args.items())})"
                                               if args else "vllm.LLM() (no quantization arguments)")
