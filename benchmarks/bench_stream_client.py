"""How late do streaming clients stamp a token? qeval's probe vs vLLM's own benchmark client.

A paced SSE server (a child process, aiohttp) answers /v1/completions with
`--tokens` chunks per request, one every `--gap-ms` on an absolute schedule,
and writes into each chunk's text the `perf_counter()` at which it sent it
(CLOCK_MONOTONIC: the same clock in both processes). A client's stamping lag
for a chunk is its arrival stamp minus that send time: everything a client's
own work adds to TTFT, ITL and TPOT. The server's TPOT is exactly the gap.

Clients, each at the same concurrency (closed loop) and request count:
- `qeval`: what `qeval run` uses for the openai backend, `qeval.loadgen.run_load`
  over `OpenAIServerBackend.stream` (one aiohttp loop stamps, request threads parse).
- `vllm`: `vllm bench serve`'s request function (`async_request_openai_completions`,
  aiohttp, one asyncio loop), N workers; arrival times rebuilt from its
  start time, TTFT and ITL list, as its own metrics are.
- `httpx-threads`: qeval's stream client before commit 1ef7a01 (httpx, each
  request thread reads and stamps its own stream), kept here as the peer that
  the H200 fidelity run caught lagging at concurrency 16.

    .venv/bin/python benchmarks/bench_stream_client.py [--gap-ms 2] [--concurrency 1 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import httpx
import numpy as np

from qeval.backends.base import GenerationRequest, TokenEvent
from qeval.backends.openai_server import OpenAIServerBackend
from qeval.loadgen import LoadShape, run_load


# -- the paced server (runs in a child process) ---------------------------------------------
def serve(port: int, tokens: int, gap_s: float) -> None:
    from aiohttp import web

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "paced"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_tokens") or tokens)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        start = time.perf_counter()
        for i in range(n):
            await asyncio.sleep(max(0.0, start + (i + 1) * gap_s - time.perf_counter()))
            chunk = {"choices": [{"index": 0, "text": f"{time.perf_counter():.9f} "}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        usage = {"choices": [], "usage": {"completion_tokens": n}}
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/v1/models", models), web.post("/v1/completions", completions)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_server(tokens: int, gap_s: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--tokens", str(tokens),
                             "--gap-ms", str(gap_s * 1e3)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/v1/models", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the paced server did not start")


# -- the clients: each returns, per request, [(arrival stamp, server send time), ...] ---------
def sent_times(text: str) -> list[float]:
    return [float(x) for x in text.split()]


def run_qeval(url: str, n: int, concurrency: int, tokens: int,
              backend_class: type[OpenAIServerBackend] = OpenAIServerBackend) -> list[list[tuple[float, float]]]:
    backend = backend_class(url)
    try:
        requests = [GenerationRequest(prompt="x", max_tokens=tokens, ignore_eos=True)] * n
        run = run_load(backend, requests, LoadShape.closed(concurrency))
    finally:
        backend.close()
    return [[(e.t, float(e.text)) for e in r.events] for r in run.records]


class HttpxThreadsBackend(OpenAIServerBackend):
    """qeval's stream before 1ef7a01, reduced to its timing path: each thread reads its own httpx stream."""

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        body = {**self._generation_body(request), "stream": True}
        with self._client.stream("POST", "/completions", json=body) as r:
            for line in r.iter_lines():
                t = time.perf_counter()
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    choices = json.loads(line[5:]).get("choices") or []
                    if choices:
                        yield TokenEvent(text=choices[0]["text"], n_tokens=1, t=t)


def run_httpx_threads(url: str, n: int, concurrency: int, tokens: int) -> list[list[tuple[float, float]]]:
    return run_qeval(url, n, concurrency, tokens, backend_class=HttpxThreadsBackend)


def run_vllm(url: str, n: int, concurrency: int, tokens: int) -> list[list[tuple[float, float]]]:
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_completions

    async def main() -> list[Any]:
        queue = list(range(n))
        outputs: list[Any] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def worker() -> None:
                while queue:
                    queue.pop()
                    outputs.append(await async_request_openai_completions(RequestFuncInput(
                        prompt="x", api_url=f"{url}/v1/completions", prompt_len=1, output_len=tokens,
                        model="paced", ignore_eos=True), session))
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outputs

    result = []
    for out in asyncio.run(main()):
        assert out.success, out.error
        arrivals = out.start_time + out.ttft + np.concatenate([[0.0], np.cumsum(out.itl)])
        result.append(list(zip(arrivals.tolist(), sent_times(out.generated_text))))
    return result


CLIENTS: dict[str, Callable[[str, int, int, int], list[list[tuple[float, float]]]]] = {
    "qeval": run_qeval, "vllm": run_vllm, "httpx-threads": run_httpx_threads}


def summarize(streams: list[list[tuple[float, float]]], tokens: int) -> dict[str, float]:
    lags = np.array([1e3 * (t - s) for stream in streams for t, s in stream])
    tpot = [1e3 * (s[-1][0] - s[0][0]) / (len(s) - 1) for s in streams if len(s) > 1]
    return {"lag_p50_ms": float(np.percentile(lags, 50)), "lag_p99_ms": float(np.percentile(lags, 99)),
            "lag_max_ms": float(lags.max()), "tpot_p50_ms": statistics.median(tpot),
            "complete": sum(len(s) == tokens for s in streams) / len(streams)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gap-ms", type=float, default=2.0, help="server's time between chunks (default 2: "
                                                                "~an H200's TPOT for a small model)")
    ap.add_argument("--tokens", type=int, default=64, help="chunks per request (default 64)")
    ap.add_argument("--requests", type=int, default=64, help="requests per client and load point (default 64)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=2, help="runs per client, order rotated per round (default 2)")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.tokens, args.gap_ms / 1e3)
        return
    proc, url = start_server(args.tokens, args.gap_ms / 1e3)
    print(f"paced server: {args.tokens} chunks {args.gap_ms} ms apart (true TPOT {args.gap_ms} ms); "
          f"{args.requests} requests per client and load point, {args.rounds} rounds\n")
    print(f"{'conc':>4} {'client':>13} {'lag p50':>8} {'lag p99':>8} {'lag max':>8} {'TPOT p50':>9} "
          f"{'chunks/s':>9}   (ms; lag = client's arrival stamp - server's send time)")
    names = list(CLIENTS)
    import vllm.benchmarks.lib.endpoint_request_func  # noqa: F401 - imported here, not inside a timed run
    try:
        for c in args.concurrency:
            pooled: dict[str, list] = {name: [] for name in names}
            rate: dict[str, list[float]] = {name: [] for name in names}
            for rnd in range(args.rounds):
                for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                    t0 = time.perf_counter()
                    streams = CLIENTS[name](url, args.requests, c, args.tokens)
                    rate[name].append(sum(len(s) for s in streams) / (time.perf_counter() - t0))
                    pooled[name] += streams
            for name in names:
                s = summarize(pooled[name], args.tokens)
                print(f"{c:>4} {name:>13} {s['lag_p50_ms']:8.3f} {s['lag_p99_ms']:8.3f} {s['lag_max_ms']:8.2f} "
                      f"{s['tpot_p50_ms']:9.3f} {statistics.mean(rate[name]):9.0f}"
                      + ("" if s["complete"] == 1 else f"   (complete streams {s['complete']:.0%})"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
