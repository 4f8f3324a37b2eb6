"""The Faust app: validated batches -> scoring, windows, alert rules -> output topics.

``build_app(settings, bootstrap)`` wires it; there is no module-level App. Agents are thin:
the models are plain Python in ``agents/``. Each agent message is a JSON array of events from
one input partition (written by the validation gateway, which runs inside the worker as a
Faust service), so Faust's per-message cost is paid once per batch.

Outputs go out through one confluent-kafka producer, one JSON object per message (the stable
output schemas of ``schemas/outputs.py``), flushed at the end of every batch: Faust acks the
batch only after its outputs are acknowledged by the broker, and commits offsets after that.

Window state is flushed to the ``window-state`` table once per batch (one value per input
partition, not one write per event); the table's changelog follows the partition across
rebalances and restarts, and the stored offset makes a replayed batch a no-op.

Model snapshots (``agents/snapshot.py``): the metric detectors per input partition
(``system-metrics-p<N>``), the fraud scorers per worker (``transactions-model``,
``applications-model``: one scorer per worker sees all of its partitions), each at most every
``snapshot_interval_s`` and at shutdown, with the last learned offset of every
``"stream:partition"`` it holds. At start the worker restores them; events replayed after a
restart that are newer than the snapshot are scored again into the models only (``relearn``).
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
import logging
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import mode
import orjson
from confluent_kafka import Producer

from agents.aggregate import WindowAggregator
from agents.alerting import AlertEngine, alert_row
from agents.anomaly import STATE_VERSION as METRIC_STATE_VERSION
from agents.anomaly import MetricScorer
from agents.fraud import STATE_VERSION as FRAUD_STATE_VERSION
from agents.fraud import ApplicationScorer, TransactionScorer
from agents.rules import RulesSource
from agents.snapshot import SnapshotIncompatible, SnapshotStore
from agents.validate import Gateway
from pipelines import metrics
from pipelines.kafka import producer_config
from pipelines.settings import Settings
from pipelines.topics import (
    AGGREGATES, ALERTS, APPLICATIONS, LABELS, METRIC_ANOMALIES, METRIC_SAMPLES, MODEL_QUALITY,
    RULES, SCORED_APPLICATIONS, SCORED_TRANSACTIONS, SYSTEM_METRICS, TRANSACTIONS, VALIDATED,
)
from schemas.outputs import METRIC_SAMPLE

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Outputs:
    """The worker's producer for output topics; ``flush`` raises if any delivery failed."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = Producer(producer_config(bootstrap))
        self._error: Exception | None = None

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._error = RuntimeError(f"output delivery failed: {err}")

    def send(self, topic: str, key: str | None, record: dict) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key.encode() if key else None,
                                       value=orjson.dumps(record), on_delivery=self._delivered)
                return
            except BufferError:  # local queue full: let the broker catch up, never drop
                self._producer.poll(0.1)

    def flush(self) -> None:
        while self._producer.flush(5.0):
            log.warning("waiting for the broker to acknowledge outputs")
        if self._error is not None:
            err, self._error = self._error, None
            raise err


