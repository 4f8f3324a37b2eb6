"""confluent-kafka client configuration shared by the batch loops (gateway, sink, dispatcher)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from pipelines.settings import KafkaSettings


def consumer_config(kafka: KafkaSettings, bootstrap: str, group_id: str, *,
                    scoring_path: bool = False, **extra: Any) -> dict:
    """Config of a consumer that commits by hand, after its effects are durable.

    ``scoring_path``: the consumer is on the way from an input event to its score (short
    fetch waits, ``fetch_wait_ms``); others wait ``background_fetch_wait_ms``."""
    session_ms = int(kafka.session_timeout_s * 1000)
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Tansu: a short session makes joins take ~3 s instead of ~23 s (measured).
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": max(500, session_ms // 6),
        "partition.assignment.strategy": "range",  # keeps events and their labels together
        "fetch.wait.max.ms": (kafka.fetch_wait_ms if scoring_path
                              else kafka.background_fetch_wait_ms),
        "fetch.min.bytes": (kafka.fetch_min_bytes if scoring_path
                            else kafka.background_fetch_min_bytes),
        **extra,
    }


def producer_config(bootstrap: str, **extra: Any) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "linger.ms": 10,
        "acks": "all",
        "enable.idempotence": False,  # Tansu has no idempotent/transactional producer
        **extra,
    }


def readable(message: Message, log: logging.Logger, who: str) -> bool:
    """True when ``message`` carries data; False for end-of-partition and transient errors
    (logged); a fatal client error raises, so the process crashes loudly and is restarted."""
    error = message.error()
    if error is None:
        return True
    if error.code() == KafkaError._PARTITION_EOF:
        return False
    if error.fatal():
        raise KafkaException(error)
    log.warning("%s: consumer error: %s", who, error)
    return False


def topic_ids(admin, topics: list[str], log: logging.Logger, who: str) -> dict[str, str | None]:
    """Kafka's topic id per topic (None where the broker has none): it tells a recreated topic,
    whose offsets start again at 0, from the one whose offsets a sink recorded."""
    from confluent_kafka import TopicCollection

    if admin is None or not topics:
        return {}
    ids: dict[str, str | None] = {}
    for topic, future in admin.describe_topics(TopicCollection(topics)).items():
        try:
            topic_id = future.result(30).topic_id
            text = str(topic_id) if topic_id is not None else ""
            # A broker without topic ids answers the zero UUID: no id.
            ids[topic] = text if text.strip("A=") else None
        except KafkaException as exc:
            log.warning("%s: no topic id for %s (%s): a recreated topic would resume at the "
                        "old topic's offsets", who, topic, exc)
            ids[topic] = None
    return ids
