"""Lake housekeeping: compaction of hour partitions, and retention.

**Compaction.** The sink writes one small file per table, hour and flush. :meth:`Compactor.run`
merges the visible files of each closed hour (:func:`sinks.lake.visible_in_hour`: committed,
not replaced) into one ``compact-<id>.parquet`` (and ``.jsonl`` for dead_letter and alerts),
rows ordered by the table's time column. Steps, each durable before the next::

    1. compact-<id>.parquet.tmp written, fsynced, renamed       (invisible: no manifest)
    2. _manifests/<table>/compact-<id>.json written the same way  <- the commit
    3. later (delete_after_s after 2), the replaced files deleted, on a later run

A crash before 2 leaves an uncommitted ``compact-*`` file that readers ignore and the next
run deletes; after 2 readers read the compacted file and not the files it replaces. The files
present when an hour's compaction starts are its input: a late flush into that hour lands
next to the compacted file and is merged, with it, by a later run. Part manifests are never
touched, so the sink's resume offsets (``LakeWriter.recover``) and ``row_count`` stay the same.
The replaced files are deleted after a grace period, so a query that listed the files before
the commit still reads them (sinks/clickhouse.py also tolerates a file deleted under it).

**Retention.** :func:`retain` deletes hour partitions older than N days: their files, their
compaction manifests, and the part manifests whose files all lay there, after folding those
manifests' offsets and rows into ``_manifests/<table>/retained.json`` (written first: the sink
still resumes after them). A part manifest with files in kept hours too keeps its offsets and
loses the entries of the deleted files.

**Who runs it.** Both need the lake's writer lock: the sink runs compaction itself in a
background thread (``RISKSTREAM_LAKE_COMPACT_EVERY_S``), holding the lock already; the CLI
(``riskstream lake compact|retain``) takes it, and refuses with a clear message while a sink
runs. In one process a module lock keeps compactions and retention one at a time.

Limits: an hour is merged in memory (one hour of one table: ~300 MB of Arrow for 700,000
scored transactions). Tools that glob ``*.parquet`` themselves (not ``riskstream sql``) see
a compacted hour twice during the grace period: use :func:`sinks.lake.visible_files`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.errors import LakeError
from pipelines.topics import TABLE_OF_TOPIC
from schemas.outputs import SCHEMA_OF_TABLE, TIME_COLUMN
from sinks.lake import (
    COMPACT_PREFIX, JSONL_TOPICS, MANIFEST_VERSION, PART_PREFIX, RETAINED_MANIFEST, LakeWriter, _fsync_dir, read_retained, visible_in_hour,
)

log = logging.getLogger(__name__)

TOPIC_OF_TABLE = {table: topic for topic, table in TABLE_OF_TOPIC.items()}
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
# One compaction or retention at a time per process (the sink's thread and a test, say);
# across processes the lake's writer lock does it.
_RUNNING = threading.Lock()

Progress = Callable[[str], None]


def _checkpoint(step: str) -> None:
    """A point between two durable steps; tests replace it to inject a crash there."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def hour_start_ms(hour: str) -> int:
    """Return the start (epoch ms, UTC) of an hour partition ``date=YYYY-MM-DD/hour=HH``.

    Examples
    --------
    >>> hour_start_ms("date=2024-05-01/hour=13")
    1714568400000
    """
    date, hh = hour.split("/")
    at = datetime.strptime(f"{date[5:]} {hh[5:]}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    return int(at.timestamp()) * 1000


def hour_partitions(root: Path, table: str) -> list[str]:
    """Return the ``date=.../hour=..`` directories of ``table``, oldest first."""
    table_dir = Path(root) / table
    if not table_dir.is_dir():
        return []
    return sorted(p.relative_to(table_dir).as_posix() for p in table_dir.glob("date=*/hour=*")
                  if p.is_dir())


@dataclass
class HourCompaction:
    """What the compaction of one hour partition did (sizes of the Parquet files)."""

    table: str
    hour: str
    name: str
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    rows: int


@dataclass
class CompactionReport:
    """A compaction run: the hours compacted, and the replaced files deleted after grace."""

    hours: list[HourCompaction] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "table/hour: why"
    deleted_files: int = 0
    deleted_bytes: int = 0
    orphans_deleted: int = 0

    def summary(self) -> dict:
        return {
            "hours_compacted": len(self.hours),
            "files_before": sum(h.files_before for h in self.hours),
            "files_after": sum(h.files_after for h in self.hours),
            "bytes_before": sum(h.bytes_before for h in self.hours),
            "bytes_after": sum(h.bytes_after for h in self.hours),
            "rows": sum(h.rows for h in self.hours),
            "replaced_files_deleted": self.deleted_files,
            "replaced_bytes_deleted": self.deleted_bytes,
            "uncommitted_files_deleted": self.orphans_deleted,
            "skipped": self.skipped,
        }


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` in ``schema``: columns in order, cast, missing nullable ones null."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        elif f.nullable:
            columns.append(pa.nulls(len(table), f.type))
        else:
            raise LakeError(f"a file lacks the required column {f.name}")
    return pa.Table.from_arrays(columns, schema=schema)


def _write_durable(path: Path, write: Callable) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    _checkpoint(f"written {tmp.name}")
    os.replace(tmp, path)
    _checkpoint(f"renamed {path.name}")


class Compactor:
    """Compacts the hour partitions of a lake, and deletes what compactions replaced.

    Parameters
    ----------
    writer
        The lake's :class:`LakeWriter`: the sink's own (it holds the lock already), or one the
        caller made for this (its lock is taken on ``run``; :class:`LakeError` if a sink holds
        it).
    delete_after_s
        Grace period: replaced files are deleted by the first run this long after their
        compaction committed. Longer than any query (a query lists the files when it starts).
    progress
        Called with one line per compacted hour (the CLI prints them).

    Examples
    --------
    >>> import tempfile
    >>> with LakeWriter(Path(tempfile.mkdtemp())) as lake:
    ...     for n in range(3):
    ...         _ = lake.write("alerts", [{"alert_id": f"a{n}", "rule": "r", "severity": "high",
    ...                                    "stream": "transactions",
    ...                                    "created_at": 1714568400000 + n}], {0: (n, n)})
    ...     report = Compactor(lake, delete_after_s=0).run(older_than_s=0)
    ...     report.summary()["files_before"], report.summary()["files_after"], lake.recover("alerts")
    (3, 1, {0: 3})
    """

    def __init__(self, writer: LakeWriter, *, delete_after_s: float = 600.0,
                 compression: str | None = None, progress: Progress | None = None,
                 clock_ms: Callable[[], int] = _now_ms) -> None:
        self.writer = writer
        self.root = writer.root
        self.delete_after_s = delete_after_s
        self.compression = compression or writer.compression
        self.progress = progress or (lambda line: log.info("lake compact: %s", line))
        self.clock_ms = clock_ms

    def run(self, tables: Iterable[str] | None = None, *, older_than_s: float = 3600.0,
            min_files: int = 2) -> CompactionReport:
        """Compact every hour of ``tables`` (default all) that ended ``older_than_s`` ago and
        holds at least ``min_files`` visible Parquet files; first delete what earlier
        compactions replaced, past the grace period. Returns what it did."""
        chosen = list(tables) if tables else list(SCHEMA_OF_TABLE)
        unknown = [t for t in chosen if t not in SCHEMA_OF_TABLE]
        if unknown:
            raise LakeError(f"no table {', '.join(unknown)}; the lake holds "
                            f"{', '.join(SCHEMA_OF_TABLE)}")
        self.writer.lock()
        report = CompactionReport()
        with _RUNNING:
            for table in chosen:
                self._clean(table, report)
                now = self.clock_ms()
                for hour in hour_partitions(self.root, table):
                    if hour_start_ms(hour) + _HOUR_MS + older_than_s * 1000 > now:
                        continue  # still open, or not old enough
                    try:
                        done = self.compact_hour(table, hour, min_files=min_files)
                    except (LakeError, pa.ArrowException, OSError) as exc:
                        # One bad hour must not stop the others; its files stay as they are.
                        log.error("lake compact: %s/%s skipped: %s", table, hour, exc)
                        report.skipped.append(f"{table}/{hour}: {exc}")
                        continue
                    if done is not None:
                        report.hours.append(done)
                        self.progress(
                            f"{table}/{hour}: {done.files_before} files -> 1, {done.rows} rows, "
                            f"{done.bytes_before:,} -> {done.bytes_after:,} bytes")
        return report

    # -- one hour -------------------------------------------------------------------------

    def compact_hour(self, table: str, hour: str, *, min_files: int = 2) -> HourCompaction | None:
        """Merge the visible files of one hour into one; None if it holds < ``min_files``."""
        inputs = visible_in_hour(self.root, table, hour)
        if len(inputs) < max(min_files, 2):
            return None
        topic = TOPIC_OF_TABLE[table]
        jsonl_inputs = visible_in_hour(self.root, table, hour, ".jsonl") \
            if topic in JSONL_TOPICS else []
        table_dir = self.root / table
        replaces = [f"{table}/{p}" for p in inputs + jsonl_inputs]
        digest = hashlib.sha1("|".join([table, hour, *sorted(replaces)]).encode()).hexdigest()
        name = COMPACT_PREFIX + digest[:16]
        schema = SCHEMA_OF_TABLE[table]
        time_column = TIME_COLUMN[topic]

        parts = [_conform(pq.read_table(table_dir / p), schema) for p in inputs]
        merged = pa.concat_tables(parts)
        # sort_indices is stable: rows of one time keep their file (and offset) order.
        merged = merged.take(pc.sort_indices(merged, [(time_column, "ascending")]))
        bytes_before = sum((table_dir / p).stat().st_size for p in inputs)

        directory = table_dir / hour
        files: list[dict] = []
        path = directory / f"{name}.parquet"
        _write_durable(path, lambda f: pq.write_table(merged, f, compression=self.compression))
        files.append({"path": f"{table}/{hour}/{path.name}", "rows": merged.num_rows,
                      "bytes": path.stat().st_size})
        if jsonl_inputs:
            lines = [line for p in jsonl_inputs
                     for line in (table_dir / p).read_bytes().splitlines() if line]
            keyed = sorted(((orjson.loads(line).get(time_column) or 0, i)
                            for i, line in enumerate(lines)))
            jsonl = directory / f"{name}.jsonl"
            _write_durable(jsonl, lambda f: f.write(b"".join(lines[i] + b"\n" for _, i in keyed)))
            files.append({"path": f"{table}/{hour}/{jsonl.name}", "rows": len(lines),
                          "bytes": jsonl.stat().st_size})
        _fsync_dir(directory)
        self.writer._write_manifest(self.writer.manifest_dir(table) / f"{name}.json", {
            "version": MANIFEST_VERSION,
            "kind": "compaction",
            "name": name,
            "table": table,
            "hour": hour,
            "rows": merged.num_rows,
            "files": files,
            "replaces": replaces,
            "written_at_ms": self.clock_ms(),
        })
        _checkpoint("committed")
        if self.delete_after_s <= 0:
            self._delete(self.root / p for p in replaces)
        return HourCompaction(table=table, hour=hour, name=name, files_before=len(inputs),
                              files_after=1, bytes_before=bytes_before,
                              bytes_after=files[0]["bytes"], rows=merged.num_rows)

    # -- cleaning up ----------------------------------------------------------------------

    def _delete(self, paths: Iterable[Path]) -> tuple[int, int]:
        count = size = 0
        for path in paths:
            try:
                size += path.stat().st_size
                path.unlink()
                count += 1
            except FileNotFoundError:
                continue
            _checkpoint(f"deleted {path.name}")
        return count, size

    def _clean(self, table: str, report: CompactionReport) -> None:
        """Delete what compactions of ``table`` left: uncommitted compacted files (a crash
        before the commit), files replaced longer than the grace period ago, and manifests of
        compactions that have nothing left (replaced in turn, and deleted)."""
        mdir = self.writer.manifest_dir(table)
        manifests: dict[str, dict] = {}
        if mdir.is_dir():
            for path in mdir.glob(f"{COMPACT_PREFIX}*"):
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                else:
                    manifests[path.stem] = orjson.loads(path.read_bytes())
        for path in (self.root / table).glob(f"date=*/hour=*/{COMPACT_PREFIX}*"):
            if path.name.endswith(".tmp") or path.name.split(".")[0] not in manifests:
                log.warning("lake compact: deleting %s, left by a compaction that never "
                            "committed", path)
                path.unlink(missing_ok=True)
                report.orphans_deleted += 1
        cutoff = self.clock_ms() - self.delete_after_s * 1000
        for manifest in manifests.values():
            if manifest["written_at_ms"] <= cutoff:
                count, size = self._delete(self.root / p for p in manifest["replaces"])
                report.deleted_files += count
                report.deleted_bytes += size
        for name, manifest in manifests.items():
            gone = not any((self.root / p).exists()
                           for p in [f["path"] for f in manifest["files"]] + manifest["replaces"])
            if gone:  # replaced by a later compaction, which deleted its file: nothing to read
                (mdir / f"{name}.json").unlink(missing_ok=True)


def compact_lake(writer: LakeWriter, tables: Iterable[str] | None = None, *,
                 older_than_s: float = 3600.0, min_files: int = 2,
                 delete_after_s: float = 600.0,
                 progress: Progress | None = None) -> CompactionReport:
    """Run one :class:`Compactor` pass over the lake of ``writer`` (see ``Compactor.run``)."""
    return Compactor(writer, delete_after_s=delete_after_s, progress=progress).run(
        tables, older_than_s=older_than_s, min_files=min_files)


# -- retention ------------------------------------------------------------------------------

@dataclass
class TableRetention:
    table: str
    hours: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    rows: int = 0  # rows of the deleted Parquet files
    manifests_retired: int = 0


def _write_retained(writer: LakeWriter, table: str, retained: dict) -> None:
    writer._write_manifest(writer.manifest_dir(table) / RETAINED_MANIFEST, retained)


def retain(writer: LakeWriter, days: int, tables: Iterable[str] | None = None, *,
           now_ms: int | None = None, progress: Progress | None = None) -> list[TableRetention]:
    """Delete the hour partitions of ``tables`` (default all) that ended more than ``days``
    days ago; return what was deleted per table.

    Crash-safe and idempotent: the retired manifests' offsets and rows go to ``retained.json``
    first (with their names in ``retiring``), then the files, then the manifests; a run that
    finds ``retiring`` left by a crashed one finishes it first. ``LakeWriter.recover`` returns
    the same offsets before and after, and ``row_count`` the same rows.
    """
    if days < 1:
        raise LakeError(f"retention must keep at least 1 day, got {days}")
    chosen = list(tables) if tables else list(SCHEMA_OF_TABLE)
    unknown = [t for t in chosen if t not in SCHEMA_OF_TABLE]
    if unknown:
        raise LakeError(f"no table {', '.join(unknown)}; the lake holds "
                        f"{', '.join(SCHEMA_OF_TABLE)}")
    say = progress or (lambda line: log.info("lake retain: %s", line))
    writer.lock()
    cutoff_ms = (now_ms if now_ms is not None else _now_ms()) - days * _DAY_MS
    reports = []
    with _RUNNING:
        for table in chosen:
            report = _retain_table(writer, table, cutoff_ms)
            if report.hours or report.manifests_retired:
                say(f"{table}: {len(report.hours)} hours, {report.files} files, "
                    f"{report.rows} rows, {report.bytes:,} bytes deleted")
            reports.append(report)
    return reports


def _retain_table(writer: LakeWriter, table: str, cutoff_ms: int) -> TableRetention:
    root, mdir = writer.root, writer.manifest_dir(table)
    report = TableRetention(table)
    retained = read_retained(root, table) or {"version": MANIFEST_VERSION, "table": table,
                                              "offsets": {}, "rows": 0, "retiring": []}
    if retained["retiring"]:
        # A run crashed after writing retained.json: its offsets and rows are in there already.
        for name in retained["retiring"]:
            path = mdir / f"{name}.json"
            if path.exists():
                for entry in orjson.loads(path.read_bytes())["files"]:
                    (root / entry["path"]).unlink(missing_ok=True)
                path.unlink()
        retained["retiring"] = []
        _write_retained(writer, table, retained)

    expired = [h for h in hour_partitions(root, table) if hour_start_ms(h) + _HOUR_MS <= cutoff_ms]
    expired_prefixes = tuple(f"{table}/{h}/" for h in expired)
    retiring: list[dict] = []
    trimmed: list[tuple[Path, dict]] = []
    if mdir.is_dir():
        for path in mdir.glob(f"{PART_PREFIX}*.json"):
            manifest = orjson.loads(path.read_bytes())
            inside = [f for f in manifest["files"] if f["path"].startswith(expired_prefixes)]
            if not manifest["files"]:
                if manifest["written_at_ms"] < cutoff_ms:
                    retiring.append(manifest)  # a flush of skipped records only: offsets
            elif len(inside) == len(manifest["files"]):
                retiring.append(manifest)
            elif inside:
                manifest["files"] = [f for f in manifest["files"] if f not in inside]
                trimmed.append((path, manifest))
    if not expired and not retiring:
        return report

    # 1. offsets and rows of the retired manifests, durable before anything is deleted
    offsets = retained["offsets"]
    for manifest in retiring:
        incarnation = offsets.setdefault(manifest.get("topic_id") or "", {})
        for partition, (_first, last) in manifest["ranges"].items():
            incarnation[partition] = max(incarnation.get(partition, 0), last + 1)
        retained["rows"] += manifest["rows"]
    retained["retiring"] = [m["name"] for m in retiring]
    retained["updated_at_ms"] = _now_ms()
    _write_retained(writer, table, retained)
    _checkpoint("retained")

    # 2. the data
    for hour in expired:
        directory = root / table / hour
        for path in directory.iterdir():
            report.files += 1
            report.bytes += path.stat().st_size
            if path.suffix == ".parquet" and not path.name.endswith(".tmp"):
                try:
                    report.rows += pq.read_metadata(path).num_rows
                except (OSError, pa.ArrowException):
                    pass
        shutil.rmtree(directory)
        _checkpoint(f"deleted {hour}")
        report.hours.append(hour)
        date_dir = directory.parent
        if not any(date_dir.iterdir()):
            date_dir.rmdir()

    # 3. the manifests: compactions of deleted hours, trimmed and retired flushes
    for path in mdir.glob(f"{COMPACT_PREFIX}*.json"):
        if orjson.loads(path.read_bytes())["hour"] in expired:
            path.unlink()
    for path, manifest in trimmed:
        writer._write_manifest(path, manifest)
    for manifest in retiring:
        (mdir / f"{manifest['name']}.json").unlink(missing_ok=True)
        _checkpoint("retired a manifest")
    report.manifests_retired = len(retiring)
    retained["retiring"] = []
    _write_retained(writer, table, retained)
    return report


def retention_summary(reports: list[TableRetention]) -> dict:
    """Totals and per-table details of a retention run, for the CLI."""
    return {
        "hours_deleted": sum(len(r.hours) for r in reports),
        "files_deleted": sum(r.files for r in reports),
        "bytes_deleted": sum(r.bytes for r in reports),
        "rows_deleted": sum(r.rows for r in reports),
        "manifests_retired": sum(r.manifests_retired for r in reports),
        "tables": {r.table: asdict(r) for r in reports if r.hours or r.manifests_retired},
    }


__all__ = [
    "CompactionReport", "Compactor", "HourCompaction", "TableRetention", "compact_lake",
    "hour_partitions", "hour_start_ms", "retain", "retention_summary",
]
