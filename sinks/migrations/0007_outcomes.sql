-- Alert outcomes and the signals that preceded leaving (issue 13; docs/alerts.md "Outcomes"), derived in ClickHouse
-- from the tables the stack already writes: no state in the worker, nothing to keep in step. Views only: they read
-- the tables as they are at query time, so a restore or a rebuild (which exchanges the derived tables) changes them
-- too. Times are in event time; "now" is the stream's own latest event time, never the wall clock.
-- Parameterised views take their settings as arguments (the sink passes the configured ones):
--   SELECT * FROM cvm.leavers(silence_days = 75, grace_days = 30)
--   SELECT * FROM cvm.alert_outcomes(silence_days = 75, grace_days = 30, horizon_days = 90)

-- The stream's time: the latest event time of the raw tables.
CREATE OR REPLACE VIEW {db}.stream_time AS
SELECT
    greatest(
        ifNull((SELECT toUnixTimestamp64Milli(max(event_time)) FROM {db}.transactions), 0),
        ifNull((SELECT toUnixTimestamp64Milli(max(event_time)) FROM {db}.contacts), 0),
        ifNull((SELECT toUnixTimestamp64Milli(max(event_time)) FROM {db}.payments), 0)
    ) AS now_ms,
    fromUnixTimestamp64Milli(now_ms, 'UTC') AS now;

-- Observed leaving, one row per customer who bought or made contact. A customer has LEFT when, as of the stream's
-- time, it has shown no sign of life (a purchase or a contact) for `silence_days` (the churn label's offset plus its
-- silence: the label rule applied at its last sign of life), or it asked to cancel, bought nothing since, and
-- `grace_days` have passed since it asked. Its leaving time `left_at` is its last sign of life. A purchase later on
-- makes it a customer again (the row says so from then on). A purchase is a transaction with a positive amount in
-- the base currency (one without a rate was never applied).
CREATE OR REPLACE VIEW {db}.leavers AS
WITH
    (SELECT now_ms FROM {db}.stream_time) AS stream_ms,
    toInt64({silence_days:Float64} * 86400000) AS silence_ms,
    toInt64({grace_days:Float64} * 86400000) AS grace_ms
SELECT
    customer_id,
    last_purchase_ms,
    last_contact_ms,
    last_cancellation_ms,
    greatest(ifNull(last_purchase_ms, last_contact_ms), ifNull(last_contact_ms, last_purchase_ms)) AS last_seen_ms,
    stream_ms - last_seen_ms > silence_ms AS silent,
    last_cancellation_ms IS NOT NULL
        AND ifNull(last_purchase_ms <= last_cancellation_ms, true)
        AND stream_ms - last_cancellation_ms > grace_ms AS cancelled,
    silent OR cancelled AS left,
    if(left, last_seen_ms, NULL) AS left_at_ms,
    if(left, fromUnixTimestamp64Milli(last_seen_ms, 'UTC'), NULL) AS left_at,
    if(left, least(
        if(silent, last_seen_ms + silence_ms, toInt64(9e18)),
        if(cancelled, last_cancellation_ms + grace_ms, toInt64(9e18))
    ), NULL) AS known_ms,
    stream_ms
FROM
(
    SELECT
        customer_id,
        maxIfOrNull(ms, purchase) AS last_purchase_ms,
        maxIfOrNull(ms, NOT purchase) AS last_contact_ms,
        maxIfOrNull(ms, cancellation) AS last_cancellation_ms
    FROM
    (
        SELECT customer_id, toUnixTimestamp64Milli(event_time) AS ms, true AS purchase, false AS cancellation
        FROM {db}.transactions FINAL
        WHERE amount_base > 0
        UNION ALL
        SELECT customer_id, toUnixTimestamp64Milli(event_time), false, reason = 'cancellation_request'
        FROM {db}.contacts FINAL
    )
    GROUP BY customer_id
);

