"""The sink: output topics into the lake, offsets committed after the lake commit.

One confluent-kafka consumer reads every output topic in batches, buffers records per topic
(offset ranges per partition), and flushes a table when it holds ``LakeSettings.flush_rows``
rows or its oldest row waited ``flush_interval_s``. A flush is one :meth:`LakeWriter.write`
(its manifest is the commit, sinks/lake.py), *then* a synchronous Kafka commit.

A crash between the two is harmless: on every partition assignment the sink seeks to
``max(committed offset, the lake's recovered offset)``, so a flush whose manifest exists is
never written again, and rows of a flush that never committed are read again. The Kafka
commit is then only progress for operators (lag) and a fast path; a failed commit is logged,
not fatal. Flushes carry Kafka's topic id, so the lake's offsets of a topic that was deleted
and created again (every output topic, each time the embedded broker restarts) do not apply
to the new one.

On a partition revoke the sink flushes and commits what it holds (it still owns the
partitions during the callback, so nothing is read twice); partitions *lost* (session
timeout) have their buffers dropped, to be read again by their new owner.

Records that are not JSON objects are logged with topic/partition/offset and counted
(``riskstream_sink_bad_records_total``); their offsets still move on with the flush. A record
that breaks its table's schema stops the sink with a :class:`LakeError` (it must not vanish,
and it is our own agents' bug): it stays in Kafka, uncommitted.

With ``RISKSTREAM_LAKE_COMPACT_EVERY_S`` > 0 a background thread compacts closed hour
partitions (sinks/compaction.py) with the sink's own :class:`LakeWriter`, which holds the lake's
writer lock: the only process that may write the lake does. Compaction touches only committed
files and its own ``compact-*`` files, so it needs no coordination with flushes; a failed run is
logged and counted (``riskstream_lake_compaction_failures_total``) and retried next time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import (
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Histogram

from pipelines.kafka import consumer_config, readable, topic_ids
from pipelines.settings import Settings
from pipelines.topics import OUTPUT_TOPICS, TABLE_OF_TOPIC
from sinks.lake import JSONL_TOPICS, LakeWriter, json_to_arrow

log = logging.getLogger(__name__)

SINK_ROWS = Counter("riskstream_sink_rows", "Rows committed to the lake", ["table"])
SINK_FLUSHES = Counter("riskstream_sink_flushes", "Flushes committed to the lake", ["table"])
SINK_FLUSH_SECONDS = Histogram(
    "riskstream_sink_flush_seconds", "Time of one flush: lake write, manifest and Kafka commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
SINK_BAD_RECORDS = Counter(
    "riskstream_sink_bad_records", "Records that are not JSON objects, logged and skipped",
    ["topic"])
SINK_COMMIT_FAILURES = Counter(
    "riskstream_sink_commit_failures", "Kafka commits that failed after a lake commit "
    "(harmless: the next assignment resumes from the lake)", ["topic"])
LAKE_COMPACTIONS = Counter("riskstream_lake_compactions", "Hour partitions compacted by the sink",
                           ["table"])
LAKE_COMPACTION_FAILURES = Counter("riskstream_lake_compaction_failures",
                                   "Compaction runs of the sink that raised (retried next time)")


@dataclass
class _PartitionBuffer:
    first: int
    last: int
    records: list[bytes] = field(default_factory=list)


@dataclass
class _TopicBuffer:
    """Records of one topic waiting for a flush, per partition (offset order kept)."""

    partitions: dict[int, _PartitionBuffer] = field(default_factory=dict)
    rows: int = 0
    since: float | None = None  # monotonic time of the oldest buffered message

    def add(self, partition: int, offset: int, record: bytes | None) -> None:
        buf = self.partitions.get(partition)
        if buf is None:
            buf = self.partitions[partition] = _PartitionBuffer(offset, offset)
        buf.last = offset
        if record is not None:
            buf.records.append(record)
            self.rows += 1
        if self.since is None:
            self.since = time.monotonic()

    def drop(self, partition: int) -> None:
        buf = self.partitions.pop(partition, None)
        if buf is not None:
            self.rows -= len(buf.records)
        if not self.partitions:
            self.since = None

    def ranges(self) -> dict[int, tuple[int, int]]:
        return {p: (b.first, b.last) for p, b in self.partitions.items()}

    def records(self) -> list[bytes]:
        return [r for _, b in sorted(self.partitions.items()) for r in b.records]


def _why_bad(raw: bytes | None) -> str:
    """Why a value is not a JSON object, for the log."""
    if raw is None:
        return "an empty value"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc}): {raw[:200]!r}"
    return f"a JSON {type(value).__name__}, not an object"


def _decode(topic: str, raws: list[bytes]) -> list[dict]:
    """The values of a flush as dicts; a value that is not a JSON object is logged, counted
    and skipped (its offset is committed with the flush: it would fail again)."""
    out = []
    for raw in raws:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            out.append(value)
        else:
            SINK_BAD_RECORDS.labels(topic).inc()
            log.error("sink: a %s record skipped, %s", topic, _why_bad(raw))
    return out


class LakeSink:
    """The sink's state: a consumer, a lake writer and the buffers between them.

    :func:`run_sink` drives it; tests may drive ``poll`` directly. Not thread-safe: everything,
    the rebalance callbacks included, runs in the thread that calls ``poll``.
    """

    def __init__(self, consumer: Consumer, lake: LakeWriter, *, batch: int, flush_rows: int,
                 flush_interval_s: float, admin: AdminClient | None = None) -> None:
        self.consumer = consumer
        self.lake = lake
        # Kafka's topic ids, read at each assignment: a recreated topic (the embedded broker
        # after a restart: memory storage) restarts at offset 0, and the lake must not take
        # those offsets for the old topic's (sinks/lake.py, recover).
        self.admin = admin
        self.topic_ids: dict[str, str | None] = {}
        self.batch = batch
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.buffers: dict[str, _TopicBuffer] = {topic: _TopicBuffer() for topic in OUTPUT_TOPICS}

    def subscribe(self) -> None:
        self.consumer.subscribe(list(OUTPUT_TOPICS), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    # -- rebalances -----------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition after whatever is durable: Kafka's commit or the lake's."""
        # -1: nothing there (Kafka says OFFSET_INVALID, -1001).
        committed = {(tp.topic, tp.partition): max(tp.offset, -1)
                     for tp in consumer.committed(partitions, timeout=30)}
        topics = sorted({tp.topic for tp in partitions})
        self.topic_ids.update(topic_ids(self.admin, topics, log, "sink"))
        recovered = {topic: self.lake.recover(topic, self.topic_ids.get(topic))
                     for topic in topics}
        start = []
        for tp in partitions:
            kafka_next = committed.get((tp.topic, tp.partition), -1)
            lake_next = recovered[tp.topic].get(tp.partition, -1)
            if lake_next > kafka_next:
                # A crash (or a failed commit) after the lake commit: skip what is in the lake.
                log.info("sink: %s[%d] resumes at %d from the lake (Kafka: %s)", tp.topic,
                         tp.partition, lake_next, kafka_next if kafka_next >= 0 else "none")
            offset = max(kafka_next, lake_next)
            # Negative: nothing committed anywhere, auto.offset.reset (earliest) applies.
            start.append(TopicPartition(tp.topic, tp.partition, offset) if offset >= 0 else tp)
        consumer.assign(start)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Flush rather than drop: we still own the partitions during this callback, so the
        # commit succeeds and the next owner re-reads nothing. (on_lost drops instead.)
        topics = {tp.topic for tp in partitions}
        for topic in topics:
            self.flush(topic)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The partitions are someone else's already: a flush might race their new owner.
        # Drop their buffers; they are read again from the lake's/Kafka's offsets.
        for tp in partitions:
            self.buffers[tp.topic].drop(tp.partition)
        log.warning("sink: lost %d partitions (session timeout?); their buffers are dropped "
                    "and read again", len(partitions))
        consumer.unassign()

    # -- the loop -------------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.5) -> int:
        """Read one batch, flush what is due; return the number of messages read."""
        messages = self.consumer.consume(num_messages=self.batch, timeout=timeout_s)
        for message in messages:
            self._add(message)
        now = time.monotonic()
        for topic, buf in self.buffers.items():
            if buf.partitions and (buf.rows >= self.flush_rows
                                   or now - buf.since >= self.flush_interval_s):
                self.flush(topic)
        return len(messages)

    def _add(self, message: Message) -> None:
        if not readable(message, log, "sink"):
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        raw = message.value()
        # Kept as bytes: a flush parses them all at once (lake.json_to_arrow). What cannot be
        # a JSON object is skipped here, with its offset; the rest is checked at the flush.
        record = raw if raw is not None and raw[:1] == b"{" else None
        if record is None:
            SINK_BAD_RECORDS.labels(topic).inc()
            log.error("sink: %s[%d]@%d skipped, %s", topic, partition, offset, _why_bad(raw))
        self.buffers[topic].add(partition, offset, record)

    def flush(self, topic: str) -> None:
        """Write the buffer of ``topic`` to the lake, then commit its offsets to Kafka."""
        buf = self.buffers[topic]
        if not buf.partitions:
            return
        table = TABLE_OF_TOPIC[topic]
        started = time.perf_counter()
        ranges = buf.ranges()
        raws = buf.records()
        records = (json_to_arrow(topic, raws) if raws and topic not in JSONL_TOPICS else None)
        if records is None:  # record by record: bad ones skipped, schema errors named
            records = _decode(topic, raws)
        self.lake.write(topic, records, ranges, topic_id=self.topic_ids.get(topic))
        self._commit(topic, ranges)
        SINK_FLUSH_SECONDS.observe(time.perf_counter() - started)
        SINK_FLUSHES.labels(table).inc()
        SINK_ROWS.labels(table).inc(len(records))
        log.debug("sink: %s flushed %d rows in %.3f s", table, len(records),
                  time.perf_counter() - started)
        self.buffers[topic] = _TopicBuffer()

    def _commit(self, topic: str, ranges: dict[int, tuple[int, int]]) -> None:
        offsets = [TopicPartition(topic, p, last + 1) for p, (_, last) in ranges.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The lake is committed; the next assignment resumes from it. Only lag shows this.
            SINK_COMMIT_FAILURES.labels(topic).inc()
            log.warning("sink: Kafka commit of %s failed after the lake commit: %s", topic, exc)

    def flush_all(self) -> None:
        for topic in OUTPUT_TOPICS:
            self.flush(topic)

    def discard(self) -> None:
        """Forget every buffer, uncommitted: after an error, before the consumer closes
        (closing revokes the partitions, and a revoke would flush)."""
        self.buffers = {topic: _TopicBuffer() for topic in OUTPUT_TOPICS}


def run_sink(bootstrap: str, settings: Settings, *, stop: threading.Event,
             group_id: str = "riskstream-sink") -> None:
    """Copy every output topic into the lake at ``settings.lake.path`` until ``stop`` is set.

    On ``stop``: flush every buffer, commit, leave the group. On an error (a schema violation,
    the disk, a fatal Kafka error) it raises *without* flushing: the buffered records are not
    committed and are read again by the next sink. One sink per lake (the lake's writer lock
    refuses a second one).
    """
    lake = LakeWriter(settings.lake.path)
    halt = threading.Event()  # stops the compaction thread, on stop or on an error
    compactor = _start_compaction(lake, settings, halt)
    consumer = Consumer(consumer_config(settings.kafka, bootstrap, group_id))
    sink = LakeSink(consumer, lake, batch=settings.kafka.consume_batch,
                    flush_rows=settings.lake.flush_rows,
                    flush_interval_s=settings.lake.flush_interval_s,
                    admin=AdminClient({"bootstrap.servers": bootstrap}))
    try:
        sink.subscribe()
        log.info("sink: %s -> %s (group %s)", ", ".join(OUTPUT_TOPICS), settings.lake.path,
                 group_id)
        while not stop.is_set():
            sink.poll(0.5)
        sink.flush_all()
        log.info("sink: stopped; lake rows %s", lake.row_count())
    except BaseException:
        sink.discard()
        raise
    finally:
        consumer.close()  # leaves the group; commits nothing (auto commit is off)
        halt.set()
        if compactor is not None:
            compactor.join()  # waits for the hour being compacted, if any
        lake.close()


def _start_compaction(lake: LakeWriter, settings: Settings,
                      halt: threading.Event) -> threading.Thread | None:
    """Compact the lake every ``compact_every_s`` in a thread, until ``halt`` (or never)."""
    every_s = settings.lake.compact_every_s
    if every_s <= 0:
        return None
    from sinks.compaction import Compactor

    compactor = Compactor(lake, delete_after_s=settings.lake.compact_delete_after_s)

    def loop() -> None:
        while not halt.wait(every_s):
            try:
                report = compactor.run(older_than_s=settings.lake.compact_older_than_s)
            except Exception:
                LAKE_COMPACTION_FAILURES.inc()
                log.exception("sink: lake compaction failed; the lake is unchanged where it "
                              "failed, retried in %s s", every_s)
                continue
            for hour in report.hours:
                LAKE_COMPACTIONS.labels(hour.table).inc()
            if report.hours or report.deleted_files:
                log.info("sink: lake compaction %s", report.summary())

    thread = threading.Thread(target=loop, name="lake-compaction", daemon=True)
    thread.start()
    return thread
