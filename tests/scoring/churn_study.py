"""The churn study of docs/churn.md: label × features × model variants, judged against the simulator's truth.

``python -m tests.scoring.churn_study [--seeds 1,2,3] [--variants v0,v10] [--data DIR]`` simulates (once, cached in
``DIR``: ``$CVM_STUDY_DATA`` or ``~/.cache/cvm-churn-study``) 3,000 customers × 400 days per seed with
``cvm simulate --out --truth``, replays each history through the worker's scoring loop
(:mod:`tests.scoring.study_replay`), runs what the stream does with the scorings for each variant
(:mod:`tests.scoring.study_learn`: labels, learner, model versions), raises the alerts with
:class:`scoring.alerts.AlertRules`, and computes the issue's figures with :mod:`scoring.outcomes`: AUC against the
truth at 30 and 90 days beside the baselines, base rate, precision and lift of the alerts, high-value leavers caught
30 days ahead, median lead, ECE, µs per score. ``--sweep θ,...`` gives the alert audience of one variant per θ.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvm.config import Config
from cvm.simulate import main as simulate_main
from scoring import outcomes
from scoring.alert_state import AlertState
from scoring.alerts import AlertRules
from scoring.churn import FEATURES, LEGACY_FEATURES, MODEL_FEATURES, ChurnModel, LabelRule
from scoring.metrics import read_truth
from scoring.state import DAY_MS
from tests.scoring.study_learn import Variant, learn
from tests.scoring.study_replay import COLUMN_INDEX, COLUMNS, WEEK_MS, Replay, cached

#: Where histories and replays are cached (outside the repository): ``--data``, or ``$CVM_STUDY_DATA``.
DATA = Path(os.environ.get("CVM_STUDY_DATA") or Path.home() / ".cache" / "cvm-churn-study")
TIERS = np.array(["A", "B", "C"])


@dataclass
class Seed:
    """One simulated history: its replay and the truth's churn time per customer (inf: stays)."""

    name: str
    rep: Replay
    churn: np.ndarray
    window: outcomes.Window
    table: outcomes.CheckpointTable


def load_seed(
    seed: int, data: Path = DATA, customers: int = 3000, days: int = 400, tick_hours: int = 24, rescore: str = "timer"
) -> Seed:
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
    rep = cached(events, data, tick_hours * 3_600_000, rescore)
    truth = read_truth(str(truth_path))
    churn = np.array(
        [truth[c].churn_ms if truth[c].churn_ms is not None else np.inf for c in rep.customers], dtype=np.float64
    )
    window = outcomes.Window.of_history(rep.end_ms)
    table = outcomes.checkpoint_table(rep.cust, rep.time, TIERS[rep.tier], churn, window)
    return Seed(name, rep, churn, window, table)


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
            extra[rules.churn_score] = float(p[i])
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


def us_per_score(models: Sequence[ChurnModel], rows: np.ndarray, repeat: int = 3) -> float:
    """CPU µs per customer of what the worker calls per tick: the first head's probability and 3 reason codes
    (``predict_many_with_reasons``), the other heads' probabilities (``predict_many``); batches of 1,000, best of 3."""
    batch = rows[:1000].tolist()
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        models[0].predict_many_with_reasons(batch, 3)
        for m in models[1:]:
            m.predict_many(batch)
        best = min(best, (time.process_time() - t0) / len(batch) * 1e6)
    return best


def alerts_at_volume(
    s: Seed, p: np.ndarray, per_week: float, rules: AlertRules, steps: int = 7
) -> tuple[float, dict[str, float]]:
    """The at-risk rule's figures at the threshold that raises about ``per_week`` alerts a week in the window (found by
    bisection), so that variants compare at the same audience."""
    lo, hi = 0.0, 1.0
    best: tuple[float, dict[str, float]] = (math.nan, {})
    for _ in range(steps):
        mid = (lo + hi) / 2
        fig = rule_figures(s, run_alerts(s, p, _with(rules, churn_threshold=mid)), "high_value_at_risk")
        best = (mid, fig)
        if fig["alerts_per_week"] > per_week:
            lo = mid
        else:
            hi = mid
    return best


def _with(rules: AlertRules, **changes: Any) -> AlertRules:
    params = {f: getattr(rules, f) for f in rules.__dataclass_fields__}
    params.update(changes)
    params["churn_hysteresis"] = min(params["churn_hysteresis"], params["churn_threshold"])
    return AlertRules(**params)


