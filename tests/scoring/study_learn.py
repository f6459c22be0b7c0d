"""What the stream does with the scorings of a replay (:mod:`tests.scoring.study_replay`), for one variant: labels,
the learner, the model versions in force.

In stream order, at each tick: the tick's purchases settle pending snapshots, its cancellation requests are
recorded, label deadlines passed by the tick time minus the allowed lateness (3 days) release their labels, then the
tick's scorings are scored by the model version in force and, when the customer had new events, offer a snapshot
(:class:`scoring.labels.PendingLabels`, one per 30 days, at most ``max_pending``). Every 7 days of stream time the
learner learns the pairs released by then, in the order (known time, customer, snapshot time, head), predicting each
first (progressive validation), and publishes a version, used from the next tick on.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from scoring.churn import FEATURES, ChurnModel, LabelRule, Matured, PendingLabels
from scoring.state import DAY_MS
from tests.scoring.study_replay import COLUMNS, LATENESS_MS, WEEK_MS, Replay


@dataclass(frozen=True)
class Variant:
    """One way to learn churn: the label rule(s), the model's inputs, the model, where snapshots are taken.

    ``early`` adds a second head on the same snapshots (its own label rule and model), for the alerts.
    """

    name: str
    rule: LabelRule
    features: tuple[str, ...] = FEATURES
    kind: str = "logreg"
    noise: bool = False  # the noise-aware loss, with each head's silence as noise_days
    snapshots: str = "events"  # events: only at scorings with new events; all: at every scoring
    every_days: float = 30.0
    max_pending: int = 2
    lr: float = 0.1
    early: LabelRule | None = None

    @property
    def rules(self) -> tuple[LabelRule, ...]:
        return (self.rule,) if self.early is None else (self.rule, self.early)

    def model(self, head: int = 0) -> ChurnModel:
        noise = self.rules[head].silence_ms / DAY_MS if self.noise else 0.0
        return ChurnModel(self.kind, lr=self.lr, features=self.features, noise_days=noise, n_models=10)


@dataclass
class Learned:
    """What a variant's stream produced: the churn probability of every scoring, and the learner's record."""

    p: np.ndarray  # per replay row, head 0
    version: np.ndarray  # model version used per row (0: none yet)
    p_early: np.ndarray | None = None  # head 1, when the variant has one
    pairs: int = 0
    positives: int = 0
    label_p: list[float] = field(default_factory=list)  # progressive P(label 1) before learning each pair (head 0)
    labels: list[int] = field(default_factory=list)
    models: list[ChurnModel] = field(default_factory=list)  # head 0's versions
    early_models: list[ChurnModel] | None = None  # head 1's versions
    learned: list[tuple[int, int, int, int, int, dict[str, float]]] = field(default_factory=list)  # learning order
    pending_end: float = 0.0  # snapshots pending per customer at the end
    cpu_s: float = 0.0


def _events_by_tick(rep: Replay) -> dict[int, list[tuple[int, int, bool]]]:
    """(time, customer, is a purchase) of every purchase and cancellation request, grouped by the tick folding it."""
    out: dict[int, list[tuple[int, int, bool]]] = {}
    tick = rep.tick_ms
    for c, times in enumerate(rep.purchases):
        for t in times.tolist():
            out.setdefault(-(-t // tick) * tick, []).append((t, c, True))
    for c, times in enumerate(rep.cancellations):
        for t in times.tolist():
            out.setdefault(-(-t // tick) * tick, []).append((t, c, False))
    for items in out.values():
        items.sort()
    return out


def row_dict(rep: Replay, i: int) -> dict[str, float]:
    """Every recorded feature of scoring ``i`` (missing ones left out)."""
    return {name: float(val) for name, val in zip(COLUMNS, rep.x[i].tolist(), strict=True) if val == val}


def score(model: ChurnModel, rep: Replay, lo: int, hi: int, rows: list[list[float]], wide: bool) -> list[float]:
    """Churn probabilities of scorings lo..hi: the worker's vectorised call, or one at a time for a wide model."""
    if wide:
        return [model.churn_probability(row_dict(rep, i)) for i in range(lo, hi)]
    return [p for p, _ in model.predict_many_with_reasons(rows, 0)]


