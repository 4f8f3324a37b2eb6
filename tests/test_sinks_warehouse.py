"""The warehouse schema on chDB: migrations, types against the Arrow schemas, TTLs,
deduplicated inserts and the rollups; and what the server target sends (no server here)."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest
from lake_fixtures import make_record

from pipelines.settings import ClickHouseSettings
from pipelines.topics import SCORED_TRANSACTIONS, TABLE_OF_TOPIC
from schemas.outputs import SCHEMA_OF_TABLE
from sinks.clickhouse import clickhouse_type
from sinks.lake import to_arrow
from sinks.loader import dedup_token, insert_settings
from sinks.warehouse import (
    RETENTION, ROLLUP_TABLES, ChdbTarget, Migration, ServerTarget, WarehouseError,
    load_migrations, migrate, split_statements, ttl_sql,
)

NOW_MS = 1_900_000_000_000 // 1000 * 1000  # 2030: inside every TTL whatever the clock says


@pytest.fixture
def target(tmp_path) -> Iterator[ChdbTarget]:
    with ChdbTarget(tmp_path / "warehouse") as t:
        migrate(t)
        yield t


def test_doctests():
    import doctest

    import sinks.warehouse
    assert doctest.testmod(sinks.warehouse).failed == 0


def test_migrate_twice_applies_nothing_and_records_each_version(tmp_path):
    with ChdbTarget(tmp_path / "wh") as target:
        first = migrate(target)
        assert [m.version for m in first] == [m.version for m in load_migrations()]
        assert migrate(target) == []
        rows = target.query("SELECT version, name FROM schema_migrations FINAL ORDER BY version")
        assert [r["name"] for r in rows] == [m.name for m in first]
    # the directory is the database: reopened, it is still up to date
    with ChdbTarget(tmp_path / "wh") as target:
        assert migrate(target) == []


def test_an_edited_applied_migration_is_refused(target):
    first = load_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    with pytest.raises(WarehouseError, match="new migration file"):
        migrate(target, migrations=[edited])


def _base(ch_type: str) -> str:
    """LowCardinality changes the storage, not the type an analyst reads."""
    return re.sub(r"LowCardinality\((.*)\)", r"\1", ch_type)


@pytest.mark.parametrize("table", sorted(SCHEMA_OF_TABLE))
def test_table_columns_agree_with_the_arrow_schemas(target, table):
    columns = target.query(f"SELECT name, type FROM system.columns WHERE database = "
                           f"currentDatabase() AND table = '{table}' ORDER BY position")
    want = [(f.name, clickhouse_type(f.type, f.nullable)) for f in SCHEMA_OF_TABLE[table]]
    assert [(c["name"], _base(c["type"])) for c in columns] == want


def test_every_table_has_a_ttl_and_a_dedup_window(target):
    engines = {r["name"]: r["engine_full"] for r in target.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()")}
    for table in RETENTION:
        assert f"TTL {ttl_sql(table, ClickHouseSettings())}" in engines[table], table
        assert "non_replicated_deduplication_window = 10000" in engines[table], table
    assert "toIntervalDay(90)" in engines["scored_transactions"]
    assert "toIntervalDay(730)" in engines["transactions_hourly"]
    for table in SCHEMA_OF_TABLE:
        assert "MergeTree" in engines[table]


# Codes: few distinct values, filtered and grouped on; LowCardinality stores them as dictionaries.
CODES = {"decision", "channel", "country", "currency", "mcc", "status", "product", "employment",
         "email_domain", "host", "service", "metric", "reason", "rule", "severity", "stream",
         "outcome", "role", "model_version", "kind", "source_topic"}
FREE_TEXT = {("dead_letter", "reason")}  # a validation message, not a code


def test_tables_partition_by_day_or_month_and_codes_are_low_cardinality(target):
    tables = {r["name"]: r for r in target.query(
        "SELECT name, partition_key, sorting_key FROM system.tables "
        "WHERE database = currentDatabase()")}
    for table, (_, column) in RETENTION.items():
        assert tables[table]["partition_key"] in (f"toYYYYMMDD({column})",
                                                  f"toYYYYMM({column})"), table
        assert tables[table]["sorting_key"], table
    columns = target.query("SELECT table, name, type FROM system.columns "
                           "WHERE database = currentDatabase()")
    for c in columns:
        if (c["table"] in SCHEMA_OF_TABLE and c["name"] in CODES
                and (c["table"], c["name"]) not in FREE_TEXT):
            assert c["type"].startswith(("LowCardinality", "Array(LowCardinality")), c
    assert sum(c["name"] in CODES and c["table"] in SCHEMA_OF_TABLE for c in columns) > 30


def test_changed_retention_settings_change_the_ttl_once(target):
    shorter = ClickHouseSettings(raw_retention_days=30, rollup_retention_days=365)
    assert migrate(target, shorter) == []
    engine = target.query("SELECT engine_full FROM system.tables WHERE name = "
                          "'scored_transactions' AND database = currentDatabase()")[0]
    assert "toIntervalDay(30)" in engine["engine_full"]
    from sinks.warehouse import apply_ttls
    assert apply_ttls(target, shorter) == []  # nothing left to change


def test_split_statements_keeps_every_statement_of_the_migrations():
    for migration in load_migrations():
        statements = migration.statements()
        assert statements, migration.name
        assert all(s.split()[0] in {"CREATE"} for s in statements), migration.name
    assert split_statements("SELECT 1;\n-- only a comment\n;\nSELECT 2") == ["SELECT 1", "SELECT 2"]


def _transactions(n: int, t0: int = NOW_MS) -> pa.Table:
    records = [make_record(SCORED_TRANSACTIONS, i, time_ms=t0 + i * 1000,
                           decision="decline" if i % 10 == 0 else "approve")
               for i in range(n)]
    return to_arrow(SCORED_TRANSACTIONS, records)


def test_a_retried_insert_lands_once_in_the_table_and_its_rollups(target):
    data = _transactions(50)
    token = dedup_token(SCORED_TRANSACTIONS, 0, 0, 49)
    for _ in range(3):  # the first attempt landed, its answer was lost, then two retries
        target.insert("scored_transactions", data, insert_settings(token))
    target.insert("scored_transactions", _transactions(5, NOW_MS + 3_600_000),
                  insert_settings(dedup_token(SCORED_TRANSACTIONS, 0, 50, 54)))
    assert target.query("SELECT count() AS n FROM scored_transactions") == [{"n": 55}]
    rollup = target.query("SELECT sum(transactions) AS n, sumIf(transactions, decision = "
                          "'decline') AS declines FROM transactions_hourly")
    assert rollup == [{"n": 55, "declines": 5 + 1}]
    daily = target.query("SELECT sum(transactions) AS n FROM transactions_daily")
    assert daily == [{"n": 55}]


def test_a_replayed_event_collapses_in_the_raw_table(target):
    data = _transactions(10)
    target.insert("scored_transactions", data, insert_settings("a"))
    target.insert("scored_transactions", data, insert_settings("b"))  # upstream replay
    assert target.query("SELECT count() AS n FROM scored_transactions FINAL") == [{"n": 10}]
    assert target.query("SELECT count() AS n FROM scored_transactions "
                        "SETTINGS final = 1") == [{"n": 10}]


def test_rollup_tables_are_fed_by_their_views(target):
    views = {r["name"] for r in target.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND "
        "engine = 'MaterializedView'")}
    assert views == {f"{t}_mv" for t in ROLLUP_TABLES}


def test_insert_never_puts_event_values_in_sql(target):
    # values that would break (or inject) SQL if they were spliced into a statement
    nasty = "x'); DROP TABLE alerts; --"
    records = [make_record("alerts", 1, time_ms=NOW_MS, summary=nasty, entity="\\'")]
    target.insert("alerts", to_arrow("alerts", records), insert_settings("t"))
    assert target.query("SELECT summary, entity FROM alerts") == [
        {"summary": nasty, "entity": "\\'"}]


# -- the server target, against a local HTTP receiver ---------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers clickhouse-connect's start-up queries like a 24.8 server; records the rest."""

    requests: list[tuple[str, str, bytes]] = []
    authorizations: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding"):
            body = _decompress(self.headers["Content-Encoding"], body)
        query = self.path + " " + body[:300].decode(errors="replace")
        type(self).requests.append((self.command, self.path, body))
        type(self).authorizations.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("X-ClickHouse-Summary", '{"written_rows":"2"}')
        self.send_header("Content-Type", "text/tab-separated-values")
        if "version()" in query or "SELECT" in query and "system.settings" not in query:
            payload = b"24.8.1.1\tUTC\n"
            self.send_header("X-ClickHouse-Format", "TabSeparated")
        else:
            payload = b""
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer


