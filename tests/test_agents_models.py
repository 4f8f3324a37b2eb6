"""Unit tests of the plain-Python models the agents use: no Faust, no broker."""

from __future__ import annotations

import random

from agents.aggregate import WindowAggregator
from agents.alerting import AlertEngine, alert_id
from agents.anomaly import MetricScorer
from agents.rules import parse_rules
from agents.fraud import ApplicationScorer, TransactionScorer
from agents.validate import Deduplicator

T0 = 1_790_000_000_000  # a fixed event time (ms), 2026-09


def txn(i: int, **overrides) -> dict:
    event = {"event_id": f"t{i}", "event_time": T0 + i * 1000, "card_id": f"c{i % 20}",
             "account_id": "a", "merchant_id": f"m{i % 5}", "mcc": "5411", "amount": 20.0 + i % 9,
             "currency": "EUR", "channel": "pos", "country": "FR", "status": "approved",
             "device_id": f"d{i % 20}", "ip": None}
    return {**event, **overrides}


def test_transaction_scores_are_probabilities_with_decisions_and_reasons():
    scorer = TransactionScorer(seed=1)
    records = [scorer.score_record(txn(i), T0) for i in range(600)]
    assert all(0.0 <= r["score"] <= 1.0 for r in records)
    assert {r["decision"] for r in records} <= {"approve", "review", "decline"}
    # A card seen 30 times in France on one device, then abroad on a new device, big amount.
    odd = scorer.score_record(txn(10_000, card_id="c1", country="BR", device_id="new",
                                  amount=4_000.0, channel="ecom"), T0)
    assert {"new_country", "new_device"} <= set(odd["reasons"])
    typical = [r["score"] for r in records[-100:]]
    assert odd["score"] > sorted(typical)[90]  # above the 90th percentile of normal traffic


def test_transaction_scorer_learns_from_delayed_labels():
    scorer = TransactionScorer(seed=1, min_labels=20)
    rng = random.Random(3)
    for i in range(400):
        fraud = rng.random() < 0.2
        event = txn(i, amount=3_000.0 if fraud else 20.0, channel="ecom" if fraud else "pos")
        scorer.score_record(event, T0)
        assert scorer.learn_label(event["event_id"], int(fraud))
    assert not scorer.learn_label("never-scored", 1)  # unknown event: reported, not learned
    fraud_like = scorer.score_record(txn(1_000, amount=3_000.0, channel="ecom"), T0)["score"]
    genuine = scorer.score_record(txn(1_001, amount=20.0), T0)["score"]
    assert fraud_like > genuine


def test_application_identity_reuse_is_a_reason():
    scorer = ApplicationScorer(seed=1)
    app = {"event_id": "a1", "event_time": T0, "applicant_id": "p1", "ssn_hash": "h",
           "income": 50_000.0, "requested_amount": 5_000.0, "employment": "employed",
           "age_years": 40, "device_id": "d1", "product": "credit_card"}
    first = scorer.score_record(app, T0)
    again = scorer.score_record({**app, "event_id": "a2", "applicant_id": "p2"}, T0)
    assert "identity_reuse" not in first["reasons"]
    assert "identity_reuse" in again["reasons"]


def test_metric_scorer_warms_up_then_flags_a_spike_with_its_band():
    scorer = MetricScorer(warmup=30, anomaly_threshold=0.9)
    rng = random.Random(5)
    scores = []
    for i in range(200):
        value = 50 + rng.gauss(0, 2)
        scores.append(scorer.score_record(
            {"event_id": f"s{i}", "event_time": T0 + i * 10_000, "host": "h1", "service": "api",
             "metric": "cpu", "value": value}, T0)["score"])
    assert scores[:30] == [0.0] * 30          # cold start: no alarm storm
    assert max(scores[30:]) < 0.9             # ordinary noise stays under the threshold
    spike = scorer.score_record({"event_id": "x", "event_time": T0 + 2_000_000, "host": "h1",
                                 "service": "api", "metric": "cpu", "value": 95.0}, T0)
    assert spike["score"] >= 0.9 and spike["reason"] == "spike"
    assert spike["lower"] < 50 < spike["upper"]


def test_windows_close_on_the_watermark_and_late_events_are_counted():
    agg = WindowAggregator("transactions", window_size_ms=60_000, grace_ms=10_000,
                           flag_threshold=0.9)
    base = T0 - T0 % 60_000
    assert agg.add("m1", base + 1_000, 10.0, 0.1)
    assert agg.add("m1", base + 2_000, 30.0, 0.95)
    assert agg.add("m1", base + 2_500, 4.0, 0.5)
    assert agg.add("m2", base + 3_000, 5.0, 0.2)
    assert agg.pop_closed(0) == []                       # the window is still open
    assert agg.add("m1", base + 71_000, 1.0, 0.0)         # watermark passes the first window
    closed = {w["group_key"]: w for w in agg.pop_closed(0)}
    assert closed["m1"]["count"] == 3 and closed["m1"]["sum"] == 44.0
    assert closed["m1"]["min"] == 4.0 and closed["m1"]["max"] == 30.0
    assert closed["m1"]["flagged"] == 1 and closed["m1"]["score_max"] == 0.95
    assert closed["m2"]["count"] == 1
    assert not agg.add("m1", base + 5_000, 1.0, 0.0)     # late: its window already closed
    assert agg.late == 1


