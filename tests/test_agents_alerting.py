"""The alert engine and its lifecycle, without Faust: records in, notifications out."""

from __future__ import annotations

from functools import partial

import orjson
import pytest

from agents.alerting import AlertEngine, alert_id, alert_row, quantile_of, sql_literal
from agents.lifecycle import resolved_id
from agents.rules import parse_rules
from sinks.lake import to_arrow

T0 = 1_714_570_000_000  # 2024-05-01T13:26:40Z
MIN = 60_000

RULES = """
defaults: {resolve_after: 5m, cooldown: 10m}
rules:
  - {name: metric_anomaly, kind: threshold, stream: system-metrics, field: score, op: ">=",
     value: 0.9, severity: critical}
  - {name: declined, kind: threshold, stream: transactions, field: decision, op: "==",
     value: decline}
  - name: payment_failure_rate
    kind: rate
    stream: transactions
    match: {status: [declined, failed]}
    group: merchant_id
    window: 5m
    min_count: 10
    value: 0.05
    group_by: [rule]
  - name: service_latency_p95
    kind: quantile
    stream: system-metrics
    where: {metric: latency_p95_ms}
    field: value
    group: service
    window: 5m
    min_count: 100
    value: 500
inhibit:
  - {source: {rule: service_latency_p95}, target: {rule: metric_anomaly}, equal: [service]}
"""


def engine(**kw) -> AlertEngine:
    return AlertEngine(parse_rules(RULES), dashboard_url="https://grafana.example/", grace_ms=0, **kw)


def sample(i: int, *, score: float, host: str = "web-1", metric: str = "cpu", value: float = 40.0,
           t: int | None = None) -> dict:
    return {"event_id": f"met-{i}", "event_time": T0 + i * 1000 if t is None else t, "host": host,
            "service": "api", "metric": metric, "value": value, "score": score,
            "reason": "spike" if score >= 0.9 else None}


def txn(i: int, *, t: int, merchant: str = "m1", status: str = "approved", card: str = "c1",
        decision: str = "approve") -> dict:
    return {"event_id": f"txn-{i}", "event_time": t, "card_id": card, "merchant_id": merchant,
            "status": status, "score": 0.1, "decision": decision, "reasons": []}


def run(e: AlertEngine, stream: str, records: list[dict], entity) -> list[dict]:
    out = []
    for r in records:
        out += e.observe(stream, r, entity(r), 0)
        out += e.tick(stream, 0)  # a batch per record: the worst case for flapping
    return out


def test_a_flapping_metric_is_one_alert_and_one_resolution_not_fifty():
    e = engine()
    # 100 samples, every other one anomalous: 50 crossings of the threshold
    flaps = [sample(i, score=0.95 if i % 2 else 0.1) for i in range(100)]
    # then 10 quiet minutes: the alert resolves after 5
    quiet = [sample(100 + i, score=0.1, t=T0 + 100_000 + i * 30_000) for i in range(20)]
    out = run(e, "system-metrics", flaps + quiet, lambda r: f"{r['host']}/{r['metric']}")
    assert [a["status"] for a in out] == ["firing", "resolved"]
    firing, resolved = out
    assert firing["alert_id"] == alert_id("metric_anomaly", "met-1")  # the first crossing
    assert firing["event_id"] == "met-1" and firing["rule"] == "metric_anomaly"
    assert resolved["incident_id"] == firing["alert_id"] == firing["incident_id"]
    assert resolved["alert_id"] == resolved_id(firing["alert_id"])
    assert resolved["summary"].startswith("RESOLVED")


