"""Every Prometheus metric cvm exposes, defined once, and the ``/metrics`` server of the workers and the learner.

Each process has its own registry (prometheus_client's default one) and updates the metrics of its own work; a
metric nobody in a process touches is still exposed, at zero or empty. Names and labels:

Records (``topic`` is the base topic name, without ``CVM_TOPIC_PREFIX``):

* ``cvm_records_consumed_total{topic}`` — Kafka records taken from the topic;
* ``cvm_records_total{topic,fate}`` — what became of them. The fates of a process add up to its records consumed
  once it has caught up. Worker: ``applied``, ``duplicate``, ``redelivered``, ``late``, ``dead_lettered``. Sink:
  ``written`` (acknowledged by ClickHouse), ``skipped`` (undecodable or invalid: the worker dead-letters raw events),
  ``released`` (a rebalance or a stop took its partition before it was written: the next owner reads it again).
  Learner: ``learned``, ``duplicate`` (a pair learned before), ``taken`` (a CLV summary), ``malformed``;
* ``cvm_batch_records`` / ``cvm_batch_seconds`` — records per batch and the time from consuming a batch to
  committing it (worker: scoring batches; sink: flushes);
* ``cvm_consumer_lag_records{topic,partition}`` — records between the consumer's position and the end of the
  partition (approximate on the embedded broker, whose high watermark is a batch's base offset).

Worker state and models:

* ``cvm_table_customers{partition}`` — customers held in the worker's table;
* ``cvm_table_recovery_seconds`` and ``cvm_table_recovered_records_total`` — rebuilding assigned partitions from
  the changelog;
* ``cvm_rescorings_total{kind}`` and ``cvm_rescored_customers_total{kind}`` — new model versions, and the customers
  they gave a slot to be re-scored under them (``CVM_MODEL_RESCORE_SPREAD_S``), once per customer whichever kinds
  were new at that tick (``kind`` is ``clv``, ``churn`` or ``clv+churn``);
* ``cvm_model_version{kind}`` and ``cvm_model_age_seconds{kind}`` — the version in force and the seconds since it
  was signed (:func:`model_in_force`); ``cvm_models_published_total{kind}`` (learner);
* ``cvm_model_messages_refused_total{reason}`` — model messages refused (``unsigned``, ``forged``, ``malformed``):
  counted by :func:`cvm.kafka.decode_model` itself.

Sink:

* ``cvm_rows_written_total{table}``, ``cvm_insert_seconds{table}``, ``cvm_insert_failures_total{table}`` (INSERTs
  ClickHouse refused; each is tried again), ``cvm_sink_pending_rows``, ``cvm_sink_paused``;
* ``cvm_webhook_alerts_total{outcome}`` (``delivered``, ``failed``, ``dropped``, ``old``: not posted, its event
  time older than ``CVM_ALERT_WEBHOOK_MAX_AGE_DAYS``), ``cvm_webhook_retries_total``,
  ``cvm_webhook_queued``;
* ``cvm_http_requests_total{route,method,status}`` and ``cvm_http_request_seconds{route}`` — the HTTP API.

:func:`serve` starts the ``/metrics`` server of a worker or the learner on ``CVM_METRICS_HOST`` (loopback by
default); the sink serves ``/metrics`` on its HTTP API. Beyond loopback both require ``CVM_HTTP_TOKEN``.

>>> records_consumed.labels(topic="doc").inc(3)
>>> records.labels(topic="doc", fate="applied").inc(2)
>>> records.labels(topic="doc", fate="late").inc()
>>> from prometheus_client.parser import text_string_to_metric_families
>>> sample_sums(text_string_to_metric_families(exposition().decode()), "cvm_records_total", topic="doc")
3.0
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cvm.config import Config
from cvm.exceptions import ConfigError, PortInUse

__all__ = [
    "MetricsServer",
    "WORKER_FATES",
    "batch_records",
    "bearer_ok",
    "batch_seconds",
    "consumer_lag",
    "customers_held",
    "exposition",
    "http_request_seconds",
    "http_requests",
    "insert_failures",
    "insert_seconds",
    "is_loopback",
    "model_in_force",
    "model_refused",
    "models_published",
    "records",
    "records_consumed",
    "held_records",
    "model_waits",
    "rescored_customers",
    "rescorings",
    "scoring_seconds",
    "worker_stage_seconds",
    "silent_rescorings",
    "scorings",
    "stream_tick",
    "rows_written",
    "sample_sums",
    "serve",
    "sink_paused",
    "sink_pending_rows",
    "table_recovered_records",
    "table_recovery_seconds",
    "topic_label",
    "webhook_alerts",
    "webhook_queued",
    "webhook_retries",
]

#: The fates of a worker's records (streams.records.FATES, with ``dead`` spelled out).
WORKER_FATES = ("applied", "duplicate", "redelivered", "late", "dead_lettered", "rekeyed")

_SIZES = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- records -------------------------------------------------------------------------------------------------------

registry_failures = Counter(
    "cvm_schema_registry_failures",
    "Requests for a writer schema the Schema Registry did not answer (refused, timed out, an error status); each "
    "is tried again, its records wait.",
)
records_consumed = Counter("cvm_records_consumed", "Kafka records consumed, per topic.", ["topic"])
records = Counter(
    "cvm_records",
    "Records consumed by their fate (worker: applied, duplicate, redelivered, late, dead_lettered; sink: written, "
    "skipped, released; learner: learned, duplicate, taken, malformed).",
    ["topic", "fate"],
)
batch_records = Histogram("cvm_batch_records", "Records per batch.", buckets=_SIZES)
batch_seconds = Histogram("cvm_batch_seconds", "Seconds from consuming a batch to committing it.", buckets=_SECONDS)
consumer_lag = Gauge(
    "cvm_consumer_lag_records",
    "Records between the consumer's position and the partition's end.",
    ["topic", "partition"],
)

# --- worker state and models ---------------------------------------------------------------------------------------

customers_held = Gauge("cvm_table_customers", "Customers held in the worker's table.", ["partition"])
table_recovery_seconds = Histogram(
    "cvm_table_recovery_seconds", "Seconds to rebuild newly assigned partitions from the changelog.", buckets=_SECONDS
)
table_recovered_records = Counter("cvm_table_recovered_records", "Changelog records read to rebuild tables.")
rescorings = Counter("cvm_rescorings", "Population re-scorings on a new model version.", ["kind"])
rescored_customers = Counter(
    "cvm_rescored_customers",
    "Customers given a slot to be re-scored under new model versions (kind: the kinds new at that tick).",
    ["kind"],
)
scorings = Counter(
    "cvm_scorings",
    "Customer scorings, by occasion: event (fresh), tick (stream time), idle (up to the last tick, the stream idle).",
    ["scored_by"],
)
silent_rescorings = Counter(
    "cvm_silent_rescorings",
    "Customers scored at a tick without an event since their last scoring (timers due: silence, a label deadline, "
    "a new model version's slot).",
)
worker_stage_seconds = Counter(
    "cvm_worker_stage_seconds",
    "CPU seconds of a worker's Kafka thread by stage of its batches: consume, decode, fold, features (and the "
    "labels a tick matures), score (population, reasons, alerts, snapshots, timers), models (CLV and churn), emit "
    "(outputs sent and acknowledged), changelog (table writes), commit (offsets, pausing), other.",
    ["stage"],
)
scoring_failures = Counter(
    "cvm_scoring_failures",
    "Customers whose scoring raised, by step: features, clv, rank, churn, reasons, alerts, snapshot, timer. The "
    "customer keeps its last scores (the step's outputs are left out); the log names it.",
    ["step"],
)
scoring_seconds = Counter("cvm_scoring_seconds", "CPU seconds spent scoring customers, by occasion.", ["scored_by"])
stream_tick = Gauge("cvm_stream_tick_seconds", "The last stream-time tick the worker evaluated (event time, epoch s).")
held_records = Gauge("cvm_held_records", "Records a worker holds for a later tick (their partitions are paused).")
model_waits = Counter("cvm_model_waits", "Ticks a worker waited on the learner for, and waits given up.", ["outcome"])
models_published = Counter("cvm_models_published", "Model versions the learner published.", ["kind"])
model_refused = Counter(
    "cvm_model_messages_refused", "Model messages refused: unsigned, forged or malformed.", ["reason"]
)

# --- sink ----------------------------------------------------------------------------------------------------------

rows_written = Counter("cvm_rows_written", "Rows ClickHouse acknowledged, per table.", ["table"])
insert_seconds = Histogram("cvm_insert_seconds", "Seconds per INSERT into ClickHouse.", ["table"], buckets=_SECONDS)
insert_failures = Counter(
    "cvm_insert_failures", "INSERTs ClickHouse refused; the writer tries each again with backoff.", ["table"]
)
sink_pending_rows = Gauge("cvm_sink_pending_rows", "Rows the sink holds, not yet written.")
sink_paused = Gauge("cvm_sink_paused", "1 while the sink has paused consuming because inserts fail.")
webhook_alerts = Counter(
    "cvm_webhook_alerts",
    "Alerts handed to the webhook by outcome: delivered, failed, dropped, old (event time too old to post).",
    ["outcome"],
)
webhook_retries = Counter("cvm_webhook_retries", "Webhook POSTs tried again after a failure.")
webhook_queued = Gauge("cvm_webhook_queued", "Alerts waiting for the webhook or in flight.")
http_requests = Counter("cvm_http_requests", "HTTP API requests answered.", ["route", "method", "status"])
http_request_seconds = Histogram(
    "cvm_http_request_seconds", "Seconds to answer an HTTP API request.", ["route"], buckets=_SECONDS
)


# Labels known in advance are exposed at zero from the start: "none yet" reads 0 on a dashboard, not "no data".
for _reason in ("unsigned", "forged", "malformed"):
    model_refused.labels(reason=_reason)
for _outcome in ("delivered", "failed", "dropped", "old"):
    webhook_alerts.labels(outcome=_outcome)


class _ModelsInForce(Collector):
    """``cvm_model_version{kind}`` and ``cvm_model_age_seconds{kind}``, the age computed when scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, tuple[int, float]] = {}

    def set(self, kind: str, version: int, signed_at: float) -> None:
        with self._lock:
            self._models[kind] = (version, signed_at)

    def collect(self) -> Iterator[Metric]:
        version = GaugeMetricFamily("cvm_model_version", "Model version in force.", labels=["kind"])
        age = GaugeMetricFamily(
            "cvm_model_age_seconds", "Seconds since the model in force was signed.", labels=["kind"]
        )
        now = time.time()
        with self._lock:
            for kind, (number, signed_at) in sorted(self._models.items()):
                version.add_metric([kind], number)
                age.add_metric([kind], max(0.0, now - signed_at))
        yield version
        yield age


