"""Any OpenAI-compatible server (`vllm serve`, `trtllm-serve`, ...) as a qeval backend.

Scoring uses the legacy completions API the way lm-eval's `local-completions`
model does: the prompt is sent as token ids with ``echo=true, logprobs=1``
and the server returns one log-probability per prompt token (plus its top-1),
so every engine scores exactly the tokens the harness tokenized. Generation
is greedy; streaming (``stream=true``) gives client-side arrival times for the
latency probes, stamped by one event loop for all streams (`qeval.backends.sse`).

For a cell without a configured endpoint qeval starts `vllm serve` on
127.0.0.1 with the cell's artifact (the baseline folder or ModelOpt's
exported checkpoint) and stops it when the cell ends. API keys for remote
endpoints come from the environment variable the suite names; they live in
this object's request headers only and are never written anywhere.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import httpx
import numpy as np

from qeval import precisions
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
from qeval.backends.sse import SSEReader, StreamStart
from qeval.errors import QevalError
from qeval.serving import Server, ServerFailed, start_vllm_server, wait_healthy

log = logging.getLogger(__name__)

SERVED_NAME = "qeval"
SCORE_BATCH = 32  # prompts per completions request (the server batches them together)
IN_FLIGHT = 4  # scoring requests in flight at once
DEFAULT_TOP_K = 20  # log-probabilities per prompt position asked for divergence (vLLM's default max_logprobs)
EXTERNAL = "external"  # the kernels kind of a server qeval did not start: it cannot know what runs there
_TOKEN_ID_KEY = re.compile(r"^token_id:(\d+)$")
_MAX_ALLOWED = re.compile(r"max allowed: (\d+)")


class MalformedResponse(QevalError):
    """The server answered, but not with what the OpenAI completions API promises."""


def vllm_serve_args(load_kwargs: dict[str, Any]) -> list[str]:
    """`vllm.LLM` keyword arguments from the precision registry as `vllm serve` flags."""
    args: list[str] = []
    for key, value in load_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


class OpenAIServerBackend:
    """An OpenAI-compatible completions endpoint.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (the API is under /v1).
        model: the served model name (default: the first one /v1/models lists).
        precision: the precision the server runs (for records and capabilities).
        api_key: bearer token for remote endpoints (read from the environment by `from_cell`).
        server: the server process qeval started for this backend, stopped by `close()`.
        kernels: "real" or "simulated", as the capability record should say, for a server qeval
            started; "external" for one it did not (qeval cannot know what runs there).
        compute_dtype: the dtype the server computes in, where qeval started it.
        top_k: log-probabilities per prompt position asked for divergence; at least the vocabulary
            size gives the full distributions (exact KL; heavy JSON), less gives bounds only.
        vocab_size: the model's vocabulary (to tell a full answer from a top-k one).
    """

    name = "openai"

    def __init__(self, base_url: str, *, model: str | None = None, precision: str = "bf16",
                 api_key: str | None = None, server: Server | None = None, max_length: int = 2048,
                 request_timeout_s: float = 600.0, kernels: str | None = None, seed: int = 0,
                 note: str = "", compute_dtype: str | None = None, top_k: int = DEFAULT_TOP_K,
                 vocab_size: int | None = None) -> None:
        self.compute_dtype = compute_dtype  # the --dtype qeval gave `vllm serve`; unknown for others' servers
        self.base_url = base_url.rstrip("/")
        self.precision = precision
        self.server = server
        self.max_length = max_length
        self.kernels = kernels or ("real" if server is not None else EXTERNAL)
        self.note = note
        self.top_k = int(top_k)
        self.vocab_size = vocab_size
        self._answered_k: int | None = None  # the k the server accepted (it may cap what was asked)
        self.seed = seed
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=f"{self.base_url}/v1", headers=headers,
                                    timeout=httpx.Timeout(request_timeout_s, connect=10.0),
                                    limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._headers, self._request_timeout_s = headers, request_timeout_s
        self._reader: SSEReader | None = None  # started by the first stream (loglikelihood runs never need it)
        self._reader_lock = threading.Lock()
        self.model = model or self._first_model()
        self.api_report = self._api_report() if server is None else {}

    # -- life cycle -------------------------------------------------------------------------
    @classmethod
    def from_cell(cls, ctx: Any, cell: Any) -> "OpenAIServerBackend":
        """Connect to the suite's endpoint for this precision, or start `vllm serve` with the cell's artifact."""
        from qeval.backends.vllm import vllm_load_plan

        from qeval.backends.vllm import vocab_size

        suite = ctx.suite
        spec = suite.server
        entry = precisions.get(cell.precision)
        endpoint = spec.endpoints.get(cell.precision)
        vocab = vocab_size(ctx.model_dir)
        top_k = suite.divergence.server_top_k
        top_k = (vocab or DEFAULT_TOP_K) if top_k == "full" else int(top_k)
        if endpoint:
            api_key = os.environ.get(spec.api_key_env) or None
            server = Server(base_url=endpoint)
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
            try:
                wait_healthy(server, spec.startup_timeout_s, headers=headers)
            except ServerFailed as exc:
                raise QevalError(f"the endpoint for {cell.precision!r} does not answer: {exc}",
                                 file=str(ctx.store.root / "suite.yaml"), field=f"server.endpoints.{cell.precision}",
                                 fix="start the server, or correct its URL (and the API key in "
                                     f"${spec.api_key_env})") from None
            return cls(endpoint, model=spec.model_name, precision=cell.precision, api_key=api_key,
                       max_length=suite.model.max_length, request_timeout_s=spec.request_timeout_s,
                       seed=suite.seeds.sampling, top_k=top_k, vocab_size=vocab)
        if importlib.util.find_spec("vllm") is None:
            raise EngineUnavailable(f"{cell.precision} has no server.endpoints entry, so qeval would start "
                                    "`vllm serve`, and vLLM is not installed", engine="openai",
                                    fix="install vLLM (`make install` on CPU), or give the precision an endpoint "
                                        "under server.endpoints", probe={"import vllm": "not found"})
        path, load, note = vllm_load_plan(ctx, cell, engine="`vllm serve`")
        dtype = load.pop("dtype", ctx.compute.dtype)  # a checkpoint whose CPU kernels need one dtype says so
        extra = [*vllm_serve_args(load), *spec.extra_args]
        if "--max-logprobs" not in extra:  # the server must accept the divergence's top-k
            extra += ["--max-logprobs", str(top_k)]
        server = start_vllm_server(path, port=spec.port, served_model_name=SERVED_NAME, dtype=dtype,
                                   max_model_len=suite.model.max_length, seed=suite.seeds.sampling,
                                   extra_args=extra, timeout_s=spec.startup_timeout_s,
                                   log_dir=ctx.store.root / "servers")
        kernels = "real" if entry.is_baseline else precisions.kernel_kind(entry, "vllm", precisions.current_arch())
        return cls(server.base_url, model=SERVED_NAME, precision=cell.precision, server=server,
                   max_length=suite.model.max_length, request_timeout_s=spec.request_timeout_s,
                   seed=suite.seeds.sampling, kernels=kernels, note=note, compute_dtype=dtype,
                   top_k=top_k, vocab_size=vocab)

    def close(self) -> None:
        self._client.close()
        if self._reader is not None:
            self._reader.close()
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def capabilities(self) -> Capabilities:
        if self.server is not None:
            where = f"`vllm serve` started by qeval at {self.base_url}"
        else:
            reported = ", ".join(f"{k} {v}" for k, v in self.api_report.items()) or "nothing beyond the model id"
            where = (f"external server at {self.base_url} (not started by qeval, which cannot see its kernels or "
                     f"dtype); its API reports: {reported}")
        return Capabilities(backend="openai", precisions=(self.precision,), kernels={self.precision: self.kernels},
                            notes=f"{where}, model {self.model!r}" + (f"; {self.note}" if self.note else ""),
                            compute_dtype=self.compute_dtype, engine_report=dict(self.api_report),
                            run_here=True)

    def _api_report(self) -> dict[str, Any]:
        """What an external server says about itself: its /v1/models entry and, where it has one, /version."""
        report: dict[str, Any] = {}
        try:
            r = self._client.get("/models")
            entry = next((m for m in (r.json().get("data") or []) if m.get("id") == self.model), None)
            for key in ("id", "owned_by", "root", "max_model_len"):
                if entry and entry.get(key) is not None:
                    report[key] = entry[key]
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        try:
            r = httpx.get(f"{self.base_url}/version", headers=self._headers, timeout=10.0)
            if r.status_code == 200 and isinstance(r.json(), dict) and r.json().get("version"):
                report["version"] = r.json()["version"]
        except (httpx.HTTPError, ValueError):
            pass
        return report

    # -- HTTP -------------------------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self._client.post("/completions", json=body)
        self._check_auth(r)
        if r.status_code != 200:
            raise MalformedResponse(f"{self.base_url}/v1/completions answered HTTP {r.status_code}: {r.text[:300]}",
                                    field="backends", fix="check the server log; the request was "
                                                          f"{ {k: v for k, v in body.items() if k != 'prompt'} }")
        try:
            return r.json()
        except json.JSONDecodeError:
            raise MalformedResponse(f"{self.base_url}/v1/completions answered with non-JSON: {r.text[:200]!r}",
                                    field="backends", fix="point the endpoint at an OpenAI-compatible server") from None

    def _sse_reader(self) -> SSEReader:
        with self._reader_lock:
            if self._reader is None:
                self._reader = SSEReader(self._headers, timeout_s=self._request_timeout_s)
            return self._reader

    def _check_auth(self, r: httpx.Response) -> None:
        self._check_status(r.status_code)

    def _check_status(self, status: int) -> None:
        if status in (401, 403):
            raise QevalError(f"{self.base_url} refused the request (HTTP {status}): the API key is missing "
                             "or wrong", field="server.api_key_env",
                             fix="export the key in the environment variable server.api_key_env names "
                                 "(default OPENAI_API_KEY); qeval never writes it anywhere")

    def _first_model(self) -> str:
        r = self._client.get("/models")
        self._check_auth(r)
        try:
            return str(r.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise MalformedResponse(f"{self.base_url}/v1/models lists no model: {r.text[:200]!r}",
                                    field="server.model_name", fix="name the served model in server.model_name") from None

    # -- scoring ----------------------------------------------------------------------------
    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        batches = [requests[i:i + SCORE_BATCH] for i in range(0, len(requests), SCORE_BATCH)]
        with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            return [r for batch in pool.map(self._score_batch, batches) for r in batch]

    def _score_batch(self, batch: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        prompts = [list((r.context_tokens + r.continuation_tokens)[-self.max_length:]) for r in batch]
        # max_tokens=1 (not 0): the legacy API's echo-only call is not accepted by every server.
        body = {"model": self.model, "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": 1,
                "temperature": 0.0, "seed": self.seed}
        choices = sorted(self._post(body).get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(batch):
            raise MalformedResponse(f"{self.base_url} returned {len(choices)} choices for {len(batch)} prompts",
                                    field="backends", fix="the server must accept a list of token-id prompts")
        return [self._parse_scores(r, len(p), c) for r, p, c in zip(batch, prompts, choices)]

    def _parse_scores(self, request: LoglikelihoodRequest, n_prompt: int, choice: dict[str, Any]) -> LoglikelihoodResult:
        logprobs = choice.get("logprobs") or {}
        token_lps, tops = logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
        n = len(request.continuation_tokens)
        if not isinstance(token_lps, list) or not isinstance(tops, list) or len(token_lps) < n_prompt \
                or len(tops) < n_prompt:
            raise MalformedResponse(f"{self.base_url}: choice {choice.get('index')} has no per-token prompt "
                                    f"log-probabilities for its {n_prompt} prompt tokens "
                                    f"(logprobs.token_logprobs: {str(token_lps)[:80]})", field="backends",
                                    fix="use a server that supports echo=true with logprobs (vLLM, trtllm-serve)")
        values, greedy = [], True
        for i in range(n_prompt - n, n_prompt):
            lp, top = token_lps[i], tops[i] or {}
            if lp is None:
                raise MalformedResponse(f"{self.base_url}: no log-probability for prompt token {i}", field="backends",
                                        fix="the continuation must not start the prompt")
            values.append(float(lp))
            # top_logprobs is keyed by token text, which can be ambiguous: compare values instead.
            greedy &= not top or float(lp) >= max(float(v) for v in top.values()) - 1e-6
        return LoglikelihoodResult(logprob=sum(values), is_greedy=greedy, token_logprobs=tuple(values))

    # -- distributions (divergence) -----------------------------------------------------------
    @property
    def distribution_route(self) -> DistributionRoute:
        k = self._answered_k or self.top_k
        exact = self.vocab_size is not None and k >= self.vocab_size
        capped = (f" (asked {self.top_k}, the server allows {self._answered_k})"
                  if self._answered_k is not None and self._answered_k < self.top_k else "")
        return DistributionRoute(
            name="openai-echo-logprobs" + ("-full" if exact else "-top-k"), exact=exact, top_k=None if exact else k,
            detail=(f"/v1/completions echo=true logprobs={k}{capped} return_tokens_as_token_ids=true: "
                    + ("every token's log-probability" if exact else
                       f"the top {k} and the actual token's per position, so KL is bounded from below only "
                       "(no server API reports the smallest probability an upper bound needs)")))

    def prompt_distributions(self, sequences: Sequence[Sequence[int]], *,
                             batch_size: int | None = None) -> list[PromptDistributions]:
        """Top-k (or, with top_k >= vocabulary, full) prompt log-probabilities per position, keyed by token id.

        Args:
            batch_size: prompts per request, one request at a time when set (1: one sequence per request,
                the second batch composition of the noise floor); None: SCORE_BATCH, IN_FLIGHT in flight.
        """
        seqs = [list(s) for s in sequences]
        step = batch_size or SCORE_BATCH
        batches = [seqs[i:i + step] for i in range(0, len(seqs), step)]
        if batch_size:
            return [d for b in batches for d in self._distributions_batch(b)]
        with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            return [d for part in pool.map(self._distributions_batch, batches) for d in part]

    def _distributions_batch(self, batch: list[list[int]]) -> list[PromptDistributions]:
        k = self._answered_k or self.top_k
        body = {"model": self.model, "prompt": batch, "echo": True, "logprobs": k, "max_tokens": 1,
                "temperature": 0.0, "seed": self.seed, "return_tokens_as_token_ids": True}
        r = self._client.post("/completions", json=body)
        self._check_auth(r)
        allowed = _MAX_ALLOWED.search(r.text) if r.status_code == 400 else None
        if allowed and int(allowed.group(1)) < k:  # the server caps logprobs: take what it allows
            self._answered_k = k = int(allowed.group(1))
            log.warning("%s allows %d log-probabilities per position (asked %d): KL from it is a lower bound",
                        self.base_url, k, self.top_k)
            r = self._client.post("/completions", json={**body, "logprobs": k})
        if r.status_code != 200:
            raise MalformedResponse(f"{self.base_url}/v1/completions (echo, logprobs={k}) answered HTTP "
                                    f"{r.status_code}: {r.text[:300]}", field="backends",
                                    fix="a server that returns prompt log-probabilities (echo with logprobs)")
        self._answered_k = self._answered_k or k
        choices = sorted(r.json().get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(batch):
            raise MalformedResponse(f"{self.base_url} returned {len(choices)} choices for {len(batch)} prompts",
                                    field="backends", fix="the server must accept a list of token-id prompts")
        return [self._parse_distributions(seq, c, k) for seq, c in zip(batch, choices)]

    def _parse_distributions(self, seq: list[int], choice: dict[str, Any], k: int) -> PromptDistributions:
        from qeval.divergence import DivergenceUnavailable

        logprobs = choice.get("logprobs") or {}
        token_lps, tops = logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
        n = len(seq) - 1
        if not isinstance(token_lps, list) or not isinstance(tops, list) or len(tops) < len(seq):
            raise MalformedResponse(f"{self.base_url}: no per-position prompt log-probabilities (echo)",
                                    field="backends", fix="use a server that supports echo=true with logprobs")
        rows = tops[1:len(seq)]
        width = max((len(r or {}) for r in rows), default=0)
        full = self.vocab_size is not None and width >= self.vocab_size
        kk = self.vocab_size if full else k
        ids = np.full((n, kk), -1, dtype=np.int64)
        lps = np.full((n, kk), -np.inf, dtype=np.float32)
        target_lp = np.asarray([float(x) for x in token_lps[1:len(seq)]], dtype=np.float32)
        targets = np.asarray(seq[1:], dtype=np.int64)
        for t, row in enumerate(rows):
            parsed = []
            for key, value in (row or {}).items():
                m = _TOKEN_ID_KEY.match(str(key))
                if m is None:
                    raise DivergenceUnavailable(
                        f"{self.base_url} keys its log-probabilities by token text ({key!r}), not by token id: "
                        "tokens with the same text cannot be told apart, so distributions cannot be matched "
                        "token by token (vLLM's return_tokens_as_token_ids is what gives ids)")
                parsed.append((int(m.group(1)), float(value)))
            # The actual token is listed too; when it is outside the top-k the list has k + 1 entries.
            parsed.sort(key=lambda x: -x[1])
            if len(parsed) > kk:
                parsed = [x for x in parsed if x[0] != targets[t]][:kk]
            for j, (tid, lp) in enumerate(parsed[:kk]):
                ids[t, j], lps[t, j] = tid, lp
        if full:
            dense = np.full((n, self.vocab_size), -np.inf, dtype=np.float32)
            np.put_along_axis(dense, np.maximum(ids, 0), lps, axis=1)
            return PromptDistributions.from_full_top(dense, targets)
        return PromptDistributions(targets=targets, target_logprobs=target_lp, top_ids=ids, top_logprobs=lps)

    # -- generation -------------------------------------------------------------------------
    def _generation_body(self, r: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "prompt": r.prompt if isinstance(r.prompt, str) else list(r.prompt),
                                "max_tokens": r.max_tokens, "temperature": r.temperature,
                                "seed": r.seed if r.seed is not None and r.temperature > 0 else self.seed}
        if r.stop:
            body["stop"] = list(r.stop)
        if r.ignore_eos:
            body["ignore_eos"] = True  # a vLLM / trtllm-serve extension: fixed output lengths for latency
        return body

    def generations(self, requests: list[GenerationRequest]) -> list[Generation]:
        def one(r: GenerationRequest) -> Generation:
            answer = self._post(self._generation_body(r))
            choices = answer.get("choices") or []
            if not choices or not isinstance(choices[0].get("text"), str):
                raise MalformedResponse(f"{self.base_url}: a completion without text", field="backends",
                                        fix="use an OpenAI-compatible completions server")
            choice = choices[0]
            # OpenAI: finish_reason "stop" covers both a stop sequence and end of sequence; vLLM's and
            # trtllm-serve's stop_reason (None for end of sequence) tells them apart where present.
            reason = choice.get("finish_reason")
            if reason == "length":
                finish = "length"
            elif reason == "stop" and "stop_reason" in choice:
                finish = "eos" if choice["stop_reason"] is None else "stop"
            else:
                finish = "stop" if reason == "stop" else "unknown"
            usage = answer.get("usage") or {}
            return Generation(choice["text"], usage.get("completion_tokens"), finish)

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, requests))

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        return [g.text for g in self.generations(requests)]

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Server-sent events of /v1/completions, one `TokenEvent` per chunk, stamped at arrival.

        A chunk normally carries one token; where the server's final usage record says the chunks
        carried more tokens than counted, the last event takes the difference (one event is held
        back for that; its timestamp is its arrival, so no timing changes).
        """
        body = {**self._generation_body(request), "stream": True, "stream_options": {"include_usage": True}}
        held: TokenEvent | None = None
        counted = 0
        usage_tokens: int | None = None
        done = False
        for item in self._sse_reader().post_stream(f"{self.base_url}/v1/completions", body):
            if isinstance(item, StreamStart):
                self._check_status(item.status)
                if item.status != 200:
                    raise MalformedResponse(f"{self.base_url}/v1/completions (stream) answered HTTP {item.status}: "
                                            f"{item.body!r}", field="backends", fix="check the server log")
                continue
            t, line = item.t, item.line.decode("utf-8", "replace")  # t: stamped by the reader at arrival
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]" or done:  # read on to the end of the body: the connection is then reused
                done = True
                continue
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise MalformedResponse(f"{self.base_url}: a stream chunk is not JSON: {data[:120]!r}",
                                        field="backends", fix="use an OpenAI-compatible streaming server") from None
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            choices = chunk.get("choices") or []
            if not choices:
                continue
            text = choices[0].get("text") or ""
            if held is not None:
                yield held
            held = TokenEvent(text=text, n_tokens=1, t=t)
            counted += 1
        if held is not None:
            extra = (usage_tokens - counted) if usage_tokens is not None and usage_tokens > counted else 0
            yield TokenEvent(text=held.text, n_tokens=held.n_tokens + extra, t=held.t)
