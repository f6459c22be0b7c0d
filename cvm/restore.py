"""Restore: a broker that lost cvm's topics gets the whole history back from ClickHouse before anything new.

ClickHouse is the durable record of the embedded default: the embedded broker keeps its topics in memory, so each
stop of ``cvm up`` loses the input, the workers' changelog (every customer's state) and the learner's topics
(models, CLV summaries, churn labels). The sink notices at start — the broker has no epoch (:mod:`cvm.epoch`) — and
when ClickHouse holds raw events it restores them before its own writer starts:

1. **publish**: every raw event goes back to its input topic, keyed by customer as upstream does, in the order it
   was first read (``cvm/sql/history.sql``: per partition the original order, partitions merged in event time).
   The workers and the learner — the same processes, the same code — fold them again into the same states, alerts,
   churn labels and model versions (a worker's results depend on the records of each partition and their order
   only: ``streams/clock.py``). Events that were late or duplicates then are late or duplicates again.
2. **fold**: wait until the workers' consumer group has committed every input partition up to the last record
   published there (the boundary).
3. **collect**: meanwhile a writer of the restore's own writes what the workers and the learner produce to a
   shadow database, ``{db}_restore``, whose derived tables (:data:`DERIVED`) start empty; it has drained the
   output topics once nothing arrives for :data:`QUIET_S` after the fold.
4. **swap**: each derived table changes place with its shadow (``EXCHANGE TABLES``, atomic per table); the old
   ones go with the shadow database. The sink's consumer group is committed at the boundaries and where the
   restore's writer stopped, so the sink's own writer starts at the first record the restore did not write: new
   input, or an output that came after the collection (written then, to the new tables — nothing twice, nothing
   lost). Raw tables, ``late_events`` and ``dead_letters`` are records of what was read: never rewritten.

No alert is sent to the webhook (the restore's writer has none; afterwards the sink sees their episodes as known),
and the derived tables are never half-restored: a restore interrupted anywhere leaves them as they were. Its
progress is on ``/api/status`` (``writer.restore``), its outcome in ``cvm.epochs``: ``publishing`` → ``published``
→ ``restored`` (``none``: nothing to restore). A sink restarted after the publishing resumes the collection from
the beginning of the output topics; one restarted during the publishing refuses to guess what the broker holds.

``cvm rebuild`` (:mod:`cvm.rebuild`) runs the same restore on fresh topics on purpose: derived tables computed
again from the raw tables with the current code.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from cvm.codec import Codec, load_schema, make_registry
from cvm.config import EVENT_TOPICS, Config
from cvm.epoch import Epoch, claim, read, records_after
from cvm.exceptions import DecodeError, RestoreError
from cvm.kafka import make_consumer, make_producer
from cvm.publish import produce_retrying
from sinks.clickhouse import ClickHouse, migrate
from sinks.writer import Writer, sink_group
from streams.table import CustomerTable

__all__ = ["DERIVED", "OUTPUT_TOPICS", "Boundaries", "History", "Registry", "Restorer", "progress_line"]

log = logging.getLogger("cvm.restore")

#: The tables a restore derives anew (the rest of cvm's tables record what was read).
DERIVED = ("customers", "customer_scores", "alerts", "model_metrics", "clv_params")
#: The topics whose records the restore's writer writes to the shadow database.
OUTPUT_TOPICS = ("customer-scores", "alerts", "late-events", "dead-letters", "model-metrics")
#: Seconds without a new output record, once the workers have folded everything, after which the outputs are in.
QUIET_S = 2.0

_SQL = Path(__file__).resolve().parent / "sql"


class Registry:
    """ClickHouse's record of the broker's epochs (table ``epochs``) and of the history the raw tables hold."""

    def __init__(self, ch: ClickHouse) -> None:
        self.ch = ch
        self.db = ch.database

    def find(self, epoch_id: str) -> dict[str, Any] | None:
        rows = self.ch.query(
            f"SELECT epoch, id, state, events, seconds, boundaries FROM {self.db}.epochs FINAL WHERE id = {{i:String}}",
            {"i": epoch_id},
        ).named_results()
        found = list(rows)
        return dict(found[0]) if found else None

    def any(self) -> bool:
        """Whether an epoch was ever recorded (False: the data comes from a cvm without epochs, or none)."""
        return bool(self.ch.rows(f"SELECT count() FROM {self.db}.epochs")[0][0])

    def next_number(self) -> int:
        """One above every epoch ClickHouse knows of, in ``epochs`` or in the raw tables."""
        parts = [f"SELECT max(epoch) AS e FROM {self.db}.{kind}" for kind in (*EVENT_TOPICS, "epochs")]
        return int(self.ch.rows(f"SELECT max(e) FROM ({' UNION ALL '.join(parts)})")[0][0] or 0) + 1

    def record(self, epoch: Epoch, state: str, events: int = 0, seconds: float = 0.0, boundaries: str = "") -> None:
        now = int(time.time() * 1000)
        row = [epoch.number, epoch.id, epoch.created_ms or now, state, events, seconds, boundaries, now]
        columns = ["epoch", "id", "created", "state", "events", "seconds", "boundaries", "updated"]
        self.ch.insert("epochs", columns, [row], token=f"epoch-{epoch.id}-{state}-{now}")

    def counts(self) -> dict[str, int]:
        """Events per kind in the raw tables (one per event)."""
        return {kind: int(self.ch.rows(f"SELECT count() FROM {self.db}.{kind} FINAL")[0][0]) for kind in EVENT_TOPICS}


class History:
    """The raw events, as ``(kind, record)`` in the order a restore publishes them (``cvm/sql/history.sql``)."""

    def __init__(self, ch: ClickHouse) -> None:
        self.ch = ch
        branch = _uncommented(_SQL / "history_branch.sql")
        branches = []
        for kind in EVENT_TOPICS:
            columns = {
                name
                for (name,) in ch.rows(
                    "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String}",
                    {"d": ch.database, "t": kind},
                )
            }
            names, fields = [], []
            for f in load_schema(kind)["fields"]:
                if f["name"] not in columns:
                    if "default" not in f:
                        raise RestoreError(f"{ch.database}.{kind} has no column {f['name']}: run the migrations")
                    continue  # the Avro default fills it
                names.append(f["name"])
                fields.append(f"toUnixTimestamp64Milli({f['name']}) AS {f['name']}" if _is_time(f) else f["name"])
            branches.append(branch.format(kind=kind, db=ch.database, names=", ".join(names), fields=", ".join(fields)))
        self.sql = _uncommented(_SQL / "history.sql").format(branches="\nUNION ALL\n".join(branches))

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        settings = {"output_format_json_quote_64bit_integers": 0, "output_format_json_quote_64bit_floats": 0}
        with self.ch.lock, self.ch.client.query_row_block_stream(self.sql, settings=settings) as blocks:
            for block in blocks:
                for kind, record in block:
                    yield kind, orjson.loads(record)


def _uncommented(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))


def _is_time(f: dict[str, Any]) -> bool:
    types = f["type"] if isinstance(f["type"], list) else [f["type"]]
    return any(isinstance(t, dict) and t.get("logicalType") == "timestamp-millis" for t in types)


@dataclass
class Boundaries:
    """Where the published history lies on each input partition (``topic:partition`` → offsets): from the first
    record published to the offset after the last one (the delivery reports': Tansu's high watermark is not the end
    of a partition).

    >>> b = Boundaries.decode(Boundaries({"t:0": 5}, {"t:0": 12}).encode())
    >>> b.events, b.ends
    (7, {'t:0': 12})
    """

    starts: dict[str, int]
    ends: dict[str, int]

    @property
    def events(self) -> int:
        return sum(end - self.starts.get(key, 0) for key, end in self.ends.items())

    def encode(self) -> str:
        return json.dumps({"starts": self.starts, "ends": self.ends})

    @classmethod
    def decode(cls, text: str) -> Boundaries:
        obj = json.loads(text)
        return cls({k: int(v) for k, v in obj["starts"].items()}, {k: int(v) for k, v in obj["ends"].items()})


@dataclass
class Progress:
    """Where a restore stands (``/api/status``, the progress bar of ``cvm up``)."""

    state: str = "starting"  # starting, publishing, folding, collecting, swapping, done, none, stopped, failed
    epoch: int = 0
    events: int = 0  # events in ClickHouse's history
    published: int = 0
    folded: int = 0  # records the workers committed below the boundaries
    collected: int = 0  # output records the restore's writer took
    unpublishable: int = 0  # raw rows that did not fit their schema any more (logged)
    seconds: float = 0.0
    error: str = ""


class Restorer:
    """Decides at the sink's start whether the broker needs its history back, and gives it back (module doc)."""

    def __init__(self, cfg: Config, ch: ClickHouse) -> None:
        self.cfg = cfg
        self.ch = ch
        self.registry = Registry(ch)
        self.progress = Progress()
        self._started = time.monotonic()

    def stats(self) -> dict[str, Any]:
        """The progress, for ``/api/status``."""
        p = self.progress
        out = dict(p.__dict__)
        if p.state not in ("done", "none", "stopped", "failed"):
            out["seconds"] = round(time.monotonic() - self._started, 1)
        return out

    # --- deciding --------------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> Epoch | None:
        """Restore if needed; the broker's epoch for the sink's writer, or ``None`` when ``stop`` came first."""
        try:
            epoch = read(self.cfg)
            row = None
            if epoch is None:
                epoch, row = self._begin()
            else:
                row = self.registry.find(epoch.id)
                if row is None:  # ClickHouse is new to this broker (or lost its data): nothing to restore from it
                    self.registry.record(epoch, "none")
                    row = {"state": "none"}
            self.progress.epoch = epoch.number
            state = row["state"]
            if state == "publishing" and not self._input_waiting(everything=True):
                state = "start"  # claimed, then stopped before the first record: nothing to guess
            if state == "publishing":
                raise RestoreError(
                    f"a restore of epoch {epoch.number} was interrupted while it published the history: the broker "
                    "holds part of it. "
                    + (
                        "Stop cvm up (or cvm broker) and start again: the embedded broker then starts empty"
                        if self.cfg.embedded_broker
                        else "Stop cvm's processes and run `cvm rebuild --reset-topics`"
                    )
                )
            if state in ("start", "published"):
                done = self._restore(epoch, None if state == "start" else Boundaries.decode(row["boundaries"]), stop)
                if not done:
                    self.progress.state = "stopped"
                    return None
            else:
                self.progress.state = "none" if state == "none" else "done"
            return epoch
        except Exception as exc:
            self.progress.state, self.progress.error = "failed", str(exc)
            raise

    def _begin(self) -> tuple[Epoch, dict[str, Any]]:
        """The broker has no epoch: claim one, and decide whether its topics need the history back."""
        counts = self.registry.counts()
        total = sum(counts.values())
        table = CustomerTable(self.cfg)
        states = records_after(self.cfg, [TopicPartition(table.topic, p, -1) for p in range(self.cfg.partitions)])
        candidate = Epoch(self.registry.next_number(), uuid.uuid4().hex, int(time.time() * 1000))
        if total == 0 or (states and not self.registry.any()):
            # Nothing to restore; or ClickHouse's data predates epochs and the broker kept its topics (an upgrade).
            state = "none"
        else:
            if states:
                raise RestoreError(self._too_late(f"worker states for {len(states)} partitions", total))
            waiting = self._input_waiting()
            if waiting:
                raise RestoreError(self._too_late(f"input on {len(waiting)} partitions", total))
            state = "publishing"
            log.warning("the broker has none of cvm's topics: restoring %s events from ClickHouse", f"{total:,}")
        self.registry.record(candidate, state)
        epoch = claim(self.cfg, candidate)
        if epoch.id != candidate.id:  # another sink claimed it first: go by what it recorded
            return epoch, self.registry.find(epoch.id) or {"state": "none"}
        return epoch, {"state": "start" if state == "publishing" else state}

    def _too_late(self, what: str, total: int) -> str:
        fix = (
            "stop cvm up (or cvm broker and everything else) and start again; publish only once it says ready"
            if self.cfg.embedded_broker
            else "stop cvm's processes and run `cvm rebuild --reset-topics` once the sink has written that input"
        )
        return (
            f"the broker lost cvm's topics (it has no epoch) and ClickHouse holds {total:,} events to restore, but "
            f"the broker already has {what} from after the loss: the history can no longer go first. To fix: {fix}"
        )

    def _input_waiting(self, everything: bool = False) -> list[TopicPartition]:
        """Input partitions with records the workers have not committed (``everything``: any record)."""
        tps = [TopicPartition(self.cfg.topic(k), p) for k in EVENT_TOPICS for p in range(self.cfg.partitions)]
        if not everything:
            consumer = make_consumer(self.cfg, group=self.cfg.app_id)
            try:
                tps = consumer.committed(tps, timeout=15)
            finally:
                consumer.close()
        return records_after(
            self.cfg, [TopicPartition(tp.topic, tp.partition, -1 if everything else tp.offset) for tp in tps]
        )

    # --- restoring -------------------------------------------------------------------------------------------------

    def _restore(self, epoch: Epoch, boundaries: Boundaries | None, stop: threading.Event) -> bool:
        started = time.monotonic()
        if boundaries is None:
            history = History(self.ch)
            self.progress.events = sum(self.registry.counts().values())
            self.progress.state = "publishing"
            found = self._publish(history, stop)
            if found is None:
                return False
            boundaries = found
            self.registry.record(epoch, "published", self.progress.published, boundaries=boundaries.encode())
        else:
            self.progress.events = self.progress.published = boundaries.events
        shadow = ClickHouse(self.ch.client, f"{self.ch.database}_restore", self.ch.dsn)
        self.ch.command(f"DROP DATABASE IF EXISTS {shadow.database} SYNC")  # a collection interrupted earlier
        migrate(shadow)
        collected = self._collect(shadow, epoch, boundaries, stop)
        if collected is None:
            return False
        self.progress.state = "swapping"
        for table in DERIVED:
            self.ch.command(f"EXCHANGE TABLES {self.ch.database}.{table} AND {shadow.database}.{table}")
        self.ch.command(f"DROP DATABASE IF EXISTS {shadow.database} SYNC")
        ends = [TopicPartition(*_split(key), offset) for key, offset in boundaries.ends.items()] + collected
        consumer = make_consumer(self.cfg, group=sink_group(self.cfg))
        try:  # not a member of the group: these commits only set where the sink's writer starts
            consumer.commit(offsets=ends, asynchronous=False)
        finally:
            consumer.close()
        seconds = time.monotonic() - started
        self.registry.record(epoch, "restored", self.progress.published, seconds, boundaries.encode())
        p = self.progress
        p.state, p.seconds = "done", round(seconds, 1)
        per_million = seconds / max(p.published, 1) * 1e6
        log.warning(
            "restored %s events in %.1fs (%.0f s per million events); %s output records rewritten",
            f"{p.published:,}",
            seconds,
            per_million,
            f"{p.collected:,}",
        )
        return True

    def _publish(self, history: History, stop: threading.Event) -> Boundaries | None:
        """Publish the history; where it lies on each input partition (``None``: stopped)."""
        codec = Codec(make_registry(self.cfg.schema_registry_url, self.cfg.schema_registry_wait_s))
        starts: dict[str, int] = {}
        ends: dict[str, int] = {}
        failed: list[str] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed.append(err.str())
                return
            key, offset = f"{msg.topic()}:{msg.partition()}", msg.offset()
            ends[key] = max(ends.get(key, 0), offset + 1)
            starts[key] = min(starts.get(key, offset), offset)

        producer = make_producer(self.cfg, on_delivery=delivered)
        topics = {kind: self.cfg.topic(kind) for kind in EVENT_TOPICS}
        p = self.progress
        for kind, record in history:
            try:
                value = codec.encode(kind, record)
            except DecodeError as exc:
                p.unpublishable += 1
                log.error("restore: %s %s not published: %s", kind, record.get("event_id"), exc)
                continue
            produce_retrying(producer, topics[kind], value, str(record["customer_id"]).encode())
            p.published += 1
            if not p.published % 2000:
                producer.poll(0)
                if stop.is_set():
                    producer.flush(10)
                    return None
        while producer.flush(5):
            if stop.is_set():
                return None
        if failed:
            raise RestoreError(f"{len(failed):,} history events were not delivered ({failed[0]}): check the broker")
        return Boundaries(starts, ends)

    def _collect(
        self, shadow: ClickHouse, epoch: Epoch, boundaries: Boundaries, stop: threading.Event
    ) -> list[TopicPartition] | None:
        """Write the outputs of the fold to ``shadow`` until the workers are through and the outputs are quiet;
        where the restore's writer stopped, per output partition (``None``: stopped)."""
        writer = Writer(self.cfg, shadow, epoch=epoch)
        collector = make_consumer(self.cfg, f"{self.cfg.app_id}-restore-{uuid.uuid4().hex[:8]}")
        workers = make_consumer(self.cfg, group=self.cfg.app_id)  # never subscribes: reads the group's commits

        try:
            topics = [self.cfg.topic(name) for name in OUTPUT_TOPICS]
            meta = collector.list_topics(timeout=15).topics
            collector.assign(
                [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics if t in meta for p in meta[t].partitions]
            )
            p = self.progress
            p.state = "folding"
            last_output, next_check, folded = time.monotonic(), 0.0, False
            while not stop.is_set():
                taken = writer.poll(collector)
                now = time.monotonic()
                if taken:
                    p.collected += taken
                    last_output = now
                if not folded and now >= next_check:
                    next_check = now + 0.5
                    folded = self._folded(workers, boundaries)
                    if folded:
                        p.state = "collecting"
                if folded and now - last_output >= QUIET_S:
                    return self._drain(writer, collector, stop)
            return None
        finally:
            workers.close()
            collector.close()

    def _folded(self, workers: Consumer, boundaries: Boundaries) -> bool:
        """Whether the workers' group committed every input partition through the history published there."""
        keys = list(boundaries.ends)
        committed = workers.committed([TopicPartition(*_split(key)) for key in keys], timeout=10)
        at = {f"{tp.topic}:{tp.partition}": max(tp.offset, 0) for tp in committed}
        starts, ends = boundaries.starts, boundaries.ends
        self.progress.folded = sum(max(0, min(at[k], ends[k]) - starts.get(k, 0)) for k in keys)
        return all(at[k] >= ends[k] for k in keys)

    def _drain(self, writer: Writer, collector: Consumer, stop: threading.Event) -> list[TopicPartition] | None:
        while not writer.flush():
            if stop.wait(1.0):
                return None
        return [tp for tp in collector.position(collector.assignment()) if tp.offset >= 0]


def progress_line(r: dict[str, Any], label: str) -> str:
    """One line of a restore's progress (:meth:`Restorer.stats`): a bar over the events published, then folded.

    >>> progress_line({"state": "folding", "events": 200, "published": 200, "folded": 50, "seconds": 3.0}, "restoring")
    'restoring 200 events [#####...............]  25% folding, 3s'
    """
    events = max(int(r.get("events") or 0), 1)
    if r.get("state") == "publishing":
        fraction = int(r.get("published") or 0) / events
    elif r.get("state") == "folding":
        fraction = int(r.get("folded") or 0) / events
    else:
        fraction = 1.0
    bar = "#" * int(20 * fraction)
    return (
        f"{label} {events:,} events [{bar:.<20}] {100 * fraction:3.0f}% {r.get('state')}, "
        f"{float(r.get('seconds') or 0):.0f}s"
    )


def _split(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)
