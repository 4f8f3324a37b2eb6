"""End to end, as a user runs it: `riskstream up`, `riskstream sql` in another shell, Ctrl-C."""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest
from confluent_kafka.admin import AdminClient
from processes import GATEWAY, STATUS_LINE, alive, children, start_up, wait_until

from pipelines.broker import EmbeddedBroker
from pipelines.topics import INPUT_TOPICS, OUTPUT_TOPICS
from sinks.clickhouse import query_rows

pytestmark = pytest.mark.integration


def test_up_runs_everything_and_ctrl_c_stops_it_cleanly(tmp_path):
    up, out_path, page = start_up(tmp_path, flush_interval_s=2)
    try:
        assert "lake" in out_path.read_text()

        def lake_count() -> int:
            return query_rows(tmp_path / "lake",
                              "SELECT count() AS n FROM scored_transactions")[0]["n"]

        # Another shell: `riskstream sql` shows rows, then more rows.
        first = wait_until(lake_count, timeout_s=120, what="rows in scored_transactions")
        wait_until(lambda: lake_count() > first, timeout_s=60, what="the row count to grow")
        wait_until(lambda: STATUS_LINE.search(out_path.read_text()), timeout_s=30,
                   what="a status line with every field")
        with urllib.request.urlopen(page + "api/v1/status", timeout=5) as r:
            status = json.load(r)
        assert status["events_in"]["transactions"] > 0
        pids = [p["pid"] for p in status["processes"].values()] + [status["broker_pid"]]
        gateway = children(status["processes"]["worker"]["pid"], GATEWAY)
        assert len(gateway) == 1
        pids += gateway
        assert all(alive(pid) for pid in pids)

        up.send_signal(signal.SIGINT)  # Ctrl-C
        assert up.wait(90) == 0
    finally:
        if up.poll() is None:
            up.kill()
    output = out_path.read_text()
    summary = json.loads(output.split("summary: ", 1)[1].splitlines()[0])
    # Ctrl-C drained and flushed: every scored event is in the lake.
    rows = summary["lake_rows"]
    assert rows["scored_transactions"] == lake_count() > first
    assert (rows["scored_transactions"] + rows["scored_applications"] + rows["metric_samples"]
            == summary["scored"])
    assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout_s=10,
                      what="no orphan process"), pids


def test_up_with_a_duration_on_a_named_cluster_exits_0_with_a_summary(tmp_path):
    """`riskstream up --duration N` with RISKSTREAM_KAFKA_BOOTSTRAP set: no broker of its own,
    topics created with the configured partitions, status lines, then it stops by itself."""
    with EmbeddedBroker() as cluster:  # "a real Kafka": started here, no topics yet
        up, out_path, _ = start_up(
            tmp_path, flush_interval_s=2, rate=100, args=("--duration", "15"),
            env={"RISKSTREAM_KAFKA_BOOTSTRAP": cluster.bootstrap,
                 "RISKSTREAM_KAFKA_PARTITIONS": "2", "RISKSTREAM_PII_HMAC_KEY": ""})
        try:
            assert up.wait(180) == 0
        finally:
            if up.poll() is None:
                up.kill()
        topics = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(
            timeout=10).topics
        assert {t: len(topics[t].partitions) for t in (*INPUT_TOPICS, *OUTPUT_TOPICS)} == (
            dict.fromkeys((*INPUT_TOPICS, *OUTPUT_TOPICS), 2))
    output = out_path.read_text()
    assert f"broker      {cluster.bootstrap}\n" in output  # not "(embedded Tansu ...)"
    assert "RISKSTREAM_PII_HMAC_KEY is not set" in output  # loud, on the user's console
    assert STATUS_LINE.search(output), output[-3000:]
    summary = json.loads(output.split("summary: ", 1)[1].splitlines()[0])
    assert summary["broker_pid"] is None
    rows = summary["lake_rows"]
    assert (rows["scored_transactions"] + rows["scored_applications"] + rows["metric_samples"]
            == summary["scored"])
    pids = [p["pid"] for p in summary["processes"].values()]
    assert wait_until(lambda: not any(alive(pid) for pid in pids), timeout_s=10,
                      what="no orphan process"), pids
