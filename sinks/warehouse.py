"""The ClickHouse warehouse: its schema as versioned migrations, and the targets that run it.

One SQL dialect, two engines. A :class:`Target` is what the migrations, the loader and the
starter queries talk to; it has three methods (``command``, ``query``, ``insert``) and two
implementations:

- :class:`ServerTarget`: a ClickHouse server through ``clickhouse-connect`` (HTTP);
- :class:`ChdbTarget`: chDB's embedded database in a directory (``RISKSTREAM_CLICKHOUSE_PATH``,
  default ``var/warehouse``). A chDB database directory can be opened by ONE process at a time
  and chDB allows one database path per process: ``riskstream load`` holds it while it runs,
  so run ``riskstream sql`` against the lake (the default) or stop the loader first.

The schema lives in ``sinks/migrations/NNNN_name.sql`` (one statement per ``;`` at the end of
a line). :func:`migrate` applies those not yet recorded in ``schema_migrations``, in order, and
records each; applying twice does nothing (and every statement is ``IF NOT EXISTS``, so a
migration interrupted half-way runs again cleanly). An applied migration whose file changed
is refused: schema changes are new migrations. TTLs come from settings, not from the files:
``migrate`` sets them on every run and changes them when the settings change.

Inserts never build SQL from event data: ``insert`` sends an Arrow table (clickhouse-connect's
``insert_arrow``; chDB reads it through its ``Python()`` table function), and the only values
spliced into SQL are our own table, column and setting names and the deduplication token.

Examples
--------
>>> import tempfile
>>> with ChdbTarget(Path(tempfile.mkdtemp())) as target:
...     applied = migrate(target)
...     again = migrate(target)
...     rows = target.query("SELECT count() AS n FROM scored_transactions")
>>> [m.name for m in applied], again, rows
(['0001_tables', '0002_rollups', '0003_loader'], [], [{'n': 0}])
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from pipelines.errors import RiskstreamError
from pipelines.settings import ClickHouseSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATIONS_TABLE = "schema_migrations"
QUERIES_DIR = Path(__file__).resolve().parent / "queries"
# Analysts' queries run with FINAL applied to every table that has it (ReplacingMergeTree
# rows of a replayed event count once before merges), so the same SQL answers the same on
# the lake (no FINAL there: the setting is ignored) and in the warehouse.
QUERY_SETTINGS: dict[str, Any] = {"final": 1}

# Which retention applies to which table, and the column it counts from.
RAW, ROLLUP = "raw", "rollup"
RETENTION: dict[str, tuple[str, str]] = {
    "scored_transactions": (RAW, "event_time"),
    "scored_applications": (RAW, "event_time"),
    "metric_samples": (RAW, "event_time"),
    "metric_anomalies": (RAW, "event_time"),
    "dead_letter": (RAW, "received_at"),
    "aggregates": (ROLLUP, "window_start"),
    "alerts": (ROLLUP, "created_at"),
    "alert_deliveries": (ROLLUP, "delivered_at"),
    "model_quality": (ROLLUP, "window_end"),
    "transactions_hourly": (ROLLUP, "hour"),
    "transactions_daily": (ROLLUP, "day"),
    "applications_daily": (ROLLUP, "day"),
    "metric_samples_hourly": (ROLLUP, "hour"),
    "metric_anomalies_hourly": (ROLLUP, "hour"),
    "alerts_daily": (ROLLUP, "day"),
}
ROLLUP_TABLES = tuple(t for t, (kind, _) in RETENTION.items() if kind == ROLLUP
                      and (t.endswith("_hourly") or t.endswith("_daily")))


class WarehouseError(RiskstreamError):
    """ClickHouse refused or failed a statement; the message is ClickHouse's.

    Operator action: check ``RISKSTREAM_CLICKHOUSE_URL`` (or that no other process holds the
    chDB directory ``RISKSTREAM_CLICKHOUSE_PATH``), then run ``riskstream warehouse migrate``.
    """


def _one_line(message: str) -> str:
    message = message.split("Stack trace", 1)[0]
    return re.sub(r"\s+", " ", message).strip()


def literal(text: str) -> str:
    """Return ``text`` as a ClickHouse string literal.

    Examples
    --------
    >>> print(literal("it's"))
    'it\\'s'
    """
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def identifier(name: str) -> str:
    """Return ``name`` quoted as a ClickHouse identifier (backticks)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _settings_sql(settings: Mapping[str, Any]) -> str:
    parts = []
    for key, value in settings.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise WarehouseError(f"not a ClickHouse setting name: {key!r}")
        if isinstance(value, bool):
            value = int(value)
        parts.append(f"{key} = {value}" if isinstance(value, int | float) else
                     f"{key} = {literal(str(value))}")
    return ", ".join(parts)


class Target(Protocol):
    """Where the warehouse lives: a ClickHouse server or chDB's embedded database."""

    def command(self, sql: str) -> None:
        """Run one statement (DDL, ``INSERT ... SELECT``, ``OPTIMIZE``...)."""

    def query(self, sql: str, settings: Mapping[str, Any] | None = None) -> list[dict]:
        """Run one ``SELECT`` (with ``settings``); return its rows as dicts of Python values."""

    def insert(self, table: str, data: pa.Table, settings: Mapping[str, Any]) -> None:
        """Insert ``data`` (columns named like the table's) with per-insert ``settings``."""

    def close(self) -> None:
        """Release the connection (chDB: the database directory)."""


