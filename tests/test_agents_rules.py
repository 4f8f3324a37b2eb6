"""Rules as data: the YAML file, its validation with lines and reasons, reload from the file
and from the rules topic, routes; and the `riskstream alerts` commands as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from agents.rules import DEFAULT_RULES_PATH, RulesInvalid, RulesSource, load_rules, parse_rules
from processes import ROOT, wait_until
from test_sinks_channels import Receiver

PARAMS = {"score_threshold": 0.9, "anomaly_threshold": 0.9}


def test_the_shipped_rules_are_valid_and_cover_the_issue():
    rules = load_rules(DEFAULT_RULES_PATH, params=PARAMS)
    by_name = {r.name: r for r in rules.rules}
    fail = by_name["payment_failure_rate"]
    assert (fail.kind, fail.value, fail.min_count, fail.window_ms) == ("rate", 0.05, 10, 300_000)
    assert by_name["payment_error_rate"].min_count == 100
    p95 = by_name["service_latency_p95"]
    assert (p95.kind, p95.q, p95.value, p95.min_count) == ("quantile", 0.95, 500, 100)
    assert by_name["metric_anomaly"].value == 0.9 and rules.inhibit and rules.routes


def test_invalid_rules_are_rejected_with_the_line_and_the_reason():
    text = """\
rules:
  - name: ok
    stream: transactions
    field: score
    value: 0.9
  - name: typo
    stream: transactions
    field: score
    treshold: 0.9
    value: 0.9
  - name: bad_rate
    kind: rate
    stream: transactions
    match: {status: failed}
    window: 5 minutes
    value: 5
  - name: ok
    stream: applications
    field: decision
    op: "=="
    value: decline
routes:
  - {channel: slack, severity: [urgent]}
