"""``riskstream up``: the whole pipeline on one machine, supervised.

Starts the broker (embedded Tansu unless ``RISKSTREAM_KAFKA_BOOTSTRAP`` names a cluster), then
the worker(s), the sink, the alert dispatcher and the simulator as child processes, each in its
own session so that Ctrl-C reaches only this supervisor, which stops them in order: the
simulator first, then the worker, the dispatcher, and the sink last (it flushes its buffers),
then the broker. A child that dies is restarted with a backoff. Every few seconds one status
line; the status page and its JSON are served on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from dashboards.live import LiveDashboard, send_body, stream_lag
from pipelines import placement
from pipelines.broker import EmbeddedBroker, ensure_topics, free_port
from pipelines.settings import Settings
from pipelines.topics import INPUT_TOPICS, LABELS, OUTPUT_TOPICS, VALIDATED
from schemas.pii import PiiHasher

VALIDATED_TOPICS = tuple(VALIDATED.values())

log = logging.getLogger("riskstream.up")

STATUS_EVERY_S = 5.0

GATEWAY = "spawn_main"  # how a worker's gateway process shows (multiprocessing spawn)


def children(pid: int, command: str = "") -> list[int]:
    """The direct children of ``pid`` whose command line contains ``command`` (Linux)."""
    try:
        pids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    out = []
    for child in pids:
        try:
            if command in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                out.append(child)
        except OSError:
            pass  # gone meanwhile
    return out


@dataclass
class Child:
    """One supervised process."""

    name: str
    args: list[str]
    env: dict[str, str]
    metrics_port: int
    log_path: Path
    restart: bool = True
    process: subprocess.Popen | None = None
    restarts: int = 0
    _next_start: float = 0.0

    def start(self) -> None:
        out = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", *self.args], env=self.env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def check(self) -> None:
        """Restart the process if it died (exponential backoff up to 30 s)."""
        if self.process is None or self.process.poll() is None or not self.restart:
            return
        now = time.monotonic()
        if not self._next_start:
            log.error("%s exited with code %s; restarting (log: %s)", self.name,
                      self.process.returncode, self.log_path)
            self._next_start = now + min(30.0, 0.5 * 2 ** self.restarts)
        elif now >= self._next_start:
            self.restarts += 1
            self._next_start = 0.0
            self.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.restart = False
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in %.0f s; killing it", self.name, timeout_s)
            self.process.kill()
            self.process.wait()


Sample = tuple[str, dict[str, str], float]


def scrape(port: int) -> list[Sample]:
    """The samples of a child's /metrics endpoint; none when it does not answer (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return []
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list[Sample], name: str, **labels: str) -> int:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return int(sum(v for n, lab, v in samples
                   if n == name and all(lab.get(k) == x for k, x in labels.items())))