def evaluate(s: Seed, v: Variant, rules: AlertRules, per_week: float) -> dict[str, float]:
    """Every figure of the docs/churn.md table for one variant on one seed."""
    learned = learn(s.rep, v)
    fig = auc_figures(s, learned.p)
    tail = len(learned.label_p) // 5  # the first fifth of the pairs: the model is still learning its scale
    fig["ece_labels"] = outcomes.ece(learned.label_p[tail:], learned.labels[tail:])
    q30 = learned.p[s.table.row]
    ok = np.isfinite(q30)
    fig["ece_truth30"] = outcomes.ece(q30[ok], s.table.leaves_within(30)[ok])
    fig["pairs"] = float(learned.pairs)
    fig["positives"] = learned.positives / max(1, learned.pairs)
    fig["pending"] = learned.pending_end
    fig["learn_cpu_s"] = learned.cpu_s
    risk = learned.p if learned.p_early is None else learned.p_early
    if v.early is None:
        rules = _with(rules, churn_score="churn_probability", churn_days=v.rule.offset_ms / DAY_MS or 30.0)
    fig["theta"], at = alerts_at_volume(s, risk, per_week, rules)
    fig.update({k: at[k] for k in ("alerts_per_week", "precision", "lift", "caught", "median_lead_days", "base")})
    models = [learned.models[-1]] if learned.early_models is None else [learned.models[-1], learned.early_models[-1]]
    fig["us_per_score"] = us_per_score(models, s.rep.x[:, : len(FEATURES)].astype(np.float64))
    return fig


def fmt(values: dict[str, Any], keys: Sequence[str]) -> str:
    out = []
    for k in keys:
        v = values.get(k)
        out.append(
            f"{v:.3g}" if isinstance(v, float) and abs(v) >= 10 else f"{v:.3f}" if isinstance(v, float) else str(v)
        )
    return " | ".join(out)


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


TABLE = ("auc30", "auc90", "lift", "caught", "median_lead_days", "ece_labels", "ece_truth30", "us_per_score")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.scoring.churn_study", description=__doc__)
    parser.add_argument("--seeds", default="1,2,3,4,5,6", help="simulator seeds (3,000 customers x 400 days each)")
    parser.add_argument("--variants", default="", help="comma-separated variant keys (default: all); --list shows them")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--data", type=Path, default=DATA, help="cache of histories and replays (outside the repo)")
    parser.add_argument("--customers", type=int, default=3000, help="customers per simulated history")
    parser.add_argument("--days", type=int, default=400, help="days per simulated history")
    parser.add_argument("--per-week", type=float, default=25.0, help="alert volume the variants are compared at")
    parser.add_argument("--tick-hours", type=int, default=24, help="the stream's tick (the worker's default is 1)")
    parser.add_argument(
        "--rescore",
        choices=("timer", "every"),
        default="timer",
        help="silent customers re-scored on next_rescore_ms, or every customer at every tick",
    )
    parser.add_argument("--sweep", default="", help="thresholds θ: the at-risk rule's figures per θ, per seed")
    args = parser.parse_args(argv)
    if args.list:
        for key, make in VARIANTS.items():
            print(f"{key:10s} {make().name}")
        return 0
    keys = [k for k in args.variants.split(",") if k] or list(VARIANTS)
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}: see --list")
    cpu0 = time.process_time()
    seeds = [
        load_seed(int(x), args.data, args.customers, args.days, tick_hours=args.tick_hours, rescore=args.rescore)
        for x in args.seeds.split(",")
    ]
    if args.sweep:
        return sweep(seeds, VARIANTS[keys[0]](), [float(x) for x in args.sweep.split(",")])
    print(f"replays: {sum(s.rep.cpu_s for s in seeds):.0f} s CPU when computed; "
          f"{sum(len(s.rep.time) for s in seeds):,} scorings", file=sys.stderr)  # fmt: skip
    print("| baseline | AUC 30 d | AUC 90 d |\n|---|---|---|")
    rows: dict[str, list[dict[str, float]]] = {}
    for s in seeds:
        for name, score in baselines(s).items():
            rows.setdefault(name, []).append(auc_figures(s, score))
    for name, per_seed in rows.items():
        print(f"| {name} | {fmt(mean_of(per_seed), ['auc30', 'auc90'])} |")
    base = [outcomes.base_rate(s.table) for s in seeds]
    print(f"\nbase rate (tier A, 90 d): {np.mean(base):.3f} ({', '.join(f'{b:.3f}' for b in base)})")
    rules = AlertRules(rules=("high_value_at_risk",))
    print(f"\nat {args.per_week:g} alerts a week:\n| variant | {' | '.join(TABLE)} |\n|---|{'---|' * len(TABLE)}")
    for key in keys:
        v = VARIANTS[key]()
        per_seed = []
        for s in seeds:
            fig = evaluate(s, v, rules, args.per_week)
            per_seed.append(fig)
            print(f"  {key} {s.name}: {fmt(fig, list(fig))}", file=sys.stderr, flush=True)
        print(f"| {key}: {v.name} | {fmt(mean_of(per_seed), TABLE)} |", flush=True)
    print(f"\nCPU: {time.process_time() - cpu0:.0f} s", file=sys.stderr)
    return 0


