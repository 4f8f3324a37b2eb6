"""The loader on a real (embedded) broker into chDB: every record exactly once across crashes,
killed processes and ClickHouse outages, and the rollups equal a recount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from lake_fixtures import ID_COLUMN, make_record, produce, wait_until
from processes import ROOT, Process

from pipelines.kafka import consumer_config
from pipelines.settings import Settings
from pipelines.topics import (
    AGGREGATES, ALERTS, DEAD_LETTER, METRIC_ANOMALIES, METRIC_SAMPLES, OUTPUT_TOPICS,
    SCORED_APPLICATIONS, SCORED_TRANSACTIONS, TABLE_OF_TOPIC,
)
from sinks.loader import Loader, run_loader
from sinks.warehouse import ChdbTarget, WarehouseError, migrate

pytestmark = pytest.mark.integration

PARTITIONS = 4
GROUP = "riskstream-loader-test"
# Recent times: the tables' TTLs (90 days) drop older rows at insert.
T_MS = (int(time.time()) // 3600 - 3) * 3_600_000



@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("RISKSTREAM_CLICKHOUSE_PATH", str(tmp_path / "warehouse"))
    monkeypatch.setenv("RISKSTREAM_CLICKHOUSE_LOAD_BATCH_ROWS", "300")
    monkeypatch.setenv("RISKSTREAM_CLICKHOUSE_LOAD_INTERVAL_S", "0.3")
    monkeypatch.setenv("RISKSTREAM_CLICKHOUSE_RETRY_INITIAL_S", "0.05")
    monkeypatch.setenv("RISKSTREAM_CLICKHOUSE_RETRY_MAX_S", "0.2")
    monkeypatch.setenv("RISKSTREAM_KAFKA_CONSUME_BATCH", "500")
    monkeypatch.setenv("RISKSTREAM_KAFKA_SESSION_TIMEOUT_S", "3")
    return Settings()


def records(counts: dict[str, int], n0: int = 0) -> dict[str, list[dict]]:
    def one(topic: str, n: int) -> dict:
        extra = ({"decision": "decline" if n % 7 == 0 else "approve"}
                 if topic in (SCORED_TRANSACTIONS, SCORED_APPLICATIONS) else {})
        return make_record(topic, n, time_ms=T_MS + n * 1000, **extra)
    return {topic: [one(topic, n0 + i) for i in range(count)] for topic, count in counts.items()}


def produce_all(bootstrap: str, batches: dict[str, list]) -> None:
    for topic, values in batches.items():
        produce(bootstrap, topic, values, partitions=PARTITIONS)


def committed(settings: Settings, bootstrap: str) -> int:
    """Offsets committed by the loader's group, summed over every output partition."""
    consumer = Consumer(consumer_config(settings.kafka, bootstrap, GROUP))
    try:
        parts = consumer.committed([TopicPartition(t, p) for t in OUTPUT_TOPICS
                                    for p in range(PARTITIONS)], 30)
        return sum(max(tp.offset, 0) for tp in parts)
    finally:
        consumer.close()


def counts(settings: Settings) -> dict[str, tuple[int, int]]:
    """(rows, distinct ids) per table; rows without FINAL: a duplicate would show."""
    with ChdbTarget(settings.clickhouse.path) as target:
        sql = " UNION ALL ".join(
            f"SELECT '{TABLE_OF_TOPIC[t]}' AS t, count() AS rows, "
            f"uniqExact({ID_COLUMN.get(t, 'delivery_id')}) AS ids FROM {TABLE_OF_TOPIC[t]}"
            for t in ID_COLUMN)
        return {r["t"]: (r["rows"], r["ids"]) for r in target.query(sql)}


def expected(*batches: dict[str, list]) -> dict[str, tuple[int, int]]:
    n = {TABLE_OF_TOPIC[t]: 0 for t in ID_COLUMN}
    for batch in batches:
        for topic, values in batch.items():
            n[TABLE_OF_TOPIC[topic]] += sum(isinstance(v, dict) for v in values)
    return {table: (k, k) for table, k in n.items()}


class LoaderThread:
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(bootstrap, settings), daemon=True)
        self.thread.start()

    def _run(self, bootstrap: str, settings: Settings) -> None:
        try:
            run_loader(bootstrap, settings, stop=self.stop_event, group_id=GROUP)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> LoaderThread:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.stop_event.set()
            self.thread.join(60)


COUNTS = {SCORED_TRANSACTIONS: 1500, SCORED_APPLICATIONS: 200, METRIC_SAMPLES: 400,
          METRIC_ANOMALIES: 60, AGGREGATES: 100, ALERTS: 50, DEAD_LETTER: 40}


