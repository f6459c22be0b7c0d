"""Step 3's idle scoring: while the stream is idle, every customer whose latest score is older than the last tick is
scored as of that tick, a share of the table per batch.

Ticks score the customers whose events came or whose timer is due; event scorings between ticks score the customers
whose events came since. The rest keep the score of their last tick, which may be days old: after a backfill, or in
a quiet hour, the dashboard would show them as of then. So once every source is idle, the worker walks its table and
scores, as of the last tick ``T`` (``scored_by = idle``), each customer whose state was last scored before ``T``:

* **once per tick.** A customer scored as of ``T`` is not scored again until the next tick, however many lulls the
  stream has (each lull of a quiet shop re-scored everyone of the hour, 35 scorings per event);
* **read-only.** An idle scoring changes neither the customer's state nor the population: it ranks the customer
  against the view of the last tick, with the models of the last tick. So its score depends only on the customer's
  state, ``T`` and the tick, not on when or in how many pieces it ran, and the ticks after it see what they would
  have seen without it: a live stream with lulls scores and alerts as its replay does;
* **a share per batch** (:data:`PER_BATCH` states read), so a worker holding a million customers keeps taking
  records while it catches up. A tick that comes first ends the walk: the next idle stream walks again for the new
  tick.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from scoring.state import CustomerState
from streams.partitions import CLOCK_KEY
from streams.score import Candidate, ranked
from streams.table import Table

__all__ = ["PER_BATCH", "CatchUp"]

log = logging.getLogger("cvm.worker")

#: How many customers' states one batch reads to catch up (if all of them are behind: 5,000 scorings, about 0.25 s
#: at the 51 µs per scoring ``cvm bench`` measured at 200,000 customers; an estimate).
PER_BATCH = 5_000


class CatchUp:
    """The walk of a worker's table that brings its customers up to the last tick (module docstring)."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.tick: int | None = None  # the tick being caught up to
        self.done: int | None = None  # the last tick every customer was caught up to
        self.todo: deque[tuple[int, bytes]] = deque()
        self.scored = 0  # customers scored in the walk so far

    def reset(self) -> None:
        """The worker's partitions changed (a rebalance): walk again at the next idle stream."""
        self.tick = self.done = None
        self.todo.clear()

    def due(self, t: int | None) -> bool:
        """Whether there is a walk to do or go on with for tick ``t``."""
        return t is not None and t != self.done

    def take(self, t: int, entry: Callable[[str], Candidate | None], skip: set[str]) -> list[Candidate]:
        """The next share of customers last scored before tick ``t``.

        ``entry`` gives the batch's view of a customer it already touched (``None``: not touched, read its state
        from the table); the customers in ``skip`` are not taken (folded in this batch: their event scoring comes).
        """
        if self.tick != t:
            self.tick, self.scored = t, 0
            self.todo = deque((p, key) for p, entries in self.table.partitions.items() for key in entries)
        cands: list[Candidate] = []
        read = 0
        todo = self.todo
        while todo and read < PER_BATCH:
            p, key = todo.popleft()
            data = self.table.partitions.get(p, {}).get(key)  # its partition may have gone in a rebalance
            if key == CLOCK_KEY or not data:
                continue
            customer_id = key.decode()
            if customer_id in skip:
                continue
            read += 1
            found = entry(customer_id)
            state = found.state if found is not None else CustomerState.from_bytes(data)
            if state.as_of < t:
                cands.append(found or Candidate(customer_id, p, state, ranked(state)))
        self.scored += len(cands)
        if not todo:
            self.done = t
            if self.scored:
                log.info("stream idle: %d customers scored as of the last tick %d", self.scored, t)
        return cands
