"""Step 2 of a batch: a customer's events of one phase are folded into its state.

Per event, :meth:`scoring.state.CustomerState.apply` decides the fate (applied, redelivered, duplicate, late); the
late ones are reported. Purchases and cancellation requests settle the churn snapshots waiting for their label
(:class:`scoring.churn.PendingLabels`): those labels are known at the tick that closes the phase, and so are the
customer's new purchase-occasion facts, sent for the learner's CLV fit.
"""

from __future__ import annotations

from collections.abc import Iterable

from scoring.labels import LabelRule, PendingLabels
from scoring.state import REKEYED, CustomerState, FoldRules
from streams.records import Event, Outputs, late_event

__all__ = ["Folder", "emit_labels"]


class Folder:
    """Folds events into customer states.

    Parameters
    ----------
    rules
        How events add up (margin and contact-cost defaults, allowed lateness, purchase-occasion period).
    label_rules
        When a churn snapshot's labels are settled, one rule per head.
    rekey_topic
        The worker's re-key topic: its records use their own offsets slot in the state.
    """

    def __init__(self, rules: FoldRules, label_rules: tuple[LabelRule, ...], rekey_topic: str) -> None:
        self.rules = rules
        self.label_rules = label_rules
        self.rekey_topic = rekey_topic

    def fold(
        self, customer_id: str, state: CustomerState, events: Iterable[Event], known_ms: int, now_ms: int, out: Outputs
    ) -> bool:
        """Fold ``events`` (this customer's, offset order per partition) into ``state``; True if it changed.

        ``known_ms`` is the tick closing the events' phase: when the labels and facts they settle become known.
        """
        before = state.version
        facts = _occasion_facts(state)
        rules, rekey = self.rules, self.rekey_topic
        moments: list[tuple[int, bool]] = []  # (time, is a purchase) of applied purchases and cancellations
        for ev in events:
            rec = ev.rec
            outcome = state.apply(ev.kind, ev.record, rec.offset, rules, REKEYED if rec.topic == rekey else None)
            out.count(rec, outcome)
            if outcome == "late":
                times = state.rekey_times if rec.topic == rekey else state.kind_times
                out.late.append((customer_id, late_event(ev, times[_KIND[ev.kind]], now_ms)))
            elif outcome == "applied":
                record = ev.record
                if ev.kind == "transactions" and record["amount"] >= 0.005:
                    moments.append((ev.time, True))
                elif ev.kind == "contacts" and record.get("reason") == "cancellation_request":
                    moments.append((ev.time, False))
        if state.version == before:
            return False
        if moments:
            pending = PendingLabels.from_bytes(state.churn_bytes) if state.churn_bytes else PendingLabels()
            if len(pending):
                rule = self.label_rules
                for t, purchase in sorted(moments):
                    if purchase:
                        emit_labels(customer_id, pending.purchase(t, rule), known_ms, out)
                    else:
                        pending.cancellation(t)
                state.churn_bytes = pending.to_bytes()
        new_facts = _occasion_facts(state)
        if new_facts != facts:
            first, last, n, repeat = new_facts
            out.summaries.append((customer_id, {"f": first, "l": last, "n": n, "r": repeat, "k": known_ms}))
        return True


_KIND = {"transactions": 0, "contacts": 1, "payments": 2}


def emit_labels(customer_id: str, matured: Iterable, known_ms: int, out: Outputs) -> None:
    """Send matured (features, label) pairs to the learner, known at tick ``known_ms``."""
    for m in matured:
        pair = {"customer_id": customer_id, "snapshot_ms": m.snapshot_ms, "label_ms": m.label_ms}
        pair.update(known_ms=known_ms, head=m.head, label=m.label, features=m.features)
        out.labels.append((customer_id, pair))


def _occasion_facts(s: CustomerState) -> tuple[int, int, int, int]:
    """What the CLV models need of a customer: first and last occasion, occasions, repeat spend in cents."""
    return s.first_occasion, s.last_occasion, s.n_occasions, s.purchase_cents - s.first_occasion_cents