def test_every_record_lands_once_and_the_rollups_equal_a_recount(bootstrap, settings):
    first = records(COUNTS)
    first[SCORED_TRANSACTIONS][100:100] = [b"{not json", b"[1]"]  # skipped, never fatal
    produce_all(bootstrap, first)
    total = sum(len(v) for v in first.values())
    with LoaderThread(bootstrap, settings):
        wait_until(lambda: committed(settings, bootstrap) == total, timeout_s=60,
                   what="every offset committed")
    assert counts(settings) == expected(first)

    with ChdbTarget(settings.clickhouse.path) as target:
        recount = target.query(
            "SELECT toStartOfHour(event_time) AS hour, decision, count() AS n, "
            "round(sum(amount), 6) AS amount FROM scored_transactions FINAL "
            "GROUP BY hour, decision ORDER BY hour, decision")
        rollup = target.query(
            "SELECT hour, decision, sum(transactions) AS n, round(sum(amount), 6) AS amount "
            "FROM transactions_hourly GROUP BY hour, decision ORDER BY hour, decision")
        assert [(r["n"], r["amount"]) for r in rollup] == [(r["n"], r["amount"])
                                                          for r in recount]
        p95 = target.query(
            "SELECT host, round(quantileMerge(0.95)(value_p95), 6) AS p95, sum(samples) AS n "
            "FROM metric_samples_hourly GROUP BY host ORDER BY host")
        exact = target.query(
            "SELECT host, round(quantile(0.95)(value), 6) AS p95, count() AS n "
            "FROM metric_samples GROUP BY host ORDER BY host")
        assert p95 == exact
        anomalies = target.query("SELECT sum(anomalies) AS n FROM metric_anomalies_hourly")
        assert anomalies == [{"n": COUNTS[METRIC_ANOMALIES]}]


class SimulatedCrash(Exception):
    pass


def _loader(settings: Settings, bootstrap: str, target: ChdbTarget) -> Loader:
    consumer = Consumer(consumer_config(settings.kafka, bootstrap, GROUP))
    loader = Loader(consumer, target, settings.clickhouse, group_id=GROUP, consume_batch=500)
    loader.subscribe()
    return loader


def test_a_partial_batch_replayed_after_a_crash_is_cut_the_same(bootstrap, settings,
                                                                monkeypatch):
    # 37 records: a partial batch (300 rows per batch), cut by time, inserted, and then the
    # process dies before its Kafka commit.
    few = records({ALERTS: 37})
    produce(bootstrap, ALERTS, few[ALERTS], partitions=1)
    with ChdbTarget(settings.clickhouse.path) as target:
        migrate(target)
        loader = _loader(settings, bootstrap, target)
        with monkeypatch.context() as patch:
            patch.setattr(Loader, "_commit", lambda self, batches: (_ for _ in ()).throw(
                SimulatedCrash()))
            with pytest.raises(SimulatedCrash):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    loader.poll(0.2)
        loader.consumer.close()
        assert target.query("SELECT count() AS n FROM alerts") == [{"n": 37}]

        # Meanwhile many more records arrive: a size rule alone would now cut [0, 299] and
        # insert the 37 again under another token. The batch log makes it cut [0, 36] again.
        more = records({ALERTS: 700}, n0=1000)
        produce(bootstrap, ALERTS, more[ALERTS], partitions=1)
        loader = _loader(settings, bootstrap, target)
        deadline = time.monotonic() + 30
        while committed(settings, bootstrap) < 737 and time.monotonic() < deadline:
            loader.poll(0.2)
        loader.consumer.close()
        rows = target.query("SELECT count() AS n, uniqExact(alert_id) AS ids FROM alerts")
        assert rows == [{"n": 737, "ids": 737}]
        assert target.query("SELECT sum(alerts) AS n FROM alerts_daily") == [{"n": 737}]


class FlakyTarget:
    """A ChdbTarget whose inserts fail: before writing, or after (the answer is lost)."""

    def __init__(self, target: ChdbTarget, fail_before: int, fail_after: int) -> None:
        self.target = target
        self.fail_before, self.fail_after = fail_before, fail_after
        self.failures = 0

    def __getattr__(self, name):
        return getattr(self.target, name)

    def insert(self, table, data, settings):
        if table != "loader_batches" and self.fail_before:
            self.fail_before -= 1
            self.failures += 1
            raise WarehouseError("Connection refused (simulated outage)")
        self.target.insert(table, data, settings)
        if table != "loader_batches" and self.fail_after:
            self.fail_after -= 1
            self.failures += 1
            raise WarehouseError("Timeout reading the answer (simulated)")


def test_an_outage_delays_rows_and_never_loses_or_duplicates_them(bootstrap, settings):
    batch = records({SCORED_TRANSACTIONS: 900, METRIC_SAMPLES: 200})
    produce_all(bootstrap, batch)
    with ChdbTarget(settings.clickhouse.path) as chdb_target:
        migrate(chdb_target)
        target = FlakyTarget(chdb_target, fail_before=4, fail_after=4)
        loader = _loader(settings, bootstrap, target)
        deadline = time.monotonic() + 40
        while committed(settings, bootstrap) < 1100 and time.monotonic() < deadline:
            loader.poll(0.2)
        loader.consumer.close()
        assert target.failures == 8
        rows = chdb_target.query(
            "SELECT (SELECT count() FROM scored_transactions) AS t, "
            "(SELECT uniqExact(event_id) FROM scored_transactions) AS ids, "
            "(SELECT count() FROM metric_samples) AS m, "
            "(SELECT sum(transactions) FROM transactions_hourly) AS rollup")
        assert rows == [{"t": 900, "ids": 900, "m": 200, "rollup": 900}]


