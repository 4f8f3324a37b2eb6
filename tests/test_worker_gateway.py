"""The worker's validation gateway runs in a child process: it lives and dies with its worker."""

from __future__ import annotations

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