_models = _ModelsInForce()
REGISTRY.register(_models)


def model_in_force(kind: str, version: int, signed_at: float) -> None:
    """Record the model version a process now uses; ``signed_at`` (epoch seconds) is ``meta["signed_at"]``."""
    _models.set(kind, version, signed_at)


def topic_label(cfg: Config, topic: str) -> str:
    """The ``topic`` label of a full topic name: its base name, without ``CVM_TOPIC_PREFIX``."""
    return topic.removeprefix(cfg.topic_prefix)


# --- exposition ----------------------------------------------------------------------------------------------------


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)


def sample_sums(families: Iterable[Any], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (parsed families; tests, tools)."""
    total = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (a name counts as exposed).

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time)."""
    return header is not None and hmac.compare_digest(header.strip().encode(), f"Bearer {token}".encode())


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """``GET /metrics`` on a background thread; :meth:`stop` closes it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else "::1" if self.host == "::" else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _guarded(app: Callable[..., Any], token: str | None) -> Callable[..., Any]:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if token is not None and not bearer_ok(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"send 'Authorization: Bearer <token>' (CVM_HTTP_TOKEN)\n"]
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"see /metrics\n"]
        return app(environ, start_response)

    return guarded


def serve(cfg: Config, port: int, setting: str, registry: CollectorRegistry = REGISTRY) -> MetricsServer | None:
    """Serve ``/metrics`` on ``CVM_METRICS_HOST:port`` from a daemon thread; None when ``port`` is 0 (off).

    ``setting`` names the port's variable for the one-line errors: :class:`PortInUse` when the port is taken,
    :class:`ConfigError` when the host cannot be bound or is beyond loopback without ``CVM_HTTP_TOKEN``.
    """
    if port == 0:
        return None
    host = cfg.metrics_host
    token = None if is_loopback(host) else cfg.http_token
    if token == "":
        raise ConfigError(
            f"/metrics would listen on {host or 'every address'}, beyond this machine, without a token: set "
            "CVM_HTTP_TOKEN (Prometheus sends 'Authorization: Bearer <token>'), or bind CVM_METRICS_HOST=127.0.0.1"
        )
    try:
        server = make_server(
            host,
            port,
            _guarded(make_wsgi_app(registry), token),
            server_class=_V6Server if ":" in host else _Server,
            handler_class=_Quiet,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} (/metrics) is in use: set {setting} to a free port, or 0 for none") from None
        raise ConfigError(
            f"cannot serve /metrics on {host}:{port} ({exc.strerror or exc}): check CVM_METRICS_HOST"
        ) from None
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="cvm-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread, host)
