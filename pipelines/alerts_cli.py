"""``riskstream alerts ...``: test a channel, list alerts, silence them, check and publish rules.

- ``alerts test --channel NAME`` sends a test alert through one configured channel;
- ``alerts list`` shows firing incidents and recent alerts (from the lake's ``alerts`` table),
  the silences in force (from the silences file) and which firing incidents they mute;
- ``alerts silence --matcher rule=X --matcher entity=~web-.* --duration 2h --comment ...``
  mutes matching alerts at the dispatcher until the silence expires; ``alerts expire ID``
  ends one early;
- ``alerts check-rules [FILE]`` validates a rules file; ``alerts publish-rules FILE`` validates
  it and publishes it on the ``rules`` topic, which every worker applies.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path

from pipelines.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    alerts = sub.add_parser("alerts", help="test channels, list and silence alerts, check rules")
    cmd = alerts.add_subparsers(dest="alerts_command", required=True)

    test = cmd.add_parser("test", help="send a test alert through one channel")
    test.add_argument("--channel", required=True,
                      help="webhook, slack, email or alertmanager (configured by RISKSTREAM_ALERT_*)")
    test.add_argument("--severity", default="info", choices=["info", "warning", "critical"])
    test.set_defaults(func=cmd_test)

    ls = cmd.add_parser("list", help="firing, silenced and recent alerts")
    ls.add_argument("--since", default="24h", help="recent alerts of this period (default 24h)")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--lake", default=None, help="lake directory (default RISKSTREAM_LAKE_PATH)")
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.set_defaults(func=cmd_list)

    silence = cmd.add_parser("silence", help="mute matching alerts for a while")
    silence.add_argument("--matcher", action="append", required=True, metavar="LABEL=VALUE",
                         help="label=value or label=~regex; on rule, entity, severity, stream "
                              "or any alert label; repeat to AND them")
    silence.add_argument("--duration", default="2h", help="e.g. 30m, 2h, 1d (default 2h)")
    silence.add_argument("--comment", required=True, help="why: shown with every muted alert")
    silence.add_argument("--author", default=None, help="default: the login name")
    silence.set_defaults(func=cmd_silence)

    expire = cmd.add_parser("expire", help="end a silence now")
    expire.add_argument("silence_id")
    expire.set_defaults(func=cmd_expire)

    check = cmd.add_parser("check-rules", help="validate a rules file (default: the one in use)")
    check.add_argument("file", nargs="?", default=None)
    check.set_defaults(func=cmd_check_rules)

    publish = cmd.add_parser("publish-rules", help="validate a rules file and publish it on the "
                             "rules topic: every worker applies it")
    publish.add_argument("file")
    publish.set_defaults(func=cmd_publish_rules)


def test_alert(severity: str = "info", now_ms: int | None = None) -> dict:
    """A recognisable alert: rule ``riskstream_test``, a fresh id each call."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    alert_id = f"test-{now}"
    return {"alert_id": alert_id, "rule": "riskstream_test", "severity": severity,
            "stream": "transactions", "entity": "test", "event_id": alert_id, "event_time": now,
            "value": 1.0, "threshold": 0.0, "created_at": now, "status": "firing",
            "incident_id": alert_id, "group_key": "riskstream_test",
            "summary": "riskstream test alert: if you read this, the channel works",
            "labels": json.dumps({"rule": "riskstream_test", "severity": severity}),
            "condition": "test", "window_ms": None, "count": None,
            "reasons": ["sent by `riskstream alerts test`"], "dashboard_url": None,
            "query": "SELECT * FROM alerts ORDER BY created_at DESC LIMIT 10"}


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.channels.webhook import DeliveryError
    from sinks.dispatch import channels_from

    channels = {c.name: c for c in channels_from(settings)}
    channel = channels.get(args.channel)
    if channel is None:
        print(f"riskstream: channel {args.channel!r} is not configured (configured: "
              f"{', '.join(channels) or 'none'}); set e.g. RISKSTREAM_ALERT_WEBHOOK_URL, "
              "RISKSTREAM_ALERT_SLACK_WEBHOOK_URL, RISKSTREAM_ALERT_SMTP_HOST + "
              "RISKSTREAM_ALERT_EMAIL_TO, RISKSTREAM_ALERT_ALERTMANAGER_URL", file=sys.stderr)
        return 2
    alert = test_alert(args.severity)
    started = time.monotonic()
    try:
        status = channel.send(alert)
    except DeliveryError as exc:
        print(f"{args.channel}: FAILED ({exc}; {'retryable' if exc.retryable else 'permanent'})")
        return 1
    print(f"{args.channel}: delivered {alert['alert_id']} (status {status}, "
          f"{(time.monotonic() - started) * 1000:.0f} ms)")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from agents.rules import parse_duration_ms
    from sinks.clickhouse import query_rows
    from sinks.dispatch import silences_path
    from sinks.silences import SilenceStore, alert_labels

    lake = Path(args.lake) if args.lake else settings.lake.path
    seconds = parse_duration_ms(args.since) // 1000
    incidents = query_rows(lake, f"""
        SELECT incident, argMax(status, created_at) AS state, any(rule) AS rule,
               any(severity) AS severity, any(entity) AS entity, any(stream) AS stream,
               min(created_at) AS since, argMin(summary, created_at) AS summary,
               argMin(labels, created_at) AS labels
        FROM (SELECT coalesce(incident_id, alert_id) AS incident, coalesce(status, 'firing') AS status,
                     rule, severity, entity, stream, created_at, summary, labels FROM alerts)
        GROUP BY incident HAVING state = 'firing' ORDER BY since DESC LIMIT {int(args.limit)}""")
    recent = query_rows(lake, f"""
        SELECT created_at, coalesce(status, 'firing') AS status, rule, severity, entity, alert_id, summary
        FROM alerts WHERE created_at > now() - INTERVAL {int(seconds)} SECOND
        ORDER BY created_at DESC LIMIT {int(args.limit)}""")
    now = int(time.time() * 1000)
    silences = [s for s in SilenceStore(silences_path(settings)).all() if s.ends_at > now]
    for r in incidents:  # muted now: the silence the dispatcher would apply to it
        seen = alert_labels({**r, "status": "firing", "alert_id": r["incident"],
                             "incident_id": r["incident"]})
        r["silenced_by"] = next((s.silence_id for s in silences if s.matches(seen, now)), None)
    if args.json:
        print(json.dumps({"firing": incidents, "recent": recent,
                          "silenced": [r for r in incidents if r["silenced_by"]],
                          "silences": [s.to_json() for s in silences]}, default=str))
        return 0
    print(f"FIRING ({len(incidents)})")
    for r in incidents:
        muted = f"  silenced by {r['silenced_by']}" if r["silenced_by"] else ""
        print(f"  {r['since']:%Y-%m-%d %H:%M:%S}  {r['severity']:<8} {r['rule']:<24} "
              f"{r['entity'] or '':<24} {r['incident']}{muted}")
    print(f"SILENCES ({len(silences)})")
    for s in silences:
        matchers = " ".join(f"{n}{op}{v}" for n, op, v in s.matchers)
        left = (s.ends_at - now) // 60_000
        state = "active" if s.active(now) else "pending"
        print(f"  {s.silence_id}  {state}, {left} min left  {matchers}  # {s.comment} ({s.created_by})")
    print(f"RECENT ({len(recent)}, last {args.since})")
    for r in recent:
        print(f"  {r['created_at']:%Y-%m-%d %H:%M:%S}  {r['status']:<8} {r['severity']:<8} "
              f"{r['rule']:<24} {r['entity'] or '':<24} {r['summary'] or ''}")
    return 0