class ChdbTarget:
    """The warehouse in chDB's embedded database at ``path`` (a directory).

    One process at a time can open a directory, and a process can open only one: a second
    ``ChdbTarget`` on another path in the same process raises. ``close`` releases it.
    """

    def __init__(self, path: Path, database: str = "riskstream") -> None:
        from chdb import session  # ~0.3 s to import: only for processes that use it

        self.path = Path(path)
        self.database = database
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = session.Session(str(self.path))
        except Exception as exc:  # chDB raises plain RuntimeErrors
            raise WarehouseError(
                f"cannot open the chDB warehouse at {self.path}: {_one_line(str(exc))}. "
                "Another process (a running `riskstream load`?) may hold it") from None
        self.command(f"CREATE DATABASE IF NOT EXISTS {identifier(database)}")
        self.command(f"USE {identifier(database)}")

    def _run(self, sql: str, fmt: str = "CSV"):
        try:
            return self._session.query(sql, fmt)
        except Exception as exc:
            raise WarehouseError(_one_line(str(exc))) from None

    def command(self, sql: str) -> None:
        self._run(sql)

    def query(self, sql: str, settings: Mapping[str, Any] | None = None) -> list[dict]:
        with self._settings(settings):
            return self._run(sql, "ArrowTable").to_pylist()

    def query_text(self, sql: str, fmt: str, settings: Mapping[str, Any] | None = None) -> str:
        with self._settings(settings):
            return self._run(sql, fmt).bytes().decode()

    @contextmanager
    def _settings(self, settings: Mapping[str, Any] | None):
        # A chDB session keeps SET values: set them for one query, then back to defaults.
        if settings:
            self._run(f"SET {_settings_sql(settings)}")
        try:
            yield
        finally:
            if settings:
                for key in settings:
                    self._run(f"SET {key} = DEFAULT")

    def insert(self, table: str, data: pa.Table, settings: Mapping[str, Any]) -> None:
        columns = ", ".join(identifier(c) for c in data.column_names)
        settings_sql = f" SETTINGS {_settings_sql(settings)}" if settings else ""
        # chDB's Python() table function reads the local variable `data` (an Arrow table)
        # column by column: no event value passes through SQL text.
        self._run(f"INSERT INTO {identifier(table)} ({columns}){settings_sql} "
                  f"SELECT {columns} FROM Python(data)")

    def close(self) -> None:
        session, self._session = getattr(self, "_session", None), None
        if session is not None:
            session.close()

    def __enter__(self) -> ChdbTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerTarget:
    """A ClickHouse server through clickhouse-connect.

    ``url``: ``http(s)://user:password@host:8123[/database]``. The database (``database``
    unless the URL names one) is created if missing. Tested without a server (none runs on the
    development machines): tests/test_sinks_warehouse.py checks, against a local HTTP receiver,
    what it sends for an insert: Arrow data and the deduplication settings.
    """

    def __init__(self, url: str, database: str = "riskstream", **client_args: Any) -> None:
        import clickhouse_connect

        self._connect = clickhouse_connect.get_client
        self.url = url
        path = url.split("://", 1)[-1].split("/", 1)
        self.database = (path[1].split("?")[0].strip("/") if len(path) > 1 else "") or database
        self._client_args = client_args
        try:
            bootstrap = self._connect(dsn=url, database="default", **client_args)
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {identifier(self.database)}")
            bootstrap.close()
            self._client = self._connect(dsn=url, database=self.database, **client_args)
        except Exception as exc:
            raise WarehouseError(f"ClickHouse at {_redact(url)}: {_one_line(str(exc))}") from None

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except Exception as exc:
            raise WarehouseError(_one_line(str(exc))) from None

    def query(self, sql: str, settings: Mapping[str, Any] | None = None) -> list[dict]:
        try:
            return list(self._client.query(sql, settings=dict(settings or {})).named_results())
        except Exception as exc:
            raise WarehouseError(_one_line(str(exc))) from None

    def query_text(self, sql: str, fmt: str, settings: Mapping[str, Any] | None = None) -> str:
        try:
            return self._client.raw_query(sql, settings=dict(settings or {}), fmt=fmt).decode()
        except Exception as exc:
            raise WarehouseError(_one_line(str(exc))) from None

    def insert(self, table: str, data: pa.Table, settings: Mapping[str, Any]) -> None:
        try:
            self._client.insert_arrow(table, data, settings=dict(settings))
        except Exception as exc:
            raise WarehouseError(_one_line(str(exc))) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServerTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _redact(url: str) -> str:
    """Return ``url`` without its password.

    Examples
    --------
    >>> _redact("http://ana:s3cret@ch:8123/")
    'http://ana:***@ch:8123/'
    """
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def server_args(settings: ClickHouseSettings, url: str) -> dict[str, Any]:
    """clickhouse-connect arguments from the settings beyond ``url``: the password, unless the
    URL has one (a URL given on the command line says what it means)."""
    from urllib.parse import urlsplit

    if settings.password is None or urlsplit(url).password:
        return {}
    return {"password": settings.password.get_secret_value()}


