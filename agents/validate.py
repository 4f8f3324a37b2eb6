"""The validation gateway: validate and deduplicate every input event, in batches.

Input topics carry one event per message from producers. Faust's cost is per Kafka message
(~11,000 messages/s per process, DESIGN.md) while confluent-kafka's batch ``consume()`` reads
~800,000/s, so this stage reads in batches with confluent-kafka and forwards the accepted
events to the ``validated-*`` topics as JSON arrays of up to ``batch_events`` events, each
message holding the events of one input partition in offset order, on the same partition
number (events and their labels stay co-partitioned). Every rejected message goes to
``dead-letter`` with its reason; nothing is dropped.

Exactly-once forwarding without transactions: every validated message carries a ``src``
header, the last input offset it covers. On partition assignment the gateway reads its own
``validated-*`` partition back: the event ids seen within the dedup TTL rebuild the
deduplicator, and the last ``src`` tells where to resume, so a crash between producing and
committing re-sends nothing. Rejections of that gap may reach dead-letter twice (at least
once).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, OrderedDict, defaultdict

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from pipelines import metrics, placement
from pipelines.kafka import consumer_config, producer_config, readable
from pipelines.settings import Settings
from pipelines.topics import DEAD_LETTER, INPUT_TOPICS, VALIDATED
from schemas.pii import redact_raw
from schemas.validation import Rejection, Validator, dead_letter_record

log = logging.getLogger(__name__)

GROUP_ID = "riskstream-gateway"


class Deduplicator:
    """Event ids seen within ``ttl_ms`` of event time, per input partition.

    Memory is bounded by the TTL: ids older than the partition's newest event time minus the
    TTL are forgotten (insertion order is close to event-time order).
    """

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self._seen: dict[tuple[str, int], OrderedDict[str, int]] = defaultdict(OrderedDict)
        self._newest: dict[tuple[str, int], int] = defaultdict(int)

    def seen(self, tp: tuple[str, int], event_id: str, event_ms: int) -> bool:
        """Record ``event_id``; True when it was already seen within the TTL."""
        ids = self._seen[tp]
        if event_id in ids:
            return True
        ids[event_id] = event_ms
        if event_ms > self._newest[tp]:
            self._newest[tp] = event_ms
            horizon = event_ms - self.ttl_ms
            while ids:
                oldest_id, oldest_ms = next(iter(ids.items()))
                if oldest_ms >= horizon:
                    break
                del ids[oldest_id]
        return False

    def forget(self, tp: tuple[str, int]) -> None:
        self._seen.pop(tp, None)
        self._newest.pop(tp, None)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._seen.values())


class Gateway:
    """Consume input topics in batches, validate, dedup, forward, dead-letter, then commit."""

    def __init__(self, settings: Settings, bootstrap: str, *, group_id: str = GROUP_ID) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.validator = Validator(settings.validation, settings.pii)
        self.dedup = Deduplicator(settings.validation.dedup_ttl_s * 1000)
        self.batch_events = settings.validation.batch_events
        self._producer = Producer(producer_config(
            bootstrap, **{"linger.ms": settings.kafka.gateway_linger_ms}))
        self._consumer = Consumer(consumer_config(settings.kafka, bootstrap, group_id,
                                                  scoring_path=True))
        # (input topic, partition) -> last input offset already forwarded (from `src` headers)
        self._forwarded: dict[tuple[str, int], int] = {}
        self._delivery_error: KafkaError | None = None
        self._uncommitted: dict[tuple[str, int], int] = {}  # next offset to commit

    # -- recovery -------------------------------------------------------------------------

    def _rebuild(self, topic: str, partition: int) -> int:
        """Reload dedup ids and the last forwarded offset from our validated partition."""
        tp = (topic, partition)
        self.dedup.forget(tp)
        reader = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"{self.group_id}-rebuild",
                           "enable.auto.commit": False})
        try:
            out = TopicPartition(VALIDATED[topic], partition)
            low, high = reader.get_watermark_offsets(out, timeout=10)
            if high <= low:
                return -1
            start = low
            try:
                horizon_ms = int(time.time() * 1000) - self.dedup.ttl_ms
                found = reader.offsets_for_times(
                    [TopicPartition(out.topic, partition, horizon_ms)], timeout=10)[0].offset
                if found >= 0:
                    start = max(low, found - 1)  # the message before holds the previous src too
            except KafkaException:  # broker without timestamp index: read the whole partition
                start = low
            reader.assign([TopicPartition(out.topic, partition, start if start > 0 else OFFSET_BEGINNING)])
            # Read to the end: stop at the first empty poll past the high watermark (Tansu
            # reports the high watermark per record batch, below the true end, so it is only a
            # lower bound here).
            last_src, position = -1, start
            while True:
                messages = reader.consume(5000, timeout=1.0)
                if not messages and position >= high:
                    break
                for msg in messages:
                    if msg.error():
                        continue
                    position = msg.offset() + 1
                    for name, value in msg.headers() or ():
                        if name == "src":
                            last_src = max(last_src, int(value))
                    for event in orjson.loads(msg.value()):
                        self.dedup.seen(tp, event["event_id"], event["event_time"])
            return last_src
        finally:
            reader.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = {(p.topic, p.partition): p.offset
                     for p in consumer.committed(partitions, timeout=10)}
        for p in partitions:
            last = self._rebuild(p.topic, p.partition)
            self._forwarded[(p.topic, p.partition)] = last
            resume = committed.get((p.topic, p.partition), -1)
            if last >= 0 and last + 1 > resume:
                p.offset = last + 1
                log.info("%s[%d]: resuming after the last forwarded offset %d (committed %d)",
                         p.topic, p.partition, last, resume)
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:  # still ours: commit what was forwarded, so the next owner starts there
            self._commit({(p.topic, p.partition) for p in partitions})
        except Exception as exc:  # noqa: BLE001 - the next owner resumes from the src headers
            log.warning("gateway: commit at revocation failed (%s); the next owner resumes "
                        "after the last forwarded offset", exc)
        for p in partitions:
            self._forwarded.pop((p.topic, p.partition), None)
            self.dedup.forget((p.topic, p.partition))

    # -- the loop -------------------------------------------------------------------------

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._delivery_error = err

    def _dead_letter(self, msg, rejection: Rejection, now_ms: int) -> None:
        record = dead_letter_record(
            source_topic=msg.topic(), source_partition=msg.partition(),
            source_offset=msg.offset(),
            key=msg.key().decode("utf-8", "replace") if msg.key() else None,
            kind=rejection.kind, reason=rejection.reason, event_id=rejection.event_id,
            original=redact_raw(msg.topic(), msg.value() or b""), received_at=now_ms)
        self._producer.produce(DEAD_LETTER, key=msg.topic().encode(), value=orjson.dumps(record),
                               on_delivery=self._delivered)
        metrics.REJECTED.labels(msg.topic(), rejection.kind).inc()

    def process(self, messages: list) -> dict[tuple[str, int], int]:
        """Validate and forward one batch; return the next offset to commit per partition."""
        now_ms = int(time.time() * 1000)
        accepted: dict[tuple[str, int], list[dict]] = defaultdict(list)
        next_offsets: dict[tuple[str, int], int] = {}
        # counted per topic, into the metrics once per batch: a metric update per event was
        # ~13 % of the gateway (in its process each one is recorded for the relay)
        read: Counter[str] = Counter()
        for msg in messages:
            if not readable(msg, log, "gateway"):
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            tp = (topic, partition)
            next_offsets[tp] = offset + 1
            if offset <= self._forwarded.get(tp, -1):
                continue  # already forwarded before a crash: replay, not a duplicate
            read[topic] += 1
            result = self.validator.validate(topic, msg.value() or b"", now_ms=now_ms)
            if isinstance(result, Rejection):
                self._dead_letter(msg, result, now_ms)
            elif self.dedup.seen(tp, result["event_id"], result["event_time"]):
                self._dead_letter(msg, Rejection(
                    "duplicate", f"event_id: duplicate of an event seen within "
                    f"{self.settings.validation.dedup_ttl_s} s, got {result['event_id']!r}",
                    result["event_id"]), now_ms)
            else:
                accepted[tp].append(result)
        for topic, n in read.items():
            metrics.EVENTS_IN.labels(topic).inc(n)
        for (topic, _), events in accepted.items():
            metrics.VALIDATED.labels(topic).inc(len(events))
        for tp, last_next in next_offsets.items():
            events = accepted.get(tp, [])
            topic, partition = tp
            for i in range(0, len(events), self.batch_events):
                chunk = events[i:i + self.batch_events]
                # The last chunk covers every input offset of this batch, rejects included.
                src = last_next - 1 if i + self.batch_events >= len(events) else None
                headers = [("src", str(src).encode())] if src is not None else None
                self._producer.produce(VALIDATED[topic], value=orjson.dumps(chunk),
                                       partition=partition, headers=headers,
                                       on_delivery=self._delivered)
            if events:
                self._forwarded[tp] = last_next - 1
        return next_offsets

    def run(self, stop: threading.Event) -> None:
        """Validate until ``stop`` is set. Input offsets are committed at most every
        ``checkpoint_interval_s``, after everything produced is acknowledged: the ``src``
        headers, not the commits, make forwarding exactly once, so a commit per batch would
        only add a broker round trip to every event's latency."""
        kafka = self.settings.kafka
        self._consumer.subscribe(list(INPUT_TOPICS), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke)
        log.info("gateway consuming %s", ", ".join(INPUT_TOPICS))
        commit_due = time.monotonic() + kafka.checkpoint_interval_s
        try:
            while not stop.is_set():
                metrics.ALIVE.labels("gateway").set_to_current_time()
                messages = self._consumer.consume(kafka.consume_batch,
                                                  timeout=kafka.consume_wait_s)
                if messages:
                    with metrics.BATCH_SECONDS.labels("gateway").time():
                        self._uncommitted.update(self.process(messages))
                self._producer.poll(0)
                if self._uncommitted and time.monotonic() >= commit_due:
                    self._commit()
                    commit_due = time.monotonic() + kafka.checkpoint_interval_s
        finally:
            try:
                if self._producer.flush(30) == 0:
                    self._commit()
                else:
                    log.warning("gateway stopping with unacknowledged events: not committing; "
                                "the next start resumes after the last forwarded offset")
            finally:
                self._consumer.close()

    def _commit(self, partitions: set[tuple[str, int]] | None = None) -> None:
        """Commit the next offsets of ``partitions`` (default: all) once everything produced
        so far is acknowledged."""
        while self._producer.flush(5.0):
            log.warning("waiting for the broker to acknowledge validated events")
        if self._delivery_error is not None:
            err, self._delivery_error = self._delivery_error, None
            raise RuntimeError(f"producing validated events failed: {err}; not committing")
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._uncommitted.items()
                   if partitions is None or (t, p) in partitions]
        if offsets:
            # Asynchronous: a synchronous commit held the loop for a broker round trip
            # (hundreds of ms on a busy Tansu). A lost commit only means re-reading input
            # that the `src` headers then skip.
            self._consumer.commit(offsets=offsets, asynchronous=True)
        for tp in (self._uncommitted.copy() if partitions is None else partitions):
            self._uncommitted.pop(tp, None)


