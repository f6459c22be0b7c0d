"""The customer-life model behind ``cvm simulate``, its engine: each customer's life, drawn event by event.

This module draws what :mod:`cvm.simulation_model` describes: each customer's lazy stream of events (its own rates
around its segment's, its churn plan and phases, its purchases, refunds, contacts and payments), the
:class:`Simulation` that merges them in event-time order, and the truth of who churned, when and why. It draws
events and publishes nothing: no Kafka, no files, no wall clock, so the same seed gives the same histories
wherever it is used (:mod:`cvm.simulate`, the command that writes or publishes them; the benchmark's load; the
tests). It is separate from the command so that the model can be read, and changed, apart from how its events are
delivered; and separate from its parameters (:mod:`cvm.simulation_model`: segments, categories, channels, contact
reasons, behaviour phases, and the model's description) so that what the model says reads apart from how lives
are drawn from it.

Past the history
----------------
:meth:`Simulation.live` continues the same lives past the history's end, unbounded, with new customers arriving
at the history's acquisition rate; its events carry model times. Mapping them to the wall clock, pacing and
publishing them is the command's (:mod:`cvm.simulate`).

Event ids are ``{run}-{customer_id}-{t|c|p}{n}`` where the run is the seed and the history's end time: the same
seed and end give the same events with the same ids (publishing them twice is idempotent), another end another
run.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from random import Random
from typing import Any

from cvm.events import iso
from cvm.simulation_model import (
    BASE_REASONS,
    CANCEL_P,
    CATEGORIES,
    CATEGORY_NAMES,
    CHURNED,
    COMPLAINER_REASONS,
    CONTACT_CHANNELS,
    MONTH_DAYS,
    NORMAL,
    PHASES,
    REASONS,
    SEGMENT_CW,
    SEGMENTS,
    Phase,
    pick,
    weight_table,
    weight_table_cached,
)

__all__ = [
    "ANCHOR_MS",
    "Customer",
    "Simulation",
    "generate",
]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: History end of ``--out`` files without ``--end``: a fixed anchor, so the same seed gives the same bytes.
ANCHOR_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_WINDOW_EVENTS = 20_000  # events are drawn a window of about this many at a time, then sorted
_TAIL_MS = 60 * DAY_MS  # after churning, a customer's last events (settlements, refunds) fall within this


def _share_new(days: float) -> float:
    """Share of the customers acquired during a history of ``days`` days.

    >>> round(_share_new(120), 3), round(_share_new(365), 3)
    (0.182, 0.403)
    """
    return days / (days + 540.0)


@dataclass(frozen=True)
class Customer:
    """A simulated customer: who it is and how its story goes. All times in ms since the epoch.

    ``churn_at`` is when the customer will leave, possibly beyond the generated period (then it has not churned).
    """

    customer_id: str
    index: int
    segment: str
    acquired_at: int
    churn_at: int
    cause: str
    account: bool
    complainer: bool

    def truth(self, horizon_ms: int, time_of: Callable[[int], int] | None = None) -> dict[str, Any]:
        """The ``--truth`` line of this customer as of ``horizon_ms`` (model time).

        ``time_of`` maps a model time to the published time (live mode); identity by default.

        >>> c = Customer("c000001", 1, "regular", 0, 5 * DAY_MS, "price", False, False)
        >>> c.truth(10 * DAY_MS)["churn_time"], c.truth(DAY_MS)["churned"]
        ('1970-01-06T00:00:00.000Z', False)
        """
        churned = self.churn_at <= horizon_ms
        at = time_of or (lambda t: t)
        return {
            "customer_id": self.customer_id,
            "segment": self.segment,
            "acquired_at": iso(at(self.acquired_at)),
            "churned": churned,
            "churn_time": iso(at(self.churn_at)) if churned else None,
            "cause": self.cause if churned else None,
        }


class _Life:
    """One customer's behaviour: a lazy, time-ordered stream of its events, unbounded until it is gone."""

    def __init__(self, index: int, run: str, seed: int, first_ms: int, acquired_ms: int | None) -> None:
        rng = Random(f"cvm-simulate/{seed}/{index}")  # str seeds hash with SHA-512: stable across processes
        self.rng = rng
        self.run = run
        seg = SEGMENTS[bisect.bisect(SEGMENT_CW, rng.random() * SEGMENT_CW[-1])]
        self.seg = seg
        cid = f"c{index:06d}"
        self.cid = cid
        new = acquired_ms is not None
        acquired = acquired_ms if acquired_ms is not None else first_ms - int(rng.uniform(30, 3 * 365) * DAY_MS)
        self.first_ms = acquired if new else first_ms

        # Heterogeneity around the segment (BG/NBD-like rates, gamma-gamma-like spend).
        self.purchase_rate = rng.gammavariate(seg.rate_shape, seg.purchases_per_month / seg.rate_shape) / MONTH_DAYS
        self.basket = seg.basket_eur * rng.lognormvariate(0.0, seg.basket_spread)
        self.margin_rate = min(0.7, max(0.01, rng.gauss(seg.margin_rate, 0.04)))
        self.contact_rate = rng.gammavariate(seg.contact_shape, seg.contacts_per_month / seg.contact_shape)
        self.contact_rate /= MONTH_DAYS
        self.complainer = rng.random() < seg.complainer_p
        self.base_reasons = COMPLAINER_REASONS if self.complainer else weight_table_cached(BASE_REASONS)
        self.contact_channels = weight_table_cached(seg.contact_channels)
        self.shop_channels = weight_table_cached(seg.shop_channels)
        names, cw = self.shop_channels
        self.fav_shop = names[bisect.bisect(cw, rng.random() * cw[-1])]
        favs = rng.sample(CATEGORY_NAMES, 2)
        self.categories = weight_table(
            [(c, 5.0 if c == favs[0] else 2.5 if c == favs[1] else 1.0) for c in CATEGORY_NAMES]
        )
        self.account = rng.random() < seg.account_p
        self.late_p = seg.late_p * rng.uniform(0.5, 1.5)
        self.failed_p = seg.failed_p * rng.uniform(0.5, 1.5)

        # Churn plan: constant hazard, doubled over a new customer's first 90 days.
        hazard = seg.churn_per_month / MONTH_DAYS / DAY_MS
        early = rng.expovariate(2 * hazard) if new else math.inf
        gap = early if early <= 90 * DAY_MS else (90 * DAY_MS if new else 0) + rng.expovariate(hazard)
        churn_at = self.first_ms + int(gap)
        cause = pick(rng.random(), weight_table_cached(seg.causes))
        if cause == "payment_trouble" and not self.account:
            cause = "price"
        self.customer = Customer(cid, index, seg.name, acquired, churn_at, cause, self.account, self.complainer)

        # Phases: an optional noise episode, then warning, final, churned.
        style = cause
        if cause == "silent" and rng.random() < 0.7:
            style = "silent-fading"
        warn_at = churn_at - int(rng.uniform(30, 80) * DAY_MS)
        final_at = churn_at - int(rng.uniform(10, 25) * DAY_MS)
        plan: list[tuple[int, Phase]] = []
        self.retained_cancel_at: int | None = None
        noise_p = 0.3 if self.complainer else 0.15
        if rng.random() < noise_p + (0.12 if self.account else 0.0):
            kind = "rough" if rng.random() < noise_p / (noise_p + (0.12 if self.account else 0.0)) else "tight"
            at = self.first_ms + int(rng.uniform(0, 730) * DAY_MS)
            until = at + int(rng.uniform(21, 45) * DAY_MS)
            if until < warn_at - 20 * DAY_MS:
                plan += [(at, PHASES[("noise", kind)]), (until, NORMAL)]
                if kind == "rough" and rng.random() < 0.2:
                    self.retained_cancel_at = int(rng.uniform(at, until))
        plan += [(warn_at, PHASES[(style, "warning")]), (final_at, PHASES[(style, "final")])]
        plan.append((churn_at, CHURNED[cause]))
        self.plan = [(t, p) for t, p in plan if t > self.first_ms]
        before = [p for t, p in plan if t <= self.first_ms]
        self.phase = before[-1] if before else NORMAL
        self.cancel_at = churn_at - int(rng.uniform(5, 40) * DAY_MS) if rng.random() < CANCEL_P[cause] else None
        self.end_ms = churn_at + _TAIL_MS
        self.new = new

    # --- the event stream ------------------------------------------------------------------------------------

    def events(self) -> Iterator[tuple[int, int, int, str, dict[str, Any]]]:
        """``(time, customer index, n, kind, record)`` in time order; n counts this customer's events."""
        rng = self.rng
        random, expo, gauss, exp = rng.random, rng.expovariate, rng.gauss, math.exp
        cid, index = self.cid, self.customer.index
        prefix = f"{self.run}-{cid}-"
        todo: list[tuple[int, int, int, Any]] = []
        order = itertools.count()
        push, pop = heapq.heappush, heapq.heappop
        PURCHASE, CONTACT, PHASE, EVENT = 0, 1, 2, 3  # noqa: N806 - local constants of the hot loop
        versions = [0, 0]  # of the scheduled purchase and contact: a phase change re-draws both
        n = 0
        invoices = 0
        cat_names, cat_cw = self.categories
        ch_names, ch_cw = self.shop_channels
        cc_names, cc_cw = self.contact_channels
        fav = self.fav_shop
        account = self.account
        promo_p, refund_p = self.seg.promo_p, self.seg.refund_p
        basket, margin_rate, contact_rate = self.basket, self.margin_rate, self.contact_rate

        def daytime(t: float) -> int:
            # Shops and contact centres work 7:00-22:00: a night-time draw moves to the next opening hours.
            h = t % DAY_MS
            if h < 7 * HOUR_MS:
                return int(t - h + 7 * HOUR_MS + random() * 15 * HOUR_MS)
            if h >= 22 * HOUR_MS:
                return int(t - h + DAY_MS + 7 * HOUR_MS + random() * 15 * HOUR_MS)
            return int(t)

        rates = [0.0, 0.0]  # purchases and contacts per ms in the current phase

        def set_phase(ph: Phase) -> None:
            self.phase = ph
            rates[0] = self.purchase_rate * ph.purchases / DAY_MS
            rates[1] = 0.0 if ph.contacts_off else (self.contact_rate + ph.extra_per_day) / DAY_MS

        def schedule_purchase(now: int) -> None:
            if rates[0] > 0:
                push(todo, (daytime(now + expo(rates[0])), next(order), PURCHASE, versions[0]))

        def schedule_contact(now: int) -> None:
            if rates[1] > 0:
                push(todo, (daytime(now + expo(rates[1])), next(order), CONTACT, versions[1]))

        def contact(t: int, reason: str, channel: str, depth: int) -> dict[str, Any]:
            base_s, per_min = CONTACT_CHANNELS[channel]
            factor, resolve_p = REASONS[reason]
            handle = round(base_s * factor * exp(gauss(0.0, 0.5)), 1)
            resolved = random() < resolve_p * self.phase.resolve
            cost = round(handle / 60.0 * per_min, 2) if random() < 0.25 else None
            if not resolved and depth < 3 and random() < 0.5:
                # The need comes back: often by phone, within days.
                again = t + int(2 * HOUR_MS + expo(1 / (2.0 * DAY_MS)))
                ch = "phone" if random() < 0.5 else channel
                push(todo, (daytime(again), next(order), EVENT, ("contacts", (reason, ch, depth + 1))))
            return {"event_id": "", "customer_id": cid, "event_time": t, "channel": channel, "reason": reason,
                    "handle_time_s": handle, "resolved": resolved, "cost": cost}  # fmt: skip

        def payment(t: int, amount: float) -> None:
            nonlocal invoices
            invoices += 1
            invoice = f"{self.run}-{cid}-i{invoices}"
            due = t + 30 * DAY_MS
            ph = self._phase_at(due)
            late_p = self.late_p if ph.late_p is None else ph.late_p
            failed_p = self.failed_p if ph.failed_p is None else ph.failed_p
            u = random()
            rec: dict[str, Any] = {
                "event_id": "", "customer_id": cid, "event_time": 0, "invoice_id": invoice, "amount_due": amount,
                "amount_paid": 0.0, "due_date": due, "paid_date": None, "status": "failed",
            }  # fmt: skip
            if u < failed_p:
                rec["event_time"] = due + int((1 + 2 * random()) * DAY_MS)
                push(todo, (rec["event_time"], next(order), EVENT, ("payments", rec)))
                if random() < ph.recover_p:
                    paid = due + int((8 + 17 * random()) * DAY_MS)
                    again = dict(rec, event_time=paid, amount_paid=amount, paid_date=paid, status="late")
                    push(todo, (paid, next(order), EVENT, ("payments", again)))
                if random() < 0.4:
                    call = daytime(rec["event_time"] + expo(1 / (3.0 * DAY_MS)))
                    push(todo, (call, next(order), EVENT, ("contacts", ("billing", "phone", 1))))
                return
            if u < failed_p + late_p:
                paid, status = due + int((2 + 23 * random()) * DAY_MS), "late"
            else:
                paid, status = max(t + DAY_MS, due - int(20 * random() * DAY_MS)), "paid"
            rec.update(event_time=paid, amount_paid=amount, paid_date=paid, status=status)
            push(todo, (paid, next(order), EVENT, ("payments", rec)))
            if random() < 0.004:
                back = paid + int((10 + 50 * random()) * DAY_MS)
                push(todo, (back, next(order), EVENT, ("payments",
                     dict(rec, event_time=back, amount_paid=0.0, paid_date=None, status="chargeback"))))  # fmt: skip

        start = self.first_ms
        set_phase(self.phase)
        for t_phase, ph in self.plan:
            push(todo, (t_phase, next(order), PHASE, ph))
        if self.cancel_at is not None and self.cancel_at > start:
            push(todo, (daytime(self.cancel_at), next(order), EVENT, ("contacts", ("cancellation_request", "", 0))))
        retained = self.retained_cancel_at
        if retained is not None and retained > start:
            push(todo, (daytime(retained), next(order), EVENT, ("contacts", ("cancellation_request", "", 0))))
        if self.new:
            push(todo, (start + 1 + int(expo(1 / HOUR_MS)), next(order), PURCHASE, 0))  # the acquisition purchase
        else:
            schedule_purchase(start)
        schedule_contact(start)
        end = self.end_ms

        while todo:
            t, _, action, payload = pop(todo)
            if t > end:
                return
            if action == PURCHASE:
                if payload != versions[0]:
                    continue
                ph = self.phase
                cat = cat_names[bisect.bisect(cat_cw, random() * cat_cw[-1])]
                size, margin_f = CATEGORIES[cat]
                amount = round(max(1.0, basket * ph.basket * size * exp(gauss(-0.12, 0.5))), 2)
                channel = fav if random() < 0.7 else ch_names[bisect.bisect(ch_cw, random() * ch_cw[-1])]
                if random() < promo_p:
                    rate = -0.1 + 0.13 * random()
                else:
                    rate = margin_rate * margin_f * (0.8 + 0.4 * random())
                margin = None if channel == "partner" or random() < 0.14 else round(amount * rate, 2)
                n += 1
                yield t, index, n, "transactions", {
                    "event_id": f"{prefix}t{n}", "customer_id": cid, "event_time": t, "amount": amount,
                    "currency": "EUR", "gross_margin": margin, "channel": channel, "category": cat,
                }  # fmt: skip
                if random() < refund_p * ph.refunds:
                    share = 1.0 if random() < 0.75 else 0.2 + 0.5 * random()
                    back = daytime(t + (1 + 20 * random()) * DAY_MS)
                    refund = {
                        "event_id": "", "customer_id": cid, "event_time": back, "amount": -round(amount * share, 2),
                        "currency": "EUR", "gross_margin": None if margin is None else -round(margin * share, 2),
                        "channel": channel if channel in ("store", "web") else "web", "category": cat,
                    }  # fmt: skip
                    push(todo, (back, next(order), EVENT, ("transactions", refund)))
                    if random() < 0.35:  # "where is my refund?"
                        ask = daytime(back + expo(1 / (4.0 * DAY_MS)))
                        push(todo, (ask, next(order), EVENT, ("contacts", ("billing", "", 1))))
                if account:
                    payment(t, amount)
                schedule_purchase(t)
            elif action == CONTACT:
                if payload != versions[1]:
                    continue
                ph = self.phase
                extra = ph.extra_per_day
                if extra and random() * (extra + contact_rate) < extra:
                    names, cw = weight_table_cached(ph.extra_reasons)
                else:
                    names, cw = self.base_reasons
                reason = names[bisect.bisect(cw, random() * cw[-1])]
                channel = cc_names[bisect.bisect(cc_cw, random() * cc_cw[-1])]
                rec = contact(t, reason, channel, 0)
                n += 1
                rec["event_id"] = f"{prefix}c{n}"
                yield t, index, n, "contacts", rec
                schedule_contact(t)
            elif action == PHASE:
                set_phase(payload)
                versions[0] += 1
                versions[1] += 1
                schedule_purchase(t)
                schedule_contact(t)
            else:
                kind, rec = payload
                if kind == "contacts" and isinstance(rec, tuple):
                    reason, channel, depth = rec
                    if not channel:
                        channel = "phone" if random() < 0.6 else cc_names[bisect.bisect(cc_cw, random() * cc_cw[-1])]
                    rec = contact(t, reason, channel, depth)
                n += 1
                rec["event_id"] = f"{prefix}{kind[0]}{n}"
                yield t, index, n, kind, rec

    def _phase_at(self, t: int) -> Phase:
        current = self.phase
        for at, ph in self.plan:
            if at > t:
                break
            current = ph
        return current


