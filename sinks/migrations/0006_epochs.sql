-- Broker incarnations ("epochs", cvm/epoch.py) and what a restore needs from the raw tables (cvm/restore.py).
-- A broker that lost its topics starts every partition at offset 0 again: (topic, partition, offset) names a record
-- only together with the epoch it was read in.

-- One row per epoch: its number (one above every epoch before it), the id written on the broker, and how its
-- restore went (none: nothing to restore; publishing, published: under way; restored: done).
CREATE TABLE IF NOT EXISTS {db}.epochs
(
    epoch UInt32,
    id String,
    created DateTime64(3, 'UTC'),
    state LowCardinality(String),
    events UInt64,
    seconds Float64,
    boundaries String,
    updated DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated)
ORDER BY id
SETTINGS non_replicated_deduplication_window = 1000;

-- The raw tables keep the epoch of each record, and of two copies of one event (an upstream duplicate, the same
-- file replayed twice) the FIRST one read: the one the worker applied. ingest_rank falls with (epoch, offset), and
-- ReplacingMergeTree keeps the highest. Rows written before this migration have epoch 0.
-- The engine changes through a copy: every step is idempotent, so an interrupted migration is simply applied again.
ALTER TABLE {db}.transactions
    ADD COLUMN IF NOT EXISTS epoch UInt32,
    ADD COLUMN IF NOT EXISTS ingest_rank UInt64 MATERIALIZED bitNot(bitOr(bitShiftLeft(toUInt64(epoch), 40), offset));
CREATE OR REPLACE TABLE {db}.transactions__first AS {db}.transactions
ENGINE = ReplacingMergeTree(ingest_rank)
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
INSERT INTO {db}.transactions__first SELECT * FROM {db}.transactions;
EXCHANGE TABLES {db}.transactions AND {db}.transactions__first;
DROP TABLE {db}.transactions__first;

ALTER TABLE {db}.contacts
    ADD COLUMN IF NOT EXISTS epoch UInt32,
    ADD COLUMN IF NOT EXISTS ingest_rank UInt64 MATERIALIZED bitNot(bitOr(bitShiftLeft(toUInt64(epoch), 40), offset));
CREATE OR REPLACE TABLE {db}.contacts__first AS {db}.contacts
ENGINE = ReplacingMergeTree(ingest_rank)
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
INSERT INTO {db}.contacts__first SELECT * FROM {db}.contacts;
EXCHANGE TABLES {db}.contacts AND {db}.contacts__first;
DROP TABLE {db}.contacts__first;

ALTER TABLE {db}.payments
    ADD COLUMN IF NOT EXISTS epoch UInt32,
    ADD COLUMN IF NOT EXISTS ingest_rank UInt64 MATERIALIZED bitNot(bitOr(bitShiftLeft(toUInt64(epoch), 40), offset));
CREATE OR REPLACE TABLE {db}.payments__first AS {db}.payments
ENGINE = ReplacingMergeTree(ingest_rank)
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
INSERT INTO {db}.payments__first SELECT * FROM {db}.payments;
EXCHANGE TABLES {db}.payments AND {db}.payments__first;
DROP TABLE {db}.payments__first;

-- Where a late event or a dead letter was read: its offset means something only with its epoch.
ALTER TABLE {db}.late_events ADD COLUMN IF NOT EXISTS epoch UInt32;
ALTER TABLE {db}.dead_letters ADD COLUMN IF NOT EXISTS epoch UInt32;
