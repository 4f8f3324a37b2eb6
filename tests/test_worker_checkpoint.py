"""The worker's checkpoint of window and alert state (pipelines/app.py): a partition's state
bigger than a Kafka message goes to its table in parts, and comes back whole."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from factories import make_transaction
from processes import Process, wait_until

from pipelines.app import _stored_alerts, _table_get, _table_put
from pipelines.broker import EmbeddedBroker, ensure_topics
from pipelines.topics import AGGREGATES, TRANSACTIONS

CHUNK = 1024


class Table:
    """What ``_table_put`` / ``_table_get`` use of a Faust table: its data and its changelog."""

    name = "window-state"

    def __init__(self, data: dict | None = None) -> None:
        self.data = dict(data or {})
        self.changelog: list[tuple[int, str, bytes | None]] = []

    def send_changelog(self, partition: int, key: str, value: bytes | None) -> None:
        self.changelog.append((partition, key, value))


def restored(changelog: list) -> Table:
    """A new worker's table: the changelog applied in order, a None value deletes its key (as
    Faust's store recovers it)."""
    data: dict = {}
    for _, key, value in changelog:
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return Table(data)


def state(n: int) -> dict:
    return {"offset": n, "windows": {"windows": [[f"merchant-{i}", 60_000 * i, 1, 2.5]
                                                 for i in range(n)]}}


def test_a_small_state_is_one_message_and_reads_back():
    table = Table()
    _table_put(table, 3, "transactions:3", state(5), CHUNK)
    assert [(p, k) for p, k, _ in table.changelog] == [(3, "transactions:3")]
    assert _table_get(restored(table.changelog), "transactions:3") == state(5)
    assert _table_get(table, "transactions:9") is None


def test_a_state_over_the_limit_goes_in_parts_every_message_under_it():
    table = Table()
    big = state(400)
    assert len(orjson.dumps(big)) > 10 * CHUNK
    _table_put(table, 1, "transactions:1", big, CHUNK)
    sizes = [len(v) for _, _, v in table.changelog]
    assert len(sizes) > 10 and max(sizes) <= CHUNK
    assert {p for p, _, _ in table.changelog} == {1}  # the input partition's changelog partition
    assert table.changelog[-1][1] == "transactions:1"  # the head last, after its parts
    assert _table_get(table, "transactions:1") == big
    assert _table_get(restored(table.changelog), "transactions:1") == big


