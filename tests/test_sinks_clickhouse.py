"""ClickHouse SQL over the lake with chDB: empty tables, types, formats, errors."""

from __future__ import annotations

import csv
import doctest
import io
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from lake_fixtures import HOUR_MS, T0_MS, make_record

import sinks.clickhouse
from pipelines.errors import RiskstreamError
from pipelines.topics import (
    ALERTS, DEAD_LETTER, OUTPUT_TOPICS, SCORED_APPLICATIONS, SCORED_TRANSACTIONS, TABLE_OF_TOPIC,
)
from schemas.outputs import SCHEMA_OF_TABLE
from sinks.clickhouse import (
    STRUCTURE_OF_TABLE, LakeQueryError, clickhouse_type, query_lake, query_rows, structure,
)
from sinks.lake import LakeWriter


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A lake with 30 scored transactions over two hours, 3 alerts and 2 dead letters."""
    root = tmp_path / "lake"
    with LakeWriter(root) as writer:
        # one every 3 minutes from 13:00: 20 in hour 13, 10 in hour 14
        txns = [make_record(SCORED_TRANSACTIONS, n, time_ms=T0_MS + n * 3 * 60_000)
                for n in range(30)]
        txns[29]["account_id"] = None
        txns[28]["reasons"] = []
        writer.write(SCORED_TRANSACTIONS, txns[:20], {0: (0, 19)})
        writer.write(SCORED_TRANSACTIONS, txns[20:], {0: (20, 29)})
        writer.write(ALERTS, [make_record(ALERTS, n) for n in range(3)], {1: (0, 2)})
        writer.write(DEAD_LETTER, [make_record(DEAD_LETTER, n) for n in range(2)], {3: (5, 6)})
    return root


def test_doctests():
    assert doctest.testmod(sinks.clickhouse).failed == 0


def test_an_empty_or_missing_lake_has_every_table_with_0_rows(tmp_path):
    for root in (tmp_path / "missing", tmp_path):
        for table in SCHEMA_OF_TABLE:
            assert query_rows(root, f"SELECT count() AS n FROM {table}") == [{"n": 0}]


def test_the_documented_tables_are_there():
    # README and `riskstream sql` users name these; a rename must be a decision, not a slip.
    assert {"scored_transactions", "scored_applications", "metric_samples", "metric_anomalies",
            "aggregates", "alerts", "alert_deliveries", "model_quality",
            "dead_letter"} <= set(SCHEMA_OF_TABLE)


def test_a_table_with_only_tmp_files_has_0_rows(tmp_path):
    # a flush in progress: its file is not renamed yet
    hour = tmp_path / "alerts" / "date=2024-05-01" / "hour=13"
    hour.mkdir(parents=True)
    (hour / "part-0123456789abcdef.parquet.tmp").write_bytes(b"PAR1 half written")
    assert query_rows(tmp_path, "SELECT count() AS n FROM alerts") == [{"n": 0}]


def test_counts_and_group_by(lake):
    rows = query_rows(lake, "SELECT toHour(event_time) AS hour, count() AS n, "
                            "countIf(account_id IS NULL) AS no_account "
                            "FROM scored_transactions GROUP BY hour ORDER BY hour")
    assert rows == [{"hour": 13, "n": 20, "no_account": 0}, {"hour": 14, "n": 10, "no_account": 1}]
    assert query_rows(lake, "SELECT count() AS n FROM alerts") == [{"n": 3}]
    assert query_rows(lake, "SELECT count() AS n FROM dead_letter") == [{"n": 2}]


def test_column_types_come_from_the_arrow_schema(lake):
    types = {r["name"]: r["type"] for r in query_rows(lake, "DESCRIBE scored_transactions")}
    assert types["event_time"] == "DateTime64(3, 'UTC')"
    assert types["scored_at"] == "DateTime64(3, 'UTC')"
    assert types["event_id"] == "String"
    assert types["account_id"] == "Nullable(String)"
    assert types["amount"] == "Nullable(Float64)"
    assert types["score"] == "Float64"
    assert types["reasons"] == "Array(String)"
    assert list(types) == SCHEMA_OF_TABLE["scored_transactions"].names
    dead = {r["name"]: r["type"] for r in query_rows(lake, "DESCRIBE dead_letter")}
    assert dead["source_partition"] == "Nullable(Int32)"
    assert dead["received_at"] == "DateTime64(3, 'UTC')"


def test_values_read_back_as_written(lake):
    [row] = query_rows(lake, "SELECT * FROM scored_transactions WHERE event_id = 'txn-3'")
    assert row["event_time"] == datetime(2024, 5, 1, 13, 9, tzinfo=UTC)
    assert row["event_time"].utcoffset().total_seconds() == 0
    assert row["reasons"] == ["amount_zscore", "new_device"]
    assert row["amount"] == 13.0
    assert query_rows(lake, "SELECT account_id FROM scored_transactions "
                            "WHERE event_id = 'txn-29'") == [{"account_id": None}]
    assert query_rows(lake, "SELECT reasons FROM scored_transactions WHERE event_id = 'txn-28'"
                      ) == [{"reasons": []}]
    # millisecond precision survives
    [row] = query_rows(lake, "SELECT toUnixTimestamp64Milli(scored_at) AS ms "
                             "FROM scored_transactions WHERE event_id = 'txn-0'")
    assert row["ms"] == T0_MS + 5


def test_formats(lake):
    sql = "SELECT alert_id, created_at FROM alerts ORDER BY alert_id"
    pretty = query_lake(lake, sql)
    assert "alert_id" in pretty and "alert-2" in pretty and "2024-05-01 13:00:00.000" in pretty
    assert "┌" in pretty  # a table for people

    rows = list(csv.reader(io.StringIO(query_lake(lake, sql, fmt="csv"))))
    assert rows[0] == ["alert_id", "created_at"]
    assert rows[1:] == [[f"alert-{n}", "2024-05-01 13:00:00.000"] for n in range(3)]

    lines = query_lake(lake, sql, fmt="json").splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {"alert_id": f"alert-{n}", "created_at": "2024-05-01 13:00:00.000"} for n in range(3)]

    # any ClickHouse output format by name
    assert query_lake(lake, "SELECT count() AS n FROM alerts", fmt="TSVWithNames") == "n\n3\n"


def test_tables_are_the_output_tables():
    assert set(STRUCTURE_OF_TABLE) == set(TABLE_OF_TOPIC.values()) == set(SCHEMA_OF_TABLE)
    assert len(OUTPUT_TOPICS) == len(STRUCTURE_OF_TABLE)


def test_structure_and_types():
    assert structure(pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("at", pa.timestamp("ms", tz="UTC")),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("n", pa.int32()),
    ])) == "id String, at Nullable(DateTime64(3, 'UTC')), tags Array(String), n Nullable(Int32)"
    assert clickhouse_type(pa.timestamp("us")) == "DateTime64(6)"
    assert clickhouse_type(pa.bool_(), nullable=True) == "Nullable(Bool)"
    assert clickhouse_type(pa.decimal128(18, 2)) == "Decimal(18, 2)"
    assert clickhouse_type(pa.map_(pa.string(), pa.float64())) == "Map(String, Float64)"
    assert clickhouse_type(pa.dictionary(pa.int8(), pa.string()), True) == "Nullable(String)"
    with pytest.raises(TypeError, match="no ClickHouse type"):
        clickhouse_type(pa.null())
    assert STRUCTURE_OF_TABLE["alerts"].startswith(
        "alert_id String, rule String, severity String, stream String, entity Nullable(String)")


@pytest.mark.parametrize("sql, code, text", [
    ("SELEC 1", "SYNTAX_ERROR", "Syntax error"),
    ("SELECT nope FROM alerts", "UNKNOWN_IDENTIFIER", "Unknown expression identifier `nope`"),
    ("SELECT * FROM transactions", "UNKNOWN_TABLE", "transactions"),
])
def test_a_bad_query_raises_clickhouses_message_on_one_line(lake, sql, code, text):
    with pytest.raises(LakeQueryError) as raised:
        query_lake(lake, sql)
    message = str(raised.value)
    assert isinstance(raised.value, RiskstreamError)
    assert raised.value.code == code
    assert text in message and "DB::Exception" in message
    assert "\n" not in message and "Stack trace" not in message and "Traceback" not in message


def test_an_empty_query_is_refused(lake):
    with pytest.raises(LakeQueryError, match="empty query"):
        query_rows(lake, "  ; ")


def test_a_query_sees_new_flushes_immediately(tmp_path):
    # no cache between calls: each query lists the files again
    with LakeWriter(tmp_path) as writer:
        assert query_rows(tmp_path, "SELECT count() AS n FROM scored_applications") == [{"n": 0}]
        writer.write(SCORED_APPLICATIONS, [make_record(SCORED_APPLICATIONS, 1,
                                                       time_ms=T0_MS + 30 * HOUR_MS)], {0: (0, 0)})
        assert query_rows(tmp_path, "SELECT count() AS n, any(birth_year) AS y "
                                    "FROM scored_applications") == [{"n": 1, "y": 1980}]