def test_an_alert_record_is_built_only_when_its_alert_opens():
    """A condition that keeps holding (a flapping metric, a merchant's failure rate over window
    after window) opens one alert: its record, with summary, query and links, is built for that
    one activation, not for every repeat (thousands at once when the watermark closes a window
    of every merchant)."""
    built: list[str] = []

    class Counting(AlertEngine):
        def _threshold_alert(self, rule, *args):
            built.append(rule.name)
            return super()._threshold_alert(rule, *args)

        def _window_alert(self, rule, *args):
            built.append(rule.name)
            return super()._window_alert(rule, *args)

    e = Counting(parse_rules(RULES), dashboard_url="https://grafana.example/", grace_ms=0)
    flaps = [sample(i, score=0.95 if i % 2 else 0.1) for i in range(100)]
    out = run(e, "system-metrics", flaps, lambda r: f"{r['host']}/{r['metric']}")
    # 20 % of m2's payments fail for 30 minutes: its window closes over the threshold six times
    t1 = T0 + 20 * MIN
    for i in range(600):
        e.observe("transactions", txn(i, t=t1 + i * 3000, merchant="m2",
                                      status="failed" if i % 5 == 0 else "approved"), "c1", 0)
        out += e.tick("transactions", 0)
    assert [(a["rule"], a["status"]) for a in out] == [("metric_anomaly", "firing"),
                                                       ("payment_failure_rate", "firing")]
    assert built == ["metric_anomaly", "payment_failure_rate"]
    assert e.lifecycle.to_state("")["alerts"]["payment_failure_rate|m2"]["hits"] >= 5


@pytest.mark.parametrize("records_per_tick", [10, 20])
def test_a_rule_over_many_groups_is_evaluated_a_share_per_tick_with_the_same_alerts(
        records_per_tick):
    """When the watermark enters a new window, a rate rule's groups are evaluated at most
    ``groups_per_tick`` per tick, the rest on the next ticks: the same notifications as all
    at once. With 10 ticks per window each tick's evaluation is bounded; with 5 (too few to
    share 40 groups out 7 at a time) those left go all at once when the next window opens."""
    import random

    rules = parse_rules("""
rules:
  - {name: failure_rate, kind: rate, stream: transactions, match: {status: [failed]},
     group: merchant_id, window: 5m, min_count: 10, op: ">", value: 0.2,
     resolve_after: 5m, cooldown: 0s}
""")
    evaluated: list[int] = []

    class Bounded(AlertEngine):
        groups_per_tick = 7

        def _evaluate_windows(self, rule, wm, created_at_ms, keys):
            keys = list(keys)
            evaluated.append(len(keys))
            return super()._evaluate_windows(rule, wm, created_at_ms, keys)

    bounded, reference = Bounded(rules, grace_ms=0), AlertEngine(rules, grace_ms=0)
    rng = random.Random(3)
    # 40 merchants, some failing a third of their payments in some minutes: alerts open and
    # resolve over 40 minutes of event time, 10 or 20 records (6 or 12 s) per tick
    got: dict[str, list] = {"bounded": [], "reference": []}
    for i in range(4000):
        t = T0 + i * 600
        m = rng.randrange(40)
        failing = m % 5 == 0 and (t - T0) // (8 * MIN) % 2 == 0
        record = txn(i, t=t, merchant=f"m{m}",
                     status="failed" if failing and rng.random() < 0.35 else "approved")
        for name, e in (("bounded", bounded), ("reference", reference)):
            got[name] += e.observe("transactions", record, "c1", 0)
            if i % records_per_tick == records_per_tick - 1:
                got[name] += e.tick("transactions", 0)
    key = lambda a: (a["alert_id"], a["status"])  # noqa: E731
    assert len(got["reference"]) >= 10
    assert sorted(map(key, got["bounded"])) == sorted(map(key, got["reference"]))
    if records_per_tick == 10:
        assert max(evaluated) <= 7 and len(evaluated) > 200
    else:
        assert max(evaluated) > 7
        # five ticks a hop share out 35 of the 40 groups: a new hop's first tick evaluates the
        # five left and its own seven, never every group at once
        assert max(evaluated) <= 2 * 7


def test_a_partition_handed_over_while_its_groups_wait_to_be_evaluated():
    """Groups still queued for evaluation when their partition moves to another worker
    (``forget_slice``) are skipped at the next window, not an error that stops the worker."""
    rules = parse_rules("""
rules:
  - {name: failure_rate, kind: rate, stream: transactions, match: {status: [failed]},
     group: merchant_id, window: 5m, min_count: 1, op: ">", value: 0.5}
""")

    class Bounded(AlertEngine):
        groups_per_tick = 1

    e = Bounded(rules, grace_ms=0)
    for m in range(3):
        e.observe("transactions", txn(m, t=T0 + m, merchant=f"m{m}", status="failed"), "c1", 0,
                  slice_="transactions:0")
    e.observe("transactions", txn(9, t=T0 + 2 * MIN, merchant="m9"), "c1", 0,
              slice_="transactions:1")
    first = e.tick("transactions", 0)          # a new window: one group now, two queued
    e.forget_slice("transactions:0")
    e.observe("transactions", txn(10, t=T0 + 4 * MIN, merchant="m9"), "c1", 0,
              slice_="transactions:1")
    assert e.tick("transactions", 0) == []     # the next window: the two forgotten skipped
    assert [a["entity"] for a in first] == ["m0"]


