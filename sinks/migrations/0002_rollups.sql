-- Hourly and daily rollups, kept by materialized views as rows are inserted.
--
-- Read them with the -Merge combinators and sum() over the SimpleAggregateFunction columns,
-- grouping again (background merges are not instantaneous), e.g.
--   SELECT hour, sum(transactions), quantileMerge(0.95)(value_p95) ... GROUP BY hour
-- The views see every inserted block once: a loader retry (same deduplication token) is
-- dropped in the view's table too (each has a deduplication window). A record replayed
-- upstream with a new offset is collapsed by the raw table's ReplacingMergeTree but counted
-- twice here: for exact figures over such replays, query the raw tables with FINAL.
-- Null dimensions read as '' (a sorting key cannot hold nulls).

CREATE TABLE IF NOT EXISTS transactions_hourly
(
    hour          DateTime('UTC'),
    channel       LowCardinality(String),
    country       LowCardinality(String),
    decision      LowCardinality(String),
    transactions  SimpleAggregateFunction(sum, UInt64),
    amount        SimpleAggregateFunction(sum, Float64),
    score_sum     SimpleAggregateFunction(sum, Float64),
    score_max     SimpleAggregateFunction(max, Float64),
    cards         AggregateFunction(uniq, String),
    merchants     AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, channel, country, decision)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS transactions_hourly_mv TO transactions_hourly AS
SELECT
    toStartOfHour(event_time)  AS hour,
    ifNull(channel, '')        AS channel,
    ifNull(country, '')        AS country,
    decision,
    count()                    AS transactions,
    sum(ifNull(amount, 0))     AS amount,
    sum(score)                 AS score_sum,
    max(score)                 AS score_max,
    uniqState(card_id)         AS cards,
    uniqState(ifNull(merchant_id, '')) AS merchants
FROM scored_transactions
GROUP BY hour, channel, country, decision;

CREATE TABLE IF NOT EXISTS transactions_daily
(
    day           Date,
    channel       LowCardinality(String),
    country       LowCardinality(String),
    decision      LowCardinality(String),
    transactions  SimpleAggregateFunction(sum, UInt64),
    amount        SimpleAggregateFunction(sum, Float64),
    score_sum     SimpleAggregateFunction(sum, Float64),
    amount_p95    AggregateFunction(quantile(0.95), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, channel, country, decision)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS transactions_daily_mv TO transactions_daily AS
SELECT
    toDate(event_time)         AS day,
    ifNull(channel, '')        AS channel,
    ifNull(country, '')        AS country,
    decision,
    count()                    AS transactions,
    sum(ifNull(amount, 0))     AS amount,
    sum(score)                 AS score_sum,
    quantileState(0.95)(ifNull(scored_transactions.amount, 0)) AS amount_p95
FROM scored_transactions
GROUP BY day, channel, country, decision;

CREATE TABLE IF NOT EXISTS applications_daily
(
    day               Date,
    product           LowCardinality(String),
    decision          LowCardinality(String),
    applications      SimpleAggregateFunction(sum, UInt64),
    requested_amount  SimpleAggregateFunction(sum, Float64),
    score_sum         SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, product, decision)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS applications_daily_mv TO applications_daily AS
SELECT
    toDate(event_time)               AS day,
    ifNull(product, '')              AS product,
    decision,
    count()                          AS applications,
    sum(ifNull(requested_amount, 0)) AS requested_amount,
    sum(score)                       AS score_sum
FROM scored_applications
GROUP BY day, product, decision;

-- Samples with a value (a null value is not a sample of the metric's distribution).
CREATE TABLE IF NOT EXISTS metric_samples_hourly
(
    hour       DateTime('UTC'),
    host       LowCardinality(String),
    metric     LowCardinality(String),
    samples    SimpleAggregateFunction(sum, UInt64),
    value_sum  SimpleAggregateFunction(sum, Float64),
    value_max  SimpleAggregateFunction(max, Float64),
    value_p95  AggregateFunction(quantile(0.95), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, host, metric)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS metric_samples_hourly_mv TO metric_samples_hourly AS
SELECT
    toStartOfHour(event_time)           AS hour,
    host,
    metric,
    count()                             AS samples,
    sum(assumeNotNull(value))           AS value_sum,
    max(assumeNotNull(value))           AS value_max,
    quantileState(0.95)(assumeNotNull(value)) AS value_p95
FROM metric_samples
WHERE value IS NOT NULL
GROUP BY hour, host, metric;

CREATE TABLE IF NOT EXISTS metric_anomalies_hourly
(
    hour       DateTime('UTC'),
    host       LowCardinality(String),
    metric     LowCardinality(String),
    reason     LowCardinality(String),
    anomalies  SimpleAggregateFunction(sum, UInt64),
    score_max  SimpleAggregateFunction(max, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, host, metric, reason)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS metric_anomalies_hourly_mv TO metric_anomalies_hourly AS
SELECT
    toStartOfHour(event_time)  AS hour,
    host,
    metric,
    ifNull(reason, '')         AS reason,
    count()                    AS anomalies,
    max(score)                 AS score_max
FROM metric_anomalies
GROUP BY hour, host, metric, reason;

CREATE TABLE IF NOT EXISTS alerts_daily
(
    day       Date,
    rule      LowCardinality(String),
    severity  LowCardinality(String),
    stream    LowCardinality(String),
    alerts    SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, rule, severity, stream)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS alerts_daily_mv TO alerts_daily AS
SELECT toDate(created_at) AS day, rule, severity, stream, count() AS alerts
FROM alerts
GROUP BY day, rule, severity, stream;