class Pipeline:
    """The worker's state: scorers, window aggregators and rules, per stream."""

    def __init__(self, settings: Settings, outputs: Outputs, bootstrap: str | None = None) -> None:
        m, a = settings.model, settings.alert
        self.outputs = outputs
        self.transactions = TransactionScorer(seed=m.seed, label_ttl_s=m.label_ttl_s,
                                              quality_window=m.quality_window)
        self.applications = ApplicationScorer(seed=m.seed, label_ttl_s=m.label_ttl_s,
                                              quality_window=m.quality_window)
        self.quality_interval_s = m.quality_interval_s
        self._quality_due = time.monotonic() + m.quality_interval_s
        self.anomaly_threshold = m.anomaly_threshold
        # One metric detector per input partition (series are keyed by host/metric, so a
        # series lives in one partition), snapshotted to files and restored with it.
        self._metric_scorers: dict[int, MetricScorer] = {}
        self.snapshots = SnapshotStore(m.snapshot_dir or settings.service.state_dir / "models")
        self.snapshot_interval_s = m.snapshot_interval_s
        self._learned: dict[str, int] = {}        # "stream:partition" -> last offset in a model
        self._snapshot_due: dict[str, float] = {}
        self._snapshotter = ThreadPoolExecutor(1, thread_name_prefix="snapshot")
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
            self._snapshot_due[key] = time.monotonic() + self.snapshot_interval_s
        return scorer

    def _restore_fraud(self, stream: str) -> None:
        """Restore the stream's fraud scorer from its latest snapshot; cold if none, or if
        the snapshot is incompatible (logged with the operator's action)."""
        scorer = self.fraud_scorers[stream]
        name = FRAUD_SNAPSHOT[stream]
        try:
            snap = self.snapshots.load(name, model=type(scorer).__name__,
                                       state_version=FRAUD_STATE_VERSION,
                                       feature_schema=scorer.feature_schema)
            if snap is not None:
                scorer.load_state(snap.state)
        except (SnapshotIncompatible, ValueError) as exc:
            log.error("%s: not restored, the scorer starts cold and retrains from labels: %s",
                      name, exc)
            return
        if snap is not None:
            self._learned.update(snap.manifest["offsets"])
            log.info("%s restored from snapshot %d (%d labels learned, offsets %s)", name,
                     snap.manifest["seq"], scorer.n_labels, snap.manifest["offsets"])
        self._snapshot_due[stream] = time.monotonic() + self.snapshot_interval_s

    def _snapshot_fraud(self, stream: str) -> None:
        """Snapshot the stream's scorer with the learned offsets of its partitions."""
        scorer = self.fraud_scorers[stream]
        prefix = f"{stream}:"
        offsets = {k: v for k, v in self._learned.items() if k.startswith(prefix)}
        self._snapshot_due[stream] = time.monotonic() + self.snapshot_interval_s
        # The state is copied now, on the event loop (~1 s per 100k cards and pending
        # events); compressing and writing it is not.
        self._snapshotter.submit(
            self.snapshots.save, FRAUD_SNAPSHOT[stream], scorer.to_state(),
            model=type(scorer).__name__, state_version=FRAUD_STATE_VERSION,
            feature_schema=scorer.feature_schema, offsets=offsets,
            extra={"model_version": scorer.model_version, "labels": scorer.n_labels})

    def learned_offset(self, stream: str, partition: int) -> int:
        """The last input offset the partition's models have learned (-1: none known)."""
        if stream == SYSTEM_METRICS:
            self.metric_scorer(partition)
        return self._learned.get(f"{stream}:{partition}", -1)

    def relearn(self, stream: str, partition: int, events: list[dict], offset: int) -> None:
        """Replay a batch into the models only: its outputs and windows already went out."""
        if stream == SYSTEM_METRICS:
            scorer = self.metric_scorer(partition)
            for event in events:
                scorer.score_record(event, 0)
        elif stream in self.fraud_scorers:
            score = self.fraud_scorers[stream].score_one
            for event in events:
                score(event)
        self._learned[f"{stream}:{partition}"] = offset

    def maybe_snapshot(self, stream: str, partition: int, offset: int, *, force: bool = False
                       ) -> None:
        """Snapshot the partition's models when due (at most every snapshot_interval_s)."""
        key = f"{stream}:{partition}"
        self._learned[key] = offset
        if stream in self.fraud_scorers:
            if force or time.monotonic() >= self._snapshot_due.get(stream, 0.0):
                self._snapshot_fraud(stream)
            return
        if stream != SYSTEM_METRICS or partition not in self._metric_scorers:
            return
        if not force and time.monotonic() < self._snapshot_due.get(key, 0.0):
            return
        self._snapshot_due[key] = time.monotonic() + self.snapshot_interval_s
        scorer = self._metric_scorers[partition]
        # The state is copied now, on the event loop; compressing and writing it is not.
        self._snapshotter.submit(
            self.snapshots.save, f"{stream}-p{partition}", scorer.to_state(),
            model="MetricScorer", state_version=METRIC_STATE_VERSION,
            feature_schema=scorer.model_version, offsets={key: offset})

    def release(self, stream: str, partition: int) -> None:
        """A partition moves to another worker: snapshot its models now and forget them.

        The fraud scorers are per worker: they keep the partition's card state (harmless) and
        their next snapshot no longer claims its offset.
        """
        key = f"{stream}:{partition}"
        if stream == SYSTEM_METRICS and partition in self._metric_scorers and key in self._learned:
            self.maybe_snapshot(stream, partition, self._learned[key], force=True)
        self._metric_scorers.pop(partition, None)
        self.windows.pop((stream, partition), None)
        self._learned.pop(key, None)

    def close(self) -> None:
        """Final snapshots, written before the worker exits."""
        for stream in self.fraud_scorers:
            if any(k.startswith(f"{stream}:") for k in self._learned):
                self._snapshot_fraud(stream)
        for partition in list(self._metric_scorers):
            key = f"{SYSTEM_METRICS}:{partition}"
            if key in self._learned:
                self.maybe_snapshot(SYSTEM_METRICS, partition, self._learned[key], force=True)
        self._snapshotter.shutdown(wait=True)

    def aggregator(self, stream: str, partition: int, stored: dict | None) -> list:
        entry = self.windows.get((stream, partition))
        if entry is None:
            agg = WindowAggregator(stream, window_size_ms=self.window_size_ms,
                                   grace_ms=self.grace_ms, flag_threshold=self.flag_threshold)
            offset = -1
            if stored:
                agg.load_state(stored["windows"])
                offset = stored["offset"]
            entry = self.windows[(stream, partition)] = [agg, offset]
        return entry

    def alert_slice(self, key: str, stored: dict | None) -> None:
        """Scoring a batch of input partition ``key`` next: load its alert state once."""
        if key not in self._alert_slices:
            self._alert_slices.add(key)
            if stored:
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
                    partition: int = 0) -> None:
        """Score a batch of one input partition: outputs, windows, alerts, metrics.

        The hot path: one loop per stream, metric children looked up once per batch.
        """
        now = _now_ms()
        send, alert, add = self.outputs.send, self._alert, agg.add
        observe = metrics.SCORES.labels(stream).observe
        decisions: Counter[str] = Counter()
        late = 0
        if stream in (TRANSACTIONS, APPLICATIONS):
            scorer, topic, entity, group, value = (
                (self.transactions, SCORED_TRANSACTIONS, "card_id", "merchant_id", "amount")
                if stream == TRANSACTIONS else
                (self.applications, SCORED_APPLICATIONS, "applicant_id", "product",
                 "requested_amount"))
            score = scorer.score_record
            for event in events:
                record = score(event, now)
                send(topic, event[entity], _strip(record))
                late += not add(event[group], event["event_time"], event[value], record["score"])
                alert(stream, record, event[entity], now)
                decisions[record["decision"]] += 1
                observe(record["score"])
        else:
            score = self.metric_scorer(partition).score_record
            for event in events:
                record = score(event, now)
                series = f"{event['host']}/{event['metric']}"
                send(METRIC_SAMPLES, series, _strip(record))
                if record["score"] >= self.anomaly_threshold:
                    send(METRIC_ANOMALIES, series, record)
                late += not add(series, event["event_time"], event["value"], record["score"])
                alert(stream, record, series, now)
                observe(record["score"])
            self._silences(partition, agg.max_event_ms, now)
        for decision, n in decisions.items():
            metrics.DECISIONS.labels(stream, decision).inc(n)
        if late:
            metrics.LATE.labels(stream).inc(late)
        metrics.SCORED.labels(stream).inc(len(events))
        for window in agg.pop_closed(now):
            send(AGGREGATES, window["group_key"], window)
            metrics.AGGREGATES.labels(stream).inc()
        self._alert_tick(stream, now)

    def _silences(self, partition: int, event_clock_ms: int, now: int) -> None:
        """Series of this partition that stopped reporting, in event time: anomalies."""
        for record in self.metric_scorer(partition).silent_series(event_clock_ms):
            record = {k: record.get(k) for k in METRIC_SAMPLE.names}
            record["scored_at"] = now
            series = f"{record['host']}/{record['metric']}"
            self.outputs.send(METRIC_ANOMALIES, series, record)
            self._alert(SYSTEM_METRICS, record, series, now)

    def learn_labels(self, labels: list[dict]) -> None:
        scorers = {TRANSACTIONS: self.transactions, APPLICATIONS: self.applications}
        for label in labels:
            scorer = scorers.get(label["target_stream"])
            if scorer is None:
                continue  # metric incidents: used by evaluation, not learned online yet
            # The label's own time: merchant risk counts it from when it became known.
            if scorer.learn_label(label["target_event_id"], label["label"], label["event_time"]):
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
        for stream, scorer in self.fraud_scorers.items():
            if len(scorer.quality):
                records.append(quality_record(stream, "champion", scorer, now))
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


