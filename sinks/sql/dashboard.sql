-- The dashboard's queries: the SQL behind each /api/ endpoint of `cvm sink` (sinks/dashboard.py), one
-- `-- name: X` block each, loaded once at import. {db} stands for the database (the API substitutes its own); user
-- input only ever reaches ClickHouse as a typed query parameter, {name:Type}. docs/queries.sql holds the same text
-- for analysts (the database written `cvm`; tests/sinks/test_dashboard_api.py keeps the two identical).

-- name: kpi_customers
-- GET /api/kpis
-- Latest state per customer: customers is a ReplacingMergeTree(version), so FINAL.
SELECT
    count() AS customers,
    sum(profitability) AS profit,
    sum(clv) AS total_clv,
    countIf(value_tier = 'A') AS tier_a,
    avg(churn_probability) AS mean_churn_probability,
    max(as_of) AS latest_score_time
FROM {db}.customers FINAL;

-- name: kpi_period
-- GET /api/kpis
-- Revenue and margin in event time: the period ends at the latest transaction; {days:UInt32} = 0 means all.
-- Money in the base currency (amount_base); a transaction without a rate to it (a dead letter) counts nowhere.
WITH
    (SELECT max(event_time) FROM {db}.transactions) AS period_end,
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
    FROM {db}.transactions FINAL
    WHERE amount_base IS NOT NULL
);

-- name: kpi_alerts
-- GET /api/kpis
-- An alert's time is the event time that raised it, so "today" is the day (UTC) of the stream's latest event:
-- the wall-clock day for live traffic, the last day of the data for a replayed history. Alerts are collapsed
-- per episode (ReplacingMergeTree): FINAL.
WITH toStartOfDay(greatest(
    (SELECT max(event_time) FROM {db}.transactions),
    (SELECT max(alert_time) FROM {db}.alerts)
)) AS stream_day
SELECT
    countIf(alert_time >= stream_day) AS today,
    count() AS total,
    max(alert_time) AS latest,
    any(stream_day) AS day
FROM {db}.alerts FINAL;

-- name: kpi_model
-- GET /api/kpis
SELECT
    argMax(value, time) AS roc_auc,
    argMax(model_version, time) AS model_version,
    max(time) AS measured_at,
    count() AS evaluations
FROM {db}.model_metrics
WHERE metric = 'roc_auc';

-- name: whale
-- GET /api/whale
-- About {points} points whatever the number of customers, always with the first, the last and the peak (the
-- last customer whose profitability is positive: the cumulative profit rises until there, then falls).
SELECT rank, n, positive, cumulative_profit
FROM
(
    SELECT
        row_number() OVER by_profit AS rank,
        count() OVER () AS n,
        countIf(profitability > 0) OVER () AS positive,
        sum(profitability) OVER by_profit AS cumulative_profit
    FROM {db}.customers FINAL
    WINDOW by_profit AS (ORDER BY profitability DESC, customer_id ASC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
WHERE rank % greatest(1, intDiv(n, {points:UInt32})) = 0 OR rank IN (1, n, positive)
ORDER BY rank;

-- name: matrix
-- GET /api/matrix
-- Value at risk: CLV when the customer has one, else profitability to date; a loss-maker puts nothing at risk.
-- A customer no churn model has scored yet (churn_probability NULL) is in band 'unscored', not in 'low'.
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
FROM {db}.customers FINAL
GROUP BY tier, band
ORDER BY tier, band;

-- name: alerts
-- GET /api/alerts
-- The latest alerts, with the customer's current figures beside the ones the alert carried.
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
    FROM {db}.alerts FINAL
    ORDER BY alert_time DESC, customer_id ASC, rule ASC
    LIMIT {limit:UInt32}
) AS a
LEFT JOIN
(
    SELECT customer_id, value_tier, clv, profitability, churn_probability
    FROM {db}.customers FINAL
    WHERE customer_id IN (SELECT customer_id FROM {db}.alerts FINAL ORDER BY alert_time DESC LIMIT {limit:UInt32})
) AS c ON c.customer_id = a.customer_id
ORDER BY alert_time DESC, customer_id ASC, rule ASC;

-- name: customer_snapshot
-- GET /api/customer/{id}
SELECT *
FROM {db}.customers FINAL
WHERE customer_id = {id:String};

-- name: customer_history
-- GET /api/customer/{id}
-- Score history: one row per score message (LIMIT 1 BY version guards against a row written twice).
SELECT as_of, version, revenue, profitability, clv, churn_probability, p_alive, loyalty_score, value_tier
FROM {db}.customer_scores
WHERE customer_id = {id:String}
ORDER BY version DESC
LIMIT 1 BY version
LIMIT {points:UInt32};

-- name: customer_transactions
-- GET /api/customer/{id}
SELECT event_time, event_id, amount, currency, amount_base, gross_margin, gross_margin_base, channel, category
FROM {db}.transactions FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32};

-- name: customer_contacts
-- GET /api/customer/{id}
SELECT event_time, event_id, channel, reason, resolved, handle_time_s, cost
FROM {db}.contacts FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32};

-- name: customer_payments
-- GET /api/customer/{id}
SELECT event_time, event_id, invoice_id, amount_due, amount_paid, due_date, paid_date, status
FROM {db}.payments FINAL
WHERE customer_id = {id:String}
ORDER BY event_time DESC, event_id ASC
LIMIT {limit:UInt32};

-- name: customer_alerts
-- GET /api/customer/{id}
SELECT alert_time, rule, severity, reasons, episode
FROM {db}.alerts FINAL
WHERE customer_id = {id:String}
ORDER BY alert_time DESC, rule ASC
LIMIT {limit:UInt32};

-- name: migration
-- GET /api/migration
-- A customer's tier on a day is its last score's that day; a move is a day whose tier differs from the
-- customer's previous scored day. The window runs over all history, so the first day in the range still sees
-- the day before it. {days:UInt32} = 0 means all days.
WITH
    daily AS
    (
        SELECT customer_id, toDate(as_of) AS day, argMax(value_tier, version) AS tier
        FROM {db}.customer_scores
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
        OR dateDiff('day', day, (SELECT max(toDate(as_of)) FROM {db}.customer_scores)) < {days:UInt32})
GROUP BY day, from_tier, to_tier
ORDER BY day ASC, from_tier ASC, to_tier ASC;

-- name: model
-- GET /api/model
SELECT metric, time, model_version, value
FROM {db}.model_metrics
ORDER BY time DESC
LIMIT {points:UInt32} BY metric;
