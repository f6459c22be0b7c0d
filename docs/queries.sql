-- cvm's dashboard queries: the SQL behind each /api/ endpoint of `cvm sink` (sinks/dashboard.py), for analysts.
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
