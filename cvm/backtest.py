"""``cvm backtest FILE [--truth T] [--json]``: replay a history through a private stack with alerts on, and judge the
alerts and the churn scores against what happened.

The stack is the real one, on its own: an embedded broker on a free port, ``cvm sink`` (its own embedded ClickHouse
in a private data directory, no webhook), ``cvm learner`` and one ``cvm worker``, started as ``cvm up`` starts them
(:class:`cvm.up.Child`). The history is published first (``cvm replay``'s checks and publisher), then the worker folds
it. Once the stream has settled — the workers committed every input record and every customer is scored as of the
end of the history (the idle scoring) — the processes stop in order (the sink writes everything the topics hold),
and the alerts and the score history are read back from ClickHouse.

The figures are issue 13's (:mod:`scoring.outcomes`, docs/churn.md): over the evaluation window (the last 250 days
without the final 90), the tier-A base rate, per alert rule its precision, lift, the share of high-value leavers it
caught 30 days or more ahead and their median lead; the ROC AUC of ``churn_probability``, ``churn_probability_60d``
and the baselines (hiatus: silence in units of the customer's own gap; fixed days since the last purchase; BG/NBD
1 − P(alive)) against "leaves within 30 (90) days" at the checkpoints; the calibration (ECE) of
``churn_probability`` against leaving within 30 days, and the learner's progressive ECE on matured labels. Leaving
is the truth's churn time with ``--truth`` (the file of ``cvm simulate --truth``), else the leaving cvm observed
(``cvm.leavers``, docs/alerts.md "Outcomes"): the figures the dashboard's alert-outcome panel shows.

``--keep DIR`` keeps the private stack's data (its ClickHouse, the processes' logs) in DIR: ``CVM_DATA_DIR=DIR cvm
sink`` then serves the backtest's dashboard. A backtest that fails keeps its directory and says where the logs are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from confluent_kafka import TopicPartition

from cvm.broker import Broker, free_port
from cvm.config import EVENT_TOPICS, Config
from cvm.epoch import records_after
from cvm.exceptions import CvmError
from cvm.kafka import make_consumer
from cvm.publish import Progress
from cvm.replay import main as replay_main
from cvm.replay_file import HistoryFile, Parsed
from cvm.signals import StopSignals
from cvm.up import Child, restart_dead, wait_http, wait_learner
from scoring import outcomes
from scoring.metrics import read_truth
from sinks.clickhouse import ClickHouse, connect
from sinks.outcomes import OutcomeSettings

__all__ = ["TARGETS", "evaluate", "main", "report"]

DAY_MS = outcomes.DAY_MS
WEEK_MS = 7 * DAY_MS
#: Seconds without any progress of the stream (records folded, customers scored) after which the backtest gives up.
STALL_S = 300.0

#: The churn scores and the model-free baselines judged by AUC: name → SQL over ``customer_scores``.
SCORES = {
    "churn_probability": "ifNull(churn_probability, nan)",
    "churn_probability_60d": "ifNull(churn_probability_60d, nan)",
    "hiatus (silence / own gap)": "silence_gaps",
    "fixed days (recency)": "recency_days",
    "BG/NBD 1 - P(alive)": "1 - ifNull(p_alive, nan)",
}
MODELS = ("churn_probability", "churn_probability_60d")

#: Issue 13's done-when targets: (figure, at least).
TARGETS = {
    "high_value_at_risk lift": 3.0,
    "high_value_at_risk caught >= 30 d ahead": 0.60,
    "high_value_at_risk median lead (days)": 30.0,
    "churn_probability AUC 30 d": 0.85,
    "AUC 30 d above the best baseline": 0.03,
    "AUC 90 d above the best baseline": 0.03,
}


# --- the private stack -----------------------------------------------------------------------------------------------


class PrivateStack:
    """Broker, sink, learner and one worker of their own, on a private data directory and free ports."""

    def __init__(self, cfg: Config, data: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.cfg = cfg.replace(
            data_dir=str(data),
            kafka_bootstrap="",  # always embedded: a backtest never touches the deployment's Kafka or ClickHouse
            clickhouse_url="",
            broker_port=free_port(),
            http_host="127.0.0.1",
            http_port=free_port(),
            http_token="",
            topic_prefix=f"backtest-{tag}-",
            app_id=f"cvm-backtest-{tag}",
            alert_webhook_url="",
            worker_metrics_port=0,
            learner_metrics_port=0,
        )
        self.logs = data / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, **self.cfg.to_env(), PYTHONUNBUFFERED="1")
        self.broker: Broker | None = None
        self.children: list[Child] = []
        self.url = f"http://127.0.0.1:{self.cfg.http_port}"

    def start(self) -> None:
        """Broker, sink (its HTTP API up), learner (here, on the models topic)."""
        self.broker = Broker(self.cfg.broker_port, log_path=self.logs / "broker.log").start()
        sink = Child("sink", ["sink", "--port", str(self.cfg.http_port)])
        self.children.append(sink)
        sink.start(self.env, self.logs)
        if not wait_http(self.cfg.http_port, sink, timeout=120):
            raise CvmError(f"the backtest's sink did not start: {sink.tail()} (log {sink.log})")
        learner = Child("learner", ["learner"])
        self.children.append(learner)
        learner.start(self.env, self.logs)
        if not wait_learner(self.cfg, learner, timeout=120):
            raise CvmError(f"the backtest's learner did not start: {learner.tail()} (log {learner.log})")

    def start_worker(self) -> None:
        worker = Child("worker", ["worker", "--id", "backtest"])
        self.children.append(worker)
        worker.start(self.env, self.logs)

    def stop(self) -> None:
        """Worker, learner, then the sink (it writes what the topics hold), then the broker."""
        for child in reversed(self.children):
            child.stop(timeout=60 if child.name == "sink" else 30)
        if self.broker is not None:
            self.broker.stop()

    def sql(self, query: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/sql", params={"query": query, "format": "json"}, timeout=60)
        if answer.status_code != 200:
            raise CvmError(f"the backtest's sink refused a query: {answer.text[:300]}")
        return list(answer.json())

    def folded(self) -> tuple[bool, int]:
        """Whether the worker committed every input record; the offsets committed, summed (progress)."""
        tps = [TopicPartition(self.cfg.topic(k), p) for k in EVENT_TOPICS for p in range(self.cfg.partitions)]
        consumer = make_consumer(self.cfg, group=self.cfg.app_id)
        try:
            committed = consumer.committed(tps, timeout=15)
        finally:
            consumer.close()
        left = records_after(self.cfg, committed)
        return not left, sum(max(tp.offset, 0) for tp in committed)

    def settle(self, end_ms: int, events: int, stop: threading.Event) -> None:
        """Wait until every input record is folded and every customer scored as of the end of the history."""
        fresh_from = end_ms - int(self.cfg.tick_s * 1000)
        db = self.cfg.clickhouse_database
        query = (
            f"SELECT count() AS n, countIf(toUnixTimestamp64Milli(as_of) >= {fresh_from}) AS fresh "
            f"FROM {db}.customers FINAL"
        )
        last, moved = None, time.monotonic()
        progress = Progress("cvm backtest: folding")
        while not stop.wait(2.0):
            if restart_dead(self.children, self.env, self.logs):
                raise CvmError(f"a process of the backtest's stack died: see the logs in {self.logs}")
            done, offsets = self.folded()
            row = self.sql(query)[0]
            n, fresh = int(row["n"]), int(row["fresh"])
            progress.update(offsets, min(1.0, offsets / events), f"{fresh:,} of {n:,} customers scored as of the end")
            now = (offsets, n, fresh)
            if now != last:
                last, moved = now, time.monotonic()
            elif done and n and n == fresh:
                progress.close()
                return
            if time.monotonic() - moved > STALL_S:
                raise CvmError(f"the backtest's stack made no progress for {STALL_S:g}s: see the logs in {self.logs}")
        raise CvmError("interrupted")


# --- reading back and judging ----------------------------------------------------------------------------------------


def _columns(ch: ClickHouse, sql: str) -> list[np.ndarray]:
    result = ch.query(sql.replace("{db}", ch.database))
    return [np.asarray(col) for col in result.result_columns] if result.result_rows else []


def evaluate(
    ch: ClickHouse, end_ms: int, settings: OutcomeSettings, truth: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Issue 13's figures from what the stack wrote to ClickHouse (``truth``: customer id → its churn time in ms or
    None, from ``--truth``; without it, the leaving cvm observed)."""
    score_sql = ", ".join(SCORES.values())
    cols = _columns(
        ch,
        f"SELECT customer_id, toUnixTimestamp64Milli(as_of), value_tier, {score_sql} FROM {{db}}.customer_scores",
    )
    if not cols:
        raise CvmError("the backtest's stack wrote no scores: see its logs")
    ids, times, tiers = cols[0], cols[1].astype(np.int64), cols[2].astype(str)
    if truth is not None:
        universe = sorted(truth)
        churn_of = {k: (math.inf if v is None else float(v)) for k, v in truth.items()}
        basis = "truth (cvm simulate --truth)"
    else:
        universe = sorted(set(ids.tolist()))
        gone = ch.rows(
            f"SELECT customer_id, left_at_ms FROM {ch.database}.leavers("
            f"silence_days = {settings.silence_days}, grace_days = {settings.grace_days}) WHERE left"
        )
        churn_of = {c: math.inf for c in universe} | {str(c): float(t) for c, t in gone}
        basis = (
            f"observed (no sign of life for {settings.silence_days:g} days, or a cancellation request without a "
            f"purchase within {settings.grace_days:g})"
        )
    cust, universe = outcomes.codes(ids, universe)
    known = cust >= 0
    if not known.any():
        raise CvmError("the truth file names none of the history's customers: is it the truth of another history?")
    unknown = len(set(ids[~known].tolist()))
    if unknown:
        print(f"cvm backtest: {unknown:,} customers scored are not in the truth file: left out", file=sys.stderr)
    churn = np.array([churn_of.get(c, math.inf) for c in universe], dtype=np.float64)
    cust, times, tiers = cust[known], times[known], tiers[known]
    scores = {name: cols[3 + i].astype(np.float64)[known] for i, name in enumerate(SCORES)}
    window = outcomes.Window.of_history(end_ms, settings.window_days, settings.outcome_days)
    table = outcomes.checkpoint_table(cust, times, tiers, churn, window)
    base = outcomes.base_rate(table, settings.horizon_days)
    weeks = (window.end_ms - window.start_ms) / WEEK_MS

    rules: dict[str, dict[str, Any]] = {}
    alert_cols = _columns(ch, "SELECT customer_id, rule, toUnixTimestamp64Milli(alert_time) FROM {db}.alerts FINAL")
    if alert_cols:
        a_cust, _ = outcomes.codes(alert_cols[0], universe)
        a_rule, a_time = alert_cols[1].astype(str), alert_cols[2].astype(np.int64)
        for rule in sorted(set(a_rule.tolist())):
            mask = (a_rule == rule) & (a_cust >= 0)
            rules[rule] = _alert_figures(a_cust[mask], a_time[mask], cust, times, tiers, churn, window, base, weeks)
    eligible = tiers == "A"
    h_cust, h_time = outcomes.threshold_alerts(cust, times, scores["hiatus (silence / own gap)"], eligible, 2.0)
    rules["baseline: tier A silent 2 own gaps"] = _alert_figures(
        h_cust, h_time, cust, times, tiers, churn, window, base, weeks
    )

    auc = {
        name: {"30d": outcomes.truth_auc(table, s, 30), "90d": outcomes.truth_auc(table, s, 90)}
        for name, s in scores.items()
    }
    q30 = scores["churn_probability"][table.row]
    ok = np.isfinite(q30)
    ece_labels = ch.rows(
        f"SELECT argMax(value, time) FROM {ch.database}.model_metrics WHERE metric = 'ece' HAVING count() > 0"
    )
    leavers = churn[np.isfinite(churn)]
    return {
        "basis": basis,
        "customers": len(universe),
        "customers_left_out": unknown,
        "scorings": int(len(times)),
        "leavers_in_window": int(((leavers >= window.start_ms) & (leavers <= window.end_ms)).sum()),
        "window": {"start_ms": window.start_ms, "end_ms": window.end_ms, "checkpoints": int(len(set(table.time)))},
        "base_rate": base,
        "rules": rules,
        "auc": auc,
        "ece": {
            "churn_probability vs leaving within 30 d": outcomes.ece(q30[ok], table.leaves_within(30)[ok]),
            "learner, matured labels": float(ece_labels[0][0]) if ece_labels else math.nan,
        },
    }


