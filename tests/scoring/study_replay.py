"""The worker's scoring loop, offline: a ``cvm simulate --out`` history folded and scored on a grid of ticks.

This mirrors how the stream scores (``streams/``, as the lead rewrites it), with the real ``scoring`` modules:

* one :class:`scoring.state.CustomerState` per customer, every event folded with ``CustomerState.apply``;
* stream time advances in ticks on a fixed grid (daily here; the worker's default is hourly): at tick T, every
  customer that had events in (T - tick, T] or whose re-scoring timer (:func:`scoring.features.next_rescore_ms`) is
  due is scored as of T with :func:`scoring.features.compute`;
* CLV with the parameters in force (:mod:`scoring.clv`), refitted at 7-day grid points once 5% of the customers'
  purchase facts changed (at least 50 customers), the new version in force after its grid point;
* value tier from the real :class:`scoring.population.Population` (CLV percentile; profitability before the first
  CLV fit or without a purchase occasion), ranked once all of the tick's customers moved.

The churn model, labels and alerts do not feed back into the state, so they are evaluated afterwards
(:mod:`tests.scoring.churn_study`) on the rows this replay records: one per scoring, with every candidate feature.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvm.config import Config
from cvm.events import from_json
from scoring import clv as clvmod
from scoring import features
from scoring.bgnbd import fit_bgnbd
from scoring.churn import FEATURES, LEGACY_FEATURES
from scoring.gamma_gamma import fit_gamma_gamma
from scoring.population import Population
from scoring.state import DAY_MS, CustomerState, FoldRules

WEEK_MS = 7 * DAY_MS
LATENESS_MS = 3 * DAY_MS

#: Every feature the study may feed a model or a baseline: the churn FEATURES and the candidates of docs/churn.md.
COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *FEATURES,
            *LEGACY_FEATURES,
            "purchases_7d",
            "contacts_7d",
            "contacts_90d",
            "unresolved_30d",
            "refunds_90d",
            "late_payments_90d",
            "purchases_365d",
            "contacts_365d",
            "n_contacts",
            "n_complaints",
            "n_unresolved",
            "typical_gap_days",
            "silence_gaps",
            "silence_rate",
            "purchases_vs_usual",
            "spend_vs_usual",
            "contacts_vs_usual",
            "complaints_vs_usual",
            "unresolved_vs_usual",
            "recent_cancellation",
            "days_since_cancellation",
            "days_since_contact",
            "regularity_cv",
            "spend_365d",
            "clv",
        ]
    )
)
COLUMN_INDEX = _COL = {name: i for i, name in enumerate(COLUMNS)}


@dataclass
class Replay:
    """The scorings of one history: row i is customer ``cust[i]`` scored at ``time[i]``."""

    customers: list[str]
    cust: np.ndarray  # int32
    time: np.ndarray  # int64 ms
    triggered: np.ndarray  # bool: scored because of new events (else: its re-scoring timer)
    x: np.ndarray  # float32 (rows, COLUMNS)
    tier: np.ndarray  # int8: 0 = A, 1 = B, 2 = C
    value_pct: np.ndarray  # float32: the percentile the tier comes from (CLV, or profitability without one)
    purchases: list[np.ndarray]  # per customer, purchase times (ms), sorted
    cancellations: list[np.ndarray]
    start_ms: int
    end_ms: int
    cpu_s: float
    tick_ms: int = DAY_MS

    def col(self, name: str) -> np.ndarray:
        return self.x[:, _COL[name]]

    def save(self, path: Path) -> None:
        """Write atomically: another study process may be reading the cache."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            self._write(fh)
        os.replace(tmp, path)

    def _write(self, fh: Any) -> None:
        np.savez_compressed(
            fh,
            customers=np.array(self.customers),
            cust=self.cust,
            time=self.time,
            triggered=self.triggered,
            x=self.x,
            tier=self.tier,
            value_pct=self.value_pct,
            columns=np.array(COLUMNS),
            purchases=np.array(self.purchases, dtype=object),
            cancellations=np.array(self.cancellations, dtype=object),
            meta=np.array([self.start_ms, self.end_ms, self.cpu_s, self.tick_ms]),
        )

    @classmethod
    def load(cls, path: Path) -> Replay:
        d = np.load(path, allow_pickle=True)
        if tuple(d["columns"].tolist()) != COLUMNS:
            raise ValueError("stale replay cache: its columns differ")
        start, end, cpu, tick = d["meta"].tolist()
        return cls(
            d["customers"].tolist(),
            d["cust"],
            d["time"],
            d["triggered"],
            d["x"],
            d["tier"],
            d["value_pct"],
            list(d["purchases"]),
            list(d["cancellations"]),
            int(start),
            int(end),
            float(cpu),
            int(tick),
        )