def test_cooldown_after_resolution_then_fires_again():
    e = engine()
    ent = lambda r: "web-1/cpu"  # noqa: E731
    out = run(e, "system-metrics", [sample(0, score=0.95, t=T0),
                                    sample(1, score=0.1, t=T0 + 6 * MIN)], ent)
    assert [a["status"] for a in out] == ["firing", "resolved"]
    # 3 minutes after the resolution: inside the 10 min cooldown, quiet
    assert run(e, "system-metrics", [sample(2, score=0.95, t=T0 + 9 * MIN)], ent) == []
    # 20 minutes after: a new incident with a new id
    again = run(e, "system-metrics", [sample(3, score=0.95, t=T0 + 26 * MIN)], ent)
    assert [a["status"] for a in again] == ["firing"] and again[0]["event_id"] == "met-3"


def test_the_alert_explains_itself():
    e = engine()
    out = e.observe("system-metrics", sample(7, score=0.97, host="o'db"), "o'db/cpu", 5)
    a = out[0]
    assert a["value"] == 0.97 and a["threshold"] == 0.9 and a["condition"] == "score >= 0.9"
    assert a["reasons"] == ["spike"] and a["window_ms"] == 300_000
    assert a["labels"]["host"] == "o'db" and a["labels"]["severity"] == "critical"
    assert a["dashboard_url"].startswith("https://grafana.example/d/riskstream-alerts?var-rule=")
    # the query quotes the host safely and runs as ClickHouse SQL
    assert "host = 'o\\'db'" in a["query"] and a["query"].startswith("SELECT * FROM metric_samples")
    assert sql_literal("a\\'b") == "'a\\\\\\'b'"
    # the record fits the alerts table of the lake
    assert to_arrow("alerts", [alert_row(a)]).num_rows == 1
    assert orjson.loads(alert_row(a)["labels"])["rule"] == "metric_anomaly"


def test_threshold_on_decisions():
    e = engine()
    out = e.observe("transactions", txn(1, t=T0, decision="decline"), "c1", 0)
    assert [a["rule"] for a in out] == ["declined"] and out[0]["condition"] == "decision == 'decline'"


def test_failure_rate_needs_its_minimum_count_and_groups_merchants_into_one_incident():
    e = engine()
    out = []
    # 9 payments at m1 in 5 min, 3 failed (33%): under min_count 10, nothing
    for i in range(9):
        out += e.observe("transactions", txn(i, t=T0 + i * 1000, status="failed" if i < 3 else "approved"), "c1", 0)
    out += e.tick("transactions", 0)
    e.observe("transactions", txn(99, t=T0 + 7 * MIN, merchant="other"), "c9", 0)
    out += e.tick("transactions", 0)
    assert out == []
    # 40 payments at each of m2 and m3, 10% failed: two merchants fire, one incident
    t1 = T0 + 20 * MIN
    for m in ("m2", "m3"):
        for i in range(40):
            out += e.observe("transactions", txn(i, t=t1 + i * 1000, merchant=m,
                                                 status="failed" if i % 10 == 0 else "approved"), "c1", 0)
    e.observe("transactions", txn(100, t=t1 + 2 * MIN, merchant="other"), "c9", 0)
    out += e.tick("transactions", 0)
    assert [a["status"] for a in out] == ["firing"]
    a = out[0]
    assert a["rule"] == "payment_failure_rate" and a["value"] == 0.1 and a["count"] == 20  # the first window that closed
    assert a["group_key"] == "payment_failure_rate|rule=payment_failure_rate"
    assert "2 of 20" in a["reasons"][0] and "merchant_id = 'm2'" in a["query"]
    assert len(e.lifecycle.firing()) == 2  # m3 joined the incident silently
    # both merchants recover: one resolution for the incident
    e.observe("transactions", txn(101, t=t1 + 30 * MIN, merchant="other"), "c9", 0)
    out = e.tick("transactions", 0)
    assert [x["status"] for x in out] == ["resolved"] and out[0]["incident_id"] == a["alert_id"]


