"""The harness of ``cvm bench``: what a run needs around its measurements, kept apart from what it measures.

* the load: :func:`generate` draws and encodes it once (:mod:`cvm.simulation`, :class:`cvm.codec.Codec`), and
  :func:`publish` produces it to the run's topics;
* the child processes: :class:`Harness` owns the run's working directory, its configuration (its own ports, topic
  prefix, group ids and stores) and its children (workers, sink, peers), spawns a worker, waits for the workers'
  commits, reads their score records back and waits for the sink's HTTP API, failing at once when a child exits;
  :class:`Profiler` runs py-spy on a worker; :func:`peak_rss_mb` reads a child's peak memory.

The watchers of the latency phase, threads that see sampled events arrive while the harness's children run, are
:mod:`cvm.bench_watch`. The measurements (:class:`cvm.bench.Bench`, a :class:`Harness`), the table of results and the
command are in :mod:`cvm.bench`, the latency phase in :mod:`cvm.bench_latency`, the restart measurements in
:mod:`cvm.bench_restart`, all on this harness: it holds how a run is driven, so that they hold only what each figure
is and how it is computed.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvm.config import EVENT_TOPICS, Config
from cvm.exceptions import CvmError

__all__ = [
    "Harness",
    "Load",
    "Profiler",
    "free_port",
    "generate",
    "peak_rss_mb",
    "publish",
    "py_spy",
    "raw_rows",
    "sink_get",
    "wait_for",
]

_EVENTS_PER_CUSTOMER_DAY = 0.1  # a little under the simulator's 0.125 per active day (cvm/simulation_model.py)
_READ_QUIET_S = 60.0  # reading the score records back fails after this long without a new one


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the load ---------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Pre-generated, encoded events: ``(kind, key, value)``; ``pool`` feeds the latency phase."""

    records: list[tuple[str, bytes, bytes]]
    pool: list[tuple[str, bytes, bytes]]
    customers: int


def generate(events: int, customers: int, extra: int, seed: int = 1) -> Load:
    """``events`` simulated events for ``customers`` customers, then ``extra`` more (later in event time)."""
    from cvm.codec import Codec
    from cvm.simulation import ANCHOR_MS, Simulation

    want = events + extra
    days = want / (_EVENTS_PER_CUSTOMER_DAY * customers) * 1.2 + 1
    end_ms = ANCHOR_MS  # a fixed history: every run measures the same bytes
    while True:
        drawn = list(itertools.islice(Simulation(customers, days, seed, end_ms).history(), want))
        if len(drawn) == want:
            break
        days *= 1.5 * want / max(len(drawn), 1)
    codec = Codec()
    encoded = [(kind, rec["customer_id"].encode(), codec.encode(kind, rec)) for kind, rec in drawn]
    return Load(encoded[:events], encoded[events:], len({key for _, key, _ in encoded[:events]}))


def publish(cfg: Config, records: Sequence[tuple[str, bytes, bytes]]) -> dict[tuple[str, int], int]:
    """Produce ``records`` to ``cfg``'s topics; return the end offset (last + 1) of every partition written."""
    from cvm.kafka import make_producer
    from cvm.publish import produce_retrying

    ends: dict[tuple[str, int], int] = {}
    failed: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(str(err))
            return
        tp = (msg.topic(), msg.partition())
        ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

    producer = make_producer(cfg, on_delivery=delivered)
    topics = {kind: cfg.topic(kind) for kind in EVENT_TOPICS}
    for kind, key, value in records:
        produce_retrying(producer, topics[kind], value, key)
    if producer.flush(60) or failed:
        raise CvmError(f"publishing the bench load failed ({failed[0] if failed else 'timeout'}): is the broker up?")
    return ends


# --- child processes ----------------------------------------------------------------------------------------------


@dataclass
class _Children:
    """The processes the bench started: each stopped by its own handle, logs kept in ``logs``."""

    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], cfg: Config, stdout: int | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **cfg.to_env(), PYTHONUNBUFFERED="1")
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                stdout=stdout if stdout is not None else log,
                stderr=log,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops its children itself
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=10.0)

    def tail(self, name: str, lines: int = 2) -> str:
        """Why a child failed: its first logged error (later ones are usually consequences), else its last lines."""
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        for line in text:
            if " ERROR " in line or " CRITICAL " in line:
                return line.strip()[-400:]
        return " | ".join(text[-lines:])[-400:]


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise CvmError("--profile needs py-spy, which cvm does not install: run '.venv/bin/pip install py-spy'")
    return found


