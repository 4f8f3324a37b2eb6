"""The lake: output records as Parquet (and JSONL) files, committed by manifests.

Layout, for each output table (``pipelines.topics.TABLE_OF_TOPIC``)::

    <lake>/<table>/date=YYYY-MM-DD/hour=HH/part-<id>.parquet     # every table
    <lake>/<table>/date=YYYY-MM-DD/hour=HH/part-<id>.jsonl       # dead_letter and alerts too
    <lake>/_manifests/<table>/part-<id>.json                     # the commit of one flush

A flush covers, for one topic, one offset range per partition ``{partition: (first, last)}``.
Its id is a hash of the topic (and its Kafka topic id, when known) and those ranges, so a
retried flush of the same offsets writes the same file names (and finds its manifest already
there: nothing is written twice). The
partition ``date=/hour=`` of a row comes from ``schemas.outputs.TIME_COLUMN`` (UTC); one flush
writes one file per partition it touches, all with the same name.

Every file is written as ``<name>.tmp``, fsynced and renamed; the manifest is written the same
way *after* all the data files of its flush are renamed. **The manifest is the commit**: a data
file that no manifest names was left by a crash between renames, and ``recover`` deletes it.
``recover`` also returns the next offset per partition from the manifests, so a sink that
crashed after the manifest but before its Kafka commit resumes after the flush instead of
writing it again.

Compaction and retention (sinks/compaction.py) add two kinds of manifest next to the
flushes' ones::

    <lake>/_manifests/<table>/compact-<id>.json    # a compacted file and the files it replaces
    <lake>/_manifests/<table>/retained.json        # offsets and rows of flushes retention removed

Part manifests are never rewritten by compaction (they keep the flushes' offsets and rows, so
``recover`` and ``row_count`` do not change); a committed compaction manifest is what makes its
``compact-<id>.parquet`` visible and the files it lists invisible. :func:`visible_files` is the
file set a reader must read: committed part files not replaced, plus committed compacted files.

Limits: one writer per lake (an advisory lock enforces it: ``recover`` deletes files it cannot
tell from a concurrent writer's in-flight flush). Readers that use :func:`visible_files` never
see an uncommitted file or a replaced one (sinks/clickhouse.py does); readers that glob
``*.parquet`` may see a flush's files for the few milliseconds between their rename and the
manifest, and both a compacted file and the files it replaces during the compaction's grace
period (``LakeSettings.compact_delete_after_s``).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipelines.errors import LakeError
from pipelines.topics import ALERTS, DEAD_LETTER, TABLE_OF_TOPIC
from schemas.outputs import SCHEMA_OF_TOPIC, TIME_COLUMN

log = logging.getLogger(__name__)

Ranges = Mapping[int, tuple[int, int]]

MANIFESTS_DIR = "_manifests"
MANIFEST_VERSION = 1
PART_PREFIX = "part-"
COMPACT_PREFIX = "compact-"
# Per table: next offsets and rows of the flushes whose manifests retention deleted.
RETAINED_MANIFEST = "retained.json"
# Tables also written as JSON lines, for people who read them with grep and jq.
JSONL_TOPICS = frozenset({DEAD_LETTER, ALERTS})
_HOUR_MS = 3_600_000


def flush_name(topic: str, ranges: Ranges, topic_id: str | None = None) -> str:
    """Return the file name (no suffix) of the flush of ``ranges`` of ``topic``.

    Deterministic: the same offsets of the same topic always give the same name. ``topic_id``
    (Kafka's id of the topic, new when a topic is recreated) keeps offsets of a recreated
    topic, such as the embedded broker's after a restart, from taking an old flush's name.

    Examples
    --------
    >>> a, b = {1: (10, 19), 0: (0, 4)}, {0: (0, 4), 1: (10, 19)}
    >>> flush_name("alerts", a) == flush_name("alerts", b)
    True
    >>> flush_name("alerts", {0: (0, 4)})
    'part-af06a8f487931096'
    """
    canonical = topic + (f"#{topic_id}" if topic_id else "") + "|" + ",".join(
        f"{p}:{first}-{last}" for p, (first, last) in sorted(ranges.items()))
    return "part-" + hashlib.sha1(canonical.encode()).hexdigest()[:16]


def partition_dir(time_ms: int) -> str:
    """Return the ``date=/hour=`` directory (UTC) of a time in epoch milliseconds.

    Examples
    --------
    >>> partition_dir(1714568400000)
    'date=2024-05-01/hour=13'
    """
    at = datetime.fromtimestamp(time_ms // 1000, tz=UTC)
    return f"date={at:%Y-%m-%d}/hour={at:%H}"


# Python types a JSON value may have for each Arrow type; anything else is a schema violation.
# pyarrow alone is too lenient: it truncates 1.5 into an int64, stores True as 1.0 and turns
# the string "ab" into the list ["a", "b"].
_NONE = type(None)
# pa.ArrowInvalid is a ValueError, pa.ArrowTypeError a TypeError.
_CONVERSION_ERRORS = (OverflowError, TypeError, ValueError)


def _allowed_types(arrow_type: pa.DataType) -> tuple[tuple[type, ...], bool]:
    """Return the Python types a value may have, and whether floats must be integral."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return (str,), False
    if pa.types.is_floating(arrow_type):
        return (float, int), False
    if pa.types.is_integer(arrow_type) or pa.types.is_timestamp(arrow_type):
        return (int, float), True
    if pa.types.is_boolean(arrow_type):
        return (bool,), False
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return (list, tuple), False
    raise LakeError(f"the lake cannot store Arrow type {arrow_type} yet (sinks/lake.py)")


def _violation(table: str, field: pa.Field, row: int, value: Any, why: str) -> LakeError:
    return LakeError(
        f"{table}.{field.name}: {why}, got {value!r} (row {row} of the flush). The producing "
        f"agent broke the output schema (schemas/outputs.py); the rows stay in Kafka, uncommitted, "
        f"until it is fixed.")


def _column(table: str, field: pa.Field, values: list[Any]) -> pa.Array:
    allowed, integral_only = _allowed_types(field.type)
    kinds = {type(v) for v in values}
    kinds.discard(_NONE)
    for kind in kinds:
        if kind not in allowed or (kind is float and integral_only):
            for row, value in enumerate(values):
                if value is None:
                    continue
                if type(value) not in allowed:
                    raise _violation(table, field, row, value, f"expected {field.type}")
                if type(value) is float and integral_only and not value.is_integer():
                    raise _violation(table, field, row, value, f"expected an integral {field.type}")
    try:
        array = pa.array(values, type=field.type)
    except _CONVERSION_ERRORS:  # an int32 overflow, a list of non-strings...
        for row, value in enumerate(values):
            try:
                pa.array([value], type=field.type)
            except _CONVERSION_ERRORS as exc:
                why = f"expected {field.type} ({exc})"
                raise _violation(table, field, row, value, why) from exc
        raise
    if not field.nullable and array.null_count:
        row = values.index(None)
        raise _violation(table, field, row, None, "is required")
    return array


def to_arrow(topic: str, records: list[dict]) -> pa.Table:
    """Return ``records`` of an output topic as an Arrow table of its schema.

    Missing keys are nulls; an unknown key, a null in a required column or a value of the
    wrong type raises :class:`LakeError` naming the table, the column and the value.
    """
    schema = SCHEMA_OF_TOPIC[topic]
    table = TABLE_OF_TOPIC[topic]
    columns = set(schema.names)
    for row, record in enumerate(records):
        extra = record.keys() - columns
        if extra:
            name = sorted(extra)[0]
            raise LakeError(
                f"{table}.{name}: no such column, got {record[name]!r} (row {row} of the flush). "
                f"The columns are {', '.join(schema.names)} (schemas/outputs.py).")
    arrays = [_column(table, field, [r.get(field.name) for r in records]) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _json_options(schema: pa.Schema) -> pa_json.ParseOptions:
    # Timestamps travel as int milliseconds: read them as int64, cast after.
    read_as = pa.schema([pa.field(f.name, pa.int64() if pa.types.is_timestamp(f.type) else f.type)
                         for f in schema])
    return pa_json.ParseOptions(explicit_schema=read_as, unexpected_field_behavior="error")


_JSON_OPTIONS = {topic: _json_options(schema) for topic, schema in SCHEMA_OF_TOPIC.items()}


def json_to_arrow(topic: str, values: list[bytes]) -> pa.Table | None:
    """The fast path of :func:`to_arrow`: JSON objects parsed straight into Arrow by
    pyarrow's C++ reader, without a Python dict per record (~5 us a row against ~20 us,
    measured on scored transactions).

    Returns None unless the values are exactly rows of the topic's schema (one JSON object
    each, no unknown key, every type right, no null where one is required): the caller then
    decodes them one by one and :func:`to_arrow` names the offending row and column.
    """
    schema = SCHEMA_OF_TOPIC[topic]
    try:
        table = pa_json.read_json(io.BytesIO(b"\n".join(values)),
                                  parse_options=_JSON_OPTIONS[topic])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(values):  # e.g. two objects in one message
        return None
    table = table.select(schema.names)
    if any(not f.nullable and table.column(f.name).null_count for f in schema):
        return None
    return table.cast(schema)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Any) -> Path:
    """Write ``path`` through ``<path>.tmp``: ``write(file)``, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class LakeWriter:
    """Writes flushes of output topics to the lake, each committed by its manifest.

    Parameters
    ----------
    root
        The lake directory (``LakeSettings.path``); created if missing.
    compression
        Parquet codec. zstd: about 3x smaller than snappy on scored events, read by every
        ClickHouse and DuckDB.

    ``recover`` and ``write`` take the lake's writer lock on first use (one writer per lake);
    ``row_count`` reads only and needs no lock. ``close`` releases the lock.

    Examples
    --------
    >>> import tempfile
    >>> with LakeWriter(Path(tempfile.mkdtemp())) as lake:
    ...     lake.recover("alerts")
    ...     paths = lake.write("alerts", [{"alert_id": "a1", "rule": "r", "severity": "high",
    ...                                    "stream": "transactions", "created_at": 1714568400000}],
    ...                        {0: (0, 0)})
    ...     for path in paths:
    ...         print(path.relative_to(lake.root).as_posix())
    ...     lake.recover("alerts")
    {}
    alerts/date=2024-05-01/hour=13/part-e0db0fda50b8e8b7.parquet
    alerts/date=2024-05-01/hour=13/part-e0db0fda50b8e8b7.jsonl
    {0: 1}
    """

    def __init__(self, root: Path, *, compression: str = "zstd") -> None:
        self.root = Path(root)
        self.compression = compression
        self._lock_fd: int | None = None
        # row_count's cache: rows of each manifest already read, per table.
        self._counted: dict[str, dict[str, int]] = defaultdict(dict)

    # -- the lock -------------------------------------------------------------------------

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        manifests = self.root / MANIFESTS_DIR
        try:
            manifests.mkdir(parents=True, exist_ok=True)
            fd = os.open(manifests / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LakeError(f"cannot open the lake at {self.root}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LakeError(
                f"another process (pid {holder}) writes the lake at {self.root}: run one sink "
                "per lake, or point this one at another RISKSTREAM_LAKE_PATH") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def lock(self) -> None:
        """Take the lake's writer lock now (``recover`` and ``write`` take it on first use).

        Raises :class:`LakeError` naming the holder's pid if another process holds it.
        """
        self._lock()

    def close(self) -> None:
        """Release the writer lock; the writer can be used again (it re-locks)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> LakeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths ----------------------------------------------------------------------------

    def _table(self, topic: str) -> str:
        try:
            return TABLE_OF_TOPIC[topic]
        except KeyError:
            raise LakeError(f"{topic!r} is not an output topic; the lake holds "
                            f"{', '.join(TABLE_OF_TOPIC)}") from None

    def manifest_dir(self, table: str) -> Path:
        return self.root / MANIFESTS_DIR / table

    # -- recovery -------------------------------------------------------------------------

    def manifests(self, topic: str) -> Iterable[dict]:
        """Yield the manifests (committed flushes) of ``topic``, in no particular order."""
        mdir = self.manifest_dir(self._table(topic))
        if not mdir.is_dir():
            return
        for path in mdir.glob(f"{PART_PREFIX}*.json"):
            try:
                yield orjson.loads(path.read_bytes())
            except FileNotFoundError:
                # Retired by retention since the listing: its offsets are in retained.json,
                # which the callers read after the part manifests.
                continue
            except (OSError, orjson.JSONDecodeError) as exc:
                # Manifests are renamed into place whole: a broken one is damage, not a crash.
                raise LakeError(f"unreadable manifest {path}: {exc}. Restore it from a backup, "
                                "or delete it and the data files of the same name to have the "
                                "sink write that flush again from Kafka") from exc

    def recover(self, topic: str, topic_id: str | None = None) -> dict[int, int]:
        """Return the next offset to read per partition of ``topic``, from the manifests.

        With ``topic_id``, only flushes of that incarnation of the topic count (and those
        written without an id): offsets of a topic deleted and created again, or of the
        embedded broker before a restart, mean nothing to the new one. Their files stay.

        Also deletes what a crash left behind for this topic: ``*.tmp`` files and data files
        that no manifest commits (their rows are still in Kafka, uncommitted, and are written
        again). Call it before the first ``write`` of a topic, and whenever its partitions are
        assigned, and seek each partition to ``max(committed offset, recovered offset)``.

        Compactions change nothing here: part manifests stay when their files are compacted,
        compacted files (``compact-*``) are never deleted by ``recover``, nor are a compaction's
        ``*.tmp`` files (a compaction in another thread of the sink may be writing them). The
        offsets of flushes that retention removed come from ``retained.json``, read *after* the
        part manifests: retention writes it before it deletes them, so nothing is missed.
        """
        self._lock()
        table = self._table(topic)
        next_offset: dict[int, int] = {}
        committed: set[str] = set()
        other_incarnations = 0
        for manifest in self.manifests(topic):
            committed.add(manifest["name"])
            if topic_id and manifest.get("topic_id") not in (None, topic_id):
                other_incarnations += 1
                continue
            for partition, (_first, last) in manifest["ranges"].items():
                p = int(partition)
                next_offset[p] = max(next_offset.get(p, 0), last + 1)
        retained = read_retained(self.root, table)
        for incarnation, offsets in (retained or {}).get("offsets", {}).items():
            if topic_id and incarnation not in ("", topic_id):
                continue
            for partition, offset in offsets.items():
                p = int(partition)
                next_offset[p] = max(next_offset.get(p, 0), offset)
        if other_incarnations:
            log.info("lake: %s holds %d flushes of an earlier topic %s (not id %s): kept, and "
                     "its offsets ignored", table, other_incarnations, topic, topic_id)
        for tmp in self.manifest_dir(table).glob(f"{PART_PREFIX}*.tmp"):
            tmp.unlink(missing_ok=True)
        table_dir = self.root / table
        if table_dir.is_dir():
            for path in table_dir.glob("date=*/hour=*/*"):
                if not path.name.startswith(PART_PREFIX):
                    continue  # compact-*: the compaction's, committed or cleaned up by it
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                elif path.name.split(".")[0] not in committed:
                    log.warning("lake: deleting %s, written by a flush that never committed "
                                "(its rows are read again from Kafka)", path)
                    path.unlink(missing_ok=True)
        return next_offset

    # -- writing --------------------------------------------------------------------------

    def write(self, topic: str, records: list[dict] | pa.Table, ranges: Ranges, *,
              topic_id: str | None = None) -> list[Path]:
        """Write one flush of ``topic`` and commit it; return its data files.

        ``records``: dicts, or an Arrow table of the topic's schema already built by
        :func:`json_to_arrow` (not for the JSONL topics, whose files are written from dicts).

        ``ranges`` are the offsets the flush covers, ``{partition: (first, last)}``, including
        those of records the caller skipped (not JSON objects): committing them moves the
        partition on. A flush without records writes only its manifest. ``topic_id``: Kafka's
        id of the topic the offsets belong to, if known (see ``recover``).

        Atomic: either the manifest exists and names every data file, or (after ``recover``)
        nothing of the flush is in the lake. Writing a flush whose manifest already exists
        writes nothing and returns its files. Raises :class:`LakeError` on a record that breaks
        the table's schema (before anything is written) or when the disk fails.
        """
        table = self._table(topic)
        if not ranges:
            if records:
                raise LakeError(f"{table}: {len(records)} records without offset ranges")
            return []
        self._lock()
        name = flush_name(topic, ranges, topic_id)
        manifest_path = self.manifest_dir(table) / f"{name}.json"
        if manifest_path.exists():
            log.info("lake: %s/%s is committed already, not written again", table, name)
            manifest = orjson.loads(manifest_path.read_bytes())
            return [self.root / f["path"] for f in manifest["files"]]

        # Validate the whole flush before writing anything.
        if isinstance(records, pa.Table):
            if topic in JSONL_TOPICS:
                raise LakeError(f"{table}: JSONL topics are written from records, not a table")
            arrow = records
            by_hour = self._split_table_by_hour(topic, arrow)
        else:
            by_hour = self._split_by_hour(topic, table, records)
            arrow = to_arrow(topic, records)
        n = arrow.num_rows
        columns = arrow.schema.names
        written: list[Path] = []
        files: list[dict] = []
        try:
            for hour_dir, rows in sorted(by_hour.items()):
                directory = self.root / table / hour_dir
                directory.mkdir(parents=True, exist_ok=True)
                part = arrow if len(rows) == n else arrow.take(rows)
                path = directory / f"{name}.parquet"
                _write_atomic(path, lambda f, t=part: pq.write_table(
                    t, f, compression=self.compression))
                written.append(path)
                files.append(self._file_entry(path, len(rows)))
                if topic in JSONL_TOPICS:
                    path = directory / f"{name}.jsonl"
                    _write_atomic(path, lambda f, rs=rows: f.write(b"".join(
                        orjson.dumps({c: records[i].get(c) for c in columns}) + b"\n"
                        for i in rs)))
                    written.append(path)
                    files.append(self._file_entry(path, len(rows)))
                _fsync_dir(directory)  # the renames are durable before the manifest names them
            self._write_manifest(manifest_path, {
                "version": MANIFEST_VERSION,
                "name": name,
                "topic": topic,
                "topic_id": topic_id,
                "table": table,
                "ranges": {str(p): [first, last] for p, (first, last) in sorted(ranges.items())},
                "rows": n,
                "files": files,
                "written_at_ms": time.time_ns() // 1_000_000,
            })
        except BaseException as exc:
            # Best effort: leave nothing uncommitted behind (recover would delete it anyway);
            # once the manifest is in place the flush is committed and its files stay.
            if not manifest_path.exists():
                for path in written:
                    path.unlink(missing_ok=True)
                    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise LakeError(f"cannot write {table} to the lake at {self.root}: {exc}") from exc
            raise
        self._counted[table][name] = n
        return written

    def _split_by_hour(self, topic: str, table: str, records: list[dict]) -> dict[str, list[int]]:
        """Return the row indices of each ``date=/hour=`` directory the flush touches."""
        column = TIME_COLUMN[topic]
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for row, record in enumerate(records):
            at = record.get(column)
            if type(at) is not int:
                field = SCHEMA_OF_TOPIC[topic].field(column)
                raise _violation(table, field, row, at,
                                 "expected int milliseconds since the epoch (UTC)")
            by_bucket[at // _HOUR_MS].append(row)
        return {partition_dir(bucket * _HOUR_MS): rows for bucket, rows in by_bucket.items()}

    def _split_table_by_hour(self, topic: str, arrow: pa.Table) -> dict[str, Any]:
        """``_split_by_hour`` of an Arrow table (its time column is required: no nulls)."""
        hours = arrow.column(TIME_COLUMN[topic]).cast(pa.int64()).to_numpy() // _HOUR_MS
        return {partition_dir(int(h) * _HOUR_MS): np.flatnonzero(hours == h)
                for h in np.unique(hours)}

    def _file_entry(self, path: Path, rows: int) -> dict:
        return {"path": path.relative_to(self.root).as_posix(), "rows": rows,
                "bytes": path.stat().st_size}

    def _write_manifest(self, path: Path, manifest: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, lambda f: f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2)))
        _fsync_dir(path.parent)

    # -- reading --------------------------------------------------------------------------

    def row_count(self) -> dict[str, int]:
        """Return the committed rows per table, from the manifests.

        Rows of every flush ever committed: compaction does not change it, nor does retention
        (the rows of the flushes it retires are kept in ``retained.json``). Cheap enough for
        status lines: each manifest is read once per writer, later calls only list the
        manifest directories. Tables with no flush yet count 0. While a retention run retires
        manifests the count may be low for that moment, never high.
        """
        counts: dict[str, int] = {}
        for table in TABLE_OF_TOPIC.values():
            mdir = self.manifest_dir(table)
            if not mdir.is_dir():
                counts[table] = 0
                continue
            # retained.json before the listing: a manifest retired after this read is still
            # listed (counted once), one retired before is in the retained rows, or listed in
            # "retiring" while its run has not finished (excluded here, counted there).
            retained = read_retained(self.root, table) or {}
            retiring = set(retained.get("retiring", ()))
            cache = self._counted[table]
            listed: set[str] = set()
            for entry in os.scandir(mdir):
                if not (entry.name.startswith(PART_PREFIX) and entry.name.endswith(".json")):
                    continue
                name = entry.name[:-len(".json")]
                if name not in cache:
                    try:
                        cache[name] = orjson.loads(Path(entry.path).read_bytes())["rows"]
                    except FileNotFoundError:
                        continue  # retired since the listing
                    except (OSError, orjson.JSONDecodeError, KeyError) as exc:
                        raise LakeError(f"unreadable manifest {entry.path}: {exc}") from exc
                listed.add(name)
            for name in cache.keys() - listed:
                del cache[name]
            counts[table] = retained.get("rows", 0) + sum(
                rows for name, rows in cache.items() if name not in retiring)
        return counts


