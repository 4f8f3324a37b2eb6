"""Prometheus metrics of every stage, and the endpoint each process serves them on."""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

EVENTS_IN = Counter("riskstream_events_in_total", "Input messages read", ["stream"])
VALIDATED = Counter("riskstream_validated_total", "Events accepted by validation", ["stream"])
REJECTED = Counter("riskstream_rejected_total", "Events sent to dead-letter", ["stream", "kind"])
RELEARN_FAILED = Counter("riskstream_relearn_failed_total",
                         "Replayed events the models could not learn again (skipped)", ["stream"])
SCORED = Counter("riskstream_scored_total", "Events scored", ["stream"])
LABELS_LEARNED = Counter("riskstream_labels_learned_total", "Delayed labels learned", ["stream"])
LABELS_UNMATCHED = Counter("riskstream_labels_unmatched_total",
                           "Labels whose event's features were no longer held", ["stream"])
LATE = Counter("riskstream_late_events_total", "Events too late for their window", ["stream"])
ALERTS = Counter("riskstream_alerts_total", "Alerts emitted", ["rule"])
DELIVERIES = Counter("riskstream_alert_deliveries_total", "Alert deliveries", ["channel", "outcome"])
AGGREGATES = Counter("riskstream_aggregates_total", "Windows emitted", ["stream"])
BATCH_SECONDS = Histogram("riskstream_batch_seconds", "Time to process one batch", ["stage"])
LAG = Gauge("riskstream_consumer_lag", "Messages behind the end of the topic", ["topic"])
ALIVE = Gauge("riskstream_last_loop_timestamp_seconds",
              "Wall-clock time of a stage's last loop iteration (liveness)", ["stage"])


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``host:port``; ``None`` or 0 serves nothing."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)

# What the scorers decide (dashboards/live.py draws them): one observation per scored event.
# Buckets of 0.05 up to 1: a score histogram with the review/decline thresholds visible.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
SCORES = Histogram("riskstream_score", "Scores of scored events", ["stream"],
                   buckets=SCORE_BUCKETS)


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each of ``values`` (a labelled child), with one increment
    per bucket touched and one of the sum, instead of two locked increments and a scan of the
    bounds per value: per scored event that was ~4 % of the worker under py-spy. Uses the
    child's ``_upper_bounds``, ``_buckets`` and ``_sum`` (prometheus_client's own layout, what
    ``observe`` updates); a NaN lands in no bucket, as with ``observe``."""
    if not values:
        return
    bounds = histogram._upper_bounds
    last = len(bounds)
    for i, n in Tally(bisect_left(bounds, v) for v in values if v == v).items():
        if i < last:
            histogram._buckets[i].inc(n)
    histogram._sum.inc(sum(values))


DECISIONS = Counter("riskstream_decisions_total", "Decisions of scored events",
                    ["stream", "decision"])

# Model quality over the last labelled events (agents/quality.py), per stream and role
# (champion | challenger); NaN while undefined (one class only in the window).
MODEL_ROC_AUC = Gauge("riskstream_model_roc_auc", "ROC AUC over the last labelled events",
                      ["stream", "role"])
MODEL_AVERAGE_PRECISION = Gauge("riskstream_model_average_precision",
                                "Average precision over the last labelled events",
                                ["stream", "role"])
MODEL_PRECISION_AT_REVIEW = Gauge("riskstream_model_precision_at_review",
                                  "Precision at the review threshold, last labelled events",
                                  ["stream", "role"])
MODEL_RECALL_AT_REVIEW = Gauge("riskstream_model_recall_at_review",
                               "Recall at the review threshold, last labelled events",
                               ["stream", "role"])


class Relay:
    """Metrics of a child process, replayed by its parent onto the parent's own metrics.

    The worker runs its validation gateway in a child process (its own core, its own GIL);
    operators still scrape one /metrics per worker. In the child, ``Relay.install(names)``
    replaces those module metrics with recorders; ``drain()`` returns what happened since the
    last drain (counter increments summed, observations listed, gauge values last-wins) as
    plain data for a pipe, and the parent applies it with :func:`replay`.
    """

    def __init__(self) -> None:
        self._ops: dict[tuple[str, tuple[str, ...], str], Any] = {}

    def install(self, names: list[str]) -> None:
        for name in names:
            globals()[name] = _Recorded(self, name)

    def record(self, name: str, labels: tuple[str, ...], op: str, value: float) -> None:
        key = (name, labels, op)
        if op == "inc":
            self._ops[key] = self._ops.get(key, 0.0) + value
        elif op == "observe":
            self._ops.setdefault(key, []).append(value)
        else:  # "set": the last value wins
            self._ops[key] = value

    def drain(self) -> list[tuple[str, tuple[str, ...], str, Any]]:
        ops, self._ops = self._ops, {}
        return [(name, labels, op, value) for (name, labels, op), value in ops.items()]


def replay(ops: list[tuple[str, tuple[str, ...], str, Any]]) -> None:
    """Apply a child's drained metrics (:class:`Relay`) to this process's metrics."""
    for name, labels, op, value in ops:
        child = globals()[name].labels(*labels)
        if op == "inc":
            child.inc(value)
        elif op == "observe":
            for v in value:
                child.observe(v)
        else:
            child.set(value)


class _Recorded:
    """Stands in for a metric in a child process: ``.labels(...)`` -> :class:`_RecordedChild`."""

    def __init__(self, relay: Relay, name: str) -> None:
        self._relay, self._name = relay, name

    def labels(self, *labels: str) -> _RecordedChild:
        return _RecordedChild(self._relay, self._name, tuple(str(x) for x in labels))


class _RecordedChild:
    def __init__(self, relay: Relay, name: str, labels: tuple[str, ...]) -> None:
        self._relay, self._name, self._labels = relay, name, labels

    def inc(self, amount: float = 1.0) -> None:
        self._relay.record(self._name, self._labels, "inc", amount)

    def observe(self, value: float) -> None:
        self._relay.record(self._name, self._labels, "observe", value)

    def set(self, value: float) -> None:
        self._relay.record(self._name, self._labels, "set", value)

    def set_to_current_time(self) -> None:
        self.set(time.time())

    @contextmanager
    def time(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started)
