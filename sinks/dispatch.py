"""The alert dispatcher: reads ``alerts``, applies silences and routes, delivers to channels.

It touches the outside world, so every alert ends delivered, silenced, or — after
``max_attempts`` tries with exponential backoff and full jitter, or at once for an error that a
retry cannot fix — ``undeliverable`` in ``dead-letter`` with the reason: never silently lost.

**Every attempt is recorded** on ``alert-deliveries`` (delivery id
``f"{alert_id}:{channel}:{attempt}"``, outcome, status code, error, latency; the sink writes the
``alert_deliveries`` table). **No resend after a restart**: the records of an alert are flushed
to the broker (``acks=all``) before the next alert is sent, and offsets are committed after
that; on start the dispatcher reads ``alert-deliveries`` back and skips every (alert, channel)
already delivered, silenced or dead-lettered. So a crash re-reads the uncommitted alerts and
sends only what had not been acknowledged. The one window left — killed between a channel's
2xx and the broker's ack of its record — resends one alert, with the same ``Idempotency-Key``
(webhook), ``Message-ID`` (e-mail) and label set (Alertmanager), which receivers deduplicate.

Routing: ``routes`` of the rules file (agents/rules.py), by severity and labels, per channel;
a channel no route names gets every alert. The log is always a channel.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from agents.rules import RuleSet, RulesInvalid, load_rules
from pipelines import metrics
from pipelines.kafka import consumer_config, producer_config, readable
from pipelines.settings import Settings
from pipelines.topics import ALERT_DELIVERIES, ALERTS, DEAD_LETTER
from schemas.validation import dead_letter_record
from sinks.channels.webhook import DeliveryError, WebhookChannel
from sinks.silences import SilenceStore, alert_labels

log = logging.getLogger("riskstream.alerts")

GROUP_ID = "riskstream-dispatcher"
# Outcomes that settle an (alert, channel): never attempted again.
FINAL = ("delivered", "silenced", "undeliverable")


def silences_path(settings: Settings) -> Path:
    return settings.alert.silences_path or settings.service.state_dir / "silences.json"


def channels_from(settings: Settings) -> list:
    """The channels whose settings are present (``RISKSTREAM_ALERT_*``)."""
    from sinks.channels.alertmanager import AlertmanagerChannel
    from sinks.channels.email import EmailChannel
    from sinks.channels.slack import SlackChannel

    a = settings.alert
    secret = (a.webhook_secret.get_secret_value() if a.webhook_secret else None) or None
    channels: list = []
    if a.webhook_url is not None and a.webhook_url.get_secret_value():
        channels.append(WebhookChannel(a.webhook_url.get_secret_value(), secret=secret,
                                       timeout_s=a.timeout_s))
    if a.slack_webhook_url is not None and a.slack_webhook_url.get_secret_value():
        channels.append(SlackChannel(a.slack_webhook_url.get_secret_value(), timeout_s=a.timeout_s))
    if a.smtp_host and a.email_to:
        channels.append(EmailChannel(
            a.smtp_host, a.smtp_port, sender=a.email_from,
            recipients=[r.strip() for r in a.email_to.split(",") if r.strip()],
            starttls=a.smtp_starttls, user=a.smtp_user,
            password=a.smtp_password.get_secret_value() if a.smtp_password else None,
            timeout_s=a.timeout_s))
    if a.alertmanager_url:
        channels.append(AlertmanagerChannel(a.alertmanager_url, timeout_s=a.timeout_s))
    return channels


def _routes(settings: Settings) -> RuleSet:
    try:
        return load_rules(settings.alert.rules_path, params=settings.rule_params())
    except RulesInvalid as exc:
        log.error("rules file invalid, every channel gets every alert:\n%s", exc)
        return RuleSet()


class Dispatcher:
    def __init__(self, settings: Settings, bootstrap: str, *, channels: list | None = None,
                 group_id: str = GROUP_ID, backoff_s: float | None = None,
                 rules: RuleSet | None = None, silences: SilenceStore | None = None,
                 now_ms: Callable[[], int] | None = None) -> None:
        a = settings.alert
        self.settings = settings
        self.channels = channels_from(settings) if channels is None else channels
        self.max_attempts = a.max_attempts
        self.backoff_s = a.backoff_s if backoff_s is None else backoff_s
        self.max_backoff_s = a.max_backoff_s
        self.rules = _routes(settings) if rules is None else rules
        self.silences = silences or SilenceStore(silences_path(settings))
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.bootstrap = bootstrap
        self.group_id = group_id
        self._consumer: Consumer | None = None
        self._producer = Producer(producer_config(bootstrap))
        self._produce_error: Exception | None = None
        # (alert_id, channel) already settled: read back from alert-deliveries on start.
        self.settled: set[tuple[str, str]] = set()

    # -- delivery ------------------------------------------------------------------------

    def route(self, alert: dict) -> list:
        names = self.rules.channels_for(alert, alert_labels(alert), [c.name for c in self.channels])
        return [c for c in self.channels if c.name in names]

    def deliver(self, alert: dict, stop: threading.Event) -> bool:
        """Deliver to every routed channel; False when stopped before done (not committed)."""
        # The log is always a channel: on-call can grep it, and it holds no raw PII.
        log.warning("ALERT %s %s [%s] %s", alert.get("status") or "firing", alert["rule"],
                    alert["severity"], alert.get("summary"))
        channels = [c for c in self.route(alert) if (alert["alert_id"], c.name) not in self.settled]
        if not channels:
            return True
        silence = self.silences.match(alert, self._now_ms())
        if silence is not None:
            for channel in channels:
                self._record(alert, channel.name, "silenced", 0,
                             error=f"silence {silence.silence_id}: {silence.comment}"[:500])
                metrics.DELIVERIES.labels(channel.name, "silenced").inc()
            return self._durable()
        for channel in channels:
            for attempt in range(1, self.max_attempts + 1):
                started = time.monotonic()
                try:
                    status = channel.send(alert)
                except DeliveryError as exc:
                    latency = (time.monotonic() - started) * 1000
                    metrics.DELIVERIES.labels(channel.name, "failed").inc()
                    self._record(alert, channel.name, "failed", attempt,
                                 status_code=exc.status_code, error=str(exc), latency_ms=latency)
                    if not exc.retryable or attempt == self.max_attempts:
                        self._undeliverable(alert, channel.name, attempt,
                                            f"{exc} after {attempt} attempt(s)")
                        break
                    # Exponential backoff with full jitter: retries of many alerts spread out.
                    cap = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                    if stop.wait(random.uniform(0, cap)):
                        self._durable()
                        return False
                else:
                    latency = (time.monotonic() - started) * 1000
                    metrics.DELIVERIES.labels(channel.name, "delivered").inc()
                    self._record(alert, channel.name, "delivered", attempt, status_code=status,
                                 latency_ms=latency)
                    break
            # Durable before the next channel or alert: a restart skips what is recorded.
            self._durable()
        return True

    def _record(self, alert: dict, channel: str, outcome: str, attempt: int, *,
                status_code: int | None = None, error: str | None = None,
                latency_ms: float | None = None) -> None:
        record = {"delivery_id": f"{alert['alert_id']}:{channel}:{attempt}",
                  "alert_id": alert["alert_id"], "channel": channel, "outcome": outcome,
                  "attempt": attempt, "status_code": status_code, "error": error,
                  "latency_ms": latency_ms, "delivered_at": self._now_ms()}
        self._producer.produce(ALERT_DELIVERIES, key=alert["alert_id"].encode(),
                               value=orjson.dumps(record), on_delivery=self._acked)
        if outcome in FINAL:
            self.settled.add((alert["alert_id"], channel))

    def _acked(self, err: object, _msg: object) -> None:
        if err is not None:
            self._produce_error = RuntimeError(f"alert-deliveries write failed: {err}")

    def _durable(self) -> bool:
        """Wait for the broker to hold every record; raise (crash, nothing committed) if not."""
        while self._producer.flush(10):
            log.warning("waiting for the broker to acknowledge delivery records")
        if self._produce_error is not None:
            err, self._produce_error = self._produce_error, None
            raise err
        return True

    def _undeliverable(self, alert: dict, channel: str, attempt: int, reason: str) -> None:
        log.error("alert %s undeliverable on %s: %s", alert["alert_id"], channel, reason)
        metrics.DELIVERIES.labels(channel, "undeliverable").inc()
        record = dead_letter_record(
            source_topic=ALERTS, source_partition=None, source_offset=None,
            key=alert["alert_id"], kind="undeliverable", reason=f"{channel}: {reason}",
            event_id=alert.get("event_id"), original=orjson.dumps(alert).decode(),
            received_at=self._now_ms())
        self._producer.produce(DEAD_LETTER, key=ALERTS.encode(), value=orjson.dumps(record),
                               on_delivery=self._acked)
        self._record(alert, channel, "undeliverable", attempt + 1, error=reason[:500])

    # -- restart -------------------------------------------------------------------------

    def load_settled(self, timeout_s: float = 60.0) -> int:
        """Read ``alert-deliveries`` to its end; remember the settled (alert, channel) pairs."""
        reader = Consumer({"bootstrap.servers": self.bootstrap,
                           "group.id": f"{self.group_id}-readback", "enable.auto.commit": False})
        n = 0
        try:
            meta = reader.list_topics(ALERT_DELIVERIES, timeout=10).topics.get(ALERT_DELIVERIES)
            if meta is None or meta.error is not None:
                return 0
            parts = sorted(meta.partitions)
            highs = {p: reader.get_watermark_offsets(TopicPartition(ALERT_DELIVERIES, p),
                                                     timeout=10)[1] for p in parts}
            reader.assign([TopicPartition(ALERT_DELIVERIES, p, OFFSET_BEGINNING) for p in parts])
            position = {p: 0 for p in parts}
            deadline = time.monotonic() + timeout_s
            # To the end: the first empty poll past every high watermark (Tansu's high
            # watermark is per record batch, a lower bound of the end).
            while time.monotonic() < deadline:
                messages = reader.consume(5000, timeout=1.0)
                if not messages and all(position[p] >= highs[p] for p in parts):
                    break
                for msg in messages:
                    if msg.error():
                        continue
                    position[msg.partition()] = msg.offset() + 1
                    try:
                        record = orjson.loads(msg.value())
                    except orjson.JSONDecodeError:
                        continue
                    if record.get("outcome") in FINAL:
                        self.settled.add((record["alert_id"], record["channel"]))
                        n += 1
            else:
                log.error("alert-deliveries read back incomplete after %.0f s: some alerts may "
                          "be sent again (with the same idempotency keys)", timeout_s)
        finally:
            reader.close()
        return n

    def run(self, stop: threading.Event) -> None:
        n = self.load_settled()
        log.info("dispatcher: channels %s; %d settled deliveries read back",
                 [c.name for c in self.channels] or ["log"], n)
        self._consumer = Consumer(consumer_config(self.settings.kafka, self.bootstrap,
                                                  self.group_id))
        self._consumer.subscribe([ALERTS])
        try:
            while not stop.is_set():
                metrics.ALIVE.labels("dispatcher").set_to_current_time()
                messages = self._consumer.consume(500, timeout=0.5)
                offsets: dict[tuple[str, int], int] = {}
                for msg in messages:
                    if not readable(msg, log, "dispatcher"):
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
                    self._durable()
                    self._consumer.commit(offsets=[TopicPartition(t, p, o)
                                                   for (t, p), o in offsets.items()],
                                          asynchronous=False)
        finally:
            self._producer.flush(30)
            self._consumer.close()