def read_retained(root: Path, table: str) -> dict | None:
    """Return ``retained.json`` of ``table`` (what retention removed), or None if there is none.

    ``{"offsets": {topic_id or "": {partition: next offset}}, "rows": int, "retiring": [names
    of part manifests a retention run is deleting]}``.
    """
    path = Path(root) / MANIFESTS_DIR / table / RETAINED_MANIFEST
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise LakeError(f"unreadable manifest {path}: {exc}. Restore it from a backup: it holds "
                        "the offsets the sink resumes from for data retention deleted") from exc


def visible_files(root: Path, table: str, suffix: str = ".parquet") -> list[str]:
    """Return the data files of ``table`` a reader must read, as paths relative to the table.

    Committed part files (their manifest exists) that no committed compaction replaces, and
    committed compacted files that no later compaction replaces: every committed row once.
    Uncommitted files (a flush or compaction in flight, or left by a crash) and ``*.tmp`` are
    left out. Costs a directory listing per hour and a ``stat`` per part file; compaction
    manifests are read only for hours holding a compacted file and other files.

    Examples
    --------
    >>> import tempfile
    >>> visible_files(Path(tempfile.mkdtemp()), "alerts")
    []
    """
    table_dir = Path(root) / table
    found: list[str] = []
    if not table_dir.is_dir():
        return found
    for date in sorted(os.scandir(table_dir), key=lambda e: e.name):
        if not (date.name.startswith("date=") and date.is_dir()):
            continue
        for hour in sorted(os.scandir(date.path), key=lambda e: e.name):
            if hour.name.startswith("hour=") and hour.is_dir():
                found.extend(visible_in_hour(root, table, f"{date.name}/{hour.name}", suffix))
    return found


