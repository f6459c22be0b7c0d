-- cvm's dashboard queries: the SQL behind each /api/ endpoint of `cvm sink` (sinks/dashboard.py, whose SQL is
-- sinks/sql/dashboard.sql and sinks/sql/outcomes.sql), for analysts.
--
-- Run them on the running sink (`cvm sql`, or /api/sql), on a ClickHouse server (clickhouse-client), or in Grafana.
-- Parameters are ClickHouse query parameters, {name:Type}: with clickhouse-client pass --param_name=value, e.g.
--   clickhouse-client --param_days=30 --param_margin_rate=0.3 --queries-file docs/queries.sql
-- or replace them by literals. The database is written `cvm` (CVM_CLICKHOUSE_DATABASE); the API substitutes its own.
-- cvm.customers is a ReplacingMergeTree(version): always read it with FINAL (or argMax by version).
--
-- tests/sinks/test_dashboard_api.py checks that every block below is the query the API runs, word for word.

-- name: kpi_customers
-- GET /api/kpis
-- Customers and their value: latest state per customer (customers is a ReplacingMergeTree(version): FINAL).
-- Parameters: none
SELECT
    count() AS customers,
    sum(profitability) AS profit,
    sum(clv) AS total_clv,
    countIf(value_tier = 'A') AS tier_a,
    avg(churn_probability) AS mean_churn_probability,
    max(as_of) AS latest_score_time
FROM cvm.customers FINAL;

-- name: kpi_period
-- GET /api/kpis?period=30d
-- Revenue and gross margin over a period of event time that ends at the latest transaction
-- (replayed or simulated history is in the past), and over the period before it. A transaction without a margin
-- gets amount * margin_rate (CVM_DEFAULT_MARGIN_RATE). FINAL collapses an event delivered twice. Money is in the
-- base currency (CVM_BASE_CURRENCY): amount_base, converted at the event's date by the sink as the workers convert;
-- a transaction without a rate to the base currency (NULL amount_base; a dead letter for the workers) counts nowhere.
-- Parameters: {days:UInt32} (0 = all history), {margin_rate:Float64}
WITH
    (SELECT max(event_time) FROM cvm.transactions) AS period_end,
    period_end - toIntervalDay({days:UInt32}) AS period_start,
    period_start - toIntervalDay({days:UInt32}) AS previous_start,
    {days:UInt32} = 0 OR event_time > period_start AS in_period,
    {days:UInt32} > 0 AND event_time > previous_start AND event_time <= period_start AS in_previous
SELECT
    period_end AS end,
    if({days:UInt32} = 0, min(event_time), period_start) AS start,
    countIf(in_period) AS transactions,
    uniqExactIf(customer_id, in_period) AS active_customers,
    ifNull(sumIf(amount, in_period), 0) AS revenue,
    ifNull(sumIf(margin, in_period), 0) AS gross_margin,
    ifNull(sumIf(amount, in_previous), 0) AS previous_revenue,
    ifNull(sumIf(margin, in_previous), 0) AS previous_gross_margin
FROM
(
    SELECT
        customer_id,
        event_time,
        amount_base AS amount,
        ifNull(gross_margin_base, amount_base * {margin_rate:Float64}) AS margin
    FROM cvm.transactions FINAL
    WHERE amount_base IS NOT NULL
);

-- name: kpi_alerts
-- GET /api/kpis
-- Alerts raised "today", in all, and the latest alert time. An alert's time is the event time that raised it, so
-- today is the day (UTC) of the stream's latest event: the wall-clock day for live traffic, the last day of the data
-- for a replayed history. cvm.alerts is a ReplacingMergeTree on (customer_id, rule, episode): FINAL shows an alert
-- written twice (a redelivery, a replay) once.
-- Parameters: none
WITH toStartOfDay(greatest(
    (SELECT max(event_time) FROM cvm.transactions),
    (SELECT max(alert_time) FROM cvm.alerts)
)) AS stream_day
SELECT
    countIf(alert_time >= stream_day) AS today,
    count() AS total,
    max(alert_time) AS latest,
    any(stream_day) AS day
