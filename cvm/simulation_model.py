"""The customer-life model behind ``cvm simulate``, its parameters: who the customers are and how they behave.

This module holds the model's tables: the segments (:data:`SEGMENTS`), the categories, the contact channels and
reasons, the behaviour phases before churning and of noise (:data:`PHASES`), the churned phases and cancellation
odds by cause, and the helpers that read the weighted tables (:func:`weight_table`, :func:`pick`). It draws nothing.
It is separate from the engine, :mod:`cvm.simulation`, which draws each customer's life and the merged history from
these tables, so that what the model says (the description below and the figures behind it) can be read, and
tuned, apart from how lives are drawn from it.

The model
---------
Every customer belongs to a **segment** that sets how much it buys, at what margin, and what it costs to serve
(:data:`SEGMENTS`; margins are before the category's factor, promotions sell at -10%..+3%):

======= ===== ========= ====== ====== ===== ======= ======== ======= ====== ========================================
segment share purchases basket margin promo refunds contacts account churn  character
                /month                                /month           /month
======= ===== ========= ====== ====== ===== ======= ======== ======= ====== ========================================
premium 15%   3.4       120 €  34%    2%    3%      0.35     60%     1.4%   carries the profit
regular 50%   1.5       45 €   18%    10%   6%      0.3      40%     2.8%   the bulk, modestly profitable
bargain 20%   1.8       30 €   6%     55%   25%     0.5      30%     4.0%   promotions and returns: about break-even
costly  15%   1.1       40 €   18%    10%   18%     3.6      40%     4.2%   phone and store: costs more than it brings
======= ===== ========= ====== ====== ===== ======= ======== ======= ====== ========================================

Around the segment means customers differ, as CLV models assume (BG/NBD, gamma-gamma): a customer's purchase
rate is gamma-distributed and its purchases a Poisson process at that rate; its mean basket is lognormal and each
basket lognormal around it. Each customer has a favourite shopping channel and two favourite categories; the
category scales the basket and the margin. ``gross_margin`` is missing on about 20% of transactions (always on
``partner`` sales): the default margin rate applies downstream. Money is in the base currency
(``CVM_BASE_CURRENCY``, the table's € by default), and transactions say so (the model writes ``EUR``; the
command labels them with the configured currency). A purchase is refunded (75% fully,
else partly) 1-21 days later with the segment's refund probability: a negative amount and margin, same category; a
third of refunds bring a "where is my refund?" contact.

Contacts are a Poisson process per customer too (gamma-distributed rates). The usual reasons are information,
technical, billing, sales, some complaints (three times more for chronic *complainers*, who do not leave for it)
and rare cancellation requests. Handling time is lognormal per channel and reason; ``cost`` is recorded on a
quarter of contacts (handling minutes × the channel's cost per minute), otherwise the configured per-channel cost
applies. Contacts are resolved with a probability depending on their reason; half of the unresolved ones come
back within days (often by phone), up to three times.

Payments: customers **on account** have each purchase invoiced, due 30 days later; the outcome is a payment event:
``paid`` (on or before the due date), ``late`` (after it), ``failed`` (nothing paid; usually recovered 1-3 weeks
later by a ``late`` payment of the same invoice, and often followed by a billing call) or, rarely, a
``chargeback`` weeks after a payment. Reliability differs by segment and by customer.

Churn: customers leave at a constant hazard (the table's monthly rates; doubled during a new customer's first 90
days) with a cause, and the weeks before show it — a warning phase of 30-80 days, then a final phase of 10-25:

* ``dissatisfaction``: complaints and technical contacts (3-4.5 a month), fewer of them resolved (so repeats), more
  refunds, purchases falling to a quarter, a cancellation request (80%) 5-40 days before leaving;
* ``price``: purchases falling to a tenth and smaller baskets, sales and billing questions, a cancellation request
  (70%);
* ``payment_trouble`` (customers on account only): late and failed payments, billing calls, collections after;
* ``silent``: 70% buy less and less, the others show nothing at all.

After its churn time a customer buys nothing and contacts nobody; invoices still settle (or fail), refunds under
way still happen, and 60 days later it is gone. Noise keeps a churn model honest: complainers who stay, customers
who stay through a rough patch (a month of complaints and unresolved contacts, sometimes a cancellation request
that retention talks them out of) or a tight month (late and failed payments), and silent churners.

New customers are acquired throughout the history (a share ``days / (days + 540)``: 18% over 120 days, 40% over
365), starting with a purchase; the others were acquired up to three years before it.

Measured on ``--customers 2000 --days 365``: 60k events, 0.125 per active customer-day (3.8 a month: a regular
customer 2.6 with 1.4 purchases, a premium one 5.7, a costly one 5.7 of which 4.5 contacts); 50% transactions,
31% contacts (the costly segment's), 19% payments. 27% of customers churn (12% over 120 days); the top 20% of
customers by margin minus cost to serve carry 108% of the profit, and 40% of customers (90% of the costly ones)
cost more than they bring. A logistic regression on simple 30-60-day window counts predicts "churns within 30
days" with ROC AUC 0.88 (silent churners 0.66).
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BASE_REASONS",
    "CANCEL_P",
    "CATEGORIES",
    "CATEGORY_NAMES",
    "CHURNED",
    "COMPLAINER_REASONS",
    "CONTACT_CHANNELS",
    "MONTH_DAYS",
    "NORMAL",
    "PHASES",
    "REASONS",
    "SEGMENTS",
    "SEGMENT_CW",
    "Phase",
    "Segment",
    "pick",
    "weight_table",
    "weight_table_cached",
]

# The names here are public because the engine (cvm.simulation) draws from them: they are the model's parameters,
# shared with the engine and read nowhere else.

#: Days in an average month: a monthly rate divided by it is a daily rate.
MONTH_DAYS = 30.44


@dataclass(frozen=True)
class Segment:
    """What customers of one segment have in common (means around which each customer varies)."""

    name: str
    share: float
    purchases_per_month: float
    rate_shape: float  # gamma shape of purchase rates across customers: lower, more unequal
    basket_eur: float  # median of the customers' mean basket
    basket_spread: float  # sigma of the customers' mean basket (lognormal)
    margin_rate: float
    promo_p: float  # share of purchases on deep promotion, sold at about cost or below
    refund_p: float
    contacts_per_month: float
    contact_shape: float
    contact_channels: tuple[tuple[str, float], ...]
    shop_channels: tuple[tuple[str, float], ...]
    account_p: float
    late_p: float
    failed_p: float
    churn_per_month: float
    complainer_p: float
    causes: tuple[tuple[str, float], ...]


#: The customer segments of the model (see the module docstring).
# fmt: off
SEGMENTS: tuple[Segment, ...] = (
    Segment(
        name="premium", share=0.15, purchases_per_month=3.4, rate_shape=2.0, basket_eur=120.0, basket_spread=0.45,
        margin_rate=0.34, promo_p=0.02, refund_p=0.03, contacts_per_month=0.35, contact_shape=2.0,
        contact_channels=(("phone", 0.35), ("chat", 0.25), ("email", 0.2), ("web", 0.1), ("store", 0.1)),
        shop_channels=(("store", 0.35), ("web", 0.3), ("app", 0.25), ("phone", 0.05), ("partner", 0.05)),
        account_p=0.6, late_p=0.03, failed_p=0.008, churn_per_month=0.014, complainer_p=0.08,
        causes=(("dissatisfaction", 0.45), ("price", 0.2), ("payment_trouble", 0.05), ("silent", 0.3)),
    ),
    Segment(
        name="regular", share=0.50, purchases_per_month=1.5, rate_shape=1.0, basket_eur=45.0, basket_spread=0.6,
        margin_rate=0.18, promo_p=0.1, refund_p=0.06, contacts_per_month=0.3, contact_shape=1.5,
        contact_channels=(("phone", 0.3), ("email", 0.25), ("chat", 0.2), ("web", 0.2), ("store", 0.05)),
        shop_channels=(("store", 0.35), ("web", 0.35), ("app", 0.2), ("phone", 0.03), ("partner", 0.07)),
        account_p=0.4, late_p=0.06, failed_p=0.015, churn_per_month=0.028, complainer_p=0.1,
        causes=(("dissatisfaction", 0.35), ("price", 0.3), ("payment_trouble", 0.1), ("silent", 0.25)),
    ),
    Segment(
        name="bargain", share=0.20, purchases_per_month=1.8, rate_shape=1.5, basket_eur=30.0, basket_spread=0.4,
        margin_rate=0.06, promo_p=0.55, refund_p=0.25, contacts_per_month=0.5, contact_shape=1.5,
        contact_channels=(("web", 0.25), ("email", 0.3), ("chat", 0.25), ("phone", 0.2)),
        shop_channels=(("web", 0.45), ("app", 0.25), ("store", 0.15), ("partner", 0.15)),
        account_p=0.3, late_p=0.12, failed_p=0.04, churn_per_month=0.04, complainer_p=0.15,
        causes=(("dissatisfaction", 0.2), ("price", 0.5), ("payment_trouble", 0.15), ("silent", 0.15)),
    ),
    Segment(
        name="costly", share=0.15, purchases_per_month=1.1, rate_shape=2.0, basket_eur=40.0, basket_spread=0.4,
        margin_rate=0.18, promo_p=0.1, refund_p=0.18, contacts_per_month=3.6, contact_shape=3.0,
        contact_channels=(("phone", 0.45), ("store", 0.55)),
        shop_channels=(("store", 0.5), ("phone", 0.15), ("web", 0.2), ("app", 0.15)),
        account_p=0.4, late_p=0.08, failed_p=0.02, churn_per_month=0.042, complainer_p=0.45,
        causes=(("dissatisfaction", 0.55), ("price", 0.15), ("payment_trouble", 0.1), ("silent", 0.2)),
    ),
)
# fmt: on
#: The segments' cumulative shares, to draw a customer's segment.
SEGMENT_CW = list(itertools.accumulate(s.share for s in SEGMENTS))

#: category → (basket factor, margin factor)
CATEGORIES = {
    "grocery": (0.5, 0.7),
    "fashion": (1.0, 1.3),
    "beauty": (0.7, 1.4),
    "home": (1.4, 1.1),
    "electronics": (2.2, 0.6),
    "sports": (1.1, 1.0),
    "books": (0.45, 0.9),
    "toys": (0.8, 1.1),
}
CATEGORY_NAMES = list(CATEGORIES)

#: contact channel → (median handling seconds, cost per handling minute when the contact records its cost)
CONTACT_CHANNELS = {"phone": (330.0, 1.0), "email": (240.0, 0.6), "chat": (420.0, 0.45), "web": (90.0, 0.3),
                    "store": (600.0, 0.8)}  # fmt: skip
#: contact reason → (handling-time factor, probability the contact resolves the need)
REASONS = {
    "information": (0.8, 0.95),
    "sales": (1.0, 0.95),
    "billing": (1.1, 0.85),
    "technical": (1.3, 0.75),
    "complaint": (1.6, 0.65),
    "cancellation_request": (1.4, 0.5),
}
#: contact reason → weight among a customer's usual contacts
BASE_REASONS = (("information", 0.34), ("technical", 0.2), ("billing", 0.14), ("sales", 0.14),
                ("complaint", 0.12), ("cancellation_request", 0.01))  # fmt: skip


def weight_table(pairs: Iterable[tuple[str, float]]) -> tuple[list[str], list[float]]:
    """Names and cumulative weights for ``Random.choices``.

    >>> weight_table([("a", 1.0), ("b", 3.0)])
    (['a', 'b'], [1.0, 4.0])
    """
    names, weights = zip(*pairs, strict=True)
    return list(names), list(itertools.accumulate(weights))


def pick(u: float, table: tuple[list[str], list[float]]) -> str:
    """The name that a uniform draw ``u`` in [0, 1) picks from ``(names, cumulative weights)``.

    >>> table = weight_table([("a", 1.0), ("b", 3.0)])
    >>> pick(0.2, table), pick(0.3, table)
    ('a', 'b')
    """
    names, cw = table
    return names[bisect.bisect(cw, u * cw[-1])]


@functools.lru_cache(maxsize=64)
def weight_table_cached(pairs: tuple[tuple[str, float], ...]) -> tuple[list[str], list[float]]:
    """:func:`weight_table` of a table given as a tuple, computed once per table."""
    return weight_table(pairs)


#: The usual contacts' reasons of a chronic complainer (three times the complaints), as a weight table.
COMPLAINER_REASONS = weight_table([(r, 3 * w if r == "complaint" else w) for r, w in BASE_REASONS])


@dataclass(frozen=True)
class Phase:
    """Behaviour over a stretch of a customer's life, relative to the customer's normal behaviour."""

    name: str
    purchases: float = 1.0  # multiplies the purchase rate
    basket: float = 1.0  # multiplies the basket
    refunds: float = 1.0  # multiplies the refund probability
    contacts_off: bool = False
    extra_per_month: float = 0.0  # contacts on top of the usual ones, with their own reasons
    extra_reasons: tuple[tuple[str, float], ...] = (("complaint", 1.0),)
    resolve: float = 1.0  # multiplies the probability a contact resolves the need
    late_p: float | None = None  # None: the customer's usual payment odds
    failed_p: float | None = None
    recover_p: float = 0.65  # a failed payment is recovered later

    @property
    def extra_per_day(self) -> float:
        return self.extra_per_month / MONTH_DAYS


#: A customer's usual behaviour.
NORMAL = Phase("normal")
#: (churn cause or "noise", phase) → behaviour: "warning" then "final" before leaving; "rough" or "tight" for noise.
# fmt: off
PHASES: dict[tuple[str, str], Phase] = {
    ("dissatisfaction", "warning"): Phase(
        "warning", purchases=0.6, refunds=1.5, extra_per_month=3.0, resolve=0.45,
        extra_reasons=(("complaint", 0.6), ("technical", 0.25), ("billing", 0.1), ("information", 0.05))),
    ("dissatisfaction", "final"): Phase(
        "final", purchases=0.25, basket=0.9, refunds=2.0, extra_per_month=4.5, resolve=0.35,
        extra_reasons=(("complaint", 0.7), ("technical", 0.2), ("billing", 0.1))),
    ("price", "warning"): Phase(
        "warning", purchases=0.4, basket=0.75, extra_per_month=2.0,
        extra_reasons=(("sales", 0.35), ("billing", 0.3), ("complaint", 0.2), ("information", 0.15))),
    ("price", "final"): Phase(
        "final", purchases=0.1, basket=0.7, extra_per_month=3.0, resolve=0.7,
        extra_reasons=(("sales", 0.35), ("billing", 0.3), ("complaint", 0.35))),
    ("payment_trouble", "warning"): Phase(
        "warning", purchases=0.6, basket=0.9, extra_per_month=1.5, resolve=0.7,
        extra_reasons=(("billing", 0.8), ("complaint", 0.2)), late_p=0.4, failed_p=0.35, recover_p=0.35),
    ("payment_trouble", "final"): Phase(
        "final", purchases=0.3, basket=0.8, extra_per_month=2.0, resolve=0.6,
        extra_reasons=(("billing", 0.7), ("complaint", 0.3)), late_p=0.25, failed_p=0.7, recover_p=0.15),
    ("silent-fading", "warning"): Phase("warning", purchases=0.25, basket=0.85),
    ("silent-fading", "final"): Phase("final", purchases=0.05, basket=0.8),
    ("silent", "warning"): Phase("warning"),
    ("silent", "final"): Phase("final"),
    # Noise: customers who stay go through these too.
    ("noise", "rough"): Phase(
        "rough", purchases=0.8, refunds=1.3, extra_per_month=1.5, resolve=0.6,
        extra_reasons=(("complaint", 0.6), ("technical", 0.3), ("billing", 0.1))),
    ("noise", "tight"): Phase("tight", late_p=0.3, failed_p=0.12, recover_p=0.8),
}
# fmt: on
#: churn cause → behaviour after leaving: no purchases, no contacts; invoices still settle, or fail.
CHURNED = {
    cause: Phase("churned", purchases=0.0, contacts_off=True, failed_p=0.7 if cause == "payment_trouble" else None)
    for cause in ("dissatisfaction", "price", "payment_trouble", "silent")
}
#: churn cause → probability of a cancellation request 5-40 days before leaving
CANCEL_P = {"dissatisfaction": 0.8, "price": 0.7, "payment_trouble": 0.4, "silent": 0.05}
