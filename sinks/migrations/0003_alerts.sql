-- Alerts collapse per episode (docs/alerts.md): an alert is raised once per (customer, rule, episode), and the
-- episode id is made of event times, so a worker that re-emits an alert (redelivery, replay of the same history)
-- writes the same key again. ReplacingMergeTree on that key makes the repeat disappear when read with FINAL.
-- Not partitioned by month: a repeat's alert_time may differ from the original's, and ReplacingMergeTree only
-- collapses rows inside one partition. The table stays small (alerts are rare), so one partition is fine.
-- CREATE OR REPLACE ... AS SELECT keeps the rows of the 0001 table and is safe to apply again (Atomic database).
CREATE OR REPLACE TABLE {db}.alerts
(
    alert_time DateTime64(3, 'UTC'),
    customer_id String,
    rule LowCardinality(String),
    severity LowCardinality(String),
    reasons Array(String),
    scores String,
    episode String
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, rule, episode)
SETTINGS non_replicated_deduplication_window = 1000
AS SELECT alert_time, customer_id, rule, severity, reasons, scores, episode FROM {db}.alerts;
