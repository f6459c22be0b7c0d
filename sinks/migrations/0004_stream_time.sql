-- What occasioned each score (streams/score.py): `event` (a customer's own events, fresh figures between two ticks),
-- `tick` (a stream-time tick: the reproducible scores, with alerts and labels), `idle` (everyone as of the latest
-- event time once the stream is idle). `as_of` is the stream time a score holds at; `last_event_time` stays the
-- customer's latest event. `n_events` counts the events applied to the customer; `version` orders its scores (events
-- applied, then stream time, then occasion).
ALTER TABLE {db}.{score_table}
    ADD COLUMN IF NOT EXISTS scored_by LowCardinality(String),
    ADD COLUMN IF NOT EXISTS n_events UInt32;