def _alert_figures(
    a_cust: np.ndarray,
    a_time: np.ndarray,
    cust: np.ndarray,
    times: np.ndarray,
    tiers: np.ndarray,
    churn: np.ndarray,
    window: outcomes.Window,
    base: float,
    weeks: float,
) -> dict[str, Any]:
    fig: dict[str, Any] = outcomes.alert_precision(a_cust, a_time, churn, window, base=base)
    fig.update(outcomes.caught_ahead(a_cust, a_time, cust, times, tiers, churn, window))
    fig["alerts_per_week"] = fig["alerts"] / weeks if weeks > 0 else math.nan
    return fig


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an :func:`evaluate`."""
    keys = ("alerts", "precision", "lift", "caught", "median_lead_days")
    return {
        "basis": figures["basis"],
        "base_rate": figures["base_rate"],
        "leavers_in_window": figures["leavers_in_window"],
        "rules": {rule: {k: r[k] for k in keys} for rule, r in figures["rules"].items()},
        "auc": figures["auc"]["churn_probability"],
    }


def targets(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each done-when target of issue 13: the figure, the target and whether it is met."""
    rule = figures["rules"].get("high_value_at_risk", {})
    auc = figures["auc"]
    baselines = [v for k, v in auc.items() if k not in MODELS]

    def margin(horizon: str) -> float:
        best = max((b[horizon] for b in baselines if b[horizon] == b[horizon]), default=math.nan)
        return float(auc["churn_probability"][horizon] - best)

    values = {
        "high_value_at_risk lift": rule.get("lift", math.nan),
        "high_value_at_risk caught >= 30 d ahead": rule.get("caught", math.nan),
        "high_value_at_risk median lead (days)": rule.get("median_lead_days", math.nan),
        "churn_probability AUC 30 d": auc["churn_probability"]["30d"],
        "AUC 30 d above the best baseline": margin("30d"),
        "AUC 90 d above the best baseline": margin("90d"),
    }
    return {k: {"value": v, "target": TARGETS[k], "met": bool(v == v and v >= TARGETS[k])} for k, v in values.items()}


