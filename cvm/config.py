"""One frozen configuration object, built once per process and passed down.

Precedence: defaults < TOML file (``CVM_CONFIG`` or ``--config``) < environment variables. Every field has a
default, a docstring (the ``doc`` metadata) and an environment variable.

>>> cfg = Config.load(env={"CVM_DATA_DIR": "/tmp/x", "CVM_TOPIC_PREFIX": "t1-"})
>>> cfg.clickhouse_dsn
'chdb:///tmp/x/clickhouse'
>>> cfg.topic("transactions")
't1-transactions'
>>> cfg.embedded_broker, cfg.bootstrap
(True, '127.0.0.1:9092')
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvm.events import parse_time
from cvm.exceptions import ConfigError

__all__ = ["Config", "EVENT_TOPICS"]

#: The upstream topics, in the order cvm lists them everywhere.
EVENT_TOPICS = ("transactions", "contacts", "payments")

DEFAULT_CONTACT_COSTS = {"phone": 6.0, "email": 2.5, "chat": 3.0, "web": 0.5, "store": 8.0}

#: librdkafka's ``compression.type`` values (``CVM_KAFKA_COMPRESSION``).
KAFKA_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


def _f(default: Any, env: str, doc: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"env": env, "doc": doc})
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Config:
    """Settings of every cvm process. Build it with :meth:`Config.load`."""

    data_dir: str = _f("./data", "CVM_DATA_DIR", "Where embedded state lives: ClickHouse files, worker tables.")
    kafka_bootstrap: str = _f(
        "", "CVM_KAFKA_BOOTSTRAP", "Kafka bootstrap servers; empty means the embedded Tansu broker."
    )
    broker_port: int = _f(9092, "CVM_BROKER_PORT", "Port of the embedded broker on 127.0.0.1.")
    clickhouse_url: str = _f(
        "",
        "CVM_CLICKHOUSE_URL",
        "chdb:///abs/path (embedded) or http(s)://user:pass@host:8123; empty means chdb://$CVM_DATA_DIR/clickhouse.",
    )
    clickhouse_database: str = _f("cvm", "CVM_CLICKHOUSE_DATABASE", "ClickHouse database holding cvm's tables.")
    schema_registry_url: str = _f(
        "", "CVM_SCHEMA_REGISTRY_URL", "Confluent Schema Registry; empty means the local registry in schemas/."
    )
    schema_registry_wait_s: float = _f(
        60.0,
        "CVM_SCHEMA_REGISTRY_WAIT_S",
        "How long a worker or sink waits, retrying, for the Schema Registry to answer for a new writer schema before "
        "it stops (its records are never dead-lettered for that); at most 240.",
    )
    topic_prefix: str = _f("", "CVM_TOPIC_PREFIX", "Prefix of every topic name (several deployments, one cluster).")
    partitions: int = _f(4, "CVM_PARTITIONS", "Partitions of the co-partitioned event topics.")
    replication_factor: int = _f(1, "CVM_REPLICATION_FACTOR", "Replication factor of topics cvm creates.")
    app_id: str = _f("cvm", "CVM_APP_ID", "Application id: the workers' consumer group and changelog topic prefix.")
    http_host: str = _f("127.0.0.1", "CVM_HTTP_HOST", "Address the sink's HTTP API binds to.")
    http_port: int = _f(8080, "CVM_HTTP_PORT", "Port of the sink's HTTP API and dashboard.")
    http_token: str = _f(
        "",
        "CVM_HTTP_TOKEN",
        "Bearer token every /api route and /metrics require when bound beyond loopback (sink, workers, learner).",
    )
    default_margin_rate: float = _f(
        0.30, "CVM_DEFAULT_MARGIN_RATE", "Gross margin rate applied to a transaction that carries no margin."
    )
    clv_horizon_days: float = _f(
        365.0, "CVM_CLV_HORIZON_DAYS", "Horizon of the CLV and of the expected purchases, in days."
    )
    clv_discount_rate: float = _f(0.10, "CVM_CLV_DISCOUNT_RATE", "Annual discount rate of the CLV (0.10: 10%).")
    contact_costs: dict[str, float] = _f(
        DEFAULT_CONTACT_COSTS,
        "CVM_CONTACT_COSTS",
        "Cost of a contact per channel when the event carries none (env: 'phone=6,email=2.5').",
    )
    clv_period_days: int = _f(
        1, "CVM_CLV_PERIOD_DAYS", "Length of a purchase occasion in days: purchases within one period count once."
    )
    clv_refit_min_customers: int = _f(50, "CVM_CLV_REFIT_MIN_CUSTOMERS", "Customers needed before the first CLV fit.")
    clv_refit_change: float = _f(
        0.05,
        "CVM_CLV_REFIT_CHANGE",
        "Share of customers whose purchases changed since the last fit that triggers a refit.",
    )
    tier_by: str = _f(
        "clv",
        "CVM_TIER_BY",
        "What value tiers rank customers on: clv (profitability until the first CLV fit) or profitability.",
    )
    tier_a_share: float = _f(0.2, "CVM_TIER_A_SHARE", "Share of customers in value tier A (the most valuable).")
    tier_b_share: float = _f(0.3, "CVM_TIER_B_SHARE", "Share of customers in value tier B; the rest is tier C.")
    allowed_lateness_s: float = _f(
        3 * 86400.0, "CVM_ALLOWED_LATENESS_S", "How far behind a customer's stream time an event may arrive."
    )
    sink_batch_rows: int = _f(20000, "CVM_SINK_BATCH_ROWS", "The sink writes a table's batch at this many rows.")
    sink_flush_s: float = _f(0.5, "CVM_SINK_FLUSH_S", "The sink writes what it holds at least this often.")
    worker_batch: int = _f(
        10000, "CVM_WORKER_BATCH", "Most events a worker scores in one batch (fewer when they come slower)."
    )
    worker_batch_s: float = _f(0.2, "CVM_WORKER_BATCH_S", "Longest wait for a worker batch to fill.")
    worker_trim_s: float = _f(
        10.0,
        "CVM_WORKER_TRIM_S",
        "Seconds between a worker's returns of freed memory to the system (glibc malloc_trim); 0 never.",
    )
    kafka_security_protocol: str = _f(
        "", "CVM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; empty means PLAINTEXT."
    )
    kafka_sasl_mechanism: str = _f("", "CVM_KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str = _f("", "CVM_KAFKA_SASL_USERNAME", "SASL user name.")
    kafka_sasl_password: str = _f("", "CVM_KAFKA_SASL_PASSWORD", "SASL password (never logged).")
    kafka_ssl_cafile: str = _f("", "CVM_KAFKA_SSL_CAFILE", "CA bundle for TLS to Kafka.")
    kafka_compression: str = _f(
        "zstd",
        "CVM_KAFKA_COMPRESSION",
        "Compression of what the workers and the learner write (scores, alerts, labels, states, models): none, gzip,"
        " snappy, lz4 or zstd. With zstd the embedded broker held 99 MB instead of 251 after `cvm up`'s history and"
        " grew 3.1 MB a minute live instead of 4.7, at no throughput cost measured (docs/benchmarks.md). Publishers of"
        " events choose their own.",
    )
    log_level: str = _f("WARNING", "CVM_LOG_LEVEL", "Log level of cvm processes.")
    # Churn learning (docs/churn.md): scoring.labels.label_rules and PendingLabels take these.
    churn_silence_days: float = _f(
        45.0, "CVM_CHURN_SILENCE_DAYS", "Event-time days without a purchase, after the offset, that mean churned."
    )
    churn_offset_days: float = _f(
        30.0, "CVM_CHURN_OFFSET_DAYS", "Horizon of churn_probability: the label says gone by snapshot + this."
    )
    churn_early_offset_days: float = _f(
        60.0, "CVM_CHURN_EARLY_OFFSET_DAYS", "Horizon of churn_probability_60d, the alerts' head (0: no such head)."
    )

    churn_cancel_grace_days: float = _f(
        30.0, "CVM_CHURN_CANCEL_GRACE_DAYS", "Days after a cancellation request without a purchase that mean churned."
    )
    churn_snapshot_every_days: float = _f(
        30.0, "CVM_CHURN_SNAPSHOT_EVERY_DAYS", "Event-time days between a customer's churn snapshots."
    )
    churn_max_pending: int = _f(4, "CVM_CHURN_MAX_PENDING", "Snapshots a customer keeps waiting for their labels.")
    churn_model: str = _f("logreg", "CVM_CHURN_MODEL", "Churn model: logreg, hat (Hoeffding tree) or arf (forest).")
    idle_partition_s: float = _f(
        10.0,
        "CVM_IDLE_PARTITION_S",
        "Seconds without events after which a partition no longer holds stream time back (once every partition is,"
        " the idle scoring brings every customer up to the last tick).",
    )
    # Stream time (streams/clock.py): ticks drive alerts, labels, re-scoring and model versions, in event time.
    tick_s: float = _f(
        3600.0,
        "CVM_TICK_S",
        "Event-time seconds between stream-time ticks: alerts, churn labels and re-scoring move on this grid.",
    )
    model_every_days: float = _f(
        7.0,
        "CVM_MODEL_EVERY_DAYS",
        "Event-time days between model versions (churn training, CLV refits); a multiple of the tick.",
    )
    model_rescore_spread_s: float = _f(
        86400.0,
        "CVM_MODEL_RESCORE_SPREAD_S",
        "Event-time seconds over which a new model version re-scores every customer, a share at each tick (each "
        "customer at a fixed slot), so that no tick stalls on the whole population; a multiple of the tick (the tick "
        "itself: everyone at once).",
    )
    model_wait_s: float = _f(
        120.0,
        "CVM_MODEL_WAIT_S",
        "Longest wait of a worker for the model version of its stream time while a learner runs; then it goes on "
        "with the newest version it has (logged and counted).",
    )
    # Alerts (docs/alerts.md): scoring.alerts.AlertRules takes the alert_* settings by name.
    alert_rules: str = _f(
        "high_value_at_risk,p_alive_drop,cancellation_request",
        "CVM_ALERT_RULES",
        "Alert rules that are on, comma-separated (a TOML list works too); none turns alerts off.",
    )
    alert_churn_threshold: float = _f(
        0.2,
        "CVM_ALERT_CHURN_THRESHOLD",
        "Chance of leaving (alert_churn_score) at which a high-value customer is at risk.",
    )
    alert_churn_score: str = _f(
        "churn_probability_60d", "CVM_ALERT_CHURN_SCORE", "The churn score high_value_at_risk reads."
    )
    alert_churn_days: float = _f(60.0, "CVM_ALERT_CHURN_DAYS", "Horizon of alert_churn_score, in days (its wording).")
    alert_churn_hysteresis: float = _f(
        0.02, "CVM_ALERT_CHURN_HYSTERESIS", "How far below the threshold the churn score must fall to end an episode."
    )
    alert_high_value_days: float = _f(
        180.0, "CVM_ALERT_HIGH_VALUE_DAYS", "A customer of tier A at a scoring within these days counts as high value."
    )
    alert_episode_days: float = _f(
        60.0, "CVM_ALERT_EPISODE_DAYS", "A customer still at risk this long after its alert is raised again (0: never)."
    )
    alert_critical_value_percentile: float = _f(
        0.95, "CVM_ALERT_CRITICAL_VALUE_PERCENTILE", "CLV percentile (value at stake) of a critical alert."
    )
    alert_hysteresis: float = _f(
        0.1, "CVM_ALERT_HYSTERESIS", "How far back past P(alive)'s low mark a customer must recover to end an episode."
    )
    alert_critical_probability: float = _f(
        0.8, "CVM_ALERT_CRITICAL_PROBABILITY", "1 - P(alive) that makes a p_alive_drop alert critical."
    )
    alert_profit_percentile: float = _f(
        0.0, "CVM_ALERT_PROFIT_PERCENTILE", "Also high value: profit_percentile at or above it (0.95: top 5%; 0: off)."
    )
    alert_p_alive_high: float = _f(0.8, "CVM_ALERT_P_ALIVE_HIGH", "P(alive) a sharp fall starts from.")
    alert_p_alive_low: float = _f(0.4, "CVM_ALERT_P_ALIVE_LOW", "P(alive) a sharp fall ends at or below.")
    alert_p_alive_window_days: float = _f(
        30.0, "CVM_ALERT_P_ALIVE_WINDOW_DAYS", "Days within which a fall over several scorings still counts as sharp."
    )
    alert_cancellation_window_days: float = _f(
        30.0, "CVM_ALERT_CANCELLATION_WINDOW_DAYS", "Days a cancellation request keeps its episode open."
    )
    alert_cooldown_days: float = _f(
        7.0, "CVM_ALERT_COOLDOWN_DAYS", "Event-time days after an episode ends before the same rule alerts again."
    )
    alert_webhook_url: str = _f("", "CVM_ALERT_WEBHOOK_URL", "POST each alert as JSON to this URL; empty = off.")
    alert_webhook_attempts: int = _f(5, "CVM_ALERT_WEBHOOK_ATTEMPTS", "Tries per alert, with exponential backoff.")
    alert_webhook_queue: int = _f(
        1000, "CVM_ALERT_WEBHOOK_QUEUE", "Alerts waiting for the webhook at most; when full the oldest is dropped."
    )
    alert_webhook_max_age_days: float = _f(
        7.0,
        "CVM_ALERT_WEBHOOK_MAX_AGE_DAYS",
        "Post only alerts whose event time is at most this many days before the wall clock (older ones, e.g. of a "
        "backfill, are stored and counted, not posted); 0 = post all.",
    )
    # Operations (README "Operations"): metrics, model signing, logs.
    metrics_host: str = _f(
        "127.0.0.1",
        "CVM_METRICS_HOST",
        "Address the /metrics of workers and the learner bind to (the sink serves /metrics on its HTTP API).",
    )
    worker_metrics_port: int = _f(
        9110, "CVM_WORKER_METRICS_PORT", "Port of a worker's /metrics (cvm up: worker N gets it + N - 1); 0 = off."
    )
    learner_metrics_port: int = _f(9109, "CVM_LEARNER_METRICS_PORT", "Port of the learner's /metrics; 0 = off.")
    model_key: str = _f(
        "",
        "CVM_MODEL_KEY",
        "HMAC key(s) of model messages, comma-separated: the first signs, any verifies; empty = a key generated in "
        "$CVM_DATA_DIR/model.key (embedded broker only).",
    )
    log_format: str = _f("text", "CVM_LOG_FORMAT", "Log lines as text, or json (one JSON object per line).")
    # Upstream as it is (issue 15): how far back history goes, and money in other currencies (scoring.currency).
    min_event_time: str = _f(
        "1970-01-01T00:00:00Z",
        "CVM_MIN_EVENT_TIME",
        "Earliest event time accepted as history (ISO-8601, 1970-01-01 or later); earlier events are dead letters.",
    )
    base_currency: str = _f("EUR", "CVM_BASE_CURRENCY", "Currency of every money figure cvm computes (ISO 4217 code).")
    fx_rates: str = _f(
        "",
        "CVM_FX_RATES",
        "CSV file of exchange rates (date,currency,rate_to_base); empty: other currencies than the base are dead "
        "letters.",
    )
    fx_max_age_days: float = _f(
        7.0, "CVM_FX_MAX_AGE_DAYS", "Days a rate stays in use after its date when no newer one exists."
    )
    # Restart continuity (issue 14): streams/table.py.
    table_checkpoint_s: float = _f(
        300.0,
        "CVM_TABLE_CHECKPOINT_S",
        "Seconds between local checkpoints of a worker's table (one is also taken when it gives partitions up).",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.allowed_lateness_s <= 49 * 86400:
            raise ConfigError(f"allowed_lateness_s={self.allowed_lateness_s}: must be between 0 and 49 days")
        if not 1 <= self.clv_period_days <= 7:
            raise ConfigError(f"clv_period_days={self.clv_period_days}: must be between 1 and 7")
        if self.tier_by not in ("clv", "profitability"):
            raise ConfigError(f"tier_by={self.tier_by!r}: must be clv or profitability")
        if not (0 < self.tier_a_share and 0 <= self.tier_b_share and self.tier_a_share + self.tier_b_share < 1):
            raise ConfigError("tier_a_share and tier_b_share must be positive shares that add up to less than 1")
        if self.partitions < 1:
            raise ConfigError(f"partitions={self.partitions}: must be at least 1")
        if self.kafka_compression not in KAFKA_COMPRESSIONS:
            raise ConfigError(
                f"kafka_compression={self.kafka_compression!r}: must be one of {', '.join(KAFKA_COMPRESSIONS)}"
            )
        if self.churn_model not in ("logreg", "hat", "arf"):  # scoring.churn.MODELS, without importing river
            raise ConfigError(f"churn_model={self.churn_model!r}: must be logreg, hat or arf")
        if self.tick_s < 1 or self.model_every_days * 86400 % self.tick_s:
            raise ConfigError(f"tick_s={self.tick_s:g} must be at least 1 and divide model_every_days * 86400")
        if self.model_rescore_spread_s < self.tick_s or self.model_rescore_spread_s % self.tick_s:
            raise ConfigError(
                f"model_rescore_spread_s={self.model_rescore_spread_s:g} must be a multiple of tick_s={self.tick_s:g}"
            )
        if self.churn_silence_days <= 0 or self.churn_cancel_grace_days < 0 or self.churn_max_pending < 1:
            raise ConfigError("churn_silence_days must be > 0, churn_cancel_grace_days >= 0, churn_max_pending >= 1")
        if self.churn_offset_days < 0 or self.churn_early_offset_days < 0:
            raise ConfigError("churn_offset_days and churn_early_offset_days must be >= 0 (0: no early head)")
        self._check_alerts()
        self._check_upstream()

    def _check_alerts(self) -> None:
        from scoring.alerts import AlertRules  # pure and dependency-free: the rules own their validation

        try:
            AlertRules.from_config(self)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.alert_webhook_url and not self.alert_webhook_url.startswith(("http://", "https://")):
            raise ConfigError("alert_webhook_url must start with http:// or https://")
        if self.alert_webhook_attempts < 1 or self.alert_webhook_queue < 1:
            raise ConfigError("alert_webhook_attempts and alert_webhook_queue must be at least 1")
        if not self.alert_webhook_max_age_days >= 0:
            raise ConfigError("alert_webhook_max_age_days must be 0 (post every alert) or more")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format={self.log_format!r}: must be text or json (CVM_LOG_FORMAT)")

    def _check_upstream(self) -> None:
        try:
            floor = self.min_event_time_ms
        except ValueError:
            raise ConfigError(
                f"min_event_time={self.min_event_time!r} is not an ISO-8601 time, e.g. 1990-01-01T00:00:00Z"
            ) from None
        if floor < 0:
            raise ConfigError(f"min_event_time={self.min_event_time!r}: must be 1970-01-01 or later")
        code = self.base_currency
        if len(code) != 3 or not code.isalpha() or not code.isupper():
            raise ConfigError(f"base_currency={code!r}: expected a 3-letter ISO 4217 code in capitals, e.g. EUR")
        if self.fx_max_age_days < 0:
            raise ConfigError(f"fx_max_age_days={self.fx_max_age_days}: must be at least 0")
        if self.worker_trim_s < 0:
            raise ConfigError(f"worker_trim_s={self.worker_trim_s:g}: must be at least 0 (0: never)")
        if not 0 < self.schema_registry_wait_s <= 240:  # a worker that does not poll for 300 s leaves its group
            raise ConfigError(
                f"schema_registry_wait_s={self.schema_registry_wait_s:g}: must be more than 0 and at most 240 "
                "(CVM_SCHEMA_REGISTRY_WAIT_S)"
            )

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
        """Defaults, then the TOML file (``path`` or ``$CVM_CONFIG``), then the environment."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = path or env.get("CVM_CONFIG") or None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if path:
            try:
                with open(path, "rb") as fh:
                    doc = tomllib.load(fh)
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist: fix --config or CVM_CONFIG") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
            section = doc.get("cvm", doc)
            for key, value in section.items():
                if key not in fields:
                    raise ConfigError(f"config file {path}: unknown setting {key!r}")
                values[key] = value
        for name, f in fields.items():
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[name] = _parse(name, f.type, raw, f.metadata["env"])
        for name, value in values.items():
            values[name] = _coerce(name, fields[name].type, value)
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process load this same configuration."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            out[f.metadata["env"]] = str(value)
        return out

    # --- derived settings ---------------------------------------------------------------------------------------

    @property
    def embedded_broker(self) -> bool:
        """True when no external Kafka is configured: cvm runs (or expects) Tansu on 127.0.0.1."""
        return not self.kafka_bootstrap

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers clients connect to."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().absolute()

    @property
    def clickhouse_dsn(self) -> str:
        """The ClickHouse DSN with the embedded default filled in."""
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{self.data_path / 'clickhouse'}"

    @property
    def min_event_time_ms(self) -> int:
        """The floor of event times in milliseconds (``cvm.events.validate``'s ``floor_ms``)."""
        return parse_time(self.min_event_time)

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb://")

    def topic(self, name: str) -> str:
        """The full name of one of cvm's topics."""
        return f"{self.topic_prefix}{name}"

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every confluent-kafka client (bootstrap and security)."""
        conf = {"bootstrap.servers": self.bootstrap}
        if self.kafka_security_protocol:
            conf["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = self.kafka_ssl_cafile
        return conf

    def describe(self) -> dict[str, str]:
        """Settings for display, with secrets masked."""
        shown = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("kafka_sasl_password", "http_token", "model_key") and value:
                value = "***"
            shown[f.name] = str(value)
        shown["clickhouse_url"] = _mask_url(self.clickhouse_dsn)
        if self.alert_webhook_url:  # webhook URLs often carry their secret in the path or query
            scheme, _, rest = self.alert_webhook_url.partition("://")
            shown["alert_webhook_url"] = f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}/***"
        return shown


def _mask_url(url: str) -> str:
    """Hide the password of a URL.

    >>> _mask_url("http://default:secret@ch:8123")
    'http://default:***@ch:8123'
    """
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        return f"{scheme}://{cred}@{host}"
    return url


def _parse(name: str, typ: Any, raw: str, env: str) -> Any:
    if "dict" in str(typ):
        out = {}
        for part in raw.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(f"{env}={raw!r}: expected 'key=value,key=value'")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        return out
    return raw


def _coerce(name: str, typ: Any, value: Any) -> Any:
    typ = str(typ)
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
        if typ.startswith("dict"):
            return {str(k): float(v) for k, v in dict(value).items()}
        if isinstance(value, list):  # a TOML list for a comma-separated setting
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}={value!r} is not a valid {typ}") from None
