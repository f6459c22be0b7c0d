"""The peers of ``cvm bench``, each run in a child process of its own: a Faust agent that only iterates, and Quix
Streams counting per key with RocksDB state.

``python -m cvm.bench_peers faust|quix --bootstrap HOST:PORT --topics A,B,C --events N --group G --dir D`` consumes
the ``N`` events already on the topics and prints one JSON line ``{"events": n, "seconds": s, "first": m}``: the
events seen after the first batch (``n``, ``m`` in the first) and the time from the first batch to the last event.
A child process keeps each framework's event loop, threads and imports away from the bench and from each other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


class _Clock:
    """Counts events and takes the time of the first batch and of the last event."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen = 0
        self.first = 0
        self.t_first = 0.0

    def add(self, n: int) -> bool:
        """Count ``n`` events; True once every expected event was seen (then the result is printed)."""
        if not self.seen:
            self.t_first, self.first = time.perf_counter(), n
        self.seen += n
        if self.seen < self.expected:
            return False
        seconds = time.perf_counter() - self.t_first
        print(json.dumps({"events": self.seen - self.first, "seconds": seconds, "first": self.first}), flush=True)
        return True


def run_faust(args: argparse.Namespace) -> None:
    """A Faust agent over the topics that takes batches (``stream.take``) and does nothing with them."""
    import faust

    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.dir,
        web_enabled=False,
        broker_session_timeout=6.0,  # the same group settings as cvm's worker (streams/app.py)
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
    )
    topic = app.topic(*args.topics.split(","), key_type=bytes, value_type=bytes)
    clock = _Clock(args.events)

    @app.agent(topic)
    async def iterate(stream: Any) -> None:
        async for batch in stream.take(args.batch, within=1.0):
            if clock.add(len(batch)):
                # The measurement is printed; leaving the group cleanly would only add time nobody reads.
                os._exit(0)

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()


def run_quix(args: argparse.Namespace) -> None:
    """Quix Streams: one stateful count per key (RocksDB, changelog on) for each of the topics."""
    from quixstreams import Application

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.dir,
        loglevel="WARNING",
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    clock = _Clock(args.events)

    def count(value: bytes, state: Any) -> None:
        state.set("n", state.get("n", 0) + 1)
        if clock.add(1):
            app.stop()

    for name in args.topics.split(","):
        # The input topics were created by cvm with explicit configs, which Quix needs on Tansu (FACTS.md).
        topic = app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        app.dataframe(topic).update(count, stateful=True)
    app.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvm.bench_peers")
    parser.add_argument("peer", choices=["faust", "quix"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated topic names")
    parser.add_argument("--events", type=int, required=True, help="events on the topics: stop after all were seen")
    parser.add_argument("--group", required=True, help="consumer group (and Faust app id)")
    parser.add_argument("--dir", required=True, help="state directory")
    parser.add_argument("--batch", type=int, default=5000, help="Faust: events per stream.take batch")
    args = parser.parse_args(argv)
    {"faust": run_faust, "quix": run_quix}[args.peer](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
