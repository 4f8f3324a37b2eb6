"""The loader: output topics into the ClickHouse warehouse, each row exactly once.

One confluent-kafka consumer reads every output topic in batches and buffers records per
(topic, partition). A partition's buffer becomes an insert when it holds
``ClickHouseSettings.load_batch_rows`` records or its oldest waited ``load_interval_s``. Each
insert goes to the topic's table with the settings::

    insert_deduplication_token = "<topic>:<partition>:<first>-<last>"   (+ "@<topic id>")
    insert_deduplicate = 1, deduplicate_blocks_in_dependent_materialized_views = 1

and every table keeps a deduplication window (sinks/migrations/), so a batch inserted twice
lands once, in the table and in the rollups its materialized views feed.

**Batch boundaries are deterministic on retry.** A size-or-time rule alone is not: a batch
cut after 2 s at 37 records, inserted, then lost to a crash before the Kafka commit, would be
cut at 20,000 records by the next loader, with another token, and its 37 rows would land
twice. So before inserting, the loader writes each batch's range to the warehouse's
``loader_batches`` log (one small insert for all partitions), and on every assignment it reads
the ranges logged at or after the committed offset and cuts exactly those batches first.
Kafka offsets are committed after the inserts; a failed commit is only lag (the log and
the tokens keep the replay exact). The Kafka commit is the progress marker, the log the
boundary record, the token the idempotence.

**A ClickHouse outage delays rows, never loses or duplicates them.** A failed insert is retried
with exponential backoff (``retry_initial_s`` doubling to ``retry_max_s``, with jitter),
forever, while the consumer's partitions are paused (it keeps polling, so it stays in the
group). Nothing is committed until the insert succeeded.

Revoked or lost partitions drop their buffers: the next owner re-reads them from the committed
offset and cuts the logged batches again. Records that are not JSON objects are logged and
skipped (their offsets still move on); a record that breaks its table's schema stops the
loader (``LakeError``, the same validation as the lake's) without committing it.

Limits: one consumer group per warehouse (the group name is part of the log's key);
deduplication holds for the last 10,000 inserts per table, far more than a crash replays.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
from confluent_kafka import (
    Consumer, KafkaException, Message, TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Histogram

from pipelines.kafka import consumer_config, readable, topic_ids
from pipelines.settings import ClickHouseSettings, Settings
from pipelines.topics import OUTPUT_TOPICS, TABLE_OF_TOPIC
from sinks.lake import to_arrow
from sinks.warehouse import Target, WarehouseError, literal, migrate, open_target

log = logging.getLogger(__name__)

LOADER_ROWS = Counter("riskstream_loader_rows", "Rows inserted into ClickHouse", ["table"])
LOADER_BATCHES = Counter("riskstream_loader_batches", "Batches inserted", ["table"])
LOADER_RETRIES = Counter("riskstream_loader_retries",
                         "Failed ClickHouse writes, retried after a backoff", ["table"])
LOADER_BAD_RECORDS = Counter("riskstream_loader_bad_records",
                             "Records that are not JSON objects, logged and skipped", ["topic"])
LOADER_INSERT_SECONDS = Histogram(
    "riskstream_loader_insert_seconds", "Time of one insert into ClickHouse",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

BATCH_LOG = "loader_batches"
TP = tuple[str, int]


def dedup_token(topic: str, partition: int, first: int, last: int,
                topic_id: str | None = None) -> str:
    """Return the insert deduplication token of a batch.

    The topic id (Kafka's, new when a topic is recreated: the embedded broker after every
    restart) keeps a recreated topic's offsets from matching the old topic's tokens.

    Examples
    --------
    >>> dedup_token("alerts", 3, 100, 199)
    'alerts:3:100-199'
    >>> dedup_token("alerts", 3, 100, 199, "Xw3")
    'alerts:3:100-199@Xw3'
    """
    return f"{topic}:{partition}:{first}-{last}" + (f"@{topic_id}" if topic_id else "")


def insert_settings(token: str) -> dict[str, object]:
    """Return the settings of one loader insert."""
    return {"insert_deduplicate": 1, "insert_deduplication_token": token,
            "deduplicate_blocks_in_dependent_materialized_views": 1}


@dataclass
class Batch:
    topic: str
    partition: int
    first: int
    last: int
    records: list[dict]
    planned: bool = False  # already in the batch log


@dataclass
class _Buffer:
    """Messages of one partition in offset order: (offset, record or None if skipped)."""

    items: list[tuple[int, dict | None]] = field(default_factory=list)
    since: float | None = None
    # Batches logged by an earlier loader, to cut exactly again: [(first, last)], in order.
    planned: list[tuple[int, int]] = field(default_factory=list)


class Backoff:
    """Exponential backoff with jitter: ``initial_s``, doubling, capped at ``max_s``.

    Examples
    --------
    >>> b = Backoff(0.5, 4.0, jitter=0.0)
    >>> [b.next_delay() for _ in range(5)]
    [0.5, 1.0, 2.0, 4.0, 4.0]
    """

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.2) -> None:
        self.initial_s, self.max_s, self.jitter = initial_s, max_s, jitter
        self._delay = initial_s

    def next_delay(self) -> float:
        delay = self._delay
        self._delay = min(self.max_s, self._delay * 2)
        return delay * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._delay = self.initial_s


class Loader:
    """The loader's state: a consumer, a target and the buffers between them.

    :func:`run_loader` drives it; tests may drive ``poll`` directly. Not thread-safe.
    """

    def __init__(self, consumer: Consumer, target: Target, settings: ClickHouseSettings, *,
                 group_id: str, consume_batch: int = 2000, admin: AdminClient | None = None,
                 stop: threading.Event | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.consumer = consumer
        self.target = target
        self.group_id = group_id
        self.batch_rows = settings.load_batch_rows
        self.interval_s = settings.load_interval_s
        self.consume_batch = consume_batch
        self.admin = admin
        self.topic_ids: dict[str, str | None] = {}
        self.stop = stop or threading.Event()
        self.backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self._sleep = sleep
        self.buffers: dict[TP, _Buffer] = {}

    def subscribe(self) -> None:
        self.consumer.subscribe(list(OUTPUT_TOPICS), on_assign=self._on_assign,
                                on_revoke=self._on_drop, on_lost=self._on_drop)

    # -- rebalances -----------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.committed(partitions, timeout=30)}
        topics = sorted({tp.topic for tp in partitions})
        self.topic_ids.update(topic_ids(self.admin, topics, log, "loader"))
        planned = self._retry("the batch log", lambda: self._planned(committed), poll=False)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.buffers[key] = _Buffer(planned=planned.get(key, []))
            if self.buffers[key].planned:
                log.info("loader: %s[%d] replays %d logged batches from offset %d", *key,
                         len(planned[key]), planned[key][0][0])
        consumer.assign([TopicPartition(tp.topic, tp.partition, committed[(tp.topic, tp.partition)])
                         if committed[(tp.topic, tp.partition)] >= 0 else tp
                         for tp in partitions])

    def _planned(self, committed: dict[TP, int]) -> dict[TP, list[tuple[int, int]]]:
        """The logged batches at or after each partition's committed offset."""
        if not committed:
            return {}
        where = " OR ".join(
            f"(topic = {literal(topic)} AND partition = {partition} AND topic_id = "
            f"{literal(self.topic_ids.get(topic) or '')} AND first_offset >= {max(offset, 0)})"
            for (topic, partition), offset in committed.items())
        rows = self.target.query(
            f"SELECT topic, partition, first_offset, last_offset FROM {BATCH_LOG} FINAL "
            f"WHERE consumer_group = {literal(self.group_id)} AND ({where}) "
            "ORDER BY topic, partition, first_offset")
        planned: dict[TP, list[tuple[int, int]]] = {}
        for r in rows:
            planned.setdefault((r["topic"], int(r["partition"])), []).append(
                (int(r["first_offset"]), int(r["last_offset"])))
        return planned

    def _on_drop(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Always safe to drop: the next owner re-reads from the committed offset and cuts the
        # logged batches again, with the same tokens.
        for tp in partitions:
            self.buffers.pop((tp.topic, tp.partition), None)
        consumer.unassign()

    # -- the loop -------------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.5) -> int:
        """Read one batch of messages, insert what is due; return the messages read."""
        messages = self.consumer.consume(num_messages=self.consume_batch, timeout=timeout_s)
        for message in messages:
            self._add(message)
        while True:
            due = self._due(time.monotonic())
            if not due:
                break
            self._load(due)
        return len(messages)

    def _add(self, message: Message) -> None:
        if not readable(message, log, "loader"):
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        buf = self.buffers.get((topic, partition))
        if buf is None:  # a message of a partition revoked since it was fetched
            return
        raw = message.value()
        try:
            value = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            LOADER_BAD_RECORDS.labels(topic).inc()
            log.error("loader: %s[%d]@%d skipped, not a JSON object: %r", topic, partition,
                      offset, (raw or b"")[:200])
            value = None
        if buf.items and offset <= buf.items[-1][0]:
            return  # already buffered (a re-delivery after a pause)
        buf.items.append((offset, value))
        if buf.since is None:
            buf.since = time.monotonic()

    def _due(self, now: float, *, everything: bool = False) -> list[Batch]:
        """Cut at most one batch per partition: the next logged one, or by size or age."""
        batches = []
        for (topic, partition), buf in self.buffers.items():
            if not buf.items:
                continue
            first = buf.items[0][0]
            while buf.planned and buf.planned[0][1] < first:
                buf.planned.pop(0)  # logged, and committed since (or skipped by retention)
            if buf.planned:
                p_first, p_last = buf.planned[0]
                if first < p_first:  # records before the log (it was lost): cut up to it
                    end, planned = p_first - 1, False
                elif buf.items[-1][0] >= p_last:
                    end, planned = p_last, True
                    first = p_first  # the logged range names the batch (and its token)
                else:
                    continue  # wait for the rest of the logged batch
                n = sum(1 for offset, _ in buf.items if offset <= end)
            else:
                n = min(len(buf.items), self.batch_rows)
                full = len(buf.items) >= self.batch_rows
                if not (everything or full or now - buf.since >= self.interval_s):
                    continue
                planned = False
            items = buf.items[:n]
            last = end if planned else items[-1][0]
            batches.append(Batch(topic, partition, first if planned else items[0][0], last,
                                 [r for _, r in items if r is not None], planned))
        return batches

    def _load(self, batches: list[Batch]) -> None:
        """Log the new batches' ranges, insert every batch, then commit their offsets."""
        new = [b for b in batches if not b.planned]
        if new:
            now_ms = time.time_ns() // 1_000_000
            plan = pa.table({
                "consumer_group": [self.group_id] * len(new),
                "topic": [b.topic for b in new],
                "topic_id": [self.topic_ids.get(b.topic) or "" for b in new],
                "partition": pa.array([b.partition for b in new], pa.int32()),
                "first_offset": [b.first for b in new],
                "last_offset": [b.last for b in new],
                "planned_at": pa.array([now_ms] * len(new), pa.timestamp("ms", tz="UTC")),
            })
            self._retry(BATCH_LOG, lambda: self.target.insert(BATCH_LOG, plan, {}))
        for batch in batches:
            table = TABLE_OF_TOPIC[batch.topic]
            if batch.records:
                data = to_arrow(batch.topic, batch.records)  # LakeError on a schema violation
                token = dedup_token(batch.topic, batch.partition, batch.first, batch.last,
                                    self.topic_ids.get(batch.topic))
                started = time.perf_counter()
                self._retry(table, lambda: self.target.insert(table, data, insert_settings(token)))
                LOADER_INSERT_SECONDS.observe(time.perf_counter() - started)
                LOADER_ROWS.labels(table).inc(len(batch.records))
            LOADER_BATCHES.labels(table).inc()
            buf = self.buffers.get((batch.topic, batch.partition))
            if buf is not None:  # else revoked during a retry: its next owner replays it
                buf.items = [item for item in buf.items if item[0] > batch.last]
                if buf.planned and batch.planned:
                    buf.planned.pop(0)
                buf.since = time.monotonic() if buf.items else None
        self._commit(batches)

    def _commit(self, batches: list[Batch]) -> None:
        offsets = [TopicPartition(b.topic, b.partition, b.last + 1) for b in batches
                   if (b.topic, b.partition) in self.buffers]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are in; the batch log makes the replay cut the same batches again.
            log.warning("loader: Kafka commit failed after the inserts (replayed batches are "
                        "deduplicated): %s", exc)

    def _retry(self, what: str, action: Callable[[], object], *, poll: bool = True):
        """Run ``action`` until it succeeds, backing off; partitions paused meanwhile.

        ``poll=False`` inside rebalance callbacks, where the consumer must not be polled."""
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    result = action()
                    self.backoff.reset()
                    return result
                except WarehouseError as exc:
                    if self.stop.is_set():
                        raise
                    delay = self.backoff.next_delay()
                    LOADER_RETRIES.labels(what).inc()
                    log.warning("loader: writing %s failed, retrying in %.1f s: %s", what,
                                delay, exc)
                    if not poll:
                        time.sleep(delay)
                        continue
                    if not paused:
                        paused = self._pause()
                    self._wait(delay)
        finally:
            if paused and poll:
                try:
                    self.consumer.resume(self.consumer.assignment())
                except KafkaException as exc:
                    log.warning("loader: resume failed: %s", exc)

    def _pause(self) -> list[TopicPartition]:
        try:
            assignment = self.consumer.assignment()
            self.consumer.pause(assignment)
            return assignment
        except (KafkaException, RuntimeError):
            return []

    def _wait(self, delay: float) -> None:
        if self._sleep is not None:
            self._sleep(delay)
            return
        # Keep polling while paused: the consumer stays in its group (max.poll.interval.ms).
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0 and not self.stop.is_set():
            message = self.consumer.poll(min(left, 1.0))
            if message is not None:
                self._add(message)

    def flush_all(self) -> None:
        """Insert everything buffered (on a clean stop)."""
        while True:
            due = self._due(time.monotonic(), everything=True)
            if not due:
                return
            self._load(due)


def run_loader(bootstrap: str, settings: Settings, *, stop: threading.Event,
               url: str | None = None, group_id: str = "riskstream-loader") -> None:
    """Load every output topic into ClickHouse (``url``, else settings) until ``stop`` is set.

    Applies the migrations first (idempotent). On ``stop``: insert what is buffered, commit,
    leave the group. On an error it raises without committing what it holds.
    """
    target = open_target(settings.clickhouse, url)
    consumer = None
    try:
        migrate(target, settings.clickhouse)
        consumer = Consumer(consumer_config(settings.kafka, bootstrap, group_id))
        loader = Loader(consumer, target, settings.clickhouse, group_id=group_id,
                        consume_batch=settings.kafka.consume_batch,
                        admin=AdminClient({"bootstrap.servers": bootstrap}), stop=stop)
        loader.subscribe()
        log.info("loader: %s -> ClickHouse (group %s)", ", ".join(OUTPUT_TOPICS), group_id)
        while not stop.is_set():
            loader.poll(0.5)
        loader.flush_all()
        log.info("loader: stopped")
    finally:
        if consumer is not None:
            consumer.close()
        target.close()