def read_events(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as fh:
        return [from_json(json.loads(line)) for line in fh]


class _Clv:
    """The learner's CLV refit and the version in force."""

    def __init__(self) -> None:
        self.model: clvmod.ClvModel | None = None
        self.facts: dict[int, tuple[int, int, int, int]] = {}
        self.changed = 0
        self.as_of = 0

    def offer(self, c: int, s: CustomerState) -> None:
        if not s.n_occasions:
            return
        facts = (s.first_occasion, s.last_occasion, s.n_occasions, s.purchase_cents - s.first_occasion_cents)
        if self.facts.get(c) != facts:
            self.facts[c] = facts
            self.changed += 1
        self.as_of = max(self.as_of, s.last_time)

    def refit(self) -> bool:
        n = len(self.facts)
        if n < 50 or self.changed < max(1, 0.05 * n):
            return False
        rows = np.array(list(self.facts.values()), dtype=np.int64)
        as_of = max(clvmod.occasion_period(self.as_of), int(rows[:, 1].max()))
        x, t_x, age, m = clvmod.summaries(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] / 100.0, as_of)
        try:
            bg = fit_bgnbd(x, t_x, age).params
            gg = fit_gamma_gamma(x, m).params if (x > 0).any() else None
        except (ValueError, FloatingPointError):
            return False
        self.model = clvmod.ClvModel(bg, gg, horizon_days=365.0, discount_rate=0.10)
        self.changed = 0
        return True


