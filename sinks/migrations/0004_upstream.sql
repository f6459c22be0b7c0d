-- Upstream as it is (issue 15): money in the base currency beside what upstream sent, and NULL for what is not
-- known yet instead of a zero that reads as a fact. `{score_table}` stands for both `customers` and
-- `customer_scores`. Every statement can be applied again (a migration interrupted half-way is re-run whole).

-- Transactions keep their original `amount` and `currency`; the sink adds the amounts converted to the base
-- currency (CVM_BASE_CURRENCY) at the event's date by scoring.currency, the function the workers apply: NULL when
-- there is no rate (the worker sent that transaction to the dead letters, it counts nowhere).
ALTER TABLE {db}.transactions
    ADD COLUMN IF NOT EXISTS amount_base Nullable(Float64) AFTER currency,
    ADD COLUMN IF NOT EXISTS gross_margin_base Nullable(Float64) AFTER gross_margin;

-- Rows written before this migration were counted by the workers of the time as base currency, whatever their
-- currency: the same here, so that their sums still agree with the customers' totals.
ALTER TABLE {db}.transactions
    UPDATE amount_base = amount, gross_margin_base = gross_margin WHERE amount_base IS NULL
    SETTINGS mutations_sync = 2;

-- The score message's contract (schemas/customer_score.avsc): model outputs and what is not computed yet are
-- Nullable; `scored_by` says what scored the row (event, tick, idle).
ALTER TABLE {db}.{score_table}
    ADD COLUMN IF NOT EXISTS scored_by LowCardinality(Nullable(String)) AFTER updated_at,
    MODIFY COLUMN first_purchase_time Nullable(DateTime64(3, 'UTC')),
    MODIFY COLUMN last_purchase_time Nullable(DateTime64(3, 'UTC')),
    MODIFY COLUMN last_cancellation_time Nullable(DateTime64(3, 'UTC')),
    MODIFY COLUMN clv_x Nullable(UInt32),
    MODIFY COLUMN clv_t_x Nullable(Float64),
    MODIFY COLUMN clv_T Nullable(Float64),
    MODIFY COLUMN clv_mean_repeat_value Nullable(Float64),
    MODIFY COLUMN p_alive Nullable(Float64),
    MODIFY COLUMN expected_purchases Nullable(Float64),
    MODIFY COLUMN expected_spend Nullable(Float64),
    MODIFY COLUMN clv Nullable(Float64),
    MODIFY COLUMN clv_params_version Nullable(UInt32),
    MODIFY COLUMN churn_probability Nullable(Float64),
    MODIFY COLUMN churn_model_version Nullable(UInt32);

-- Rows written before: the zeros that meant "not computed" become NULL. Event times could not be before 2000
-- then, so a zero time meant "none"; model version 0 meant "no model"; frequency 0 "no purchase, no CLV inputs".
ALTER TABLE {db}.{score_table}
    UPDATE
        first_purchase_time = if(toUnixTimestamp64Milli(assumeNotNull(first_purchase_time)) = 0, NULL, first_purchase_time),
        last_purchase_time = if(toUnixTimestamp64Milli(assumeNotNull(last_purchase_time)) = 0, NULL, last_purchase_time),
        last_cancellation_time = if(
            toUnixTimestamp64Milli(assumeNotNull(last_cancellation_time)) = 0, NULL, last_cancellation_time
        ),
        clv_x = if(frequency = 0, NULL, clv_x),
        clv_t_x = if(frequency = 0, NULL, clv_t_x),
        clv_T = if(frequency = 0, NULL, clv_T),
        clv_mean_repeat_value = if(frequency = 0, NULL, clv_mean_repeat_value),
        p_alive = if(clv_params_version = 0, NULL, p_alive),
        expected_purchases = if(clv_params_version = 0, NULL, expected_purchases),
        expected_spend = if(clv_params_version = 0, NULL, expected_spend),
        clv = if(clv_params_version = 0, NULL, clv),
        clv_params_version = if(clv_params_version = 0, NULL, clv_params_version),
        churn_probability = if(churn_model_version = 0, NULL, churn_probability),
        churn_model_version = if(churn_model_version = 0, NULL, churn_model_version)
    WHERE 1
    SETTINGS mutations_sync = 2;