def cmd_silence(args: argparse.Namespace, settings: Settings) -> int:
    from agents.rules import parse_duration_ms
    from sinks.dispatch import silences_path
    from sinks.silences import Silence, SilenceError, SilenceStore

    try:
        duration = parse_duration_ms(args.duration)
    except ValueError as exc:
        raise SilenceError(f"--duration: {exc}") from None
    author = args.author or getpass.getuser()
    silence = SilenceStore(silences_path(settings)).add(
        Silence.create(args.matcher, duration_ms=duration, comment=args.comment, created_by=author))
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(silence.ends_at / 1000))
    print(f"silence {silence.silence_id} until {until}")
    return 0


def cmd_expire(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.dispatch import silences_path
    from sinks.silences import SilenceStore

    if SilenceStore(silences_path(settings)).expire(args.silence_id):
        print(f"silence {args.silence_id} expired")
        return 0
    print(f"riskstream: no active silence {args.silence_id}", file=sys.stderr)
    return 1


def cmd_check_rules(args: argparse.Namespace, settings: Settings) -> int:
    from agents.rules import RulesInvalid, load_rules

    path = args.file or settings.alert.rules_path
    try:
        rules = load_rules(path, params=settings.rule_params())
    except RulesInvalid as exc:
        print(exc, file=sys.stderr)
        return 1
    for r in rules.rules:
        print(f"{r.name:<28} {r.kind:<9} {r.stream:<15} {r.severity}")
    print(f"{len(rules.rules)} rules, {len(rules.inhibit)} inhibitions, {len(rules.routes)} routes: ok")
    return 0


def cmd_publish_rules(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import Producer

    from agents.rules import RulesInvalid, parse_rules
    from pipelines.cli import _bootstrap
    from pipelines.kafka import producer_config
    from pipelines.topics import RULES

    text = Path(args.file).read_text()
    try:
        parse_rules(text, source=args.file, params=settings.rule_params())
    except RulesInvalid as exc:
        print(exc, file=sys.stderr)
        return 1
    producer = Producer(producer_config(_bootstrap(settings)))
    producer.produce(RULES, key=b"rules", value=text.encode())
    if producer.flush(30):
        print("riskstream: the broker did not acknowledge the rules", file=sys.stderr)
        return 1
    print(f"published {args.file} on {RULES}")
    return 0
