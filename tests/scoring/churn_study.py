"""The churn study of docs/churn.md: label × features × model variants, judged against the simulator's truth.

``python -m tests.scoring.churn_study [--seeds 1,2,3] [--variants NAME,...] [--data DIR]`` simulates (once, cached in
``DIR``, default ``/work/wt/churn-data``) 3,000 customers × 400 days per seed with ``cvm simulate --out --truth``,
replays each history through the worker's scoring loop (:mod:`tests.scoring.study_replay`), then for each variant
runs what the stream does with the scorings, in stream order:

* at each tick, the tick's purchases settle pending snapshots (0), its cancellation requests are recorded, label
  deadlines passed by the tick time minus the allowed lateness (3 days) mature (1), then the tick's scorings are
  scored by the model version in force and offer snapshots (:class:`scoring.churn.PendingLabels`, one per 30 days,
  at most 2 pending);
* every 7 days of stream time the learner learns the pairs known by then, in the order (known time, customer,
  snapshot time), predicting each first (progressive validation), and publishes a version, used from the next tick;

and computes the issue's figures with :mod:`scoring.outcomes` (AUC against the truth at 30 and 90 days, base rate,
precision and lift of the alerts, high-value leavers caught 30 days ahead, median lead, ECE, µs per score).
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvm.config import Config
from cvm.simulate import main as simulate_main
from scoring import outcomes
from scoring.alerts import AlertRules, AlertState
from scoring.churn import FEATURES, ChurnModel, LabelRule, Matured, PendingLabels
from scoring.metrics import read_truth
from scoring.state import DAY_MS
from tests.scoring.study_replay import COLUMN_INDEX
from tests.scoring.study_replay import COLUMNS, LATENESS_MS, WEEK_MS, Replay, cached

DATA = Path("/work/wt/churn-data")
TIERS = np.array(["A", "B", "C"])


@dataclass(frozen=True)
class Variant:
    """One way to learn churn: the label rule(s), the model's inputs, the model, where snapshots are taken.

    ``early`` adds a second head on the same snapshots (its own label rule and model), for the alerts.
    """

    name: str
    rule: LabelRule
    features: tuple[str, ...] = FEATURES
    kind: str = "logreg"
    noise_days: float = 0.0
    snapshots: str = "events"  # events: only at scorings with new events; all: at every scoring
    every_days: float = 30.0
    max_pending: int = 2
    lr: float = 0.1
    early: LabelRule | None = None

    @property
    def rules(self) -> tuple[LabelRule, ...]:
        return (self.rule,) if self.early is None else (self.rule, self.early)

    def model(self, head: int = 0) -> ChurnModel:
        noise = self.noise_days and (self.rules[head].silence_ms / DAY_MS)
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
    models: list[ChurnModel] = field(default_factory=list)
    learned: list[tuple[int, int, int, int, int, dict[str, float]]] = field(default_factory=list)  # learning order
    pending_end: float = 0.0  # snapshots pending per customer at the end
    cpu_s: float = 0.0


def _events_by_tick(rep: Replay) -> dict[int, list[tuple[int, int, bool]]]:
    """(time, customer, is a purchase) of every purchase and cancellation request, grouped by the tick folding it."""
    out: dict[int, list[tuple[int, int, bool]]] = {}
    for c, times in enumerate(rep.purchases):
        for t in times.tolist():
            out.setdefault(-(-t // DAY_MS) * DAY_MS, []).append((t, c, True))
    for c, times in enumerate(rep.cancellations):
        for t in times.tolist():
            out.setdefault(-(-t // DAY_MS) * DAY_MS, []).append((t, c, False))
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
    out.pending_end = sum(len(p) for p in pending.values()) / max(1, len(rep.customers))
    out.cpu_s = time.process_time() - cpu0
    return out


@dataclass
class Seed:
    """One simulated history: its replay and the truth's churn time per customer (inf: stays)."""

    name: str
    rep: Replay
    churn: np.ndarray
    window: outcomes.Window
    table: outcomes.CheckpointTable


def load_seed(seed: int, data: Path = DATA, customers: int = 3000, days: int = 400) -> Seed:
    data.mkdir(parents=True, exist_ok=True)
    name = f"s{seed}" if (customers, days) == (3000, 400) else f"s{seed}-{customers}x{days}"
    events, truth_path = data / f"{name}.jsonl", data / f"{name}.truth.jsonl"
    if not events.exists() or not truth_path.exists():
        args = argparse.Namespace(
            customers=customers, days=days, seed=seed, out=str(events), truth=str(truth_path), end=None, rate=None,
            duration=None,
        )  # fmt: skip
        if simulate_main(Config(), args) != 0:
            raise SystemExit(f"cvm simulate failed for seed {seed}")
    rep = cached(events, data)
    truth = read_truth(str(truth_path))
    churn = np.array(
        [truth[c].churn_ms if truth[c].churn_ms is not None else np.inf for c in rep.customers], dtype=np.float64
    )
    window = outcomes.Window.of_history(rep.end_ms)
    table = outcomes.checkpoint_table(rep.cust, rep.time, TIERS[rep.tier], churn, window)
    return Seed(name, rep, churn, window, table)