def test_a_window_of_many_groups_closes_over_several_calls_when_limited():
    """``limit`` bounds what one call emits (the worker's batch would otherwise carry a window
    of every merchant at once); the rest stay closed in the state, through a checkpoint, and
    come out on the next calls: each group window exactly once, none late-added meanwhile."""
    import orjson

    agg = WindowAggregator("transactions", window_size_ms=60_000, grace_ms=0)
    base = T0 - T0 % 60_000
    for i in range(1_200):
        agg.add(f"m{i:04d}", base + i, 1.0, 0.1)
    agg.add("m-next", base + 60_000 + 1, 1.0, 0.1)      # the watermark closes the first window
    first = agg.pop_closed(0, limit=500)
    assert len(first) == 500
    assert not agg.add("m0999", base + 5, 1.0, 0.1)     # its window is closed, not yet emitted
    restored = WindowAggregator("transactions", window_size_ms=60_000, grace_ms=0)
    restored.load_state(orjson.loads(agg.json_state()))  # a checkpoint between two batches
    rest = [restored.pop_closed(0, limit=500), restored.pop_closed(0, limit=500)]
    assert [len(r) for r in rest] == [500, 200]
    assert restored.pop_closed(0, limit=500) == []
    emitted = [w["group_key"] for w in first + rest[0] + rest[1]]
    assert emitted == [f"m{i:04d}" for i in range(1_200)]
    assert all(w["count"] == 1 for w in first + rest[0] + rest[1])
    assert [w["group_key"] for w in restored.pop_closed(0, everything=True)] == ["m-next"]


def test_window_state_round_trips_through_json():
    import orjson

    agg = WindowAggregator("system-metrics")
    for i in range(5):
        agg.add(f"h{i % 2}/cpu", T0 + i * 30_000, float(i), 0.5)
    state = orjson.loads(agg.json_state())
    copy = WindowAggregator("system-metrics")
    copy.load_state(state)
    # a checkpoint written before by_start: one row [group, start, *aggregate] per window
    rows = [[group, int(start), *aggregate] for start, groups in state["by_start"].items()
            for group, aggregate in groups.items()]
    old = WindowAggregator("system-metrics")
    old.load_state({"max_event_ms": state["max_event_ms"], "late": 0, "windows": rows})
    expected = agg.pop_closed(0, everything=True)
    assert len(expected) == 5  # two groups over three minutes (T0 is not on a minute)
    assert copy.pop_closed(0, everything=True) == expected
    assert old.pop_closed(0, everything=True) == expected


def test_deduplicator_forgets_after_the_ttl():
    dedup = Deduplicator(ttl_ms=60_000)
    tp = ("transactions", 0)
    assert not dedup.seen(tp, "e1", T0)
    assert dedup.seen(tp, "e1", T0 + 1)                 # resent: duplicate
    assert not dedup.seen(("transactions", 1), "e1", T0)  # another partition's state
    assert not dedup.seen(tp, "e2", T0 + 120_000)       # time moves on: e1 is forgotten
    assert not dedup.seen(tp, "e1", T0 + 120_001)


def test_threshold_rule_fires_once_then_resolves_then_fires_again_with_stable_ids():
    rule = ("rules:\n  - {name: high, stream: transactions, field: score, value: 0.9, "
            "resolve_after: 1m, cooldown: 5m}\n")
    engine = AlertEngine(parse_rules(rule), grace_ms=0)
    hot = {"event_id": "e1", "event_time": T0, "score": 0.95, "reasons": ["new_country"]}

    def observe(record: dict, entity: str = "c1") -> list[dict]:
        return engine.observe("transactions", record, entity, T0, "transactions:0")

    [alert] = observe(hot)
    assert alert["alert_id"] == alert_id("high", "e1") and "new_country" in alert["summary"]
    # 2nd hot event on the same card 1 minute later: the alert is still firing, no new one
    assert observe({**hot, "event_id": "e2", "event_time": T0 + 60_000}) == []
    # quiet for more than resolve_after: one resolved notification
    assert observe({**hot, "event_id": "q", "score": 0.1, "event_time": T0 + 200_000}) == []
    assert [a["status"] for a in engine.tick("transactions", T0)] == ["resolved"]
    # after the cooldown the card alerts again
    assert [a["event_id"] for a in observe({**hot, "event_id": "e3",
                                            "event_time": T0 + 600_000})] == ["e3"]
    assert observe({**hot, "event_id": "e4", "score": 0.5}, "c2") == []
