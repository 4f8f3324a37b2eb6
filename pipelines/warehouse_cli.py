"""``riskstream warehouse migrate|status`` and ``riskstream load``: the ClickHouse warehouse.

Without ``--clickhouse URL`` (or ``RISKSTREAM_CLICKHOUSE_URL``) the warehouse is chDB's
embedded database in ``RISKSTREAM_CLICKHOUSE_PATH`` (default ``var/warehouse``), which one
process at a time can open.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading

from pipelines.errors import ConfigError
from pipelines.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    wh = sub.add_parser("warehouse", help="the ClickHouse warehouse: schema migrations")
    which = wh.add_subparsers(dest="warehouse_command", required=True)
    for name, func, text in (("migrate", cmd_migrate, "apply the schema migrations not "
                              "applied yet (idempotent) and the TTLs from settings"),
                             ("status", cmd_status, "applied migrations and rows per table")):
        p = which.add_parser(name, help=text)
        p.add_argument("--clickhouse", metavar="URL", default=None,
                       help="http(s)://user:password@host:8123 (default: "
                            "RISKSTREAM_CLICKHOUSE_URL, else chDB in RISKSTREAM_CLICKHOUSE_PATH)")
        p.set_defaults(func=func)

    load = sub.add_parser("load", help="load the output topics into ClickHouse, exactly once")
    load.add_argument("--clickhouse", metavar="URL", default=None,
                      help="a ClickHouse server (default: RISKSTREAM_CLICKHOUSE_URL, else chDB)")
    load.add_argument("--group", default="riskstream-loader", help="Kafka consumer group")
    load.set_defaults(func=cmd_load)


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.service.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.warehouse import migrate, open_target

    _logging(settings)
    with open_target(settings.clickhouse, args.clickhouse) as target:
        applied = migrate(target, settings.clickhouse)
    print("applied: " + (", ".join(m.name for m in applied) if applied else "nothing (up to "
                         "date)"))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.warehouse import applied_migrations, open_target

    with open_target(settings.clickhouse, args.clickhouse) as target:
        applied = applied_migrations(target)
        tables = target.query("SELECT name, total_rows FROM system.tables WHERE database = "
                              "currentDatabase() AND engine LIKE '%MergeTree' ORDER BY name")
    print(json.dumps({"migrations": [r["name"] for r in applied.values()],
                      "rows": {r["name"]: r["total_rows"] for r in tables}}, indent=2,
                     default=str))
    return 0


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.metrics import serve_metrics
    from sinks.loader import run_loader

    _logging(settings)
    bootstrap = settings.kafka.bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka: set RISKSTREAM_KAFKA_BOOTSTRAP=host:port")
    serve_metrics(settings.service.metrics_port, settings.service.bind_host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_loader(bootstrap, settings, stop=stop, url=args.clickhouse, group_id=args.group)
    return 0


def main_load(argv: list[str]) -> int:
    """``riskstream load ARGV`` without the rest of the command line (tests run it so)."""
    parser = argparse.ArgumentParser(prog="riskstream")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["load", *argv])
    return args.func(args, Settings())
