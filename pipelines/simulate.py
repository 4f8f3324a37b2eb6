"""Publish the simulator's messages to Kafka, paced to their event time or as fast as possible.

The generation itself is :mod:`pipelines.simulator`; this module only produces, paces, shows
progress and stops cleanly (a flush on every way out).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pipelines.kafka import producer_config
from pipelines.simulator import SimConfig, Simulator
from pipelines.topics import INPUT_TOPICS

log = logging.getLogger(__name__)

# Fast mode with no event count starts this far in the past (and never runs ahead of the wall
# clock): a day of backfill is 17 M events at 200 events/s, and stays well inside the
# validator's 7-day max_age.
FAST_BACKFILL_S = 24 * 3600.0
MAX_BACKFILL_S = 6 * 24 * 3600.0
PROGRESS_EVERY_S = 2.0
FLUSH_TIMEOUT_S = 30.0
KINDS = ("valid", "malformed", "duplicate", "label")


class _Producer(Protocol):
    """What run_simulator needs of a confluent-kafka ``Producer`` (tests pass a fake)."""

    def produce(self, topic: str, value: bytes, key: bytes) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


def default_start_ms(config: SimConfig, *, realtime: bool, max_events: int | None,
                     now_ms: int) -> int:
    """Event time of the first message.

    Real time: now. Fast: far enough in the past that ``max_events`` end about now (a day
    back when unbounded), so that valid events are never "in the future" for the validator.
    """
    if realtime:
        return now_ms
    span_s = max_events / config.rate_eps if max_events is not None else FAST_BACKFILL_S
    return now_ms - int(min(span_s, MAX_BACKFILL_S) * 1000)


def run_simulator(
    bootstrap: str,
    config: SimConfig,
    *,
    duration_s: float | None,
    max_events: int | None = None,
    realtime: bool = True,
    progress: bool = True,
    stop: threading.Event | None = None,
    start_ms: int | None = None,
    producer: _Producer | None = None,
) -> dict[str, int]:
    """Produce simulated events until a limit is reached or ``stop`` is set.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap servers. The input topics must exist (``ensure_topics``).
    config
        What to generate.
    duration_s
        Stop after this many wall-clock seconds; None: no time limit.
    max_events
        Stop after this many messages (all kinds, labels included); None: no limit.
    realtime
        True: the first event is *now* and messages go out when the wall clock reaches their
        event time (``config.rate_eps`` per second). False: as fast as the producer takes
        them, starting in the past (:func:`default_start_ms`); the event time never overtakes
        the wall clock: a fast run that catches up with now continues in real time.
    progress
        One line on stderr every ~2 s: elapsed, messages per topic, events/s (rewritten in
        place on a terminal, plain lines otherwise).
    stop
        Set it from another thread (a signal handler) to stop; Ctrl-C stops too.
    start_ms
        Event time of the first message, overriding the default above.
    producer
        A ready producer instead of a confluent-kafka one built for ``bootstrap``.

    Returns
    -------
    dict
        Messages handed to the producer, by topic (``transactions``, ``applications``,
        ``system-metrics``, ``labels``) and by kind (``valid``, ``malformed``,
        ``duplicate``, ``label``); ``total``; ``delivery_errors`` (deliveries the broker
        refused or that timed out, plus messages still unsent after the final 30 s flush).
    """
    now_ms = time.time_ns() // 1_000_000
    if start_ms is None:
        start_ms = default_start_ms(config, realtime=realtime, max_events=max_events,
                                    now_ms=now_ms)
    errors = [0]

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            if errors[0] < 5:
                log.warning("simulator: delivery failed: %s", error)
            errors[0] += 1

    if producer is None:
        from confluent_kafka import Producer

        producer = Producer(producer_config(
            bootstrap,
            **{
                # batches, not records: the embedded broker's cost is per batch it holds
                # (pipelines/broker.py)
                "linger.ms": 50,
                "compression.type": "none",
                "queue.buffering.max.messages": 500_000,
                "delivery.report.only.error": True,
                "on_delivery": on_delivery,
            },
        ))

    per_topic = dict.fromkeys(INPUT_TOPICS, 0)
    per_kind = dict.fromkeys(KINDS, 0)
    sent = 0
    t0 = time.monotonic()
    # A message is due when the wall clock reaches its event time: in real time from the start
    # of the run, in fast mode only once the backfill has caught up with now.
    anchor_ms = start_ms if realtime else now_ms
    deadline = t0 + duration_s if duration_s is not None else float("inf")
    show = _progress_printer(per_topic, t0) if progress else None
    next_progress = t0 + PROGRESS_EVERY_S
    stopped = stop.is_set if stop is not None else (lambda: False)
    produce = producer.produce
    poll = producer.poll
    try:
        for msg in Simulator(config, start_ms).messages():
            if max_events is not None and sent >= max_events:
                break
            now = time.monotonic()
            due = t0 + (msg.event_time_ms - anchor_ms) / 1000.0
            while due - now > 0.002:  # ahead of the clock: wait, serving callbacks
                if now >= deadline or stopped():
                    break
                time.sleep(min(due - now, 0.05))
                poll(0)
                now = time.monotonic()
                if show is not None and now >= next_progress:
                    show(now, sent)
                    next_progress = now + PROGRESS_EVERY_S
            if now >= deadline or stopped():
                break
            try:
                produce(msg.topic, msg.value, msg.key)
            except BufferError:  # local queue full: let it drain, then retry once
                poll(0.1)
                produce(msg.topic, msg.value, msg.key)
            sent += 1
            per_topic[msg.topic] += 1
            per_kind[msg.kind] += 1
            if sent % 1000 == 0:
                poll(0)
            if show is not None and now >= next_progress:
                show(now, sent)
                next_progress = now + PROGRESS_EVERY_S
    except KeyboardInterrupt:
        log.info("simulator: interrupted, flushing")
    finally:
        left = producer.flush(FLUSH_TIMEOUT_S)
        if left:
            log.warning("simulator: %d messages not delivered after a %.0f s flush", left,
                        FLUSH_TIMEOUT_S)
        errors[0] += left
        if show is not None:
            show(time.monotonic(), sent, final=True)
    counts = {**per_topic, **per_kind, "total": sent, "delivery_errors": errors[0]}
    log.info("simulator: sent %d messages in %.1f s (%s)", sent, time.monotonic() - t0,
             ", ".join(f"{k} {v}" for k, v in per_topic.items()))
    return counts


def _progress_printer(per_topic: dict[str, int], t0: float) -> Callable[..., None]:
    tty = sys.stderr.isatty()
    last = [t0, 0]

    def show(now: float, sent: int, final: bool = False) -> None:
        window = now - last[0]
        eps = (sent - last[1]) / window if window > 0 else 0.0
        if final:
            eps = sent / (now - t0) if now > t0 else 0.0
        last[0], last[1] = now, sent
        topics = "  ".join(f"{topic} {n:,}" for topic, n in per_topic.items())
        line = f"simulate {now - t0:7.1f} s  {topics}  {eps:,.0f} ev/s"
        if final:
            line += " (average)"
        if tty:
            sys.stderr.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return show