# --- the report ------------------------------------------------------------------------------------------------------


def _f(value: Any, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if kind == "%":
        return f"{100 * value:.1f}%"
    if kind == "d":
        return f"{value:.0f}"
    if kind == "x":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return f"{value:,}"


def report(figures: dict[str, Any]) -> str:
    """The figures as text tables."""
    w = figures["window"]
    day = lambda ms: time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))  # noqa: E731
    lines = [
        f"cvm backtest of {figures['file']}: {figures['events']:,} events, {figures['customers']:,} customers, "
        f"{figures['scorings']:,} event and tick scorings, {figures['seconds']:.0f}s",
        f"judged against: {figures['basis']}",
        f"window {day(w['start_ms'])} to {day(w['end_ms'])} ({w['checkpoints']} monthly checkpoints), "
        f"{figures['leavers_in_window']:,} leavers in it; tier-A base rate (leaving within 90 days): "
        f"{_f(figures['base_rate'], '%')}",
        "",
        f"{'rule':<38}{'alerts':>8}{'a week':>8}{'precision':>11}{'lift':>7}{'HV leavers':>12}{'caught>=30d':>13}"
        f"{'median lead':>13}",
    ]
    for rule, r in figures["rules"].items():
        lines.append(
            f"{rule:<38}{_f(r['alerts']):>8}{r['alerts_per_week']:>8.1f}{_f(r['precision'], '%'):>11}"
            f"{_f(r['lift'], 'x'):>7}{_f(r['leavers']):>12}{_f(r['caught'], '%'):>13}"
            f"{_f(r['median_lead_days'], 'd'):>13}"
        )
    lines += ["", f"{'ROC AUC against leaving within':<38}{'30 d':>8}{'90 d':>8}"]
    for name, v in figures["auc"].items():
        lines.append(f"{name:<38}{_f(v['30d']):>8}{_f(v['90d']):>8}")
    lines += ["", *(f"ECE, {k}: {_f(v)}" for k, v in figures["ece"].items())]
    seen = figures.get("observed")
    if seen:
        lines += [
            "",
            f"observed by cvm itself (the dashboard's basis): {seen['leavers_in_window']:,} leavers in the window, "
            f"base rate {_f(seen['base_rate'], '%')}, churn_probability AUC {_f(seen['auc']['30d'])} (30 d), "
            f"{_f(seen['auc']['90d'])} (90 d)",
        ]
        for rule, r in seen["rules"].items():
            lines.append(
                f"  {rule:<36}{_f(r['alerts']):>8}{'':>8}{_f(r['precision'], '%'):>11}{_f(r['lift'], 'x'):>7}{'':>12}"
                f"{_f(r['caught'], '%'):>13}{_f(r['median_lead_days'], 'd'):>13}"
            )
    lines += ["", "issue 13's targets:"]
    for name, t in figures["targets"].items():
        lines.append(f"  {'met ' if t['met'] else 'MISS'}  {name}: {_f(t['value'])} (target {t['target']:g})")
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------------------------------


