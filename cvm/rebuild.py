"""``cvm rebuild``: every customer's state, scores, alerts and models computed again from ClickHouse's raw tables,
with the code installed now — the upgrade path when a new version computes something new.

It is a restore (:mod:`cvm.restore`) on topics that are empty on purpose: the raw history is published again in
the order it was first read, workers and the learner (started by the command, ``--workers`` of them) fold it, and
the derived tables are swapped for the ones they produce. The result is what a replay of the same events into a
fresh system gives. Raw tables, ``late_events`` and ``dead_letters`` stay as they are.

* **Embedded broker**: the rebuild runs its own broker, on a free port, and stops it at the end; ``cvm up`` must
  be stopped (the embedded ClickHouse has one owner). Since the embedded broker starts empty at every ``cvm up``,
  which then restores with the code installed, ``cvm up`` after an upgrade rebuilds too; ``cvm rebuild`` does it
  without starting the rest.
* **Kafka** (``--reset-topics``, required): cvm's processes must be stopped and the sink must have written every
  input event (it checks both). The rebuild then deletes cvm's own topics — the changelog, models, CLV summaries,
  churn labels, the output topics, the epoch — and consumer groups, and starts the workers' group where the input
  ends: the history goes after it. Upstream should hold new events until it is done (they would be folded before the
  history they follow). The input topics are not touched.

Interrupted (Ctrl-C), it leaves the derived tables as they were; run it again. It exits 1 with a one-line error
when it could not do its job.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState, TopicPartition
from confluent_kafka.admin import AdminClient

from cvm.broker import Broker, free_port
from cvm.config import EVENT_TOPICS, Config
from cvm.epoch import EPOCH_TOPIC, Epoch, records_after
from cvm.exceptions import CvmError
from cvm.kafka import TOPICS, check_broker, create_topics, make_consumer
from cvm.publish import StopSignals
from cvm.restore import Restorer, progress_line
from cvm.up import Child, restart_dead
from sinks.clickhouse import connect, migrate
from sinks.writer import sink_group
from streams.table import CustomerTable

__all__ = ["main", "reset_topics"]


def main(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``cvm rebuild``; 0 once the derived tables are the rebuilt ones."""
    if not cfg.embedded_broker and not args.reset_topics:
        raise CvmError(
            "on Kafka, cvm rebuild deletes cvm's own topics (changelog, models, outputs) and consumer groups: stop "
            "cvm's processes, then run it with --reset-topics"
        )
    ch = connect(cfg)  # the embedded ClickHouse refuses a second owner: `cvm up` must be stopped
    broker = None
    children: list[Child] = []
    try:
        migrate(ch)
        if cfg.embedded_broker:
            port = free_port()
            broker = Broker(port, log_path=_logs(cfg) / "rebuild-broker.log").start()
            cfg = cfg.replace(broker_port=port)
        else:
            reset_topics(cfg)
        check_broker(cfg)
        create_topics(cfg)
        restorer = Restorer(cfg, ch)
        env = dict(os.environ, **cfg.to_env(), PYTHONUNBUFFERED="1")
        children = [Child("rebuild-learner", ["learner"])]
        children += [
            Child(f"rebuild-worker-{i + 1}", ["worker", "--id", f"rebuild{i + 1}"]) for i in range(args.workers)
        ]
        for child in children:
            child.start(env, _logs(cfg))
        started = time.monotonic()
        epoch = _run(restorer, children, env, _logs(cfg))
        stats = restorer.stats()
        if epoch is None:
            raise CvmError("interrupted: the derived tables are as they were; run cvm rebuild again")
        events, seconds = int(stats.get("published") or 0), time.monotonic() - started
        if stats["state"] == "none":
            print("cvm rebuild: ClickHouse holds no events: nothing to rebuild", file=sys.stderr)
            return 0
        customers = ch.rows(f"SELECT count() FROM {ch.database}.customers FINAL")[0][0]
        print(
            f"cvm rebuild: {customers:,} customers rebuilt from {events:,} events in {seconds:.1f}s "
            f"({seconds / max(events, 1) * 1e6:,.0f} s per million events)",
            file=sys.stderr,
        )
        return 0
    finally:
        for child in reversed(children):
            child.stop(timeout=15)
        if broker is not None:
            broker.stop()
        ch.close()


