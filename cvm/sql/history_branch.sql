-- One kind's events for history.sql. {fields}: the Avro fields of the kind (times as epoch milliseconds).
SELECT
    '{kind}' AS kind,
    epoch,
    partition,
    offset,
    ingested,
    max(event_time) OVER (PARTITION BY epoch, partition ORDER BY ingested, offset ROWS UNBOUNDED PRECEDING) AS running_max,
    formatRowNoNewline('JSONEachRow', {names}) AS record
FROM
(
    SELECT
        {fields},
        epoch,
        partition,
        offset,
        if(epoch = 0, ingested_at, toDateTime64(0, 3, 'UTC')) AS ingested
    FROM {db}.{kind} FINAL
) AS events