class Simulation:
    """The simulated population: ``customers`` customers over ``days`` days of history ending at ``end_ms``.

    :meth:`history` yields the history's events in event-time order; :meth:`live` continues the same lives past
    ``end_ms`` (plus newly acquired customers), unbounded. Pure and deterministic: the same arguments give the
    same events. Each customer's life depends only on the seed, its index and the history's span, not on how
    many other customers there are.

    >>> sim = Simulation(customers=3, days=30, seed=7, end_ms=ANCHOR_MS)
    >>> events = list(sim.history())
    >>> times = [rec["event_time"] for _, rec in events]
    >>> times == sorted(times) and all(ANCHOR_MS - 30 * DAY_MS <= t <= ANCHOR_MS for t in times)
    True
    >>> [c.customer_id for c in sim.customers]
    ['c000000', 'c000001', 'c000002']
    """

    def __init__(self, customers: int, days: float, seed: int, end_ms: int) -> None:
        if customers < 1 or days <= 0:
            raise ValueError("customers and days must be positive")
        self.n = customers
        self.days = days
        self.seed = seed
        self.end_ms = end_ms
        self.start_ms = end_ms - int(days * DAY_MS)
        self.run = f"{seed}.{end_ms // 1000:x}"
        spread = Random(f"cvm-simulate/{seed}/acquisition")
        share = _share_new(days)
        # ~0.13 events per customer-day: windows of about _WINDOW_EVENTS events, from 1 to 90 days long.
        self.window_ms = int(min(90.0, max(1.0, _WINDOW_EVENTS / (0.13 * customers))) * DAY_MS)
        self._heap: list[tuple[int, int, int, str, dict[str, Any], Iterator[Any]]] = []
        # Only the customers' descriptions are kept: a life that has ended is freed with its generator.
        self._customers: list[Customer] = []
        for i in range(customers):
            acquired = None
            if spread.random() < share:
                acquired = self.start_ms + int(spread.random() * (self.end_ms - self.start_ms))
            life = _Life(i, self.run, seed, self.start_ms, acquired)
            self._customers.append(life.customer)
            self._add(life.events())
        self._arrivals = Random(f"cvm-simulate/{seed}/live")
        self._next_index = customers
        self.horizon_ms = self.start_ms

    @property
    def customers(self) -> list[Customer]:
        """Every customer so far (those acquired in live mode included)."""
        return list(self._customers)

    def _add(self, stream: Iterator[tuple[int, int, int, str, dict[str, Any]]]) -> None:
        for t, i, n, kind, rec in stream:
            heapq.heappush(self._heap, (t, i, n, kind, rec, stream))
            break

    def _until(self, limit: int) -> Iterator[tuple[int, str, dict[str, Any]]]:
        # Window by window: each customer's events of the window are drawn in one go (its generator stays hot in
        # the CPU caches, twice as fast as interleaving customers event by event), then the window is sorted.
        heap = self._heap
        push, pop = heapq.heappush, heapq.heappop
        while heap and heap[0][0] <= limit:
            window_end = min(limit, heap[0][0] + self.window_ms)
            batch = []
            while heap and heap[0][0] <= window_end:
                t, i, n, kind, rec, stream = pop(heap)
                batch.append((t, i, n, kind, rec))
                for item in stream:
                    if item[0] > window_end:
                        push(heap, (*item, stream))
                        break
                    batch.append(item)
            batch.sort()  # by (time, customer index, event number): unique, so records are never compared
            for t, _, _, kind, rec in batch:
                self.horizon_ms = t
                yield t, kind, rec
        self.horizon_ms = max(self.horizon_ms, limit)

    def history(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The history's events, in event-time order."""
        for _, kind, rec in self._until(self.end_ms):
            yield kind, rec

    def live(self) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """``(model time, kind, record)`` after the history, unbounded, with new customers arriving.

        Call it after :meth:`history` is exhausted. Records carry model times; the caller maps them to the wall
        clock.
        """
        per_ms = self.n / (self.days + 540.0) / DAY_MS  # the history's acquisition rate
        arrival = self.end_ms + int(self._arrivals.expovariate(per_ms))
        while True:
            yield from self._until(arrival)
            life = _Life(self._next_index, self.run, self.seed, self.start_ms, arrival)
            self._next_index += 1
            self._customers.append(life.customer)
            self._add(life.events())
            arrival += int(self._arrivals.expovariate(per_ms))

    def truth(self, time_of: Callable[[int], int] | None = None) -> list[dict[str, Any]]:
        """The ``--truth`` lines: every customer's segment, acquisition and churn as of the last event emitted."""
        horizon = max(self.horizon_ms, self.end_ms)
        return [c.truth(horizon, time_of) for c in self._customers]


def generate(customers: int, days: float, seed: int, end_ms: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The history of a fresh :class:`Simulation`: ``(kind, record)`` in event-time order.

    >>> kinds = {kind for kind, _ in generate(50, 60, seed=1, end_ms=ANCHOR_MS)}
    >>> sorted(kinds)
    ['contacts', 'payments', 'transactions']
    """
    return Simulation(customers, days, seed, end_ms).history()
