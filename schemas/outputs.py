"""The output tables: one Arrow schema per output topic, the contract of the lake and of SQL.

Records on output topics are JSON objects, one per Kafka message, whose keys are exactly a
table's columns; times travel as int milliseconds since the epoch (UTC) and are stored as
``timestamp[ms, UTC]``. ``TIME_COLUMN`` names the column that places a row in the lake's
``date=/hour=`` partitions.
"""

from __future__ import annotations

import pyarrow as pa

from pipelines.topics import (
    AGGREGATES, ALERT_DELIVERIES, ALERTS, MODEL_QUALITY, DEAD_LETTER, METRIC_ANOMALIES, METRIC_SAMPLES, SCORED_APPLICATIONS,
    SCORED_TRANSACTIONS, TABLE_OF_TOPIC,
)

TS = pa.timestamp("ms", tz="UTC")
STR = pa.string()
F64 = pa.float64()
I64 = pa.int64()

_SCORING = [
    pa.field("score", F64, nullable=False),
    pa.field("decision", STR, nullable=False),  # approve | review | decline
    pa.field("reasons", pa.list_(STR)),
    pa.field("model_version", STR),
    pa.field("scored_at", TS, nullable=False),
]

SCORED_TRANSACTION = pa.schema([
    pa.field("event_id", STR, nullable=False),
    pa.field("event_time", TS, nullable=False),
    pa.field("card_id", STR, nullable=False),
    pa.field("account_id", STR),
    pa.field("merchant_id", STR),
    pa.field("mcc", STR),
    pa.field("amount", F64),
    pa.field("currency", STR),
    pa.field("channel", STR),
    pa.field("country", STR),
    pa.field("status", STR),
    pa.field("device_id", STR),
    pa.field("ip", STR),
    *_SCORING,
])

SCORED_APPLICATION = pa.schema([
    pa.field("event_id", STR, nullable=False),
    pa.field("event_time", TS, nullable=False),
    pa.field("applicant_id", STR, nullable=False),
    # PII leaves validation only as keyed hashes and masks (schemas/pii.py).
    pa.field("ssn_hash", STR),
    pa.field("ssn_masked", STR),
    pa.field("name_hash", STR),
    pa.field("name_masked", STR),
    pa.field("address_hash", STR),
    pa.field("postal_code", STR),
    pa.field("birth_year", I64),
    pa.field("age_years", I64),
    pa.field("income", F64),
    pa.field("employment", STR),
    pa.field("employer", STR),
    pa.field("requested_amount", F64),
    pa.field("product", STR),
    pa.field("device_id", STR),
    pa.field("ip", STR),
    pa.field("email_domain", STR),
    *_SCORING,
])

METRIC_SAMPLE = pa.schema([
    pa.field("event_id", STR, nullable=False),
    pa.field("event_time", TS, nullable=False),
    pa.field("host", STR, nullable=False),
    pa.field("service", STR),
    pa.field("metric", STR, nullable=False),
    pa.field("value", F64),
    pa.field("score", F64, nullable=False),
    pa.field("expected", F64),
    pa.field("lower", F64),
    pa.field("upper", F64),
    pa.field("reason", STR),  # spike | level_shift | out_of_range | stuck | drift | null
    pa.field("scored_at", TS, nullable=False),
])

AGGREGATE = pa.schema([
    # f"{stream}:{group_key}:{window_start}:p{input partition}": one row per partition
    pa.field("aggregate_id", STR, nullable=False),
    pa.field("stream", STR, nullable=False),
    pa.field("group_key", STR, nullable=False),     # merchant_id, or f"{host}/{metric}"
    pa.field("window_start", TS, nullable=False),
    pa.field("window_end", TS, nullable=False),
    pa.field("count", I64, nullable=False),
    pa.field("sum", F64),
    pa.field("min", F64),
    pa.field("max", F64),
    pa.field("mean", F64),
    pa.field("score_mean", F64),
    pa.field("score_max", F64),
    pa.field("flagged", I64),                       # events scored at or above the alert threshold
    pa.field("emitted_at", TS, nullable=False),
])

