"""``riskstream warehouse migrate|status``, ``riskstream load`` and ``riskstream lake
compact|retain``: the ClickHouse warehouse and the lake's housekeeping.

``lake compact`` and ``lake retain`` take the lake's writer lock: they refuse while a sink runs
(the sink compacts itself with ``RISKSTREAM_LAKE_COMPACT_EVERY_S``); run them when none does.

Without ``--clickhouse URL`` (or ``RISKSTREAM_CLICKHOUSE_URL``) the warehouse is chDB's
embedded database in ``RISKSTREAM_CLICKHOUSE_PATH`` (default ``var/warehouse``), which one
process at a time can open.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
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

    lake = sub.add_parser("lake", help="lake housekeeping: compaction and retention")
    what = lake.add_subparsers(dest="lake_command", required=True)
    compact = what.add_parser("compact", help="merge each closed hour partition's small "
                              "Parquet files into one (readers see every row once meanwhile)")
    compact.add_argument("--table", action="append", default=None,
                         help="only this table (repeatable; default every table)")
    compact.add_argument("--older-than", type=_duration_s, default=None, metavar="DURATION",
                         help="compact hours that ended this long ago, e.g. 1h, 30m, 0 "
                              "(default RISKSTREAM_LAKE_COMPACT_OLDER_THAN_S)")
    compact.add_argument("--min-files", type=int, default=2,
                         help="compact an hour holding at least this many files")
    compact.add_argument("--lake", default=None,
                         help="lake directory (default RISKSTREAM_LAKE_PATH)")
    compact.set_defaults(func=cmd_compact)
    retain = what.add_parser("retain", help="delete hour partitions older than N days "
                             "(the sink still resumes after them)")
    retain.add_argument("--days", type=int, default=None,
                        help="default RISKSTREAM_LAKE_RETENTION_DAYS (90)")
    retain.add_argument("--table", action="append", default=None,
                        help="only this table (repeatable; default every table)")
    retain.add_argument("--lake", default=None, help="lake directory (default "
                        "RISKSTREAM_LAKE_PATH)")
    retain.set_defaults(func=cmd_retain)


def _duration_s(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``2d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 1h, 30m or 90s, got "
                                         f"{text!r}") from None


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


def _lake_writer(args: argparse.Namespace, settings: Settings):
    from pathlib import Path

    from pipelines.errors import LakeError
    from sinks.lake import LakeWriter

    writer = LakeWriter(Path(args.lake) if args.lake else settings.lake.path)
    try:
        writer.lock()
    except LakeError as exc:
        raise LakeError(f"{exc}. A running sink compacts the lake itself when "
                        "RISKSTREAM_LAKE_COMPACT_EVERY_S is set (e.g. 3600); run `riskstream "
                        "lake compact|retain` only while no sink runs") from None
    return writer


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_compact(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.compaction import compact_lake

    _logging(settings)
    older_than_s = (args.older_than if args.older_than is not None
                    else settings.lake.compact_older_than_s)
    with _lake_writer(args, settings) as writer:
        report = compact_lake(writer, args.table, older_than_s=older_than_s,
                              min_files=args.min_files,
                              delete_after_s=settings.lake.compact_delete_after_s,
                              progress=_progress)
    print(json.dumps(report.summary(), indent=2))
    return 1 if report.skipped else 0


def cmd_retain(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.compaction import retain, retention_summary

    _logging(settings)
    days = args.days if args.days is not None else settings.lake.retention_days
    with _lake_writer(args, settings) as writer:
        reports = retain(writer, days, args.table, progress=_progress)
    print(json.dumps(retention_summary(reports), indent=2))
    return 0
