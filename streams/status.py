"""What a worker tells of itself: the CPU of its Kafka thread by stage of a batch, and its status line.

Each stage of a batch ends with a lap (:meth:`Laps.lap`): the CPU time the thread used since the previous lap is
charged to that stage, so the stages add up to the thread's CPU time. After each batch they are added to
``cvm_worker_stage_seconds`` (:meth:`Laps.publish`; ``cvm bench`` reports them per event). The status line
(:func:`status_line`, logged every 10 s) says where the worker stands in stream time and what its next tick waits for.

>>> laps = Laps()
>>> laps.lap("other"); laps.lap("decode"); laps.move(0.0, "decode", "models")
>>> sorted(laps.cpu)
['decode', 'models']
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Mapping

from cvm import metrics
from streams.clock import StreamClock

__all__ = ["Laps", "status_line"]


class Laps:
    """CPU seconds of the thread that steps the scorer, by stage of a batch (``cvm_worker_stage_seconds``)."""

    def __init__(self) -> None:
        #: CPU seconds by stage since the last :meth:`publish`
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self._at = (0, 0.0)  # (thread, its CPU time) of the last lap

    def lap(self, stage: str) -> None:
        """Charge this thread's CPU time since the last lap to ``stage``."""
        thread, now = threading.get_ident(), time.thread_time()
        if self._at[0] == thread:  # another thread's CPU time is no start (the scorer is built elsewhere)
            self.cpu[stage] += now - self._at[1]
        self._at = (thread, now)

    def move(self, seconds: float, from_stage: str, to_stage: str) -> None:
        """Charge ``seconds`` already charged to ``from_stage`` to ``to_stage`` instead."""
        self.cpu[to_stage] += seconds
        self.cpu[from_stage] -= seconds

    def publish(self) -> None:
        """Add the stages' CPU seconds to ``cvm_worker_stage_seconds``, and start over."""
        for stage, seconds in self.cpu.items():
            metrics.worker_stage_seconds.labels(stage=stage).inc(seconds)
        self.cpu.clear()


def status_line(
    clock: StreamClock,
    now: float,
    *,
    paused: int,
    waiting_for_models: bool,
    changed: int,
    timers: int,
    scored: Mapping[str, int],
) -> str:
    """One line on where a worker stands in stream time, as of the monotonic time ``now``.

    Parameters
    ----------
    clock
        The worker's stream clock: its tick, sources and what they hold.
    paused
        How many source partitions are paused.
    waiting_for_models
        Whether the next tick waits for the learner's models.
    changed
        How many customers changed since their last tick scoring.
    timers
        How many customers have a timer set.
    scored
        Scorings by occasion, model waits given up.
    """
    tick = clock.tick
    held = sum(len(s.items) for s in clock.sources.values())
    idle = sorted(f"{t}[{p}]" for (t, p), src in clock.sources.items() if clock.idle(src, now))
    blocking = []
    if tick is not None:
        nxt = tick + clock.tick_ms
        for (t, p), src in clock.sources.items():
            if not src.follower and not clock.idle(src, now) and not src.passed(nxt):
                caught = "no" if src.caught_up is None else f"for {now - src.caught_up:.1f} s"
                blocking.append(f"{t}[{p}] (last delivery {now - src.seen:.1f} s ago, read to the end {caught})")
    return (
        f"stream time: tick {tick}, latest event {clock.latest()}, {held} records held, "
        f"{paused} partitions paused, idle: {' '.join(idle) or 'none'}, "
        f"next tick waits for: {' '.join(blocking) or 'nothing'}, "
        f"waiting for models: {waiting_for_models}, customers changed since their tick: "
        f"{changed}, timers: {timers}, scored {dict(scored)}"
    )