ALERT = pa.schema([
    pa.field("alert_id", STR, nullable=False),      # deterministic: the same input gives the same id
    pa.field("rule", STR, nullable=False),
    pa.field("severity", STR, nullable=False),
    pa.field("stream", STR, nullable=False),
    pa.field("entity", STR),                        # card_id, applicant_id, host/metric
    pa.field("event_id", STR),
    pa.field("event_time", TS),
    pa.field("value", F64),
    pa.field("threshold", F64),
    pa.field("summary", STR),
    pa.field("created_at", TS, nullable=False),
    # The explanation (agents/alerting.py); null in alerts written before it existed.
    pa.field("status", STR),                        # firing | resolved
    pa.field("incident_id", STR),                   # the firing alert's id, on both notifications
    pa.field("group_key", STR),                     # alerts with the same key share one incident
    pa.field("labels", STR),                        # JSON object: rule, severity, entity, team...
    pa.field("condition", STR),                     # e.g. "score >= 0.9", "p95(value) > 500"
    pa.field("window_ms", I64),
    pa.field("count", I64),                         # records in the window (rate, quantile)
    pa.field("reasons", pa.list_(STR)),             # model reason codes, or the rule's inputs
    pa.field("dashboard_url", STR),
    pa.field("query", STR),                         # ClickHouse SQL for the affected rows
    pa.field("description", STR),
])

ALERT_DELIVERY = pa.schema([
    pa.field("delivery_id", STR, nullable=False),   # f"{alert_id}:{channel}:{attempt}"
    pa.field("alert_id", STR, nullable=False),
    pa.field("channel", STR, nullable=False),       # webhook | slack | email | alertmanager | log
    pa.field("outcome", STR, nullable=False),       # delivered | failed | undeliverable | silenced
    pa.field("attempt", I64, nullable=False),
    pa.field("status_code", I64),
    pa.field("error", STR),
    pa.field("latency_ms", F64),
    pa.field("delivered_at", TS, nullable=False),
])

MODEL_QUALITY_RECORD = pa.schema([
    pa.field("model_version", STR, nullable=False),
    pa.field("stream", STR, nullable=False),        # transactions | applications
    pa.field("role", STR, nullable=False),          # champion | challenger
    pa.field("window_end", TS, nullable=False),     # quality over labels known up to here
    pa.field("n", I64, nullable=False),
    pa.field("positives", I64, nullable=False),
    pa.field("roc_auc", F64),
    pa.field("average_precision", F64),
    pa.field("precision_at_review", F64),
    pa.field("recall_at_review", F64),
    pa.field("computed_at", TS, nullable=False),
])

DEAD_LETTER_RECORD = pa.schema([
    pa.field("source_topic", STR, nullable=False),
    pa.field("source_partition", pa.int32()),
    pa.field("source_offset", I64),
    pa.field("key", STR),
    pa.field("kind", STR, nullable=False),          # invalid_json | oversize | schema | stale | future | duplicate | undeliverable | scoring | learning
    pa.field("reason", STR, nullable=False),
    pa.field("event_id", STR),
    pa.field("original", STR),                      # the message as received, PII redacted
    pa.field("received_at", TS, nullable=False),
])

SCHEMA_OF_TOPIC: dict[str, pa.Schema] = {
    SCORED_TRANSACTIONS: SCORED_TRANSACTION,
    SCORED_APPLICATIONS: SCORED_APPLICATION,
    METRIC_SAMPLES: METRIC_SAMPLE,
    METRIC_ANOMALIES: METRIC_SAMPLE,
    AGGREGATES: AGGREGATE,
    ALERTS: ALERT,
    ALERT_DELIVERIES: ALERT_DELIVERY,
    MODEL_QUALITY: MODEL_QUALITY_RECORD,
    DEAD_LETTER: DEAD_LETTER_RECORD,
}

TIME_COLUMN: dict[str, str] = {
    SCORED_TRANSACTIONS: "event_time",
    SCORED_APPLICATIONS: "event_time",
    METRIC_SAMPLES: "event_time",
    METRIC_ANOMALIES: "event_time",
    AGGREGATES: "window_start",
    ALERTS: "created_at",
    ALERT_DELIVERIES: "delivered_at",
    MODEL_QUALITY: "window_end",
    DEAD_LETTER: "received_at",
}

SCHEMA_OF_TABLE: dict[str, pa.Schema] = {
    TABLE_OF_TOPIC[topic]: schema for topic, schema in SCHEMA_OF_TOPIC.items()
}