FRAUD_SNAPSHOT = {TRANSACTIONS: "transactions-model", APPLICATIONS: "applications-model"}


def quality_record(stream: str, role: str, scorer: Any, now_ms: int) -> dict:
    """A ``model-quality`` record (``schemas.outputs.MODEL_QUALITY_RECORD``) of a scorer's
    rolling quality; ``window_end`` is the latest event time the scorer has seen."""
    return {"model_version": scorer.model_version, "stream": stream, "role": role,
            "window_end": max(scorer._watermark, 0), **scorer.quality.summary(),
            "computed_at": now_ms}


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
    outputs = Outputs(bootstrap)
    pipeline = Pipeline(settings, outputs, bootstrap)
    window_state = app.Table("window-state", default=None, partitions=kafka.partitions)
    alert_state = app.Table("alert-state", default=None, partitions=kafka.partitions)
    app.riskstream_pipeline = pipeline  # for tests and introspection

    def scoring_agent(stream: str):
        topic = app.topic(VALIDATED[stream], value_serializer="raw", key_serializer="raw")

        async def agent(batches: faust.StreamT) -> None:
            async for event in batches.events():
                partition, offset = event.message.partition, event.message.offset
                state_key = f"{stream}:{partition}"
                agg, applied = pipeline.aggregator(stream, partition, window_state.get(state_key))
                if offset <= applied:
                    # Replayed after a restart: already in the windows and outputs; the models
                    # learn it again only if their snapshot is older than this batch.
                    if offset > pipeline.learned_offset(stream, partition):
                        pipeline.relearn(stream, partition, orjson.loads(event.value), offset)
                    continue
                pipeline.alert_slice(state_key, alert_state.get(state_key))
                with metrics.BATCH_SECONDS.labels(stream).time():
                    pipeline.score_batch(stream, orjson.loads(event.value), agg, partition)
                    outputs.flush()
                pipeline.windows[(stream, partition)][1] = offset
                window_state[state_key] = {"offset": offset, "windows": agg.to_state()}
                alert_state[state_key] = pipeline.alerts.to_state(state_key)
                pipeline.maybe_snapshot(stream, partition, offset)

        agent.__name__ = agent.__qualname__ = f"score_{stream.replace('-', '_')}"
        return app.agent(topic, name=agent.__name__)(agent)

    for stream in (TRANSACTIONS, APPLICATIONS, SYSTEM_METRICS):
        scoring_agent(stream)

    @app.agent(app.topic(VALIDATED[LABELS], value_serializer="raw", key_serializer="raw"),
               name="learn_labels")
    async def learn_labels(batches: faust.StreamT) -> None:
        async for value in batches:
            pipeline.learn_labels(orjson.loads(value))

    @app.on_before_shutdown.connect
    async def _final_snapshots(app: faust.App, **kwargs: Any) -> None:
        pipeline.close()

    @app.on_partitions_revoked.connect
    async def _hand_over(app: faust.App, revoked: set, **kwargs: Any) -> None:
        # The new owner restores these partitions' models from the snapshot written here.
        for tp in revoked:
            if tp.topic == VALIDATED[SYSTEM_METRICS]:
                pipeline.release(SYSTEM_METRICS, tp.partition)

    if run_gateway:
        @app.service
        class GatewayService(mode.Service):
            """The batch validation gateway (agents/validate.py) on a thread of the worker."""

            async def on_start(self) -> None:
                self._stop = threading.Event()
                gateway = Gateway(settings, bootstrap)
                loop = asyncio.get_running_loop()
                self._future = loop.run_in_executor(None, gateway.run, self._stop)
                self._future.add_done_callback(self._crashed)

            def _crashed(self, future: asyncio.Future) -> None:
                if not self._stop.is_set() and future.exception() is not None:
                    # Crash loudly: the supervisor (or the orchestrator) restarts the worker.
                    log.critical("validation gateway died: %r; stopping the worker",
                                 future.exception())
                    os.kill(os.getpid(), signal.SIGTERM)

            async def on_stop(self) -> None:
                self._stop.set()
                await asyncio.wait_for(self._future, timeout=30)

    return app
