"""Step 3 of a batch: customers are scored as of a stream time — features, CLV, population, churn, alerts.

Three occasions score a customer, and every score message says which (``scored_by``) and the stream time it holds
at (``as_of``):

* ``tick`` — at a stream-time tick ``T`` (:mod:`streams.clock`): the customers whose events were in the tick's
  phase and those whose timer is due (silence growing, a churn label's deadline, or their slot to be re-scored under
  a new model version: every customer within ``CVM_MODEL_RESCORE_SPREAD_S``). Only tick scorings mature churn
  labels, offer churn snapshots and run the alert rules, all as of ``T`` and with the models valid at ``T``: these
  are the scorings a replay reproduces exactly.
* ``event`` — at the end of a batch, the customers whose events were folded in a phase whose tick has not come
  yet, as of their own latest event (the last tick if that is later), with the models of the last tick, ranked
  against the population as the last tick left it: fresh figures between ticks. A customer's last event scoring
  before its next tick depends only on its state and that tick, not on the batches.
* ``idle`` — while the stream is idle, every customer last scored before the last tick, as of that tick
  (:mod:`streams.catch_up`): the figures a dashboard shows after a backfill or in a quiet hour. No alerts, labels
  or snapshots, and nothing recorded in the state or the population: the ticks after it see what they would have
  seen without it.

A score's ``version`` orders a customer's scores (``customers`` keeps the highest): by events applied, then stream
time, then occasion (event < tick < idle).

Value tiers, RFM scores and percentiles rank a customer in the population of the worker's customers
(:class:`scoring.population.Population`). The population holds each customer's values as of its last tick or
event scoring; a tick moves them first, for every customer scored together, then ranks them all against the same
population and freezes that view; the scorings until the next tick rank against the view of the last one.
While a new CLV version reaches the customers (one slot each, within ``CVM_MODEL_RESCORE_SPREAD_S``), the CLV
ranking holds both versions' values: each customer's leaves it for the new one when it is re-scored.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvm import metrics
from cvm.config import Config
from scoring import features
from scoring.alert_state import AlertState
from scoring.alerts import AlertRules
from scoring.churn import FEATURES, ChurnModel
from scoring.churn_inputs import prepare_many
from scoring.clv import ClvModel, summary
from scoring.labels import LabelRule, PendingLabels, label_rules
from scoring.population import METRICS, Population
from scoring.reasons import reasons
from scoring.state import DAY_MS, CustomerState, FoldRules
from streams.fold import emit_labels
from streams.records import Outputs

__all__ = ["HEADS", "SCORED_BY", "Assessor", "Candidate", "InForce", "heads_of", "ranked", "score_version"]

log = logging.getLogger("cvm.worker")

#: The occasions of a scoring, in the order they rank within the same events and stream time.
SCORED_BY = ("event", "tick", "idle")


@dataclass(slots=True)
class Candidate:
    """A customer to score: its state and what the population holds for it now."""

    customer_id: str
    partition: int
    state: CustomerState
    previous: dict[str, float | None]
    scores: dict[str, Any] | None = None
    _pending: PendingLabels | None = None  # the state's churn snapshots, parsed once per batch (again after a fold)

    @property
    def pending(self) -> PendingLabels:
        if self._pending is None:
            data = self.state.churn_bytes
            self._pending = PendingLabels.from_bytes(data) if data else PendingLabels()
        return self._pending

    def forget_pending(self) -> None:
        """The state's churn section changed under it (a fold): parse it again when asked."""
        self._pending = None


#: The score key of each churn head's probability, in head order (scoring.labels: one label rule per head).
HEADS = ("churn_probability", "churn_probability_60d")


@dataclass(frozen=True, slots=True)
class InForce:
    """The models a scoring uses, and their versions (0: none yet): CLV, and the churn model of each head (one
    version for all heads: the learner publishes them together)."""

    clv: ClvModel | None = None
    clv_version: int = 0
    churn: tuple[ChurnModel, ...] = ()
    churn_version: int = 0


