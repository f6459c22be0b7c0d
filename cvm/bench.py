"""``cvm bench``: cvm's throughput, latency and footprint next to its peers, in one run on one embedded broker.

The bench starts a Tansu broker of its own (free port, random topic prefix and group ids), generates a realistic
load once with :mod:`cvm.simulation` (the three topics' natural mix, 200,000 customers by default), encodes it with
:class:`cvm.codec.Codec`, publishes it once, then measures on those same records:

================================ =====================================================================================
``raw_eps``                      confluent-kafka ``consume(num_messages=10000)`` + fastavro decode, no processing
``faust_empty_eps``              a Faust agent taking batches (``stream.take(5000)``) and doing nothing (child process)
``quix_eps``                     Quix Streams counting per key in RocksDB state with its changelog (child process)
``pipeline_eps``                 one ``cvm worker`` process beside ``cvm learner``: decode, fold, score under the models
                                 the learner publishes as stream time passes, table + changelog, scores emitted
``floor_eps``                    the pipeline's outputs alone (its score messages per event, as JSON, and a changelog
                                 record per event) after consume + decode, no fold or scoring: the ceiling of cvm's
                                 outputs (:mod:`cvm.bench_floor`)
``pipeline_2w_eps``              two ``cvm worker`` processes in one group, under the models published during the above
``p50_latency_s``, ``p99_..``    publish → the customer's row in ClickHouse covers the event, at ``pipeline_eps / 2``
``p50_score_latency_s``, ..      publish → a score record covering it (the worker's share of the latency)
``p50_live_latency_s``, ..       the same with the events stamped with the wall clock: live traffic, not a backfill
``state_bytes_per_customer``     mean size of the table values (the changelog's latest value per customer), and max
``rss_mb``                       peak resident memory of the single worker (``VmHWM``)
``pipeline_cpu_us_per_event``    the single worker's CPU time per event, steadier than a rate on a shared machine
================================ =====================================================================================

Every rate is "events after the first batch / time from the first batch to the last event": start-up, imports
and the consumer group join are left out, as a long-running processor never pays them again. For the pipeline
the clock is the ``customer-scores`` records' timestamps (set by the worker when it sends them): from the first
score record to the one that makes every published event visible — the sum over customers of the latest
``n_events`` (events applied) equals the events published. ``docs/benchmarks.md`` says more, and holds results.

Faust settings reach the workers and the Faust peer through Faust's own environment variables
(``STREAM_BUFFER_MAXSIZE=8192 cvm bench``); cvm's through ``CVM_*`` (``CVM_WORKER_BATCH``).

**Models.** cvm's path includes its learner: workers score under the CLV and churn versions it publishes on stream
time, re-score every customer under a new version, and wait for it when it is behind. So the single-worker phase
and the latency phase each run one ``cvm learner`` beside the worker. The learner is the one process of a
deployment that learns (its models topic is shared): the two-worker phase, on the same topics, scores under the
versions the first phase's learner published, and runs no learner of its own.

This module holds what is measured and reported, and the throughput and footprint phases; how a run is driven
(the load, the child processes and waiting on them) is :mod:`cvm.bench_harness`, the latency phase's watchers
:mod:`cvm.bench_watch`, the latency phase (:class:`cvm.bench_latency.LatencyPhase`, which :class:`Bench` is, and
:func:`percentile`) is :mod:`cvm.bench_latency`, the recovery and restore measurements are :mod:`cvm.bench_restart`,
and the Faust and Quix peers' child processes :mod:`cvm.bench_peers`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cvm import bench_floor, bench_restart, bench_verify
from cvm.bench_floor import KEYS as FLOOR_KEYS
from cvm.bench_harness import (
    Load,
    Profiler,
    free_port,
    generate,
    peak_rss_mb,
    publish,
    py_spy,
)
from cvm.bench_latency import LatencyPhase, percentile
from cvm.bench_metrics import STAGES, WorkerCounters, at
from cvm.bench_restart import KEYS as RESTART_KEYS
from cvm.bench_verify import KEYS as VERIFY_KEYS
from cvm.cli import BENCH_MEASUREMENTS
from cvm.config import Config
from cvm.exceptions import CvmError

__all__ = ["KEYS", "MEASUREMENTS", "Bench", "format_table", "main", "percentile"]

#: What ``--skip`` can leave out (listed where the command line is parsed); ``pipeline`` also carries
#: ``state_bytes_per_customer`` and ``rss_mb``.
MEASUREMENTS = BENCH_MEASUREMENTS

#: The figures of a run, in the order they are shown, with what each one is.
KEYS = {
    "raw_eps": "confluent-kafka consume(10000) + fastavro decode, no processing",
    "faust_empty_eps": "Faust agent, stream.take(5000), no work",
    "quix_eps": "Quix Streams, count per key in RocksDB state (+ changelog)",
    "pipeline_eps": "cvm worker x1 + learner: decode, fold, score under the models, table + changelog, emit",
    "pipeline_2w_eps": "cvm worker x2, one consumer group, under the models the learner published in x1",
    **FLOOR_KEYS,
    "p50_latency_s": "publish -> row in ClickHouse, median, at pipeline_eps/2",
    "p99_latency_s": "publish -> row in ClickHouse, 99th percentile",
    "p50_score_latency_s": "publish -> score record sent by the worker, median",
    "p99_score_latency_s": "publish -> score record sent by the worker, 99th percentile",
    "p50_live_latency_s": "the same with the events stamped with the wall clock (live traffic), median",
    "p99_live_latency_s": "the same, live traffic, 99th percentile",
    "p99_live_score_latency_s": "publish -> score record sent by the worker, live traffic, 99th percentile",
    "state_bytes_per_customer": "table value bytes per customer, mean",
    "state_bytes_max": "table value bytes per customer, largest",
    "rss_mb": "peak resident memory of the single worker (VmHWM)",
    "pipeline_cpu_us_per_event": "CPU time of the single worker per event (steadier than eps on a busy machine)",
    "scorings_per_event": "customer scorings of the single worker per event (event and tick scorings, in the window "
    "of pipeline_eps)",
    "rescorings_per_s": "customers re-scored at ticks without an event (silence, new versions), per second of the "
    "window",
    "model_rescorings_per_event": "customers given a slot to be re-scored under new CLV or churn versions, per "
    "event (one slot per customer when both kinds are new at one tick)",
    "scoring_cpu_us": "CPU time per customer scoring (features, CLV, tiers, churn, alerts), the single worker",
    **{f"stage_{stage}_us": f"worker Kafka thread CPU per event: {what}" for stage, what in STAGES.items()},
    **VERIFY_KEYS,
    **RESTART_KEYS,
}

_PHASES = {
    "raw": "confluent-kafka batch consume + fastavro decode",
    "faust": "a Faust agent that only iterates (child process)",
    "quix": "Quix Streams, count per key with RocksDB state (child process)",
    "pipeline": "one cvm worker and the learner",
    "floor": "the pipeline's outputs alone, no fold or scoring: the ceiling of cvm's outputs",
    "pipeline_2w": "two cvm workers",
    "verify": "a sink writes the pipeline phases' outputs to ClickHouse, checked exactly against the load",
    "latency": "worker + learner + sink, publishing at pipeline_eps / 2",
    "latency_live": "the same with the events stamped with the wall clock as they are published",
    "recovery": "a worker's table recovered from its changelog, then from its checkpoint",
    "restore": "the load restored from ClickHouse onto a fresh broker (sink, learner, worker)",
}
_PEER_RESULT = re.compile(r"\{[^{}]*\"events\"[^{}]*\}")


def _rate(events: int, seconds: float) -> float:
    """Events per second, guarded against a window too short to time.

    >>> _rate(1000, 0.5), _rate(10, 0.0)
    (2000.0, 10000.0)
    """
    return events / max(seconds, 1e-3)


def machine() -> str:
    """What the figures were measured on: CPU model, cores, memory, Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    cpu = model or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()}, Python {platform.python_version()}"