def consumer_lag(bootstrap: str, group: str, topics: tuple[str, ...]) -> int:
    """Messages between a group's committed offsets and the end of its topics."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = c.list_topics(timeout=5).topics
        tps = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
        lag = 0
        for tp in c.committed(tps, timeout=5):
            _, high = c.get_watermark_offsets(tp, timeout=5, cached=False)
            lag += max(0, high - max(tp.offset, 0))
        # Approximate on Tansu, whose high watermark is per record batch (below the true end).
        return lag
    except Exception:  # status is best effort; the pipeline does not depend on it
        return -1
    finally:
        c.close()


@dataclass
class Status:
    bootstrap: str
    lake: Path
    children: list[Child]
    broker_pid: int | None = None
    started: float = field(default_factory=time.monotonic)
    last: dict = field(default_factory=dict)
    _collected: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fresh(self, max_age_s: float = 1.0) -> dict:
        """The status, collected again when the last collection is older than ``max_age_s``
        (the status line's 5 s rhythm is too slow for an API client)."""
        with self._lock:
            if time.monotonic() - self._collected > max_age_s:
                self.collect()
        return self.last

    def collect(self) -> dict:
        self._collected = time.monotonic()
        samples = [x for child in self.children for x in scrape(child.metrics_port)]
        rejected: dict[str, int] = {}
        for name, labels, value in samples:
            if name == "riskstream_rejected_total":
                rejected[labels["kind"]] = rejected.get(labels["kind"], 0) + int(value)
        self.last = {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "events_in": {s: total(samples, "riskstream_events_in_total", stream=s)
                          for s in INPUT_TOPICS},
            "rejected": sum(v for k, v in rejected.items() if k != "duplicate"),
            "duplicates": rejected.get("duplicate", 0),
            "rejected_by_kind": rejected,
            "validated": total(samples, "riskstream_validated_total"),
            "validated_labels": total(samples, "riskstream_validated_total", stream=LABELS),
            "labels_learned": total(samples, "riskstream_labels_learned_total"),
            "scored": total(samples, "riskstream_scored_total"),
            "alerts": total(samples, "riskstream_alerts_total"),
            "lake_rows": total(samples, "riskstream_sink_rows_total"),
            "lag": {"gateway": consumer_lag(self.bootstrap, "riskstream-gateway", INPUT_TOPICS),
                    "worker": consumer_lag(self.bootstrap, "riskstream", VALIDATED_TOPICS),
                    "sink": consumer_lag(self.bootstrap, "riskstream-sink", OUTPUT_TOPICS)},
            "processes": {c.name: {"pid": c.process.pid if c.process else None,
                                   "alive": bool(c.process and c.process.poll() is None),
                                   "restarts": c.restarts} for c in self.children},
            "broker_pid": self.broker_pid,
        }
        return self.last

    def line(self) -> str:
        s = self.last
        ins = " ".join(f"{k}={v}" for k, v in s["events_in"].items())
        return (f"[{s['uptime_s']:>6.0f}s] in: {ins} | rejected={s['rejected']} "
                f"dup={s['duplicates']} scored={s['scored']} alerts={s['alerts']} "
                f"lake_rows={s['lake_rows']} lag: "
                + " ".join(f"{k}={v}" for k, v in s["lag"].items()))


# The plain status page (/status); the live dashboard is at / (dashboards/live.py).
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>riskstream</title>
<meta http-equiv="refresh" content="5"><style>body{font:14px system-ui;margin:2em}
td,th{padding:2px 10px;text-align:left}</style></head><body><h1>riskstream</h1>
<p>broker <code>%(bootstrap)s</code> &middot; lake <code>%(lake)s</code></p><table>%(rows)s</table>
<p>JSON: <a href="/api/v1/status">/api/v1/status</a></p></body></html>"""


def serve_status(status: Callable[[], dict], host: str, port: int,
                 dashboard: LiveDashboard | None = None,
                 page: Callable[[], bytes] | None = None) -> ThreadingHTTPServer:
    """Serve ``/api/v1/status`` (``status()`` as JSON), ``/healthz``, the live ``dashboard``'s
    routes and, at ``/status`` (and ``/`` without a dashboard), ``page()``; OSError when the
    port cannot be bound."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.startswith("/api/v1/status"):
                body, ctype = json.dumps(status()).encode(), "application/json"
            elif dashboard is not None and dashboard.handle(self):
                return
            elif page is not None and self.path in ("/", "/index.html", "/status"):
                body, ctype = page(), "text/html; charset=utf-8"
            elif self.path == "/healthz":
                body, ctype = b"ok", "text/plain"
            else:
                self.send_error(404)
                return
            send_body(self, body, ctype)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="status").start()
    return server


def _status_page(status: Status) -> bytes:
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in status.fresh().items())
    return (PAGE % {"bootstrap": status.bootstrap, "lake": status.lake, "rows": rows}).encode()