def score_version(events: int, as_of_ms: int, scored_by: str) -> int:
    """The version of a score: events applied, then stream time (seconds since 1970), then the occasion.

    >>> score_version(3, 1_000, "tick") > score_version(3, 1_000, "event")
    True
    >>> score_version(4, 0, "event") > score_version(3, 2**31 * 1000, "idle")
    True
    """
    return (events << 34) | ((as_of_ms // 1000) << 2) | SCORED_BY.index(scored_by)


#: What a customer with no event applied contributes: nothing (the population has never counted it).
_UNRANKED: dict[str, float | None] = dict.fromkeys(METRICS)


def ranked(s: CustomerState) -> dict[str, float | None]:
    """What a customer contributes to the population percentiles (``None``: not ranked on that metric); a customer
    with no event applied is in no bucket, so that its first scoring only adds it."""
    if not s.version:
        return dict(_UNRANKED)
    bought = s.n_occasions > 0
    clv = s.ranked_clv
    return {
        "profitability": (s.margin_cents - s.cost_cents) / 100,
        "frequency": s.n_occasions if bought else None,
        "monetary": s.purchase_cents / s.n_occasions / 100 if bought else None,
        "last_purchase_day": s.last_purchase_time // DAY_MS if bought else None,
        "clv": None if clv != clv else clv,
    }


class Assessor:
    """Scores customers as of a stream time; see the module docstring."""

    def __init__(self, cfg: Config, population: Population) -> None:
        self.cfg = cfg
        self.population = population
        self.rules = FoldRules(
            margin_rate=cfg.default_margin_rate,
            contact_costs=dict(cfg.contact_costs),
            lateness_ms=int(cfg.allowed_lateness_s * 1000),
            period_days=cfg.clv_period_days,
        )
        self.alert_rules = AlertRules.from_config(cfg)
        self.label_rules: tuple[LabelRule, ...] = heads_of(cfg)
        self.snapshot_every_ms = int(cfg.churn_snapshot_every_days * DAY_MS)
        self.max_pending = cfg.churn_max_pending
        self.tick_ms = int(cfg.tick_s * 1000)
        self.models_cpu = 0.0  # CPU seconds of this thread in the CLV and churn models (cvm bench's stages)
        self.features_cpu = 0.0  # ... and in the features (with the labels a tick matures)

    # --- the scoring -----------------------------------------------------------------------------------------------

    def assess(
        self,
        cands: list[Candidate],
        scored_by: str,
        models: InForce,
        out: Outputs,
        at: int | None = None,
    ) -> None:
        """Score ``cands`` and send their score messages to ``out``.

        ``at`` is the stream time of a ``tick`` or ``idle`` scoring; an ``event`` scoring is as of each customer's
        latest event, its previous scoring or ``at`` (the last tick), whichever is latest. A tick or event scoring
        records itself in the states and the population; an idle scoring changes neither (module docstring).
        """
        if not cands:
            return
        tick = scored_by == "tick"
        keep = scored_by != "idle"

        def features_of(c: Candidate) -> None:
            s = c.state
            as_of = max(s.last_time, s.as_of, at or 0) if at is None or scored_by == "event" else at
            if tick:
                self._mature(c, as_of, out)
            c.scores = self._features(c.customer_id, s, as_of, scored_by)

        cpu = time.thread_time()
        cands = self._each(cands, "features", features_of)
        self.features_cpu += time.thread_time() - cpu
        cpu = time.thread_time()
        if models.clv is not None:
            try:
                self._score_clv(models, cands, keep)
            except Exception:  # a model failure must not stop scoring: the batch goes out without CLV outputs
                log.exception("CLV scoring failed for %d customers", len(cands))
                metrics.scoring_failures.labels(step="clv").inc(len(cands))
        self.models_cpu += time.thread_time() - cpu
        if keep:
            self._move(cands, freeze=tick)
        cands = self._each(cands, "rank", self._rank)
        rows = [_churn_row(c.scores) for c in cands]  # type: ignore[arg-type]
        cpu = time.thread_time()
        self._score_churn(models, cands, rows)
        self.models_cpu += time.thread_time() - cpu
        for c, row in zip(cands, rows, strict=True):
            scores, s = c.scores, c.state
            assert scores is not None
            try:
                scores["churn_reasons"] = reasons(scores, scores["as_of"])
            except Exception:
                self._failed(c, "reasons")
                continue
            if tick:
                self._alerts(c, scores, at or 0, out)
                if s.version != s.tick_version:  # events since its last tick: a snapshot (docs/churn.md)
                    try:
                        self._offer(c, row, at or 0)
                    except Exception:
                        self._failed(c, "snapshot")
                s.tick_version = s.version
            if keep:
                s.as_of = scores["as_of"]
            out.scores.append((c.customer_id, scores))
            c.scores = None  # the message is out's now: the batch's candidates do not keep one each until its end

    def _each(self, cands: list[Candidate], step: str, fn: Callable[[Candidate], object]) -> list[Candidate]:
        """``fn`` on each customer; those it raises for are logged, counted and left out of the rest of the scoring
        (one customer's failure must cost that customer only, never stop the worker)."""
        kept = []
        for c in cands:
            try:
                fn(c)
            except Exception:
                self._failed(c, step)
                continue
            kept.append(c)
        return kept

    @staticmethod
    def _failed(c: Candidate, step: str) -> None:
        log.exception("scoring customer %s failed at %s; it keeps its last scores", c.customer_id, step)
        metrics.scoring_failures.labels(step=step).inc()

    def due(self, c: Candidate) -> int | None:
        """When this customer must be scored again without an event: a label deadline passed (plus the allowed
        lateness, after which no purchase can settle it any more), or the next step of its silence (``None``: at its
        next event, also when this fails for the customer, logged and counted)."""
        try:
            return self._due(c)
        except Exception:
            self._failed(c, "timer")
            return None

    def _due(self, c: Candidate) -> int | None:
        s = c.state
        deadline = None
        if s.churn_bytes:
            d = c.pending.next_deadline(self.label_rules)
            if d is not None:
                deadline = d + self.rules.lateness_ms + 1
        if not s.last_time:
            return deadline
        silence = features.next_rescore_ms(s, max(s.as_of, s.last_time), self.rules.period_days)
        return silence if deadline is None else min(deadline, silence)

    # --- the steps -------------------------------------------------------------------------------------------------

    def _mature(self, c: Candidate, at: int, out: Outputs) -> None:
        """Labels whose deadline passed by tick ``at`` (less the allowed lateness: no purchase can settle them)."""
        s = c.state
        if not s.churn_bytes:
            return
        pending = c.pending
        matured = pending.advance(at - self.rules.lateness_ms, self.label_rules)
        if matured:
            emit_labels(c.customer_id, matured, at, out)
            s.churn_bytes = pending.to_bytes()

    def _features(self, customer_id: str, s: CustomerState, as_of: int, scored_by: str) -> dict[str, Any]:
        out = features.compute(s, as_of, self.rules.period_days)
        out["customer_id"] = customer_id
        out["scored_by"] = scored_by
        out["version"] = score_version(s.version, as_of, scored_by)
        out["n_events"] = s.version
        out["updated_at"] = int(time.time() * 1000)  # when it was written (operations only; never a feature)
        out.update(self.clv_statistics(s, as_of))
        return out

    def clv_statistics(self, s: CustomerState, as_of: int) -> dict[str, Any]:
        """The customer's CLV model inputs as of ``as_of``: repeat occasions, recency and age in weeks, mean repeat
        spend."""
        if not s.n_occasions:
            return {}
        period_days = self.rules.period_days
        as_of_period = max(as_of // (period_days * DAY_MS), s.last_occasion)
        x, t_x, age, m = summary(
            s.first_occasion,
            s.last_occasion,
            s.n_occasions,
            (s.purchase_cents - s.first_occasion_cents) / 100,
            as_of_period,
            period_days,
        )
        return {"clv_x": x, "clv_t_x": t_x, "clv_T": age, "clv_mean_repeat_value": round(m, 6)}

    def _score_clv(self, models: InForce, cands: list[Candidate], keep: bool = True) -> None:
        """P(alive), expected purchases and spend, CLV for the customers with a purchase, vectorised (``keep``: the
        state keeps the CLV it is ranked on)."""
        rows = [c for c in cands if c.state.n_occasions]
        if not rows or models.clv is None:
            return
        default = self.rules.margin_rate
        stats = np.array(
            [
                (
                    sc["clv_x"],
                    sc["clv_t_x"],
                    sc["clv_T"],
                    sc["clv_mean_repeat_value"],
                    c.state.margin_cents / c.state.revenue_cents if c.state.revenue_cents > 0 else default,
                )
                for c in rows
                for sc in (c.scores or {},)
            ]
        )
        result = models.clv.score_many(
            stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3], np.clip(stats[:, 4], 0.0, 1.0)
        )
        version = models.clv_version
        # the columns as lists of floats: what float(result.clv[i]) gives, without a numpy scalar per value
        columns = (result.p_alive, result.expected_purchases, result.expected_spend, result.clv)
        for c, p_alive, purchases, spend, value in zip(rows, *(column.tolist() for column in columns), strict=True):
            assert c.scores is not None
            c.scores.update(
                p_alive=p_alive,
                expected_purchases=purchases,
                expected_spend=spend,
                clv=value,
                clv_params_version=version,
            )
            if keep:
                c.state.ranked_clv = value

    def _move(self, cands: list[Candidate], freeze: bool) -> None:
        """Move each customer in the population from what it held to its new values; at a tick, freeze the view
        (between ticks, scorings rank against the view of the last tick)."""
        pop = self.population
        for c in cands:
            new = ranked(c.state)
            if c.scores is not None and "clv" not in c.scores:
                new["clv"] = None  # no CLV under the current model (none yet, or it failed): not ranked
                c.state.ranked_clv = math.nan
            pop.move(c.previous, new)
            c.previous = new
        if freeze:
            pop.freeze()

    def _rank(self, c: Candidate) -> None:
        """Where the customer stands in the population: percentile, tier, RFM."""
        scores, state, pop = c.scores, c.state, self.population
        assert scores is not None
        percentile = pop.percentile
        profit = percentile("profitability", scores["profitability"])
        scores["profit_percentile"] = round(profit, 6)
        if "clv" in scores:
            clv = scores["clv_percentile"] = round(percentile("clv", scores["clv"]), 6)
            scores["value_tier"] = pop.tier(clv if self.cfg.tier_by == "clv" else profit)
        else:
            scores["value_tier"] = pop.tier(profit)
        if state.n_occasions:
            quintile = pop.quintile
            r = quintile(percentile("last_purchase_day", state.last_purchase_time // DAY_MS))
            fq = quintile(percentile("frequency", scores["frequency"]))
            m = quintile(percentile("monetary", scores["monetary"]))
        else:
            r = fq = m = 0
        scores["rfm_r"] = r
        scores["rfm_f"] = fq
        scores["rfm_m"] = m
        scores["rfm_score"] = 100 * r + 10 * fq + m
        scores["rfm_segment"] = features.rfm_segment(r, fq, m)

    def _score_churn(self, models: InForce, cands: list[Candidate], rows: list[list[float | None]]) -> None:
        """Each head's churn probability, in one vectorised pass per head (one customer at a time if that fails);
        the heads share the rows' preparation (:func:`~scoring.churn_inputs.prepare_many`)."""
        prepared = None
        if len(models.churn) > 1:
            try:
                prepared = prepare_many(rows)
            except Exception:  # the heads' own passes fail too, and fall back to one customer at a time
                prepared = None
        for key, model in zip(HEADS, models.churn, strict=False):
            results: list[float | None]
            try:
                results = list(model.predict_many(rows, prepared))
                if len(results) != len(rows):  # a bug in a head: its results cannot be matched to the customers
                    raise ValueError(f"{len(results)} churn probabilities for {len(rows)} customers")
            except Exception:  # one customer's failure must cost that customer only
                log.warning("vectorised churn scoring failed; scoring one customer at a time", exc_info=True)
                results = []
                for c, row in zip(cands, rows, strict=True):
                    try:
                        results.append(model.predict_many([row])[0])
                    except Exception:
                        self._failed(c, "churn")
                        results.append(None)
            version = models.churn_version
            for c, p in zip(cands, results, strict=True):
                if p is not None and c.scores is not None:
                    c.scores[key] = p
                    c.scores["churn_model_version"] = version

    def _alerts(self, c: Candidate, scores: dict[str, Any], at: int, out: Outputs) -> None:
        if not self.alert_rules.rules:
            return
        try:
            alert_state = AlertState.from_bytes(c.state.alert_bytes)
            for alert in self.alert_rules.evaluate(c.customer_id, scores, alert_state, None, at):
                out.alerts.append((c.customer_id, alert))
            c.state.alert_bytes = alert_state.to_bytes()
        except Exception:
            self._failed(c, "alerts")

    def _offer(self, c: Candidate, row: list[float | None], at: int) -> None:
        """Keep a churn snapshot of the features scored at tick ``at`` (one per period, a few pending at most)."""
        s = c.state
        pending = c.pending
        if not pending.wants(at, self.snapshot_every_ms, self.max_pending):
            return
        known = {
            name: v for name, v in zip(FEATURES, row, strict=True) if v is not None
        }  # missing: NaN, unpacked as such
        if pending.offer(at, known, self.snapshot_every_ms, self.max_pending):
            s.churn_bytes = pending.to_bytes()


def heads_of(cfg: Config) -> tuple[LabelRule, ...]:
    """The label rules of the churn heads (docs/churn.md): gone within ``CVM_CHURN_OFFSET_DAYS``, and within
    ``CVM_CHURN_EARLY_OFFSET_DAYS`` (the alerts' head) unless that is 0."""
    offsets = [cfg.churn_offset_days] + ([cfg.churn_early_offset_days] if cfg.churn_early_offset_days else [])
    return label_rules(cfg.churn_silence_days, cfg.churn_cancel_grace_days, offsets)


_FEATURES_OF = operator.itemgetter(*FEATURES)


def _churn_row(scores: dict[str, Any]) -> list[float | None]:
    """A churn snapshot's features from a customer's scores, in :data:`FEATURES` order (None: not known)."""
    try:
        values = _FEATURES_OF(scores)  # one call for all of them: the features always hold every one
    except KeyError:
        values = map(scores.get, FEATURES)
    return [v if type(v) is float or v is None else float(v) for v in values]
