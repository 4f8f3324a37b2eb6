"""ClickHouse SQL over the lake, with chDB (the ClickHouse engine in-process).

Each output table (``schemas.outputs.SCHEMA_OF_TABLE``) is a view named like the table over
the files :func:`sinks.lake.visible_files` lists (committed, not replaced by a compaction),
passed to ``file()`` as one alternation ``<lake>/<table>/{date=.../hour=../part-x.parquet,...}``,
with an explicit structure derived from its Arrow schema, so a table with no file yet is
queryable (0 rows) and types do not depend on what the files hold. Only committed, complete
files are read, each row once, while the sink writes and a compaction runs (sinks/lake.py,
sinks/compaction.py). A listed file deleted before ClickHouse lists the directories is simply
not matched (no error); compaction deletes the files it replaced only after a grace period,
so a query listed before a compaction committed still finds them.

Every call is stateless: the views are created in chDB's in-memory database, the query runs,
the connection closes. chDB opens one database per process (a directory can be opened by one
process at a time), so nothing here ever opens the lake or a database directory: any number of
processes can query a lake while the sink writes it.

Limits: not a sandbox (ClickHouse's ``file()`` and friends reach the local disk, as they do in
``clickhouse local``); a process that holds a chDB session on a directory open cannot use this
module (chDB refuses a second path); each query lists the lake's files, ~1 per table, hour and
flush before compaction (2,000 files in one alternation: ~0.13 s), ~1 per table and hour after.

Examples
--------
>>> import tempfile
>>> print(query_lake(Path(tempfile.mkdtemp()), "SELECT count() AS n FROM alerts", fmt="csv"))
"n"
0
<BLANKLINE>
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from pipelines.errors import RiskstreamError
from schemas.outputs import SCHEMA_OF_TABLE
from sinks.lake import visible_files

FORMATS = {
    "pretty": "PrettyCompactMonoBlock",
    "csv": "CSVWithNames",
    "json": "JSONEachRow",
}


class LakeQueryError(RiskstreamError):
    """ClickHouse refused or failed a query over the lake; the message is ClickHouse's.

    Operator action: fix the SQL (tables: scored_transactions, scored_applications,
    metric_samples, metric_anomalies, aggregates, alerts, alert_deliveries, model_quality,
    dead_letter).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # ClickHouse's error name, e.g. "UNKNOWN_IDENTIFIER"; None for errors of our own.
        found = re.search(r"\(([A-Z][A-Z0-9_]+)\)$", message)
        self.code: str | None = found.group(1) if found else None


_SCALARS: dict[pa.DataType, str] = {
    pa.string(): "String",
    pa.large_string(): "String",
    pa.binary(): "String",
    pa.large_binary(): "String",
    pa.bool_(): "Bool",
    pa.int8(): "Int8",
    pa.int16(): "Int16",
    pa.int32(): "Int32",
    pa.int64(): "Int64",
    pa.uint8(): "UInt8",
    pa.uint16(): "UInt16",
    pa.uint32(): "UInt32",
    pa.uint64(): "UInt64",
    pa.float32(): "Float32",
    pa.float64(): "Float64",
    pa.date32(): "Date32",
}
_PRECISION = {"s": 0, "ms": 3, "us": 6, "ns": 9}


def clickhouse_type(arrow_type: pa.DataType, nullable: bool = False) -> str:
    """Return the ClickHouse type that reads ``arrow_type`` from Parquet.

    ``nullable`` wraps scalars in ``Nullable``; ClickHouse has no nullable arrays, maps or
    tuples, so a null list reads as ``[]``, and list items are not nullable.

    Examples
    --------
    >>> clickhouse_type(pa.timestamp("ms", tz="UTC"))
    "DateTime64(3, 'UTC')"
    >>> clickhouse_type(pa.string(), nullable=True)
    'Nullable(String)'
    >>> clickhouse_type(pa.list_(pa.string()), nullable=True)
    'Array(String)'
    """
    if arrow_type in _SCALARS:
        base = _SCALARS[arrow_type]
    elif pa.types.is_timestamp(arrow_type):
        precision = _PRECISION[arrow_type.unit]
        base = (f"DateTime64({precision}, '{arrow_type.tz}')" if arrow_type.tz
                else f"DateTime64({precision})")
    elif pa.types.is_decimal(arrow_type):
        base = f"Decimal({arrow_type.precision}, {arrow_type.scale})"
    elif pa.types.is_dictionary(arrow_type):
        return clickhouse_type(arrow_type.value_type, nullable)
    elif pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"Array({clickhouse_type(arrow_type.value_type)})"
    elif pa.types.is_map(arrow_type):
        key, item = clickhouse_type(arrow_type.key_type), clickhouse_type(arrow_type.item_type)
        return f"Map({key}, {item})"
    elif pa.types.is_struct(arrow_type):
        fields = ", ".join(f"{f.name} {clickhouse_type(f.type, f.nullable)}" for f in arrow_type)
        return f"Tuple({fields})"
    else:
        raise TypeError(f"no ClickHouse type for Arrow {arrow_type} (sinks/clickhouse.py)")
    return f"Nullable({base})" if nullable else base


