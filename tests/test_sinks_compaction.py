"""Lake compaction and retention: one file per hour, every row once for readers at every
step, offsets and row counts unchanged, crashes between any two steps, the CLI."""

from __future__ import annotations

import doctest
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lake_fixtures import HOUR_MS, T0_MS, make_record

import sinks.compaction
from pipelines.errors import LakeError
from pipelines.topics import ALERTS, SCORED_TRANSACTIONS
from sinks.clickhouse import query_rows
from sinks.compaction import Compactor, retain
from sinks.lake import LakeWriter, visible_files

# 2024-05-01 13:00 + 3 days: the fixture's hours are long closed.
NOW_MS = T0_MS + 3 * 24 * HOUR_MS


class Clock:
    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def write_flushes(lake: LakeWriter, topic: str, flushes: int, *, per_flush: int = 5,
                  first_offset: int = 0, hours: int = 2, seed: int = 1) -> list[dict]:
    """Write ``flushes`` flushes of ``per_flush`` records each, times shuffled over ``hours``
    hours from T0 (so one flush touches several hours, as late rows do)."""
    rng = random.Random(seed)
    records = []
    offset = first_offset
    for _ in range(flushes):
        batch = [make_record(topic, offset + i, time_ms=T0_MS + rng.randrange(hours * HOUR_MS))
                 for i in range(per_flush)]
        lake.write(topic, batch, {0: (offset, offset + per_flush - 1)})
        offset += per_flush
        records += batch
    return records


def lake_state(root: Path, table: str = "scored_transactions") -> dict:
    """What a reader and a restarting sink see."""
    rows = query_rows(root, f"SELECT count() AS n, uniqExact(event_id) AS u FROM {table}")[0]
    return {"rows": rows["n"], "unique": rows["u"]}


def test_doctests():
    assert doctest.testmod(sinks.compaction).failed == 0


def test_an_hour_becomes_one_file_in_time_order_offsets_and_counts_unchanged(tmp_path):
    root, clock = tmp_path / "lake", Clock()
    with LakeWriter(root) as lake:
        records = write_flushes(lake, SCORED_TRANSACTIONS, 12)
        before = {"offsets": lake.recover(SCORED_TRANSACTIONS), "count": lake.row_count()}
        assert len(visible_files(root, "scored_transactions")) == 24  # 12 flushes x 2 hours

        report = Compactor(lake, clock_ms=clock).run(older_than_s=3600)
        summary = report.summary()
        assert (summary["hours_compacted"], summary["files_before"], summary["files_after"],
                summary["rows"]) == (2, 24, 2, 60)
        # readers see the compacted files only, though the replaced ones are still there
        visible = visible_files(root, "scored_transactions")
        assert [Path(v).name.split("-")[0] for v in visible] == ["compact", "compact"]
        assert len(list((root / "scored_transactions").rglob("part-*.parquet"))) == 24
        assert lake_state(root) == {"rows": 60, "unique": 60}
        times = pq.read_table(root / "scored_transactions" / visible[0]).column("event_time")
        assert times.to_pylist() == sorted(times.to_pylist())
        ids = {r["event_id"] for r in query_rows(root, "SELECT event_id FROM scored_transactions")}
        assert ids == {r["event_id"] for r in records}

        # the sink resumes where it did, and counts what it did
        assert lake.recover(SCORED_TRANSACTIONS) == before["offsets"] == {0: 60}
        assert LakeWriter(root).row_count() == before["count"]

        # within the grace period nothing is deleted; after it, the next run deletes
        assert Compactor(lake, clock_ms=clock).run().deleted_files == 0
        clock.now_ms += 601_000
        assert Compactor(lake, clock_ms=clock).run().deleted_files == 24
        assert not list((root / "scored_transactions").rglob("part-*.parquet"))
        assert lake_state(root) == {"rows": 60, "unique": 60}
        assert lake.recover(SCORED_TRANSACTIONS) == {0: 60}
        assert LakeWriter(root).row_count() == before["count"]


