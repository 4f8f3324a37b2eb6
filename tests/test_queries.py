"""The analysts' starter queries (sinks/queries/*.sql) run on chDB over the lake AND over the
warehouse tables, and give the same answer; the rollup versions agree with the raw ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lake_fixtures import make_record

from pipelines.topics import (
    ALERTS, METRIC_ANOMALIES, METRIC_SAMPLES, MODEL_QUALITY, SCORED_TRANSACTIONS, TABLE_OF_TOPIC,
)
from sinks.clickhouse import query_rows
from sinks.lake import LakeWriter, to_arrow
from sinks.loader import dedup_token, insert_settings
from sinks.warehouse import QUERY_SETTINGS, ChdbTarget, migrate, starter_queries

NOW_MS = int(time.time() * 1000)
MINUTE_MS = 60_000


def _data() -> dict[str, list[dict]]:
    decisions = ["approve"] * 6 + ["review", "decline", "decline", "approve"]
    channels, countries = ["ecom", "pos", "moto"], ["US", "FR", "BR", "US"]
    txns = [make_record(SCORED_TRANSACTIONS, i, time_ms=NOW_MS - (i % 50) * 7 * MINUTE_MS,
                        decision=decisions[i % 10], score=round((i * 37 % 100) / 100, 2),
                        channel=channels[i % 3], country=countries[i % 4])
            for i in range(400)]
    samples = [make_record(METRIC_SAMPLES, i, time_ms=NOW_MS - (i % 30) * MINUTE_MS,
                           value=float(i % 97)) for i in range(300)]
    anomalies = [make_record(METRIC_ANOMALIES, i, time_ms=NOW_MS - (i % 20) * 5 * MINUTE_MS,
                             metric=["cpu", "latency_p95_ms"][i % 2], score=0.9 + (i % 10) / 100)
                 for i in range(60)]
    alerts = [make_record(ALERTS, i, time_ms=NOW_MS - i * 30 * MINUTE_MS,
                          rule=["high_fraud_score", "decline_rate"][i % 2],
                          severity=["high", "critical", "warning"][i % 3], entity=f"card-{i % 5}")
              for i in range(40)]
    quality = [{"model_version": f"fraud-v{1 + i % 2}", "stream": "transactions",
                "role": ["champion", "challenger"][i % 2], "window_end": NOW_MS - i * 3_600_000,
                "n": 1000 + i, "positives": 12 + i, "roc_auc": 0.9 + i / 1000,
                "average_precision": 0.5 + i / 1000, "precision_at_review": 0.4,
                "recall_at_review": 0.7, "computed_at": NOW_MS - i * 3_600_000 + 1000}
               for i in range(48)]
    return {SCORED_TRANSACTIONS: txns, METRIC_SAMPLES: samples, METRIC_ANOMALIES: anomalies,
            ALERTS: alerts, MODEL_QUALITY: quality}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """The same records in a lake and in a chDB warehouse."""
    root = tmp_path_factory.mktemp("queries")
    lake, warehouse = root / "lake", root / "warehouse"
    data = _data()
    with LakeWriter(lake) as writer:
        for topic, records in data.items():
            writer.write(topic, records, {0: (0, len(records) - 1)})
    with ChdbTarget(warehouse) as target:
        migrate(target)
        for topic, records in data.items():
            target.insert(TABLE_OF_TOPIC[topic], to_arrow(topic, records),
                          insert_settings(dedup_token(topic, 0, 0, len(records) - 1)))
    yield lake, warehouse


def _on_warehouse(warehouse: Path, sql: str) -> list[dict]:
    with ChdbTarget(warehouse) as target:
        return target.query(sql, QUERY_SETTINGS)


@pytest.mark.parametrize("name", sorted(starter_queries()))
def test_a_starter_query_gives_the_same_rows_on_the_lake_and_in_the_warehouse(places, name):
    lake, warehouse = places
    sql = starter_queries()[name]
    on_lake = query_rows(lake, sql)
    assert on_lake, f"{name}: no rows: the test data misses what the query looks at"
    assert _on_warehouse(warehouse, sql) == on_lake


def test_the_rollup_queries_agree_with_the_raw_tables(places):
    _, warehouse = places
    rollup = starter_queries(warehouse_only=True)
    raw = starter_queries()
    assert _on_warehouse(warehouse, rollup["decisions_over_time"]) == _on_warehouse(
        warehouse, raw["decisions_over_time"])
    p95 = _on_warehouse(warehouse, rollup["metric_p95_hourly"])
    exact = _on_warehouse(warehouse, """
        SELECT toStartOfHour(event_time) AS hour, host, metric, count() AS samples,
               round(quantile(0.95)(value), 3) AS p95, round(max(value), 3) AS max
        FROM metric_samples WHERE event_time >= now() - INTERVAL 24 HOUR
        GROUP BY hour, host, metric ORDER BY hour, host, metric""")
    assert p95 and p95 == exact


def test_the_readme_shows_every_starter_query():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in starter_queries():
        assert f"sinks/queries/{name}.sql" in readme, name