# --- the bench ----------------------------------------------------------------------------------------------------


class Bench(LatencyPhase):
    """One run: ``events`` events for about ``customers`` customers, the measurements not in ``skip``."""

    def __init__(
        self,
        cfg: Config,
        events: int,
        customers: int,
        skip: Sequence[str] = (),
        say: Callable[[str], None] = lambda _: None,
        profile: str = "",
        recovery_customers: int = 100_000,
    ) -> None:
        if profile:
            py_spy()  # missing: say so before starting anything
        super().__init__(cfg, events)
        self.customers = customers
        self.skip = set(skip)
        self.say = say
        self.profile = profile  # py-spy output of the single worker, when asked for
        self.recovery_customers = recovery_customers
        self.errors: dict[str, str] = {}  # measurement → why it failed
        self.expected: bench_verify.Expected | None = None  # what the load adds up to, once asked for

    # --- the run ------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from confluent_kafka import KafkaException

        from cvm.broker import Broker
        from cvm.kafka import create_topics

        started = time.monotonic()
        result: dict[str, Any] = dict.fromkeys(KEYS)
        result.update(
            events=self.events,
            customers=None,
            machine=machine(),
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            load_avg_start=round(os.getloadavg()[0], 2),
        )
        broker = Broker(self.cfg.broker_port, log_path=self.workdir / "logs" / "broker.log")
        ok = False
        try:
            self.say(f"generating {self.events:,} events for {self.customers:,} customers ...")
            load = generate(self.events, self.customers, extra=max(1000, self.events // 2))
            result["customers"] = load.customers
            broker.start()
            create_topics(self.cfg)
            self.say(f"publishing them to the embedded broker on port {self.cfg.broker_port} ...")
            self.ends = publish(self.cfg, load.records)
            for name in MEASUREMENTS:
                if name in self.skip:
                    continue
                self.say(f"{name}: {_PHASES[name]} ...")
                try:
                    result.update(self._measure(name, load, result))
                except CvmError as exc:  # one broken measurement must not cost the others
                    self.errors[name] = str(exc)
                    self.say(f"{name} failed: {exc}")
            ok = not self.errors
        except (KafkaException, OSError) as exc:
            raise self.fail(f"{type(exc).__name__}: {exc}") from None
        finally:
            self.children.stop_all()
            broker.stop()
            if ok:
                shutil.rmtree(self.workdir, ignore_errors=True)
        result["load_avg_end"] = round(os.getloadavg()[0], 2)
        result["seconds"] = round(time.monotonic() - started, 1)
        if self.errors:
            result["errors"] = dict(self.errors)
        return result

    def _measure(self, name: str, load: Load, so_far: dict[str, Any]) -> dict[str, Any]:
        if name == "raw":
            return {"raw_eps": round(self.raw())}
        if name in ("faust", "quix"):
            return {"faust_empty_eps" if name == "faust" else "quix_eps": round(self.peer(name))}
        if name == "pipeline":
            return self.pipeline(workers=1)
        if name == "pipeline_2w":
            return {"pipeline_2w_eps": self.pipeline(workers=2)["pipeline_eps"]}
        if name == "floor":
            if so_far["scorings_per_event"] is None:
                self.say("floor: left out, it sends what the pipeline phase sent per event (skipped or failed)")
                return {}
            return bench_floor.phase(self, self.ends, so_far["scorings_per_event"], self._batch(self.cfg.worker_batch))
        if name == "verify":
            if so_far["pipeline_eps"] is None and so_far["pipeline_2w_eps"] is None:
                self.say("verify: nothing to check, no pipeline phase wrote scores")
                return {}
            return bench_verify.phase(self, self._expected(load))
        if name == "recovery":
            return bench_restart.recovery(self.cfg, self.recovery_customers)
        if name == "restore":
            return bench_restart.restore(self, self._expected(load))
        rate = (so_far["pipeline_eps"] or 2000) / 2
        if name == "latency_live":
            figures = self.latency(load.pool, rate, live=True)
            return {
                "p50_live_latency_s": figures["p50_latency_s"],
                "p99_live_latency_s": figures["p99_latency_s"],
                "p99_live_score_latency_s": figures["p99_score_latency_s"],
            }
        return self.latency(load.pool, rate)

    def _expected(self, load: Load) -> bench_verify.Expected:
        """What the load must add up to in ClickHouse (computed once, for the verify and restore phases)."""
        if self.expected is None:
            self.expected = bench_verify.expect(self.cfg, load.records)
        return self.expected

    def _batch(self, size: int) -> int:
        """``size``, or less for a small load: the first batch is not timed, and a run must time several."""
        return max(10, min(size, self.events // 10))

    # --- raw ----------------------------------------------------------------------------------------------------

    def raw(self) -> float:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from cvm.codec import Codec
        from cvm.kafka import make_consumer

        codec = Codec()
        # librdkafka's own prefetching (not cvm's embedded-broker throttle): the I/O ceiling, as FACTS.md measured it.
        consumer = make_consumer(
            self.cfg, group=f"{self.cfg.app_id}-raw", **{"queued.min.messages": 100000, "fetch.queue.backoff.ms": 1000}
        )
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self.ends])
        decode = codec.decode
        batch = self._batch(10000)
        seen = first = 0
        t_first = 0.0
        deadline = time.monotonic() + self.timeout
        try:
            while seen < self.events:
                if time.monotonic() > deadline:
                    raise self.fail(f"raw consume read {seen:,} of {self.events:,} events in {self.timeout:.0f}s")
                n = 0
                for msg in consumer.consume(num_messages=batch, timeout=1.0):
                    if msg.error() is None:
                        decode(msg.value())
                        n += 1
                if n and not seen:
                    t_first, first = time.perf_counter(), n
                seen += n
            return _rate(seen - first, time.perf_counter() - t_first)
        finally:
            consumer.close()

    # --- the peers ----------------------------------------------------------------------------------------------

    def peer(self, name: str) -> float:
        topics = sorted({t for t, _ in self.ends})
        state = self.workdir / f"{name}-state"
        argv = ["-m", "cvm.bench_peers", name, "--bootstrap", self.cfg.bootstrap, "--topics", ",".join(topics)]
        argv += ["--events", str(self.events), "--group", f"{self.cfg.app_id}-{name}", "--dir", str(state)]
        argv += ["--batch", str(self._batch(5000))]
        proc = self.children.start(name, argv, self.cfg, stdout=subprocess.PIPE)
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise self.fail(f"the {name} peer did not consume {self.events:,} events in {self.timeout:.0f}s") from None
        finally:
            self.children.stop(proc)
        found = _PEER_RESULT.findall(out.decode(errors="replace"))
        if not found:
            raise self.fail(f"the {name} peer exited ({proc.returncode}) without a result: {self.children.tail(name)}")
        figures = json.loads(found[-1])
        return _rate(int(figures["events"]), float(figures["seconds"]))

    # --- the pipeline -------------------------------------------------------------------------------------------

    def pipeline(self, workers: int) -> dict[str, Any]:
        """Spawn ``workers`` workers on the published load; the rate from their score records' timestamps."""
        cfg = self.cfg.replace(app_id=f"{self.cfg.app_id}-p{workers}")
        since_ms = self._scores_end(cfg)  # a phase before has stopped its workers: none of its records is counted
        spawned = time.time()
        port = free_port() if workers == 1 else 0
        procs = [self._spawn_worker(cfg, f"{cfg.app_id}-w{i + 1}", port) for i in range(workers)]
        names = [f"{cfg.app_id}-w{i + 1}" for i in range(workers)]
        if workers == 1:  # the learner publishes the model versions this phase scores with (module docstring)
            procs.append(self.children.start(f"{cfg.app_id}-learner", ["-m", "cvm.cli", "learner"], cfg))
            names.append(f"{cfg.app_id}-learner")
        extra: dict[str, Any] = {}
        profiler = Profiler(self.profile, procs[0].pid, self.children) if self.profile and workers == 1 else None
        counters = WorkerCounters(port, started=spawned) if workers == 1 else None
        try:
            cpu = self._wait_committed(
                cfg,
                procs,
                names,
                on_progress=profiler.start if profiler else None,
                sample=counters.poll if counters else None,
            )
            if counters is not None:
                counters.poll(force=True)  # before the worker's idle scoring: the stream went quiet just now
            if profiler is not None:
                profiler.stop()
            first_ms, first_n, last_ms = self._read_scores(cfg, procs, names, since_ms)
            if workers == 1:
                rss = peak_rss_mb(procs[0].pid)
                extra["rss_mb"] = round(rss, 1) if rss is not None else None
                extra["pipeline_startup_s"] = round(first_ms / 1000 - spawned, 2)
                if len(cpu) >= 2:
                    used = at(cpu, last_ms / 1000) - at(cpu, first_ms / 1000)
                    extra["pipeline_cpu_us_per_event"] = round(used / max(1, self.events - first_n) * 1e6, 1)
                if counters is not None:
                    extra.update(counters.window(first_ms / 1000, last_ms / 1000, self.events - first_n))
        finally:
            for proc in procs:
                self.children.stop(proc)
        if workers == 1:
            extra.update(self._state_bytes(cfg))
        extra["pipeline_eps"] = round(_rate(self.events - first_n, (last_ms - first_ms) / 1000))
        return extra

    def _state_bytes(self, cfg: Config) -> dict[str, Any]:
        """Mean and largest table value, as a worker recovers its table from the changelog."""
        from streams.table import CustomerTable  # Kafka and cvm only: the bench process stays Faust-free

        table = CustomerTable(cfg)
        table.recover(range(cfg.partitions), timeout=60.0)
        sizes = [len(value) for _, value in table.items()]
        if not sizes:
            return {"state_bytes_per_customer": None, "state_bytes_max": None}
        return {"state_bytes_per_customer": round(sum(sizes) / len(sizes), 1), "state_bytes_max": max(sizes)}


# --- output -------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value)


def format_table(result: dict[str, Any]) -> str:
    """The run as a table for a terminal.

    >>> lines = format_table({"events": 10, "customers": 5, "machine": "m", "date": "d", "seconds": 1.5,
    ...                       "raw_eps": 1000, "faust_empty_eps": None, "pipeline_eps": 500}).splitlines()
    >>> for line in lines[:4]:
    ...     print(line)
    cvm bench: 10 events, 5 customers, 1.5 s; m; d
    <BLANKLINE>
    raw_eps                          1,000  confluent-kafka consume(10000) + fastavro decode, no processing
    faust_empty_eps                      -  Faust agent, stream.take(5000), no work
    """
    load = ""
    if result.get("load_avg_start") is not None:
        load = f"; load average {result['load_avg_start']} -> {result.get('load_avg_end')}"
    lines = [
        f"cvm bench: {_fmt(result['events'])} events, {_fmt(result['customers'])} customers, "
        f"{result['seconds']} s; {result['machine']}; {result['date']}{load}",
        "",
    ]
    for key, doc in KEYS.items():
        lines.append(f"{key:<26} {_fmt(result.get(key)):>11}  {doc}")
    pipeline, faust, quix = result.get("pipeline_eps"), result.get("faust_empty_eps"), result.get("quix_eps")
    raw = result.get("raw_eps")
    lines.append("")
    # the targets of the issues that set them: 7 (Faust), 12 (raw), 17 (Quix, two workers)
    if pipeline and raw:
        lines.append(f"pipeline_eps / raw_eps = {pipeline / raw:.3f} (target >= 0.136)")
    if pipeline and faust:
        lines.append(f"pipeline_eps / faust_empty_eps = {pipeline / faust:.2f} (target >= 1)")
    if pipeline and quix:
        lines.append(f"pipeline_eps / quix_eps = {pipeline / quix:.3f} (target >= 0.6)")
    floor = result.get("floor_eps")
    if floor and quix:
        lines.append(f"floor_eps / quix_eps = {floor / quix:.3f} (the most cvm's outputs allow against Quix)")
    two = result.get("pipeline_2w_eps")
    if pipeline and two:
        lines.append(f"pipeline_2w_eps / pipeline_eps = {two / pipeline:.2f} (target >= 1.8)")
    for name, message in (result.get("errors") or {}).items():
        lines.append(f"{name} FAILED: {message}")
    return "\n".join(lines)


def _say(message: str) -> None:
    if sys.stderr.isatty():
        print(f"cvm bench: {message}", file=sys.stderr, flush=True)


def main(cfg: Config, args: argparse.Namespace) -> int:
    events, customers = args.events, args.customers
    if events < 100:
        raise CvmError(f"--events {events} is too few to time anything: use at least 100")
    profile = getattr(args, "profile", None) or ""
    recovery = getattr(args, "recovery_customers", None) or 100_000
    bench = Bench(cfg, events, customers, skip=args.skip or (), say=_say, profile=profile, recovery_customers=recovery)
    result = bench.run()
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    errors = result.get("errors") or {}
    if errors:
        more = f" (and {len(errors) - 1} more measurement(s) failed)" if len(errors) > 1 else ""
        name, message = next(iter(errors.items()))
        raise CvmError(f"{name}: {message}{more}")
    return 0
