"""End to end, as a user runs it: `riskstream up`, `riskstream sql` in another shell, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from itertools import islice

import pytest
import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from processes import GATEWAY, ROOT, STATUS_LINE, alive, children, start_up, wait_until

from pipelines.broker import EmbeddedBroker, ensure_topics
from pipelines.settings import KafkaSettings
from pipelines.simulator import SimConfig, Simulator
from pipelines.topics import INPUT_TOPICS, LABELS, OUTPUT_TOPICS
from schemas.common import parse_event_time
from sinks.clickhouse import query_rows

pytestmark = pytest.mark.integration


def test_the_embedded_broker_has_two_partitions_a_topic_unless_told(monkeypatch):
    monkeypatch.delenv("RISKSTREAM_KAFKA_PARTITIONS", raising=False)
    assert KafkaSettings().partitions == 4  # a cluster's: room for four workers
    assert KafkaSettings().embedded_partitions() == 2
    assert KafkaSettings().embedded_partitions(workers=3) == 3  # one each at least
    monkeypatch.setenv("RISKSTREAM_KAFKA_PARTITIONS", "4")
    assert KafkaSettings().embedded_partitions() == 4


def _cpus_of_threads(pid: int) -> set[int]:
    """Every CPU some thread of ``pid`` may run on."""
    cpus: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        cpus |= os.sched_getaffinity(int(task))
    return cpus


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
        # The embedded broker's topics have 2 partitions, and the workers were told so.
        bootstrap = re.search(r"broker +(\S+) \(embedded Tansu, in memory, 2 partitions per "
                              r"topic\)", out_path.read_text()).group(1)
        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
        assert {len(topics[t].partitions) for t in (*INPUT_TOPICS, *OUTPUT_TOPICS)} == {2}
        assert "expected 4" not in (tmp_path / "state" / "logs" / "worker.log").read_text()
        pids = [p["pid"] for p in status["processes"].values()] + [status["broker_pid"]]
        gateway = children(status["processes"]["worker"]["pid"], GATEWAY)
        assert len(gateway) == 1
        pids += gateway
        assert all(alive(pid) for pid in pids)
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:  # the worker has a core of its own, every other process the rest
            own = cpus[-1]
            assert f"worker on CPU {own}, everything else on CPU" in out_path.read_text()
            worker = status["processes"]["worker"]["pid"]
            assert _cpus_of_threads(worker) == {own}
            for pid in pids:
                if pid != worker:  # the broker, the worker's gateway, sink, dispatch, simulator
                    assert own not in _cpus_of_threads(pid), pid

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


def _simulate(bootstrap: str, *args: str) -> tuple[dict[str, int], str]:
    """`riskstream simulate ARGS`; its final counts (last line of stderr) and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
           "RISKSTREAM_METRICS_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "simulate", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    return {k: int(v) for k, v in (kv.split("=") for kv in last.split())}, done.stderr


def _messages(bootstrap: str, topic: str) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "sim-check",
                  "enable.auto.commit": False})
    try:
        out = []
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            c.assign([TopicPartition(topic, p, 0)])
            deadline, offset = time.monotonic() + 60, -1
            while offset < high - 1:  # to the end of the partition, however slow the fetches
                assert time.monotonic() < deadline, f"{topic}[{p}]: read to {offset} of {high}"
                for m in c.consume(5000, timeout=1.0):
                    if not m.error():
                        out.append(m.value())
                        offset = m.offset()
        return out
    finally:
        c.close()


def test_simulate_on_the_command_line(tmp_path):
    """`riskstream simulate`: --seed, the shares and the label delay reach the simulator, the
    messages reach the broker, --duration stops it, and it shows progress."""
    with EmbeddedBroker() as cluster:
        ensure_topics(cluster.bootstrap, partitions=2, topics=INPUT_TOPICS)
        args = ("--fast", "--events", "5000", "--malformed", "0.2", "--duplicates", "0.1",
                "--label-delay", "2", "--start", "2025-06-01T00:00:00Z")
        counts, err = _simulate(cluster.bootstrap, *args, "--seed", "3")
        assert counts["total"] == 5000 and counts["delivery_errors"] == 0
        slots = counts["total"] - counts["label"]
        assert counts["malformed"] / slots == pytest.approx(0.2, abs=0.03)
        assert counts["duplicate"] / slots == pytest.approx(0.1, abs=0.03)
        assert "simulate" in err and "(average)" in err  # progress, and its final line
        values = {t: _messages(cluster.bootstrap, t) for t in INPUT_TOPICS}
        assert {t: len(v) for t, v in values.items()} == {t: counts[t] for t in INPUT_TOPICS}
        sent = {}
        for topic in INPUT_TOPICS:
            if topic == LABELS:
                continue
            for value in values[topic]:
                try:
                    event = orjson.loads(value)
                    sent[event["event_id"]] = parse_event_time(event["event_time"])
                except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
                    pass  # a malformed message
        labels = [orjson.loads(v) for v in values[LABELS]]
        assert labels and all(
            parse_event_time(lab["event_time"]) - sent[lab["target_event_id"]] == 2000
            for lab in labels)
        # Deterministic for a seed (and a start): exactly the simulator's messages.
        config = SimConfig(seed=3, malformed_share=0.2, duplicate_share=0.1, label_delay_s=2)
        start = parse_event_time("2025-06-01T00:00:00Z")
        expected = islice(Simulator(config, start).messages(), 5000)
        assert sorted(v for vs in values.values() for v in vs) == sorted(m.value for m in expected)
        assert _simulate(cluster.bootstrap, *args, "--seed", "4")[0] != counts
        timed, err = _simulate(cluster.bootstrap, "--rate", "200", "--seed", "3",
                               "--duration", "2")
        assert 0 < timed["total"] and "(average)" in err
