"""The single worker's counters over the window of ``pipeline_eps``, as its CPU time is.

The worker's ``/metrics`` (scorings, their CPU, re-scorings, the CPU of each stage of its batch loop) are cumulative
over its life. Read once after the run, they held its start-up and, worse, the idle scoring it does once the stream
has gone quiet (every customer re-scored as of the last tick: 136,971 scorings after a 400,000-event run, outside
the rate's window, about 13 µs per event of ``stage_features_us`` and ``stage_score_us``). :class:`WorkerCounters`
samples them while the worker works (about once a second, since rendering the page takes the worker CPU) and reads
each at the window's two ends by linear interpolation, like ``pipeline_cpu_us_per_event``.
"""

from __future__ import annotations

import itertools
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cvm.metrics import sample_sums

__all__ = ["STAGES", "WorkerCounters", "at"]

#: The stages of a worker's batch whose CPU the bench reports per event (cvm_worker_stage_seconds).
STAGES = {
    "consume": "consume (librdkafka hands over the records)",
    "decode": "decode, validate, queue by source",
    "fold": "fold events into states, labels",
    "features": "features (and the churn labels a tick matures)",
    "score": "population, reasons, alerts, snapshots, timers",
    "models": "CLV and churn models",
    "emit": "score, alert, label messages sent and acknowledged",
    "changelog": "states encoded, table + changelog written",
    "commit": "offsets committed, sources paused/resumed",
    "other": "ticks, positions, gauges",
}

#: What is read from the page: figure name -> (metric, labels).
_COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "scorings": ("cvm_scorings_total", {}),
    "scoring_seconds": ("cvm_scoring_seconds_total", {}),
    "silent": ("cvm_silent_rescorings_total", {}),
    "slots": ("cvm_rescored_customers_total", {}),
    **{f"stage_{stage}": ("cvm_worker_stage_seconds_total", {"stage": stage}) for stage in STAGES},
}


def at(samples: Sequence[tuple[float, float]], t: float) -> float:
    """The value of a sampled, increasing curve at ``t``, linearly interpolated (clamped at the ends).

    >>> at([(0.0, 1.0), (2.0, 3.0)], 1.5), at([(0.0, 1.0), (2.0, 3.0)], 9.0)
    (2.5, 3.0)
    """
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return samples[-1][1]


def counters(families: Iterable[Any]) -> dict[str, float]:
    """The figures :class:`WorkerCounters` keeps, from a parsed ``/metrics`` page."""
    families = list(families)
    return {key: sample_sums(families, name, **labels) for key, (name, labels) in _COUNTERS.items()}


class WorkerCounters:
    """Samples one worker's ``/metrics`` (at most every ``every`` seconds); :meth:`window` gives the figures.

    ``started`` is when the worker's process was spawned: every counter is 0 then, which bounds the curve's start
    when the page could not be read yet (imports, the group join).

    >>> w = WorkerCounters(0, started=0.0)
    >>> w.add(10.0, {"scorings": 300.0, "scoring_seconds": 0.03, "silent": 0.0, "slots": 50.0,
    ...              "stage_score": 0.02})
    >>> w.add(20.0, {"scorings": 500.0, "scoring_seconds": 0.05, "silent": 10.0, "slots": 50.0,
    ...              "stage_score": 0.04})
    >>> figures = w.window(10.0, 20.0, events=100)
    >>> figures["scorings_per_event"], figures["scoring_cpu_us"], figures["rescorings_per_s"]
    (2.0, 100.0, 1)
    >>> figures["model_rescorings_per_event"], figures["stage_score_us"], figures["stage_fold_us"]
    (0.0, 200.0, 0.0)
    """

    def __init__(self, port: int, started: float, every: float = 1.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.samples: list[tuple[float, Mapping[str, float]]] = [(started, {})]
        self._last = 0.0

    def poll(self, force: bool = False) -> None:
        """Sample the page unless one was taken less than ``every`` seconds ago; a page not served yet is skipped
        (the worker is starting)."""
        now = time.time()
        if not force and now - self._last < self.every:
            return
        self._last = now
        try:
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                page = resp.read().decode()
        except OSError:
            return
        self.add(time.time(), counters(text_string_to_metric_families(page)))

    def add(self, t: float, values: Mapping[str, float]) -> None:
        self.samples.append((t, values))

    def _delta(self, key: str, t0: float, t1: float) -> float:
        curve = [(t, values.get(key, 0.0)) for t, values in self.samples]
        return at(curve, t1) - at(curve, t0)

    def window(self, t0: float, t1: float, events: int) -> dict[str, Any]:
        """The figures over ``[t0, t1]`` (wall-clock seconds), per ``events`` (those the window covers); empty when
        the page was never read."""
        if len(self.samples) < 2:
            return {}
        n = max(1, events)
        scorings = self._delta("scorings", t0, t1)
        return {
            "scorings_per_event": round(scorings / n, 3),
            "rescorings_per_s": round(self._delta("silent", t0, t1) / max(t1 - t0, 1e-9)),
            "model_rescorings_per_event": round(self._delta("slots", t0, t1) / n, 3),
            "scoring_cpu_us": round(self._delta("scoring_seconds", t0, t1) / max(1.0, scorings) * 1e6, 1),
            **{f"stage_{s}_us": round(self._delta(f"stage_{s}", t0, t1) / n * 1e6, 1) for s in STAGES},
        }
