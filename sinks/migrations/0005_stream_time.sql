-- Stream time (streams/score.py): `n_events` counts the events applied to the customer; `version` orders its scores
-- (events applied, then the stream time `as_of` in seconds, then what scored the row: event < tick < idle), so the
-- replacing tables keep the latest score whatever the order rows arrive in. `scored_by` came with migration 0004.
ALTER TABLE {db}.{score_table}
    ADD COLUMN IF NOT EXISTS n_events UInt32 AFTER version;

-- Churn with two heads (docs/churn.md): the chance of being gone within 60 days, which high_value_at_risk reads, and
-- the CLV percentile the value tier comes from.
ALTER TABLE {db}.{score_table}
    ADD COLUMN IF NOT EXISTS churn_probability_60d Nullable(Float64) AFTER churn_probability,
    ADD COLUMN IF NOT EXISTS clv_percentile Nullable(Float64) AFTER clv;

-- Signals of leaving and the long-run baselines they are measured against (scoring.features.leaving; docs/features.md).
ALTER TABLE {db}.{score_table}
    ADD COLUMN IF NOT EXISTS purchases_365d Float64,
    ADD COLUMN IF NOT EXISTS spend_365d Float64,
    ADD COLUMN IF NOT EXISTS contacts_365d Float64,
    ADD COLUMN IF NOT EXISTS complaints_365d Float64,
    ADD COLUMN IF NOT EXISTS unresolved_30d Float64,
    ADD COLUMN IF NOT EXISTS unresolved_365d Float64,
    ADD COLUMN IF NOT EXISTS refunds_90d Float64,
    ADD COLUMN IF NOT EXISTS late_payments_90d Float64,
    ADD COLUMN IF NOT EXISTS typical_gap_days Float64,
    ADD COLUMN IF NOT EXISTS silence_gaps Float64,
    ADD COLUMN IF NOT EXISTS silence_rate Float64,
    ADD COLUMN IF NOT EXISTS purchases_vs_usual Float64,
    ADD COLUMN IF NOT EXISTS spend_vs_usual Float64,
    ADD COLUMN IF NOT EXISTS contacts_vs_usual Float64,
    ADD COLUMN IF NOT EXISTS complaints_vs_usual Float64,
    ADD COLUMN IF NOT EXISTS unresolved_vs_usual Float64,
    ADD COLUMN IF NOT EXISTS recent_cancellation Float64,
    ADD COLUMN IF NOT EXISTS days_since_cancellation Float64,
    ADD COLUMN IF NOT EXISTS days_since_contact Float64;