FROM cvm.alerts FINAL;

-- name: kpi_model
-- GET /api/kpis
-- The latest ROC AUC of the churn model, its version and when it was measured.
-- Parameters: none
SELECT
    argMax(value, time) AS roc_auc,
    argMax(model_version, time) AS model_version,
    max(time) AS measured_at,
    count() AS evaluations
FROM cvm.model_metrics
WHERE metric = 'roc_auc';

-- name: whale
-- GET /api/whale?points=200
-- The whale curve: cumulative profit against customers sorted by profitability, most profitable first.
-- Sampled in SQL to about {points} rows, always with the first customer, the last (cumulative = total profit) and
-- the peak (rank = positive, the last profitable customer: there the curve stops rising). Share of customers is
-- rank / n.
-- Parameters: {points:UInt32}
SELECT rank, n, positive, cumulative_profit
FROM
(
    SELECT
        row_number() OVER by_profit AS rank,
        count() OVER () AS n,
        countIf(profitability > 0) OVER () AS positive,
        sum(profitability) OVER by_profit AS cumulative_profit
    FROM cvm.customers FINAL
    WINDOW by_profit AS (ORDER BY profitability DESC, customer_id ASC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
WHERE rank % greatest(1, intDiv(n, {points:UInt32})) = 0 OR rank IN (1, n, positive)
ORDER BY rank;

-- name: matrix
-- GET /api/matrix?low=0.3&high=0.6
-- Value tier x churn band: customers, value at risk (CLV, or profitability to date when the customer has no CLV
-- yet: NULL; never below 0) and expected loss (churn probability x value). value_tier '' means not rated yet; band
-- 'unscored' holds the customers no churn model has scored yet (churn_probability NULL).
-- Parameters: {low:Float64}, {high:Float64} (bands: [0, low), [low, high), [high, 1], unscored)
SELECT
    value_tier AS tier,
    multiIf(
        churn_probability IS NULL, 'unscored',
        churn_probability < {low:Float64}, 'low',
        churn_probability < {high:Float64}, 'medium',
        'high'
    ) AS band,
    count() AS customers,
    sum(greatest(ifNull(clv, profitability), 0)) AS value_at_risk,
    ifNull(sum(churn_probability * greatest(ifNull(clv, profitability), 0)), 0) AS expected_loss
FROM cvm.customers FINAL
GROUP BY tier, band
ORDER BY tier, band;

-- name: alerts
-- GET /api/alerts?limit=50
-- The latest alerts, newest first, with the customer's current tier, CLV, profitability and churn probability
-- (known = 0 when the customer has no row yet). The API prefers the figures the alert carried in scores (JSON).
-- Parameters: {limit:UInt32}
SELECT
    a.alert_time AS alert_time,
    a.customer_id AS customer_id,
    a.rule AS rule,
    a.severity AS severity,
    a.reasons AS reasons,
    a.scores AS scores,
    a.episode AS episode,
    c.customer_id != '' AS known,
    c.value_tier AS value_tier,
    c.clv AS clv,
    c.profitability AS profitability,
    c.churn_probability AS churn_probability
FROM
(
    SELECT alert_time, customer_id, rule, severity, reasons, scores, episode
    FROM cvm.alerts FINAL
    ORDER BY alert_time DESC, customer_id ASC, rule ASC
    LIMIT {limit:UInt32}
) AS a
LEFT JOIN
(
    SELECT customer_id, value_tier, clv, profitability, churn_probability
    FROM cvm.customers FINAL
    WHERE customer_id IN (SELECT customer_id FROM cvm.alerts FINAL ORDER BY alert_time DESC LIMIT {limit:UInt32})
) AS c ON c.customer_id = a.customer_id
ORDER BY alert_time DESC, customer_id ASC, rule ASC;

-- name: customer_snapshot
-- GET /api/customer/<id>
-- The customer's latest state: every feature and score.
-- Parameters: {id:String}
SELECT *
FROM cvm.customers FINAL
WHERE customer_id = {id:String};

-- name: customer_history
-- GET /api/customer/<id>?points=500
-- Score history, newest {points} score messages (the API shows them oldest first).
-- Parameters: {id:String}, {points:UInt32}
SELECT as_of, version, revenue, profitability, clv, churn_probability, p_alive, loyalty_score, value_tier
FROM cvm.customer_scores
WHERE customer_id = {id:String}
ORDER BY version DESC
LIMIT 1 BY version
LIMIT {points:UInt32};

-- name: customer_transactions
-- GET /api/customer/<id>?limit=20
-- The customer's latest purchases and refunds.
-- Parameters: {id:String}, {limit:UInt32}
SELECT event_time, event_id, amount, currency, amount_base, gross_margin, gross_margin_base, channel, category
FROM cvm.transactions FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32};

-- name: customer_contacts
-- GET /api/customer/<id>?limit=20
-- The customer's latest customer-service contacts.
-- Parameters: {id:String}, {limit:UInt32}
SELECT event_time, event_id, channel, reason, resolved, handle_time_s, cost
FROM cvm.contacts FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32};

