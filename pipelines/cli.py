"""The ``riskstream`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path

from pipelines import placement
from pipelines.errors import ConfigError, RiskstreamError
from pipelines.settings import Settings


def _bootstrap(settings: Settings) -> str:
    bootstrap = settings.kafka.bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka: set RISKSTREAM_KAFKA_BOOTSTRAP=host:port, or run "
                          "`riskstream up`, which starts the embedded broker for every process")
    return bootstrap


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.service.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.up import run_up

    return run_up(settings, duration_s=args.duration, rate_eps=args.rate, workers=args.workers,
                  seed=args.seed)


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.broker import EmbeddedBroker, ensure_topics

    stop = _stop_on_signals()
    with EmbeddedBroker(port=args.port) as broker:
        partitions = settings.kafka.embedded_partitions()
        ensure_topics(broker.bootstrap, partitions=partitions)
        print(f"embedded broker: RISKSTREAM_KAFKA_BOOTSTRAP={broker.bootstrap} "
              f"RISKSTREAM_KAFKA_PARTITIONS={partitions}", flush=True)
        stop.wait()
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.app import build_app
    from pipelines.broker import ensure_topics
    from pipelines.metrics import serve_metrics
    from pipelines.worker_services import add_worker_services, planned

    planned(settings)  # a setting that cannot work fails before anything starts
    bootstrap = _bootstrap(settings)
    ensure_topics(bootstrap, partitions=settings.kafka.partitions)
    serve_metrics(settings.service.metrics_port, settings.service.bind_host)
    app = build_app(settings, bootstrap)
    add_worker_services(app, settings)  # its dashboard and scheduled report, when configured
    # The CLI flag, not web_enabled=False: in code Faust still binds 0.0.0.0:6066 (DESIGN.md).
    faust_level = {"WARNING": "warn", "CRITICAL": "crit"}.get(
        settings.service.log_level.upper(), settings.service.log_level.lower())
    sys.argv = ["riskstream", "worker", "--without-web", "-l", faust_level]
    try:
        app.main()
    except SystemExit:
        # A worker that stopped itself on a fault (pipelines/app.py ``fail``) exits non-zero,
        # so a supervisor that restarts on failure restarts it; Faust exits 0 after SIGTERM.
        if app.riskstream_failed:
            print(f"riskstream: the worker stopped: {app.riskstream_failed[0]}",
                  file=sys.stderr)
            return 70  # EX_SOFTWARE
        raise
    return 0


def cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.metrics import serve_metrics
    from sinks.sink import run_sink

    _logging(settings)
    bootstrap = _bootstrap(settings)
    serve_metrics(settings.service.metrics_port, settings.service.bind_host)
    run_sink(bootstrap, settings, stop=_stop_on_signals())
    return 0


def cmd_dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.metrics import serve_metrics
    from sinks.dispatch import Dispatcher

    _logging(settings)
    bootstrap = _bootstrap(settings)
    serve_metrics(settings.service.metrics_port, settings.service.bind_host)
    Dispatcher(settings, bootstrap).run(_stop_on_signals())
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.metrics import serve_metrics
    from pipelines.simulate import run_simulator
    from pipelines.simulator import SimConfig

    _logging(settings)
    bootstrap = _bootstrap(settings)
    serve_metrics(settings.service.metrics_port, settings.service.bind_host)
    config = SimConfig(seed=args.seed, rate_eps=args.rate, label_delay_s=args.label_delay,
                       malformed_share=args.malformed, duplicate_share=args.duplicates)
    counts = run_simulator(bootstrap, config, duration_s=args.duration, max_events=args.events,
                           realtime=not args.fast, stop=_stop_on_signals(), start_ms=args.start)
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), file=sys.stderr)
    return 0


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    if args.clickhouse:  # the warehouse on a server; otherwise chDB over the lake
        from sinks.clickhouse import FORMATS
        from sinks.warehouse import QUERY_SETTINGS, ServerTarget

        with ServerTarget(args.clickhouse, settings.clickhouse.database) as target:
            print(target.query_text(args.query, FORMATS.get(args.format, args.format),
                                    QUERY_SETTINGS), end="")
        return 0
    from sinks.clickhouse import query_lake

    lake = Path(args.lake) if args.lake else settings.lake.path
    print(query_lake(lake, args.query, fmt=args.format), end="")
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.export import export_json_schemas

    for path in export_json_schemas(Path(args.out)):
        print(path)
    return 0


def _start_ms(text: str) -> int:
    """``--start``: epoch milliseconds, or an ISO-8601 date-time with a timezone (the event
    time rule of the input schemas)."""
    from schemas.common import parse_event_time

    try:
        return parse_event_time(int(text) if text.isdigit() else text)
    except ValueError:  # pydantic's error is a ValueError
        raise argparse.ArgumentTypeError(
            f"expected epoch milliseconds or an ISO-8601 date-time with a timezone "
            f"(2026-01-01T00:00:00Z), got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="riskstream", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything: broker (embedded unless "
                        "RISKSTREAM_KAFKA_BOOTSTRAP is set), worker, sink, alerts, simulator")
    up.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    up.add_argument("--rate", type=float, default=200.0, help="simulated events per second")
    up.add_argument("--workers", type=int, default=1, help="worker processes")
    up.add_argument("--seed", type=int, default=7)
    up.set_defaults(func=cmd_up)

    broker = sub.add_parser("broker", help="run the embedded Tansu broker in the foreground")
    broker.add_argument("--port", type=int, default=0)
    broker.set_defaults(func=cmd_broker)

    for name, func, text in (("worker", cmd_worker, "validate, score, aggregate (Faust)"),
                             ("sink", cmd_sink, "write output topics to the lake"),
                             ("dispatch", cmd_dispatch, "deliver alerts to channels")):
        sub.add_parser(name, help=text).set_defaults(func=func)

    sim = sub.add_parser("simulate", help="publish realistic events with injected fraud")
    sim.add_argument("--rate", type=float, default=200.0, help="events per second")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    sim.add_argument("--events", type=int, default=None, help="stop after this many events")
    sim.add_argument("--label-delay", type=float, default=30.0, help="seconds before labels")
    sim.add_argument("--malformed", type=float, default=0.01, help="share of malformed events")
    sim.add_argument("--duplicates", type=float, default=0.01, help="share of duplicates")
    sim.add_argument("--fast", action="store_true", help="as fast as possible, not real time")
    sim.add_argument("--start", type=_start_ms, default=None,
                     help="event time of the first message (ISO-8601 with a timezone, or epoch "
                          "ms): the same --seed and --start give the same messages (default: "
                          "now, or in the past with --fast: another stream at every run)")
    sim.set_defaults(func=cmd_simulate)

    sql = sub.add_parser("sql", help="run ClickHouse SQL over the lake (chDB)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["pretty", "csv", "json"], default="pretty")
    sql.add_argument("--lake", default=None, help="lake directory (default RISKSTREAM_LAKE_PATH)")
    sql.add_argument("--clickhouse", metavar="URL", default=None,
                     help="query the warehouse on this ClickHouse server instead of the lake")
    sql.set_defaults(func=cmd_sql)

    schemas = sub.add_parser("schemas", help="JSON Schema files for producers")
    schemas.add_argument("action", choices=["export"])
    schemas.add_argument("--out", default="schemas/jsonschema")
    schemas.set_defaults(func=cmd_schemas)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


# Modules that add their own subcommands: each defines ``register(subparsers)`` and sets
# ``func(args, settings) -> int`` on its parsers. Keeps this file from growing with every feature.
COMMAND_MODULES: tuple[str, ...] = (
    "pipelines.evaluate", "pipelines.bench", "pipelines.warehouse_cli", "pipelines.alerts_cli",
    "pipelines.report", "pipelines.models_cli",
)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
        placement.pin(settings.service.cpus)  # before any thread starts: they inherit it
        return args.func(args, settings)
    except RiskstreamError as exc:
        print(f"riskstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