def _decompress(encoding: str, body: bytes) -> bytes:
    import zlib
    if encoding == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 26)
    if encoding == "lz4":
        import lz4.frame
        return lz4.frame.decompress(body)
    return body


@pytest.fixture
def receiver() -> Iterator[str]:
    _Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://ana:s3cret@127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_server_target_sends_arrow_with_the_dedup_token(receiver):
    """No ClickHouse server runs here: a local receiver records what clickhouse-connect sends
    for an insert (the data as Arrow, the settings as URL parameters)."""
    try:
        target = ServerTarget(receiver, "riskstream", compress=False)
    except WarehouseError as exc:
        pytest.skip(f"clickhouse-connect wants more of a server than the receiver fakes: {exc}")
    data = _transactions(2)
    token = dedup_token(SCORED_TRANSACTIONS, 3, 10, 11, "tid")
    target.insert("scored_transactions", data, insert_settings(token))
    inserts = [(path, body) for method, path, body in _Recorder.requests
               if "INSERT" in path or b"INSERT" in body[:200]]
    assert inserts, _Recorder.requests
    path, body = inserts[-1]
    from urllib.parse import parse_qs, urlparse
    params = {k: v[0] for k, v in parse_qs(urlparse(path).query).items()}
    assert params["insert_deduplication_token"] == "scored-transactions:3:10-11@tid"
    assert params["insert_deduplicate"] == "1"
    assert params["database"] == "riskstream"
    assert "FORMAT Arrow" in params.get("query", "") + body[:200].decode(errors="replace")
    assert b"txn-1" in body  # the rows travel as data, not as SQL
    created = b"".join(b for _, _, b in _Recorder.requests) + "".join(
        p for _, p, _ in _Recorder.requests).encode()
    assert b"CREATE DATABASE IF NOT EXISTS" in created or b"CREATE+DATABASE" in created
    target.close()


