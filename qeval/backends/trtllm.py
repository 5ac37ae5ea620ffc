"""TensorRT-LLM through its LLM API (TensorRT-engine flow).

TensorRT-LLM cannot be installed in this workplace (every PyPI release is a
download stub for NVIDIA's own index, which no machine here reaches), so no
engine has been built with this module: where ``tensorrt_llm`` does not import,
or no GPU is visible, the backend raises ``EngineUnavailable`` with what it
measured (the import error, the device) and the runner marks its cells NOT RUN
while the other cells of the run go on. This module is written against the LLM API as read in the source of
NVIDIA/TensorRT-LLM (files read one by one from the source index; the repository
snapshot, 2.5 GB, could not be fetched whole):

- ``tensorrt_llm/_tensorrt_engine/__init__.py`` @ 1620d4fd1b30d9b655b479c0de692486e6af01f4:
  ``LLM`` of the TensorRT-engine flow (``_TrtLLM``); in 1.x ``tensorrt_llm.LLM``
  is the PyTorch backend, which takes no ``build_config``.
- ``tensorrt_llm/_tensorrt_engine/llm_args.py`` @ e3cc74ce1dd8ad7323891f9e56522b685d9a8fe7:
  ``TrtLlmArgs`` fields ``quant_config``, ``calib_config``, ``build_config``;
  ``CalibConfig`` fields (device, calib_dataset, calib_batches, calib_batch_size,
  calib_max_seq_length, random_seed, tokenizer_max_seq_length); and
  "KvCacheConfig.dtype is not supported by the TensorRT backend": the FP8 KV
  cache of an engine comes from ``QuantConfig.kv_cache_quant_algo``.
- ``QuantConfig`` fields: ``tensorrt_llm/models/modeling_utils.py`` @
  01ea6d79d454bb3ab10c7510a6f706ba039090c2 (quant_algo, kv_cache_quant_algo,
  group_size, smoothquant_val, clamp_val, use_meta_recipe, has_zero_point,
  pre_quant_scale, exclude_modules); ``tensorrt_llm/llmapi/__init__.py`` @
  036a60f7ff9257595c96a578560651da5c4df577 exports BuildConfig, CalibConfig,
  QuantAlgo, QuantConfig, SamplingParams.
- ``BuildConfig`` fields (max_input_len, max_seq_len, max_batch_size,
  max_num_tokens, gather_context_logits): ``tensorrt_llm/builder.py`` @
  008b2b8d23af95e4e19fa6f354f9c5f6349b2bfc.
- ``LLM.generate`` / ``generate_async(..., streaming=True)`` / ``save(engine_dir)``:
  ``tensorrt_llm/llmapi/llm.py`` @ 00966934ce32e0603a33f8c922525cf3678afab4;
  streaming use in ``examples/llm-api/llm_inference_async_streaming.py`` @
  83bcfc4d61c9a2030c1a2c6be157c4d19d91e2d1.
- Pre-quantized checkpoints: the loader reads ``hf_quant_config.json``
  (``ModelLoader._update_from_hf_quant_config``, tensorrt_llm/llmapi/llm_utils.py).
- ``SamplingParams`` (prompt_logprobs, return_context_logits, ...):
  ``tensorrt_llm/sampling_params.py`` @ 000a01de66f0eab4ab05640711f0253f50f5209c;
  ``CompletionOutput`` and ``compute_logprobs``: ``tensorrt_llm/executor/result.py``
  @ 005bc848893f575ec14b45d6b13139360d67c790.

Log-likelihood: in that ``result.py`` the TensorRT flow's prompt log-probabilities
are computed from the context logits as the top-K entries of each row, without
the actual prompt token (``_topk_logprobs(context_logits, k, None)``), and row t
scores token t+1. The actual token's log-probability is therefore taken from the
context logits themselves (``return_context_logits=True``, engine built with
``gather_context_logits=True``): the same quantity, exact, independent of K.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from qeval import precisions
from qeval.backends.base import (
    Capabilities,
    EngineUnavailable,
    Generation,
    GenerationRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    TokenEvent,
)
from qeval.errors import QevalError

INSTALL_FIX = ("install TensorRT-LLM on a Linux machine with an NVIDIA GPU: "
               "'pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com' (the PyPI package only "
               "downloads the real wheel from NVIDIA's index), or run qeval inside the NGC container "
               "nvcr.io/nvidia/tensorrt-llm/release:<version>; or drop 'trtllm' from the suite's backends")

ENGINE_MARKER = "qeval_engine.json"


# ---- translation: precision -> LLM API arguments (pure, tested without tensorrt_llm) ----
def quant_config_kwargs(precision: str | precisions.Precision) -> dict[str, Any]:
    """``tensorrt_llm.llmapi.QuantConfig`` keyword arguments for a precision, as plain values.

    QuantAlgo members are given by name ("FP8"); :meth:`TRTLLMBackend` turns them into
    ``QuantAlgo`` members. Group-wise recipes carry ``group_size``; AWQ ones also the
    ``has_zero_point=False, pre_quant_scale=True`` that ModelOpt's HF export writes
    (modelopt/torch/export/quant_utils.py, nvidia-modelopt 0.47.0).
    """
    p = precisions.get(precision)
    kwargs: dict[str, Any] = {"quant_algo": p.trtllm_quant_algo,
                              "kv_cache_quant_algo": p.trtllm_kv_cache_quant_algo}
    if p.block_size is not None:
        kwargs["group_size"] = p.block_size
    if p.trtllm_quant_algo in ("W4A16_AWQ", "W4A8_AWQ"):
        kwargs["has_zero_point"] = False
        kwargs["pre_quant_scale"] = True
    return kwargs


def calib_config_kwargs(*, dataset: str, batches: int, batch_size: int = 1, max_seq_length: int = 512,
                        seed: int = 1234, tokenizer_max_seq_length: int = 2048,
                        device: str = "cuda") -> dict[str, Any]:
    """``CalibConfig`` keyword arguments (used only when TensorRT-LLM quantizes a bf16 model itself).

    Args:
        dataset: a Hugging Face dataset name or a local dataset path (``calib_dataset``).
        batches: number of calibration batches (``calib_batches``).
    """
    if device not in ("cuda", "cpu"):
        raise QevalError(f"calibration device {device!r} is not 'cuda' or 'cpu'", field="calibration.device",
                         fix="use 'cuda' (CalibConfig.device accepts 'cuda' or 'cpu')")
    return {"device": device, "calib_dataset": dataset, "calib_batches": int(batches),
            "calib_batch_size": int(batch_size), "calib_max_seq_length": int(max_seq_length),
            "random_seed": int(seed), "tokenizer_max_seq_length": int(tokenizer_max_seq_length)}


def build_config_kwargs(*, max_input_len: int = 2048, max_seq_len: int | None = None, max_batch_size: int = 64,
                        max_num_tokens: int = 8192, gather_context_logits: bool = True) -> dict[str, Any]:
    """``BuildConfig`` keyword arguments.

    ``gather_context_logits`` must be True for log-likelihood scoring (the engine
    returns logits for every prompt position only when built with it).
    """
    return {"max_input_len": int(max_input_len),
            "max_seq_len": int(max_seq_len if max_seq_len is not None else max_input_len + 256),
            "max_batch_size": int(max_batch_size), "max_num_tokens": int(max_num_tokens),
            "gather_context_logits": bool(gather_context_logits)}


def read_quant_algo(checkpoint_dir: str | Path) -> tuple[str | None, str | None]:
    """(quant_algo, kv_cache_quant_algo) of a ModelOpt-exported checkpoint; (None, None) if unquantized.

    Reads ``hf_quant_config.json`` in both shapes ModelOpt writes: legacy
    ``{"quantization": {...}}`` and flat ``{"quant_method": "modelopt", ...}``.
    """
    path = Path(checkpoint_dir) / "hf_quant_config.json"
    if not path.is_file():
        return None, None
    raw = json.loads(path.read_text())
    q = raw.get("quantization", raw)
    algo = q.get("quant_algo")
    kv = q.get("kv_cache_quant_algo")
    if kv is None and isinstance(raw.get("kv_cache_scheme"), dict):
        scheme = raw["kv_cache_scheme"]
        kv = "FP8" if scheme.get("type") == "float" and scheme.get("num_bits") == 8 else None
    return (str(algo).upper() if algo else None), (str(kv).upper() if kv else None)


def check_checkpoint_matches(precision: str | precisions.Precision, checkpoint_dir: str | Path) -> None:
    """Refuse to build an engine for one precision from a checkpoint quantized as another.

    Raises:
        QevalError: the checkpoint's hf_quant_config.json disagrees with the precision.
    """
    p = precisions.get(precision)
    algo, kv = read_quant_algo(checkpoint_dir)
    want = (p.trtllm_quant_algo, p.trtllm_kv_cache_quant_algo)
    if (algo, kv) != want:
        where = Path(checkpoint_dir) / "hf_quant_config.json"
        raise QevalError(f"checkpoint is quantized as quant_algo={algo}, kv_cache_quant_algo={kv}, "
                         f"but precision {p.name!r} means quant_algo={want[0]}, kv_cache_quant_algo={want[1]}",
                         file=str(where), field="quantization.quant_algo",
                         fix=f"point the trtllm backend at the artifact exported for {p.name!r} "
                             f"(qeval quantize), or let TensorRT-LLM quantize the bf16 model (prequantized=False)")


# ---- engine cache (pure) ------------------------------------------------------------------
def _slug(text: str) -> str:
    # Never "." or "..": a slug names a folder of the engine cache.
    return re.sub(r"[^a-z0-9.]+", "-", text.strip().lower()).strip("-.") or "unknown"


def engine_cache_key(*, gpu_sku: str, trtllm_version: str, artifact_key: str,
                     build: Mapping[str, Any] | None = None) -> str:
    """The cache key of a built engine: a relative path, readable and collision-proof.

    An engine is only valid for the GPU model it was built on, the TensorRT-LLM
    version that built it, the weights it was built from (the artifact's content
    key, which covers model, recipe and calibration) and its build settings.

    Returns:
        ``"<gpu-sku>/trtllm-<version>/<artifact-key-prefix>-<hash12>"``.
    """
    if not gpu_sku or not trtllm_version or not artifact_key:
        raise ValueError("gpu_sku, trtllm_version and artifact_key are all required")
    payload = json.dumps({"gpu_sku": gpu_sku.strip(), "trtllm_version": trtllm_version.strip(),
                          "artifact_key": artifact_key, "build": dict(build or {})},
                         sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{_slug(gpu_sku)}/trtllm-{_slug(trtllm_version)}/{_slug(artifact_key)[:16]}-{digest}"


def engine_dir(cache_root: str | Path, key: str) -> Path:
    """Where the engine for ``key`` lives under ``cache_root`` (never outside it: the key holds a GPU name)."""
    from qeval.paths import under

    parts = Path(key).parts
    if not parts or Path(key).is_absolute() or any(p in (".", "..") for p in parts):
        raise ValueError(f"engine cache key {key!r} is not a relative path of plain names")
    return under(Path(cache_root), Path(cache_root) / key, what="engine folder")


def directory_content_key(path: str | Path, patterns: Sequence[str] = ("*.json", "*.safetensors", "*.bin",
                                                                      "tokenizer*")) -> str:
    """sha256 of a checkpoint folder's files (names and bytes): the artifact key of a folder.

    Streams every matching file once; for an 8B model that is a few tens of seconds,
    small next to an engine build.
    """
    root = Path(path)
    files = sorted({f for pat in patterns for f in root.glob(pat) if f.is_file()})
    if not files:
        raise QevalError(f"{root} holds no checkpoint files", field="model.source",
                         fix="point it at a Hugging Face folder (config.json + *.safetensors)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def default_cache_root() -> Path:
    """Engines outlive runs: $QEVAL_ENGINE_CACHE, else the user cache folder."""
    env = os.environ.get("QEVAL_ENGINE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("qeval")) / "trtllm-engines"


def cached_engine(path: str | Path) -> bool:
    """True when ``path`` holds a complete saved engine whose files match their recorded sha256."""
    from qeval.artifacts import verify

    path = Path(path)
    return (path / ENGINE_MARKER).is_file() and (path / "config.json").is_file() and verify(path) is None


# ---- scoring (pure) -----------------------------------------------------------------------
def fit_tokens(context: Sequence[int], continuation: Sequence[int], max_len: int) -> tuple[list[int], int]:
    """Context + continuation cut from the left to ``max_len`` tokens, as lm-eval's HF model does.

    Returns:
        (tokens, n_context): the tokens to feed and how many of them are context.
    """
    if not continuation:
        raise ValueError("empty continuation")
    if len(continuation) >= max_len:
        raise QevalError(f"continuation of {len(continuation)} tokens does not fit the engine's "
                         f"max_input_len={max_len}", field="backends.trtllm.max_input_len",
                         fix="build the engine with a larger max_input_len")
    tokens = list(context) + list(continuation)
    tokens = tokens[-max_len:]
    return tokens, len(tokens) - len(continuation)


def continuation_logprobs(context_logits: Any, tokens: Sequence[int], n_context: int) -> LoglikelihoodResult:
    """Score ``tokens[n_context:]`` from the engine's context logits.

    Args:
        context_logits: ``[len(tokens), vocab]`` (or ``[1, len(tokens), vocab]``) logits;
            row i is the distribution after ``tokens[i]``, i.e. over ``tokens[i + 1]``.
        tokens: the prompt fed to the engine.
        n_context: how many leading tokens are context (at least 1).
    """
    import torch

    logits = torch.as_tensor(context_logits)
    if logits.dim() == 3 and logits.size(0) == 1:
        logits = logits[0]
    if n_context < 1:
        raise ValueError("at least one context token is needed to score the first continuation token")
    if logits.dim() != 2 or logits.size(0) < len(tokens) - 1:
        raise ValueError(f"context logits of shape {tuple(logits.shape)} do not cover {len(tokens)} tokens")
    rows = logits[n_context - 1:len(tokens) - 1].float()
    target = torch.as_tensor(list(tokens[n_context:]), dtype=torch.long)
    logp = torch.log_softmax(rows, dim=-1)
    token_lp = logp.gather(1, target[:, None])[:, 0]
    greedy = bool((rows.argmax(dim=-1) == target).all())
    values = tuple(float(x) for x in token_lp)
    return LoglikelihoodResult(logprob=float(sum(values)), is_greedy=greedy, token_logprobs=values)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut generated text at the earliest stop string."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


# ---- capability record ----------------------------------------------------------------------
def trtllm_capabilities(arch: str, *, version: str, gpu: str, engine_quant_algo: str | None = None,
                        precision: str | None = None) -> Capabilities:
    """What a TensorRT-LLM engine that ran here runs, from what was measured.

    Args:
        arch: the GPU architecture seen (``precisions.current_arch()``).
        version: ``tensorrt_llm.__version__`` as imported.
        gpu: ``torch.cuda.get_device_name(0)``.
        engine_quant_algo: the quantization the built engine's own config.json records, if read.
        precision: the cell's precision (its kernels: from the registry for ``arch``).
    """
    kernels = {p.name: precisions.kernel_kind(p, "trtllm", arch) for p in precisions.PRECISIONS.values()}
    runnable = tuple(n for n, k in kernels.items() if k in ("real", "emulated"))
    if precision is not None:
        runnable = tuple(n for n in runnable if n == precision) or (precision,)
    report = {"tensorrt_llm_version": version, "gpu": gpu, "arch": arch, "quant_algo": engine_quant_algo}
    return Capabilities(backend="trtllm", precisions=runnable,
                        kernels={n: kernels.get(n, "none") for n in runnable}, run_here=True,
                        notes=(f"TensorRT-LLM {version} on {gpu} ({arch}); quant_algo in the engine's config: "
                               f"{engine_quant_algo or 'none'}; kernels per the registry for {arch}"),
                        engine_report=report)


def engine_quant_algo(engine_path: str | Path) -> str | None:
    """The quant_algo a saved TensorRT-LLM engine's config.json records (what the engine says it runs)."""
    try:
        cfg = json.loads((Path(engine_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    quant = (cfg.get("pretrained_config") or cfg).get("quantization") or {}
    algo = quant.get("quant_algo") if isinstance(quant, dict) else None
    return str(algo) if algo else None


# ---- the backend ------------------------------------------------------------------------------
def import_trtllm():
    """The ``tensorrt_llm`` module and its ``llmapi``.

    Raises:
        EngineUnavailable: it does not import here (with the import error as measured, and how to get it).
    """
    try:
        import tensorrt_llm  # noqa: F401
        import tensorrt_llm.llmapi as llmapi
    except ImportError as e:  # also a broken install (missing CUDA libraries)
        raise EngineUnavailable(f"TensorRT-LLM does not import here ({type(e).__name__}: {e})", engine="trtllm",
                                fix=INSTALL_FIX, probe={"import tensorrt_llm": f"{type(e).__name__}: {e}",
                                                        "gpu": _gpu_probe()}) from None
    return tensorrt_llm, llmapi


def _gpu_probe() -> str:
    """What torch sees of GPUs, in words (for a NOT RUN record)."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} visible: {torch.cuda.get_device_name(0)}"
        return "none visible (torch.cuda.is_available() is False)"
    except Exception as exc:  # noqa: BLE001 - a probe never fails the caller
        return f"unknown ({type(exc).__name__}: {exc})"


def _trt_llm_class(tensorrt_llm):
    """The LLM class of the TensorRT-engine flow: ``tensorrt_llm._tensorrt_engine.LLM`` in 1.x,
    ``tensorrt_llm.LLM`` in 0.x releases (where it was the TensorRT flow)."""
    try:
        from tensorrt_llm._tensorrt_engine import LLM
        return LLM
    except ImportError:
        return tensorrt_llm.LLM


class TRTLLMBackend:
    """TensorRT-LLM engines, one per precision, built once and cached (never run in this workplace).

    Args:
        checkpoint_dir: the ModelOpt-exported HF checkpoint for ``precision``
            (``hf_quant_config.json`` inside), or the bf16 model when
            ``prequantized`` is False.
        precision: registry name.
        artifact_key: content key of the checkpoint (``qeval.artifacts``); part of the
            engine cache key.
        cache_root: where engines are kept.
        prequantized: True: build from the ModelOpt checkpoint (the artifact vLLM and
            HF also run). False: TensorRT-LLM quantizes the bf16 model itself with
            ``QuantConfig`` + ``CalibConfig`` (``calibration`` required).
        calibration: ``calib_config_kwargs(...)`` for ``prequantized=False``.
        tokenizer_dir: the tokenizer (default ``checkpoint_dir``).
        build: ``build_config_kwargs(...)`` overrides.
        llm_kwargs: further ``LLM(...)`` keyword arguments (e.g. tensor_parallel_size).
    """

    name = "trtllm"

    def __init__(self, checkpoint_dir: str | Path, *, precision: str = "bf16", artifact_key: str,
                 cache_root: str | Path, prequantized: bool = True, calibration: Mapping[str, Any] | None = None,
                 tokenizer_dir: str | Path | None = None, build: Mapping[str, Any] | None = None,
                 llm_kwargs: Mapping[str, Any] | None = None) -> None:
        tensorrt_llm, llmapi = import_trtllm()  # first: a clear error when it is not installed
        self.precision = precisions.get(precision)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else self.checkpoint_dir
        self.build = build_config_kwargs(**dict(build or {}))
        self._llmapi = llmapi
        if prequantized:
            check_checkpoint_matches(self.precision, self.checkpoint_dir)
        elif not self.precision.is_baseline and calibration is None:
            raise QevalError(f"precision {self.precision.name!r} with prequantized=False needs a calibration set",
                             field="calibration", fix="pass calibration=calib_config_kwargs(...), or build "
                             "from the ModelOpt-exported checkpoint (prequantized=True)")

        import torch

        if not torch.cuda.is_available():
            raise EngineUnavailable("TensorRT-LLM needs an NVIDIA GPU and none is visible", engine="trtllm",
                                    fix="run the trtllm cells on a GPU machine, or drop 'trtllm' from the "
                                        "suite's backends", probe={"gpu": _gpu_probe()})
        self.gpu_sku = torch.cuda.get_device_name(0)
        self.trtllm_version = str(getattr(tensorrt_llm, "__version__", "unknown"))
        build_id = {**self.build, "prequantized": prequantized,
                    "quant": quant_config_kwargs(self.precision) if not prequantized else None,
                    "calibration": dict(calibration) if (calibration and not prequantized) else None}
        self.cache_key = engine_cache_key(gpu_sku=self.gpu_sku, trtllm_version=self.trtllm_version,
                                          artifact_key=artifact_key, build=build_id)
        self.engine_dir = engine_dir(cache_root, self.cache_key)

        LLM = _trt_llm_class(tensorrt_llm)
        extra = dict(llm_kwargs or {})
        # The engine cache is the artifact cache's machinery (lock, temp folder + rename, sha256 of every
        # file checked on read) under its own root: an engine is only valid for the GPU that built it.
        from qeval.artifacts import get_or_build_at

        _, self.built_now = get_or_build_at(
            Path(cache_root), self.cache_key, lambda work: self._build_and_save(LLM, work, prequantized, calibration,
                                                                                extra, build_id),
            label=f"TensorRT-LLM ({self.precision.name})", what="engine")
        # Always run from the saved engine: what runs is what the cache holds.
        self.llm = LLM(model=str(self.engine_dir), tokenizer=str(self.tokenizer_dir), **extra)
        self.tokenizer = self.llm.tokenizer

    def _build_and_save(self, LLM, work: Path, prequantized: bool, calibration, extra: dict,
                        build_id: dict) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"build_config": self._llmapi.BuildConfig(**self.build)}
        if not prequantized and not self.precision.is_baseline:
            q = quant_config_kwargs(self.precision)
            QuantAlgo = self._llmapi.QuantAlgo
            for k in ("quant_algo", "kv_cache_quant_algo"):
                q[k] = QuantAlgo[q[k]] if q[k] is not None else None
            kwargs["quant_config"] = self._llmapi.QuantConfig(**q)
            kwargs["calib_config"] = self._llmapi.CalibConfig(**dict(calibration))
        t0 = time.perf_counter()
        llm = LLM(model=str(self.checkpoint_dir), tokenizer=str(self.tokenizer_dir), **kwargs, **extra)
        work.rmdir()  # LLM.save writes the engine folder itself
        try:
            llm.save(str(work))
        finally:
            llm.shutdown()
        marker = {"cache_key": self.cache_key, "precision": self.precision.name, "gpu_sku": self.gpu_sku,
                  "trtllm_version": self.trtllm_version, "checkpoint_dir": str(self.checkpoint_dir),
                  "build": build_id, "build_seconds": round(time.perf_counter() - t0, 1)}
        (work / ENGINE_MARKER).write_text(json.dumps(marker, indent=2, default=str))
        return marker

    @classmethod
    def from_cell(cls, ctx: Any, cell: Any) -> "TRTLLMBackend":
        """The runner's entry point (qeval.runner.build_backend).

        The baseline cell builds from ``ctx.model_dir``. A quantized cell needs the
        ModelOpt-exported checkpoint of its precision, the artifact vLLM and HF also
        run: ``ctx.checkpoint_for(precision) -> Path`` (the artifact cache's hook).
        """
        import_trtllm()  # first: the "does not import here" NOT RUN
        arch = precisions.current_arch()
        if precisions.kernel_kind(cell.precision, "trtllm", arch) == "none":
            raise EngineUnavailable(f"TensorRT-LLM has no kernels for {cell.precision} on {arch}", engine="trtllm",
                                    fix="run this precision on a GPU generation that has them (see the registry)",
                                    probe={"arch": arch, "gpu": _gpu_probe()})
        if cell.is_baseline:
            checkpoint = Path(ctx.model_dir)
        elif cell.precision and precisions.get(cell.precision).external is not None:
            from qeval import checkpoints

            checkpoints.check_engine(cell)  # TensorRT-LLM takes ModelOpt exports only: others are NOT RUN
            checkpoint = checkpoints.folder_of(cell.precision)
        else:
            checkpoint_for = getattr(ctx, "checkpoint_for", None)
            if checkpoint_for is None:
                raise QevalError(f"the trtllm backend needs the ModelOpt-exported checkpoint of "
                                 f"{cell.precision!r}, and this run provides none (no artifact cache)",
                                 field="backends", fix="quantize and export it first (qeval quantize), "
                                 "or drop 'trtllm' from the suite's backends")
            checkpoint = Path(checkpoint_for(cell.precision))
        return cls(checkpoint, precision=cell.precision, artifact_key=directory_content_key(checkpoint),
                   cache_root=default_cache_root(), tokenizer_dir=ctx.model_dir,
                   build={"max_input_len": ctx.suite.model.max_length})

    @property
    def capabilities(self) -> Capabilities:
        return trtllm_capabilities(precisions.current_arch(), version=self.trtllm_version, gpu=self.gpu_sku,
                                   engine_quant_algo=engine_quant_algo(self.engine_dir),
                                   precision=self.precision.name)

    def _sampling(self, **kwargs: Any):
        return self._llmapi.SamplingParams(**kwargs)

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """Sum of continuation log-probabilities, from the context logits (see the module docstring)."""
        if not requests:
            return []
        if not self.build["gather_context_logits"]:
            raise QevalError("this engine was built without gather_context_logits: it cannot score prompts",
                             field="backends.trtllm.build.gather_context_logits", fix="set it to true")
        fitted = [fit_tokens(r.context_tokens, r.continuation_tokens, self.build["max_input_len"])
                  for r in requests]
        sp = self._sampling(max_tokens=1, top_k=1, return_context_logits=True)
        outputs = self.llm.generate([t for t, _ in fitted], sp, use_tqdm=False)
        return [continuation_logprobs(out.context_logits, tokens, n_ctx)
                for out, (tokens, n_ctx) in zip(outputs, fitted)]

    def _generation_params(self, r: GenerationRequest):
        greedy = r.temperature <= 0
        return self._sampling(max_tokens=r.max_tokens, stop=list(r.stop) or None, ignore_eos=r.ignore_eos,
                              **({"top_k": 1} if greedy else {"temperature": r.temperature,
                                                               **({} if r.seed is None else {"seed": r.seed})}))

    @staticmethod
    def _prompt(r: GenerationRequest):
        return list(r.prompt) if isinstance(r.prompt, tuple) else r.prompt

    def generations(self, requests: list[GenerationRequest]) -> list[Generation]:
        if not requests:
            return []
        outputs = self.llm.generate([self._prompt(r) for r in requests],
                                    [self._generation_params(r) for r in requests], use_tqdm=False)
        out = []
        for o, r in zip(outputs, requests):
            completion = o.outputs[0]
            reason = getattr(completion, "finish_reason", None)
            stop_reason = getattr(completion, "stop_reason", None)
            finish = ("length" if reason == "length" else ("eos" if stop_reason is None else "stop")
                      if reason == "stop" else "unknown")
            tokens = getattr(completion, "token_ids", None)
            out.append(Generation(truncate_at_stop(completion.text, r.stop), len(tokens) if tokens is not None
                                  else None, finish))
        return out

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        return [g.text for g in self.generations(requests)]

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Token chunks as they arrive (``generate_async(..., streaming=True)``), stamped on arrival."""
        result = self.llm.generate_async(self._prompt(request), self._generation_params(request), streaming=True)
        for out in result:  # GenerationResult iterates synchronously, one step per response
            chunk = out.outputs[0]
            n = len(chunk.token_ids_diff)
            if n or chunk.text_diff:
                yield TokenEvent(text=chunk.text_diff, n_tokens=n, t=time.perf_counter())

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.shutdown()