def test_p95_latency_over_the_service_inhibits_per_host_anomalies():
    e = engine()
    out = []
    for i in range(120):  # 120 samples of ~620 ms from four hosts of one service
        r = sample(i, score=0.1, host=f"web-{i % 4}", metric="latency_p95_ms", value=600 + i % 40,
                   t=T0 + i * 1000)
        out += e.observe("system-metrics", r, f"{r['host']}/latency_p95_ms", 0)
    e.observe("system-metrics", sample(500, score=0.1, t=T0 + 6 * MIN), "web-1/cpu", 0)
    out += e.tick("system-metrics", 0)
    assert [a["rule"] for a in out] == ["service_latency_p95"]
    assert abs(out[0]["value"] - 636) < 10 and out[0]["labels"]["service"] == "api"
    # a host anomaly of the same service while the service alert fires: held back
    assert e.observe("system-metrics", sample(501, score=0.99, t=T0 + 6 * MIN + 1), "web-1/cpu", 0) == []
    assert "metric_anomaly|web-1/cpu" in e.lifecycle.firing()


def test_state_survives_a_restart_per_partition():
    e = engine()
    ent = lambda r: "web-1/cpu"  # noqa: E731
    e.observe("system-metrics", sample(0, score=0.95, t=T0), "web-1/cpu", 0, "system-metrics:0")
    for i in range(12):
        e.observe("transactions", txn(i, t=T0 + i, status="failed"), "c1", 0, "transactions:1")
    states = {s: orjson.loads(orjson.dumps(e.to_state(s)))
              for s in ("system-metrics:0", "transactions:1")}
    copy = engine()
    for s, state in states.items():
        copy.load_state(state, s)
    # still firing after the restart: the next anomaly is not a new alert
    assert copy.observe("system-metrics", sample(1, score=0.95, t=T0 + 1000), "web-1/cpu", 0,
                        "system-metrics:0") == []
    assert [a["status"] for a in run(copy, "system-metrics",
                                     [sample(2, score=0.1, t=T0 + 6 * MIN)], ent)] == ["resolved"]
    # the rate window counts kept their 12 failures
    copy.observe("transactions", txn(50, t=T0 + 6 * MIN, merchant="x"), "c2", 0, "transactions:1")
    assert [a["rule"] for a in copy.tick("transactions", 0)] == ["payment_failure_rate"]


def test_a_version_1_checkpoint_restores_what_version_2_does():
    """Checkpoints written before version 2 (a list per bucket) restore the same windows as
    the nested version 2 the engine writes now, int bucket starts included."""
    e = engine()
    for i in range(30):
        e.observe("transactions", txn(i, t=T0 + i * 20_000, merchant=f"m{i % 3}",
                                      status="failed" if i % 4 == 0 else "approved"),
                  "c1", 0, "transactions:1")
        e.observe("system-metrics", sample(i, score=0.1, metric="latency_p95_ms",
                                           value=100.0 + i), "web-1/latency", 0,
                  "system-metrics:0")
    e.tick("transactions", 0)
    v2 = {sl: orjson.loads(raw)
          for sl, raw in e.json_states(["transactions:1", "system-metrics:0"]).items()}
    assert all(state["version"] == 2 for state in v2.values())

    def as_version_1(state: dict) -> dict:
        return {**state, "version": 1,
                "windows": [[rule, group, int(start), bucket]
                            for rule, groups in state["windows"].items()
                            for group, buckets in groups.items()
                            for start, bucket in buckets.items()],
                "evaluated": [[rule, group, end] for rule, ends in state["evaluated"].items()
                              for group, end in ends.items()]}

    restored = []
    for convert in (lambda state: state, as_version_1):
        copy = engine()
        for sl, state in v2.items():
            copy.load_state(convert(state), sl)
        restored.append(copy)
    for copy in restored:
        assert copy._buckets == e._buckets and copy._evaluated == e._evaluated
    assert e._evaluated  # windows were evaluated: their ends are part of the state
    assert all(isinstance(start, int) for slices in restored[1]._buckets.values()
               for buckets in slices.values() for start in buckets)


