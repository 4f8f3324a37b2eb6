"""The alert dispatcher: reads ``alerts`` and delivers each alert to the configured channels.

It touches the outside world, so it commits its offsets only after every alert of a batch was
delivered or, after ``max_attempts`` failures, sent to ``dead-letter`` as ``undeliverable``
with the reason: an alert is never silently lost. Alert ids are deterministic and sent as the
``Idempotency-Key`` header, so a receiver can drop the repeat a crash may cause.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pipelines import metrics
from pipelines.kafka import consumer_config, producer_config
from pipelines.settings import Settings
from pipelines.topics import ALERTS, DEAD_LETTER
from sinks.channels.webhook import DeliveryError, WebhookChannel

log = logging.getLogger("riskstream.alerts")

GROUP_ID = "riskstream-dispatcher"


def channels_from(settings: Settings) -> list:
    alert = settings.alert
    channels = []
    if alert.webhook_url is not None and alert.webhook_url.get_secret_value():
        channels.append(WebhookChannel(alert.webhook_url.get_secret_value(),
                                       timeout_s=alert.timeout_s))
    return channels


class Dispatcher:
    def __init__(self, settings: Settings, bootstrap: str, *, channels: list | None = None,
                 group_id: str = GROUP_ID, backoff_s: float = 0.5) -> None:
        self.settings = settings
        self.channels = channels_from(settings) if channels is None else channels
        self.max_attempts = settings.alert.max_attempts
        self.backoff_s = backoff_s
        self._consumer = Consumer(consumer_config(settings.kafka, bootstrap, group_id))
        self._producer = Producer(producer_config(bootstrap))

    def deliver(self, alert: dict, stop: threading.Event) -> bool:
        """Deliver to every channel; False when stopped before done (not committed, re-read)."""
        # The log is always a channel: on-call can grep it, and it holds no raw PII.
        log.warning("ALERT %s [%s] %s", alert["rule"], alert["severity"], alert["summary"])
        for channel in self.channels:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    channel.send(alert)
                    metrics.DELIVERIES.labels(channel.name, "delivered").inc()
                    break
                except DeliveryError as exc:
                    metrics.DELIVERIES.labels(channel.name, "failed").inc()
                    if not exc.retryable or attempt == self.max_attempts:
                        self._undeliverable(alert, channel.name, f"{exc} after {attempt} attempt(s)")
                        break
                    # Exponential backoff with full jitter.
                    if stop.wait(random.uniform(0, self.backoff_s * 2 ** (attempt - 1))):
                        return False
        return True

    def _undeliverable(self, alert: dict, channel: str, reason: str) -> None:
        log.error("alert %s undeliverable on %s: %s", alert["alert_id"], channel, reason)
        record = {"source_topic": ALERTS, "source_partition": None, "source_offset": None,
                  "key": alert["alert_id"], "kind": "undeliverable",
                  "reason": f"{channel}: {reason}", "event_id": alert.get("event_id"),
                  "original": orjson.dumps(alert).decode(), "received_at": int(time.time() * 1000)}
        self._producer.produce(DEAD_LETTER, key=ALERTS.encode(), value=orjson.dumps(record))

    def run(self, stop: threading.Event) -> None:
        self._consumer.subscribe([ALERTS])
        log.info("dispatcher: channels %s", [c.name for c in self.channels] or ["log"])
        try:
            while not stop.is_set():
                metrics.ALIVE.labels("dispatcher").set_to_current_time()
                messages = self._consumer.consume(500, timeout=0.5)
                offsets: dict[tuple[str, int], int] = {}
                for msg in messages:
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consume error: %s", msg.error())
                        continue
                    try:
                        alert = orjson.loads(msg.value())
                    except orjson.JSONDecodeError:
                        log.error("alerts[%d]@%d is not JSON; skipped", msg.partition(), msg.offset())
                    else:
                        if not self.deliver(alert, stop):
                            break
                    offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
                if offsets:
                    self._producer.flush(30)
                    self._consumer.commit(offsets=[TopicPartition(t, p, o)
                                                   for (t, p), o in offsets.items()],
                                          asynchronous=False)
        finally:
            self._producer.flush(30)
            self._consumer.close()
