"""The live dashboard of ``riskstream up``: a page, a JSON snapshot and Server-Sent Events.

Served by the supervisor's status server (pipelines/up.py) on loopback by default
(``RISKSTREAM_BIND_HOST``), three endpoints:

- ``/``: the page, plain HTML + JS with inline SVG charts, nothing fetched from elsewhere;
- ``/api/v1/metrics``: one snapshot, JSON;
- ``/api/v1/metrics/realtime``: ``text/event-stream``, one snapshot per event every
  ``interval_s`` (1.5 s), as ``data: {...}`` lines (``EventSource.onmessage`` in a browser,
  ``curl -N`` elsewhere); ``?events=N`` ends the stream after N events (the page passes its
  own ``?events=N`` on, and then stops instead of reconnecting: for headless browsers).

A snapshot holds (README "Dashboard" documents the fields): throughput per stream (events/s
in and scored, over the last ~5 s, and its history over the last ``HISTORY_S``), consumer lag
per stream and stage, score histograms and decisions per stream (the worker's
``riskstream_score`` histograms and ``riskstream_decisions_total`` counters), alerts per rule,
the processes, recent alerts and the anomalies per host of the last 30 minutes, with a
per-minute sparkline (from the lake, with chDB).

Costs: a sampler thread scrapes the children's /metrics every ``interval_s`` (loopback HTTP,
cheap); the lake and the per-stream lag (Kafka consumers) are read only while someone
watches (a request in the last 10 s), at most every 2 s and 5 s. The sampler never blocks a
client: endpoints serve the latest snapshot.

Limits: rates come from counters scraped by this process, so they restart at 0 with a child
(a restarted worker's counters start over: the rate of that step is dropped, not negative);
the lake views lag the pipeline by the sink's flush interval.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, str], float]
STREAMS = ("transactions", "applications", "system-metrics")
HISTORY_S = 300
WATCHED_S = 10.0
LAKE_EVERY_S = 2.0
LAG_EVERY_S = 5.0
SPARK_MINUTES = 30


def _sum(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == x for k, x in labels.items()))


def histograms(samples: list[Sample], name: str = "riskstream_score") -> dict[str, dict]:
    """Per stream: bin upper edges and counts per bin, from Prometheus cumulative buckets
    (summed over processes)."""
    cumulative: dict[str, dict[float, float]] = {}
    for n, labels, value in samples:
        if n == f"{name}_bucket" and labels.get("le") not in (None, "+Inf"):
            by_le = cumulative.setdefault(labels.get("stream", ""), {})
            le = float(labels["le"])
            by_le[le] = by_le.get(le, 0.0) + value
    out = {}
    for stream, by_le in cumulative.items():
        edges = sorted(by_le)
        counts, previous = [], 0.0
        for le in edges:
            counts.append(int(by_le[le] - previous))
            previous = by_le[le]
        out[stream] = {"edges": edges, "counts": counts, "total": int(previous)}
    return out


def stream_lag(bootstrap: str) -> dict[str, dict[str, int]]:
    """Messages not yet consumed per input stream: by the gateway (input topic) and by the
    worker (its ``validated-*`` topic). -1 where unknown. Approximate on Tansu."""
    from confluent_kafka import Consumer, TopicPartition

    from pipelines.topics import VALIDATED

    out: dict[str, dict[str, int]] = {s: {} for s in STREAMS}
    for stage, group, topic_of in (("gateway", "riskstream-gateway", lambda s: s),
                                   ("worker", "riskstream", lambda s: VALIDATED[s])):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(timeout=3).topics
            for stream in STREAMS:
                topic = topic_of(stream)
                if topic not in meta:
                    out[stream][stage] = -1
                    continue
                tps = [TopicPartition(topic, p) for p in meta[topic].partitions]
                lag = 0
                for tp in consumer.committed(tps, timeout=3):
                    _, high = consumer.get_watermark_offsets(tp, timeout=3, cached=False)
                    lag += max(0, high - max(tp.offset, 0))
                out[stream][stage] = lag
        except Exception:  # best effort: the dashboard never takes the supervisor down
            for stream in STREAMS:
                out[stream].setdefault(stage, -1)
        finally:
            consumer.close()
    return out


class LakeView:
    """Recent alerts and anomalies from the lake, with one private chDB session."""

    def __init__(self, lake: Path) -> None:
        from pipelines.report import LakeSource

        self.source = LakeSource(lake)

    def read(self, now_ms: int) -> dict:
        self.source.refresh()  # the files written since the last read
        since = f"fromUnixTimestamp64Milli(toInt64({now_ms - SPARK_MINUTES * 60_000}), 'UTC')"
        alerts = self.source.rows("""
            SELECT toInt64(toUnixTimestamp64Milli(created_at)) AS t, rule, severity,
                   ifNull(status, 'firing') AS status, ifNull(entity, '') AS entity,
                   ifNull(summary, '') AS summary
            FROM alerts ORDER BY created_at DESC, alert_id LIMIT 15""")
        minutes = self.source.rows(f"""
            SELECT host, toInt64(toUnixTimestamp(toStartOfMinute(event_time))) * 1000 AS t,
                   count() AS samples, max(score) AS max_score
            FROM metric_samples WHERE event_time >= {since}
            GROUP BY host, t ORDER BY host, t""")
        anomalies = self.source.rows(f"""
            SELECT host, toInt64(toUnixTimestamp(toStartOfMinute(event_time))) * 1000 AS t,
                   count() AS anomalies, argMax(metric, score) AS worst_metric
            FROM metric_anomalies WHERE event_time >= {since}
            GROUP BY host, t ORDER BY host, t""")
        start = (now_ms // 60_000 - SPARK_MINUTES + 1) * 60_000
        grid = [start + i * 60_000 for i in range(SPARK_MINUTES)]
        hosts: dict[str, dict] = {}
        for r in minutes:
            h = hosts.setdefault(r["host"], {"host": r["host"], "anomalies": 0,
                                             "worst_metric": None, "score": {}, "count": {}})
            h["score"][r["t"]] = round(r["max_score"], 4)
        for r in anomalies:
            h = hosts.setdefault(r["host"], {"host": r["host"], "anomalies": 0,
                                             "worst_metric": None, "score": {}, "count": {}})
            h["count"][r["t"]] = r["anomalies"]
            h["anomalies"] += r["anomalies"]
            h["worst_metric"] = r["worst_metric"]
        per_host = []
        for h in sorted(hosts.values(), key=lambda h: (-h["anomalies"], h["host"])):
            per_host.append({"host": h["host"], "anomalies": h["anomalies"],
                             "worst_metric": h["worst_metric"],
                             "max_score": [h["score"].get(t) for t in grid],
                             "anomalies_per_minute": [h["count"].get(t, 0) for t in grid]})
        return {"recent_alerts": alerts, "hosts": per_host, "minutes": grid}

    def close(self) -> None:
        self.source.close()


def send_body(handler, body: bytes, ctype: str) -> None:
    """A 200 answer of ``body`` on an ``http.server`` handler (never cached)."""
    handler.send_response(200)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    handler.wfile.write(body)


class LiveDashboard:
    """Builds snapshots from the children's metrics and the lake; serves the page and SSE.

    Parameters
    ----------
    scrape
        Returns the samples of every child's /metrics (pipelines/up.py's ``scrape``).
    status
        Returns the supervisor's latest status (``Status.last``): lag per group, processes.
    lake
        The lake directory, for recent alerts and anomalies; ``None`` leaves them empty.
    lag
        Returns lag per stream and stage (:func:`stream_lag`), or ``None``.
    """

    def __init__(self, scrape: Callable[[], list[Sample]], status: Callable[[], dict],
                 lake: Path | None, lag: Callable[[], dict] | None = None,
                 interval_s: float = 1.5) -> None:
        self._scrape = scrape
        self._status = status
        self._lag = lag
        self.interval_s = interval_s
        self._lake = LakeView(lake) if lake is not None else None
        self._lock = threading.Lock()
        self._fresh = threading.Condition(self._lock)  # notified at every new snapshot
        self._closed = threading.Event()
        self._history: deque[tuple[float, dict[str, float]]] = deque()
        self._snapshot: dict[str, Any] = {}
        self._samples = 0  # snapshots built so far: the SSE stream sends each one once
        self._lake_data: dict = {"recent_alerts": [], "hosts": [], "minutes": []}
        self._lag_data: dict = {}
        self._watched_at = 0.0
        self._lake_at = self._lag_at = 0.0
        self._thread: threading.Thread | None = None

    # -- sampling -------------------------------------------------------------------------

    def start(self) -> LiveDashboard:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="dashboard")
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        with self._fresh:
            self._fresh.notify_all()
        if self._thread is not None:
            self._thread.join(5)
        if self._lake is not None:
            self._lake.close()

    def _run(self) -> None:
        while not self._closed.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # never let the dashboard take the supervisor down
                log.exception("dashboard: sampling failed")

    def _watched(self) -> bool:
        return time.monotonic() - self._watched_at < WATCHED_S

    def sample(self) -> dict:
        """Scrape now, and read the lake and lag when due; return the new snapshot."""
        now = time.time()
        samples = self._scrape()
        counters = {}
        for stream in STREAMS:
            counters[f"in:{stream}"] = _sum(samples, "riskstream_events_in_total", stream=stream)
            counters[f"scored:{stream}"] = _sum(samples, "riskstream_scored_total", stream=stream)
        counters["rejected"] = _sum(samples, "riskstream_rejected_total")
        counters["alerts"] = _sum(samples, "riskstream_alerts_total")
        counters["lake_rows"] = _sum(samples, "riskstream_sink_rows_total")
        mono = time.monotonic()
        if self._watched() or not self._lake_data["minutes"]:
            if self._lake is not None and mono - self._lake_at >= LAKE_EVERY_S:
                self._lake_at = mono
                try:
                    self._lake_data = self._lake.read(int(now * 1000))
                except Exception as exc:  # a lake without files yet, a query error
                    log.debug("dashboard: lake read failed: %s", exc)
            if self._lag is not None and mono - self._lag_at >= LAG_EVERY_S:
                self._lag_at = mono
                self._lag_data = self._lag() or {}
        with self._lock:
            self._history.append((now, counters))
            while self._history and now - self._history[0][0] > HISTORY_S:
                self._history.popleft()
            self._snapshot = self._build(now, samples, counters)
            self._samples += 1
            self._fresh.notify_all()
            return self._snapshot

    def _rates(self) -> list[dict]:
        """Events/s between consecutive samples, per stream (in, scored)."""
        points = []
        items = list(self._history)
        for (t0, c0), (t1, c1) in zip(items, items[1:], strict=False):
            dt = t1 - t0
            if dt <= 0:
                continue
            point: dict[str, Any] = {"t": int(t1 * 1000)}
            for key in c1:
                if key.startswith(("in:", "scored:")):
                    before = c0.get(key, 0.0)
                    delta = c1[key] - before
                    # A child not scraped yet (0) or restarted (counters fell): no rate.
                    point[key] = round(delta / dt, 2) if delta >= 0 and before > 0 else None
            points.append(point)
        return points

    def _build(self, now: float, samples: list[Sample], counters: dict) -> dict:
        history = self._rates()
        recent = history[-3:]
        status = self._status() or {}
        streams = {}
        for stream in STREAMS:
            def rate(kind: str) -> float:
                values = [p.get(f"{kind}:{stream}") for p in recent]
                values = [v for v in values if v is not None]
                return round(sum(values) / len(values), 2) if values else 0.0

            merged: dict[str, int] = {}
            for n, lab, v in samples:
                if n == "riskstream_decisions_total" and lab.get("stream") == stream:
                    merged[lab["decision"]] = merged.get(lab["decision"], 0) + int(v)
            decisions = merged
            streams[stream] = {
                "events_in": int(counters[f"in:{stream}"]),
                "scored": int(counters[f"scored:{stream}"]),
                "in_per_s": rate("in"), "scored_per_s": rate("scored"),
                "rejected": int(_sum(samples, "riskstream_rejected_total", stream=stream)),
                "lag": self._lag_data.get(stream, {}),
                "decisions": decisions,
            }
        alerts_by_rule: dict[str, int] = {}
        for n, lab, v in samples:
            if n == "riskstream_alerts_total":
                alerts_by_rule[lab["rule"]] = alerts_by_rule.get(lab["rule"], 0) + int(v)
        return {
            "version": 1,
            "ts": int(now * 1000),
            "interval_s": self.interval_s,
            "uptime_s": status.get("uptime_s"),
            "streams": streams,
            "throughput": [{"t": p["t"],
                            **{s: p.get(f"in:{s}") for s in STREAMS},
                            **{f"scored:{s}": p.get(f"scored:{s}") for s in STREAMS}}
                           for p in history],
            "lag": status.get("lag", {}),
            "scores": histograms(samples),
            "alerts_by_rule": alerts_by_rule,
            "totals": {"rejected": int(counters["rejected"]), "alerts": int(counters["alerts"]),
                       "lake_rows": int(counters["lake_rows"])},
            "processes": status.get("processes", {}),
            "recent_alerts": self._lake_data["recent_alerts"],
            "hosts": self._lake_data["hosts"],
            "minutes": self._lake_data["minutes"],
        }

    def snapshot(self) -> dict:
        self._watched_at = time.monotonic()
        with self._lock:
            return self._snapshot

    # -- HTTP -----------------------------------------------------------------------------

    def handle(self, handler) -> bool:
        """Serve ``handler``'s GET if it is one of ours; False lets the caller serve it."""
        path = handler.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            send_body(handler, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/api/v1/metrics":
            send_body(handler, json.dumps(self.snapshot()).encode(), "application/json")
        elif path == "/api/v1/metrics/realtime":
            query = urllib.parse.parse_qs(handler.path.partition("?")[2])
            try:
                limit = int(query.get("events", ["0"])[0])
            except ValueError:
                limit = 0
            self._stream(handler, limit)
        else:
            return False
        return True

    def _stream(self, handler, limit: int = 0) -> None:
        """Send a snapshot every ``interval_s`` until the client leaves (or ``limit`` events:
        ``?events=N``, for tools and headless browsers that want the stream to end)."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("X-Accel-Buffering", "no")
        handler.end_headers()
        handler.close_connection = True
        try:
            handler.wfile.write(f"retry: {int(self.interval_s * 2000)}\n\n".encode())
            event, sent = 0, -1
            while not self._closed.is_set():
                # Each event is a new sample (paced by the sampler): on a slow machine the
                # same snapshot is never sent twice; a comment line keeps the stream open.
                with self._fresh:
                    self._fresh.wait_for(
                        lambda last=sent: self._closed.is_set() or self._samples > last,
                        timeout=3 * self.interval_s)
                    snap, number = self._snapshot, self._samples
                self._watched_at = time.monotonic()
                if self._closed.is_set():
                    break
                if number <= sent:
                    handler.wfile.write(b": waiting for the next sample\n\n")
                    handler.wfile.flush()
                    continue
                sent, event = number, event + 1
                data = json.dumps(snap, separators=(",", ":"))
                handler.wfile.write(f"id: {event}\ndata: {data}\n\n".encode())
                handler.wfile.flush()
                if event == limit:
                    break
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away


PAGE = (Path(__file__).resolve().parent / "static" / "live.html").read_text()
