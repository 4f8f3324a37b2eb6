"""Factories of output records (what the agents publish on output topics) and helpers for the
lake, sink and ClickHouse tests.

Each factory returns a new valid record of its table; keyword overrides replace fields.
Times are int milliseconds (UTC), as on the wire. ``n`` makes ids unique and deterministic.

>>> make_record("alerts", 7, time_ms=1714568400000)["alert_id"]
'alert-7'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Producer

from pipelines.kafka import producer_config
from schemas.outputs import SCHEMA_OF_TOPIC
from pipelines.topics import (
    AGGREGATES, ALERT_DELIVERIES, ALERTS, DEAD_LETTER, MODEL_QUALITY, METRIC_ANOMALIES, METRIC_SAMPLES, SCORED_APPLICATIONS,
    SCORED_TRANSACTIONS,
)

# 2024-05-01 13:00:00 UTC: partition date=2024-05-01/hour=13.
T0_MS = 1_714_568_400_000
HOUR_MS = 3_600_000

# The column that identifies a record of each topic (dead letters have no id of their own).
ID_COLUMN = {
    SCORED_TRANSACTIONS: "event_id",
    SCORED_APPLICATIONS: "event_id",
    METRIC_SAMPLES: "event_id",
    METRIC_ANOMALIES: "event_id",
    AGGREGATES: "aggregate_id",
    ALERTS: "alert_id",
    ALERT_DELIVERIES: "delivery_id",
    MODEL_QUALITY: "n",  # the factory numbers its rows through n
    DEAD_LETTER: "event_id",
}


def _scoring(time_ms: int) -> dict[str, Any]:
    return {"score": 0.12, "decision": "approve", "reasons": ["amount_zscore", "new_device"],
            "model_version": "fraud-v1", "scored_at": time_ms + 5}


def make_record(topic: str, n: int = 0, *, time_ms: int = T0_MS, **overrides: Any) -> dict:
    """Return a valid record of an output topic, number ``n``, at ``time_ms``."""
    if topic == SCORED_TRANSACTIONS:
        record = {"event_id": f"txn-{n}", "event_time": time_ms, "card_id": f"card-{n % 97}",
                  "account_id": "acct-1", "merchant_id": f"merch-{n % 13}", "mcc": "5411",
                  "amount": 10.0 + n, "currency": "USD", "channel": "ecom", "country": "US",
                  "status": "approved", "device_id": "dev-1", "ip": "203.0.113.7",
                  **_scoring(time_ms)}
    elif topic == SCORED_APPLICATIONS:
        record = {"event_id": f"app-{n}", "event_time": time_ms, "applicant_id": f"applicant-{n}",
                  "ssn_hash": "h" * 64, "ssn_masked": "***-**-1234", "name_hash": "n" * 64,
                  "name_masked": "J*** D**", "address_hash": "a" * 64, "postal_code": "94107",
                  "birth_year": 1980, "age_years": 44, "income": 85000.0,
                  "employment": "employed", "employer": "Acme", "requested_amount": 5000.0,
                  "product": "card", "device_id": "dev-2", "ip": "198.51.100.2",
                  "email_domain": "example.com", **_scoring(time_ms)}
    elif topic in (METRIC_SAMPLES, METRIC_ANOMALIES):
        prefix = "metric" if topic == METRIC_SAMPLES else "anomaly"
        record = {"event_id": f"{prefix}-{n}", "event_time": time_ms, "host": f"web-{n % 5}",
                  "service": "api", "metric": "latency_p95_ms", "value": 120.0 + n % 7,
                  "score": 0.3, "expected": 121.0, "lower": 90.0, "upper": 150.0,
                  "reason": None, "scored_at": time_ms + 3}
    elif topic == AGGREGATES:
        record = {"aggregate_id": f"transactions:merch-{n}:{time_ms}", "stream": "transactions",
                  "group_key": f"merch-{n}", "window_start": time_ms,
                  "window_end": time_ms + 60_000, "count": 10, "sum": 425.0, "min": 1.0,
                  "max": 100.0, "mean": 42.5, "score_mean": 0.2, "score_max": 0.95,
                  "flagged": 1, "emitted_at": time_ms + 70_000}
    elif topic == ALERTS:
        record = {"alert_id": f"alert-{n}", "rule": "high_fraud_score", "severity": "high",
                  "stream": "transactions", "entity": "card-1", "event_id": f"txn-{n}",
                  "event_time": time_ms, "value": 0.97, "threshold": 0.9,
                  "summary": "card card-1: fraud score 0.97 >= 0.90", "created_at": time_ms}
    elif topic == ALERT_DELIVERIES:
        record = {"delivery_id": f"alert-{n}:webhook:1", "alert_id": f"alert-{n}",
                  "channel": "webhook", "outcome": "delivered", "attempt": 1,
                  "status_code": 204, "error": None, "latency_ms": 12.5,
                  "delivered_at": time_ms}
    elif topic == MODEL_QUALITY:
        record = {"model_version": "txn-v1", "stream": "transactions", "role": "champion",
                  "window_end": time_ms, "n": 1000 + n, "positives": 12, "roc_auc": 0.91,
                  "average_precision": 0.7, "precision_at_review": 0.5,
                  "recall_at_review": 0.6, "computed_at": time_ms}
    elif topic == DEAD_LETTER:
        record = {"source_topic": "transactions", "source_partition": n % 4, "source_offset": n,
                  "key": "card-1", "kind": "schema", "reason": "amount: must be > 0, got -12.5",
                  "event_id": f"bad-{n}", "original": '{"amount": -12.5}',
                  "received_at": time_ms}
    else:
        raise ValueError(f"not an output topic: {topic}")
    # Every column of the table, in schema order (optional ones null unless set above).
    record = {name: record.get(name) for name in SCHEMA_OF_TOPIC[topic].names}
    record.update(overrides)
    return record


def produce(bootstrap: str, topic: str, values: list[dict | bytes], *,
            partitions: int = 4) -> None:
    """Produce ``values`` (dicts as JSON) round-robin over the partitions; wait for delivery."""
    producer = Producer(producer_config(bootstrap))
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for i, value in enumerate(values):
        payload = value if isinstance(value, bytes) else orjson.dumps(value)
        producer.produce(topic, payload, partition=i % partitions, on_delivery=on_delivery)
        if i % 1000 == 999:
            producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not failures, f"{remaining} undelivered, failures: {failures[:3]}"


def wait_until(condition: Callable[[], Any], *, timeout_s: float, what: str,
               every_s: float = 0.2) -> Any:
    """Return the first truthy ``condition()``; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