def test_a_partition_handed_over_leaves_the_others_and_comes_back_from_its_checkpoint():
    """A revoked partition's alert state is forgotten (its new owner checkpoints it on); the
    other partitions' state is untouched, and the partition's checkpoint restores it whole."""
    e = engine()
    for i in range(12):
        e.observe("transactions", txn(i, t=T0 + i, status="failed", decision="decline",
                                      card=f"c{i % 2}"), f"c{i % 2}", 0, f"transactions:{i % 2}")
    e.observe("system-metrics", sample(0, score=0.95, t=T0), "web-1/cpu", 0, "system-metrics:0")
    slices = ["transactions:0", "transactions:1", "system-metrics:0"]
    before = {sl: orjson.loads(raw) for sl, raw in e.json_states(slices).items()}
    assert before["transactions:0"]["lifecycle"]["alerts"]  # a declined alert, and counts
    assert before["transactions:0"]["windows"]

    e.forget_slice("transactions:0")
    after = {sl: orjson.loads(raw) for sl, raw in e.json_states(slices).items()}
    assert after["transactions:0"] == {"version": 2, "stream": None, "max_event_ms": None,
                                       "windows": {}, "evaluated": {},
                                       "lifecycle": {"alerts": {}, "groups": {}}}
    assert after["transactions:1"] == before["transactions:1"]
    assert after["system-metrics:0"] == before["system-metrics:0"]
    assert e.lifecycle.firing() == ["declined|c1", "metric_anomaly|web-1/cpu"]

    e.load_state(before["transactions:0"], "transactions:0")
    assert {sl: orjson.loads(raw) for sl, raw in e.json_states(slices).items()} == before


def test_an_incident_of_several_partitions_stays_with_the_ones_kept_and_resolves():
    """One incident for every declined payment (``group_by: [rule]``), opened by partition 0
    and joined by partition 1; partition 0 goes to another worker: the incident stays, kept
    under partition 1, and resolves when partition 1's alert does (not orphaned: no second
    incident opens, and the resolution is sent)."""
    e = AlertEngine(parse_rules(
        "defaults: {resolve_after: 5m, cooldown: 10m}\nrules:\n"
        "  - {name: declined, kind: threshold, stream: transactions, field: decision, op: '==',"
        " value: decline, group_by: [rule]}\n"), grace_ms=0)
    [opened] = e.observe("transactions", txn(0, t=T0, decision="decline", card="c0"), "c0", 0,
                         "transactions:0")
    assert e.observe("transactions", txn(1, t=T0 + 1, decision="decline", card="c1"), "c1", 0,
                     "transactions:1") == []
    e.forget_slice("transactions:0")
    assert e.lifecycle.to_state("transactions:1")["groups"]  # the incident, kept under 1
    assert e.observe("transactions", txn(2, t=T0 + 2, decision="decline", card="c2"), "c2", 0,
                     "transactions:1") == []  # joins it: no second incident
    e.observe("transactions", txn(3, t=T0 + 10 * MIN, card="c9"), "c9", 0, "transactions:1")
    [resolved] = e.tick("transactions", 0)
    assert (resolved["status"], resolved["incident_id"]) == ("resolved", opened["incident_id"])


def test_new_rules_keep_the_state_of_rules_that_stay():
    e = engine()
    e.observe("system-metrics", sample(0, score=0.95), "web-1/cpu", 0)
    e.set_rules(parse_rules(RULES.replace("value: 500", "value: 900")))
    assert e.lifecycle.firing() == ["metric_anomaly|web-1/cpu"]
    e.set_rules(parse_rules("rules: []"))
    assert e.lifecycle.firing() == []


