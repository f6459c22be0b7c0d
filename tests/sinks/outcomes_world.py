"""A small synthetic history for the alert-outcome and defection tests, and an oracle of observed leaving.

:func:`make_world` draws customers who stay (active to the end), leave in silence, leave after asking to cancel,
come back after a long gap, or are still undecided at the end (``pending=True``); a score history every week with
value tiers and signal figures around the thresholds of :mod:`scoring.reasons`; and alerts of two rules. The oracle
(:func:`observed_leaving`, :func:`alert_outcome`) is written from docs/alerts.md "Outcomes", independently of the SQL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from cvm.events import parse_time
from sinks.clickhouse import ClickHouse

DAY = 86_400_000
END = parse_time("2025-12-31T00:00:00Z")
START = END - 400 * DAY
RULES = ("high_value_at_risk", "cancellation_request")

#: Score columns the world writes beside the key, time and tier (the figures scoring.reasons reads).
SIGNAL_COLUMNS = (
    "tenure_days",
    "recency_days",
    "silence_gaps",
    "typical_gap_days",
    "frequency",
    "purchases_30d",
    "purchases_365d",
    "spend_30d",
    "spend_90d",
    "complaints_30d",
    "complaints_vs_usual",
    "contacts_30d",
    "contacts_vs_usual",
    "contacts_365d",
    "unresolved_30d",
    "unresolved_vs_usual",
    "late_payments_90d",
    "failed_payments_90d",
    "refunds_90d",
    "last_cancellation_time",
)


@dataclass
class World:
    transactions: list[tuple[str, str, int, float]] = field(default_factory=list)  # id, customer, time, amount
    contacts: list[tuple[str, str, int, str]] = field(default_factory=list)  # id, customer, time, reason
    scores: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[tuple[str, str, int]] = field(default_factory=list)  # customer, rule, time
    customers: list[str] = field(default_factory=list)


#: Figures of a scoring where nothing moved (no signal of scoring.reasons fires).
QUIET = {
    "recency_days": 5.0,
    "silence_gaps": 0.5,
    "typical_gap_days": 10.0,
    "frequency": 5,
    "purchases_30d": 2.0,
    "purchases_365d": 24.0,
    "spend_30d": 100.0,
    "spend_90d": 300.0,
    "complaints_30d": 0.0,
    "complaints_vs_usual": 0.0,
    "contacts_30d": 0.0,
    "contacts_vs_usual": 0.0,
    "contacts_365d": 2.0,
    "unresolved_30d": 0.0,
    "unresolved_vs_usual": 0.0,
    "late_payments_90d": 0.0,
    "failed_payments_90d": 0.0,
    "refunds_90d": 0.0,
}


def _signals(rng: random.Random, t: int, tenure: float, cancel: int | None, loud: float) -> dict[str, Any]:
    """Figures around the thresholds of scoring.reasons.signals, drawn with probability ``loud`` (else quiet)."""
    r = rng.random
    asked = {"tenure_days": tenure, "last_cancellation_time": cancel if cancel is not None and cancel <= t else None}
    if r() >= loud:
        return QUIET | asked
    return asked | {
        "tenure_days": tenure,
        "recency_days": r() * 40,
        "silence_gaps": r() * 4,
        "typical_gap_days": 5 + r() * 20,
        "frequency": rng.randint(0, 10),
        "purchases_30d": r() * 4,
        "purchases_365d": r() * 40 if r() < 0.8 else 0.0,
        "spend_30d": r() * 200 - 10,
        "spend_90d": r() * 500 if r() < 0.9 else 0.0,
        "complaints_30d": r() * 2,
        "complaints_vs_usual": r() * 2 - 0.5,
        "contacts_30d": r() * 5,
        "contacts_vs_usual": r() * 2 - 0.5,
        "contacts_365d": r() * 20,
        "unresolved_30d": r() * 2,
        "unresolved_vs_usual": r() * 2 - 0.5,
        "late_payments_90d": r() * 1.2 if r() < 0.3 else 0.0,
        "failed_payments_90d": r() * 1.2 if r() < 0.2 else 0.0,
        "refunds_90d": r() * 3 if r() < 0.3 else 0.0,
    }


def make_world(seed: int, n: int = 80, pending: bool = True) -> World:
    """A history ending at :data:`END` (a purchase at END fixes the stream's time); ``pending=False`` leaves out the
    customers whose leaving is not decided at the end, so that nothing in the evaluation window is pending."""
    rng = random.Random(seed)
    w = World()
    kinds = ["stay", "silent", "cancel", "return"] + (["pending"] if pending else [])
    ev = 0

    def buy(cid: str, t: int, amount: float = 50.0) -> None:
        nonlocal ev
        ev += 1
        w.transactions.append((f"t{ev}", cid, t, amount))

    def contact(cid: str, t: int, reason: str = "information") -> None:
        nonlocal ev
        ev += 1
        w.contacts.append((f"k{ev}", cid, t, reason))

    for i in range(n):
        cid = f"c{i:03d}"
        w.customers.append(cid)
        kind = kinds[i % len(kinds)]
        first = START + rng.randint(0, 100) * DAY + rng.randint(0, DAY)
        # Without pending customers, those who stay show life at the very end: after every alert's horizon.
        end = END - rng.randint(0, 3 * DAY) if pending else END
        if kind == "stay":
            stop = end
        elif kind == "silent":
            stop = rng.randint(START + 150 * DAY, END - 100 * DAY)
        elif kind == "cancel":  # asked to cancel, then nothing: left 50 days before the end (cancelled, not silent)
            stop = END - 50 * DAY - rng.randint(0, 5 * DAY)
        elif kind == "return":
            stop = end
        else:  # pending: its last sign of life is 40 days before the end, nothing decided yet
            stop = END - 40 * DAY
        gap = (first + 120 * DAY, first + 230 * DAY) if kind == "return" else None
        t = first
        asked = stop - 10 * DAY  # a leaver who asks to cancel does so 10 days before its last contact
        while t < (asked if kind == "cancel" else stop):
            if gap is None or not gap[0] <= t <= gap[1]:
                if rng.random() < 0.75:
                    buy(cid, t, round(rng.uniform(5, 200), 2))
                else:
                    contact(cid, t, rng.choice(["information", "complaint", "technical"]))
            t += rng.randint(2 * DAY, 25 * DAY)
        cancel = None
        if kind == "cancel":
            cancel = asked
            contact(cid, asked, "cancellation_request")
            contact(cid, stop, "complaint")
            if rng.random() < 0.5:
                buy(cid, stop + 10 * DAY, -20.0)  # a refund after asking: not a purchase, not a sign of life
        elif kind == "silent":
            buy(cid, stop, 40.0)
            if rng.random() < 0.5:
                buy(cid, stop + 20 * DAY, -15.0)  # a refund after leaving: not a sign of life
        else:
            buy(cid, stop, 30.0)
        if kind == "stay" and rng.random() < 0.3:  # asked to cancel, then bought again: stays
            contact(cid, stop - 20 * DAY, "cancellation_request")
            cancel = stop - 20 * DAY
        tier = rng.choice("AABC")
        loud = 0.25 if kind in ("silent", "cancel") else 0.05  # leavers show more
        version = 0
        for t in range(first, END + 1, 7 * DAY):
            if rng.random() < 0.1:
                tier = rng.choice("ABC")
            version += 1
            w.scores.append(
                {"customer_id": cid, "version": version, "as_of": t, "value_tier": tier}
                | _signals(rng, t, (t - first) / DAY, cancel, loud)
            )
        for rule in RULES:
            for _ in range(rng.randint(0, 3)):
                w.alerts.append((cid, rule, rng.randint(first, END)))
        if kind in ("silent", "cancel") and rng.random() < 0.8:
            w.alerts.append((cid, "high_value_at_risk", stop - rng.randint(0, 80) * DAY))
    buy("c000", END, 10.0)
    return w


def write(ch: ClickHouse, w: World) -> None:
    """The world's rows in the tables the sink writes."""
    ch.insert(
        "transactions",
        ["event_id", "customer_id", "event_time", "amount", "currency", "amount_base", "channel", "category"],
        [[e, c, t, a, "EUR", a, "web", "books"] for e, c, t, a in w.transactions],
        token="world-tx",
    )
    ch.insert(
        "contacts",
        ["event_id", "customer_id", "event_time", "channel", "reason", "handle_time_s", "resolved"],
        [[e, c, t, "phone", r, 60.0, True] for e, c, t, r in w.contacts],
        token="world-contacts",
    )
    columns = ["customer_id", "version", "as_of", "value_tier", *SIGNAL_COLUMNS]
    ch.insert("customer_scores", columns, [[s[k] for k in columns] for s in w.scores], token="world-scores")
    ch.insert(
        "alerts",
        ["alert_time", "customer_id", "rule", "severity", "reasons", "scores", "episode"],
        [[t, c, r, "high", ["a reason"], "{}", f"{c}:{r}:{t}"] for c, r, t in w.alerts],
        token="world-alerts",
    )


# --- the oracle ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaving:
    left: bool
    left_at: int | None
    last_seen: int

    @property
    def churn_ms(self) -> float:
        """The leaving time as scoring.outcomes takes it: ``inf`` for a customer who has not left."""
        return float("inf") if self.left_at is None else float(self.left_at)


def observed_leaving(w: World, silence_days: float = 75.0, grace_days: float = 30.0) -> dict[str, Leaving]:
    """docs/alerts.md "Outcomes": gone after ``silence_days`` without a purchase or a contact, or after a
    cancellation request not followed by a purchase within ``grace_days``; left at the last sign of life."""
    now = max([t for _, _, t, _ in w.transactions] + [t for _, _, t, _ in w.contacts])
    out = {}
    for cid in w.customers:
        purchases = [t for _, c, t, a in w.transactions if c == cid and a > 0]
        contacts = [t for _, c, t, _ in w.contacts if c == cid]
        cancels = [t for _, c, t, r in w.contacts if c == cid and r == "cancellation_request"]
        last_seen = max(purchases + contacts)
        silent = now - last_seen > silence_days * DAY
        cancelled = bool(cancels) and not any(p > max(cancels) for p in purchases)
        cancelled = cancelled and now - max(cancels) > grace_days * DAY
        left = silent or cancelled
        out[cid] = Leaving(left, last_seen if left else None, last_seen)
    return out


def alert_outcome(leaving: Leaving, alert_ms: int, horizon_days: float = 90.0) -> str:
    horizon = horizon_days * DAY
    if leaving.left and leaving.left_at is not None and leaving.left_at <= alert_ms:
        return "late"
    if leaving.left and leaving.left_at is not None and leaving.left_at <= alert_ms + horizon:
        return "left"
    if leaving.last_seen > alert_ms + horizon:
        return "stayed"
    return "pending"


def window_figures(w: World) -> tuple[float, dict[str, dict[str, Any]]]:
    """The tier-A base rate and each rule's figures over the evaluation window, by scoring.outcomes (what ``cvm
    backtest`` computes) with the observed leaving times of :func:`observed_leaving`."""

    import numpy as np

    from scoring import outcomes

    leaving = observed_leaving(w)
    churn = np.array([leaving[c].churn_ms for c in w.customers], dtype=np.float64)
    cust, _ = outcomes.codes([s["customer_id"] for s in w.scores], w.customers)
    times = np.array([s["as_of"] for s in w.scores], dtype=np.int64)
    tiers = np.array([s["value_tier"] for s in w.scores])
    window = outcomes.Window.of_history(END)
    table = outcomes.checkpoint_table(cust, times, tiers, churn, window)
    base = outcomes.base_rate(table)
    rules = {}
    for rule in RULES:
        chosen = [(c, t) for c, name, t in w.alerts if name == rule]
        a_cust, _ = outcomes.codes([c for c, _ in chosen], w.customers)
        a_time = np.array([t for _, t in chosen], dtype=np.int64)
        fig: dict[str, Any] = outcomes.alert_precision(a_cust, a_time, churn, window, base=base)
        fig.update(outcomes.caught_ahead(a_cust, a_time, cust, times, tiers, churn, window))
        fig["tier_a_rows"] = int((table.tier == "A").sum())
        rules[rule] = fig
    return base, rules


def defection_by_tier(w: World) -> dict[str, dict[str, float]]:
    """Per value tier, over every month, the share of the leavers who showed each signal: scoring.outcomes's
    defection_signals on scoring.reasons's signals of each scoring, leaving observed (its last sign of life counts)."""

    from scoring import outcomes
    from scoring.reasons import SIGNALS, signals

    leaving = observed_leaving(w)
    cust, _ = outcomes.codes([s["customer_id"] for s in w.scores], w.customers)
    flags = [[name in signals(s, s["as_of"]) for name in SIGNALS] for s in w.scores]
    churn = [leaving[c].churn_ms + 1 for c in w.customers]
    rows = outcomes.defection_signals(
        cust, [s["as_of"] for s in w.scores], [s["value_tier"] for s in w.scores], flags, SIGNALS, churn
    )
    out: dict[str, dict[str, float]] = {}
    for tier in sorted({r["tier"] for r in rows}):
        mine = [r for r in rows if r["tier"] == tier]
        n = sum(r["leavers"] for r in mine)
        out[tier] = {"leavers": n} | {name: sum(r["leavers"] * r[name] for r in mine) / n for name in SIGNALS}
    return out