def _history(path: str, cfg: Config) -> tuple[int, int]:
    """Events in the file and the latest event time (the end of the history)."""
    events, end = 0, 0
    for row in HistoryFile(path, default_currency=cfg.base_currency):
        if isinstance(row, Parsed):
            events += 1
            end = max(end, int(row.record["event_time"]))
    if not events:
        raise CvmError(f"{path} holds no event")
    return events, end


def _truth(path: str) -> dict[str, int | None]:
    """customer id → its true churn time (ms) or None, from a ``cvm simulate --truth`` file."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip()]
        for line in lines:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "customer_id" not in rec or "churned" not in rec:
                raise ValueError(f"a line without customer_id and churned: {line.strip()[:80]}")
        if not lines:
            raise ValueError("it is empty")
        return {k: v.churn_ms for k, v in read_truth(lines).items()}
    except (OSError, ValueError) as exc:
        raise CvmError(f"--truth {path}: not a `cvm simulate --truth` file ({exc})") from None


def main(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``cvm backtest``; 0 once the figures are printed."""
    started = time.monotonic()
    path = Path(args.file)
    if not path.is_file():
        raise CvmError(f"{path}: no such file")
    truth = _truth(args.truth) if args.truth else None
    events, end_ms = _history(str(path), cfg)
    keep = Path(args.keep).absolute() if args.keep else None
    data = keep or Path(tempfile.mkdtemp(prefix="cvm-backtest-"))
    if keep is not None and (keep / "clickhouse").exists():
        raise CvmError(f"--keep {keep}: it already holds a ClickHouse; give an empty or new directory")
    stack = PrivateStack(cfg, data)
    ok = False
    try:
        with StopSignals() as signals:
            stack.start()
            replay = argparse.Namespace(
                file=str(path), format=None, type=None, map=[], time_format=None, rate=None, max_bad=0
            )
            if replay_main(stack.cfg, replay) != 0:
                raise CvmError(f"publishing {path} failed")
            stack.start_worker()
            stack.settle(end_ms, events, signals.event)
        stack.stop()
        ch = connect(stack.cfg)
        settings = OutcomeSettings.from_config(stack.cfg)
        try:
            figures = evaluate(ch, end_ms, settings, truth)
            if truth is not None:  # beside the truth, what cvm observed by itself (the dashboard's figures)
                figures["observed"] = _summary(evaluate(ch, end_ms, settings, None))
        finally:
            ch.close()
        ok = True
    finally:
        stack.stop()
        if not ok:
            print(f"cvm backtest: the private stack's data and logs are kept in {data}", file=sys.stderr)
        elif keep is None:
            shutil.rmtree(data, ignore_errors=True)
    figures.update(file=path.name, events=events, seconds=time.monotonic() - started)
    figures["targets"] = targets(figures)
    if args.json:
        print(_dumps(figures))
    else:
        print(report(figures))
    return 0


def _dumps(value: Any) -> str:
    """JSON with NaN and infinities as null."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    return json.dumps(clean(value), indent=1)