"""
    with pytest.raises(RulesInvalid) as err:
        parse_rules(text, source="rules.yaml")
    lines = str(err.value).splitlines()
    assert lines == [
        "rules.yaml:9: rules[1] (typo): treshold: unknown key (known: cooldown, description, "
        "field, group, group_by, kind, labels, match, min_count, name, op, q, resolve_after, "
        "severity, stream, value, where, window)",
        "rules.yaml:15: rules[2] (bad_rate): window: expected a duration like 5m, got '5 minutes'",
        "rules.yaml:16: rules[2] (bad_rate): value: a rate is a fraction 0..1 (5% is 0.05), got 5",
        "rules.yaml:17: rules[3] (ok): name: used twice",
        "rules.yaml:23: routes[0]: severity: expected info, warning, critical, got 'urgent'",
    ]
    with pytest.raises(RulesInvalid, match=r"rules.yaml:3: not valid YAML: expected ',' or ']'"):
        parse_rules("rules:\n  - name: [unclosed\n", source="rules.yaml")


def test_routes_pick_channels_by_severity_and_labels():
    rules = parse_rules("routes:\n  - {channel: email, severity: [critical]}\n"
                        "  - {channel: pager, labels: {team: [sre]}}\n")
    pick = lambda sev, team: rules.channels_for(  # noqa: E731
        {"severity": sev}, {"team": team}, ["webhook", "email", "pager"])
    assert pick("critical", "fraud") == ["webhook", "email"]
    assert pick("warning", "sre") == ["webhook", "pager"]


def test_the_rules_file_is_reloaded_when_it_changes_and_a_bad_edit_is_ignored(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: a, stream: transactions, field: score, value: 0.9}\n")
    source = RulesSource(path, reload_s=0)  # looks at the file on every poll
    assert [r.name for r in source.initial().rules] == ["a"]
    assert source.poll() is None  # unchanged
    path.write_text("rules:\n  - {name: b, stream: transactions, field: score, value: 0.8}\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert [r.name for r in source.poll().rules] == ["b"]
    path.write_text("rules:\n  - {name: c, stream: nope}\n")  # invalid: the rules in force stay
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert source.poll() is None and source.rejected == 1


@pytest.mark.integration
def test_rules_published_on_the_topic_reach_the_worker(tmp_path):
    from pipelines.broker import EmbeddedBroker, ensure_topics

    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, partitions=2)
        source = RulesSource(DEFAULT_RULES_PATH, params=PARAMS, bootstrap=broker.bootstrap,
                             reload_s=0.01)
        try:
            assert len(source.initial().rules) == 6  # the file: nothing published yet
            path = tmp_path / "new.yaml"
            path.write_text("rules:\n  - {name: only_this, stream: applications, field: score, "
                            "value: 0.5}\n")
            env = {**os.environ, "PYTHONPATH": str(ROOT), "RISKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap}
            out = subprocess.run([sys.executable, "-m", "pipelines.cli", "alerts", "publish-rules",
                                  str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode == 0, out.stderr
            bad = tmp_path / "bad.yaml"
            bad.write_text("rules:\n  - {name: x, stream: nope}\n")
            out = subprocess.run([sys.executable, "-m", "pipelines.cli", "alerts", "publish-rules",
                                  str(bad)], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode == 1 and "bad.yaml:2:" in out.stderr  # refused before publishing
            deadline = time.monotonic() + 20
            got = None
            while got is None and time.monotonic() < deadline:
                time.sleep(0.05)
                got = source.poll()
            assert got is not None and [r.name for r in got.rules] == ["only_this"]
            # a worker that starts later applies the latest published rules
            later = RulesSource(DEFAULT_RULES_PATH, params=PARAMS, bootstrap=broker.bootstrap)
            assert [r.name for r in later.initial().rules] == ["only_this"]
            later.close()
            # an invalid message published by another client is refused, not applied
            p = Producer({"bootstrap.servers": broker.bootstrap})
            p.produce("rules", value=b"rules: [{name: y, stream: nope}]")
            p.flush(10)
            wait_until(lambda: source.poll() is None and source.rejected == 1, timeout_s=20,
                       what="the invalid rules message read and refused")
        finally:
            source.close()


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "alerts", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=60)


def test_alerts_cli_silence_list_expire_and_test_a_channel(tmp_path):
    receiver = Receiver(secret="s3")
    env = {"RISKSTREAM_STATE_DIR": str(tmp_path / "state"), "RISKSTREAM_LAKE_PATH": str(tmp_path / "lake"),
           "RISKSTREAM_ALERT_WEBHOOK_URL": receiver.url, "RISKSTREAM_ALERT_WEBHOOK_SECRET": "s3"}
    try:
        out = _cli("silence", "--matcher", "rule=metric_anomaly", "--matcher", "entity=~web-.*",
                   "--duration", "2h", "--comment", "deploy of web", env=env)
        assert out.returncode == 0, out.stderr
        silence_id = out.stdout.split()[1]
        listed = json.loads(_cli("list", "--json", env=env).stdout)
        assert [s["silence_id"] for s in listed["silences"]] == [silence_id]
        assert listed["firing"] == [] and listed["recent"] == []
        assert _cli("expire", silence_id, env=env).returncode == 0
        assert json.loads(_cli("list", "--json", env=env).stdout)["silences"] == []
        bad = _cli("silence", "--matcher", "rule", "--comment", "x", env=env)
        assert bad.returncode == 2 and "label=value" in bad.stderr

        out = _cli("test", "--channel", "webhook", env=env)
        assert out.returncode == 0, out.stderr
        assert receiver.requests[0]["verified"]
        assert receiver.requests[0]["body"]["rule"] == "riskstream_test"
        assert _cli("test", "--channel", "slack", env=env).returncode == 2  # not configured
    finally:
        receiver.close()


def test_alerts_list_shows_firing_silenced_and_recent_alerts_from_the_lake(tmp_path):
    from lake_fixtures import make_record
    from sinks.lake import LakeWriter

    now = int(time.time() * 1000)
    labels = lambda rule, **kw: json.dumps({"rule": rule, **kw})  # noqa: E731
    rows = [  # as the worker publishes them: a firing record per incident, then its resolution
        make_record("alerts", 1, time_ms=now - 600_000, alert_id="anom-1", incident_id="anom-1",
                    rule="metric_anomaly", severity="critical", stream="system-metrics",
                    entity="web-1/cpu", status="firing", labels=labels("metric_anomaly", team="sre")),
        make_record("alerts", 2, time_ms=now - 900_000, alert_id="fail-1", incident_id="fail-1",
                    rule="payment_failure_rate", entity="merch-7", status="firing",
                    labels=labels("payment_failure_rate", team="payments")),
        make_record("alerts", 3, time_ms=now - 300_000, alert_id="fail-1r", incident_id="fail-1",
                    rule="payment_failure_rate", entity="merch-7", status="resolved",
                    labels=labels("payment_failure_rate", team="payments")),
        make_record("alerts", 4, time_ms=now - 2 * 86_400_000, alert_id="old-1",
                    incident_id="old-1", rule="transaction_score_high", entity="card-9",
                    status="firing", labels=labels("transaction_score_high", team="fraud")),
    ]
    with LakeWriter(tmp_path / "lake") as lake:
        lake.recover("alerts")
        lake.write("alerts", rows, {0: (0, len(rows) - 1)})
    env = {"RISKSTREAM_STATE_DIR": str(tmp_path / "state"),
           "RISKSTREAM_LAKE_PATH": str(tmp_path / "lake")}
    out = _cli("silence", "--matcher", "team=sre", "--duration", "1h", "--comment", "db failover",
               env=env)
    assert out.returncode == 0, out.stderr
    silence_id = out.stdout.split()[1]
    listed = json.loads(_cli("list", "--json", env=env).stdout)
    # firing: the incidents without a resolution, newest first, the older than 24 h included
    assert [r["incident"] for r in listed["firing"]] == ["anom-1", "old-1"]
    # silenced: the firing incident a silence mutes (matched on its labels, as the dispatcher)
    assert [(r["incident"], r["silenced_by"]) for r in listed["silenced"]] == [("anom-1", silence_id)]
    # recent: every record of the last 24 h, the resolution too
    assert [(r["alert_id"], r["status"]) for r in listed["recent"]] == [
        ("fail-1r", "resolved"), ("anom-1", "firing"), ("fail-1", "firing")]
    text = _cli("list", env=env).stdout
    assert "FIRING (2)" in text and f"anom-1  silenced by {silence_id}" in text
    assert "SILENCES (1)" in text and "RECENT (3, last 24h)" in text
