"""Where a customer stands in its population: streaming percentiles for RFM scores and value tiers.

Each customer contributes its *current* value once: when a customer's state changes, its old value leaves the
histogram and its new value enters it, so frequent buyers do not weigh more than others (as they would in a
sketch fed one value per event). Values are bucketed on a signed log scale (5% wide buckets), days for times, so
the histogram stays small (hundreds of buckets) whatever the number of customers; a percentile is exact up to the
width of its bucket.

Percentiles are read from a frozen view, refreshed by :meth:`Population.freeze` (the worker freezes it at each
tick, after the tick's moves): they describe the population as it was then, whatever the moves since. Unlike the
per-customer features, they depend on the other customers' values as well as the customer's own.

>>> pop = Population()
>>> for v in range(100):
...     pop.update("profitability", None, float(v))
>>> pop.freeze()
>>> round(pop.percentile("profitability", 89.0), 2)  # 89..92 share a bucket: mid-rank of 89..92
0.91
>>> pop.tier(pop.percentile("profitability", 89.0))
'A'
>>> pop.tier(pop.percentile("profitability", 60.0)), pop.tier(pop.percentile("profitability", 10.0))
('B', 'C')
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import NamedTuple

__all__ = ["METRICS", "Population"]

#: What the population is ranked on: value metrics on a log scale, the last purchase on a day scale.
METRICS = ("profitability", "frequency", "monetary", "last_purchase_day", "clv")

_LOG_STEP = math.log(1.05)


def _bucket(metric: str, value: float) -> int:
    if metric == "last_purchase_day":
        return int(value)
    if value == 0:
        return 0
    b = 1 + int(math.log1p(abs(value)) / _LOG_STEP)
    return b if value > 0 else -b


class _View(NamedTuple):
    """A metric's frozen histogram: its buckets in order, where each is in that order, their counts, how many
    customers lie below each, and how many in all."""

    keys: list[int]
    position: dict[int, int]
    counts: list[int]
    below: list[int]
    total: int


class Population:
    """Histograms of the customers' current values, one per metric.

    Parameters
    ----------
    tier_a_share
        Share of customers in value tier A (the top of the ranking).
    tier_b_share
        Share in tier B, the next ones; the rest is tier C.
    """

    def __init__(self, tier_a_share: float = 0.2, tier_b_share: float = 0.3) -> None:
        self.tier_a_share = tier_a_share
        self.tier_b_share = tier_b_share
        self.counts: dict[str, Counter[int]] = {m: Counter() for m in METRICS}
        self._frozen: dict[str, _View] = {}
        self._dirty: set[str] = set(METRICS)  # metrics whose counts changed since the last freeze
        self._reshaped: set[str] = set(METRICS)  # ... and whose buckets did (one appeared or emptied)

    def update(self, metric: str, old: float | None, new: float | None) -> None:
        """Move one customer's value from ``old`` to ``new`` (``None``: not counted)."""
        counts = self.counts[metric]
        b_old = None if old is None else _bucket(metric, old)
        b_new = None
        if new is not None:
            b_new = b_old if b_old is not None and new == old else _bucket(metric, new)
        if b_old is not None:
            if b_old == b_new and counts.get(b_old, 0) > 0:
                return  # same bucket: leaving and entering it cancel out
            self._dirty.add(metric)
            counts[b_old] -= 1
            if counts[b_old] <= 0:
                del counts[b_old]
                self._reshaped.add(metric)
        if b_new is not None:
            self._dirty.add(metric)
            if b_new not in counts:
                self._reshaped.add(metric)
            counts[b_new] += 1

    def move(self, old: Mapping[str, float | None], new: Mapping[str, float | None]) -> None:
        """Move one customer from its values ``old`` to ``new``: :meth:`update` for each metric of ``new``."""
        counts = self.counts
        for metric, value in new.items():
            was = old.get(metric)
            # most values stay put between a customer's events: nothing moves if the value is counted (it is,
            # unless the population never saw it)
            if value is not None and value == was and counts[metric].get(_bucket(metric, value), 0) > 0:
                continue
            self.update(metric, was, value)

    def reset(self, metric: str) -> None:
        """Forget every customer's value of ``metric`` (they are all about to be counted again)."""
        self.counts[metric] = Counter()
        self._dirty.add(metric)
        self._reshaped.add(metric)

    def rebuild(self, values: Iterable[dict[str, float | None]]) -> None:
        """Start again from every customer's values (e.g. the table after a rebalance)."""
        self.counts = {m: Counter() for m in METRICS}
        self._dirty = set(METRICS)
        self._reshaped = set(METRICS)
        for row in values:
            for metric, value in row.items():
                if value is not None:
                    self.counts[metric][_bucket(metric, value)] += 1
        self.freeze()

    def freeze(self) -> None:
        """Take the view :meth:`percentile` reads (once per batch; only the metrics whose counts moved).

        A view is the buckets' counts in order and their running sums; the buckets' order and positions are sorted
        again only when a bucket appeared or emptied since the last freeze (at a tick most customers stay in their
        buckets). Each bucket's mid-rank is computed when read, from the same numbers in the same operations as a
        table of them would be."""
        frozen = dict(self._frozen)
        for metric in self._dirty:
            counts = self.counts[metric]
            view = frozen.get(metric)
            if view is None or metric in self._reshaped:
                keys = sorted(counts)
                position = {k: i for i, k in enumerate(keys)}
            else:
                keys, position = view.keys, view.position
            in_order = [counts[k] for k in keys]
            below = list(accumulate(in_order, initial=0))
            total = below.pop()
            frozen[metric] = _View(keys, position, in_order, below, total)
        self._frozen = frozen
        self._dirty = set()
        self._reshaped = set()

    def size(self, metric: str) -> int:
        """Customers counted in ``metric`` in the frozen view."""
        view = self._frozen.get(metric)
        return view.total if view else 0

    def percentile(self, metric: str, value: float) -> float:
        """Share of the population below ``value`` (mid-rank within its bucket), in [0, 1]; 0.5 when empty."""
        view = self._frozen.get(metric)
        if not view or not view.total:
            return 0.5
        keys, position, counts, below, total = view
        b = _bucket(metric, value)
        i = position.get(b)
        if i is not None:
            return (below[i] + counts[i] / 2) / total  # the bucket's mid-rank
        i = bisect_left(keys, b)  # a bucket no one is in: the share of those below it
        return (below[i] if i < len(keys) else total) / total

    def tier(self, percentile: float) -> str:
        """Value tier of a percentile: A for the top ``tier_a_share``, then B, then C."""
        if percentile >= 1.0 - self.tier_a_share:
            return "A"
        if percentile >= 1.0 - self.tier_a_share - self.tier_b_share:
            return "B"
        return "C"

    @staticmethod
    def quintile(percentile: float) -> int:
        """1–5 score of a percentile (5 = top fifth).

        >>> Population.quintile(0.0), Population.quintile(0.5), Population.quintile(0.99)
        (1, 3, 5)
        """
        return min(5, 1 + int(percentile * 5))
