"""The Faust app: validated batches -> scoring, windows, alert rules -> output topics.

``build_app(settings, bootstrap)`` wires it; there is no module-level App. Agents are thin:
the models are plain Python in ``agents/``. Each agent message is a JSON array of events from
one input partition (written by the validation gateway, which the worker runs in a child
process: validation and scoring each get a core), so Faust's per-message cost is paid once
per batch.

Outputs go out through one confluent-kafka producer, one JSON object per message (the stable
output schemas of ``schemas/outputs.py``). The agent never waits for the broker between
batches.

Window and alert state are checkpointed to the ``window-state`` table (one value per input
partition, windows and alerts together, not one write per event; ``alert-state`` is read for
checkpoints written before) at most every
``checkpoint_interval_s`` (also when the input stops), at revocation and at shutdown, with the
input offset they cover, each written once every output before it is acknowledged (the loop
does not wait for that). The agent acks a batch (manual Faust acks) once a checkpoint covering
it is delivered and sealed (whole on recovery), and Faust commits only acked offsets: after a
crash the worker restores the last whole checkpoint and reads its input from no later than
where that checkpoint ends. A replayed batch the checkpoint covers is a no-op, and the batches
after it are scored again (their outputs may go out twice: at-least-once, bounded by ~2
intervals; the warehouse keeps one row per event id); none is left out of the windows. The
tables' changelogs follow the partition across rebalances and restarts.

Model snapshots (``agents/snapshot.py``): the metric detectors per input partition
(``system-metrics-p<N>``), the fraud scorers per worker (one per role, champion and optional
challenger, ``agents/champion.py``, in the slots ``roles.json`` names, read at start:
``transactions-model`` and ``applications-model`` by default; one scorer per worker sees all
of its partitions), each at most every
``snapshot_interval_s`` and at shutdown, with the last learned offset of every
``"stream:partition"`` it holds. The periodic ones are written by a child forked from the
worker (``agents.snapshot.ForkedWriter``): the event loop pauses for the fork, not for
copying the models (~1.3 s per 100,000 cards per role before). At start the worker restores
them; events replayed after a restart that are newer than the snapshot are scored again into
the models only (``relearn``).
A fraud snapshot that this version cannot read (``SnapshotIncompatible``) is logged with the
operator's action and the worker starts that scorer cold (it retrains from the labels): a
model that is cold for a while is better than a worker that cannot score at all. Labels
learned after the last snapshot are not replayed into a restored scorer (the labels topic
has its own offsets): a crash loses at most ``snapshot_interval_s`` of labels for learning.
With several workers, give each one its own ``RISKSTREAM_MODEL_SNAPSHOT_DIR``: the fraud
snapshot names are per worker, not per partition.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from itertools import repeat
from operator import is_not
from queue import SimpleQueue
from typing import Any

import faust
import mode
import orjson
from confluent_kafka import Producer

from agents import validate
from agents.aggregate import WindowAggregator
from agents.alerting import AlertEngine, alert_row
from agents.anomaly import STATE_VERSION as METRIC_STATE_VERSION
from agents.anomaly import MetricScorer
from agents.champion import ChampionChallenger
from agents.rules import RulesSource
from agents.snapshot import ForkedWriter, SnapshotStore
from pipelines import metrics
from pipelines.kafka import producer_config
from pipelines.settings import Settings
from pipelines.topics import (
    AGGREGATES,
    ALERTS,
    APPLICATIONS,
    DEAD_LETTER,
    LABELS,
    METRIC_ANOMALIES,
    METRIC_SAMPLES,
    MODEL_QUALITY,
    RULES,
    SCORED_APPLICATIONS,
    SCORED_TRANSACTIONS,
    SYSTEM_METRICS,
    TRANSACTIONS,
    VALIDATED,
    partition_key,
)
from schemas.outputs import METRIC_SAMPLE
from schemas.pii import redact_raw
from schemas.validation import dead_letter_record

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Generation:
    """The outputs sent between two ``Outputs.when_delivered`` calls, and their delivery
    reports. ``report``, the producer's delivery callback, is ``SimpleQueue.put``: C, called
    as ``put(err, msg)``, it queues the error (``None`` once delivered) and drops the message,
    with no Python frame or lock per output (a Python callback per output was ~40 % of the
    cost of sending one: ``riskstream bench``, the worker's producer)."""

    __slots__ = ("sent", "reports", "report", "fn")

    def __init__(self) -> None:
        self.sent = 0  # outputs the producer took (only the worker's loop adds to it)
        self.reports: SimpleQueue = SimpleQueue()
        self.report = self.reports.put
        self.fn: Callable[[], Any] | None = None  # runs once these and all before are delivered

    def reported(self) -> bool:
        return self.reports.qsize() >= self.sent

    def error(self) -> Exception | None:
        """The first failed delivery among the reports (all in: ``reported``), if any."""
        # C loops, no comparison (a ``KafkaError`` compared with a non-integer raises)
        reports = list(map(SimpleQueue.get_nowait, repeat(self.reports, self.sent)))
        if not any(map(is_not, reports, repeat(None))):
            return None
        err = next(r for r in reports if r is not None)
        return RuntimeError(f"output delivery failed: {err}")


class Outputs:
    """The worker's producer for output topics, acknowledged per checkpoint.

    The agent does not wait for the broker between batches: every ``send`` counts in the open
    generation of outputs, and ``when_delivered(fn)`` closes it: ``fn`` runs on the event loop
    once the broker has acknowledged every output sent so far (the checkpoint is written then,
    and the batches it covers are acked after it: ``build_app``). A thread serves the delivery
    reports, so they arrive even while the loop only waits, and runs the waiters whose outputs
    are all in. A failed delivery is never followed by its waiters or any later one:
    ``on_error`` runs on the loop (the worker stops, ``build_app``), ``poll``/``flush`` raise,
    and the worker restarts from the committed offsets.
    """

    def __init__(self, bootstrap: str, linger_ms: int = 25) -> None:
        # ``KafkaSettings.output_linger_ms``: ten output topics fan out into many partition
        # batches, and a broker's cost is per batch (Tansu at 9,000 events/s: 33 % of a core
        # at 5 ms, 8 % at 50 ms).
        self._producer = Producer(producer_config(bootstrap, **{"linger.ms": linger_ms}))
        self.error: Exception | None = None
        self.on_error: Callable[[Exception], Any] | None = None
        self.lock = threading.Lock()  # the waiting generations: the loop adds, the thread runs
        self._open = _Generation()
        self._waiting: deque[_Generation] = deque()  # closed, oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller = threading.Thread(target=self._serve, name="output-deliveries",
                                        daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve delivery reports from now on; ``when_delivered`` waiters and ``on_error``
        run on ``loop``."""
        self._loop = loop
        if not self._poller.is_alive():
            self._poller.start()

    def on_loop(self, fn: Callable[[], Any]) -> None:
        if self._loop is None:
            fn()  # not started (tests, tools): the caller's thread is the only one
        elif not self._loop.is_closed():  # closed: the worker has stopped
            self._loop.call_soon_threadsafe(fn)

    def _serve(self) -> None:
        while True:  # a daemon thread: it lives as long as the worker
            if self._producer.poll(0.05) and self._waiting:
                self._settle()

    def _settle(self) -> None:
        """Run the waiters whose outputs, and all before them, are acknowledged; on a failed
        delivery, none from then on."""
        ready: list[Callable[[], Any]] = []
        with self.lock:
            while self.error is None and self._waiting and self._waiting[0].reported():
                generation = self._waiting.popleft()
                if (error := generation.error()) is not None:
                    self._fail(error)
                elif generation.fn is not None:
                    ready.append(generation.fn)
        for fn in ready:
            self.on_loop(fn)

    def _fail(self, error: Exception) -> None:
        self.error = error
        if self.on_error is not None:
            on_error = self.on_error
            self.on_loop(lambda: on_error(error))

    def send(self, topic: str, key: str | None, record: dict) -> None:
        generation = self._open
        value = orjson.dumps(record)
        while True:
            try:
                self._producer.produce(topic, key=key.encode() if key else None, value=value,
                                       on_delivery=generation.report)
                break
            except BufferError:  # local queue full: let the broker catch up, never drop
                time.sleep(0.01)
        # counted once taken (its report may come at once: it is read only once the
        # generation is closed); one the producer refuses (too large, say) raised above
        generation.sent += 1

    def when_delivered(self, fn: Callable[[], Any] | None) -> None:
        """Run ``fn`` on the loop once every output sent so far is acknowledged (at once if
        none is in flight); never if a delivery fails (``on_error`` runs instead: the worker
        stops). ``flush`` without the wait. Two such ``fn`` may run in either order."""
        with self.lock:
            generation, self._open = self._open, _Generation()
            generation.fn = fn
            self._waiting.append(generation)
        self._settle()

    def check(self) -> None:
        """Have the reports of the outputs sent so far checked once they are in, with no
        checkpoint to wait for them (a failure among them stops the worker: ``on_error``)."""
        if self._open.sent:
            self.when_delivered(None)

    def in_flight(self) -> int:
        """Outputs sent and not yet acknowledged."""
        with self.lock:
            return sum(g.sent - g.reports.qsize() for g in (*self._waiting, self._open))

    def poll(self) -> None:
        """Raise if an output could not be delivered (from then on: it stays failed)."""
        if self.error is not None:
            raise self.error

    def flush(self) -> None:
        """Wait until every output so far is acknowledged."""
        while self._producer.flush(5.0):
            log.warning("waiting for the broker to acknowledge outputs")
        self.when_delivered(None)  # every report is in: this checks them all for a failure
        self.poll()


class Pipeline:
    """The worker's state: scorers, window aggregators and rules, per stream."""

    def __init__(self, settings: Settings, outputs: Outputs, bootstrap: str | None = None) -> None:
        m, a = settings.model, settings.alert
        self.outputs = outputs
        # Each is the stream's champion and optional challenger, with a scorer's methods.
        self.transactions = ChampionChallenger.from_settings(TRANSACTIONS, m)
        self.applications = ChampionChallenger.from_settings(APPLICATIONS, m)
        self.quality_interval_s = m.quality_interval_s
        self._quality_due = time.monotonic() + m.quality_interval_s
        self.anomaly_threshold = m.anomaly_threshold
        # One metric detector per input partition (series are keyed by host/metric, so a
        # series lives in one partition), snapshotted to files and restored with it.
        self._metric_scorers: dict[int, MetricScorer] = {}
        self.snapshots = SnapshotStore(m.snapshot_dir or settings.service.state_dir / "models")
        self.snapshot_interval_s = m.snapshot_interval_s
        self._learned: dict[str, int] = {}        # "stream:partition" -> last offset in a model
        # One round of periodic snapshots (every model) per interval, in one forked child: the
        # loop pauses for the fork only, and a fork costs the worker copy-on-write faults
        # afterwards, so one, not one per model (six at once: scored p99 ~1 s at half load).
        self._snapshot_due = time.monotonic() + self.snapshot_interval_s
        self._writer = ForkedWriter()
        # The fraud scorers are per worker: one snapshot each, restored now.
        self.fraud_scorers = {TRANSACTIONS: self.transactions, APPLICATIONS: self.applications}
        for stream in self.fraud_scorers:
            self._restore_fraud(stream)
        # Alert rules from YAML (agents/rules.py), reloaded on change and from the rules topic.
        self.rules_source = RulesSource(
            a.rules_path, params=settings.rule_params(),
            bootstrap=bootstrap, topic=RULES, reload_s=a.rules_reload_s)
        self.alerts = AlertEngine(self.rules_source.initial(), dashboard_url=a.dashboard_url,
                                  grace_ms=m.window_grace_ms)
        self.rules = self.alerts.rules
        self._alert_slice = ""  # the input partition of the batch being scored: "stream:p"
        self._alert_slices: set[str] = set()
        self.window_size_ms, self.grace_ms = m.window_size_ms, m.window_grace_ms
        self.flag_threshold = a.score_threshold
        # (stream, partition) -> (aggregator, last applied input offset)
        self.windows: dict[tuple[str, int], list] = {}
        self._silence_checked: dict[int, int] = {}  # partition -> event clock of the last check
        self._unscored_batches: Counter[str] = Counter()  # stream -> batches failed whole in a row
        self._logged = [0, 0]  # minute, event failures logged in it (``_log_allowed``)

    def metric_scorer(self, partition: int) -> MetricScorer:
        """The partition's metric detector, restored from its latest snapshot if any."""
        scorer = self._metric_scorers.get(partition)
        if scorer is None:
            scorer = MetricScorer(anomaly_threshold=self.anomaly_threshold)
            key = f"{SYSTEM_METRICS}:{partition}"
            snap = self.snapshots.load(f"{SYSTEM_METRICS}-p{partition}", model="MetricScorer",
                                       state_version=METRIC_STATE_VERSION,
                                       feature_schema=scorer.model_version)
            if snap is not None:
                scorer.load_state(snap.state)
                self._learned[key] = snap.manifest["offsets"][key]
                log.info("%s: metric detector restored from snapshot %d (offset %d)", key,
                         snap.manifest["seq"], self._learned[key])
            self._metric_scorers[partition] = scorer
        return scorer

    def _restore_fraud(self, stream: str) -> None:
        """Restore the stream's roles from their slots' latest snapshots; cold if none, or if
        a snapshot is incompatible (logged with the operator's action)."""
        self._learned.update(self.fraud_scorers[stream].restore(self.snapshots))

    def _fraud_snapshot(self, stream: str) -> Callable[[], None]:
        """The job that snapshots the stream's roles with the learned offsets of its
        partitions as they are now (run it now, or in a child forked now)."""
        prefix = f"{stream}:"
        offsets = {k: v for k, v in self._learned.items() if k.startswith(prefix)}
        roles, save = self.fraud_scorers[stream], self.snapshots.save

        def write() -> None:
            # ~1.3 s per 100,000 cards and pending events, per role, to build the states
            for name, state, kwargs in roles.snapshot_jobs(offsets):
                save(name, state, **kwargs)
        return write

    def _metric_snapshot(self, partition: int, offset: int) -> Callable[[], None]:
        """The job that snapshots the partition's metric detector as it is now."""
        key = f"{SYSTEM_METRICS}:{partition}"
        scorer, save = self._metric_scorers[partition], self.snapshots.save

        def write() -> None:
            save(f"{SYSTEM_METRICS}-p{partition}", scorer.to_state(), model="MetricScorer",
                 state_version=METRIC_STATE_VERSION, feature_schema=scorer.model_version,
                 offsets={key: offset})
        return write

    def learned_offset(self, stream: str, partition: int) -> int:
        """The last input offset the partition's models have learned (-1: none known)."""
        if stream == SYSTEM_METRICS:
            self.metric_scorer(partition)
        return self._learned.get(f"{stream}:{partition}", -1)

    def relearn(self, stream: str, partition: int, events: list[dict], offset: int) -> None:
        """Replay a batch into the models only: its outputs and windows already went out.

        An event that raises is skipped and logged: it went out in the first pass, scored or
        to dead-letter (``_dead_letter``), and raising here would stop the worker at every
        restart (a crash loop on one event)."""
        if stream == SYSTEM_METRICS:
            scorer = self.metric_scorer(partition)
            learn = lambda event: scorer.score_record(event, 0)  # noqa: E731
        else:  # the other streams scored: transactions, applications
            learn = self.fraud_scorers[stream].score_one
        for event in events:
            try:
                learn(event)
            except Exception as exc:
                metrics.RELEARN_FAILED.labels(stream).inc()
                if self._log_allowed():
                    log.error("%s partition %d offset %d: relearning event %s failed; "
                              "skipped (it went out when first scored)", VALIDATED[stream],
                              partition, offset, event.get("event_id"), exc_info=exc)
        self._learned[f"{stream}:{partition}"] = offset

    def maybe_snapshot(self, stream: str, partition: int, offset: int, *, force: bool = False
                       ) -> None:
        """Record the partition's learned offset; snapshot every model when due (at most
        every ``snapshot_interval_s``, in one forked child), or the partition's models now
        (``force``: in a child too, after the one being written)."""
        self._learned[f"{stream}:{partition}"] = offset
        self._writer.reap()  # no finished writer left behind as a zombie
        if force:
            if stream in self.fraud_scorers:
                self._writer.submit(SNAPSHOT_WRITER, self._fraud_snapshot(stream), wait=True)
            elif stream == SYSTEM_METRICS and partition in self._metric_scorers:
                self._writer.submit(SNAPSHOT_WRITER, self._metric_snapshot(partition, offset),
                                    wait=True)
        elif time.monotonic() >= self._snapshot_due:
            self._snapshot_due = time.monotonic() + self.snapshot_interval_s
            self._writer.submit(SNAPSHOT_WRITER, self._all_snapshots())

    def _all_snapshots(self) -> Callable[[], None]:
        """The job that snapshots every model that has learned something, as it is now."""
        jobs = [self._fraud_snapshot(stream) for stream in self.fraud_scorers
                if any(k.startswith(f"{stream}:") for k in self._learned)]
        jobs += [self._metric_snapshot(partition, self._learned[key])
                 for partition in self._metric_scorers
                 if (key := f"{SYSTEM_METRICS}:{partition}") in self._learned]

        def write() -> None:
            for job in jobs:
                job()
        return write

    def wait_snapshots(self) -> None:
        """Wait until the snapshots being written are on disk."""
        self._writer.wait()

    def release(self, stream: str, partition: int) -> None:
        """A partition is revoked (at every rebalance, every partition is): snapshot its
        models now and forget them and its windows (read from its checkpoint again at its next
        batch). Its alert state is kept until the new assignment says where it went
        (``keep_alert_slices``).

        The fraud scorers are per worker: they keep the partition's card state (harmless) and
        their next snapshot no longer claims its offset.
        """
        key = f"{stream}:{partition}"
        if stream == SYSTEM_METRICS and partition in self._metric_scorers and key in self._learned:
            self.maybe_snapshot(stream, partition, self._learned[key], force=True)
        self._metric_scorers.pop(partition, None)
        self.windows.pop((stream, partition), None)
        self._learned.pop(key, None)

    def keep_alert_slices(self, held: set[str]) -> None:
        """The new assignment: forget the alert state of the partitions not in ``held``
        ("stream:partition"), which went to another worker. Kept, it would shadow the
        checkpoint that worker writes, if the partition came back (a partition's checkpoint
        is read before its first batch only). The partitions kept keep their state: it spans
        partitions (a rate window's group, an incident, an inhibition), and reloading each at
        its next batch would evaluate windows with some of their counts missing."""
        for key in self._alert_slices - held:
            self.alerts.forget_slice(key)
            self._alert_slices.discard(key)

    def close(self) -> None:
        """Final snapshots, written here (after the ones being written) before the worker
        exits."""
        self._writer.wait()
        self._all_snapshots()()

    def aggregator(self, stream: str, partition: int, stored: dict | None) -> list:
        entry = self.windows.get((stream, partition))
        if entry is None:
            agg = WindowAggregator(stream, partition=partition, window_size_ms=self.window_size_ms,
                                   grace_ms=self.grace_ms, flag_threshold=self.flag_threshold)
            offset = -1
            if stored:
                agg.load_state(stored["windows"])
                offset = stored["offset"]
            entry = self.windows[(stream, partition)] = [agg, offset]
        return entry

    def alert_slice(self, key: str, load: Callable[[], dict | None]) -> None:
        """Scoring a batch of input partition ``key`` next: its alert state is loaded (``load``
        reads the checkpoint) before its first batch only: decoding it per batch took ~16 % of
        the worker at 4,800 events/s (py-spy, ``riskstream bench``)."""
        if key not in self._alert_slices:
            self._alert_slices.add(key)
            if stored := load():
                self.alerts.load_state(stored, key)
        self._alert_slice = key

    def _alert(self, stream: str, record: dict, entity: str, now: int) -> None:
        self._send_alerts(self.alerts.observe(stream, record, entity, now, self._alert_slice))

    def _send_alerts(self, alerts: list[dict]) -> None:
        for alert in alerts:  # keyed by incident: its firing and resolved stay in order
            self.outputs.send(ALERTS, alert["incident_id"], alert_row(alert))
            metrics.ALERTS.labels(alert["rule"]).inc()

    def _alert_tick(self, stream: str, now: int) -> None:
        """Batch end: rate windows the watermark closed, quiet alerts resolved, new rules."""
        rules = self.rules_source.poll()
        if rules is not None:
            self.alerts.set_rules(rules)
            self.rules = rules
        self._send_alerts(self.alerts.tick(stream, now))

    def score_batch(self, stream: str, events: list[dict], agg: WindowAggregator,
                    partition: int = 0, offset: int = -1) -> None:
        """Score a batch of one input partition (its message at ``offset``): outputs,
        windows, alerts, metrics.

        The hot path: one loop per stream, metric children looked up once per batch. An event
        whose scoring raises goes to dead-letter (``_dead_letter``) and the batch goes on: a
        validated event the code cannot score would otherwise stop the worker at every replay.
        """
        now = _now_ms()
        send, add = self.outputs.send, agg.add
        # ``_alert`` inlined: most records fire nothing
        observe_alerts, send_alerts, slice_ = (self.alerts.observe, self._send_alerts,
                                               self._alert_slice)
        scores: list[float] = []
        observe = scores.append  # into the score histogram at the end (``observe_many``)
        decisions: Counter[str] = Counter()
        late = not_scored = 0
        if stream in (TRANSACTIONS, APPLICATIONS):
            scorer, topic, entity, group, value = (
                (self.transactions, SCORED_TRANSACTIONS, "card_id", "merchant_id", "amount")
                if stream == TRANSACTIONS else
                (self.applications, SCORED_APPLICATIONS, "applicant_id", "product",
                 "requested_amount"))
            # scored as a batch (``score_records``: the detector walks the events together),
            # each event's record or what scoring it raised; a fault of the batch's scoring as
            # a whole sends each of its events to dead-letter, as one event's would
            try:
                records = scorer.score_records(events, now)
            except Exception as exc:
                records = [exc] * len(events)
            for event, record in zip(events, records):
                try:
                    if isinstance(record, Exception):
                        raise record
                    send(topic, event[entity], _strip(record))
                    late += not add(event[group], event["event_time"], event[value],
                                    record["score"])
                    if fired := observe_alerts(stream, record, event[entity], now, slice_):
                        send_alerts(fired)
                except Exception as exc:  # one event the code cannot score: not the batch
                    self._dead_letter(stream, event, "scoring", exc, partition, offset)
                    not_scored += 1
                    continue
                decisions[record["decision"]] += 1
                observe(record["score"])
        else:
            score = self.metric_scorer(partition).score_record
            for event in events:
                try:
                    record = score(event, now)
                    series = f"{event['host']}/{event['metric']}"
                    send(METRIC_SAMPLES, series, _strip(record))
                    if record["score"] >= self.anomaly_threshold:
                        send(METRIC_ANOMALIES, series, record)
                    late += not add(series, event["event_time"], event["value"], record["score"])
                    if fired := observe_alerts(stream, record, series, now, slice_):
                        send_alerts(fired)
                except Exception as exc:
                    self._dead_letter(stream, event, "scoring", exc, partition, offset)
                    not_scored += 1
                    continue
                observe(record["score"])
            # Silence is checked in event time, at most once per SILENCE_CHECK_MS of it: the
            # check walks every series of the partition.
            clock = agg.max_event_ms
            if clock - self._silence_checked.get(partition, -SILENCE_CHECK_MS) >= SILENCE_CHECK_MS:
                self._silence_checked[partition] = clock
                self._silences(partition, clock, now)
        for decision, n in decisions.items():
            metrics.DECISIONS.labels(stream, decision).inc(n)
        metrics.observe_many(metrics.SCORES.labels(stream), scores)
        if late:
            metrics.LATE.labels(stream).inc(late)
        metrics.SCORED.labels(stream).inc(len(events))
        if closed := agg.pop_closed(now, limit=max(AGGREGATES_PER_BATCH, len(events))):
            for window in closed:
                send(AGGREGATES, window["group_key"], window)
            metrics.AGGREGATES.labels(stream).inc(len(closed))
        self._alert_tick(stream, now)
        if not events or not_scored < len(events):
            self._unscored_batches[stream] = 0
        elif (n := self._unscored_batches[stream] + 1) < UNSCORED_BATCHES_TO_STOP:
            self._unscored_batches[stream] = n
        else:
            raise RuntimeError(
                f"no event of the last {n} {stream} batches could be scored: the code or its "
                "models, not the events (they are in dead-letter)")

    def _dead_letter(self, stream: str, event: dict, kind: str, exc: Exception,
                     partition: int, offset: int) -> None:
        """Dead-letter a validated event (or label) the worker raised on (a bug, or an input
        validation let pass): kind ``scoring`` or ``learning``, the error as the reason, the
        event as the original (no raw PII: it passed the gateway, and is redacted again).
        Outputs it produced before the error may have been sent; its windows and features may
        hold part of it. Counted, and logged with the traceback, without the event, at most
        ``DEAD_LETTER_LOGS_PER_MINUTE`` a minute (a bad release would fail every event).

        A stream whose batches fail whole, ``UNSCORED_BATCHES_TO_STOP`` in a row, stops the
        worker (``score_batch`` raises): that is the code, and dead-lettering the whole stream
        would hide it."""
        topic = VALIDATED[stream]
        if self._log_allowed():
            log.error("%s partition %d offset %d: %s of event %s failed; sent to dead-letter",
                      topic, partition, offset, kind, event.get("event_id"), exc_info=exc)
        self.outputs.send(DEAD_LETTER, topic, dead_letter_record(
            source_topic=topic, source_partition=partition, source_offset=offset,
            key=partition_key(stream, event),
            kind=kind, reason=redact_raw(stream, f"{kind} failed: {exc!r}"[:500].encode()),
            event_id=event.get("event_id"),
            original=redact_raw(stream, orjson.dumps(event, default=str)),
            received_at=_now_ms()))
        metrics.REJECTED.labels(stream, kind).inc()  # by stream, as the gateway counts

    def _log_allowed(self) -> bool:
        """Whether an event's failure (scoring, learning, relearning) may be logged with its
        traceback: at most ``DEAD_LETTER_LOGS_PER_MINUTE`` a minute (a bad release would fail
        every event); the first one over says so. All are counted."""
        minute = int(time.monotonic() // 60)
        if self._logged[0] != minute:
            self._logged[:] = [minute, 0]
        self._logged[1] += 1
        if self._logged[1] == DEAD_LETTER_LOGS_PER_MINUTE + 1:
            log.error("more events failed this minute: counted (riskstream_rejected_total "
                      "by kind, riskstream_relearn_failed_total), not logged")
        return self._logged[1] <= DEAD_LETTER_LOGS_PER_MINUTE

    def _silences(self, partition: int, event_clock_ms: int, now: int) -> None:
        """Series of this partition that stopped reporting, in event time: anomalies."""
        for record in self.metric_scorer(partition).silent_series(event_clock_ms):
            record = {k: record.get(k) for k in METRIC_SAMPLE.names}
            record["scored_at"] = now
            series = f"{record['host']}/{record['metric']}"
            self.outputs.send(METRIC_ANOMALIES, series, record)
            self._alert(SYSTEM_METRICS, record, series, now)

    def learn_labels(self, labels: list[dict], partition: int = 0, offset: int = -1) -> None:
        """Teach the fraud scorers a batch of labels (its message at ``offset``); a label
        whose learning raises goes to dead-letter (``_dead_letter``), the others are learned."""
        scorers = {TRANSACTIONS: self.transactions, APPLICATIONS: self.applications}
        for label in labels:
            scorer = scorers.get(label["target_stream"])
            if scorer is None:
                continue  # metric incidents: used by evaluation, not learned online yet
            try:
                # The label's own time: merchant risk counts it from when it became known.
                learned = scorer.learn_label(label["target_event_id"], label["label"],
                                             label["event_time"])
            except Exception as exc:
                self._dead_letter(LABELS, label, "learning", exc, partition, offset)
                continue
            if learned:
                metrics.LABELS_LEARNED.labels(label["target_stream"]).inc()
            else:
                metrics.LABELS_UNMATCHED.labels(label["target_stream"]).inc()
        self.maybe_publish_quality()

    def maybe_publish_quality(self, *, force: bool = False) -> list[dict]:
        """Publish each scorer's rolling quality (``model-quality`` topic and gauges), at
        most every ``quality_interval_s``; the records sent (none when not due)."""
        if not force and time.monotonic() < self._quality_due:
            return []
        self._quality_due = time.monotonic() + self.quality_interval_s
        now = _now_ms()
        records = []
        for stream, models in self.fraud_scorers.items():
            for role, scorer in models.roles().items():
                if len(scorer.quality):
                    records.append(quality_record(stream, role, scorer, now))
        for record in records:
            self.outputs.send(MODEL_QUALITY, f"{record['stream']}/{record['role']}", record)
            labels = (record["stream"], record["role"])
            for gauge, column in ((metrics.MODEL_ROC_AUC, "roc_auc"),
                                  (metrics.MODEL_AVERAGE_PRECISION, "average_precision"),
                                  (metrics.MODEL_PRECISION_AT_REVIEW, "precision_at_review"),
                                  (metrics.MODEL_RECALL_AT_REVIEW, "recall_at_review")):
                value = record[column]
                gauge.labels(*labels).set(float("nan") if value is None else value)
        return records


SILENCE_CHECK_MS = 1_000
# Group windows a batch emits at most: when the watermark passes a window's end, every group
# seen in it (a merchant's transactions, per input partition) closes at once, ~2,000 per
# partition in `riskstream bench` (~10 ms in one batch); the rest follow with the next
# batches, in order, so the events of that batch are not held behind them (windows close
# only as events arrive, so a partition that falls silent right after a close keeps the rest,
# in its checkpointed state, until its next batch). A batch of more events emits as many as
# it has: each event can open one group window, so closed ones never pile up.
AGGREGATES_PER_BATCH = 500


def quality_record(stream: str, role: str, scorer: Any, now_ms: int) -> dict:
    """A ``model-quality`` record (``schemas.outputs.MODEL_QUALITY_RECORD``) of a scorer's
    rolling quality; ``window_end`` is the latest event time the scorer has seen."""
    return {"model_version": scorer.model_version, "stream": stream, "role": role,
            "window_end": max(scorer._watermark, 0), **scorer.quality.summary(),
            "computed_at": now_ms}


GC_THRESHOLDS = (10_000, 10, 100)


def _tune_interpreter(switch_interval_ms: float) -> None:
    """Keep the collector's pauses, and the GIL's hand-offs, out of the latency.

    The scorers hold many long-lived objects, and a full collection walks all of them: with
    the default thresholds (700, 10, 10) one ran every ~25,000 events, up to 124 ms each
    (200,000 events scored in process). Objects alive after start-up (imports, restored
    models) are frozen out of collection, and the generations are collected every 10,000
    allocations and 10 and 100 collections: full collections ~140x rarer, the longest pause
    24 ms in the same run. Cyclic garbage is still collected, later.

    The GIL is handed over every ``switch_interval_ms`` (``ServiceSettings``, 1 ms; Python's
    default is 5): while the main thread scores, Faust's consumer thread (aiokafka reads,
    parses and hands over every fetch answer in Python) waits for the GIL up to that long,
    several times per batch on the batch's way to the agent, and the output-deliveries
    thread once per poll.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(switch_interval_ms / 1000)


def _fetch_wait_consumer(fetch_wait_ms: int, fetch_min_bytes: int) -> type:
    """Faust's aiokafka consumer with our fetch wait and size: Faust fixes the wait at
    1,500 ms, and a broker that does not answer a waiting fetch when data arrives (Tansu)
    holds every batch that long (``KafkaSettings.fetch_wait_ms``, ``fetch_min_bytes``).

    Before it waits for every batch to be acked (at revocation and shutdown, where nothing
    else would ack them), it runs the app's ``riskstream_drain``: the worker acks a batch
    only once a whole checkpoint covers it (``build_app``). A worker stopping on a fault does
    not wait: nothing is acked after one."""
    from faust.transport.drivers import aiokafka as driver

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms  # read when its fetcher starts
            consumer._fetch_min_bytes = fetch_min_bytes
            return consumer

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def wait_empty(self) -> None:
            drain = getattr(self.app, "riskstream_drain", None)
            if drain is not None and not await drain():
                return  # stopping on a fault: its batches stay unacked on purpose (``fail``)
            await super().wait_empty()

    return Consumer


def _table_put(table: faust.Table, partition: int, key: str, value: Any,
               chunk_bytes: int) -> list[asyncio.Future]:
    """``table[key] = value`` into the changelog partition of the input partition the state
    belongs to. A checkpoint also runs outside stream iteration (revocation, shutdown) and
    covers every stream's partitions, where ``table[key] = ...`` would take the partition of
    the current event, or fail without one.

    The value goes as JSON bytes (``value`` may be them already). One over ``chunk_bytes``
    goes as parts under ``key#s.i`` and then a head under ``key`` naming them: a Kafka message
    has a size limit (1 MiB by default, the broker's and the producer's), and a partition's
    state is bigger with a few thousand merchants or firing alerts (a Faust producer error
    stops the worker). The parts
    alternate between two slots ``s``, and the head is written after its parts in the same
    changelog partition: a crash in the middle of a checkpoint leaves the previous head and
    its slot whole. Parts no longer named are deleted (tombstones) after the head. Returns the
    changelog records' futures (done when the broker has them)."""
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    head = table.data.get(key)
    stale = {k for k in table.data if k.startswith(f"{key}#")}
    sent = []
    if len(data) > chunk_bytes:
        previous = _chunked(head)
        slot = 1 - previous["slot"] if previous else 0
        parts = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
        for i, part in enumerate(parts):
            part_key = f"{key}#{slot}.{i}"
            stale.discard(part_key)
            sent.append(_table_set(table, partition, part_key, part))
        data = orjson.dumps({CHUNKED: {"slot": slot, "parts": len(parts)}})
    sent.append(_table_set(table, partition, key, data))
    for part_key in stale:
        del table.data[part_key]
        sent.append(table.send_changelog(partition, part_key, None))
    return sent


# validated topic -> the stream a scoring agent reads from it
SCORED_STREAMS = {VALIDATED[s]: s for s in (TRANSACTIONS, APPLICATIONS, SYSTEM_METRICS)}
UNSCORED_BATCHES_TO_STOP = 3  # batches of a stream failed whole in a row (``_dead_letter``)
DEAD_LETTER_LOGS_PER_MINUTE = 10
SNAPSHOT_WRITER = "models"  # the one key of the worker's ForkedWriter: one writer at a time
CHUNKED = "__chunked__"  # the head of a value written in parts (``_table_put``)
SEAL_KEY = "__seal__"  # a marker after a checkpoint (``build_app``), never read


def _table_set(table: faust.Table, partition: int, key: str, data: bytes) -> asyncio.Future:
    table.data[key] = data
    return table.send_changelog(partition, key, data)


def _chunked(raw: bytes | None) -> dict | None:
    """The parts a head names, or None when ``raw`` is a whole value (or absent)."""
    if raw is None or not raw.startswith(b'{"' + CHUNKED.encode()):
        return None
    return orjson.loads(raw)[CHUNKED]


def _table_get(table: faust.Table, key: str) -> Any:
    """The value ``_table_put`` wrote under ``key`` (None when there is none)."""
    raw = table.data.get(key)
    if raw is None:
        return None
    head = _chunked(raw)
    if head is None:
        return orjson.loads(raw)
    parts = [table.data.get(f"{key}#{head['slot']}.{i}") for i in range(head["parts"])]
    if any(part is None for part in parts):  # the parts precede their head: never expected
        raise RuntimeError(f"checkpoint {key!r}: {parts.count(None)} of {len(parts)} parts "
                           f"missing from table {table.name!r}")
    return orjson.loads(b"".join(parts))


def _stored_alerts(window_state: faust.Table, alert_state: faust.Table, key: str) -> dict | None:
    """A partition's alert state from its checkpoint: in the window-state value, written with
    the windows as one value (two values, one per table, could be restored from two different
    checkpoints after a crash between them: the rate rules would miss, or count twice, the
    batches between); in the alert-state table for checkpoints written before."""
    stored = _table_get(window_state, key)
    if stored is not None and "alerts" in stored:
        return stored["alerts"]
    return _table_get(alert_state, key)


def _strip(record: dict) -> dict:
    """The output record: the validated event without its routing field."""
    record.pop("stream", None)
    return record


def build_app(settings: Settings, bootstrap: str, *, run_gateway: bool = True) -> faust.App:
    """Build the worker's Faust app for the broker at ``bootstrap``."""
    kafka = settings.kafka
    datadir = settings.service.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        "riskstream",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        # Tansu: the default session timeout makes every start and rebalance wait ~30 s.
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=max(0.5, kafka.session_timeout_s / 6),
        consumer_auto_offset_reset="earliest",
        datadir=str(datadir),
        web_host=settings.service.bind_host,
        web_enabled=False,
    )
    app.transport.Consumer = _fetch_wait_consumer(kafka.fetch_wait_ms, kafka.fetch_min_bytes)
    outputs = Outputs(bootstrap, kafka.output_linger_ms)
    pipeline = Pipeline(settings, outputs, bootstrap)
    # JSON bytes, read and written by _table_get / _table_put (large values in parts); a
    # checkpoint written by the json codec before reads the same. "window-state" holds a
    # partition's whole checkpoint, windows and alerts in one value (``_stored_alerts``);
    # "alert-state" is only read, for checkpoints written before.
    window_state = app.Table("window-state", default=None, partitions=kafka.partitions,
                             value_type=bytes)
    alert_state = app.Table("alert-state", default=None, partitions=kafka.partitions,
                            value_type=bytes)
    app.riskstream_pipeline = pipeline  # for tests and introspection

    # Why the worker stopped itself, if it did (``cmd_worker`` then exits non-zero).
    failed: list[str] = []
    app.riskstream_failed = failed

    def fail(why: str, exc: BaseException | None = None) -> None:
        """Stop the worker on a fault it cannot score past: an output or a checkpoint the
        broker did not take, an error outside one event's scoring (those go to dead-letter,
        ``Pipeline.score_batch``), the gateway gone. Nothing is checkpointed or acked from
        now on, and no agent takes another batch: the restart (the supervisor, ``up``, the
        orchestrator) reads the input again from the last whole checkpoint. Going on instead
        would lose the batch in hand: a later checkpoint would cover offsets past it, and its
        replay would be skipped as applied."""
        if not failed:
            failed.append(why)
            log.critical("stopping the worker: %s", why, exc_info=exc)
            os.kill(os.getpid(), signal.SIGTERM)

    outputs.on_error = lambda exc: fail("an output was not delivered", exc)

    # Batches scored since the last checkpoint, acked once a whole checkpoint covers them.
    scored: list[faust.EventT] = []
    checkpoint_due = [0.0]

    # Checkpoints taken, waiting for the outputs before them to be acknowledged, oldest first:
    # (sequence, [(partition, "stream:partition", state), ...], the
    # batches it covers), the states as JSON taken when the checkpoint was (the live state
    # moves on).
    taken: deque[tuple[int, list[tuple[int, str, bytes]], list]] = deque()
    sequence = [0]
    sealing: set[asyncio.Task] = set()  # checkpoints written, to be sealed, then acked

    def checkpoint(*, block: bool = False) -> None:
        """Window and alert state of every input partition held, with the offset it covers,
        written once every output so far is acknowledged: a checkpoint never covers an output
        that could still be lost. At most every ``checkpoint_interval_s`` (a state write per
        batch cost more than scoring), when a batch was scored since the last one.

        Every partition held, not only the scored ones: a batch of one partition can change
        the alert state kept under another (a group's window alert is kept under the partition
        that saw the group first; a stream's alerts resolve together), and that change must be
        in the checkpoint that acks the batch. (Checkpointing each partition on its own
        schedule cut the loop's longest stalls but not the latency, and lost that.)

        The state is taken now; it is written when the outputs are acknowledged
        (``Outputs.when_delivered``), the loop scoring on meanwhile: waiting for them here
        (a flush) held the loop ~10-35 ms per checkpoint at half load. ``block``: wait, and
        write every checkpoint taken (``drain``)."""
        checkpoint_due[0] = time.monotonic() + kafka.checkpoint_interval_s
        if failed:
            return  # after a fault nothing more is acked (``fail``)
        if scored:
            # partitions released at revocation are not held: their next owner checkpoints them
            live = list(pipeline.windows)
            alert_states = pipeline.alerts.json_states([f"{s}:{p}" for s, p in live])
            states = []
            for stream, partition in live:
                agg, offset = pipeline.windows[(stream, partition)]
                key = f"{stream}:{partition}"
                states.append((partition, key, b'{"offset":%d,"windows":%b,"alerts":%b}'
                               % (offset, agg.json_state(), alert_states[key])))
            sequence[0] += 1
            taken.append((sequence[0], states, scored[:]))
            scored.clear()
            if not block:
                upto = sequence[0]
                outputs.when_delivered(lambda: write_taken(upto))
        if block:
            outputs.flush()
            write_taken(sequence[0])

    def write_taken(upto: int) -> None:
        """Write the checkpoints taken up to sequence ``upto``, in order (a later one's
        acknowledgement may come first: it covers the earlier outputs too), each then sealed
        and its batches acked (``seal_and_ack``)."""
        while taken and taken[0][0] <= upto:
            _, states, batches = taken.popleft()
            sent = []
            for partition, key, state in states:
                sent += _table_put(window_state, partition, key, state,
                                   kafka.checkpoint_chunk_bytes)
            task = asyncio.ensure_future(seal_and_ack(sent, {p for p, *_ in states}, batches))
            sealing.add(task)
            task.add_done_callback(sealing.discard)

    # Tansu 0.6 reports a partition's end offset as its last batch's base offset + 1, and a
    # Faust recovery reads a changelog up to that end only: the records after the first of
    # the last batch are not restored. So a checkpoint is whole once a record follows it in a
    # later batch: a marker written once the checkpoint is delivered. Only then are the input
    # batches it covers acked, and Faust commits only acked offsets: after a crash the input
    # is read again from where a whole checkpoint ends, and no batch is left out of the
    # windows. A crash loses at most the latest checkpoint, whose parts (``_table_put``)
    # never overwrite the one before: the worker restarts from that one.
    async def seal_and_ack(sent: list[asyncio.Future], partitions: set[int],
                           batches: list[faust.EventT]) -> None:
        try:
            await asyncio.gather(*sent)
            await asyncio.gather(*(_table_set(window_state, partition, SEAL_KEY, b"{}")
                                   for partition in partitions))
        except Exception as exc:  # its batches stay unacked: read again after a restart
            fail(f"checkpoint of partitions {sorted(partitions)} not delivered", exc)
            return
        if not failed:
            for event in batches:
                event.ack()

    async def drain() -> bool:
        """Checkpoint everything scored, seal it and ack its batches: before Faust waits for
        every batch to be acked (revocation, shutdown: ``_fetch_wait_consumer``), and when a
        partition is handed over. False after a fault (``fail``, which stops the worker, not
        the caller): nothing more is acked, and nothing should wait for it."""
        if not failed:
            try:
                checkpoint(block=True)
            except Exception as exc:
                fail("the checkpoint before a hand-over or a stop failed", exc)
            while sealing:
                await asyncio.gather(*sealing, return_exceptions=True)
        return not failed

    app.riskstream_drain = drain

    @app.timer(interval=kafka.checkpoint_interval_s)
    async def _checkpoint_idle() -> None:
        # A stream that stops leaves its last batches unacked until a checkpoint covers them.
        if scored and time.monotonic() >= checkpoint_due[0]:
            try:
                checkpoint()
            except Exception as exc:
                fail("checkpoint failed", exc)
        elif not scored:
            outputs.check()  # outputs of labels and timers: a failed one stops the worker

    def scoring_agent(stream: str):
        topic = app.topic(VALIDATED[stream], value_serializer="raw", key_serializer="raw")

        async def agent(batches: faust.StreamT) -> None:
            # Acks are manual: a batch is acked once a whole checkpoint covers it.
            async for event in batches.noack().events():
                if failed:
                    return  # the worker is stopping: this batch is read again after it
                partition, offset = event.message.partition, event.message.offset
                try:
                    score(event, partition, offset)
                except Exception as exc:
                    fail(f"{VALIDATED[stream]} partition {partition} offset {offset}", exc)
                    return

        def score(event: faust.EventT, partition: int, offset: int) -> None:
            """Score one batch; a replayed one only teaches the models again."""
            state_key = f"{stream}:{partition}"
            entry = pipeline.windows.get((stream, partition))
            if entry is None:
                entry = pipeline.aggregator(stream, partition,
                                             _table_get(window_state, state_key))
            agg, applied = entry
            if offset <= applied:
                # Replayed after a restart: already in the windows and outputs; the models
                # learn it again only if their snapshot is older than this batch.
                if offset > pipeline.learned_offset(stream, partition):
                    pipeline.relearn(stream, partition, orjson.loads(event.value), offset)
                event.ack()
                return
            pipeline.alert_slice(
                state_key, lambda: _stored_alerts(window_state, alert_state, state_key))
            with metrics.BATCH_SECONDS.labels(stream).time():
                pipeline.score_batch(stream, orjson.loads(event.value), agg, partition, offset)
            entry[1] = offset
            scored.append(event)
            if time.monotonic() >= checkpoint_due[0]:
                checkpoint()
            pipeline.maybe_snapshot(stream, partition, offset)

        agent.__name__ = agent.__qualname__ = f"score_{stream.replace('-', '_')}"
        return app.agent(topic, name=agent.__name__)(agent)

    @app.task
    async def _started() -> None:
        outputs.start(asyncio.get_running_loop())
        _tune_interpreter(settings.service.worker_switch_interval_ms)

    for stream in SCORED_STREAMS.values():
        scoring_agent(stream)

    @app.agent(app.topic(VALIDATED[LABELS], value_serializer="raw", key_serializer="raw"),
               name="learn_labels")
    async def learn_labels(batches: faust.StreamT) -> None:
        # Acked once learned: a batch in hand at a fault is read again after the restart.
        async for event in batches.noack().events():
            if failed:
                return
            message = event.message
            try:
                pipeline.learn_labels(orjson.loads(event.value), message.partition,
                                      message.offset)
            except Exception as exc:
                fail(f"{VALIDATED[LABELS]} partition {message.partition} offset "
                     f"{message.offset}", exc)
                return
            event.ack()

    @app.on_before_shutdown.connect
    async def _final_snapshots(app: faust.App, **kwargs: Any) -> None:
        # Best effort, each on its own: a failure is logged and the worker still stops (the
        # next start replays from the last checkpoint and snapshot).
        # After a fault, no final model snapshots: they would claim batches that no
        # checkpoint covers, and the restart scores those again.
        for step in (drain,) if failed else (drain, pipeline.close):
            try:
                if asyncio.iscoroutine(done := step()):
                    await done
            except Exception:  # logged with its traceback
                log.exception("shutdown: %s failed", step.__name__)

    @app.on_partitions_revoked.connect
    async def _hand_over(app: faust.App, revoked: set, **kwargs: Any) -> None:
        # The new owner restores these partitions' state from the checkpoint and the models
        # from the snapshot written here.
        await drain()
        for tp in revoked:
            if stream := SCORED_STREAMS.get(tp.topic):
                pipeline.release(stream, tp.partition)

    @app.on_partitions_assigned.connect
    async def _take_over(app: faust.App, assigned: set, **kwargs: Any) -> None:
        # The whole new assignment (Faust's, after every revocation).
        pipeline.keep_alert_slices({f"{SCORED_STREAMS[tp.topic]}:{tp.partition}"
                                    for tp in assigned if tp.topic in SCORED_STREAMS})

    if run_gateway:
        @app.service
        class GatewayService(mode.Service):
            """The batch validation gateway (agents/validate.py) in a child process of the
            worker: validation gets a core of its own while the worker scores. Its metrics
            are relayed here; if it dies, the worker stops loudly (the supervisor or the
            orchestrator restarts both)."""

            async def on_start(self) -> None:
                ctx = multiprocessing.get_context("spawn")
                self._stop = ctx.Event()
                receive, send = ctx.Pipe(duplex=False)
                self._process = ctx.Process(
                    target=validate.run_child, name="riskstream-gateway", daemon=True,
                    args=(bootstrap, self._stop, send, os.getpid(), settings.service.log_level))
                self._process.start()
                send.close()
                loop = asyncio.get_running_loop()
                self._relay = loop.run_in_executor(None, self._relay_metrics, receive)
                self._relay.add_done_callback(self._exited)

            def _relay_metrics(self, receive: Any) -> None:
                """Replay the gateway's metrics until its end of the pipe closes."""
                while True:
                    try:
                        metrics.replay(receive.recv())
                    except EOFError:
                        break
                self._process.join()

            def _exited(self, _future: asyncio.Future) -> None:
                if not self._stop.is_set():
                    # Crash loudly: the supervisor (or the orchestrator) restarts the worker.
                    fail(f"the validation gateway exited with code {self._process.exitcode}")

            async def on_stop(self) -> None:
                self._stop.set()
                try:
                    await asyncio.wait_for(asyncio.shield(self._relay), timeout=30)
                except TimeoutError:
                    log.error("validation gateway did not stop in 30 s; killing it")
                    self._process.kill()

    return app