-- Each alert (one per episode) and what became of its customer within `horizon_days` after it:
--   left     it left within the horizon (lead_days: its leaving time minus the alert's time);
--   late     it had already left when alerted (its last sign of life came before the alert): a miss;
--   stayed   it showed a sign of life after the horizon (bought again, or still in contact): a false alarm or a save;
--   pending  not known yet: neither has happened (at most `horizon_days` plus `silence_days` after the alert).
CREATE OR REPLACE VIEW {db}.alert_outcomes AS
WITH toInt64({horizon_days:Float64} * 86400000) AS horizon_ms
SELECT
    a.alert_time AS alert_time,
    a.customer_id AS customer_id,
    a.rule AS rule,
    a.severity AS severity,
    a.episode AS episode,
    toUnixTimestamp64Milli(a.alert_time) AS alert_ms,
    l.left_at AS left_at,
    multiIf(
        l.left AND l.left_at_ms <= alert_ms, 'late',
        l.left AND l.left_at_ms <= alert_ms + horizon_ms, 'left',
        l.last_seen_ms > alert_ms + horizon_ms, 'stayed',
        'pending'
    ) AS outcome,
    if(outcome = 'left', (l.left_at_ms - alert_ms) / 86400000, NULL) AS lead_days
FROM
(
    SELECT alert_time, customer_id, rule, severity, episode
    FROM {db}.alerts FINAL
) AS a
LEFT JOIN {db}.leavers(silence_days = {silence_days:Float64}, grace_days = {grace_days:Float64}) AS l
    ON l.customer_id = a.customer_id;

-- The signals of leaving each scoring showed, as scoring/reasons.py `signals` finds them from the same figures (a
-- test runs both on the same rows): silence against the customer's own rhythm, purchases and spend down on its own
-- baseline, complaints, contacts and unresolved contacts above its usual rate, a recent cancellation request,
-- payment trouble, refunds. Exposure (days of a decayed counter's window a customer has had): as
-- scoring.features.exposure_days.
CREATE OR REPLACE VIEW {db}.score_signals AS
SELECT
    customer_id,
    as_of,
    toUnixTimestamp64Milli(as_of) AS ms,
    value_tier,
    tenure_days,
    greatest(1.0, 30.0 * (1.0 - exp(-tenure_days / 30.0))) AS exposure_30,
    greatest(1.0, 90.0 * (1.0 - exp(-tenure_days / 90.0))) AS exposure_90,
    greatest(1.0, 365.0 * (1.0 - exp(-tenure_days / 365.0))) AS exposure_365,
    purchases_365d / exposure_365 * exposure_30 AS usual_purchases,
    ifNull(
        last_cancellation_time IS NOT NULL
            AND toUnixTimestamp64Milli(last_cancellation_time) > 0
            AND ms - toUnixTimestamp64Milli(last_cancellation_time) BETWEEN 0 AND 60 * 86400000,
        false
    ) AS cancellation,
    silence_gaps >= 2.0 AND recency_days >= 14.0 AS silence,
    purchases_365d != 0 AND tenure_days >= 60.0 AND usual_purchases >= 1.5
        AND (purchases_30d + 0.5) / (usual_purchases + 0.5) <= 0.5 AS purchases,
    spend_90d > 0 AND tenure_days >= 45.0
        AND greatest(0.0, spend_30d) / exposure_30 / (spend_90d / exposure_90) <= 0.5 AS spend,
    complaints_30d >= 0.5 AND complaints_vs_usual >= log(2.0) AS complaints,
    contacts_30d >= 2.0 AND contacts_vs_usual >= log(2.5) AND NOT complaints AS contacts,
    unresolved_30d >= 0.5 AND NOT complaints AND unresolved_vs_usual >= log(2.0) AS unresolved,
    late_payments_90d >= 0.5 OR failed_payments_90d >= 0.5 AS payments,
    refunds_90d >= 1.5 AS refunds
FROM {db}.customer_scores;