class LoaderProcess(Process):
    """``python ARGS`` (not ``-m pipelines.cli``), with Process's log and stop."""

    def __init__(self, args: list[str], env: dict[str, str], log_path) -> None:
        self.args, self.log_path = args, log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True)


def test_a_killed_loader_process_loads_every_event_exactly_once(bootstrap, settings, tmp_path):
    batch = records({SCORED_TRANSACTIONS: 6000, METRIC_SAMPLES: 1500, ALERTS: 300})
    produce_all(bootstrap, batch)
    total = 7800
    env = _loader_env(bootstrap, settings, batch_rows=200, consume_batch=200)
    loader = LoaderProcess(LOAD_ARGS, env, tmp_path / "load-1.log")
    try:
        # kill -9 in the middle of the stream: some batches committed, most not yet
        wait_until(lambda: committed(settings, bootstrap) >= 800, timeout_s=60,
                   what="the first batches", every_s=0.05)
    finally:
        loader.kill()
    assert committed(settings, bootstrap) < total, "killed too late to test anything"

    _restart_and_check(bootstrap, settings, env, tmp_path, total,
                       {"scored_transactions": 6000, "metric_samples": 1500, "alerts": 300})


# Process 1 dies (as under kill -9: no clean-up, no commit) right after the 5th insert into an
# output table: a batch is logged and in the table, its offsets not committed.
_DIE_AFTER_5_INSERTS = """
import os, sys
from sinks import warehouse
insert, done = warehouse.ChdbTarget.insert, []
def dying_insert(self, table, data, settings):
    insert(self, table, data, settings)
    if table != "loader_batches":
        done.append(table)
        if len(done) == 5:
            os._exit(137)
warehouse.ChdbTarget.insert = dying_insert
from pipelines.warehouse_cli import main_load
sys.exit(main_load(["--group", GROUP]))
"""


def test_a_loader_killed_mid_batch_restarts_and_loads_each_event_exactly_once(
        bootstrap, settings, tmp_path):
    batch = records({SCORED_TRANSACTIONS: 2000, METRIC_SAMPLES: 600, ALERTS: 150})
    produce_all(bootstrap, batch)
    total = 2750
    env = _loader_env(bootstrap, settings, batch_rows=150, consume_batch=400)
    dying = LoaderProcess(["-c", _DIE_AFTER_5_INSERTS.replace("GROUP", repr(GROUP))], env,
                          tmp_path / "load-1.log")
    assert dying.proc.wait(120) == 137, dying.log()[-2000:]
    landed = sum(rows for rows, _ in counts(settings).values())
    done = committed(settings, bootstrap)
    assert landed > done, "the kill should leave inserted rows whose offsets are not committed"
    assert done < total

    _restart_and_check(bootstrap, settings, env, tmp_path, total,
                       {"scored_transactions": 2000, "metric_samples": 600, "alerts": 150})


def _loader_env(bootstrap: str, settings, *, batch_rows: int, consume_batch: int) -> dict:
    """The environment of a `riskstream load` process of these tests: small batches."""
    return {"RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "RISKSTREAM_CLICKHOUSE_PATH": str(settings.clickhouse.path),
            "RISKSTREAM_CLICKHOUSE_LOAD_BATCH_ROWS": str(batch_rows),
            "RISKSTREAM_CLICKHOUSE_LOAD_INTERVAL_S": "0.2",
            "RISKSTREAM_KAFKA_CONSUME_BATCH": str(consume_batch),
            "RISKSTREAM_KAFKA_SESSION_TIMEOUT_S": "3",
            "RISKSTREAM_LOG_LEVEL": "INFO"}


# `riskstream load`'s own function (not the whole CLI parser: other subcommands' modules have
# no business breaking these tests)
LOAD_ARGS = ["-c", "import sys; from pipelines.warehouse_cli import main_load; "
             f"sys.exit(main_load(['--group', {GROUP!r}]))"]


def _restart_and_check(bootstrap, settings, env, tmp_path, total: int, want: dict[str, int]):
    """Start `riskstream load` again, wait for every offset, and find each event once: in its
    table (rows, distinct ids) and in the rollups."""
    loader = LoaderProcess(LOAD_ARGS, env, tmp_path / "load-2.log")
    try:
        wait_until(lambda: committed(settings, bootstrap) == total, timeout_s=60,
                   what="every offset committed after the restart")
    finally:
        assert loader.stop(signal.SIGTERM) == 0, loader.log()[-2000:]
    got = counts(settings)
    for table, n in want.items():
        assert got[table] == (n, n), table
    with ChdbTarget(settings.clickhouse.path) as target:
        assert target.query("SELECT sum(transactions) AS n FROM transactions_hourly") == [
            {"n": want["scored_transactions"]}]
        assert target.query("SELECT sum(alerts) AS n FROM alerts_daily") == [
            {"n": want["alerts"]}]
