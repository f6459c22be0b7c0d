-- What became of the alerts, and why customers leave: the queries of /api/outcomes and /api/defection
-- (sinks/outcomes.py), over the views of migration 0007_outcomes.sql. docs/queries.sql holds the same text.
-- Parameters (the API passes the configured and the issue's values):
--   {silence_days:Float64}  no sign of life this long means gone: churn offset + churn silence (30 + 45)
--   {grace_days:Float64}    days after a cancellation request without a purchase that mean gone (30)
--   {horizon_days:Float64}  an alert is right when its customer leaves within this many days after it (90)
--   {ahead_days:Float64}    a leaver is caught ahead when its first alert came this many days before it left (30)
--   {lookback_days:Float64} the alerts, and the scorings whose signals count, of this many days before leaving (90)
--   {high_value_days:Float64} a leaver of high value was tier A at a scoring this many days before leaving (180)
--   {window_days:Float64}, {outcome_days:Float64}  the evaluation window: the last 250 days, without the last 90

-- name: outcome_alerts
-- GET /api/outcomes
-- Per rule and month of the alert (and `window`: the evaluation window), the alerts and their outcomes
-- (cvm.alert_outcomes: left, late, stayed, pending).
WITH
    (SELECT now_ms FROM {db}.stream_time) AS stream_ms,
    stream_ms - toInt64({window_days:Float64} * 86400000) AS window_start_ms,
    stream_ms - toInt64({outcome_days:Float64} * 86400000) AS window_end_ms
SELECT
    rule,
    period,
    count() AS alerts,
    countIf(outcome != 'pending') AS resolved,
    countIf(outcome = 'left') AS left,
    countIf(outcome = 'late') AS late,
    countIf(outcome = 'stayed') AS stayed,
    countIf(outcome = 'pending') AS pending
FROM
(
    SELECT
        rule,
        outcome,
        arrayJoin(arrayFilter(p -> p != '', [
            formatDateTime(alert_time, '%Y-%m'),
            if(alert_ms BETWEEN window_start_ms AND window_end_ms, 'window', '')
        ])) AS period
    FROM {db}.alert_outcomes(
        silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64}, horizon_days = {horizon_days:Float64}
    )
)
GROUP BY rule, period
ORDER BY rule, period;

-- name: outcome_base_rate
-- GET /api/outcomes
-- The base rate: among the tier-A customers at each checkpoint (the first day of each month; in `window`, every 30
-- days from the window's start), those not gone by then, the share who leave within the horizon. A customer's tier
-- at a checkpoint is that of its latest scoring at or before it.
WITH
    (SELECT now_ms FROM {db}.stream_time) AS stream_ms,
    stream_ms - toInt64({window_days:Float64} * 86400000) AS window_start_ms,
    stream_ms - toInt64({outcome_days:Float64} * 86400000) AS window_end_ms,
    toInt64({horizon_days:Float64} * 86400000) AS horizon_ms,
    (SELECT toStartOfMonth(min(as_of)) FROM {db}.customer_scores) AS first_month,
    checkpoints AS
    (
        SELECT cp.1 AS period, cp.2 AS cp_ms
        FROM
        (
            SELECT arrayJoin(arrayConcat(
                arrayMap(
                    i -> (formatDateTime(addMonths(first_month, i), '%Y-%m'),
                          toInt64(toUnixTimestamp(toDateTime(addMonths(first_month, i), 'UTC'))) * 1000),
                    range(1, toUInt32(dateDiff('month', first_month, fromUnixTimestamp64Milli(stream_ms, 'UTC')) + 1))
                ),
                arrayMap(
                    k -> ('window', window_start_ms + toInt64(k) * 30 * 86400000),
                    range(toUInt32(intDiv(window_end_ms - window_start_ms, 30 * 86400000) + 1))
                )
            )) AS cp
        )
    )
SELECT
    period,
    count() AS customers,
    countIf(outcome != 'pending') AS resolved,
    countIf(outcome = 'left') AS left,
    countIf(outcome = 'pending') AS pending
FROM
(
    SELECT
        c.period AS period,
        multiIf(
            l.left AND l.left_at_ms <= c.cp_ms + horizon_ms, 'left',
            l.last_seen_ms > c.cp_ms + horizon_ms, 'stayed',
            'pending'
        ) AS outcome
    FROM
    (
        SELECT k.period AS period, k.cp_ms AS cp_ms, s.customer_id AS customer_id, s.value_tier AS value_tier
        FROM
        (
            SELECT period, cp_ms, customer_id
            FROM checkpoints
            CROSS JOIN (SELECT DISTINCT customer_id FROM {db}.customer_scores) AS who
        ) AS k
        ASOF JOIN
        (
            SELECT customer_id, toUnixTimestamp64Milli(as_of) AS ms, value_tier
            FROM {db}.customer_scores
        ) AS s ON k.customer_id = s.customer_id AND k.cp_ms >= s.ms
    ) AS c
    LEFT JOIN {db}.leavers(silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64}) AS l
        ON l.customer_id = c.customer_id
    WHERE c.value_tier = 'A' AND NOT (l.left AND l.left_at_ms <= c.cp_ms)
)
GROUP BY period
ORDER BY period;

