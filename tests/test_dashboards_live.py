"""The live dashboard of `riskstream up`: its JSON snapshot, its Server-Sent Events, and the page
in headless Chromium after events flow (charts with data in the DOM, a screenshot saved)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import start_up, wait_until

from dashboards.live import LiveDashboard, histograms

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def test_server_sent_events_are_each_a_new_sample_even_when_sampling_is_slow():
    import io
    import threading
    import time

    def slow_scrape() -> list:
        time.sleep(0.15)  # slower than the 0.05 s interval: a busy machine
        return []

    class Handler:
        def __init__(self) -> None:
            self.wfile = io.BytesIO()
            self.close_connection = False

        def send_response(self, code: int) -> None:
            assert code == 200

        def send_header(self, *_: str) -> None:
            pass

        def end_headers(self) -> None:
            pass

    dashboard = LiveDashboard(slow_scrape, lambda: {}, None, interval_s=0.05).start()
    try:
        handler = Handler()
        served = threading.Thread(target=dashboard._stream, args=(handler, 4))
        served.start()
        served.join(10)
        assert not served.is_alive()
    finally:
        dashboard.close()
    events = [json.loads(line[6:]) for line in handler.wfile.getvalue().splitlines()
              if line.startswith(b"data: ")]
    assert len(events) == 4
    assert all(b["ts"] > a["ts"] for a, b in zip(events, events[1:]))


def test_histograms_turn_cumulative_buckets_into_bins_summed_over_processes():
    samples = [("riskstream_score_bucket", {"stream": "transactions", "le": le}, v)
               for le, v in (("0.5", 3.0), ("1.0", 5.0), ("+Inf", 5.0))] * 2
    assert histograms(samples) == {"transactions": {"edges": [0.5, 1.0], "counts": [6, 4],
                                                    "total": 10}}


@pytest.fixture(scope="module")
def up(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`riskstream up` at 300 events/s; yields the dashboard URL and the run directory."""
    tmp = tmp_path_factory.mktemp("live")
    proc, _, url = start_up(tmp, flush_interval_s=1)
    try:
        yield url, tmp
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()


def _snapshot(url: str) -> dict:
    with urllib.request.urlopen(url + "api/v1/metrics", timeout=10) as r:
        assert r.headers["Content-Type"] == "application/json"
        return json.load(r)


def _flowing(url: str) -> dict | None:
    s = _snapshot(url)
    ready = (s["streams"]["transactions"]["in_per_s"] > 0
             and s["scores"].get("transactions", {}).get("total", 0) > 0
             and s["streams"]["transactions"]["decisions"]
             and s["hosts"] and s["lag"])
    return s if ready else None


@pytest.mark.integration
def test_snapshot_sse_and_the_page_in_chromium(up, tmp_path):
    url, _ = up
    assert url.startswith("http://127.0.0.1:"), url  # loopback unless RISKSTREAM_BIND_HOST
    snap = wait_until(lambda: _flowing(url), timeout_s=120, interval_s=1,
                      what="events flowing through the dashboard")
    tx = snap["streams"]["transactions"]
    assert tx["events_in"] > 0 and tx["in_per_s"] > 0
    assert sum(snap["scores"]["transactions"]["counts"]) == snap["scores"]["transactions"]["total"]
    assert set(tx["decisions"]) <= {"approve", "review", "decline"}
    assert len(snap["hosts"][0]["max_score"]) == 30
    # The status JSON is still there.
    with urllib.request.urlopen(url + "api/v1/status", timeout=5) as r:
        assert json.load(r)["events_in"]["transactions"] > 0

    # SSE: one JSON snapshot per event, newer each time.
    with urllib.request.urlopen(url + "api/v1/metrics/realtime", timeout=10) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = []
        for line in r:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
    assert events[1]["ts"] > events[0]["ts"] and events[1]["streams"]["transactions"]

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not found: `apt-get install chromium` (make test tries to); "
                    "the page was not checked in a browser")
    common = [chromium, *CHROMIUM_FLAGS, "--window-size=1400,1500",
              "--virtual-time-budget=5000"]
    # ?events=3: the page renders 3 snapshots from the SSE stream, then closes it (an open
    # stream would hold virtual time forever).
    page = url + "?events=3"
    dom = subprocess.run([*common, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", page],
                         capture_output=True, text=True, timeout=90).stdout
    assert 'data-sse-events="3"' in dom, dom[-2000:]
    points = dict(re.findall(r'data-chart="([a-z-]+)" data-points="(\d+)"', dom))
    for chart in ("throughput", "scores-transactions", "scores-applications", "decisions",
                  "hosts"):
        assert int(points.get(chart, 0)) > 0, (chart, points)
    assert re.search(r'id="throughput"[^>]*>.*?<path d="M', dom, re.S)
    shot = tmp_path / "live.png"
    subprocess.run([*common, f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={shot}", page],
                   capture_output=True, timeout=90)
    assert shot.exists() and shot.stat().st_size > 30_000
    print(f"live dashboard screenshot: {shot}")
