"""The one way cvm's processes stop on SIGTERM and SIGINT: the first signal asks, the second one insists.

While a :class:`StopSignals` is active, the first SIGTERM or SIGINT sets :attr:`StopSignals.event` (the loop of the
process sees it and stops in order: flush, commit, close) and puts the previous handlers back, so a second signal
takes the previous way out (for SIGINT, ``KeyboardInterrupt``; for SIGTERM, the default: the process ends). A stop
that hangs can thus always be interrupted. Outside the main thread Python cannot set handlers: the signals keep
theirs and only :meth:`StopSignals.set` stops the loop.

>>> import os, signal
>>> with StopSignals() as stop:
...     os.kill(os.getpid(), signal.SIGTERM)
...     stop.wait(5)
True
>>> stop.requested, stop.signal_name
(True, 'SIGTERM')
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """A context manager: while active, SIGTERM/SIGINT set :attr:`event` instead of ending the process."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.event = threading.Event()
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a stop was asked for (by a signal or :meth:`set`)."""
        return self.event.is_set()

    def set(self) -> None:
        """Ask for a stop without a signal (a deadline, a test)."""
        self.event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a stop is asked for or ``timeout`` passes; True when a stop was asked for."""
        return self.event.wait(timeout)

    def __enter__(self) -> StopSignals:
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the signals keep their handlers
                pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()
        self._restore()  # a second signal takes the previous way out

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()
