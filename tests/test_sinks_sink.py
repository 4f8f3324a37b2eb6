"""The sink on a real (embedded) broker: records in, lake rows out, exactly once across
restarts and crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from lake_fixtures import HOUR_MS, ID_COLUMN, T0_MS, make_record, produce, wait_until
from prometheus_client import REGISTRY

from pipelines.broker import EmbeddedBroker, ensure_topics
from pipelines.errors import LakeError
from pipelines.kafka import consumer_config
from pipelines.settings import Settings
from pipelines.topics import (
    AGGREGATES, ALERTS, DEAD_LETTER, METRIC_ANOMALIES, METRIC_SAMPLES, OUTPUT_TOPICS,
    SCORED_APPLICATIONS, SCORED_TRANSACTIONS, TABLE_OF_TOPIC,
)
from sinks.clickhouse import query_rows
from sinks.lake import LakeWriter
from sinks.sink import LakeSink, run_sink

pytestmark = pytest.mark.integration

PARTITIONS = 4
GROUP = "riskstream-sink-test"
ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    # Small flushes so that a few thousand records make many of them.
    monkeypatch.setenv("RISKSTREAM_LAKE_PATH", str(tmp_path / "lake"))
    monkeypatch.setenv("RISKSTREAM_LAKE_FLUSH_ROWS", "400")
    monkeypatch.setenv("RISKSTREAM_LAKE_FLUSH_INTERVAL_S", "0.3")
    monkeypatch.setenv("RISKSTREAM_KAFKA_CONSUME_BATCH", "500")
    return Settings()


class SinkThread:
    """run_sink in a thread; ``stop()`` stops it cleanly and re-raises what it raised.

    A context manager: leaving the block stops the sink, so a failing test leaves no consumer
    behind.
    """

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(bootstrap, settings),
                                       name="sink", daemon=True)
        self.thread.start()

    def _run(self, bootstrap: str, settings: Settings) -> None:
        try:
            run_sink(bootstrap, settings, stop=self.stop_event, group_id=GROUP)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the sink did not stop within 60 s"
        error, self.error = self.error, None  # raised once
        if error is not None:
            raise error

    def __enter__(self) -> SinkThread:
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # the test failed already: stop, and let its error be the one reported
            self.stop_event.set()
            self.thread.join(60)


def batch(n0: int, counts: dict[str, int], time_ms: int = T0_MS) -> dict[str, list[dict]]:
    """Records numbered from ``n0``, one second apart from ``time_ms``."""
    return {topic: [make_record(topic, n0 + i, time_ms=time_ms + i * 1000) for i in range(count)]
            for topic, count in counts.items()}


def produce_all(bootstrap: str, records: dict[str, list]) -> None:
    for topic, values in records.items():
        produce(bootstrap, topic, values, partitions=PARTITIONS)


def lake_counts(lake: Path) -> dict[str, tuple[int, int]]:
    """(rows, distinct ids) per table, through ClickHouse."""
    sql = " UNION ALL ".join(
        f"SELECT '{TABLE_OF_TOPIC[topic]}' AS t, count() AS rows, "
        f"count(DISTINCT {ID_COLUMN[topic]}) AS ids FROM {TABLE_OF_TOPIC[topic]}"
        for topic in OUTPUT_TOPICS)
    return {r["t"]: (r["rows"], r["ids"]) for r in query_rows(lake, sql)}


def wait_for_counts(lake: Path, want: dict[str, tuple[int, int]], timeout_s: float = 60) -> None:
    try:
        wait_until(lambda: lake_counts(lake) == want, timeout_s=timeout_s, what="the lake counts")
    except AssertionError:
        assert lake_counts(lake) == want  # shows the difference
        raise


def expected(*batches: dict[str, list]) -> dict[str, tuple[int, int]]:
    counts = {TABLE_OF_TOPIC[topic]: 0 for topic in OUTPUT_TOPICS}
    for records in batches:
        for topic, values in records.items():
            counts[TABLE_OF_TOPIC[topic]] += sum(isinstance(v, dict) for v in values)
    return {table: (n, n) for table, n in counts.items()}


def committed_offsets(settings: Settings, bootstrap: str, topic: str) -> list[int]:
    consumer = Consumer(consumer_config(settings.kafka, bootstrap, GROUP))
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 30)
        return [tp.offset for tp in parts]
    finally:
        consumer.close()


def bad_records(topic: str) -> float:
    return REGISTRY.get_sample_value("riskstream_sink_bad_records_total", {"topic": topic}) or 0


COUNTS = {SCORED_TRANSACTIONS: 2000, SCORED_APPLICATIONS: 300, METRIC_SAMPLES: 600,
          METRIC_ANOMALIES: 80, AGGREGATES: 200, ALERTS: 120, DEAD_LETTER: 150}


def test_every_record_lands_exactly_once_across_a_restart(bootstrap, settings):
    lake = settings.lake.path
    first = batch(0, COUNTS)
    # two bad records among the good ones: logged, counted, skipped, never fatal
    first[SCORED_TRANSACTIONS][500:500] = [b"{not json", b"[1, 2]"]
    bad_before = bad_records(SCORED_TRANSACTIONS)
    produce_all(bootstrap, first)

    with SinkThread(bootstrap, settings):
        # queried while the sink writes: only complete files are read
        wait_for_counts(lake, expected(first))
    assert bad_records(SCORED_TRANSACTIONS) - bad_before == 2
    # a clean stop committed everything, the bad records' offsets included
    ends = [len(first[SCORED_TRANSACTIONS][p::PARTITIONS]) for p in range(PARTITIONS)]
    assert committed_offsets(settings, bootstrap, SCORED_TRANSACTIONS) == ends

    # more records, an hour later, while no sink runs
    second = batch(10_000, {SCORED_TRANSACTIONS: 700, ALERTS: 60, AGGREGATES: 40},
                   time_ms=T0_MS + HOUR_MS)
    produce_all(bootstrap, second)
    want = expected(first, second)
    with SinkThread(bootstrap, settings):
        wait_for_counts(lake, want)

    assert lake_counts(lake) == want  # every record once: rows == distinct ids == produced
    assert LakeWriter(lake).row_count() == {table: rows for table, (rows, _) in want.items()}
    hours = query_rows(lake, "SELECT DISTINCT toHour(event_time) AS h FROM scored_transactions "
                             "ORDER BY h")
    assert hours == [{"h": 13}, {"h": 14}]
    assert not list(Path(lake).rglob("*.tmp"))


class SimulatedCrash(Exception):
    pass


def test_a_crash_between_lake_commit_and_kafka_commit_duplicates_nothing(
        bootstrap, settings, monkeypatch):
    lake = settings.lake.path
    records = batch(0, {SCORED_TRANSACTIONS: 1500, ALERTS: 100, METRIC_SAMPLES: 300})
    produce_all(bootstrap, records)

    # The process dies right after its first flush's manifest, before the Kafka commit.
    def crash(self, topic, ranges):
        raise SimulatedCrash(topic)
    with monkeypatch.context() as patch:
        patch.setattr(LakeSink, "_commit", crash)
        with SinkThread(bootstrap, settings) as sink:
            wait_until(lambda: not sink.thread.is_alive(), timeout_s=60, what="the crash")
            with pytest.raises(SimulatedCrash) as crashed_in:
                sink.stop()
    crashed_topic = str(crashed_in.value)
    crashed = LakeWriter(lake).row_count()[TABLE_OF_TOPIC[crashed_topic]]
    assert crashed > 0  # the flush is in the lake...
    assert set(committed_offsets(settings, bootstrap, crashed_topic)) == {-1001}  # ...not in Kafka

    # The restarted sink cuts other batches (timing does that in production), so only the seek
    # to the lake's offsets, not the flush names, keeps the crashed flush from a second copy.
    monkeypatch.setenv("RISKSTREAM_LAKE_FLUSH_ROWS", "250")
    monkeypatch.setenv("RISKSTREAM_KAFKA_CONSUME_BATCH", "300")
    settings = Settings()
    with SinkThread(bootstrap, settings):  # resumes after the manifest, not at Kafka's offsets
        wait_for_counts(lake, expected(records))
    assert lake_counts(lake) == expected(records)


def test_a_killed_sink_process_duplicates_nothing(bootstrap, settings):
    lake = settings.lake.path
    records = batch(0, {SCORED_TRANSACTIONS: 6000, METRIC_SAMPLES: 1000, DEAD_LETTER: 200})
    produce_all(bootstrap, records)
    # A 3 s session: the restarted sink's join waits for the killed member to expire.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RISKSTREAM_KAFKA_SESSION_TIMEOUT_S": "3",
           "RISKSTREAM_LAKE_FLUSH_ROWS": "100", "RISKSTREAM_KAFKA_CONSUME_BATCH": "100"}
    code = ("import sys, threading; from pipelines.settings import Settings; "
            "from sinks.sink import run_sink; "
            f"run_sink(sys.argv[1], Settings(), stop=threading.Event(), group_id={GROUP!r})")
    process = subprocess.Popen([sys.executable, "-c", code, bootstrap], env=env, cwd=ROOT,
                               stderr=subprocess.DEVNULL)
    try:
        # kill -9 in the middle of the stream: some flushes committed, most rows not yet
        wait_until(lambda: LakeWriter(lake).row_count()["scored_transactions"] >= 500,
                   timeout_s=60, what="the first flushes", every_s=0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert LakeWriter(lake).row_count()["scored_transactions"] < 6000

    with SinkThread(bootstrap, settings):
        wait_for_counts(lake, expected(records), timeout_s=90)
    assert lake_counts(lake) == expected(records)


def test_a_schema_violation_stops_the_sink_and_commits_nothing(bootstrap, settings):
    records = {ALERTS: [make_record(ALERTS, 0), make_record(ALERTS, 1, severity=3)]}
    produce(bootstrap, ALERTS, records[ALERTS], partitions=1)
    with SinkThread(bootstrap, settings) as sink:
        wait_until(lambda: not sink.thread.is_alive(), timeout_s=60, what="the sink to stop")
        with pytest.raises(LakeError, match=r"alerts.severity: expected string, got 3"):
            sink.stop()
    assert committed_offsets(settings, bootstrap, ALERTS) == [-1001] * PARTITIONS
    assert LakeWriter(settings.lake.path).row_count()["alerts"] == 0


def test_a_restarted_embedded_broker_keeps_the_lake_and_loses_nothing(settings):
    # Tansu keeps topics in memory: after a restart the topics are new and start at offset 0,
    # while the lake on disk still holds the flushes of the old ones.
    lake = settings.lake.path
    before = batch(0, {SCORED_TRANSACTIONS: 800, ALERTS: 40})
    after = batch(50_000, {SCORED_TRANSACTIONS: 300, ALERTS: 40})  # fewer: offsets overlap
    for records in (before, after):
        with EmbeddedBroker() as broker:
            ensure_topics(broker.bootstrap, partitions=PARTITIONS, topics=OUTPUT_TOPICS)
            produce_all(broker.bootstrap, records)
            with SinkThread(broker.bootstrap, settings):
                wait_for_counts(lake, expected(before) if records is before
                                else expected(before, after))
    assert lake_counts(lake) == expected(before, after)
