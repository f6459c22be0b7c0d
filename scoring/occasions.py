"""Purchase occasions and contact days as sets: the two 64-period bitmaps of a customer's state.

:class:`scoring.state.CustomerState` folds events; this module holds the set arithmetic of two of its statistics,
kept apart so that it can be read on its own:

* purchase occasions (periods with a purchase, one UTC day by default): a bitmap of the last 64 periods plus the
  newest period that fell out of it, enough to insert a late occasion between its neighbours and keep the sum of
  squared gaps (purchase regularity) and the active months (:func:`month_of`) exact;
* contact days (a 64-day bitmap), enough to keep the count of fresh contact days exact: a day with no contact in
  the 7 days before (the other contacts are repeats).

:class:`OccasionSets` is a base class of ``CustomerState`` that holds methods only: no state of its own (an empty
``__slots__``; the attributes its methods use are ``CustomerState``'s, set in its ``__init__`` and declared here
for the type checker only). The methods are the state's own, inherited: no wrapper, no extra call on the worker's
hot path. This module imports nothing of :mod:`scoring.state`, so there is no import cycle.

>>> from scoring.state import CustomerState
>>> s = CustomerState()
>>> for p in (3, 1, 2):  # a late occasion between its neighbours
...     s._add_occasion(p, 100, 1)
>>> s.n_occasions, s.gap_sq_sum, s.active_months, bin(s.occasion_bits)
(3, 2, 1, '0b111')
>>> for d in (10, 12, 1, 5):  # day 5 is within 7 days after day 1 and makes day 10 a repeat
...     s._add_contact_day(d)
>>> s.n_fresh_contact_days
1
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

__all__ = ["OccasionSets", "month_of"]

_REPEAT_WINDOW_DAYS = 7
_BITS = 64
_MASK = (1 << _BITS) - 1
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def month_of(period: int, period_days: int) -> int:
    """A running month number (year * 12 + month) of the first day of a period.

    >>> month_of(0, 1), month_of(31, 1) - month_of(0, 1)
    (23640, 1)
    """
    d = date.fromordinal(_EPOCH_ORDINAL + period * period_days)
    return d.year * 12 + d.month - 1


class OccasionSets:
    """The set arithmetic of purchase occasions and contact days, a base class of the customer state."""

    # At run time only (the state keeps no instance dict): mypy, seeing an empty __slots__, would refuse the
    # methods' assignments to CustomerState's slots.
    if not TYPE_CHECKING:
        __slots__ = ()

    # CustomerState's attributes (its __init__ sets them), declared for the type checker: no values, no slots here.
    n_occasions: int
    first_occasion_cents: int
    first_occasion: int
    last_occasion: int
    prior_occasion: int
    occasion_bits: int
    gap_sq_sum: int
    active_months: int
    n_fresh_contact_days: int
    last_contact_day: int
    contact_bits: int

    def _add_occasion(self, p: int, cents: int, period_days: int) -> None:
        """Add a purchase of ``cents`` in period ``p``: a new occasion unless the period already has one."""
        first, last = self.first_occasion, self.last_occasion
        if first < 0:
            self.first_occasion = self.last_occasion = p
            self.occasion_bits, self.n_occasions, self.first_occasion_cents, self.active_months = 1, 1, cents, 1
            return
        if p == first:
            self.first_occasion_cents += cents
            return
        if p > last:
            shift = p - last
            dropped = self.occasion_bits >> (_BITS - shift) if shift < _BITS else self.occasion_bits
            if dropped:  # the newest occasion leaving the bitmap becomes the prior one
                lowest = (dropped & -dropped).bit_length() - 1
                self.prior_occasion = last - (lowest + (_BITS - shift if shift < _BITS else 0))
            self.occasion_bits = (self.occasion_bits << shift) & _MASK | 1 if shift < _BITS else 1
            self.last_occasion = p
            self._new_occasion(p, last, -1, period_days)
            return
        pos = last - p
        if pos >= _BITS:
            # Older than the bitmap reaches: only a record through the re-key topic can be (its partition may lag the
            # customer's others by more than the allowed lateness). Before the first occasion it is exactly a new
            # first one; between, whether its period had an occasion is unknown: it counts as none (its money does).
            if p < first:
                self.first_occasion, self.first_occasion_cents = p, cents
                self._new_occasion(p, -1, first, period_days)
            return
        bits = self.occasion_bits
        if bits >> pos & 1:
            return
        self.occasion_bits = bits | 1 << pos
        if p < first:
            self.first_occasion, self.first_occasion_cents = p, cents  # the old first occasion is now a repeat
            self._new_occasion(p, -1, first, period_days)
            return
        older = bits >> (pos + 1)
        pred = last - (pos + 1 + (older & -older).bit_length() - 1) if older else self.prior_occasion
        succ = last - ((bits & ((1 << pos) - 1)).bit_length() - 1)
        self._new_occasion(p, pred, succ, period_days)

    def _new_occasion(self, p: int, pred: int, succ: int, period_days: int) -> None:
        """Count occasion ``p`` between its neighbours (``-1``: none): gaps and active months stay exact."""
        self.n_occasions += 1
        if pred >= 0 and succ >= 0:
            self.gap_sq_sum -= (succ - pred) ** 2
        month = month_of(p, period_days)
        same_month = False
        for q in (pred, succ):
            if q >= 0:
                self.gap_sq_sum += (q - p) ** 2
                same_month = same_month or month_of(q, period_days) == month
        if not same_month:
            self.active_months += 1

    def _add_contact_day(self, d: int) -> None:
        """Set contact day ``d``; keep ``n_fresh_contact_days`` = days with no contact in the 7 days before."""
        if self.last_contact_day < 0:
            self.last_contact_day, self.contact_bits, self.n_fresh_contact_days = d, 1, 1
            return
        if d > self.last_contact_day:
            shift = d - self.last_contact_day
            self.contact_bits = (self.contact_bits << shift) & _MASK if shift < _BITS else 0
            self.last_contact_day = d
        pos = self.last_contact_day - d
        if pos >= _BITS:  # older than the bitmap (through the re-key topic only): a fresh day, not remembered
            self.n_fresh_contact_days += 1
            return
        bits = self.contact_bits
        if bits >> pos & 1:
            return  # another contact that day: a repeat, freshness unchanged

        def fresh(day_pos: int, b: int) -> bool:  # no contact in the 7 days before the day at day_pos
            window = (b >> (day_pos + 1)) & ((1 << _REPEAT_WINDOW_DAYS) - 1)
            return window == 0

        newly_stale = 0
        for later in range(max(0, pos - _REPEAT_WINDOW_DAYS), pos):  # days after d, within 7 days
            if bits >> later & 1 and fresh(later, bits):
                newly_stale += 1
        bits |= 1 << pos
        self.contact_bits = bits
        self.n_fresh_contact_days += (1 if fresh(pos, bits) else 0) - newly_stale