# -- in a child process of the worker ---------------------------------------------------------

GATEWAY_METRICS = ["EVENTS_IN", "VALIDATED", "REJECTED", "ALIVE", "BATCH_SECONDS"]


def run_child(bootstrap: str, stop: threading.Event, conn, worker_pid: int,
              log_level: str = "INFO") -> None:
    """Entry point of the gateway's process, spawned by the worker (pipelines/app.py).

    Validation then has a core and a GIL of its own while the worker scores. Its metrics go
    to the worker through ``conn`` every ``RELAY_S`` (``pipelines.metrics.Relay``), so one
    /metrics per worker still shows them; settings come from the same environment.
    """
    placement.pin_helper()  # not on the worker's own core
    logging.basicConfig(level=log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] [gateway] %(message)s")
    # The worker stops it (``stop``); Ctrl-C reaches the whole process group, and the worker
    # drains in order. A worker that died without stopping it (SIGKILL) is noticed below.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = worker_pid  # not getppid() now: the worker may already be gone
    relay = metrics.Relay()
    relay.install(GATEWAY_METRICS)
    done = threading.Event()

    def send() -> None:
        while not done.wait(RELAY_S):
            try:
                conn.send(relay.drain())
            except OSError:  # the worker closed its end
                return

    def watch() -> None:  # never blocks on the pipe: a full pipe must not hide a dead worker
        while not done.wait(RELAY_S):
            if os.getppid() != parent:
                log.error("the worker is gone; the gateway stops")
                stop.set()
                return

    threads = [threading.Thread(target=send, name="metrics-relay", daemon=True),
               threading.Thread(target=watch, name="worker-watch", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        Gateway(Settings(), bootstrap).run(stop)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=2 * RELAY_S)
        if os.getppid() == parent:
            try:
                conn.send(relay.drain())
                conn.close()
            except OSError:
                pass


RELAY_S = 0.5
