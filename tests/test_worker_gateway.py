"""The worker's validation gateway runs in a child process: it lives and dies with its worker."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from processes import GATEWAY, Process, alive, children, wait_until

from pipelines.broker import EmbeddedBroker, ensure_topics

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
            worker.kill()  # SIGKILL: the worker cannot stop it
            wait_until(lambda: not alive(gateway), timeout_s=20,
                       what="the gateway to notice its worker died and exit")
            assert "the worker is gone; the gateway stops" in worker.log()
        finally:
            worker.stop()
            if gateway is not None and alive(gateway):
                os.kill(gateway, signal.SIGKILL)


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