def test_a_crash_in_the_middle_of_a_checkpoint_leaves_the_previous_one_whole():
    table = Table()
    _table_put(table, 0, "k", state(300), CHUNK)
    first = list(table.changelog)
    _table_put(table, 0, "k", state(310), CHUNK)
    second = table.changelog[len(first):]
    head = [k for _, k, _ in second].index("k")  # its parts, the head, then the old parts go
    # the worker dies after writing some parts of the second checkpoint, before its head
    for cut in (1, head // 2, head):
        assert _table_get(restored(first + second[:cut]), "k") == state(300)
    for cut in (head + 1, len(second)):
        assert _table_get(restored(first + second[:cut]), "k") == state(310)
    # the next checkpoint writes the other slot again: the second's slot stays whole meanwhile
    _table_put(table, 0, "k", state(320), CHUNK)
    third = table.changelog[len(first) + len(second):]
    assert _table_get(restored(first + second + third[:3]), "k") == state(310)


def test_parts_no_longer_named_are_deleted():
    table = Table()
    _table_put(table, 0, "k", state(300), CHUNK)
    _table_put(table, 0, "k", state(2), CHUNK)  # small again: one message, parts tombstoned
    after = restored(table.changelog)
    assert set(after.data) == set(table.data) == {"k"}
    assert _table_get(after, "k") == state(2)


def test_alert_state_is_read_from_the_whole_checkpoint_or_from_its_table_before():
    """Windows and alerts are one value now, so a crash cannot restore them from two different
    checkpoints; a checkpoint written before (alerts in their own table) still restores."""
    alerts_now, alerts_before = {"version": 2, "windows": {}}, {"version": 1, "windows": []}
    windows = {"offset": 7, "windows": {"max_event_ms": 0, "late": 0, "by_start": {}}}
    whole = Table({"transactions:0": orjson.dumps({**windows, "alerts": alerts_now})})
    stale = Table({"transactions:0": orjson.dumps(alerts_before)})
    assert _stored_alerts(whole, stale, "transactions:0") == alerts_now
    before = Table({"transactions:0": orjson.dumps(windows)})
    assert _stored_alerts(before, stale, "transactions:0") == alerts_before
    assert _stored_alerts(Table(), Table(), "transactions:0") is None


def test_a_checkpoint_written_by_fausts_json_codec_reads_the_same():
    # the worker's tables were JSON-serialised by Faust before they were raw bytes
    from faust.serializers import codecs

    table = Table({"k": codecs.dumps("json", state(3))})
    assert _table_get(table, "k") == state(3)


class MinuteAggregates:
    """The ``aggregates`` topic from its start: the counts of the transactions windows of the
    minute ``start``, summed per merchant over partitions (``read`` reads what came since)."""

    def __init__(self, bootstrap: str, start: int) -> None:
        self.start, self.counts = start, {}
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-aggregates",
                                   "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
        self._consumer.subscribe([AGGREGATES])

    def read(self) -> dict[str, int]:
        for m in self._consumer.consume(500, timeout=0.5):
            if m.error() is None:
                row = orjson.loads(m.value())
                if row["stream"] == TRANSACTIONS and row["window_start"] == self.start:
                    key = row["group_key"]
                    self.counts[key] = self.counts.get(key, 0) + row["count"]
        return self.counts

    def close(self) -> None:
        self._consumer.close()


class TransactionStream:
    """~400 transactions a second inside the minute ``start``, to three merchants, from a
    thread, until ``stop()``; ``sent`` counts them. ``close_minute()`` then sends one event per
    partition two minutes later: the watermark passes the minute and its windows are emitted."""

    MERCHANTS = ("merchant-a", "merchant-b", "merchant-c")

    def __init__(self, bootstrap: str, start: int) -> None:
        import threading

        self.start, self.sent = start, 0
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.sent < 30_000:
            for _ in range(20):
                i = self.sent
                e = make_transaction(now_ms=self.start + i * 2, card_id=f"card-{i % 500}",
                                     merchant_id=self.MERCHANTS[i % 3], amount=10.0)
                self._producer.produce(TRANSACTIONS, key=e["card_id"], value=orjson.dumps(e))
                self.sent += 1
            self._producer.poll(0)
            self._stop.wait(0.05)
        self._producer.flush(30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def close_minute(self) -> None:
        for i in range(20):  # keys spread over every partition
            late = make_transaction(now_ms=self.start + 3 * 60_000, card_id=f"card-late-{i}",
                                    merchant_id="merchant-late")
            self._producer.produce(TRANSACTIONS, key=late["card_id"], value=orjson.dumps(late))
        self._producer.flush(30)


def committed_offsets(bootstrap: str, partitions: int):
    """A function that returns the worker's committed input offsets, summed over partitions
    (``per_partition``: a list), and the consumer it reads them with (to close)."""
    from confluent_kafka import TopicPartition

    from pipelines.topics import VALIDATED

    offsets = Consumer({"bootstrap.servers": bootstrap, "group.id": "riskstream",
                        "enable.auto.commit": False})
    tps = [TopicPartition(VALIDATED[TRANSACTIONS], p) for p in range(partitions)]

    def committed(per_partition: bool = False) -> int | list[int]:
        found = [max(tp.offset, 0) for tp in offsets.committed(tps, timeout=5)]
        return found if per_partition else sum(found)
    return committed, offsets


def recovery_tables(log: str) -> str:
    """What a worker's log says Faust restored: the changelogs' highwaters and where it read
    from (for an assertion's message: a failure then says what the restart started from)."""
    start = log.find("Highwater for active")
    return log[start:log.find("Recovery complete", start)] if start >= 0 else "(none logged)"


@pytest.mark.integration
def test_windows_bigger_than_a_message_are_back_after_a_worker_restart(tmp_path):
    """A worker checkpoints a minute of 300 merchants' windows (in parts: the limit is 1 KiB
    here) and stops; a new worker closes that minute: its aggregates hold every event, which
    only the restored checkpoint knew."""
    import time

    minute = 60_000
    start = (int(time.time() * 1000) // minute - 5) * minute  # a minute 5 minutes ago
    merchants = [f"merchant-{i:03d}" for i in range(300)]
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=1)
        env = {"RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
               "RISKSTREAM_STATE_DIR": str(tmp_path / "state"),
               "RISKSTREAM_LAKE_PATH": str(tmp_path / "lake"),
               "RISKSTREAM_KAFKA_PARTITIONS": "1",
               "RISKSTREAM_KAFKA_CHECKPOINT_CHUNK_BYTES": str(CHUNK)}
        producer = Producer({"bootstrap.servers": broker.bootstrap})

        def send(events: list[dict]) -> None:
            for e in events:
                producer.produce(TRANSACTIONS, key=e["card_id"], value=orjson.dumps(e))
            producer.flush(30)

        # (the worker creates its changelog topic: the subscription looks for it every second)
        changelog = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t-changelog",
                              "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                              "topic.metadata.refresh.interval.ms": 1000})
        changelog.subscribe(["riskstream-window-state-changelog"])
        heads: list[dict] = []

        def chunked_head() -> bool:
            for m in changelog.consume(500, timeout=0.5):
                if m.error() is None and m.value() and m.value().startswith(b'{"__chunked__'):
                    heads.append(orjson.loads(m.value()))
            return bool(heads)

        first = Process(["worker"], env, tmp_path / "worker-1.log")
        try:
            send([make_transaction(now_ms=start + i * 100, card_id=f"card-{i}",
                                   merchant_id=m, amount=10.0) for i, m in enumerate(merchants)])
            wait_until(chunked_head, timeout_s=90, what="a checkpoint written in parts")
        finally:
            assert first.stop() == 0, first.log()
        changelog.close()

        aggregates = MinuteAggregates(broker.bootstrap, start)

        second = Process(["worker"], env, tmp_path / "worker-2.log")
        try:
            # one more event per merchant in the same minute, then one two minutes later: the
            # watermark passes the minute and the new worker emits its windows
            send([make_transaction(now_ms=start + 40_000 + i, card_id=f"card-{i}",
                                   merchant_id=m, amount=10.0) for i, m in enumerate(merchants)])
            send([make_transaction(now_ms=start + 3 * minute, card_id="card-late",
                                   merchant_id="merchant-late")])
            wait_until(lambda: len(aggregates.read()) >= len(merchants), timeout_s=90,
                       what="the minute's aggregates")
        finally:
            second.stop()
            aggregates.close()
        # the first worker's event and the new one
        assert aggregates.counts == dict.fromkeys(merchants, 2)
        assert heads[-1]["__chunked__"]["parts"] > 1


def worker_env(bootstrap: str, tmp_path, partitions: int, **more: str) -> dict[str, str]:
    return {"RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "RISKSTREAM_STATE_DIR": str(tmp_path / "state"),
            "RISKSTREAM_LAKE_PATH": str(tmp_path / "lake"),
            "RISKSTREAM_KAFKA_PARTITIONS": str(partitions), **more}


def restart_and_count(bootstrap: str, env: dict[str, str], stream: TransactionStream,
                      log_path) -> int:
    """Start a new worker on what the last one left, close the stream's minute, and return
    how many of its events the minute's aggregates count (every one, when nothing was lost
    or counted twice)."""
    aggregates = MinuteAggregates(bootstrap, stream.start)
    worker = Process(["worker"], env, log_path)
    try:
        stream.close_minute()
        try:
            wait_until(lambda: sum(aggregates.read().values()) >= stream.sent, timeout_s=90,
                       what="the minute's aggregates")
        except AssertionError:
            pass  # the caller's assertion says what is missing
    finally:
        worker.stop()
        aggregates.close()
    return sum(aggregates.counts.values())


@pytest.mark.integration
def test_a_killed_worker_leaves_no_batch_out_of_its_windows(tmp_path):
    """A worker is killed (SIGKILL) just after Faust committed its input offsets, in the
    middle of a stream; a new worker restores the windows from the checkpoint and reads the
    input from the committed offsets. The minute's aggregates count every event once: a
    worker that committed batches before a whole checkpoint covered them would leave them out
    (~1-2 s of events)."""
    import time

    start = (int(time.time() * 1000) // 60_000 - 5) * 60_000
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=2)
        # checkpoints 5 s apart, commits every 2.8 s (Faust's default): a commit that did not
        # wait for a checkpoint is seconds ahead of the last one
        env = worker_env(broker.bootstrap, tmp_path, 2,
                         RISKSTREAM_KAFKA_CHECKPOINT_INTERVAL_S="5")
        committed, offsets = committed_offsets(broker.bootstrap, 2)
        first = Process(["worker"], env, tmp_path / "worker-1.log")
        stream = TransactionStream(broker.bootstrap, start)
        commits: list[int] = []
        try:
            def committed_twice_then_one_more() -> bool:
                c = committed()
                if c > 0 and (not commits or c != commits[-1]):
                    commits.append(c)
                return len(commits) >= 3  # the kill comes just after a commit
            wait_until(committed_twice_then_one_more, timeout_s=90, interval_s=0.05,
                       what="the worker committing its input offsets three times")
        finally:
            first.kill()
            stream.stop()
            offsets.close()
        counted = restart_and_count(broker.bootstrap, env, stream, tmp_path / "worker-2.log")
        assert counted == stream.sent, (counted, stream.sent, commits)


# Imported first by every Python process of the faulty worker (``sitecustomize``): once the
# file it names exists, one batch raises after its events are scored and in the windows,
# outside any one event's scoring (as a bug in the alert rules' tick would), and the file goes:
# the batches after it score, so a worker that went on would checkpoint past the failed one.
FAULT = """
import os, pathlib
import pipelines.app as app
trigger, tick = pathlib.Path(os.environ["RISKSTREAM_TEST_FAULT"]), app.Pipeline._alert_tick
def faulty_tick(self, stream, now):
    if trigger.exists():
        trigger.unlink()
        raise RuntimeError("injected fault after a scored batch")
    return tick(self, stream, now)
app.Pipeline._alert_tick = faulty_tick
"""


@pytest.mark.integration
def test_a_fault_outside_one_event_stops_the_worker_and_loses_nothing(tmp_path):
    """A batch raises after its events went into the windows: the worker stops with exit code
    70 (a supervisor restarts it) and checkpoints nothing more; a new worker counts every
    event of the minute once. A worker that went on (Faust restarts an agent that raised)
    would later checkpoint offsets past the failed batch, and its replay would be skipped."""
    import time

    from processes import ROOT

    start = (int(time.time() * 1000) // 60_000 - 5) * 60_000
    (tmp_path / "fault").mkdir()
    (tmp_path / "fault" / "sitecustomize.py").write_text(FAULT)
    trigger = tmp_path / "fault-now"
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=2)
        env = worker_env(broker.bootstrap, tmp_path, 2, RISKSTREAM_TEST_FAULT=str(trigger),
                         PYTHONPATH=f"{tmp_path / 'fault'}:{ROOT}")
        committed, offsets = committed_offsets(broker.bootstrap, 2)
        first = Process(["worker"], env, tmp_path / "worker-1.log")
        stream = TransactionStream(broker.bootstrap, start)
        try:
            wait_until(lambda: committed() > 0, timeout_s=90,
                       what="the worker committing its input offsets")
            trigger.touch()
            wait_until(lambda: first.proc.poll() is not None, timeout_s=60,
                       what="the worker stopping after the fault")
        finally:
            code = first.stop()
            stream.stop()
            at_stop = committed(per_partition=True)
            offsets.close()
        log = first.log()
        assert code == 70, log[-3000:]
        assert "stopping the worker" in log and "injected fault" in log
        assert not trigger.exists()  # the fault fired once
        counted = restart_and_count(broker.bootstrap, env, stream, tmp_path / "worker-2.log")
        # (seen once in a full suite run, 5,980 of 6,020, not reproduced since: the message
        # says where the restart began, for whoever sees it next)
        assert counted == stream.sent, (
            counted, stream.sent, f"committed at the first worker's stop: {at_stop}",
            recovery_tables((tmp_path / "worker-2.log").read_text(errors="replace")))