def run_up(settings: Settings, *, duration_s: float | None, rate_eps: float, workers: int = 1,
           seed: int = 7) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Without RISKSTREAM_PII_HMAC_KEY this logs the development-key warning here too, on the
    # user's console: the workers that hash say it only in their log files.
    PiiHasher(settings.pii)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    state_dir = settings.service.state_dir
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    lake = settings.lake.path.resolve()
    # Each worker on a core of its own, the rest (this supervisor, and so the broker and every
    # other child, which inherit it) on the others: pipelines/placement.py.
    cpus = placement.plan(workers, enabled=settings.service.pin_workers)
    if cpus is not None:
        placement.take_shared(cpus)
    broker: EmbeddedBroker | None = None
    bootstrap = settings.kafka.bootstrap
    partitions = settings.kafka.partitions
    if not bootstrap:
        broker = EmbeddedBroker(log_path=log_dir / "broker.log").start()
        bootstrap = broker.bootstrap
        partitions = settings.kafka.embedded_partitions(workers)
    children: list[Child] = []
    try:
        ensure_topics(bootstrap, partitions=partitions,
                      replication_factor=settings.kafka.replication_factor)
        # the children expect the topics' partitions: they are told, not left to the default
        env = {**os.environ, "RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
               "RISKSTREAM_KAFKA_PARTITIONS": str(partitions),
               "RISKSTREAM_LAKE_PATH": str(lake), "PYTHONUNBUFFERED": "1"}
        specs = [(f"worker-{i}" if workers > 1 else "worker", ["worker"],
                  cpus.worker_env(i) if cpus else {}) for i in range(workers)]
        specs += [("sink", ["sink"], {}), ("dispatch", ["dispatch"], {}),
                  ("simulator", ["simulate", "--rate", str(rate_eps), "--seed", str(seed)], {})]
        for name, args, pinned in specs:
            port = free_port()
            child = Child(name, args, {**env, **pinned, "RISKSTREAM_METRICS_PORT": str(port)},
                          port, log_dir / f"{name}.log")
            child.start()
            children.append(child)

        status = Status(bootstrap, lake, children, broker.pid if broker else None)
        status.collect()
        dashboard = LiveDashboard(
            lambda: [x for child in children for x in scrape(child.metrics_port)],
            lambda: status.last, lake, lag=lambda: stream_lag(bootstrap)).start()
        page = serve_status(status.fresh, settings.service.bind_host,
                            settings.service.status_port, dashboard,
                            page=lambda: _status_page(status))
        host, port = page.server_address[:2]
        embedded = (f" (embedded Tansu, in memory, {partitions} partitions per topic)"
                    if broker else "")
        print(f"riskstream is up\n"
              f"  broker      {bootstrap}{embedded}\n"
              f"  lake        {lake}\n"
              f"  dashboard   http://{host}:{port}/   (live; JSON /api/v1/metrics, SSE "
              f"/api/v1/metrics/realtime, status /api/v1/status)\n"
              f"  logs        {log_dir.resolve()}/\n"
              f"  cpus        {cpus.describe() if cpus else 'as the OS schedules them'}\n"
              f"  query       riskstream sql \"SELECT count() FROM scored_transactions\"\n"
              f"  stop        Ctrl-C", flush=True)
        deadline = time.monotonic() + duration_s if duration_s else None
        next_line = time.monotonic() + STATUS_EVERY_S
        while not stop.wait(0.5):
            for child in children:
                child.check()
            if time.monotonic() >= next_line:
                status.collect()
                print(status.line(), flush=True)
                next_line = time.monotonic() + STATUS_EVERY_S
            if deadline and time.monotonic() >= deadline:
                break
        print("stopping: simulator, workers, dispatcher, then the sink flushes ...", flush=True)
        # Stop producing first, let the worker and sink drain what is in flight.
        children[-1].stop()
        _drain(status, timeout_s=30.0)
        final = status.collect()
        for child in children[:-1]:
            child.stop()
        dashboard.close()
        page.shutdown()
        final = {**final, "lake_rows": _lake_rows(lake)}
        print("summary: " + json.dumps(final, sort_keys=True), flush=True)
        return 0
    finally:
        for child in children:
            child.stop()
        if broker is not None:
            broker.stop()


def _drain(status: Status, timeout_s: float, quiet_s: float = 2.0) -> None:
    """Wait (bounded) until the worker has scored every validated event and input stopped.

    Counters, not consumer lag: Tansu's high watermarks are below the true end of a topic.
    """
    deadline = time.monotonic() + timeout_s
    previous, since = None, time.monotonic()
    while time.monotonic() < deadline:
        s = status.collect()
        progress = (sum(s["events_in"].values()), s["scored"])
        if progress != previous:
            previous, since = progress, time.monotonic()
        elif (time.monotonic() - since >= quiet_s
              and s["scored"] >= s["validated"] - s["validated_labels"]):
            return
        time.sleep(0.5)


def _lake_rows(lake: Path) -> dict[str, int]:
    from sinks.lake import LakeWriter

    return LakeWriter(lake).row_count()
