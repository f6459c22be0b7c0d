"""The one stop-signal helper: the first signal asks for a stop, the second takes the previous way out."""

from __future__ import annotations

import os
import signal

import pytest

from cvm.signals import StopSignals


def test_first_signal_stops_second_one_interrupts() -> None:
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5) and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # the previous handler is back: a slow stop can be interrupted
            # To this thread, so the handler runs before raise_signal returns: a signal to the process may be taken
            # by another thread of pytest's, whose turn on a loaded machine can come after the block.
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_handlers_are_restored_on_exit() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) != before
        stop.set()
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == before
