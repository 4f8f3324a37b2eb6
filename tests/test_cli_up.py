"""End to end, as a user runs it: `riskstream up`, `riskstream sql` in another shell, Ctrl-C."""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest
from processes import GATEWAY, alive, children, start_up, wait_until

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
        wait_until(lambda: " in: transactions=" in out_path.read_text(), timeout_s=30,
                   what="a status line")
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