def structure(schema: pa.Schema) -> str:
    """Return a schema as a ClickHouse structure: ``"name Type, ..."`` (for ``file()``,
    ``s3()``, and the column list of a ``CREATE TABLE``)."""
    return ", ".join(f"{f.name} {clickhouse_type(f.type, f.nullable)}" for f in schema)


STRUCTURE_OF_TABLE: dict[str, str] = {
    table: structure(schema) for table, schema in SCHEMA_OF_TABLE.items()
}
"""The ClickHouse structure of every lake table, e.g. ``"event_id String, ..."``."""


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def views_sql(lake: Path) -> str:
    """Return the statements that create one view per table over the lake's visible Parquet
    files (:func:`sinks.lake.visible_files`), listed now."""
    root = Path(lake).resolve()
    if any(c in str(root) for c in "*?{}[],"):
        raise LakeQueryError(f"the lake path {root} holds a glob character (* ? {{ }} [ ] ,), "
                             "which ClickHouse would expand: move or rename it")
    statements = []
    for table, columns in STRUCTURE_OF_TABLE.items():
        files = visible_files(root, table)
        if files:
            # Lake file names are ours (date=, hour=, part-/compact-<hex>): no glob characters.
            paths = f"{root}/{table}/{{" + ",".join(files) + "}"
            source = f"file({_literal(paths)}, Parquet, "
        else:
            source = "null("
        statements.append(f"CREATE VIEW {table} AS SELECT * FROM {source}{_literal(columns)});\n")
    return "".join(statements)


def _one_line(message: str) -> str:
    message = message.split("Stack trace", 1)[0]
    return re.sub(r"\s+", " ", message).strip()


def _run(lake: Path, sql: str, output_format: str):
    import chdb  # ~0.3 s to import: only for processes that query

    body = sql.strip()
    if not body.rstrip(";").strip():
        raise LakeQueryError("empty query")
    try:
        return chdb.query(views_sql(lake) + body, output_format)
    except Exception as exc:  # chdb raises RuntimeError/ChdbError with ClickHouse's text
        raise LakeQueryError(_one_line(str(exc))) from None


def query_lake(lake: Path, sql: str, fmt: str = "pretty") -> str:
    """Run ClickHouse SQL over the lake; return the result as text.

    Parameters
    ----------
    lake
        The lake directory (``LakeSettings.path``); it may be empty or missing.
    sql
        ClickHouse SQL naming the tables as such: ``SELECT count() FROM scored_transactions``.
        Several statements separated by ``;`` run in order and their outputs concatenate.
    fmt
        ``"pretty"`` (a table for people), ``"csv"`` (CSVWithNames), ``"json"`` (JSONEachRow),
        or any ClickHouse output format name (``"Markdown"``, ``"TSVWithNames"``...).

    Raises
    ------
    LakeQueryError
        With ClickHouse's message on one line, e.g. ``Code: 47. DB::Exception: Unknown
        expression identifier `x` ... (UNKNOWN_IDENTIFIER)``.
    """
    result = _run(lake, sql, FORMATS.get(fmt, fmt))
    return result.bytes().decode()


def query_rows(lake: Path, sql: str) -> list[dict]:
    """Run ClickHouse SQL over the lake; return the rows as dicts of Python values.

    Types follow Arrow: ``DateTime64`` columns are timezone-aware ``datetime``s, arrays lists,
    ``Nullable`` nulls ``None``, integers ints (not strings, as in ClickHouse's JSON).

    Examples
    --------
    >>> import tempfile
    >>> query_rows(Path(tempfile.mkdtemp()), "SELECT count() AS n FROM scored_transactions")
    [{'n': 0}]
    """
    table = _run(lake, sql, "ArrowTable")
    return table.to_pylist()