def learn(rep: Replay, v: Variant) -> Learned:
    """Run the labels, the learner and the scoring of a variant over a replay, in stream order."""
    cpu0 = time.process_time()
    rules = v.rules
    every_ms = int(v.every_days * DAY_MS)
    n_feat = len(FEATURES)
    x_feat = rep.x[:, :n_feat].astype(np.float64)
    # A variant reading features beyond the snapshot's FEATURES learns from the full row of its snapshot's scoring
    # (the study's stand-in for a wider snapshot), and is scored one row at a time.
    wide = not set(v.features) <= set(FEATURES)
    row_at: dict[tuple[int, int], int] = {}
    pending: dict[int, PendingLabels] = {}
    heap: list[tuple[int, int]] = []
    ready: list[tuple[int, int, int, int, int, dict[str, float]]] = []  # known, customer, snapshot, head, label, x
    events = _events_by_tick(rep)
    models = [v.model(h) for h in range(len(rules))]
    current: list[ChurnModel | None] = [None] * len(rules)
    n = len(rep.time)
    out = Learned(np.full(n, np.nan), np.zeros(n, np.int32), np.full(n, np.nan) if len(rules) > 1 else None)
    if len(rules) > 1:
        out.early_models = []
    version = 0
    ticks, starts = np.unique(rep.time, return_index=True)
    bounds = [*starts.tolist(), n]

    def take(c: int, matured: list[Matured], known: int) -> None:
        for m in matured:
            x = row_dict(rep, row_at.pop((c, m.snapshot_ms))) if wide else m.features
            ready.append((known, c, m.snapshot_ms, m.head, m.label, x))

    def deadline(c: int) -> None:
        d = pending[c].next_deadline(rules)
        if d is not None:
            heapq.heappush(heap, (d, c))

    all_ticks = sorted(set(ticks.tolist()) | set(events))
    row_of = {t: k for k, t in enumerate(ticks.tolist())}
    for tick in all_ticks:
        for t, c, purchase in events.get(tick, ()):
            pl = pending.get(c)
            if pl is None or not len(pl):
                continue
            if purchase:
                take(c, pl.purchase(t, rules), tick)
            else:
                pl.cancellation(t)
            deadline(c)
        label_time = tick - LATENESS_MS
        while heap and heap[0][0] < label_time:
            _, c = heapq.heappop(heap)
            take(c, pending[c].advance(label_time, rules), tick)
            deadline(c)
        k = row_of.get(tick)
        if k is not None:
            lo, hi = bounds[k], bounds[k + 1]
            rows = x_feat[lo:hi].tolist()
            if current[0] is not None:
                out.p[lo:hi] = score(current[0], rep, lo, hi, rows, wide)
                out.version[lo:hi] = version
            if out.p_early is not None and current[1] is not None:
                out.p_early[lo:hi] = score(current[1], rep, lo, hi, rows, wide)
            for i in range(lo, hi):
                if v.snapshots == "events" and not rep.triggered[i]:
                    continue
                c = int(rep.cust[i])
                pl = pending.setdefault(c, PendingLabels())
                feats = {name: float(val) for name, val in zip(FEATURES, rows[i - lo], strict=True) if val == val}
                if pl.offer(tick, feats, every_ms, v.max_pending):
                    deadline(c)
                    if wide:
                        row_at[(c, tick)] = i
        if tick % WEEK_MS == 0 and ready:
            ready.sort(key=lambda r: r[:4])
            now = [r for r in ready if r[0] <= tick]
            ready[:] = [r for r in ready if r[0] > tick]
            out.learned.extend(now)
            for _, _, _, head, label, feats in now:
                if head == 0:
                    out.label_p.append(models[0].label_probability(feats))
                    out.labels.append(label)
                    out.pairs += 1
                    out.positives += label
                models[head].learn_one(feats, label)
            version += 1
            current = [ChurnModel.from_bytes(m.to_bytes()) for m in models]
            out.models.append(current[0])  # type: ignore[arg-type]
            if out.early_models is not None:
                out.early_models.append(current[1])  # type: ignore[arg-type]
    out.pending_end = sum(len(p) for p in pending.values()) / max(1, len(rep.customers))
    out.cpu_s = time.process_time() - cpu0
    return out
