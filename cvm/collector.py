"""Python's cyclic garbage collector, tuned for cvm's processes: rarer collections, none over what start-up built.

cvm's processes hold many long-lived objects (a worker's table, timers and population; the learner's CLV facts;
the simulation's customers) and allocate short-lived ones fast (decoded events and states, score dicts). Python's
default thresholds (700, 10, 10) then collect the youngest generation every 700 allocations, and every few
seconds a full collection walks every long-lived object again, to find cycles that almost never exist: cvm's data
is freed by reference counting. Measured on the worker's code (docs/benchmarks.md, 2026-12-05: the bench's
400,000 events of 200,000 customers through the ``Scorer`` on fake clients), full collections took 0.3 s each and
35% of the worker's CPU, and all collections 41%; with these settings, about 15%.

:func:`roomy_gc` freezes what exists when it starts (imports, configuration: never garbage) and raises the
thresholds: the youngest generation is collected every 100,000 allocations (less what was freed meanwhile), the
middle one every 50 of those, and a full collection is considered after 20 middle ones (and made only when the
long-lived objects grew by a quarter since the last one, Python's own rule). Cycles are still collected: the young
ones, which are nearly all of them, as before; the old ones later.

>>> import gc
>>> before = gc.get_threshold()
>>> with roomy_gc():
...     gc.get_threshold()
(100000, 50, 20)
>>> gc.get_threshold() == before
True
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["THRESHOLDS", "roomy_gc", "settled"]

#: The collector's thresholds while :func:`roomy_gc` holds: allocations before a young collection, young
#: collections before a middle one, middle ones before a full one is considered.
THRESHOLDS = (100_000, 50, 20)


@contextmanager
def roomy_gc() -> Iterator[None]:
    """Collect garbage less often, and never walk what exists now; Python's settings again afterwards."""
    saved = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()


def settled() -> None:
    """What exists now lives until the command ends (a simulation's customers, say): no collection walks it again
    while :func:`roomy_gc` holds."""
    gc.freeze()