-- name: outcome_caught
-- GET /api/outcomes
-- Per rule and month of leaving (and `window`), the high-value customers who left (tier A at a scoring in the
-- high-value days before leaving), how many had an alert of the rule in the lookback days before leaving, how many
-- had it `ahead_days` or more before (caught ahead), and the median lead of the alerted (leaving - first alert).
WITH
    (SELECT now_ms FROM {db}.stream_time) AS stream_ms,
    stream_ms - toInt64({window_days:Float64} * 86400000) AS window_start_ms,
    stream_ms - toInt64({outcome_days:Float64} * 86400000) AS window_end_ms,
    toInt64({high_value_days:Float64} * 86400000) AS high_ms,
    toInt64({lookback_days:Float64} * 86400000) AS lookback_ms,
    toInt64({ahead_days:Float64} * 86400000) AS ahead_ms,
    high_value AS
    (
        SELECT l.customer_id AS customer_id, any(l.left_at_ms) AS left_at_ms
        FROM {db}.leavers(silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64}) AS l
        INNER JOIN
        (
            SELECT customer_id, toUnixTimestamp64Milli(as_of) AS ms
            FROM {db}.customer_scores
            WHERE value_tier = 'A'
        ) AS s ON s.customer_id = l.customer_id
        WHERE l.left AND s.ms < l.left_at_ms AND s.ms >= l.left_at_ms - high_ms
        GROUP BY l.customer_id
    ),
    firsts AS
    (
        SELECT h.customer_id AS customer_id, a.rule AS rule, toNullable(min(a.ms)) AS first_ms
        FROM high_value AS h
        INNER JOIN
        (
            SELECT customer_id, rule, toUnixTimestamp64Milli(alert_time) AS ms
            FROM {db}.alerts FINAL
        ) AS a ON a.customer_id = h.customer_id
        WHERE a.ms < h.left_at_ms AND a.ms >= h.left_at_ms - lookback_ms
        GROUP BY h.customer_id, a.rule
    )
SELECT
    rule,
    period,
    count() AS leavers,
    countIf(first_ms IS NOT NULL) AS alerted,
    countIf(ifNull(left_at_ms - first_ms >= ahead_ms, false)) AS caught,
    quantileExactInclusiveIf(0.5)((left_at_ms - first_ms) / 86400000, first_ms IS NOT NULL) AS median_lead_days
FROM
(
    SELECT
        r.rule AS rule,
        h.left_at_ms AS left_at_ms,
        f.first_ms AS first_ms,
        arrayJoin(arrayFilter(p -> p != '', [
            formatDateTime(fromUnixTimestamp64Milli(h.left_at_ms, 'UTC'), '%Y-%m'),
            if(h.left_at_ms BETWEEN window_start_ms AND window_end_ms, 'window', '')
        ])) AS period
    FROM high_value AS h
    CROSS JOIN (SELECT DISTINCT rule FROM {db}.alerts) AS r
    LEFT JOIN firsts AS f ON f.customer_id = h.customer_id AND f.rule = r.rule
)
GROUP BY rule, period
ORDER BY rule, period;