def tick_percentiles(rep: Replay, values: np.ndarray) -> np.ndarray:
    """Each scoring's percentile (share of customers below, mid-rank on ties) among every customer's latest value,
    once all of the tick's customers moved: what the worker's population reads (exactly, without buckets)."""
    current = np.full(len(rep.customers), np.nan)
    out = np.full(len(rep.time), np.nan)
    _, starts = np.unique(rep.time, return_index=True)
    bounds = [*starts.tolist(), len(rep.time)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        current[rep.cust[lo:hi]] = values[lo:hi]
        known = np.sort(current[np.isfinite(current)])
        if not known.size:
            continue
        v = values[lo:hi]
        below = np.searchsorted(known, v, side="left")
        upto = np.searchsorted(known, v, side="right")
        out[lo:hi] = np.where(np.isfinite(v), (below + upto) / 2 / known.size, np.nan)
    return out


class RowScores(Mapping[str, Any]):
    """One scoring's scores as the worker hands them to the alert rules, read lazily from the replay's row."""

    __slots__ = ("rep", "i", "extra")

    def __init__(self, rep: Replay, i: int, extra: dict[str, Any]) -> None:
        self.rep, self.i, self.extra = rep, i, extra

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        j = COLUMN_INDEX.get(key)
        if j is None:
            raise KeyError(key)
        v = float(self.rep.x[self.i, j])
        if v != v:
            raise KeyError(key)
        return v

    def __iter__(self) -> Iterator[str]:
        return iter([*self.extra, *COLUMNS])

    def __len__(self) -> int:
        return len(self.extra) + len(COLUMNS)


def last_before(times: list[np.ndarray], cust: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Per row, the customer's latest time in ``times[c]`` at or before the row's time (0: none)."""
    out = np.zeros(len(cust), np.int64)
    for i, (c, t) in enumerate(zip(cust.tolist(), at.tolist(), strict=True)):
        ts = times[c]
        k = int(np.searchsorted(ts, t, side="right"))
        if k:
            out[i] = int(ts[k - 1])
    return out


def run_alerts(s: Seed, p: np.ndarray, rules: AlertRules) -> list[dict[str, Any]]:
    """The alerts :class:`scoring.alerts.AlertRules` raises over the replay's scorings, in stream order, with the
    churn probabilities ``p`` (one per scoring); each alert's customer as its index."""
    rep = s.rep
    cancel = last_before(rep.cancellations, rep.cust, rep.time)
    states: dict[int, AlertState] = {}
    out: list[dict[str, Any]] = []
    tiers = TIERS[rep.tier]
    for i in range(len(rep.time)):
        c = int(rep.cust[i])
        extra: dict[str, Any] = {"value_tier": tiers[i], "clv_percentile": float(rep.value_pct[i])}
        if p[i] == p[i]:
            extra["churn_probability"] = float(p[i])
        if cancel[i]:
            extra["last_cancellation_time"] = int(cancel[i])
        state = states.setdefault(c, AlertState())
        for alert in rules.evaluate(rep.customers[c], RowScores(rep, i, extra), state, None, int(rep.time[i])):
            alert["c"] = c
            out.append(alert)
    return out


def rule_figures(s: Seed, alerts: list[dict[str, Any]], rule: str | None = None) -> dict[str, float]:
    """:func:`alert_figures` of the alerts of one rule (None: every rule)."""
    chosen = [a for a in alerts if rule is None or a["rule"] == rule]
    c = np.array([a["c"] for a in chosen], np.int64)
    t = np.array([a["alert_time"] for a in chosen], np.int64)
    fig = alert_figures(s, c, t)
    fig["critical_share"] = sum(a["severity"] == "critical" for a in chosen) / max(1, len(chosen))
    return fig


def alert_figures(s: Seed, customers: np.ndarray, times: np.ndarray) -> dict[str, float]:
    """Precision, lift, caught ahead and lead of a set of alerts, by the issue's definitions."""
    base = outcomes.base_rate(s.table)
    fig = outcomes.alert_precision(customers, times, s.churn, s.window, base=base)
    fig.update(outcomes.caught_ahead(customers, times, s.rep.cust, s.rep.time, TIERS[s.rep.tier], s.churn, s.window))
    fig["base"] = base
    fig["alerts_per_week"] = fig["alerts"] / ((s.window.end_ms - s.window.start_ms) / WEEK_MS)
    return fig


def auc_figures(s: Seed, score: np.ndarray) -> dict[str, float]:
    return {
        "auc30": outcomes.truth_auc(s.table, score, 30),
        "auc90": outcomes.truth_auc(s.table, score, 90),
        "auc30_A": outcomes.truth_auc(s.table, score, 30, tier="A"),
    }


def baselines(s: Seed) -> dict[str, np.ndarray]:
    """The model-free scores the churn model must beat."""
    rep = s.rep
    return {
        "hiatus (silence / own gap)": rep.col("silence_gaps").astype(np.float64),
        "fixed days (recency)": rep.col("recency_days").astype(np.float64),
        "BG/NBD 1 - P(alive)": 1.0 - rep.col("p_alive").astype(np.float64),
    }


def us_per_score(model: ChurnModel, rows: np.ndarray, repeat: int = 3) -> float:
    """CPU µs per customer of ``predict_many_with_reasons`` (probability and 3 reason codes), batches of 1,000."""
    batch = rows[:1000].tolist()
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        model.predict_many_with_reasons(batch, 3)
        best = min(best, (time.process_time() - t0) / len(batch) * 1e6)
    return best


def fmt(values: dict[str, Any], keys: Sequence[str]) -> str:
    return " | ".join(f"{values[k]:.3f}" if isinstance(values.get(k), float) else str(values.get(k, "-")) for k in keys)


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


VARIANTS: dict[str, Callable[[], Variant]] = {}


def variant(fn: Callable[[], Variant]) -> Callable[[], Variant]:
    VARIANTS[fn().name] = fn
    return fn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.scoring.churn_study")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--variants", default="")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--baselines", action="store_true")
    args = parser.parse_args(argv)
    seeds = [load_seed(int(x), args.data) for x in args.seeds.split(",")]
    if args.baselines:
        for s in seeds:
            print(s.name, "base rate A 90d", round(outcomes.base_rate(s.table), 4))
        rows: dict[str, list[dict[str, float]]] = {}
        for s in seeds:
            for name, score in baselines(s).items():
                rows.setdefault(name, []).append(auc_figures(s, score))
        for name, per_seed in rows.items():
            print(f"| {name} | {fmt(mean_of(per_seed), ['auc30', 'auc90', 'auc30_A'])} |")
    names = [n for n in args.variants.split(",") if n] or list(VARIANTS)
    for name in names:
        v = VARIANTS[name]()
        per_seed = []
        for s in seeds:
            learned = learn(s.rep, v)
            fig = auc_figures(s, learned.p)
            fig["ece_labels"] = outcomes.ece(learned.label_p[len(learned.label_p) // 5 :], learned.labels[len(learned.labels) // 5 :])
            fig["pairs"] = float(learned.pairs)
            fig["pos"] = learned.positives / max(1, learned.pairs)
            fig["cpu_s"] = learned.cpu_s
            per_seed.append(fig)
            print(f"  {name} {s.name}: {fmt(fig, list(fig))}", file=sys.stderr, flush=True)
        m = mean_of(per_seed)
        print(f"| {name} | {fmt(m, ['auc30', 'auc90', 'auc30_A', 'ece_labels', 'pairs', 'pos'])} |", flush=True)
    return 0


# --- the variants ---------------------------------------------------------------------------------------------------

OLD21 = FEATURES[:21]
ALL = FEATURES


@variant
def _v0() -> Variant:
    return Variant("L0 silence90 / old21 / logreg / all scorings", LabelRule.from_days(90, 30), OLD21, snapshots="all")


@variant
def _v1() -> Variant:
    return Variant("L0 silence90 / all / logreg / events", LabelRule.from_days(90, 30), ALL)


@variant
def _v2() -> Variant:
    return Variant("L3 gone30 H120 / all / logreg / events", LabelRule.from_days(120, 30, 30), ALL)


@variant
def _v3() -> Variant:
    return Variant("L3 gone30 H120 / all / noisy logreg / events", LabelRule.from_days(120, 30, 30), ALL, noise_days=120)


@variant
def _v4() -> Variant:
    return Variant(
        "L3 gone30 H120 / all / noisy logreg / events / hold", LabelRule.from_days(120, 30, 30, hold=True), ALL, noise_days=120
    )


@variant
def _v5() -> Variant:
    return Variant("L0 silence90 / all / noisy logreg / events / hold", LabelRule.from_days(90, 30, hold=True), ALL, noise_days=90)


@variant
def _v6() -> Variant:
    return Variant(
        "L2 gone30 H60 / all / noisy logreg / events / hold", LabelRule.from_days(60, 30, 30, hold=True), ALL, noise_days=60
    )


if __name__ == "__main__":
    raise SystemExit(main())
