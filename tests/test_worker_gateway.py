"""The worker's validation gateway runs in a child process: it lives and dies with its worker."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from factories import encode, make_metric, make_transaction
from processes import GATEWAY, Process, alive, children, wait_until
from prometheus_client import REGISTRY

from agents.validate import Gateway
from pipelines.broker import EmbeddedBroker, ensure_topics
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


def test_a_killed_worker_takes_its_gateway_with_it(tmp_path):
    with EmbeddedBroker() as broker:  # its own: the worker joins the pipeline's groups
        ensure_topics(broker.bootstrap, partitions=2)
        worker = Process(["worker"], {"RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
                                      "RISKSTREAM_STATE_DIR": str(tmp_path / "state"),
                                      "RISKSTREAM_LAKE_PATH": str(tmp_path / "lake")},
                         tmp_path / "worker.log")
        gateway = None
        try:
            gateway = wait_until(lambda: children(worker.proc.pid, GATEWAY), timeout_s=60,
                                 what="the worker's gateway process")[0]
            # Its watcher runs once the gateway consumes. Killed earlier, between the child's
            # exec and the worker writing its start data, the child dies of "EOFError: Ran
            # out of input" before the gateway runs (failed CI once, 2026-12-05; reproduced
            # by killing the worker as soon as the child shows).
            wait_until(lambda: "gateway consuming" in worker.log(), timeout_s=60,
                       what="the gateway consuming")
            worker.kill()  # SIGKILL: the worker cannot stop it
            wait_until(lambda: not alive(gateway), timeout_s=20,
                       what="the gateway to notice its worker died and exit")
            log = worker.log()
            assert "the worker is gone; the gateway stops" in log, log[-3000:]
        finally:
            worker.stop()
            if gateway is not None and alive(gateway):
                os.kill(gateway, signal.SIGKILL)


def test_a_worker_whose_gateway_dies_stops_with_exit_code_70(tmp_path):
    # Killed as soon as it shows, while Faust is still starting: the worker must still stop
    # as a fault (70, the supervisor restarts it), not die of its own SIGTERM (143).
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=2)
        worker = Process(["worker"], {"RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
                                      "RISKSTREAM_STATE_DIR": str(tmp_path / "state"),
                                      "RISKSTREAM_LAKE_PATH": str(tmp_path / "lake")},
                         tmp_path / "worker.log")
        try:
            gateway = wait_until(lambda: children(worker.proc.pid, GATEWAY), timeout_s=60,
                                 what="the worker's gateway process")[0]
            os.kill(gateway, signal.SIGKILL)
            wait_until(lambda: worker.proc.poll() is not None, timeout_s=60,
                       what="the worker stopping after its gateway died")
        finally:
            code = worker.stop()
        log = worker.log()
        assert code == 70, log[-3000:]
        assert "the validation gateway exited with code -9" in log


def test_fausts_consumer_fetches_with_our_wait_and_size(tmp_path, monkeypatch):
    # Faust fixes its consumer's fetch wait at 1,500 ms; on Tansu every hop would wait that
    # long. The worker swaps in its own settings through private Faust/aiokafka names, so a
    # library upgrade that renames them must fail here, not slow the pipeline silently.
    from pipelines.app import build_app
    from pipelines.settings import Settings

    monkeypatch.setenv("RISKSTREAM_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("RISKSTREAM_KAFKA_FETCH_WAIT_MS", "17")
    monkeypatch.setenv("RISKSTREAM_KAFKA_FETCH_MIN_BYTES", "4321")
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=1)
        app = build_app(Settings(), broker.bootstrap, run_gateway=False)
        async def nothing(*_args):
            pass

        async def worker_consumer():  # aiokafka objects want a running loop
            faust_consumer = app.transport.create_consumer(
                callback=nothing, on_partitions_revoked=nothing, on_partitions_assigned=nothing)
            thread = faust_consumer._new_consumer_thread()
            return thread._create_worker_consumer(app.transport)

        try:
            consumer = asyncio.run(worker_consumer())
        finally:
            app.riskstream_pipeline.rules_source.close()
        assert (consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (17, 4321)



def test_the_gateway_produces_with_its_own_linger(monkeypatch):
    # It batches by its read already: a linger only holds every event (README, Speed), so it
    # is 1 ms, not the 10 ms of the other producers, and the setting reaches the client.
    from agents import validate

    configs: list[dict] = []
    real = validate.Producer
    monkeypatch.setattr(validate, "Producer", lambda config: configs.append(config) or real(config))
    with EmbeddedBroker() as broker:
        for env, expected in ((None, 1), ("7", 7)):
            if env is not None:
                monkeypatch.setenv("RISKSTREAM_KAFKA_GATEWAY_LINGER_MS", env)
            gateway = Gateway(Settings(), broker.bootstrap)
            gateway._consumer.close()
            assert configs[-1]["linger.ms"] == expected


def test_the_worker_hands_the_gil_over_every_millisecond(tmp_path):
    # The consumer thread waits for the GIL up to the switch interval while the main thread
    # scores (pipelines/app.py ``_tune_interpreter``). The worker's own start-up task runs, in
    # a process of its own: the tuning also freezes the collector.
    import subprocess
    import sys

    code = ("import asyncio, gc, os, sys; from pipelines.app import GC_THRESHOLDS, build_app; "
            "from pipelines.settings import Settings; "
            "app = build_app(Settings(), sys.argv[1], run_gateway=False); "
            "asyncio.run(next(t for t in app._app_tasks if t.__name__ == '_started')()); "
            "print(sys.getswitchinterval(), gc.get_threshold() == GC_THRESHOLDS, flush=True); "
            "os._exit(0)")  # not waiting on the app's threads
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=1)
        for env, expected in (({}, "0.001 True"),
                              ({"RISKSTREAM_WORKER_SWITCH_INTERVAL_MS": "2.5"}, "0.0025 True")):
            out = subprocess.run(
                [sys.executable, "-c", code, broker.bootstrap],
                env={**os.environ, "RISKSTREAM_STATE_DIR": str(tmp_path), **env},
                capture_output=True, text=True, check=True, timeout=60)
            assert out.stdout.split("\n")[-2] == expected, out.stderr


def test_the_gateway_counts_what_it_read_and_accepted_per_stream():
    # Counted per batch (agents/validate.py): read = every input message, accepted = those
    # forwarded, the rest dead-lettered by kind; one batch of real messages from the broker.
    txns = [make_transaction() for _ in range(3)]
    sent = [("transactions", encode(t)) for t in txns]
    sent += [("transactions", b"{not json"), ("transactions", encode(txns[0]))]  # bad, duplicate
    sent += [("system-metrics", encode(make_metric())) for _ in range(2)]
    with EmbeddedBroker() as broker:  # its own: the messages are its topics' first
        ensure_topics(broker.bootstrap, partitions=1)
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        for topic, value in sent:
            producer.produce(topic, value=value)
        assert producer.flush(10) == 0
        reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "gateway-counts",
                           "enable.auto.commit": False})
        reader.assign([TopicPartition(t, 0, 0) for t in ("transactions", "system-metrics")])
        messages: list = []
        wait_until(lambda: messages.extend(reader.consume(10, timeout=1)) or len(messages) >= 7,
                   timeout_s=30, what="the seven messages back")
        reader.close()

        def count(name: str, **labels: str) -> float:
            return REGISTRY.get_sample_value(name, labels) or 0.0

        names = [("riskstream_events_in_total", "transactions"),
                 ("riskstream_events_in_total", "system-metrics"),
                 ("riskstream_validated_total", "transactions"),
                 ("riskstream_validated_total", "system-metrics"),
                 ("riskstream_rejected_total", "transactions")]
        kinds = {"riskstream_rejected_total": {"kind": "duplicate"}}
        before = [count(n, stream=s, **kinds.get(n, {})) for n, s in names]
        Gateway(Settings(), broker.bootstrap).process(messages)
        after = [count(n, stream=s, **kinds.get(n, {})) for n, s in names]
    assert [a - b for a, b in zip(after, before)] == [5, 2, 3, 2, 1]
