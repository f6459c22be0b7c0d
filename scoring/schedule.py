"""When a silent customer's scores have moved enough to score it again: a schedule in event time.

A customer who stops buying keeps changing without any event of its own: its recency grows, its 7/30/90-day views
decay, P(alive) falls (for fixed purchase history, P(alive) only falls as time passes), and so its CLV, churn risk,
tier and alerts move. Re-scoring every customer at every tick would cost the whole population per tick; re-scoring
never leaves a silent customer with the scores of its last active day. The schedule in between re-scores a customer
as its silence crosses steps that grow geometrically — in days, and in multiples of the customer's own typical gap
between purchases — so a silence is re-scored about fifteen times in its first year whatever the population size,
densely while it is still ambiguous and sparsely once it is long, and a customer who keeps to its rhythm is
re-scored about once between two purchases.

>>> DAY = 86_400_000
>>> next_rescore_ms(last_ms=0, gap_days=None, after_ms=0) // DAY  # a week of silence first
7
>>> next_rescore_ms(last_ms=0, gap_days=None, after_ms=40 * DAY) // DAY
45
>>> next_rescore_ms(last_ms=0, gap_days=12.0, after_ms=10 * DAY) // DAY  # the customer's own gap counts too
12
>>> next_rescore_ms(last_ms=0, gap_days=2.0, after_ms=3 * DAY) // DAY  # a daily buyer's silence is news sooner
4
>>> next_rescore_ms(last_ms=0, gap_days=None, after_ms=400 * DAY) // DAY  # after a year: every 90 days
455
"""

from __future__ import annotations

__all__ = ["GAP_MULTIPLES", "SILENCE_DAYS", "next_rescore_ms"]

DAY_MS = 86_400_000

#: Silences (days since the last purchase) at which a customer is scored again.
SILENCE_DAYS = (7, 14, 30, 45, 60, 90, 120, 180, 240, 300, 365)

#: Silences in multiples of the customer's typical gap between purchases at which it is scored again.
GAP_MULTIPLES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)

_LATE_EVERY_DAYS = 90  # past the last step: once a quarter


def next_rescore_ms(last_ms: int, gap_days: float | None, after_ms: int) -> int:
    """The first event time after ``after_ms`` at which a customer silent since ``last_ms`` is due again.

    Parameters
    ----------
    last_ms
        The customer's last activity (event time, ms): its silence counts from there.
    gap_days
        Its typical gap between purchases in days, or ``None`` when it has none yet.
    after_ms
        The time it was last scored: the result is strictly later.
    """
    silence = after_ms - last_ms
    best = None
    for days in SILENCE_DAYS:
        if days * DAY_MS > silence:
            best = days * DAY_MS
            break
    if best is None:
        steps = (silence - SILENCE_DAYS[-1] * DAY_MS) // (_LATE_EVERY_DAYS * DAY_MS) + 1
        best = (SILENCE_DAYS[-1] + steps * _LATE_EVERY_DAYS) * DAY_MS
    if gap_days is not None and gap_days > 0:
        for m in GAP_MULTIPLES:
            due = int(m * gap_days * DAY_MS)
            if due > silence:
                best = min(best, due)
                break
    return last_ms + best
