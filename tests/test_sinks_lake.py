"""The lake writer: files, manifests, recovery after crashes, partitions, schema violations."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lake_fixtures import HOUR_MS, T0_MS, make_record

import sinks.lake
from pipelines.errors import LakeError
from pipelines.topics import (
    AGGREGATES, ALERTS, DEAD_LETTER, METRIC_SAMPLES, MODEL_QUALITY, OUTPUT_TOPICS,
    SCORED_APPLICATIONS,
    SCORED_TRANSACTIONS,
)
from schemas.outputs import SCHEMA_OF_TOPIC
from sinks.lake import LakeWriter, flush_name, json_to_arrow, to_arrow


@pytest.fixture
def lake(tmp_path: Path):
    with LakeWriter(tmp_path / "lake") as writer:
        yield writer


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  and p.name != ".writer.lock")


def read_table(lake: LakeWriter, table: str) -> pa.Table:
    paths = sorted((lake.root / table).rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in paths]) if paths else None


def test_doctests():
    assert doctest.testmod(sinks.lake).failed == 0


def test_write_renames_data_then_commits_a_manifest(lake):
    records = [make_record(SCORED_TRANSACTIONS, n) for n in range(10)]
    paths = lake.write(SCORED_TRANSACTIONS, records, {0: (0, 4), 1: (100, 104)})

    name = flush_name(SCORED_TRANSACTIONS, {0: (0, 4), 1: (100, 104)})
    assert [p.name for p in paths] == [f"{name}.parquet"]
    assert files_under(lake.root) == [
        f"_manifests/scored_transactions/{name}.json",
        f"scored_transactions/date=2024-05-01/hour=13/{name}.parquet",
    ]  # no *.tmp left
    manifest = orjson.loads((lake.manifest_dir("scored_transactions") / f"{name}.json")
                            .read_bytes())
    assert manifest["ranges"] == {"0": [0, 4], "1": [100, 104]}
    assert manifest["rows"] == 10
    assert [f["path"] for f in manifest["files"]] == [
        f"scored_transactions/date=2024-05-01/hour=13/{name}.parquet"]

    table = pq.read_table(paths[0])
    assert table.schema.equals(SCHEMA_OF_TOPIC[SCORED_TRANSACTIONS])
    assert table.column("event_id").to_pylist() == [f"txn-{n}" for n in range(10)]
    assert table.column("event_time")[0].as_py().isoformat() == "2024-05-01T13:00:00+00:00"
    assert table.column("reasons")[0].as_py() == ["amount_zscore", "new_device"]
    assert lake.row_count()["scored_transactions"] == 10


def test_rows_land_in_the_partition_of_their_time_column(lake):
    # aggregates are placed by window_start, across an hour and a day boundary
    times = [T0_MS, T0_MS + HOUR_MS - 1, T0_MS + HOUR_MS, T0_MS + 11 * HOUR_MS]
    records = [make_record(AGGREGATES, n, time_ms=t) for n, t in enumerate(times)]
    paths = lake.write(AGGREGATES, records, {2: (0, 3)})

    assert sorted(p.relative_to(lake.root / "aggregates").parent.as_posix() for p in paths) == [
        "date=2024-05-01/hour=13", "date=2024-05-01/hour=14", "date=2024-05-02/hour=00"]
    counts = {p.parent.name: pq.read_metadata(p).num_rows for p in paths}
    assert counts == {"hour=13": 2, "hour=14": 1, "hour=00": 1}
    # all files of one flush share its name, and the manifest lists them all
    assert len({p.name for p in paths}) == 1
    manifest = next(lake.manifests(AGGREGATES))
    assert sorted(f["path"] for f in manifest["files"]) == sorted(
        p.relative_to(lake.root).as_posix() for p in paths)


@pytest.mark.parametrize("topic", [DEAD_LETTER, ALERTS])
def test_dead_letter_and_alerts_are_also_written_as_jsonl(lake, topic):
    records = [make_record(topic, n) for n in range(3)]
    paths = lake.write(topic, records, {0: (7, 9)})

    assert sorted(p.suffix for p in paths) == [".jsonl", ".parquet"]
    jsonl = next(p for p in paths if p.suffix == ".jsonl")
    lines = [orjson.loads(line) for line in jsonl.read_bytes().splitlines()]
    assert lines == records  # every column, in schema order, times as int ms
    assert list(lines[0]) == SCHEMA_OF_TOPIC[topic].names
    assert lake.row_count()[sinks.lake.TABLE_OF_TOPIC[topic]] == 3  # rows, not rows x formats


def test_other_tables_have_no_jsonl(lake):
    paths = lake.write(METRIC_SAMPLES, [make_record(METRIC_SAMPLES)], {0: (0, 0)})
    assert [p.suffix for p in paths] == [".parquet"]


def test_recover_resumes_after_the_last_manifest(lake):
    assert lake.recover(SCORED_TRANSACTIONS) == {}
    lake.write(SCORED_TRANSACTIONS, [make_record(SCORED_TRANSACTIONS, n) for n in range(3)],
               {0: (0, 1), 3: (40, 40)})
    lake.write(SCORED_TRANSACTIONS, [make_record(SCORED_TRANSACTIONS, n) for n in range(3, 5)],
               {0: (2, 3)})
    # gaps are fine (a skipped bad record is inside a range); next = max(last) + 1
    assert lake.recover(SCORED_TRANSACTIONS) == {0: 4, 3: 41}
    assert lake.recover(ALERTS) == {}  # per topic


def test_recover_after_a_crash_between_data_and_manifest(tmp_path, monkeypatch):
    root = tmp_path / "lake"
    records = [make_record(SCORED_APPLICATIONS, n) for n in range(5)]
    committed = [make_record(SCORED_APPLICATIONS, n) for n in range(100, 102)]
    with LakeWriter(root) as lake:
        lake.write(SCORED_APPLICATIONS, committed, {1: (0, 1)})

        # "crash": the data file is renamed into place, the manifest never written, and the
        # process dies before its cleanup runs
        def crash(*_args):
            raise SystemExit("killed")
        monkeypatch.setattr(LakeWriter, "_write_manifest", crash)
        monkeypatch.setattr(sinks.lake.Path, "unlink", lambda *a, **k: None)
        with pytest.raises(SystemExit):
            lake.write(SCORED_APPLICATIONS, records, {0: (0, 4)})
        monkeypatch.undo()
    # a half-written file of another flush, too
    hour = root / "scored_applications" / "date=2024-05-01" / "hour=13"
    (hour / "part-0123456789abcdef.parquet.tmp").write_bytes(b"PAR1 half")
    orphan = hour / f"{flush_name(SCORED_APPLICATIONS, {0: (0, 4)})}.parquet"
    assert orphan.exists()

    with LakeWriter(root) as lake:  # the restarted sink
        # the committed flush counts, the orphan does not: partition 0 is read again from 0
        assert lake.recover(SCORED_APPLICATIONS) == {1: 2}
        assert not orphan.exists()
        assert sorted(p.name for p in hour.iterdir()) == [
            f"{flush_name(SCORED_APPLICATIONS, {1: (0, 1)})}.parquet"]
        # the replay may cut different batches: still exactly once
        lake.write(SCORED_APPLICATIONS, records[:2], {0: (0, 1)})
        lake.write(SCORED_APPLICATIONS, records[2:], {0: (2, 4)})
        ids = read_table(lake, "scored_applications").column("event_id").to_pylist()
        assert sorted(ids) == sorted(r["event_id"] for r in records + committed)
        assert lake.row_count()["scored_applications"] == 7


def test_rewriting_a_committed_flush_writes_nothing(lake):
    records = [make_record(ALERTS, n) for n in range(4)]
    first = lake.write(ALERTS, records, {0: (0, 3)})
    mtimes = [p.stat().st_mtime_ns for p in first]
    again = lake.write(ALERTS, records, {0: (0, 3)})  # a sink that crashed before its commit
    assert again == first
    assert [p.stat().st_mtime_ns for p in first] == mtimes
    assert lake.row_count()["alerts"] == 4


def test_a_flush_of_skipped_records_only_moves_offsets(lake):
    # every record of the range was bad JSON: no data, but the offsets are committed
    assert lake.write(METRIC_SAMPLES, [], {2: (10, 12)}) == []
    assert lake.recover(METRIC_SAMPLES) == {2: 13}
    assert not (lake.root / "metric_samples").exists()


@pytest.mark.parametrize("column, value, message", [
    ("amount", "12.50", "scored_transactions.amount: expected double, got '12.50'"),
    ("amount", True, "scored_transactions.amount: expected double, got True"),
    ("card_id", None, "scored_transactions.card_id: is required, got None"),
    ("score", None, "scored_transactions.score: is required, got None"),
    ("reasons", "new_device", "scored_transactions.reasons: expected list<item: string>"),
    ("reasons", [1], "scored_transactions.reasons: expected list<item: string>"),
    ("scored_at", 1.5, "scored_transactions.scored_at: expected an integral timestamp"),
    ("event_time", "2024-05-01T13:00:00Z",
     "scored_transactions.event_time: expected int milliseconds since the epoch (UTC), "
     "got '2024-05-01T13:00:00Z'"),
    ("surprise", 1, "scored_transactions.surprise: no such column, got 1"),
])
def test_a_schema_violation_raises_naming_table_column_and_value(lake, column, value, message):
    records = [make_record(SCORED_TRANSACTIONS, n) for n in range(5)]
    records[3][column] = value
    with pytest.raises(LakeError, match="row 3") as raised:
        lake.write(SCORED_TRANSACTIONS, records, {0: (0, 4)})
    assert str(raised.value).startswith(message)
    # nothing written, nothing committed: the rows are still in Kafka
    assert files_under(lake.root) == []
    assert lake.recover(SCORED_TRANSACTIONS) == {}


def test_integral_floats_are_accepted_for_integer_columns(lake):
    record = make_record(SCORED_APPLICATIONS, birth_year=1980.0)
    [path] = lake.write(SCORED_APPLICATIONS, [record], {0: (0, 0)})
    assert pq.read_table(path).column("birth_year").to_pylist() == [1980]


def test_dead_letter_int32_overflow_raises(lake):
    record = make_record(DEAD_LETTER, source_partition=2**40)
    with pytest.raises(LakeError, match=r"dead_letter.source_partition: expected int32"):
        lake.write(DEAD_LETTER, [record], {0: (0, 0)})


def test_unknown_topic_and_records_without_offsets_are_refused(lake):
    with pytest.raises(LakeError, match="not an output topic"):
        lake.write("transactions", [], {0: (0, 0)})
    with pytest.raises(LakeError, match="without offset ranges"):
        lake.write(ALERTS, [make_record(ALERTS)], {})


def test_one_writer_per_lake(tmp_path):
    root = tmp_path / "lake"
    with LakeWriter(root) as first:
        first.recover(ALERTS)
        with pytest.raises(LakeError, match=f"pid {os.getpid()}"):
            LakeWriter(root).recover(ALERTS)
        # readers need no lock
        assert LakeWriter(root).row_count() == {sinks.lake.TABLE_OF_TOPIC[t]: 0
                                                for t in OUTPUT_TOPICS}
    with LakeWriter(root) as second:  # released on close
        assert second.recover(ALERTS) == {}


def test_row_count_reads_manifests_written_by_another_writer(tmp_path):
    root = tmp_path / "lake"
    reader = LakeWriter(root)
    with LakeWriter(root) as writer:
        writer.write(ALERTS, [make_record(ALERTS, n) for n in range(3)], {0: (0, 2)})
        assert reader.row_count()["alerts"] == 3
        writer.write(ALERTS, [make_record(ALERTS, n) for n in range(3, 5)], {0: (3, 4)})
    assert reader.row_count()["alerts"] == 5
    assert reader.row_count()["scored_transactions"] == 0


def test_offsets_of_a_recreated_topic_do_not_count(lake):
    # the embedded broker restarted: the topic has a new id and starts again at offset 0
    old = [make_record(ALERTS, n) for n in range(3)]
    new = [make_record(ALERTS, n) for n in range(100, 102)]
    lake.write(ALERTS, old, {0: (0, 2)}, topic_id="old-id")
    assert lake.recover(ALERTS, "new-id") == {}
    # the same offsets of the new topic are another flush, not "committed already"
    paths = lake.write(ALERTS, new, {0: (0, 1)}, topic_id="new-id")
    assert paths and lake.recover(ALERTS, "new-id") == {0: 2}
    assert lake.recover(ALERTS, "old-id") == {0: 3}
    assert lake.recover(ALERTS) == {0: 3}  # without an id: every manifest counts
    ids = read_table(lake, "alerts").column("alert_id").to_pylist()
    assert sorted(ids) == sorted(r["alert_id"] for r in old + new)  # old rows kept


@pytest.mark.parametrize("topic", [SCORED_TRANSACTIONS, SCORED_APPLICATIONS, METRIC_SAMPLES,
                                   AGGREGATES, MODEL_QUALITY])
def test_the_json_fast_path_builds_the_same_table_as_the_record_path(topic):
    records = [make_record(topic, n, time_ms=T0_MS + n * 60_000) for n in range(50)]
    optional = [f.name for f in SCHEMA_OF_TOPIC[topic] if f.nullable]
    for r in records[::3]:  # missing keys are nulls on both paths
        r.pop(optional[-1], None)
    fast = json_to_arrow(topic, [orjson.dumps(r) for r in records])
    assert fast is not None and fast.equals(to_arrow(topic, records))


def test_the_json_fast_path_leaves_anything_off_schema_to_the_record_path():
    good = make_record(SCORED_TRANSACTIONS, 0)
    required = next(f.name for f in SCHEMA_OF_TOPIC[SCORED_TRANSACTIONS] if not f.nullable)
    for bad in ({**good, "amount": "12.50"},       # a wrong type
                {**good, "surprise": 1},           # an unknown column
                {**good, required: None}):         # a null where a value is required
        assert json_to_arrow(SCORED_TRANSACTIONS, [orjson.dumps(good), orjson.dumps(bad)]) is None
    two_in_one = orjson.dumps(good) + b" " + orjson.dumps(good)
    assert json_to_arrow(SCORED_TRANSACTIONS, [two_in_one]) is None


def test_a_table_from_the_fast_path_is_written_by_hour_like_records(tmp_path):
    records = [make_record(METRIC_SAMPLES, n, time_ms=T0_MS + n * 20 * 60_000) for n in range(9)]
    writer = LakeWriter(tmp_path)
    files = writer.write(METRIC_SAMPLES, json_to_arrow(METRIC_SAMPLES,
                                                       [orjson.dumps(r) for r in records]),
                         {0: (0, 8)})
    assert len(files) == 3  # 3 hours of 20-minute samples
    back = pa.concat_tables(pq.read_table(f) for f in sorted(files))
    assert back.column("event_id").to_pylist() == [r["event_id"] for r in records]
    assert writer.row_count()["metric_samples"] == 9
