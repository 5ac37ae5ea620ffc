"""Ctrl-C during a run is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. Where that is a
weakref callback or a `__del__` (loading a model runs many), the interpreter prints "Exception ignored in ..."
and carries on, so the run would finish as if no key had been pressed (seen in CI: a Ctrl-C during the
baseline's weight loading, exit 0 instead of 130). The handler here also records the request, and the runner
asks `stop_if_requested()` before each cell and each look, where stopping loses nothing already stored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_requested = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextmanager
def recorded_ctrl_c() -> Iterator[None]:
    """Within this block a Ctrl-C both raises KeyboardInterrupt (as usual) and is remembered until the block
    ends. A process that ignores SIGINT (started with `nohup`, or in the background of a script) keeps doing
    so; outside the main thread (where signal handlers cannot be set) nothing changes."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield
        return
    _requested.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def stop_if_requested() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived inside `recorded_ctrl_c` and was swallowed on its way."""
    if _requested.is_set():
        raise KeyboardInterrupt
