"""The worker's output producer: a checkpoint is written (and then the batches it covers acked)
only once the broker has every output sent before it."""

from __future__ import annotations

import asyncio
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipelines.app import Outputs
from pipelines.topics import SCORED_TRANSACTIONS

pytestmark = pytest.mark.integration


def _in_broker(bootstrap: str, n: int, timeout_s: float = 30.0) -> int:
    """How many records the topic holds, read from the start (at most ``n``)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    # assigned, not subscribed: no group to join
    consumer.assign([TopicPartition(SCORED_TRANSACTIONS, p, OFFSET_BEGINNING) for p in range(4)])
    seen, deadline = 0, time.monotonic() + timeout_s
    try:
        while seen < n and time.monotonic() < deadline:
            seen += sum(1 for m in consumer.consume(1000, timeout=0.5) if not m.error())
    finally:
        consumer.close()
    return seen


def test_when_delivered_runs_once_every_earlier_output_is_in_the_broker(bootstrap):
    outputs = Outputs(bootstrap, linger_ms=200)  # a long linger: still in flight when asked
    events: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        outputs.start(loop)
        delivered = loop.create_future()
        for batch in range(3):
            for i in range(100):
                outputs.send(SCORED_TRANSACTIONS, f"card-{i}", {"event_id": f"{batch}-{i}"})
        outputs.when_delivered(lambda: (events.append("checkpoint"),
                                        delivered.set_result(outputs.in_flight())))
        assert events == []  # nothing acknowledged yet: 200 ms of linger
        assert await asyncio.wait_for(delivered, 30) == 0  # nothing left in flight
        # With nothing in flight it runs at once (on the loop).
        now = loop.create_future()
        outputs.when_delivered(lambda: now.set_result(True))
        assert await asyncio.wait_for(now, 5)

    asyncio.run(scenario())
    assert events == ["checkpoint"]
    assert _in_broker(bootstrap, 300) == 300


def test_an_output_the_producer_refuses_does_not_hold_back_the_checkpoints(bootstrap):
    """A record over the producer's size limit raises at once (the worker dead-letters its
    event); it must not count as in flight, or no checkpoint would be written again."""
    from confluent_kafka import KafkaException

    outputs = Outputs(bootstrap)
    with pytest.raises(KafkaException):
        outputs.send(SCORED_TRANSACTIONS, "card-1", {"blob": "x" * 2_000_000})
    ran: list[str] = []
    outputs.when_delivered(lambda: ran.append("checkpoint"))  # no loop: runs here, or never
    assert ran == ["checkpoint"] and outputs.in_flight() == 0


def test_a_failed_delivery_stops_the_worker_and_no_later_checkpoint_is_written():
    """librdkafka gives up on outputs it cannot deliver (here: no broker, a 300 ms message
    timeout): ``on_error`` runs on the loop (the worker stops), the checkpoints waiting on
    those outputs or later ones never run, and ``poll`` raises."""
    from confluent_kafka import Producer

    from pipelines.kafka import producer_config

    outputs = Outputs("127.0.0.1:1")
    outputs._producer = Producer(producer_config("127.0.0.1:1", **{"message.timeout.ms": 300}))
    ran: list[str] = []

    async def scenario() -> Exception:
        loop = asyncio.get_running_loop()
        failed = loop.create_future()
        outputs.on_error = failed.set_result
        outputs.start(loop)
        for i in range(10):
            outputs.send(SCORED_TRANSACTIONS, f"card-{i}", {"event_id": str(i)})
        outputs.when_delivered(lambda: ran.append("first"))
        outputs.send(SCORED_TRANSACTIONS, "card-x", {"event_id": "x"})
        outputs.when_delivered(lambda: ran.append("second"))
        return await asyncio.wait_for(failed, 30)

    error = asyncio.run(scenario())
    assert "output delivery failed" in str(error) and "timed out" in str(error).lower()
    assert ran == []
    with pytest.raises(RuntimeError, match="output delivery failed"):
        outputs.poll()


def test_an_idle_worker_still_learns_of_a_failed_delivery():
    """Outputs sent with no checkpoint after them (a label's dead-letter, a timer's record):
    ``check``, which the worker's checkpoint timer calls when nothing was scored, has their
    reports read once in, and a failure stops the worker. Without it no checkpoint would
    ever look at them."""
    from confluent_kafka import Producer

    from pipelines.kafka import producer_config

    outputs = Outputs("127.0.0.1:1")
    outputs._producer = Producer(producer_config("127.0.0.1:1", **{"message.timeout.ms": 300}))

    async def scenario() -> Exception:
        loop = asyncio.get_running_loop()
        failed = loop.create_future()
        outputs.on_error = failed.set_result
        outputs.start(loop)
        outputs.send(SCORED_TRANSACTIONS, "card-1", {"event_id": "1"})
        outputs.check()
        return await asyncio.wait_for(failed, 30)

    assert "output delivery failed" in str(asyncio.run(scenario()))