def _run(restorer: Restorer, children: list[Child], env: dict[str, str], logs: Path) -> Epoch | None:
    """Restore in a thread while this one shows the progress and restarts a child that dies."""
    result: list[Epoch | None] = []
    failure: list[BaseException] = []
    with StopSignals() as stop:
        stopped = threading.Event()

        def work() -> None:
            try:
                result.append(restorer.run(stopped))
            except BaseException as exc:  # handed to the main thread, which raises it
                failure.append(exc)

        thread = threading.Thread(target=work, name="cvm-rebuild", daemon=True)
        thread.start()
        show = _progress()
        while thread.is_alive():
            thread.join(0.5)
            if stop.requested or restart_dead(children, env, logs):
                stopped.set()
            show(restorer.stats())
        show(None)
    if failure:
        raise failure[0]
    return result[0] if result else None


def _progress() -> Callable[[dict[str, Any] | None], None]:
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(stats: dict[str, Any] | None) -> None:
        if stats is None:
            if tty:
                sys.stderr.write("\r\x1b[K")
            return
        if stats.get("state") in (None, "starting", "none", "done"):
            return
        line = progress_line(stats, "cvm rebuild:")
        if tty:
            sys.stderr.write(f"\r{line}\x1b[K")
            sys.stderr.flush()
        elif time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    return show


def reset_topics(cfg: Config, timeout: float = 60.0) -> None:
    """Make a Kafka ready for a rebuild: cvm's own topics and groups gone, the workers' group at the input's end.

    Refuses (:class:`CvmError`) while cvm's workers or sink are members of their groups, or while input is there
    that the sink has not written to ClickHouse: the rebuild replays ClickHouse, so that input would be lost.
    """
    admin = check_broker(cfg)
    groups = [cfg.app_id, sink_group(cfg)]
    for group, future in admin.describe_consumer_groups(groups).items():
        try:
            found = future.result()
        except Exception:  # the group does not exist
            continue
        # Tansu lists no members of a group it calls stable: the state says it as well.
        if found.members or found.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
            raise CvmError(f"consumer group {group} is {found.state.name.lower()}: stop cvm's workers and sink first")
    inputs = [TopicPartition(cfg.topic(k), p) for k in EVENT_TOPICS for p in range(cfg.partitions)]
    consumer = make_consumer(cfg, group=sink_group(cfg))
    try:
        written = consumer.committed(inputs, timeout=15)
    finally:
        consumer.close()
    unwritten = records_after(cfg, [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in written])
    if unwritten:
        where = ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in unwritten[:3])
        raise CvmError(
            f"the sink has not written every input event to ClickHouse ({where}): start `cvm sink` until it has "
            "(its lag is 0 on /api/status), stop it, then rebuild"
        )
    own = [cfg.topic(name) for name in TOPICS if name not in EVENT_TOPICS]
    own += [cfg.topic(EPOCH_TOPIC.name), CustomerTable(cfg).topic]
    _delete(admin, own, groups, timeout)
    consumer = make_consumer(cfg, group=cfg.app_id)
    try:  # everything before is in ClickHouse: the workers start after it, with the history published next
        starts = [TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)) for tp in written]
        consumer.commit(offsets=starts, asynchronous=False)
    finally:
        consumer.close()


def _delete(admin: AdminClient, topics: list[str], groups: list[str], timeout: float) -> None:
    existing = set(admin.list_topics(timeout=15).topics)
    doomed = [t for t in topics if t in existing]
    for topic, future in admin.delete_topics(doomed, operation_timeout=timeout).items() if doomed else []:
        try:
            future.result()
        except Exception as exc:
            raise CvmError(f"could not delete topic {topic}: {exc}") from None
    for _, future in admin.delete_consumer_groups(groups).items():
        try:
            future.result()
        except Exception:  # a group that does not exist is gone already
            continue
    deadline = time.monotonic() + timeout
    while set(doomed) & set(admin.list_topics(timeout=15).topics):  # deletion is asynchronous on Kafka
        if time.monotonic() > deadline:
            raise CvmError(f"Kafka has not deleted {sorted(doomed)} after {timeout:g}s: try again")
        time.sleep(0.5)


def _logs(cfg: Config) -> Path:
    path = cfg.data_path / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path
