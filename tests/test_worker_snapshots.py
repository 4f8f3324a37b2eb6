"""A running worker writes its periodic model snapshots from forked children and goes on."""

from __future__ import annotations

import re

import pytest
from confluent_kafka import Producer
from processes import Process, alive, wait_until

from agents.snapshot import SnapshotStore
from pipelines.bench import generate
from pipelines.broker import EmbeddedBroker, ensure_topics

pytestmark = pytest.mark.integration


def test_a_worker_writes_snapshots_in_children_and_keeps_scoring(tmp_path):
    models = tmp_path / "models"
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=2)
        worker = Process(["worker"], {"RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
                                      "RISKSTREAM_STATE_DIR": str(tmp_path / "state"),
                                      "RISKSTREAM_LAKE_PATH": str(tmp_path / "lake"),
                                      "RISKSTREAM_MODEL_SNAPSHOT_DIR": str(models),
                                      "RISKSTREAM_MODEL_SNAPSHOT_INTERVAL_S": "1"},
                         tmp_path / "worker.log")
        try:
            producer = Producer({"bootstrap.servers": broker.bootstrap})
            store = SnapshotStore(models)

            def snapshots() -> int:
                # events keep coming: a snapshot is due at a batch, every second
                for topic, key, value, _ in generate(200, seed=len(store.manifests(
                        "transactions-model"))):
                    producer.produce(topic, key=key, value=value)
                producer.flush(10)
                return len(store.manifests("transactions-model")) >= 3

            wait_until(snapshots, timeout_s=120, what="three transaction model snapshots",
                       interval_s=1.0)
            assert alive(worker.proc.pid)
            # each written by its child, which exited cleanly (a failure would be logged)
            offsets = [m["offsets"] for m in store.manifests("transactions-model")]
            assert all(o for o in offsets) and offsets == sorted(offsets, key=lambda o: sum(
                o.values()))
            assert "writer process exited" not in worker.log()
            # written by forked children, not by the worker itself
            writers = {int(pid) for pid in re.findall(
                r"snapshot models written by process (\d+)", worker.log())}
            assert writers and worker.proc.pid not in writers
        finally:
            code = worker.stop()
        assert code == 0, worker.log()[-3000:]