def test_quantile_of_a_log_histogram_is_within_two_percent():
    hist: dict[str, int] = {}
    from agents.alerting import _bin
    for v in range(1, 1001):
        hist[_bin(float(v))] = hist.get(_bin(float(v)), 0) + 1
    assert abs(quantile_of(hist, 0.95) - 950) / 950 < 0.02


def test_the_three_example_rules_of_the_shipped_file_fire_at_their_thresholds_and_counts():
    """pipelines/rules.yaml as shipped: payment failure rate > 5% with >= 10 payments in 5 min
    (per merchant), error rate > 1% with >= 100, p95 latency > 500 ms with >= 100 samples."""
    from agents.rules import DEFAULT_RULES_PATH, load_rules

    shipped = load_rules(DEFAULT_RULES_PATH, params={"score_threshold": 0.9,
                                                     "anomaly_threshold": 0.9})
    t = T0 - T0 % (5 * MIN)  # every record in the first minute of one 5 min window

    def fired(stream: str, records: list[dict], entity) -> list[str]:
        e = AlertEngine(shipped, grace_ms=0)
        out = []
        for r in records:
            out += e.observe(stream, r, entity(r), 0)
        # one record 7 minutes later moves the watermark past every window holding the others
        late = records[0] | {"event_id": "later", "event_time": t + 7 * MIN, "merchant_id": "zz",
                             "service": "zz", "status": "approved", "value": 1.0}
        e.observe(stream, late, entity(late), 0)
        out += e.tick(stream, 0)
        return sorted(a["rule"] for a in out if a["status"] == "firing")

    def payments(merchant: str, n: int, status: str, bad: int) -> list[dict]:
        return [txn(i, t=t + i * 100, merchant=merchant, card=f"c{i}",
                    status=status if i < bad else "approved") for i in range(n)]

    card = lambda r: r["card_id"]  # noqa: E731
    # failure rate, per merchant: 3 of 9 declined is under the minimum count; 1 of 20 is 5%,
    # not more; 1 of 10 is 10% with 10 payments: fires
    assert fired("transactions", payments("m1", 9, "declined", 3), card) == []
    assert fired("transactions", payments("m1", 20, "declined", 1), card) == []
    assert fired("transactions", payments("m1", 10, "declined", 1), card) == ["payment_failure_rate"]
    # error rate over all payments: 2 failed of 99 is under the minimum count, 2 of 100 fires,
    # 1 of 100 is 1%, not more; spread over 50 merchants, so no merchant's own failure rate
    # counts 10 payments
    spread = lambda n, bad: [r | {"merchant_id": f"m{i % 50}"}  # noqa: E731
                             for i, r in enumerate(payments("m", n, "failed", bad))]
    assert fired("transactions", spread(99, 2), card) == []
    assert fired("transactions", spread(100, 2), card) == ["payment_error_rate"]
    assert fired("transactions", spread(100, 1), card) == []

    # p95 latency per service: 99 samples over 500 ms are too few; 100 samples over fire;
    # 100 samples at 450 ms do not
    def latency(n: int, ms: float) -> list[dict]:
        return [sample(i, score=0.1, host=f"web-{i % 4}", metric="latency_p95_ms", value=ms,
                       t=t + i * 100) for i in range(n)]

    series = lambda r: f"{r['host']}/{r['metric']}"  # noqa: E731
    assert fired("system-metrics", latency(99, 900), series) == []
    assert fired("system-metrics", latency(100, 900), series) == ["service_latency_p95"]
    assert fired("system-metrics", latency(100, 450), series) == []