-- name: customer_payments
-- GET /api/customer/<id>?limit=20
-- The customer's latest payments.
-- Parameters: {id:String}, {limit:UInt32}
SELECT event_time, event_id, invoice_id, amount_due, amount_paid, due_date, paid_date, status
FROM cvm.payments FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32};

-- name: customer_alerts
-- GET /api/customer/<id>?limit=20
-- The customer's latest alerts.
-- Parameters: {id:String}, {limit:UInt32}
SELECT alert_time, rule, severity, reasons, episode
FROM cvm.alerts FINAL
WHERE customer_id = {id:String}
ORDER BY alert_time DESC, rule ASC
LIMIT {limit:UInt32};

-- name: migration
-- GET /api/migration?days=90
-- Segment migration: per day of event time, customers whose value tier differs from their previous scored day,
-- by (from, to). A customer's tier on a day is that of its last score message that day. A -> B is a move down.
-- Parameters: {days:UInt32} (0 = all; else the last days up to the latest score)
WITH
    daily AS
    (
        SELECT customer_id, toDate(as_of) AS day, argMax(value_tier, version) AS tier
        FROM cvm.customer_scores
        WHERE value_tier != ''
        GROUP BY customer_id, day
    ),
    moves AS
    (
        SELECT
            day,
            tier,
            lagInFrame(tier) OVER (PARTITION BY customer_id ORDER BY day ASC ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
                AS previous
        FROM daily
    )
SELECT day, previous AS from_tier, tier AS to_tier, count() AS customers
FROM moves
WHERE previous != '' AND previous != tier
    AND ({days:UInt32} = 0
        OR dateDiff('day', day, (SELECT max(toDate(as_of)) FROM cvm.customer_scores)) < {days:UInt32})
GROUP BY day, from_tier, to_tier
ORDER BY day ASC, from_tier ASC, to_tier ASC;

-- name: model
-- GET /api/model?points=500
-- Model quality over time: the last {points} evaluations of each metric (roc_auc, log_loss, brier, ece, ...).
-- Parameters: {points:UInt32}
SELECT metric, time, model_version, value
FROM cvm.model_metrics
ORDER BY time DESC
LIMIT {points:UInt32} BY metric;


-- ===================================================================================================================
-- Alert outcomes and why customers leave (GET /api/outcomes, GET /api/defection; sinks/outcomes.py, docs/alerts.md
-- "Outcomes"). They read the views of migration sinks/migrations/0007_outcomes.sql, which analysts can query too:
--   SELECT * FROM cvm.stream_time                                           -- the stream's latest event time
--   SELECT * FROM cvm.leavers(silence_days = 75, grace_days = 30)           -- observed leaving, one row a customer
--   SELECT * FROM cvm.alert_outcomes(silence_days = 75, grace_days = 30, horizon_days = 90)  -- each alert's outcome
--   SELECT * FROM cvm.score_signals                                        -- each scoring's signals of leaving
-- Leaving is observed in event time: no sign of life (a purchase or a contact) for silence_days (the churn label's
-- offset + silence, CVM_CHURN_OFFSET_DAYS + CVM_CHURN_SILENCE_DAYS), or a cancellation request and no purchase
-- within grace_days (CVM_CHURN_CANCEL_GRACE_DAYS); the leaving time is the last sign of life.
-- Parameters of the queries below, with the values the API passes:
--   {silence_days:Float64} 75, {grace_days:Float64} 30, {horizon_days:Float64} 90, {ahead_days:Float64} 30,
--   {lookback_days:Float64} 90, {high_value_days:Float64} 180 (CVM_ALERT_HIGH_VALUE_DAYS),
--   {window_days:Float64} 250, {outcome_days:Float64} 90
-- e.g. clickhouse-client --param_silence_days=75 --param_grace_days=30 --param_horizon_days=90 ...

-- name: outcome_stream
-- GET /api/outcomes
-- The stream's time (its latest event time), which outcomes and the evaluation window are measured from.
-- Parameters: none
SELECT now_ms, now FROM cvm.stream_time;

-- name: outcome_alerts
-- GET /api/outcomes
-- Per rule and month of the alert (and `window`: the evaluation window), the alerts and their outcomes
-- (cvm.alert_outcomes: left, late, stayed, pending).
WITH
    (SELECT now_ms FROM cvm.stream_time) AS stream_ms,
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
    FROM cvm.alert_outcomes(
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
    (SELECT now_ms FROM cvm.stream_time) AS stream_ms,
    stream_ms - toInt64({window_days:Float64} * 86400000) AS window_start_ms,
    stream_ms - toInt64({outcome_days:Float64} * 86400000) AS window_end_ms,
    toInt64({horizon_days:Float64} * 86400000) AS horizon_ms,
    (SELECT toStartOfMonth(min(as_of)) FROM cvm.customer_scores) AS first_month,
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
            CROSS JOIN (SELECT DISTINCT customer_id FROM cvm.customer_scores) AS who
        ) AS k
        ASOF JOIN
        (
            SELECT customer_id, toUnixTimestamp64Milli(as_of) AS ms, value_tier
            FROM cvm.customer_scores
        ) AS s ON k.customer_id = s.customer_id AND k.cp_ms >= s.ms
    ) AS c
    LEFT JOIN cvm.leavers(silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64}) AS l
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
    (SELECT now_ms FROM cvm.stream_time) AS stream_ms,
    stream_ms - toInt64({window_days:Float64} * 86400000) AS window_start_ms,
    stream_ms - toInt64({outcome_days:Float64} * 86400000) AS window_end_ms,
    toInt64({high_value_days:Float64} * 86400000) AS high_ms,
    toInt64({lookback_days:Float64} * 86400000) AS lookback_ms,
    toInt64({ahead_days:Float64} * 86400000) AS ahead_ms,
    high_value AS
    (
        SELECT l.customer_id AS customer_id, any(l.left_at_ms) AS left_at_ms
        FROM cvm.leavers(silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64}) AS l
        INNER JOIN
        (
            SELECT customer_id, toUnixTimestamp64Milli(as_of) AS ms
            FROM cvm.customer_scores
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
            FROM cvm.alerts FINAL
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
    CROSS JOIN (SELECT DISTINCT rule FROM cvm.alerts) AS r
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
        FROM cvm.leavers(silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64})
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
            INNER JOIN cvm.score_signals AS s ON s.customer_id = g.customer_id
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
        FROM cvm.score_signals
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
