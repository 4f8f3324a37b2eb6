"""Embedded parity: the schema on chDB, the lake loaded into it with the loader's own batching
(``sinks.loader.Loader``: batches cut by offsets, the batch log, deduplication tokens, commits),
then every table's row count and every rollup's values checked against a recount over the lake.

No broker: a stand-in consumer serves the lake's rows as Kafka messages (offsets in the order
the lake holds them), with what the loader uses of confluent-kafka's ``Consumer``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import TopicPartition
from lake_fixtures import make_record

from pipelines.settings import ClickHouseSettings
from pipelines.topics import (
    AGGREGATES, ALERT_DELIVERIES, ALERTS, DEAD_LETTER, METRIC_ANOMALIES, METRIC_SAMPLES,
    MODEL_QUALITY, OUTPUT_TOPICS, SCORED_APPLICATIONS, SCORED_TRANSACTIONS, TABLE_OF_TOPIC,
)
from sinks.clickhouse import query_rows
from sinks.lake import LakeWriter, visible_files
from sinks.loader import Loader
from sinks.warehouse import ROLLUP_TABLES, ChdbTarget, migrate

PARTITIONS = 3
BATCH_ROWS = 37  # many batches, most partitions end on a partial one
MINUTE_MS = 60_000
# Recent (the raw tables' 90-day TTL drops older rows at insert), over two days and many hours.
T0_MS = (int(time.time()) // 3600 - 40) * 3_600_000


def _lake_records() -> dict[str, list[dict]]:
    """Records of every output topic, with the variety the rollups group and filter on:
    several channels, countries, decisions, hosts, metrics, rules; nulls where allowed."""
    def at(i: int, step_min: int) -> int:
        return T0_MS + i * step_min * MINUTE_MS

    channels = ["ecom", "pos", None]
    countries = ["US", "FR", None, "BR"]
    decisions = ["approve"] * 5 + ["review", "decline"]
    txns = [make_record(SCORED_TRANSACTIONS, i, time_ms=at(i, 4), channel=channels[i % 3],
                        country=countries[i % 4], decision=decisions[i % 7],
                        amount=None if i % 11 == 0 else round(5 + i * 1.37, 2),
                        merchant_id=None if i % 17 == 0 else f"merch-{i % 13}",
                        score=round((i * 37 % 100) / 100, 2))
            for i in range(600)]
    apps = [make_record(SCORED_APPLICATIONS, i, time_ms=at(i, 19), decision=decisions[i % 7],
                        product=["card", "loan", None][i % 3], requested_amount=1000.0 + i,
                        score=round((i * 13 % 100) / 100, 2))
            for i in range(120)]
    samples = [make_record(METRIC_SAMPLES, i, time_ms=at(i, 6), host=f"web-{i % 4}",
                           metric=["cpu", "latency_p95_ms"][i % 2],
                           value=None if i % 23 == 0 else float(i * 7 % 101))
               for i in range(400)]
    anomalies = [make_record(METRIC_ANOMALIES, i, time_ms=at(i, 29), host=f"web-{i % 3}",
                             metric=["cpu", "latency_p95_ms"][i % 2],
                             reason=[None, "spike", "level_shift"][i % 3],
                             score=round(0.8 + (i % 19) / 100, 2))
                 for i in range(80)]
    aggregates = [make_record(AGGREGATES, i, time_ms=at(i, 40)) for i in range(60)]
    alerts = [make_record(ALERTS, i, time_ms=at(i, 47), rule=["high_fraud_score",
                          "decline_rate", "metric_anomaly"][i % 3],
                          severity=["high", "critical", "warning", "info"][i % 4],
                          stream=["transactions", "system-metrics"][i % 2])
              for i in range(50)]
    deliveries = [make_record(ALERT_DELIVERIES, i, time_ms=at(i, 47) + 500) for i in range(50)]
    quality = [make_record(MODEL_QUALITY, i, time_ms=at(i, 100)) for i in range(24)]
    dead = [make_record(DEAD_LETTER, i, time_ms=at(i, 80)) for i in range(30)]
    return {SCORED_TRANSACTIONS: txns, SCORED_APPLICATIONS: apps, METRIC_SAMPLES: samples,
            METRIC_ANOMALIES: anomalies, AGGREGATES: aggregates, ALERTS: alerts,
            ALERT_DELIVERIES: deliveries, MODEL_QUALITY: quality, DEAD_LETTER: dead}


def _write_lake(root: Path, data: dict[str, list[dict]]) -> None:
    """As the sink does: flushes of a few dozen records, each with its offset ranges."""
    with LakeWriter(root) as writer:
        for topic, records in data.items():
            for start in range(0, len(records), 45):
                chunk = records[start:start + 45]
                writer.write(topic, chunk, {0: (start, start + len(chunk) - 1)})


def _read_lake(root: Path) -> dict[str, list[bytes]]:
    """Every visible row of every lake table, as the JSON its output topic carried
    (times as int milliseconds)."""
    out = {}
    for topic in OUTPUT_TOPICS:
        table = TABLE_OF_TOPIC[topic]
        rows: list[bytes] = []
        for name in visible_files(root, table):
            arrow = pq.read_table(root / table / name)
            for i, field in enumerate(arrow.schema):
                if pa.types.is_timestamp(field.type):
                    arrow = arrow.set_column(i, field.name, arrow.column(i).cast(pa.int64()))
            rows.extend(orjson.dumps(r) for r in arrow.to_pylist())
        out[topic] = rows
    return out


class _Message:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._where, self._value = (topic, partition, offset), value

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class LakeConsumer:
    """Serves each topic's rows round-robin over ``PARTITIONS`` partitions, offsets from 0.

    ``commits`` is the group's committed offsets: share one dict between two consumers for a
    loader that resumes; a fresh one replays everything (every Kafka commit lost)."""

    def __init__(self, rows: dict[str, list[bytes]], commits: dict) -> None:
        self.logs: dict[tuple[str, int], list[bytes]] = {}
        for topic, values in rows.items():
            for p in range(PARTITIONS):
                self.logs[(topic, p)] = values[p::PARTITIONS]
        self.commits = commits
        self.position: dict[tuple[str, int], int] = {}

    def subscribe(self, topics, on_assign, on_revoke, on_lost) -> None:
        on_assign(self, [TopicPartition(t, p) for (t, p) in self.logs if t in topics])

    def committed(self, partitions, timeout=None) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition,
                               self.commits.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def assign(self, partitions) -> None:
        for tp in partitions:
            self.position[(tp.topic, tp.partition)] = max(tp.offset, 0)

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        out: list[_Message] = []
        for (topic, p), at in self.position.items():
            log = self.logs[(topic, p)]
            take = log[at:at + max(1, num_messages - len(out))]
            out.extend(_Message(topic, p, at + i, v) for i, v in enumerate(take))
            self.position[(topic, p)] = at + len(take)
            if len(out) >= num_messages:
                break
        return out

    def commit(self, offsets, asynchronous: bool = True) -> None:
        for tp in offsets:
            self.commits[(tp.topic, tp.partition)] = tp.offset

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.position]

    def pause(self, partitions) -> None:
        pass

    def resume(self, partitions) -> None:
        pass


def _load(target: ChdbTarget, rows: dict[str, list[bytes]], commits: dict) -> None:
    settings = ClickHouseSettings(load_batch_rows=BATCH_ROWS, load_interval_s=3600)
    loader = Loader(LakeConsumer(rows, commits), target, settings, group_id="parity",
                    consume_batch=100)
    loader.subscribe()
    while loader.poll(0):  # batches cut by size as messages arrive
        pass
    loader.flush_all()  # the partial last batch of every partition


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> Iterator[tuple[Path, Path, dict, dict]]:
    root = tmp_path_factory.mktemp("parity")
    lake, warehouse = root / "lake", root / "warehouse"
    data = _lake_records()
    _write_lake(lake, data)
    rows = _read_lake(lake)
    commits: dict = {}
    with ChdbTarget(warehouse) as target:
        migrate(target)
        _load(target, rows, commits)
    yield lake, warehouse, data, commits


def _warehouse(warehouse: Path, sql: str) -> list[dict]:
    with ChdbTarget(warehouse) as target:
        return target.query(sql)


def _counts(rows_of: Callable[[str], list[dict]]) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{t}' AS t, count() AS n FROM {t}"
                             for t in TABLE_OF_TOPIC.values())
    return {r["t"]: r["n"] for r in rows_of(sql)}


def test_every_lake_row_is_in_the_warehouse_once(loaded):
    lake, warehouse, data, commits = loaded
    want = {TABLE_OF_TOPIC[t]: len(v) for t, v in data.items()}
    assert _counts(lambda sql: query_rows(lake, sql)) == want
    assert _counts(lambda sql: _warehouse(warehouse, sql)) == want  # no FINAL: no duplicate
    # offsets committed after the inserts: every partition up to its end
    assert commits == {(t, p): len(range(p, len(v), PARTITIONS))
                       for t, v in data.items() for p in range(PARTITIONS)}
    batches = _warehouse(warehouse, "SELECT count() AS n FROM loader_batches")[0]["n"]
    assert batches == sum(-(-len(range(p, len(v), PARTITIONS)) // BATCH_ROWS)
                          for v in data.values() for p in range(PARTITIONS))


# Each rollup, read as an analyst reads it, against the same figures recounted over the lake.
ROLLUPS = {
    "transactions_hourly": (
        """SELECT toStartOfHour(event_time) AS k, ifNull(channel, '') AS ch,
                  ifNull(country, '') AS co, decision AS d, count() AS n,
                  round(sum(ifNull(amount, 0)), 6) AS amt, round(sum(score), 6) AS score_sum,
                  max(score) AS score_max, uniqExact(card_id) AS cards,
                  uniqExact(ifNull(merchant_id, '')) AS merchants
           FROM scored_transactions GROUP BY k, ch, co, d ORDER BY k, ch, co, d""",
        """SELECT hour AS k, channel AS ch, country AS co, decision AS d, sum(transactions) AS n,
                  round(sum(amount), 6) AS amt, round(sum(score_sum), 6) AS score_sum,
                  max(score_max) AS score_max, uniqMerge(cards) AS cards,
                  uniqMerge(merchants) AS merchants
           FROM transactions_hourly GROUP BY k, ch, co, d ORDER BY k, ch, co, d"""),
    "transactions_daily": (
        """SELECT toDate(event_time) AS k, ifNull(channel, '') AS ch, ifNull(country, '') AS co,
                  decision AS d, count() AS n, round(sum(ifNull(amount, 0)), 6) AS amt,
                  round(sum(score), 6) AS score_sum,
                  round(quantile(0.95)(ifNull(amount, 0)), 6) AS p95
           FROM scored_transactions GROUP BY k, ch, co, d ORDER BY k, ch, co, d""",
        """SELECT day AS k, channel AS ch, country AS co, decision AS d, sum(transactions) AS n,
                  round(sum(amount), 6) AS amt, round(sum(score_sum), 6) AS score_sum,
                  round(quantileMerge(0.95)(amount_p95), 6) AS p95
           FROM transactions_daily GROUP BY k, ch, co, d ORDER BY k, ch, co, d"""),
    "applications_daily": (
        """SELECT toDate(event_time) AS k, ifNull(product, '') AS p, decision AS d,
                  count() AS n, round(sum(ifNull(requested_amount, 0)), 6) AS requested,
                  round(sum(score), 6) AS score_sum
           FROM scored_applications GROUP BY k, p, d ORDER BY k, p, d""",
        """SELECT day AS k, product AS p, decision AS d, sum(applications) AS n,
                  round(sum(requested_amount), 6) AS requested,
                  round(sum(score_sum), 6) AS score_sum
           FROM applications_daily GROUP BY k, p, d ORDER BY k, p, d"""),
    "metric_samples_hourly": (
        """SELECT toStartOfHour(event_time) AS k, host AS h, metric AS m, count() AS n,
                  round(sum(value), 6) AS total, max(value) AS top,
                  round(quantile(0.95)(value), 6) AS p95
           FROM metric_samples WHERE value IS NOT NULL GROUP BY k, h, m ORDER BY k, h, m""",
        """SELECT hour AS k, host AS h, metric AS m, sum(samples) AS n,
                  round(sum(value_sum), 6) AS total, max(value_max) AS top,
                  round(quantileMerge(0.95)(value_p95), 6) AS p95
           FROM metric_samples_hourly GROUP BY k, h, m ORDER BY k, h, m"""),
    "metric_anomalies_hourly": (
        """SELECT toStartOfHour(event_time) AS k, host AS h, metric AS m,
                  ifNull(reason, '') AS r, count() AS n, max(score) AS top
           FROM metric_anomalies GROUP BY k, h, m, r ORDER BY k, h, m, r""",
        """SELECT hour AS k, host AS h, metric AS m, reason AS r, sum(anomalies) AS n,
                  max(score_max) AS top
           FROM metric_anomalies_hourly GROUP BY k, h, m, r ORDER BY k, h, m, r"""),
    "alerts_daily": (
        """SELECT toDate(created_at) AS k, rule, severity, stream, count() AS n
           FROM alerts GROUP BY k, rule, severity, stream ORDER BY k, rule, severity, stream""",
        """SELECT day AS k, rule, severity, stream, sum(alerts) AS n
           FROM alerts_daily GROUP BY k, rule, severity, stream
           ORDER BY k, rule, severity, stream"""),
}


def test_every_rollup_is_checked():
    assert set(ROLLUPS) == set(ROLLUP_TABLES)


def _plain(rows: list[dict]) -> list[tuple]:
    """Values only (a DateTime('UTC') and a DateTime64 of the same instant compare equal)."""
    return [tuple(r.values()) for r in rows]


@pytest.mark.parametrize("rollup", sorted(ROLLUPS))
def test_a_rollup_equals_a_recount_over_the_lake(loaded, rollup):
    lake, warehouse, _, _ = loaded
    on_lake, in_rollup = ROLLUPS[rollup]
    recount = query_rows(lake, on_lake)
    assert len(recount) > 3, "the test data should give the rollup several groups"
    assert _plain(_warehouse(warehouse, in_rollup)) == _plain(recount)


def test_loading_the_lake_again_after_lost_commits_changes_nothing(loaded):
    """Every Kafka commit lost: a new loader re-reads everything from offset 0, cuts the same
    batches from the batch log, and ClickHouse drops each insert by its token."""
    lake, warehouse, data, _ = loaded
    before = {name: _plain(_warehouse(warehouse, sql)) for name, (_, sql) in ROLLUPS.items()}
    with ChdbTarget(warehouse) as target:
        _load(target, _read_lake(lake), {})
    want = {TABLE_OF_TOPIC[t]: len(v) for t, v in data.items()}
    assert _counts(lambda sql: _warehouse(warehouse, sql)) == want
    after = {name: _plain(_warehouse(warehouse, sql)) for name, (_, sql) in ROLLUPS.items()}
    assert after == before
