-- cvm's tables. `{db}` is replaced by the configured database (CVM_CLICKHOUSE_DATABASE) when applied.
-- Every statement is idempotent (IF NOT EXISTS): a migration interrupted half-way is simply applied again.
-- Every MergeTree table has non_replicated_deduplication_window > 0: without it chDB and a single-node server
-- ignore insert_deduplication_token, and the sink's retried inserts would write twice.

-- Raw events: one column per Avro field (schemas/*.avsc), plus where the record came from.
-- ReplacingMergeTree on (customer_id, event_id): an upstream duplicate collapses when read with FINAL.
CREATE TABLE IF NOT EXISTS {db}.transactions
(
    event_id String,
    customer_id String,
    event_time DateTime64(3, 'UTC'),
    amount Float64,
    currency LowCardinality(String),
    gross_margin Nullable(Float64),
    channel LowCardinality(String),
    category LowCardinality(String),
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.contacts
(
    event_id String,
    customer_id String,
    event_time DateTime64(3, 'UTC'),
    channel LowCardinality(String),
    reason LowCardinality(String),
    handle_time_s Float64,
    resolved Bool,
    cost Nullable(Float64),
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.payments
(
    event_id String,
    customer_id String,
    event_time DateTime64(3, 'UTC'),
    invoice_id String,
    amount_due Float64,
    amount_paid Float64,
    due_date DateTime64(3, 'UTC'),
    paid_date Nullable(DateTime64(3, 'UTC')),
    status LowCardinality(String),
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    ingested_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Each customer's latest scores: the highest version wins (read with FINAL or argMax).
-- Feature columns are added by later migrations; the sink maps score JSON keys onto whatever columns exist.
CREATE TABLE IF NOT EXISTS {db}.customers
(
    customer_id String,
    version UInt64,
    as_of DateTime64(3, 'UTC'),
    revenue Float64,
    gross_margin Float64,
    n_transactions UInt32,
    n_contacts UInt32,
    n_payments UInt32,
    first_event_time DateTime64(3, 'UTC'),
    last_event_time DateTime64(3, 'UTC'),
    cost_to_serve Float64,
    profitability Float64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer_id
SETTINGS non_replicated_deduplication_window = 1000;

-- Every score message ever emitted: the history behind `customers`.
-- Same columns as `customers`, by construction: a feature migration alters both.
CREATE TABLE IF NOT EXISTS {db}.customer_scores AS {db}.customers
ENGINE = MergeTree
PARTITION BY toYYYYMM(updated_at)
ORDER BY (customer_id, version)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_time DateTime64(3, 'UTC'),
    customer_id String,
    rule LowCardinality(String),
    severity LowCardinality(String),
    reasons Array(String),
    scores String,
    episode String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(alert_time)
ORDER BY (customer_id, alert_time)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {db}.model_metrics
(
    time DateTime64(3, 'UTC'),
    model_version UInt32,
    metric LowCardinality(String),
    value Float64
)
ENGINE = MergeTree
ORDER BY (metric, time)
SETTINGS non_replicated_deduplication_window = 1000;

-- Records the worker could not decode or validate, with the reason; raw is base64 and bounded.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    time DateTime64(3, 'UTC'),
    topic LowCardinality(String),
    partition Int32,
    offset Int64,
    key String,
    raw String,
    error_class LowCardinality(String),
    error String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (topic, time)
SETTINGS non_replicated_deduplication_window = 1000;

-- Events later than the allowed lateness: kept for audit, never applied to a customer's state.
CREATE TABLE IF NOT EXISTS {db}.late_events
(
    time DateTime64(3, 'UTC'),
    topic LowCardinality(String),
    partition Int32,
    offset Int64,
    customer_id String,
    event_id String,
    event_time DateTime64(3, 'UTC'),
    stream_time DateTime64(3, 'UTC'),
    lateness_ms Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (customer_id, event_time)
SETTINGS non_replicated_deduplication_window = 1000;