def test_a_password_setting_needs_no_url_encoding(receiver):
    """RISKSTREAM_CLICKHOUSE_PASSWORD is used when the URL has none and may hold @, :, / and
    %; a password written in the URL wins."""
    import base64

    from sinks.warehouse import open_target

    _Recorder.authorizations = []
    url = receiver.replace("ana:s3cret@", "ana@")
    settings = ClickHouseSettings(url=url, password="p@ss:/%w0rd", path="unused")
    try:
        target = open_target(settings)
    except WarehouseError as exc:
        pytest.skip(f"clickhouse-connect wants more of a server than the receiver fakes: {exc}")
    target.close()
    sent = {base64.b64decode(a.split()[1]).decode() for a in _Recorder.authorizations if a}
    assert sent == {"ana:p@ss:/%w0rd"}
    _Recorder.authorizations = []
    open_target(settings, receiver).close()  # ana:s3cret@ in the URL
    sent = {base64.b64decode(a.split()[1]).decode() for a in _Recorder.authorizations if a}
    assert sent == {"ana:s3cret"}


def test_tables_are_the_output_tables():
    assert set(SCHEMA_OF_TABLE) == set(TABLE_OF_TOPIC.values())


# -- the command line -------------------------------------------------------------------------

def test_riskstream_warehouse_migrate_and_status_on_chdb(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.delenv("RISKSTREAM_CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("RISKSTREAM_CLICKHOUSE_PATH", str(tmp_path / "wh"))
    assert main(["warehouse", "migrate"]) == 0
    names = [m.name for m in load_migrations()]
    assert capsys.readouterr().out.strip() == "applied: " + ", ".join(names)
    assert main(["warehouse", "migrate"]) == 0
    assert "nothing (up to date)" in capsys.readouterr().out
    assert main(["warehouse", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["migrations"] == names
    assert set(RETENTION) <= set(status["rows"])


def test_riskstream_warehouse_migrate_clickhouse_url_names_the_server_not_its_password(
        monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.delenv("RISKSTREAM_CLICKHOUSE_URL", raising=False)
    # a port nothing listens on: the command goes to the server, and says which, clearly
    assert main(["warehouse", "migrate", "--clickhouse", "http://ana:s3cret@127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "ClickHouse at http://ana:***@127.0.0.1:9" in err and "s3cret" not in err


def test_riskstream_sql_clickhouse_url_queries_the_server_with_final(receiver, capsys):
    from pipelines.cli import main

    sql = "SELECT decision, count() FROM scored_transactions GROUP BY decision"
    code = main(["sql", "--clickhouse", receiver, "--format", "csv", sql])
    out, err = capsys.readouterr()
    if code == 2 and "ClickHouse at" in err:
        pytest.skip(f"clickhouse-connect wants more of a server than the receiver fakes: {err}")
    assert code == 0, err
    from urllib.parse import parse_qs, urlparse
    sent = [(parse_qs(urlparse(path).query), body) for _, path, body in _Recorder.requests]
    query = [(params, body) for params, body in sent
             if sql in params.get("query", [""])[0] + body.decode(errors="replace")]
    assert query, _Recorder.requests
    params, body = query[-1]
    assert params["final"] == ["1"] and params["database"] == ["riskstream"]
    assert "CSVWithNames" in params.get("query", [""])[0] + body.decode(errors="replace")
    assert out == "24.8.1.1\tUTC\n"  # the server's answer, printed as it came


def test_a_merchant_minute_spread_over_partitions_keeps_every_partition_row(target):
    """A merchant's transactions are keyed by card, so each input partition emits its own
    window for the same merchant and minute: deduplication by id must not keep just one."""
    from agents.aggregate import WindowAggregator
    from pipelines.topics import AGGREGATES

    rows = []
    for partition, amounts in ((0, [10.0, 20.0]), (1, [5.0]), (3, [1.0, 2.0, 3.0])):
        agg = WindowAggregator("transactions", partition=partition)
        for i, amount in enumerate(amounts):
            agg.add("m-1", NOW_MS + i, amount, 0.1)
        rows += agg.pop_closed(NOW_MS + 120_000, everything=True)
    assert len({r["aggregate_id"] for r in rows}) == 3
    target.insert("aggregates", to_arrow(AGGREGATES, rows), insert_settings("w"))
    target.insert("aggregates", to_arrow(AGGREGATES, rows), insert_settings("replay"))
    assert target.query("SELECT sum(count) AS n, sum(sum) AS total FROM aggregates FINAL "
                        "WHERE group_key = 'm-1'") == [{"n": 6, "total": 41.0}]