-- name: defection
-- GET /api/defection
-- Why customers leave: for the customers who left (cvm.leavers), by value tier (the best they had at a scoring in
-- the high-value days before leaving) and month of leaving (and `all`), the share who showed each signal of leaving
-- (cvm.score_signals) at a scoring in the lookback days up to their last sign of life; beside each, `*_others`: the
-- share of the other customers' scorings of that tier and month that showed it (what the signal is worth; NULL:
-- no other customer of that tier was scored that month).
WITH
    toInt64({high_value_days:Float64} * 86400000) AS high_ms,
    toInt64({lookback_days:Float64} * 86400000) AS lookback_ms,
    gone AS
    (
        SELECT customer_id, left_at_ms
        FROM {db}.leavers(silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64})
        WHERE left
    ),
    leaver_rows AS
    (
        SELECT
            customer_id,
            least('C', min(value_tier)) AS tier,
            any(left_at_ms) AS left_at_ms,
            maxIf(cancellation, in_lookback) AS cancellation,
            maxIf(silence, in_lookback) AS silence,
            maxIf(purchases, in_lookback) AS purchases,
            maxIf(spend, in_lookback) AS spend,
            maxIf(complaints, in_lookback) AS complaints,
            maxIf(contacts, in_lookback) AS contacts,
            maxIf(unresolved, in_lookback) AS unresolved,
            maxIf(payments, in_lookback) AS payments,
            maxIf(refunds, in_lookback) AS refunds
        FROM
        (
            SELECT
                g.customer_id AS customer_id,
                g.left_at_ms AS left_at_ms,
                s.value_tier AS value_tier,
                s.ms > g.left_at_ms - lookback_ms AS in_lookback,
                s.cancellation AS cancellation,
                s.silence AS silence,
                s.purchases AS purchases,
                s.spend AS spend,
                s.complaints AS complaints,
                s.contacts AS contacts,
                s.unresolved AS unresolved,
                s.payments AS payments,
                s.refunds AS refunds
            FROM gone AS g
            INNER JOIN {db}.score_signals AS s ON s.customer_id = g.customer_id
            WHERE s.ms <= g.left_at_ms AND s.ms > g.left_at_ms - high_ms
        )
        GROUP BY customer_id
    ),
    leavers_by AS
    (
        SELECT
            tier,
            arrayJoin([formatDateTime(fromUnixTimestamp64Milli(left_at_ms, 'UTC'), '%Y-%m'), 'all']) AS period,
            count() AS leavers,
            avg(cancellation) AS cancellation,
            avg(silence) AS silence,
            avg(purchases) AS purchases,
            avg(spend) AS spend,
            avg(complaints) AS complaints,
            avg(contacts) AS contacts,
            avg(unresolved) AS unresolved,
            avg(payments) AS payments,
            avg(refunds) AS refunds
        FROM leaver_rows
        GROUP BY tier, period
    ),
    others_by AS
    (
        SELECT
            value_tier AS tier,
            arrayJoin([formatDateTime(as_of, '%Y-%m'), 'all']) AS period,
            toNullable(avg(cancellation)) AS cancellation,
            toNullable(avg(silence)) AS silence,
            toNullable(avg(purchases)) AS purchases,
            toNullable(avg(spend)) AS spend,
            toNullable(avg(complaints)) AS complaints,
            toNullable(avg(contacts)) AS contacts,
            toNullable(avg(unresolved)) AS unresolved,
            toNullable(avg(payments)) AS payments,
            toNullable(avg(refunds)) AS refunds
        FROM {db}.score_signals
        WHERE customer_id NOT IN (SELECT customer_id FROM gone)
        GROUP BY tier, period
    )
SELECT
    l.tier AS tier,
    l.period AS period,
    l.leavers AS leavers,
    l.cancellation AS cancellation,
    l.silence AS silence,
    l.purchases AS purchases,
    l.spend AS spend,
    l.complaints AS complaints,
    l.contacts AS contacts,
    l.unresolved AS unresolved,
    l.payments AS payments,
    l.refunds AS refunds,
    o.cancellation AS cancellation_others,
    o.silence AS silence_others,
    o.purchases AS purchases_others,
    o.spend AS spend_others,
    o.complaints AS complaints_others,
    o.contacts AS contacts_others,
    o.unresolved AS unresolved_others,
    o.payments AS payments_others,
    o.refunds AS refunds_others
FROM leavers_by AS l
LEFT JOIN others_by AS o ON o.tier = l.tier AND o.period = l.period
ORDER BY period, tier;