def open_target(settings: ClickHouseSettings, url: str | None = None) -> Target:
    """Return the server at ``url``, else at ``settings.url``, else chDB at ``settings.path``."""
    if url is None and settings.url is not None:
        url = settings.url.get_secret_value()
    if url:
        return ServerTarget(url, settings.database, **server_args(settings, url))
    return ChdbTarget(settings.path, settings.database)


# -- migrations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements: each ends with ``;`` at the end of a line.

    Comment-only chunks are dropped. (A ``;`` inside a string at the end of a line would split
    it: migrations do not do that.)

    Examples
    --------
    >>> split_statements("-- a table\\nCREATE TABLE a (x Int8)\\nENGINE = Memory;\\n\\nSELECT 1;")
    ['CREATE TABLE a (x Int8)\\nENGINE = Memory', 'SELECT 1']
    """
    statements = []
    for chunk in re.split(r";[ \t]*(?:\n|$)", sql):
        body = "\n".join(line for line in chunk.splitlines()
                         if not line.strip().startswith("--")).strip()
        if body:
            statements.append(body)
    return statements


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations in ``directory`` (``NNNN_name.sql``), by version."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        found = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", path.name)
        if not found:
            raise WarehouseError(f"{path}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(found.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise WarehouseError(f"two migrations share a version in {directory}: {versions}")
    return migrations


def _ensure_migrations_table(target: Target) -> None:
    target.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version UInt32, name String, "
        "checksum String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree ORDER BY version")


def applied_migrations(target: Target) -> dict[int, dict]:
    """Return the migrations recorded in ``schema_migrations``, by version."""
    _ensure_migrations_table(target)
    rows = target.query(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} FINAL "
                        "ORDER BY version")
    return {int(r["version"]): r for r in rows}


def migrate(target: Target, settings: ClickHouseSettings | None = None, *,
            migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the migrations not applied yet, in order; set the TTLs; return those applied.

    Idempotent: a second run applies nothing (and only changes a TTL whose setting changed).
    Raises :class:`WarehouseError` if an applied migration's file has changed since.
    """
    settings = settings or ClickHouseSettings()
    migrations = load_migrations() if migrations is None else migrations
    done = applied_migrations(target)
    applied = []
    for migration in migrations:
        record = done.get(migration.version)
        if record is not None:
            if record["checksum"] != migration.checksum:
                raise WarehouseError(
                    f"migration {migration.name} was applied with checksum {record['checksum']}"
                    f" but its file now has {migration.checksum}: schema changes go in a new "
                    "migration file (sinks/migrations/), never in an applied one")
            continue
        for statement in migration.statements():
            target.command(statement)
        now_ms = time.time_ns() // 1_000_000
        target.command(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_at) VALUES "
            f"({migration.version}, {literal(migration.name)}, {literal(migration.checksum)}, "
            f"fromUnixTimestamp64Milli({now_ms}))")
        log.info("warehouse: applied migration %s", migration.name)
        applied.append(migration)
    apply_ttls(target, settings)
    return applied


def ttl_sql(table: str, settings: ClickHouseSettings) -> str:
    """Return the TTL expression of ``table`` under ``settings``.

    Examples
    --------
    >>> ttl_sql("scored_transactions", ClickHouseSettings(raw_retention_days=30))
    'toDateTime(event_time) + toIntervalDay(30)'
    """
    kind, column = RETENTION[table]
    days = settings.raw_retention_days if kind == RAW else settings.rollup_retention_days
    return f"toDateTime({column}) + toIntervalDay({days})"


def apply_ttls(target: Target, settings: ClickHouseSettings) -> list[str]:
    """Set every table's TTL from ``settings`` where it differs; return the tables changed."""
    rows = target.query("SELECT name, engine_full FROM system.tables "
                        "WHERE database = currentDatabase()")
    engines = {r["name"]: r["engine_full"] for r in rows}
    changed = []
    for table in RETENTION:
        if table not in engines:
            continue
        ttl = ttl_sql(table, settings)
        if f" TTL {ttl}" in engines[table]:
            continue
        target.command(f"ALTER TABLE {identifier(table)} MODIFY TTL {ttl}")
        changed.append(table)
    if changed:
        log.info("warehouse: TTL set on %s", ", ".join(changed))
    return changed


# -- starter queries ----------------------------------------------------------------------

def starter_queries(warehouse_only: bool = False) -> dict[str, str]:
    """Return the analysts' starter queries (``sinks/queries/*.sql``) by name.

    They run unchanged on the lake (``riskstream sql``) and in the warehouse (with
    ``QUERY_SETTINGS``); ``warehouse_only`` returns those that read the rollups instead.
    """
    directory = QUERIES_DIR / "warehouse" if warehouse_only else QUERIES_DIR
    return {path.stem: path.read_text() for path in sorted(directory.glob("*.sql"))}