def test_a_restarted_worker_restores_alert_state_from_its_checkpoint(tmp_path):
    """The worker's wiring (pipelines/app.py): the state it checkpoints per input partition,
    loaded by a new worker before its first batch, keeps the alert firing (nothing re-sent),
    where a worker without it would notify again."""
    from agents.aggregate import WindowAggregator
    from factories import make_transaction
    from pipelines.app import Pipeline
    from pipelines.settings import ModelSettings, Settings
    from test_agents_snapshot import CollectingOutputs

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: big_payment, stream: transactions, field: amount, "
                     "op: '>', value: 1000}\n")

    def worker(state: dict | None) -> Pipeline:
        settings = Settings()
        settings.__dict__["model"] = ModelSettings(snapshot_dir=tmp_path / "models")
        settings.__dict__["alert"] = settings.alert.model_copy(update={"rules_path": rules})
        pipeline = Pipeline(settings, CollectingOutputs())
        pipeline.alert_slice("transactions:0", lambda: state)  # the agent, before a batch
        return pipeline

    def alerts(pipeline: Pipeline, i: int) -> list[dict]:
        event = make_transaction(now_ms=T0 + i * 1000, event_id=f"big-{i}", amount=5000.0)
        sent = len(pipeline.outputs.sent)
        pipeline.score_batch("transactions", [{**event, "stream": "transactions"}],
                             WindowAggregator("transactions"), 0)
        return [r for t, r in pipeline.outputs.sent[sent:] if t == "alerts"]

    first = worker(None)
    assert [a["rule"] for a in alerts(first, 0)] == ["big_payment"]
    checkpoint = {k: orjson.loads(v)
                  for k, v in first.alerts.json_states(["transactions:0"]).items()}
    assert alerts(worker(checkpoint["transactions:0"]), 1) == []  # still firing: not re-sent
    assert len(alerts(worker(None), 1)) == 1  # without the state it would have been


def test_a_partitions_alert_checkpoint_is_read_before_its_first_batch_only(tmp_path):
    """The agent hands ``alert_slice`` a reader of the checkpoint before every batch; the
    checkpoint is decoded once per input partition, not once per batch."""
    from pipelines.app import Pipeline
    from pipelines.settings import ModelSettings, Settings
    from test_agents_snapshot import CollectingOutputs

    settings = Settings()
    settings.__dict__["model"] = ModelSettings(snapshot_dir=tmp_path / "models")
    pipeline = Pipeline(settings, CollectingOutputs())
    reads: list[str] = []

    def reader(key: str):
        return lambda: reads.append(key)

    for key in ("transactions:0", "transactions:1", "transactions:0", "transactions:0"):
        pipeline.alert_slice(key, reader(key))
    assert reads == ["transactions:0", "transactions:1"]
    # a rebalance revokes every partition; the new assignment keeps transactions:1 only
    for partition in (0, 1):
        pipeline.release("transactions", partition)
    pipeline.keep_alert_slices({"transactions:1"})
    for key in ("transactions:1", "transactions:0"):
        pipeline.alert_slice(key, reader(key))
    # kept: not read again; handed to another worker and back: read again (that worker
    # checkpointed it meanwhile)
    assert reads == ["transactions:0", "transactions:1", "transactions:0"]


def test_the_alert_query_runs_on_the_lake_and_returns_the_affected_rows(tmp_path):
    from lake_fixtures import make_record
    from sinks.clickhouse import query_rows
    from sinks.lake import LakeWriter

    t = T0 - T0 % (5 * MIN)
    rows = [make_record("scored-transactions", i, time_ms=t + i * 1000, merchant_id="m'2",
                        status="declined" if i < 2 else "approved") for i in range(12)]
    rows += [make_record("scored-transactions", 100 + i, time_ms=t + i * 1000, merchant_id="m3")
             for i in range(5)]  # another merchant, same minutes: not affected
    later = make_record("scored-transactions", 999, time_ms=t + 7 * MIN, merchant_id="m3")
    with LakeWriter(tmp_path / "lake") as lake:
        lake.recover("scored-transactions")
        lake.write("scored-transactions", rows + [later], {0: (0, len(rows))})
    e = engine()
    for r in rows + [later]:
        e.observe("transactions", r, r["card_id"], 0)
    fired = [a for a in e.tick("transactions", 0) if a["rule"] == "payment_failure_rate"]
    assert len(fired) == 1 and fired[0]["entity"] == "m'2"
    got = query_rows(tmp_path / "lake", fired[0]["query"])
    assert sorted(r["event_id"] for r in got) == sorted(r["event_id"] for r in rows[:12])