def visible_in_hour(root: Path, table: str, hour: str, suffix: str = ".parquet") -> list[str]:
    """Return :func:`visible_files` of one hour partition (``hour``: ``date=.../hour=HH``)."""
    mdir = Path(root) / MANIFESTS_DIR / table
    parts, compacts = [], []
    try:
        entries = list(os.scandir(Path(root) / table / hour))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.endswith(suffix):
            continue
        stem = entry.name[:-len(suffix)]
        if not (mdir / f"{stem}.json").exists():
            continue  # not committed (yet, or ever)
        if entry.name.startswith(PART_PREFIX):
            parts.append(entry.name)
        elif entry.name.startswith(COMPACT_PREFIX):
            compacts.append(entry.name)
    replaced: set[str] = set()
    if compacts and (parts or len(compacts) > 1):
        for name in list(compacts):
            try:
                manifest = _read_manifest(mdir / f"{name[:-len(suffix)]}.json")
            except FileNotFoundError:
                # Deleted since the listing; compaction deletes a manifest only after its file
                # and the files it replaced, so there is nothing left of it to read.
                compacts.remove(name)
                continue
            replaced.update(p.rsplit("/", 1)[-1] for p in manifest["replaces"])
    return [f"{hour}/{name}" for name in sorted(compacts + parts) if name not in replaced]


def _read_manifest(path: Path) -> dict:
    """Read a manifest; a missing one raises FileNotFoundError, a broken one LakeError."""
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, orjson.JSONDecodeError) as exc:
        raise LakeError(f"unreadable manifest {path}: {exc}. Restore it from a backup") from exc
