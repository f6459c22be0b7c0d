-- Every raw event ClickHouse holds, in the order a restore publishes them again (cvm/restore.py).
-- One row per event (FINAL keeps the first copy read: the one the worker applied), as (kind, JSON record).
-- Order: epoch after epoch (a broker's life after the one before). Within an epoch, each stream (kind, partition)
-- keeps the order it was read in (its offsets; rows from before epochs existed, epoch 0, by ingestion time first),
-- and the streams are merged on their running maximum event time, so that all partitions advance together in event
-- time (a worker holds back a partition that runs ahead of the others).
-- The branches: one SELECT per kind (history_branch.sql), joined with UNION ALL.
SELECT kind, record
FROM
(
{branches}
)
ORDER BY epoch, running_max, kind, partition, ingested, offset