def test_the_lifecycle_skips_its_walk_only_when_the_full_walk_would_change_nothing():
    """``advance`` returns early until a watermark reaches an alert's resolution or the end of
    its cooldown; random activations and advances (grouping, inhibition, cooldowns, a new rule
    set, a restore) give exactly the notifications and states of a walk over every alert."""
    import random

    from agents.lifecycle import Lifecycle
    from agents.rules import Inhibition, Matcher

    class Walking(Lifecycle):  # the reference: every advance walks every alert
        def advance(self, watermarks, created_at_ms, describe_resolved=None):
            self._due.clear()
            self._release_pending = True
            return super().advance(watermarks, created_at_ms, describe_resolved)

    inhibit = [Inhibition(Matcher({"rule": ("outage",)}), Matcher({"rule": ("slow",)}),
                          ("service",))]
    rng = random.Random(5)
    fast, walking = Lifecycle(inhibit), Walking(inhibit)
    clock = {"a": T0, "b": T0}
    notified = 0
    for step in range(4000):
        stream = rng.choice("ab")
        clock[stream] += rng.choice([0, 1, 10, 100, 1000, 30_000])
        t, op = clock[stream], rng.random()
        if op < 0.6:
            rule, entity, service = rng.choice(["outage", "slow", "spend"]), rng.randrange(6), \
                rng.choice(["api", "db"])
            record = {"alert_id": f"id-{step}", "labels": {"rule": rule, "service": service},
                      "group_key": f"{rule}|{service}" if rule == "spend" else f"{rule}|{entity}"}
            kwargs = dict(stream=stream, resolve_after_ms=rng.choice([1000, 60_000]),
                          cooldown_ms=rng.choice([0, 5000, 120_000]), slice_=f"{stream}:0")
            key = f"{rule}|{entity}"
            assert fast.activate(key, t, partial(dict, record), **kwargs) == walking.activate(
                key, t, partial(dict, record), **kwargs)
        elif op < 0.98:
            got = fast.advance({stream: t}, step)
            assert got == walking.advance({stream: t}, step)
            notified += len(got)
        elif op < 0.99:
            rules = inhibit if rng.random() < 0.5 else []
            for lc in (fast, walking):
                lc.inhibit = rules
                lc.forget_rules({"outage", "slow"})
        else:
            for lc in (fast, walking):
                lc.load_state(orjson.loads(orjson.dumps(lc.to_state("a:0"))), "a:0")
        assert fast.to_state("a:0") == walking.to_state("a:0")
        assert fast.to_state("b:0") == walking.to_state("b:0")
    assert notified > 100  # the walk did resolve and release things


def test_a_threshold_rule_fires_exactly_when_its_comparison_holds_for_every_operator_and_type():
    # observe() compares with the operator itself, not ``Rule.compare``: the two must agree,
    # a value of another type (a string against a number) included, which never fires
    ops = ("==", "!=", ">", ">=", "<", "<=", "in")
    thresholds = {"in": ["decline", "review"], "==": "decline"}
    observed_values = (None, 0.5, 0.9, 1, True, "decline", "approve", ["decline"])
    for op in ops:
        value = thresholds.get(op, 0.9)
        field = "decision" if isinstance(thresholds.get(op), str | list) else "score"
        rules = parse_rules(f"""
rules:
  - {{name: r, kind: threshold, stream: transactions, field: {field}, op: "{op}",
     value: {orjson.dumps(value).decode()}}}
""")
        e = AlertEngine(rules, grace_ms=0)
        rule = rules.rules[0]
        for i, observed in enumerate(observed_values):
            record = {**txn(i, t=T0 + i, card=f"c{i}"), field: observed}
            fired = e.observe("transactions", record, f"c{i}", 0)
            assert bool(fired) == rule.compare(observed), (op, value, observed)
        assert any(rule.compare(v) for v in observed_values), op  # each op fires on something
    # and the comparisons themselves, written out
    expected = {(">", 0.9): False, (">=", 0.9): True, (">", 1): True, ("<", 0.5): True,
                ("<=", 0.9): True, ("!=", 0.5): True, (">", "decline"): False,
                ("<", None): False, ("==", "decline"): True, ("in", "approve"): False}
    for (op, observed), fires in expected.items():
        value = thresholds.get(op, 0.9)
        rule = parse_rules(f"""
rules:
  - {{name: r, kind: threshold, stream: transactions, field: score, op: "{op}",
     value: {orjson.dumps(value).decode()}}}
""").rules[0]
        assert rule.compare(observed) is fires, (op, observed)
