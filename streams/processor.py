"""The worker's hot path, without Faust: a batch of raw records in, state updates and outputs out.

A batch is grouped by customer so each customer's state is read, updated and written once per batch, and scores
are emitted once per customer per batch — the table, its changelog and the scores topic see one write per
customer, not one per event.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cvm.codec import Codec
from cvm.config import Config
from cvm.events import validate
from cvm.exceptions import DecodeError, InvalidEvent
from scoring.state import CustomerState

__all__ = ["BatchOutput", "BatchProcessor", "RawRecord"]

_RAW_LIMIT = 4096  # bytes of a poison record kept in its dead letter


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the worker receives it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    origin: Any = None  # the framework's event, so table writes land in the record's partition


@dataclass
class BatchOutput:
    """What a batch produced: new states, score messages, dead letters and late events (all JSON-ready)."""

    states: dict[str, bytes] = field(default_factory=dict)
    scores: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)
    late: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"applied": 0, "redelivered": 0, "duplicate": 0, "late": 0, "dead": 0}
    )


class BatchProcessor:
    """Decode, validate and fold a batch of records into customer states."""

    def __init__(self, cfg: Config, codec: Codec, topic_kinds: dict[str, str]) -> None:
        self.cfg = cfg
        self.codec = codec
        self.topic_kinds = topic_kinds  # full topic name → event kind
        self.margin_rate = cfg.default_margin_rate
        self.contact_costs = dict(cfg.contact_costs)
        self.lateness_ms = int(cfg.allowed_lateness_s * 1000)

    def decode(
        self, records: Iterable[RawRecord], out: BatchOutput
    ) -> dict[str, list[tuple[RawRecord, str, dict[str, Any]]]]:
        """Decode and validate ``records``, grouped by customer; invalid ones become dead letters in ``out``."""
        by_customer: dict[str, list[tuple[RawRecord, str, dict[str, Any]]]] = {}
        now_ms = int(time.time() * 1000)
        for rec in records:
            try:
                kind, record = self.codec.decode(rec.value)
                expected = self.topic_kinds.get(rec.topic)
                if expected is not None and kind != expected:
                    raise DecodeError(f"a {kind} record on the {expected} topic")
                validate(kind, record, now_ms)
            except (DecodeError, InvalidEvent) as exc:
                out.dead_letters.append((rec.key, self._dead_letter(rec, exc, now_ms)))
                out.counts["dead"] += 1
                continue
            by_customer.setdefault(record["customer_id"], []).append((rec, kind, record))
        return by_customer

    def fold(
        self,
        customer_id: str,
        items: list[tuple[RawRecord, str, dict[str, Any]]],
        stored: bytes | None,
        out: BatchOutput,
    ) -> bytes:
        """Fold one customer's decoded events into its stored state; return the new state bytes.

        Within one customer, the records of a topic-partition arrive in offset order already.
        """
        state = CustomerState.from_bytes(stored) if stored else CustomerState()
        before = state.version
        now_ms = int(time.time() * 1000)
        counts = out.counts
        for rec, kind, record in items:
            outcome = state.apply(kind, record, rec.offset, self.margin_rate, self.contact_costs, self.lateness_ms)
            counts[outcome] += 1
            if outcome == "late":
                out.late.append((customer_id, self._late(rec, record, state, now_ms)))
        if state.version != before:
            scores = state.scores(customer_id)
            scores["updated_at"] = now_ms
            out.scores.append((customer_id, scores))
        data = state.to_bytes()
        out.states[customer_id] = data
        return data

    def reject(self, items: list[tuple[RawRecord, str, dict[str, Any]]], exc: Exception, out: BatchOutput) -> None:
        """Send records that could not be scored to the dead letters, with the error."""
        now_ms = int(time.time() * 1000)
        for rec, _, _ in items:
            out.dead_letters.append((rec.key, self._dead_letter(rec, exc, now_ms)))
            out.counts["dead"] += 1

    def process(self, records: Iterable[RawRecord], load: Callable[[str], bytes | None]) -> BatchOutput:
        """Decode and fold a whole batch; ``load(customer_id)`` returns stored state bytes or ``None``."""
        out = BatchOutput()
        for customer_id, items in self.decode(records, out).items():
            self.fold(customer_id, items, load(customer_id), out)
        return out

    @staticmethod
    def _dead_letter(rec: RawRecord, exc: Exception, now_ms: int) -> dict[str, Any]:
        return {
            "time": now_ms,
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "key": (rec.key or b"").decode("utf-8", "replace"),
            "raw_b64": base64.b64encode((rec.value or b"")[:_RAW_LIMIT]).decode(),
            "error_class": type(exc).__name__,
            "error": str(exc),
        }

    @staticmethod
    def _late(rec: RawRecord, record: dict[str, Any], state: CustomerState, now_ms: int) -> dict[str, Any]:
        return {
            "time": now_ms,
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "customer_id": record["customer_id"],
            "event_id": record["event_id"],
            "event_time": record["event_time"],
            "stream_time": state.last_time,
            "lateness_ms": state.last_time - record["event_time"],
        }


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact JSON bytes of an output message."""
    return json.dumps(obj, separators=(",", ":")).encode()
