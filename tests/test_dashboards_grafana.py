"""The Grafana dashboards: provisioned, wired to the fixed datasource uids, and every ClickHouse
panel query runs on chDB with the real warehouse schema (sinks/migrations), returning rows."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from lake_fixtures import make_record

from dashboards.grafana.generate import render
from pipelines.topics import (
    ALERTS, METRIC_ANOMALIES, METRIC_SAMPLES, SCORED_APPLICATIONS, SCORED_TRANSACTIONS,
    TABLE_OF_TOPIC,
)
from sinks.lake import to_arrow
from sinks.loader import dedup_token, insert_settings
from sinks.warehouse import QUERY_SETTINGS, ChdbTarget, migrate

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "dashboards" / "grafana"
NOW_S = int(time.time())
FROM_S, TO_S = NOW_S - 6 * 3600, NOW_S + 60


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text())
            for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def _clickhouse_queries() -> list[tuple[str, str, str]]:
    return [(name, panel["title"], target["rawSql"])
            for name, board in _dashboards().items() for panel in board["panels"]
            for target in panel["targets"] if target["datasource"]["uid"] == "clickhouse"]


def expand_macros(sql: str) -> str:
    """Replace the ClickHouse datasource's macros and our variables with concrete values."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 rf"\1 >= toDateTime({FROM_S}) AND \1 <= toDateTime({TO_S})", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)",
                 r"toStartOfInterval(toDateTime(\1), INTERVAL 300 second)", sql)
    sql = (sql.replace("$__fromTime", f"toDateTime({FROM_S})")
              .replace("$__toTime", f"toDateTime({TO_S})").replace("$__interval_s", "300"))
    sql = sql.replace("${rule}", "").replace("${entity}", "")
    assert "$" not in sql, f"a macro the test does not expand: {sql}"
    return sql


def test_the_files_are_what_the_generator_writes():
    files = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert files == render(), "run `python -m dashboards.grafana.generate`"


def test_dashboards_are_provisioned_with_fixed_datasource_uids():
    boards = _dashboards()
    uids = {b["uid"] for b in boards.values()}
    assert {"riskstream-system", "riskstream-performance", "riskstream-business",
            "riskstream-alerts"} == uids
    titles = " ".join(b["title"] for b in boards.values())
    for words in ("System Overview", "Application Performance", "Business Metrics"):
        assert words in titles
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" /
                              "datasources.yml").read_text())["datasources"]
    by_uid = {s["uid"]: s["type"] for s in sources}
    assert by_uid == {"prometheus": "prometheus", "clickhouse": "grafana-clickhouse-datasource"}
    for board in boards.values():
        for panel in board["panels"]:
            assert panel["title"] and panel["targets"], panel
            for target in panel["targets"]:
                assert by_uid[target["datasource"]["uid"]] == target["datasource"]["type"]
    # Both kinds of datasource are used.
    kinds = {t["datasource"]["uid"] for b in boards.values() for p in b["panels"]
             for t in p["targets"]}
    assert kinds == {"prometheus", "clickhouse"}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" /
                               "riskstream.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./dashboards/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_alert_links_open_the_alerts_dashboard_with_its_variables():
    board = _dashboards()["alerts.json"]
    assert board["uid"] == "riskstream-alerts"  # agents/alerting.py links /d/riskstream-alerts
    assert {v["name"] for v in board["templating"]["list"]} == {"rule", "entity"}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("grafana") / "warehouse"
    now_ms = NOW_S * 1000
    data = {
        SCORED_TRANSACTIONS: [make_record(SCORED_TRANSACTIONS, i, time_ms=now_ms - i * 60_000,
                                          decision=["approve", "review", "decline"][i % 3],
                                          score=(i % 20) / 20) for i in range(120)],
        SCORED_APPLICATIONS: [make_record(SCORED_APPLICATIONS, i, time_ms=now_ms - i * 90_000)
                              for i in range(40)],
        METRIC_SAMPLES: [make_record(METRIC_SAMPLES, i, time_ms=now_ms - i * 30_000,
                                     metric=["latency_p95_ms", "error_rate", "request_rate"][i % 3])
                         for i in range(150)],
        METRIC_ANOMALIES: [make_record(METRIC_ANOMALIES, i, time_ms=now_ms - i * 600_000,
                                       score=0.99) for i in range(12)],
        ALERTS: [make_record(ALERTS, i, time_ms=now_ms - i * 300_000,
                             severity=["warning", "critical"][i % 2]) for i in range(20)],
        "dead-letter": [make_record("dead-letter", i, time_ms=now_ms - i * 60_000)
                        for i in range(10)],
        "alert-deliveries": [{"delivery_id": f"alert-{i}:webhook:1", "alert_id": f"alert-{i}",
                              "channel": "webhook", "outcome": "delivered", "attempt": 1,
                              "status_code": 200, "error": None, "latency_ms": 12.5 + i,
                              "delivered_at": now_ms - i * 300_000} for i in range(10)],
        "model-quality": [{"model_version": "fraud-v1", "stream": "transactions",
                           "role": "champion", "window_end": now_ms - i * 3_600_000, "n": 500,
                           "positives": 9, "roc_auc": 0.9, "average_precision": 0.5,
                           "precision_at_review": 0.4, "recall_at_review": 0.7,
                           "computed_at": now_ms - i * 3_600_000 + 1} for i in range(5)],
    }
    with ChdbTarget(path) as target:
        migrate(target)
        for topic, records in data.items():
            target.insert(TABLE_OF_TOPIC[topic], to_arrow(topic, records),
                          insert_settings(dedup_token(topic, 0, 0, len(records) - 1)))
        yield target


def test_every_clickhouse_panel_query_runs_on_the_warehouse_schema(warehouse):
    queries = _clickhouse_queries()
    assert len(queries) >= 15
    empty = []
    for board, title, sql in queries:
        rows = warehouse.query(expand_macros(sql), QUERY_SETTINGS)  # raises on a bad query
        if not rows:
            empty.append(f"{board}: {title}")
    assert not empty, f"panels with no rows on the test data: {empty}"