def test_open_and_recent_hours_are_left_alone(tmp_path):
    root = tmp_path / "lake"
    with LakeWriter(root) as lake:
        write_flushes(lake, SCORED_TRANSACTIONS, 4)
        # 14:30: hour 13 ended 30 min ago, hour 14 is open
        clock = Clock(T0_MS + HOUR_MS + HOUR_MS // 2)
        assert Compactor(lake, clock_ms=clock).run(older_than_s=3600).hours == []
        [done] = Compactor(lake, clock_ms=clock).run(older_than_s=0).hours
        assert done.hour == "date=2024-05-01/hour=13"


def test_a_late_flush_into_a_compacted_hour_is_read_and_merged_next_time(tmp_path):
    root, clock = tmp_path / "lake", Clock()
    with LakeWriter(root) as lake:
        write_flushes(lake, SCORED_TRANSACTIONS, 6, hours=1)
        Compactor(lake, clock_ms=clock).run()
        # a late row of hour 13 arrives after its compaction: next to the compacted file
        late = make_record(SCORED_TRANSACTIONS, 999, time_ms=T0_MS + 5)
        lake.write(SCORED_TRANSACTIONS, [late], {1: (0, 0)})
        assert len(visible_files(root, "scored_transactions")) == 2
        assert lake_state(root) == {"rows": 31, "unique": 31}

        report = Compactor(lake, clock_ms=clock).run()
        assert report.summary()["files_before"] == 2  # the compacted file and the late one
        [visible] = visible_files(root, "scored_transactions")
        assert lake_state(root) == {"rows": 31, "unique": 31}
        clock.now_ms += 601_000
        Compactor(lake, clock_ms=clock).run()
        # every replaced file is gone, the first compaction's manifest with them
        hour = root / "scored_transactions" / "date=2024-05-01" / "hour=13"
        assert sorted(p.name for p in hour.iterdir()) == [Path(visible).name]
        manifests = sorted(p.name for p in lake.manifest_dir("scored_transactions").iterdir()
                           if p.name.startswith("compact-"))
        assert manifests == [Path(visible).stem + ".json"]
        assert lake_state(root) == {"rows": 31, "unique": 31}
        assert lake.recover(SCORED_TRANSACTIONS) == {0: 30, 1: 1}


def test_jsonl_tables_are_compacted_in_both_formats(tmp_path):
    root, clock = tmp_path / "lake", Clock()
    with LakeWriter(root) as lake:
        for n in range(4):
            lake.write(ALERTS, [make_record(ALERTS, n, time_ms=T0_MS + 1000 * (4 - n))],
                       {0: (n, n)})
        Compactor(lake, delete_after_s=0, clock_ms=clock).run()
        hour = root / "alerts" / "date=2024-05-01" / "hour=13"
        names = sorted(p.name for p in hour.iterdir())
        assert [n.split(".")[1] for n in names] == ["jsonl", "parquet"]
        assert all(n.startswith("compact-") for n in names)
        lines = [json.loads(line) for line in (hour / names[0]).read_text().splitlines()]
        assert [r["alert_id"] for r in lines] == ["alert-3", "alert-2", "alert-1", "alert-0"]
        assert query_rows(root, "SELECT count() AS n FROM alerts") == [{"n": 4}]
        assert lake.row_count()["alerts"] == 4


def _steps(tmp_path: Path) -> list[str]:
    """The checkpoints a compaction passes, recorded on a throwaway lake."""
    seen: list[str] = []
    original = sinks.compaction._checkpoint
    sinks.compaction._checkpoint = seen.append
    try:
        with LakeWriter(tmp_path / "probe") as lake:
            write_flushes(lake, SCORED_TRANSACTIONS, 3, hours=1)
            Compactor(lake, delete_after_s=0, clock_ms=Clock()).run()
    finally:
        sinks.compaction._checkpoint = original
    return [s.split(" ")[0] + " " + ("compact" if "compact-" in s else "part") if " " in s
            else s for s in seen]


def test_a_crash_between_any_two_steps_leaves_the_lake_correct(tmp_path, monkeypatch):
    steps = _steps(tmp_path)
    assert steps[:4] == ["written compact", "renamed compact", "committed", "deleted part"]
    for i in range(len(steps)):
        root = tmp_path / f"lake{i}"
        with LakeWriter(root) as lake:
            write_flushes(lake, SCORED_TRANSACTIONS, 3, hours=1)
            count = lake.row_count()
            calls = iter(range(len(steps)))

            def crash(step, i=i):
                if next(calls) == i:
                    raise SystemExit(f"killed after {step}")
            monkeypatch.setattr(sinks.compaction, "_checkpoint", crash)
            with pytest.raises(SystemExit):
                Compactor(lake, delete_after_s=0, clock_ms=Clock()).run()
            monkeypatch.undo()
        # every row once for a reader, whatever step the crash cut
        assert lake_state(root) == {"rows": 15, "unique": 15}, steps[i]
        with LakeWriter(root) as lake:  # the restarted sink, then the next compaction
            assert lake.recover(SCORED_TRANSACTIONS) == {0: 15}
            assert lake.row_count() == count
            assert lake_state(root) == {"rows": 15, "unique": 15}, steps[i]
            Compactor(lake, delete_after_s=0, clock_ms=Clock()).run()
            hour = root / "scored_transactions" / "date=2024-05-01" / "hour=13"
            assert [p.name.split("-")[0] for p in hour.iterdir()] == ["compact"], steps[i]
            assert lake_state(root) == {"rows": 15, "unique": 15}
            assert lake.recover(SCORED_TRANSACTIONS) == {0: 15}


def test_the_cli_side_refuses_while_a_sink_holds_the_lake(tmp_path):
    root = tmp_path / "lake"
    with LakeWriter(root) as sink_writer:
        sink_writer.recover(ALERTS)
        with pytest.raises(LakeError, match="another process"):
            Compactor(LakeWriter(root)).run()
        with pytest.raises(LakeError, match="another process"):
            retain(LakeWriter(root), days=1)


def test_retention_deletes_old_hours_and_keeps_offsets_and_counts(tmp_path):
    root = tmp_path / "lake"
    with LakeWriter(root) as lake:
        write_flushes(lake, SCORED_TRANSACTIONS, 4, hours=2)  # hours 13 and 14 of May 1
        # a flush of May 3, 12:00, and one straddling May 1 13:00 and May 3
        recent = [make_record(SCORED_TRANSACTIONS, 100 + n, time_ms=T0_MS + 47 * HOUR_MS)
                  for n in range(3)]
        lake.write(SCORED_TRANSACTIONS, recent, {1: (0, 2)})
        lake.write(SCORED_TRANSACTIONS, [make_record(SCORED_TRANSACTIONS, 200, time_ms=T0_MS),
                                         make_record(SCORED_TRANSACTIONS, 201,
                                                     time_ms=T0_MS + 47 * HOUR_MS)], {2: (7, 8)})
        lake.write(SCORED_TRANSACTIONS, [], {3: (0, 4)})  # skipped records only, written now
        Compactor(lake, clock_ms=Clock()).run(older_than_s=0)  # a compaction in grace, too
        offsets, count = lake.recover(SCORED_TRANSACTIONS), lake.row_count()
        assert offsets == {0: 20, 1: 3, 2: 9, 3: 5}

        # May 4 12:00: May 1's hours ended more than a day ago, May 3 12-13:00 did not
        now = T0_MS + 47 * HOUR_MS + 24 * HOUR_MS
        reports = retain(lake, days=1, now_ms=now)
        [report] = [r for r in reports if r.table == "scored_transactions"]
        assert report.hours == ["date=2024-05-01/hour=13", "date=2024-05-01/hour=14"]
        assert report.rows == 21 + 21  # the part files and the compacted ones in grace
        assert report.manifests_retired == 4  # the flushes of May 1 (not the empty one: its
        # manifest was written today, by the wall clock)
        assert lake_state(root) == {"rows": 4, "unique": 4}
        assert not (root / "scored_transactions" / "date=2024-05-01").exists()
        # the sink resumes where it did, and counts what it did
        assert lake.recover(SCORED_TRANSACTIONS) == offsets
        assert LakeWriter(root).row_count() == count
        # compactions of the deleted hours are gone, that of May 3 12:00 stays
        assert [json.loads(p.read_bytes())["hour"] for p in
                lake.manifest_dir("scored_transactions").glob("compact-*.json")] == [
            "date=2024-05-03/hour=12"]
        # the straddling flush keeps its manifest, with its kept file only
        mdir = lake.manifest_dir("scored_transactions")
        assert len(list(mdir.glob("part-*.json"))) == 3
        [straddling] = [json.loads(p.read_bytes()) for p in mdir.glob("part-*.json")
                        if json.loads(p.read_bytes())["ranges"] == {"2": [7, 8]}]
        assert [f["path"].split("/")[1] for f in straddling["files"]] == ["date=2024-05-03"]
        # idempotent
        again = retain(lake, days=1, now_ms=now)
        assert all(not r.hours for r in again)
        assert lake.recover(SCORED_TRANSACTIONS) == offsets


def test_a_crash_during_retention_is_finished_by_the_next_run(tmp_path, monkeypatch):
    now = T0_MS + 30 * HOUR_MS
    for i in range(4):  # after retained.json, after an hour, after a manifest, ...
        root = tmp_path / f"lake{i}"
        with LakeWriter(root) as lake:
            write_flushes(lake, SCORED_TRANSACTIONS, 3, hours=2)
            offsets, count = lake.recover(SCORED_TRANSACTIONS), lake.row_count()
            calls = iter(range(100))

            def crash(step, i=i):
                if next(calls) == i:
                    raise SystemExit(f"killed after {step}")
            monkeypatch.setattr(sinks.compaction, "_checkpoint", crash)
            with pytest.raises(SystemExit):
                retain(lake, days=1, now_ms=now, tables=["scored_transactions"])
            monkeypatch.undo()
            assert lake.recover(SCORED_TRANSACTIONS) == offsets
            assert LakeWriter(root).row_count() == count
            retain(lake, days=1, now_ms=now, tables=["scored_transactions"])
            assert lake.recover(SCORED_TRANSACTIONS) == offsets
            assert LakeWriter(root).row_count() == count
            assert lake_state(root) == {"rows": 0, "unique": 0}
            assert not list(lake.manifest_dir("scored_transactions").glob("part-*"))


def test_cli_compact_and_retain(tmp_path, capsys, monkeypatch):
    from pipelines.cli import main

    root = tmp_path / "lake"
    monkeypatch.setenv("RISKSTREAM_LAKE_COMPACT_DELETE_AFTER_S", "0")
    with LakeWriter(root) as lake:
        write_flushes(lake, SCORED_TRANSACTIONS, 5)
        offsets = lake.recover(SCORED_TRANSACTIONS)
        # a sink holds the lake: refused, saying what to do
        assert main(["lake", "compact", "--lake", str(root)]) == 2
        assert "RISKSTREAM_LAKE_COMPACT_EVERY_S" in capsys.readouterr().err
    assert main(["lake", "compact", "--lake", str(root), "--older-than", "1h",
                 "--table", "scored_transactions"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert (summary["files_before"], summary["files_after"], summary["rows"]) == (10, 2, 25)
    assert "date=2024-05-01/hour=13: 5 files -> 1, " in out.err  # progress
    assert lake_state(root) == {"rows": 25, "unique": 25}

    assert main(["lake", "retain", "--lake", str(root), "--days", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["hours_deleted"], summary["rows_deleted"]) == (2, 25)
    assert lake_state(root) == {"rows": 0, "unique": 0}
    with LakeWriter(root) as lake:
        assert lake.recover(SCORED_TRANSACTIONS) == offsets


@pytest.mark.integration
def test_the_sink_compacts_in_the_background_while_it_writes(tmp_path, monkeypatch):
    from test_sinks_sink import PARTITIONS, SinkThread

    from pipelines.broker import EmbeddedBroker, ensure_topics
    from pipelines.settings import Settings
    from pipelines.topics import OUTPUT_TOPICS
    from lake_fixtures import produce, wait_until

    root = tmp_path / "lake"
    # Replaced files are kept 5 s (production: 600 s): a query that listed a file just before
    # a compaction replaced it still finds it (with 0 s it raced: FILE_DOESNT_EXIST in CI).
    for name, value in {"PATH": root, "FLUSH_ROWS": 50, "FLUSH_INTERVAL_S": 0.2,
                        "COMPACT_EVERY_S": 0.5, "COMPACT_OLDER_THAN_S": 0,
                        "COMPACT_DELETE_AFTER_S": 5}.items():
        monkeypatch.setenv(f"RISKSTREAM_LAKE_{name}", str(value))
    records = [make_record(SCORED_TRANSACTIONS, n, time_ms=T0_MS + n * 1000) for n in range(600)]
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=PARTITIONS, topics=OUTPUT_TOPICS)
        with SinkThread(broker.bootstrap, Settings()):
            produce(broker.bootstrap, SCORED_TRANSACTIONS, records[:300], partitions=PARTITIONS)
            # rows are read while the compactions replace the files under the query
            wait_until(lambda: lake_state(root)["rows"] == 300 and len(
                visible_files(root, "scored_transactions")) == 1, timeout_s=30,
                what="300 rows in one compacted file")
            produce(broker.bootstrap, SCORED_TRANSACTIONS, records[300:], partitions=PARTITIONS)
            wait_until(lambda: lake_state(root) == {"rows": 600, "unique": 600} and len(
                visible_files(root, "scored_transactions")) == 1, timeout_s=30,
                what="600 rows in one compacted file")
    with LakeWriter(root) as lake:
        assert sum(lake.recover(SCORED_TRANSACTIONS).values()) == 600
        assert lake.row_count()["scored_transactions"] == 600
