"""What a record of each of cvm's topics becomes in ClickHouse: rows of which tables, with which values.

:class:`Routes` holds one route per topic the sink consumes; :class:`sinks.writer.Writer` calls it for each record
and batches the rows it returns. A route raises one of :data:`REFUSALS` for a record it cannot turn into rows; the
writer skips and counts it.

Raw events are decoded with the Avro codec; records that fail to decode or validate are refused (the writer skips
them) — the worker sends them to ``dead-letters``, which the sink stores. Score, alert, dead-letter and late-event
messages are JSON. Alerts go to ``alerts`` (a ReplacingMergeTree on the episode, so a re-emitted alert collapses);
:meth:`Routes.fresh_alerts` tells which of them ClickHouse does not hold yet, for the writer's alert listener.
Score messages are checked against their contract (``schemas/customer_score.avsc``, :mod:`schemas.scores`): a
missing field with a default takes it (NULL for what is not known yet), a message missing a required field is
refused, and a key the contract does not know is counted (``score_contract`` in
:meth:`Writer.stats <sinks.writer.Writer.stats>`), logged once and not written. Their keys are then mapped onto the
columns ``customers`` and ``customer_scores`` have (read from ``system.columns`` at start); a test keeps the contract
and the columns equal, so a new feature needs a schema field, a migration and the worker emitting the key, and no
change here.

Raw transactions keep the ``amount`` and ``currency`` upstream sent; ``amount_base`` and ``gross_margin_base`` are
the amounts in the base currency at the event's date (:mod:`scoring.currency`, as the workers convert them), NULL
when there is no rate (the worker dead-letters such a transaction).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError

from cvm.codec import Codec, make_registry
from cvm.config import EVENT_TOPICS, Config
from cvm.epoch import Epoch
from cvm.events import validate
from cvm.exceptions import BrokenContract, DecodeError, InvalidEvent, ModelRejected, NoExchangeRate
from cvm.kafka import ModelKey, decode_model
from schemas.scores import ScoreContract
from scoring.currency import Rates
from sinks.clickhouse import SCORE_TABLES, ClickHouse, condense_error
from sinks.columns import Table

__all__ = ["MAX_RAW_CHARS", "REFUSALS", "Route", "Routes", "Row"]

log = logging.getLogger("cvm.sink")

#: Longest base64 text kept of a dead letter's record (the worker bounds it too; this is the sink's guard).
MAX_RAW_CHARS = 65_536

Row = dict[str, Any]
#: ``(topic, partition, offset, value, key)`` → ``(table, row)`` pairs.
Route = Callable[[str, int, int, bytes, bytes | None], list[tuple[str, Row]]]

#: What a route raises for a record it cannot turn into rows: the writer skips the record.
REFUSALS: tuple[type[Exception], ...] = (
    DecodeError,
    InvalidEvent,
    ModelRejected,
    BrokenContract,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)


class Routes:
    """The route of each topic (:attr:`by_topic`) and the tables its rows go to (:attr:`tables`, read at start).

    :attr:`epoch` is the broker's, written into raw, dead-letter and late-event rows; the writer sets it.
    """

    def __init__(self, cfg: Config, ch: ClickHouse, epoch: Epoch) -> None:
        self.ch = ch
        self.epoch = epoch
        self.codec = Codec(make_registry(cfg.schema_registry_url, cfg.schema_registry_wait_s))
        self.model_key = ModelKey.from_config(cfg)
        self.contract = ScoreContract.load()
        self.rates = Rates.from_config(cfg)
        self.floor_ms = cfg.min_event_time_ms
        names = (*EVENT_TOPICS, *SCORE_TABLES, "alerts", "dead_letters", "late_events", "clv_params", "model_metrics")
        self.tables = {name: Table.load(ch, name) for name in names}
        #: The full names of the topics the sink consumes, each with its route.
        self.by_topic: dict[str, Route] = {cfg.topic(kind): self._raw for kind in EVENT_TOPICS}
        self.by_topic[cfg.topic("customer-scores")] = self._scores
        self.by_topic[cfg.topic("dead-letters")] = self._dead_letter
        self.by_topic[cfg.topic("late-events")] = self._late_event
        self.by_topic[cfg.topic("alerts")] = self._alert
        self.by_topic[cfg.topic("model-metrics")] = self._model_metrics
        self._kind = {cfg.topic(kind): kind for kind in EVENT_TOPICS}
        # The score tables share their columns (migrations write both from one statement): convert once for both.
        first = self.tables[SCORE_TABLES[0]]
        self._scores_alike = all(self.tables[name].types == first.types for name in SCORE_TABLES)

    def _raw(self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None) -> list[tuple[str, Row]]:
        kind, record = self.codec.decode(value)
        expected = self._kind[topic]
        if kind != expected:
            raise DecodeError(f"a {kind} record on the {expected} topic")
        validate(kind, record, floor_ms=self.floor_ms)
        record.update(
            topic=topic,
            partition=partition,
            offset=offset,
            epoch=self.epoch.number,
            ingested_at=int(time.time() * 1000),
        )
        if kind == "transactions":
            try:
                base = self.rates.convert(kind, record)
                record.update(amount_base=base["amount"], gross_margin_base=base["gross_margin"])
            except NoExchangeRate:
                record.update(amount_base=None, gross_margin_base=None)
        return [(kind, self.tables[kind].convert(record))]

    def _scores(
        self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None
    ) -> list[tuple[str, Row]]:
        obj = _json_object(value)
        if not obj.get("customer_id"):
            if not key:
                raise ValueError("score message without customer_id")
            obj["customer_id"] = key.decode()
        obj = self.contract.check(obj)
        # An idle scoring (the stream idle: everyone as of the last tick, once per tick) refreshes the customer's
        # current row only: in the history it would add a row per customer per hour of a quiet stream.
        names = ("customers",) if obj.get("scored_by") == "idle" else SCORE_TABLES
        if self._scores_alike:
            row = self.tables[SCORE_TABLES[0]].convert(obj)  # read-only from here on: both batches may hold it
            return [(name, row) for name in names]
        return [(name, self.tables[name].convert(obj)) for name in names]

    def _dead_letter(
        self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None
    ) -> list[tuple[str, Row]]:
        obj = _json_object(value)
        raw = obj.get("raw_b64") or obj.get("raw") or ""
        record = {
            "time": obj.get("time") or int(time.time() * 1000),
            "topic": obj.get("topic", ""),
            "partition": obj.get("partition", -1),
            "offset": obj.get("offset", -1),
            "epoch": self.epoch.number,
            "key": obj.get("key") or "",
            "raw": str(raw)[:MAX_RAW_CHARS],
            "error_class": obj.get("error_class", ""),
            "error": obj.get("error", ""),
        }
        return [("dead_letters", self.tables["dead_letters"].convert(record))]

    def _late_event(
        self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None
    ) -> list[tuple[str, Row]]:
        obj = _json_object(value)
        obj.setdefault("time", int(time.time() * 1000))
        obj["epoch"] = self.epoch.number
        return [("late_events", self.tables["late_events"].convert(obj))]

    def _model_metrics(
        self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None
    ) -> list[tuple[str, Row]]:
        """A CLV fit becomes a row of ``clv_params``; churn metrics one row per metric of ``model_metrics``."""
        try:
            meta, _ = decode_model(value, key=self.model_key)
        except ModelRejected as exc:  # counted by decode_model; skipped by Writer.add()
            log.warning("%s[%d]@%d: %s", topic, partition, offset, exc)
            raise
        if meta.get("kind") == "clv":
            bg, gg = meta.get("bgnbd") or {}, meta.get("gamma_gamma") or {}
            record = {**meta, **bg, **{k: v for k, v in gg.items() if k in ("p", "q", "gamma")}}
            record.update(gg_customers=gg.get("customers", 0), gg_log_likelihood=gg.get("log_likelihood", 0.0))
            record["log_likelihood"] = bg.get("log_likelihood", 0.0)
            return [("clv_params", self.tables["clv_params"].convert(record))]
        if meta.get("kind") == "metrics":
            table = self.tables["model_metrics"]
            base = {"time": meta["time"], "model_version": meta.get("model_version", 0)}
            return [
                ("model_metrics", table.convert({**base, "metric": name, "value": v}))
                for name, v in sorted((meta.get("metrics") or {}).items())
            ]
        raise ValueError(f"unknown model-metrics message kind {meta.get('kind')!r}")

    def _alert(self, topic: str, partition: int, offset: int, value: bytes, key: bytes | None) -> list[tuple[str, Row]]:
        obj = _json_object(value)
        if not obj.get("customer_id") and key:
            obj["customer_id"] = key.decode()
        for name in ("customer_id", "rule", "episode", "alert_time"):
            if not obj.get(name):
                raise ValueError(f"alert message without {name}")
        return [("alerts", self.tables["alerts"].convert(obj))]

    def fresh_alerts(self, records: list[Row]) -> list[Row]:
        """The alerts whose episode ClickHouse does not hold yet, once each (a replay's repeats are not new)."""
        try:
            known = {
                e
                for (e,) in self.ch.rows(
                    f"SELECT episode FROM {self.ch.database}.alerts "
                    "WHERE customer_id IN {c:Array(String)} AND episode IN {e:Array(String)}",
                    {"c": sorted({r["customer_id"] for r in records}), "e": sorted({r["episode"] for r in records})},
                )
            }
        except ClickHouseError as exc:  # the insert will meet the same trouble; if it passes, better twice than never
            log.warning("could not look up known alert episodes: %s", condense_error(exc))
            known = set()
        fresh = []
        for record in records:
            if record["episode"] not in known:
                known.add(record["episode"])
                fresh.append(record)
        return fresh


def _json_object(value: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        obj = json.loads(value)  # what orjson refuses but json reads: NaN, Infinity (earlier workers wrote them)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj
