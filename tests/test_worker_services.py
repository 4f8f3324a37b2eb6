"""The worker serves its own live dashboard and writes a report on a schedule, when configured
(pipelines/worker_services.py); both are children that stop with it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from processes import GATEWAY, ROOT, Process, alive, children, wait_until
from test_report import simulate_lake

from pipelines.broker import EmbeddedBroker, ensure_topics, free_port
from sinks.clickhouse import query_rows

pytestmark = pytest.mark.integration


def test_the_worker_serves_its_dashboard_and_writes_reports_on_a_schedule(tmp_path):
    now_ms = int(time.time() * 1000)
    lake = tmp_path / "lake"
    simulate_lake(lake, days=2, events=4_000, now_ms=now_ms)
    reports = tmp_path / "reports"
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=2)
        worker = Process(["worker"], {
            "RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RISKSTREAM_STATE_DIR": str(tmp_path / "state"), "RISKSTREAM_LAKE_PATH": str(lake),
            "RISKSTREAM_METRICS_PORT": str(free_port()), "RISKSTREAM_DASHBOARD_PORT": "0",
            "RISKSTREAM_REPORT_EVERY": "1h", "RISKSTREAM_REPORT_SINCE": "2d",
            "RISKSTREAM_REPORT_HORIZON": "6h", "RISKSTREAM_REPORT_DIR": str(reports)},
            tmp_path / "worker.log")
        spawned: list[int] = []
        try:
            url = wait_until(lambda: re.search(r"live dashboard: (http://\S+/)", worker.log()),
                             timeout_s=90, what="the worker's dashboard URL").group(1)
            # Loopback unless RISKSTREAM_BIND_HOST says otherwise.
            assert url.startswith("http://127.0.0.1:"), url
            spawned = children(worker.proc.pid, GATEWAY)
            assert len(spawned) == 3  # the gateway, the dashboard, the report

            def snapshot() -> dict | None:
                with urllib.request.urlopen(url + "api/v1/metrics", timeout=10) as r:
                    s = json.load(r)
                return s if s["hosts"] and s["recent_alerts"] else None

            snap = wait_until(snapshot, timeout_s=60, what="alerts and hosts from the lake")
            assert snap["version"] == 1 and set(snap["streams"]) == {
                "transactions", "applications", "system-metrics"}
            assert len(snap["hosts"][0]["max_score"]) == 30
            with urllib.request.urlopen(url, timeout=10) as r:
                assert "EventSource" in r.read().decode()
            with urllib.request.urlopen(url + "api/v1/metrics/realtime?events=2",
                                        timeout=10) as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                events = [json.loads(line[6:]) for line in r if line.startswith(b"data: ")]
            assert len(events) == 2 and events[1]["ts"] > events[0]["ts"]  # a new sample each

            latest = reports / "latest.json"
            wait_until(latest.exists, timeout_s=120, what="the worker's first report")
            data = json.loads(latest.read_text())
            start, end = data["period"]["start_ms"], data["period"]["end_ms"]
            n = query_rows(lake, f"""
                SELECT count() AS n FROM scored_transactions
                WHERE event_time >= fromUnixTimestamp64Milli(toInt64({start}), 'UTC')
                  AND event_time < fromUnixTimestamp64Milli(toInt64({end}), 'UTC')""")[0]["n"]
            assert data["totals"]["transactions"]["n"] == n > 0
            assert data["period"]["since_s"] == 2 * 86_400
            assert data["period"]["horizon_s"] == 6 * 3600
            assert (reports / "latest.html").read_text().count("<svg") >= 10
            assert "report written:" in worker.log()
        finally:
            worker.stop()
        for pid in spawned:
            wait_until(lambda pid=pid: not alive(pid), timeout_s=30,
                       what=f"child {pid} to stop with its worker")


def test_a_dashboard_without_a_metrics_port_is_refused_before_anything_starts(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "worker"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
             "RISKSTREAM_DASHBOARD_PORT": "8699", "RISKSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
             "RISKSTREAM_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 2
    assert "RISKSTREAM_DASHBOARD_PORT needs RISKSTREAM_METRICS_PORT" in result.stderr
