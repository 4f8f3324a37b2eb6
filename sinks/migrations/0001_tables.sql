-- The output tables (schemas/outputs.py), one per output topic, loaded by `riskstream load`.
--
-- Columns and their order follow the Arrow schemas exactly (tests/test_sinks_warehouse.py
-- checks it); ClickHouse types come from sinks/clickhouse.py's clickhouse_type, with
-- LowCardinality on low-cardinality strings. A schema change is a new migration
-- (ALTER TABLE ... ADD COLUMN), never an edit of this file.
--
-- Engines: ReplacingMergeTree where a replayed record must collapse (same event_id /
-- aggregate_id / alert_id / delivery_id: the pipeline is at least once upstream); its
-- sorting key holds the id and only columns that a replay repeats verbatim. Query with
-- FINAL (or SETTINGS final = 1) for exact counts before background merges collapse them.
-- Every table keeps the hashes of its last 10,000 inserted blocks, so that the loader's
-- retried batch (same insert_deduplication_token) is dropped (sinks/loader.py).
--
-- TTLs are not here: `riskstream warehouse migrate` sets them from
-- RISKSTREAM_CLICKHOUSE_RAW_RETENTION_DAYS (scored_*, metric_*, dead_letter; 90 days) and
-- RISKSTREAM_CLICKHOUSE_ROLLUP_RETENTION_DAYS (aggregates, alerts, deliveries, model
-- quality and the rollups; 730 days), and changes them when those change.

CREATE TABLE IF NOT EXISTS scored_transactions
(
    event_id       String,
    event_time     DateTime64(3, 'UTC'),
    card_id        String,
    account_id     Nullable(String),
    merchant_id    Nullable(String),
    mcc            LowCardinality(Nullable(String)),
    amount         Nullable(Float64),
    currency       LowCardinality(Nullable(String)),
    channel        LowCardinality(Nullable(String)),
    country        LowCardinality(Nullable(String)),
    status         LowCardinality(Nullable(String)),
    device_id      Nullable(String),
    ip             Nullable(String),
    score          Float64,
    decision       LowCardinality(String),
    reasons        Array(LowCardinality(String)),
    model_version  LowCardinality(Nullable(String)),
    scored_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (toStartOfHour(event_time), card_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS scored_applications
(
    event_id          String,
    event_time        DateTime64(3, 'UTC'),
    applicant_id      String,
    ssn_hash          Nullable(String),
    ssn_masked        Nullable(String),
    name_hash         Nullable(String),
    name_masked       Nullable(String),
    address_hash      Nullable(String),
    postal_code       Nullable(String),
    birth_year        Nullable(Int64),
    age_years         Nullable(Int64),
    income            Nullable(Float64),
    employment        LowCardinality(Nullable(String)),
    employer          Nullable(String),
    requested_amount  Nullable(Float64),
    product           LowCardinality(Nullable(String)),
    device_id         Nullable(String),
    ip                Nullable(String),
    email_domain      LowCardinality(Nullable(String)),
    score             Float64,
    decision          LowCardinality(String),
    reasons           Array(LowCardinality(String)),
    model_version     LowCardinality(Nullable(String)),
    scored_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (toStartOfHour(event_time), applicant_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS metric_samples
(
    event_id    String,
    event_time  DateTime64(3, 'UTC'),
    host        LowCardinality(String),
    service     LowCardinality(Nullable(String)),
    metric      LowCardinality(String),
    value       Nullable(Float64),
    score       Float64,
    expected    Nullable(Float64),
    lower       Nullable(Float64),
    upper       Nullable(Float64),
    reason      LowCardinality(Nullable(String)),
    scored_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (host, metric, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS metric_anomalies
(
    event_id    String,
    event_time  DateTime64(3, 'UTC'),
    host        LowCardinality(String),
    service     LowCardinality(Nullable(String)),
    metric      LowCardinality(String),
    value       Nullable(Float64),
    score       Float64,
    expected    Nullable(Float64),
    lower       Nullable(Float64),
    upper       Nullable(Float64),
    reason      LowCardinality(Nullable(String)),
    scored_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (host, metric, event_time, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- aggregate_id = f"{stream}:{group_key}:{window_start}": the key below is the id. A window
-- emitted again (late events) replaces the earlier emission (the later emitted_at wins).
CREATE TABLE IF NOT EXISTS aggregates
(
    aggregate_id  String,
    stream        LowCardinality(String),
    group_key     String,
    window_start  DateTime64(3, 'UTC'),
    window_end    DateTime64(3, 'UTC'),
    count         Int64,
    sum           Nullable(Float64),
    min           Nullable(Float64),
    max           Nullable(Float64),
    mean          Nullable(Float64),
    score_mean    Nullable(Float64),
    score_max     Nullable(Float64),
    flagged       Nullable(Int64),
    emitted_at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (stream, window_start, group_key, aggregate_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- alert_id is deterministic (the same input gives the same id); rule is part of it.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id    String,
    rule        LowCardinality(String),
    severity    LowCardinality(String),
    stream      LowCardinality(String),
    entity      Nullable(String),
    event_id    Nullable(String),
    event_time  Nullable(DateTime64(3, 'UTC')),
    value       Nullable(Float64),
    threshold   Nullable(Float64),
    summary     Nullable(String),
    created_at  DateTime64(3, 'UTC'),
    -- the explanation (agents/alerting.py); null in alerts written before it existed
    status         LowCardinality(Nullable(String)),
    incident_id    Nullable(String),
    group_key      Nullable(String),
    labels         Nullable(String),
    condition      Nullable(String),
    window_ms      Nullable(Int64),
    count          Nullable(Int64),
    reasons        Array(LowCardinality(String)),
    dashboard_url  Nullable(String),
    query          Nullable(String),
    description    Nullable(String)
)
ENGINE = ReplacingMergeTree(created_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (rule, alert_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS alert_deliveries
(
    delivery_id   String,
    alert_id      String,
    channel       LowCardinality(String),
    outcome       LowCardinality(String),
    attempt       Int64,
    status_code   Nullable(Int64),
    error         Nullable(String),
    latency_ms    Nullable(Float64),
    delivered_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(delivered_at)
PARTITION BY toYYYYMM(delivered_at)
ORDER BY (channel, alert_id, delivery_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS model_quality
(
    model_version        LowCardinality(String),
    stream               LowCardinality(String),
    role                 LowCardinality(String),
    window_end           DateTime64(3, 'UTC'),
    n                    Int64,
    positives            Int64,
    roc_auc              Nullable(Float64),
    average_precision    Nullable(Float64),
    precision_at_review  Nullable(Float64),
    recall_at_review     Nullable(Float64),
    computed_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_end)
ORDER BY (stream, role, model_version, window_end)
SETTINGS non_replicated_deduplication_window = 10000;

-- Dead letters have no id of their own: a plain MergeTree. Loader retries are dropped by
-- their deduplication token; a reject published twice upstream stays twice (README).
CREATE TABLE IF NOT EXISTS dead_letter
(
    source_topic      LowCardinality(String),
    source_partition  Nullable(Int32),
    source_offset     Nullable(Int64),
    key               Nullable(String),
    kind              LowCardinality(String),
    reason            String,
    event_id          Nullable(String),
    original          Nullable(String),
    received_at       DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(received_at)
ORDER BY (source_topic, kind, received_at)
SETTINGS non_replicated_deduplication_window = 10000;
