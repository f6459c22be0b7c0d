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

from cvm.exceptions import ConfigError

__all__ = ["Config", "EVENT_TOPICS"]

#: The upstream topics, in the order cvm lists them everywhere.
EVENT_TOPICS = ("transactions", "contacts", "payments")

DEFAULT_CONTACT_COSTS = {"phone": 6.0, "email": 2.5, "chat": 3.0, "web": 0.5, "store": 8.0}


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
    topic_prefix: str = _f("", "CVM_TOPIC_PREFIX", "Prefix of every topic name (several deployments, one cluster).")
    partitions: int = _f(4, "CVM_PARTITIONS", "Partitions of the co-partitioned event topics.")
    replication_factor: int = _f(1, "CVM_REPLICATION_FACTOR", "Replication factor of topics cvm creates.")
    app_id: str = _f("cvm", "CVM_APP_ID", "Faust application id: consumer group and changelog topic prefix.")
    store: str = _f("auto", "CVM_STORE", "Worker table store: rocksdb, memory, or auto (rocksdb when available).")
    http_host: str = _f("127.0.0.1", "CVM_HTTP_HOST", "Address the sink's HTTP API binds to.")
    http_port: int = _f(8080, "CVM_HTTP_PORT", "Port of the sink's HTTP API and dashboard.")
    http_token: str = _f("", "CVM_HTTP_TOKEN", "Bearer token required by /api/sql when bound beyond loopback.")
    default_margin_rate: float = _f(
        0.30, "CVM_DEFAULT_MARGIN_RATE", "Gross margin rate applied to a transaction that carries no margin."
    )
    contact_costs: dict[str, float] = _f(
        DEFAULT_CONTACT_COSTS,
        "CVM_CONTACT_COSTS",
        "Cost of a contact per channel when the event carries none (env: 'phone=6,email=2.5').",
    )
    allowed_lateness_s: float = _f(
        3 * 86400.0, "CVM_ALLOWED_LATENESS_S", "How far behind a customer's stream time an event may arrive."
    )
    sink_batch_rows: int = _f(20000, "CVM_SINK_BATCH_ROWS", "The sink writes a table's batch at this many rows.")
    sink_flush_s: float = _f(0.5, "CVM_SINK_FLUSH_S", "The sink writes what it holds at least this often.")
    worker_batch: int = _f(2000, "CVM_WORKER_BATCH", "Events a worker takes from its stream at once.")
    worker_batch_s: float = _f(0.2, "CVM_WORKER_BATCH_S", "Longest wait for a worker batch to fill.")
    kafka_security_protocol: str = _f(
        "", "CVM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; empty means PLAINTEXT."
    )
    kafka_sasl_mechanism: str = _f("", "CVM_KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str = _f("", "CVM_KAFKA_SASL_USERNAME", "SASL user name.")
    kafka_sasl_password: str = _f("", "CVM_KAFKA_SASL_PASSWORD", "SASL password (never logged).")
    kafka_ssl_cafile: str = _f("", "CVM_KAFKA_SSL_CAFILE", "CA bundle for TLS to Kafka.")
    log_level: str = _f("WARNING", "CVM_LOG_LEVEL", "Log level of cvm processes.")

    def __post_init__(self) -> None:
        if not 0 <= self.allowed_lateness_s <= 49 * 86400:
            raise ConfigError(f"allowed_lateness_s={self.allowed_lateness_s}: must be between 0 and 49 days")
        if self.partitions < 1:
            raise ConfigError(f"partitions={self.partitions}: must be at least 1")

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
            if f.name in ("kafka_sasl_password", "http_token") and value:
                value = "***"
            shown[f.name] = str(value)
        shown["clickhouse_url"] = _mask_url(self.clickhouse_dsn)
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
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}={value!r} is not a valid {typ}") from None