def sweep(seeds: list[Seed], v: Variant, thresholds: list[float]) -> int:
    """The alert rules at each θ for one variant: the audience knob (docs/alerts.md)."""
    keys = ("alerts_per_week", "precision", "lift", "caught", "median_lead_days", "critical_share")
    rows: dict[str, list[dict[str, float]]] = {}
    for s in seeds:
        learned = learn(s.rep, v)
        risk = learned.p if learned.p_early is None else learned.p_early
        for theta in thresholds:
            rules = AlertRules(churn_threshold=theta)
            if v.early is None:
                rules = _with(rules, churn_score="churn_probability", churn_days=v.rule.offset_ms / DAY_MS or 30.0)
            alerts = run_alerts(s, risk, rules)
            for rule in ("high_value_at_risk", None):
                fig = rule_figures(s, alerts, rule)
                rows.setdefault(f"θ {theta:g} {rule or 'all rules'}", []).append(fig)
                print(f"  {s.name} θ {theta:g} {rule or 'all rules'}: {fmt(fig, keys)}", file=sys.stderr, flush=True)
    print(f"| θ, rules | {' | '.join(keys)} | min lift | min caught | min lead |\n|---|{'---|' * (len(keys) + 3)}")
    for name, per_seed in rows.items():
        mins = [min(f[k] for f in per_seed) for k in ("lift", "caught", "median_lead_days")]
        print(f"| {name} | {fmt(mean_of(per_seed), keys)} | {' | '.join(f'{m:.2f}' for m in mins)} |")
    return 0


VARIANTS: dict[str, Callable[[], Variant]] = {}


def variant(key: str) -> Callable[[Callable[[], Variant]], Callable[[], Variant]]:
    def register(fn: Callable[[], Variant]) -> Callable[[], Variant]:
        VARIANTS[key] = fn
        return fn

    return register


OLD21 = LEGACY_FEATURES
LEAVING = MODEL_FEATURES
BOTH = tuple(dict.fromkeys([*LEGACY_FEATURES, *MODEL_FEATURES]))
SILENCE90 = LabelRule.from_days(90, 30)
GONE30 = LabelRule.from_days(45, 30, 30, hold=True)
GONE60 = LabelRule.from_days(45, 30, 60, hold=True)


@variant("v0")
def _v0() -> Variant:
    return Variant("silence 90 d / size+level 21 / logreg / every scoring (before)", SILENCE90, OLD21, snapshots="all")


@variant("v1")
def _v1() -> Variant:
    return Variant("silence 90 d / size+level 21 / logreg / scorings with events", SILENCE90, OLD21)


@variant("v2")
def _v2() -> Variant:
    return Variant("silence 90 d / leaving 16 / logreg", SILENCE90, LEAVING)


@variant("v3")
def _v3() -> Variant:
    return Variant("gone in 30 d, 45 d silence / leaving 16 / logreg", LabelRule.from_days(45, 30, 30), LEAVING)


@variant("v4")
def _v4() -> Variant:
    return Variant("gone in 30 d, held / leaving 16 / logreg", GONE30, LEAVING)


@variant("v5")
def _v5() -> Variant:
    return Variant("gone in 30 d, held / leaving 16 / noise-aware logreg", GONE30, LEAVING, noise=True)


@variant("v6")
def _v6() -> Variant:
    rule = LabelRule.from_days(120, 30, 30, hold=True)
    return Variant("gone in 30 d, 120 d silence, held / leaving 16 / noise-aware logreg", rule, LEAVING, noise=True)


@variant("v7")
def _v7() -> Variant:
    return Variant("gone in 30 d, held / size+level 21 + leaving 16 / noise-aware logreg", GONE30, BOTH, noise=True)


@variant("v8")
def _v8() -> Variant:
    return Variant(
        "gone in 30 d, held / leaving 16 / noise-aware logreg, lr 0.05", GONE30, LEAVING, noise=True, lr=0.05
    )


@variant("v9")
def _v9() -> Variant:
    return Variant(
        "v8 + early head: gone in 60 d (alerts), 3 pending", GONE30, LEAVING, noise=True, lr=0.05, early=GONE60,
        max_pending=3,
    )  # fmt: skip


@variant("v10")
def _v10() -> Variant:
    return Variant(
        "v8 + early head: gone in 60 d (alerts), 4 pending (recommended)", GONE30, LEAVING, noise=True, lr=0.05,
        early=GONE60, max_pending=4,
    )  # fmt: skip


@variant("v11")
def _v11() -> Variant:
    return Variant(
        "v10 with a Hoeffding adaptive tree", GONE30, LEAVING, kind="hat", noise=True, early=GONE60, max_pending=4
    )


if __name__ == "__main__":
    raise SystemExit(main())
