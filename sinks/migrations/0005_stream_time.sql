-- Stream time (streams/score.py): `n_events` counts the events applied to the customer; `version` orders its scores
-- (events applied, then the stream time `as_of` in seconds, then what scored the row: event < tick < idle), so the
-- replacing tables keep the latest score whatever the order rows arrive in. `scored_by` came with migration 0004.
ALTER TABLE {db}.{score_table}
    ADD COLUMN IF NOT EXISTS n_events UInt32 AFTER version;
