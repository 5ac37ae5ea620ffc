"""A Ctrl-C that Python swallows (it arrived inside a weakref callback or a __del__) still stops the run at the
next cell or look. CI saw the swallowed case: a real SIGINT during weight loading, exit 0 instead of 130."""

from __future__ import annotations

import gc
import signal

import pytest

from qeval import interrupts, looks, runner


class _SigintOnDelete:
    def __del__(self) -> None:  # where the interpreter ignores exceptions ("Exception ignored in ...")
        signal.raise_signal(signal.SIGINT)


def _swallow_a_ctrl_c() -> None:
    obj = _SigintOnDelete()
    del obj
    gc.collect()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_swallowed_ctrl_c_stops_the_run_at_the_next_cell_and_look() -> None:
    with interrupts.recorded_ctrl_c():
        _swallow_a_ctrl_c()  # no KeyboardInterrupt reaches us here: Python printed and dropped it
        with pytest.raises(KeyboardInterrupt):
            runner.run_cell(None, None)  # asks before it touches the context
        with pytest.raises(KeyboardInterrupt):
            looks.evaluate_look(None, "cell", None, None, 0, {})
    interrupts.stop_if_requested()  # the request ends with the block: a later run is not stopped by it


def test_without_ctrl_c_nothing_stops() -> None:
    with interrupts.recorded_ctrl_c():
        interrupts.stop_if_requested()


def test_an_ignored_sigint_stays_ignored() -> None:
    # `nohup qeval run ... &`: the shell set SIGINT to be ignored; qeval must not turn it back on.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.recorded_ctrl_c():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            interrupts.stop_if_requested()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_previous_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interrupts.recorded_ctrl_c():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
