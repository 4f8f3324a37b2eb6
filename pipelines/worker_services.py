"""What the worker serves besides scoring: its live dashboard and a report on a schedule.

Both are off unless configured, and each runs in a child process of the worker (spawned,
like the validation gateway): chDB and the HTTP server never share the scoring loop's core,
GIL or garbage collector.

- ``RISKSTREAM_DASHBOARD_PORT``: the live dashboard of dashboards/live.py (the page,
  ``/api/v1/metrics`` and the SSE stream ``/api/v1/metrics/realtime``) on
  ``RISKSTREAM_BIND_HOST`` (loopback by default), built from the worker's own /metrics
  (``RISKSTREAM_METRICS_PORT`` is required), the lag of the pipeline's consumer groups and the
  lake (``RISKSTREAM_LAKE_PATH``: recent alerts, anomalies per host).
- ``RISKSTREAM_REPORT_EVERY`` (e.g. ``1h``): ``riskstream report`` every so often into
  ``RISKSTREAM_REPORT_DIR`` over ``RISKSTREAM_REPORT_SINCE`` with a forecast of
  ``RISKSTREAM_REPORT_HORIZON``, on the lake, or on the warehouse with
  ``RISKSTREAM_REPORT_SOURCE=clickhouse`` (``RISKSTREAM_CLICKHOUSE_URL``). A failed report is
  logged and the next one runs on time.

The worker stops them when it stops; one whose worker died without stopping it (SIGKILL)
notices within a second and exits.

Limits: a worker's dashboard shows that worker's throughput, scores and decisions (its
partitions); lag, alerts and anomalies are the pipeline's. With several workers, configure
the report on one of them (each would write its own).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import mode

from pipelines import placement
from pipelines.errors import ConfigError
from pipelines.settings import Settings

log = logging.getLogger(__name__)


def planned(settings: Settings) -> list[str]:
    """The services the settings ask for; a clear error for a setting that cannot work."""
    from pipelines.report import parse_duration_s

    service = settings.service
    names = []
    if service.dashboard_port is not None:
        if service.metrics_port is None:
            raise ConfigError("RISKSTREAM_DASHBOARD_PORT needs RISKSTREAM_METRICS_PORT: the "
                              "worker's dashboard is built from its /metrics")
        names.append("dashboard")
    if service.report_every:
        for name in ("report_every", "report_since", "report_horizon"):
            try:
                parse_duration_s(getattr(service, name))
            except ConfigError as exc:
                raise ConfigError(f"RISKSTREAM_{name.upper()}: {exc}") from None
        if service.report_source == "clickhouse" and settings.clickhouse.url is None:
            raise ConfigError("RISKSTREAM_REPORT_SOURCE=clickhouse needs "
                              "RISKSTREAM_CLICKHOUSE_URL")
        names.append("report")
    return names


def add_worker_services(app: Any, settings: Settings) -> list[str]:
    """Register the configured children on the worker's Faust ``app``; return their names."""
    names = planned(settings)
    if not names:
        return names
    level = settings.service.log_level

    @app.service
    class WorkerChildren(mode.Service):
        """The dashboard and report processes: started and stopped with the worker."""

        async def on_start(self) -> None:
            ctx = multiprocessing.get_context("spawn")
            self._stop = ctx.Event()
            self._processes = []
            for name in names:
                process = ctx.Process(target=_TARGETS[name], name=f"riskstream-{name}",
                                      daemon=True, args=(self._stop, os.getpid(), level))
                process.start()
                self._processes.append(process)

        async def on_stop(self) -> None:
            self._stop.set()
            loop = asyncio.get_running_loop()
            for process in self._processes:
                await loop.run_in_executor(None, process.join, 30)
                if process.is_alive():
                    log.error("%s did not stop in 30 s; killing it", process.name)
                    process.kill()

    return names


def _child(name: str, stop: Any, worker_pid: int, log_level: str) -> None:
    """Logging, signals and the watch on the worker, in a child process."""
    placement.pin_helper()  # not on the worker's own core
    logging.basicConfig(level=log_level.upper(),
                        format=f"[%(asctime)s] [%(process)d] [%(levelname)s] [{name}] "
                               "%(message)s")
    # The worker stops it (``stop``); Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != worker_pid:
                log.error("the worker is gone; the %s stops", name)
                stop.set()

    threading.Thread(target=watch, daemon=True, name="watch-worker").start()


def run_dashboard(stop: Any, worker_pid: int, log_level: str) -> None:
    """Entry point of the dashboard process."""
    from dashboards.live import LiveDashboard, stream_lag
    from pipelines.up import scrape, serve_status

    _child("dashboard", stop, worker_pid, log_level)
    settings = Settings()
    bootstrap = settings.kafka.bootstrap
    lake = settings.lake.path.resolve()
    metrics_port = settings.service.metrics_port
    started = time.monotonic()
    by_group: dict[str, int] = {}

    def lag() -> dict:
        per_stream = stream_lag(bootstrap)
        for stage in ("gateway", "worker"):
            values = [lags.get(stage, -1) for lags in per_stream.values()]
            by_group[stage] = -1 if any(v < 0 for v in values) else sum(values)
        return per_stream

    def status() -> dict:
        return {"role": "worker", "uptime_s": round(time.monotonic() - started, 1),
                "bootstrap": bootstrap, "lake": str(lake), "lag": dict(by_group),
                "processes": {"worker": {"pid": worker_pid, "alive": True, "restarts": 0}}}

    dashboard = LiveDashboard(lambda: scrape(metrics_port), status, lake, lag=lag).start()

    try:
        server = serve_status(status, settings.service.bind_host,
                              settings.service.dashboard_port, dashboard)
    except OSError as exc:  # the worker goes on scoring; this child exits non-zero
        log.critical("cannot serve the dashboard on %s:%s: %s", settings.service.bind_host,
                     settings.service.dashboard_port, exc)
        dashboard.close()
        raise SystemExit(1) from None
    host, port = server.server_address[:2]
    log.info("live dashboard: http://%s:%s/ (JSON /api/v1/metrics, SSE "
             "/api/v1/metrics/realtime)", host, port)
    try:
        stop.wait()
    finally:
        server.shutdown()
        dashboard.close()


def run_reports(stop: Any, worker_pid: int, log_level: str) -> None:
    """Entry point of the report process: a report every ``RISKSTREAM_REPORT_EVERY``."""
    from pipelines.report import open_source, parse_duration_s, report_loop

    _child("report", stop, worker_pid, log_level)
    settings = Settings()
    service = settings.service
    out_dir = Path(service.report_dir)
    url = (settings.clickhouse.url.get_secret_value()
           if service.report_source == "clickhouse" else None)
    log.info("a report every %s into %s (source: %s)", service.report_every,
             out_dir.resolve(), "the warehouse" if url else "the lake")
    report_loop(
        lambda: open_source(settings, url=url), out_dir,
        since_s=parse_duration_s(service.report_since),
        horizon_s=parse_duration_s(service.report_horizon),
        every_s=parse_duration_s(service.report_every), stop=stop,
        written=lambda html_path, _, seconds: log.info("report written: %s (%.1f s)",
                                                       html_path, seconds),
        failed=lambda exc: log.error("report failed: %s", exc), progress=log.debug)


_TARGETS = {"dashboard": run_dashboard, "report": run_reports}