class Profiler:
    """``py-spy record`` on one worker, from its first commit (start-up left out) until it has committed all.

    The output format follows the file name: ``.txt`` raw collapsed stacks, ``.json`` speedscope, else an SVG
    flame graph. Every thread is sampled, idle ones included, so that waiting shows as well as working.
    """

    def __init__(self, path: str, pid: int, children: _Children) -> None:
        self.binary, self.path, self.pid, self.children = py_spy(), str(Path(path).absolute()), pid, children
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fmt = {".txt": "raw", ".json": "speedscope"}.get(Path(self.path).suffix, "flamegraph")
        argv = [self.binary, "record", "--pid", str(self.pid), "--rate", "100", "--idle", "--threads"]
        argv += ["--format", fmt, "--output", self.path]
        with open(self.children.logs / "py-spy.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads, so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- waiting on a sink ---------------------------------------------------------------------------------------------


def wait_for(bench: Harness, procs: dict[str, Any], done: Any, what: str) -> Any:
    """Wait until ``done()`` gives something; fail at once when one of ``procs`` (name: process) exits."""
    deadline = time.monotonic() + bench.timeout * 2
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise bench.fail(
                    f"{name} exited with code {proc.returncode} while waiting for {what}: {bench.children.tail(name)}"
                )
        try:
            found = done()
        except (OSError, ValueError, KeyError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise bench.fail(f"timed out waiting for {what}")


def sink_get(cfg: Config, path: str) -> Any:
    """The JSON answer of the sink of ``cfg`` (its HTTP API) to ``path``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.http_port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def raw_rows(cfg: Config) -> int:
    """Rows of the three raw event tables of ``cfg``'s database, read through its sink."""
    db = cfg.clickhouse_database
    query = " + ".join(f"(SELECT count() FROM {db}.{kind})" for kind in ("transactions", "contacts", "payments"))
    rows = sink_get(cfg, "/api/sql?" + urllib.parse.urlencode({"query": f"SELECT {query} AS n", "format": "json"}))
    return int(rows[0]["n"])


# --- the harness --------------------------------------------------------------------------------------------------


class Harness:
    """A run's working directory, configuration and child processes, for ``events`` published events.

    The user's settings apply; where things live and run (broker port, topic prefix, group ids, stores, HTTP
    port) is the run's own, so that a run keeps out of the way of a ``cvm up`` or another run on the machine.
    """

    def __init__(self, cfg: Config, events: int) -> None:
        self.events = events
        self.workdir = Path(tempfile.mkdtemp(prefix="cvm-bench-"))
        (self.workdir / "logs").mkdir()
        tag = uuid.uuid4().hex[:8]
        # The user's settings (CVM_WORKER_BATCH, partitions, ...) apply; where things live and run is the bench's.
        self.cfg = cfg.replace(
            kafka_bootstrap="",
            broker_port=free_port(),
            topic_prefix=f"bench{tag}-",
            app_id=f"bench-{tag}",
            data_dir=str(self.workdir / "data"),
            clickhouse_url=f"chdb://{self.workdir / 'clickhouse'}",
            clickhouse_database="cvm",
            schema_registry_url="",
            http_host="127.0.0.1",
            http_port=free_port(),
            # no /metrics unless a measurement gives a free port: a cvm up here holds the default ports
            worker_metrics_port=0,
            learner_metrics_port=0,
            http_token="",
            kafka_security_protocol="",
            kafka_sasl_mechanism="",
            kafka_sasl_username="",
            kafka_sasl_password="",
            kafka_ssl_cafile="",
        )
        self.children = _Children(self.workdir / "logs")
        self.timeout = 90.0 + events / 1000  # per phase: a phase slower than 1k events/s is broken, not slow
        self.ends: dict[tuple[str, int], int] = {}
        self.scores_from: dict[int, int] = {}

    def fail(self, what: str) -> CvmError:
        return CvmError(f"{what} (logs in {self.workdir / 'logs'})")

    def _spawn_worker(self, cfg: Config, name: str, metrics_port: int = 0) -> subprocess.Popen[bytes]:
        return self.children.start(
            name, ["-m", "cvm.cli", "worker", "--id", name], cfg.replace(worker_metrics_port=metrics_port)
        )

    def _check_alive(self, procs: Sequence[subprocess.Popen[bytes]], names: Sequence[str]) -> None:
        for proc, name in zip(procs, names, strict=True):
            if proc.poll() is not None:
                what = name if name == "sink" or name.endswith("-learner") else f"worker {name}"
                raise self.fail(f"{what} exited with code {proc.returncode}: {self.children.tail(name)}")

    def _wait_committed(
        self,
        cfg: Config,
        procs: Sequence[subprocess.Popen[bytes]],
        names: Sequence[str],
        on_progress: Callable[[], None] | None = None,
        sample: Callable[[], None] | None = None,
    ) -> list[tuple[float, float]]:
        """Wait until the workers' group has committed the end of every partition (cheap to poll: no CPU taken
        from the workers); ``on_progress`` is called at the first commit, ``sample`` at every poll. The figure comes
        from the score records, read afterwards. Returns the first worker's CPU seconds sampled on the way:
        ``(time, cpu)``."""
        from confluent_kafka import KafkaException, TopicPartition

        from cvm.kafka import make_consumer

        consumer = make_consumer(cfg, group=cfg.app_id)
        tps = [TopicPartition(t, p) for t, p in self.ends]
        deadline = time.monotonic() + self.timeout
        cpu: list[tuple[float, float]] = []
        try:
            while True:
                self._check_alive(procs, names)
                used = _cpu_seconds(procs[0].pid)
                if used is not None:
                    cpu.append((time.time(), used))
                if sample is not None:
                    sample()
                try:
                    committed = consumer.committed(tps, timeout=5.0)
                except KafkaException:
                    committed = []
                if committed and all(tp.offset >= self.ends[(tp.topic, tp.partition)] for tp in committed):
                    return cpu
                if on_progress is not None and any(tp.offset > 0 for tp in committed):
                    on_progress()
                    on_progress = None
                if time.monotonic() > deadline:
                    done = sum(max(tp.offset, 0) for tp in committed)
                    raise self.fail(f"the workers committed {done:,} of {self.events:,} events in {self.timeout:.0f}s")
                time.sleep(0.25)
        finally:
            consumer.close()

    def _scores_end(self, cfg: Config) -> int:
        """Where the next phase's score records begin: the ends of ``customer-scores`` as they are now (saved for
        :meth:`_read_scores`), and the wall clock in ms.

        The phase before may have written past the record that completed it (its idle re-scoring of every customer,
        once its last event was in). Counted in the next phase, those records, which cover every event already, made
        that phase's window start before its workers did: 4,259 events/s for two workers that took 36 s over
        400,000 events. The ends alone do not keep them out: Tansu's latest offset can lag the log's end by its last
        batch (32 records of the first phase's lay past it). :meth:`_read_scores` skips any record stamped before
        the clock returned here.
        """
        from confluent_kafka import TopicPartition

        from cvm.kafka import make_consumer

        topic = cfg.topic("customer-scores")
        consumer = make_consumer(cfg, group=f"{cfg.app_id}-bench-scores")
        try:
            for p in range(cfg.partitions):
                _, end = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0, cached=False)
                self.scores_from[p] = max(end, 0)
        finally:
            consumer.close()
        return int(time.time() * 1000)

    def _read_scores(
        self, cfg: Config, procs: Sequence[subprocess.Popen[bytes]], names: Sequence[str], since_ms: int = 0
    ) -> tuple[int, int, int]:
        """Read this run's score records, those stamped at ``since_ms`` or later (:meth:`_scores_end`); return
        (first record's timestamp, events it covered, timestamp of the record that completed the run), all events
        published being applied exactly once."""
        from confluent_kafka import TopicPartition

        from cvm.kafka import make_consumer

        topic = cfg.topic("customer-scores")
        consumer = make_consumer(cfg, group=f"{cfg.app_id}-bench-scores")
        consumer.assign([TopicPartition(topic, p, self.scores_from.get(p, 0)) for p in range(cfg.partitions)])
        records: list[tuple[int, bytes, int]] = []
        latest: dict[bytes, int] = {}
        total = 0
        # 60 s without a new record, not 60 s in all: at 10,000 customers a run sends over a million score records,
        # and 60 s in all read those of 270,452 of its 400,000 events (all of them applied)
        deadline = time.monotonic() + _READ_QUIET_S
        try:
            while total < self.events:
                if time.monotonic() > deadline:
                    self._check_alive(procs, names)
                    raise self.fail(
                        f"the workers' scores cover {total:,} of {self.events:,} events published: "
                        "events were lost or dead-lettered"
                    )
                messages = consumer.consume(num_messages=10000, timeout=0.5)
                if messages:
                    deadline = time.monotonic() + _READ_QUIET_S
                for msg in messages:
                    if msg.error() is not None:
                        continue
                    self.scores_from[msg.partition()] = msg.offset() + 1
                    if msg.timestamp()[1] < since_ms:
                        continue  # a phase before wrote it
                    try:
                        version, key = int(json.loads(msg.value())["n_events"]), msg.key() or b""
                    except (ValueError, TypeError, KeyError):
                        continue
                    records.append((msg.timestamp()[1], key, version))
                    if version > latest.get(key, 0):
                        total += version - latest.get(key, 0)
                        latest[key] = version
        finally:
            consumer.close()
        if total != self.events:
            raise self.fail(f"the workers' scores cover {total:,} events, {self.events:,} were published")
        # Replay the records in time order: when does the sum of latest versions reach every event?
        records.sort(key=lambda r: r[0])
        first_ms = records[0][0]
        latest.clear()
        total = first_n = 0
        last_ms = first_ms
        for ts, key, version in records:
            if version > latest.get(key, 0):
                total += version - latest.get(key, 0)
                latest[key] = version
            if ts == first_ms:
                first_n = total
            if total == self.events:
                last_ms = ts
                break
        return first_ms, first_n, last_ms

    def _wait_http(self, cfg: Config, sink: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            if sink.poll() is not None:
                raise self.fail(f"the sink exited with code {sink.returncode}: {self.children.tail('sink')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{cfg.http_port}/health", timeout=1.0):
                    return
            except OSError:
                time.sleep(0.2)
        raise self.fail("the sink's HTTP API did not answer within 120s")