def _clv_inputs(s: CustomerState, now: int, margin_rate: float) -> tuple[float, float, float, float, float]:
    as_of = max(now // DAY_MS, s.last_occasion)
    x, t_x, age, m = clvmod.summary(
        s.first_occasion, s.last_occasion, s.n_occasions, (s.purchase_cents - s.first_occasion_cents) / 100, as_of
    )
    margin = s.margin_cents / s.revenue_cents if s.revenue_cents > 0 else margin_rate
    return x, t_x, age, m, min(max(margin, 0.0), 1.0)


def replay(events: Iterable[tuple[str, dict[str, Any]]], tick_ms: int = DAY_MS, rescore: str = "timer") -> Replay:
    """Fold and score a sorted history on a grid of ``tick_ms``.

    ``rescore``: ``timer`` re-scores silent customers at :func:`scoring.features.next_rescore_ms`; ``every`` re-scores
    every known customer at every tick (the reference the timer is measured against).
    """
    cpu0 = time.process_time()
    cfg = Config()
    rules = FoldRules(margin_rate=0.3, contact_costs=dict(cfg.contact_costs), lateness_ms=LATENESS_MS)
    events = list(events)
    index: dict[str, int] = {}
    states: list[CustomerState] = []
    purchases: list[list[int]] = []
    cancels: list[list[int]] = []
    pop = Population(0.2, 0.3)
    ranked_clv: dict[int, float] = {}
    ranked_profit: dict[int, float] = {}
    clv = _Clv()
    timers: list[tuple[int, int]] = []
    timer_of: dict[int, int] = {}
    rows_c: list[int] = []
    rows_t: list[int] = []
    rows_trig: list[bool] = []
    rows_x: list[np.ndarray] = []
    rows_tier: list[int] = []
    rows_pct: list[float] = []
    last_scored: dict[int, int] = {}
    start = events[0][1]["event_time"]
    end = events[-1][1]["event_time"]
    tick = -(-start // tick_ms) * tick_ms
    i, n_ev = 0, len(events)
    next_week = -(-tick // WEEK_MS) * WEEK_MS
    while i < n_ev:
        changed: set[int] = set()
        while i < n_ev and events[i][1]["event_time"] <= tick:
            kind, rec = events[i]
            i += 1
            cid = rec["customer_id"]
            c = index.get(cid)
            if c is None:
                c = index[cid] = len(states)
                states.append(CustomerState())
                purchases.append([])
                cancels.append([])
            if states[c].apply(kind, rec, -1, rules) != "applied":
                continue
            changed.add(c)
            t = rec["event_time"]
            if kind == "transactions" and rec["amount"] >= 0.005:
                purchases[c].append(t)
            elif kind == "contacts" and rec.get("reason") == "cancellation_request":
                cancels[c].append(t)
        due: set[int] = set()
        if rescore == "every":
            due = set(range(len(states)))
        else:
            while timers and timers[0][0] <= tick:
                at, c = heapq.heappop(timers)
                if timer_of.get(c) == at:
                    del timer_of[c]
                    due.add(c)
        scored = sorted(changed | due)
        _score_tick(tick, scored, states, clv, pop, ranked_clv, ranked_profit, rules, rows_x, rows_tier, rows_pct)
        for c in scored:
            rows_c.append(c)
            rows_t.append(tick)
            rows_trig.append(c in changed)
            last_scored[c] = tick
            clv.offer(c, states[c])
            if rescore == "timer":
                at = features.next_rescore_ms(states[c], tick)
                at = -(-at // tick_ms) * tick_ms
                timer_of[c] = at
                heapq.heappush(timers, (at, c))
        if tick >= next_week:
            next_week += WEEK_MS
            if clv.refit():  # a new version: the population's CLVs re-scored under it
                _rebuild(states, clv, pop, ranked_clv, ranked_profit, rules, last_scored)
        tick += tick_ms
    x = np.vstack(rows_x) if rows_x else np.zeros((0, len(COLUMNS)), np.float32)
    return Replay(
        customers=list(index),
        cust=np.array(rows_c, np.int32),
        time=np.array(rows_t, np.int64),
        triggered=np.array(rows_trig, bool),
        x=x,
        tier=np.array(rows_tier, np.int8),
        value_pct=np.array(rows_pct, np.float32),
        purchases=[np.array(p, np.int64) for p in purchases],
        cancellations=[np.array(c, np.int64) for c in cancels],
        start_ms=start,
        end_ms=end,
        cpu_s=time.process_time() - cpu0,
        tick_ms=tick_ms,
    )


def _score_tick(
    tick: int,
    scored: list[int],
    states: list[CustomerState],
    clv: _Clv,
    pop: Population,
    ranked_clv: dict[int, float],
    ranked_profit: dict[int, float],
    rules: FoldRules,
    rows_x: list[np.ndarray],
    rows_tier: list[int],
    rows_pct: list[float],
) -> None:
    if not scored:
        return
    feats = [features.compute(states[c], tick) for c in scored]
    x = np.full((len(scored), len(COLUMNS)), np.nan, np.float32)
    buyers = [k for k, c in enumerate(scored) if states[c].n_occasions]
    if clv.model is not None and buyers:
        b = np.array([_clv_inputs(states[scored[k]], tick, rules.margin_rate) for k in buyers])
        res = clv.model.score_many(b[:, 0], b[:, 1], b[:, 2], b[:, 3], b[:, 4])
        for j, k in enumerate(buyers):
            feats[k]["p_alive"] = float(res.p_alive[j])
            feats[k]["clv"] = float(res.clv[j])
    for k, c in enumerate(scored):
        f = feats[k]
        profit = f["profitability"]
        pop.update("profitability", ranked_profit.get(c), profit)
        ranked_profit[c] = profit
        if "clv" in f:
            pop.update("clv", ranked_clv.get(c), f["clv"])
            ranked_clv[c] = f["clv"]
    pop.freeze()
    tiers = []
    for k, _ in enumerate(scored):
        f = feats[k]
        metric, value = ("clv", f["clv"]) if "clv" in f else ("profitability", f["profitability"])
        pct = pop.percentile(metric, value)
        tiers.append({"A": 0, "B": 1, "C": 2}[pop.tier(pct)])
        rows_pct.append(pct)
        row = x[k]
        for j, name in enumerate(COLUMNS):
            v = f.get(name)
            if v is not None:
                row[j] = v
    rows_x.append(x)
    rows_tier.extend(tiers)


def _rebuild(
    states: list[CustomerState],
    clv: _Clv,
    pop: Population,
    ranked_clv: dict[int, float],
    ranked_profit: dict[int, float],
    rules: FoldRules,
    last: dict[int, int],
) -> None:
    """A new CLV version: every customer's CLV as of its last scoring, re-ranked (the worker's rebuild)."""
    assert clv.model is not None
    buyers = [c for c in last if states[c].n_occasions]
    if not buyers:
        return
    b = np.array([_clv_inputs(states[c], last[c], rules.margin_rate) for c in buyers])
    values = clv.model.score_many(b[:, 0], b[:, 1], b[:, 2], b[:, 3], b[:, 4]).clv
    ranked_clv.clear()
    ranked_clv.update({c: float(v) for c, v in zip(buyers, values, strict=True)})
    pop.rebuild([{"profitability": ranked_profit.get(c), "clv": ranked_clv.get(c)} for c in last])


def cached(history: Path, cache_dir: Path, tick_ms: int = DAY_MS, rescore: str = "timer") -> Replay:
    """The replay of ``history``, computed once and kept in ``cache_dir`` (outside the repository)."""
    path = cache_dir / f"{history.stem}.{tick_ms // 3_600_000}h.{rescore}.npz"
    if path.exists() and path.stat().st_mtime > history.stat().st_mtime:
        try:
            return Replay.load(path)
        except (ValueError, KeyError, OSError, zipfile.BadZipFile):  # an older layout, or unreadable: computed again
            pass
    r = replay(read_events(history), tick_ms, rescore)
    r.save(path)
    return r


def ms_days(ms: float) -> float:
    return ms / DAY_MS if math.isfinite(ms) else ms
