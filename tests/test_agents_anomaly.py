"""Unit tests of the metric detector (agents/anomaly.py): plain Python, no broker."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from agents.anomaly import MetricScorer

T0 = 1_790_000_000_000  # a fixed event time (ms), 2026-09
STEP_MS = 300_000       # one sample every 5 minutes
DAY = 288               # samples a day at 5 minutes


def sample(i: int, value: float, host: str = "h1", metric: str = "cpu") -> dict:
    return {"event_id": f"{host}-{metric}-{i}", "event_time": T0 + i * STEP_MS, "host": host,
            "service": "api", "metric": metric, "value": value}


def run(scorer: MetricScorer, values, host: str = "h1", start: int = 0) -> list[dict]:
    return [scorer.score_record(sample(start + i, v, host), T0) for i, v in enumerate(values)]


def noise(n: int, seed: int = 1, level: float = 50.0, sd: float = 2.0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0, sd) for _ in range(n)]


def test_scores_are_in_unit_interval_with_band_and_event_fields():
    records = run(MetricScorer(), noise(600))
    assert all(0.0 <= r["score"] <= 1.0 for r in records)
    last = records[-1]
    assert last["host"] == "h1" and last["scored_at"] == T0
    assert last["lower"] < last["expected"] < last["upper"]
    assert 44 < last["expected"] < 56


def test_new_series_warm_up_without_an_alarm_storm():
    scorer = MetricScorer(warmup=100)
    records = run(scorer, noise(100, level=10.0) + noise(500, seed=2, level=10.0))
    assert all(r["score"] == 0.0 for r in records[:100])       # cold start
    assert max(r["score"] for r in records[100:]) < 0.9          # ordinary noise: no alarm


def test_spike_alarms_once_with_reason_and_does_not_poison_the_baseline():
    scorer = MetricScorer()
    run(scorer, noise(500))
    spike = scorer.score_record(sample(500, 90.0), T0)
    assert spike["score"] >= 0.9 and spike["reason"] == "spike"
    after = run(scorer, noise(50, seed=3), start=501)
    assert max(r["score"] for r in after) < 0.9
    # the level barely moved: the spike was clipped before it updated the baseline
    assert abs(after[0]["expected"] - 50.0) < 2.0


def test_level_shift_alarms_once_then_becomes_the_new_normal():
    scorer = MetricScorer()
    run(scorer, noise(500))
    shifted = run(scorer, noise(300, seed=4, level=80.0), start=500)
    alarms = [i for i, r in enumerate(shifted) if r["score"] >= 0.9]
    assert alarms and alarms[0] <= 2                               # early
    assert len(alarms) == 1                                        # one alarm per episode
    assert shifted[alarms[0]]["reason"] in {"spike", "level_shift", "out_of_range"}
    assert abs(shifted[-1]["expected"] - 80.0) < 3.0               # re-baselined


def test_daily_seasonality_is_predicted_not_flagged():
    # a square wave: 20 by night, 80 by day, for 5 days; then a day that stays at night level
    day = [20.0 if (i % DAY) < DAY // 2 else 80.0 for i in range(DAY)]
    rng = random.Random(6)
    values = [v + rng.gauss(0, 0.5) for v in day * 5]
    scorer = MetricScorer()
    records = run(scorer, values)
    assert max(r["score"] for r in records[2 * DAY:]) < 0.9        # transitions expected
    broken = run(scorer, [20.0 + rng.gauss(0, 0.5) for _ in range(DAY)], start=5 * DAY)
    first = next(i for i, r in enumerate(broken) if r["score"] >= 0.9)
    assert DAY // 2 <= first <= DAY // 2 + 3                       # when the day should start


def test_stuck_series_is_flagged():
    scorer = MetricScorer(stuck_after=30)
    records = run(scorer, noise(500) + [51.0] * 40)
    stuck = [r for r in records[500:] if r["reason"] == "stuck"]
    assert len(stuck) == 1 and stuck[0]["score"] >= 0.9


def test_flat_series_is_quiet_until_it_moves():
    scorer = MetricScorer()
    records = run(scorer, [45.0] * 500)
    assert max(r["score"] for r in records) == 0.0
    assert scorer.score_record(sample(500, 47.0), T0)["score"] >= 0.9


def test_scores_are_comparable_across_scales():
    # the same shape at 1e-3 and at 1e6: the same scores
    small, large = MetricScorer(), MetricScorer()
    shape = noise(400, seed=7, level=10.0) + [30.0] + noise(50, seed=8, level=10.0)
    a = [r["score"] for r in run(small, [v * 1e-3 for v in shape])]
    b = [r["score"] for r in run(large, [v * 1e6 for v in shape])]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6


def test_silent_series_are_reported_once_per_silence_and_evicted_later():
    scorer = MetricScorer(silence_factor=5.0, evict_after_ms=86_400_000)
    run(scorer, noise(50), host="a")
    run(scorer, noise(50), host="b")
    last = T0 + 49 * STEP_MS
    assert scorer.silent_series(last + 4 * STEP_MS) == []          # 4 intervals: not yet
    scorer.score_record(sample(60, 50.0, host="b"), T0)            # b reports again
    silent = scorer.silent_series(last + 6 * STEP_MS)
    assert [r["host"] for r in silent] == ["a"]
    assert silent[0]["reason"] == "silent" and silent[0]["value"] is None
    assert silent[0]["score"] == 1.0
    assert scorer.silent_series(last + 7 * STEP_MS) == []          # reported once per episode
    scorer.silent_series(last + 2 * 86_400_000)                    # a full day later: evicted
    assert "h1/cpu" not in scorer._series and "a/cpu" not in scorer._series


def test_series_count_is_bounded():
    scorer = MetricScorer(max_series=10)
    for k in range(25):
        scorer.score_record(sample(0, 1.0, host=f"h{k}"), T0)
    assert len(scorer._series) == 10


def test_state_round_trip_resumes_with_identical_scores():
    day = [20.0 + 30.0 * math.sin(2 * math.pi * i / DAY) for i in range(DAY)]
    rng = random.Random(9)
    values = [v + rng.gauss(0, 1.0) for v in day * 3]
    values[700] += 40.0                                            # a spike after the stop
    for v in range(750, 800):
        values[v] += 15.0                                          # and a shift
    never_stopped = MetricScorer()
    expected = [r["score"] for r in run(never_stopped, values)]
    first = MetricScorer()
    run(first, values[:600])
    run(first, noise(300), host="other")                           # a second series
    state = orjson.loads(orjson.dumps(first.to_state()))           # through JSON on the wire
    resumed = MetricScorer()
    resumed.load_state(state)
    got = [r["score"] for r in run(resumed, values[600:], start=600)]
    assert got == expected[600:]
    assert max(expected[600:]) >= 0.9                              # the resumed part alarms too


def test_one_alarm_per_incident_then_the_series_is_held_quiet():
    scorer = MetricScorer(suppress_samples=50)
    run(scorer, noise(500))
    first = scorer.score_record(sample(500, 90.0), T0)
    assert first["score"] >= 0.9
    held = run(scorer, [90.0, 95.0] * 10 + noise(30, seed=11), start=501)
    assert all(r["score"] == 0.0 for r in held)                    # held for 50 samples
    again = scorer.score_record(sample(551, 140.0), T0)             # a new incident after it
    assert again["score"] >= 0.9



def test_weekly_pattern_is_predicted_and_a_weekend_like_weekday_flagged():
    # 5 weekdays with a daily cycle, then 2 quiet weekend days; a later Monday stays quiet
    rng = random.Random(12)

    def value(i: int, quiet: bool) -> float:
        base = 20.0 if quiet else 50.0 + 20.0 * math.sin(2 * math.pi * (i % DAY) / DAY)
        return base + rng.gauss(0, 1.0)

    week = 7 * DAY
    values = [value(i, (i % week) >= 5 * DAY) for i in range(3 * week)]
    scorer = MetricScorer()
    records = run(scorer, values)
    assert max(r["score"] for r in records[2 * week:]) < 0.9       # weekends expected by then
    assert scorer._series["h1/cpu"].mode == 1                      # the weekly profile in use
    monday = run(scorer, [value(i, True) for i in range(DAY)], start=3 * week)
    assert max(r["score"] for r in monday) >= 0.9                  # a quiet weekday is not


def test_spikes_coming_more_often_are_flagged():
    # a pair of spikes every 100 samples is the series' normal; then they come every 5 samples
    def spiky(i: int) -> float:
        return 20.0 if i % 100 in (0, 6) else 0.0

    scorer = MetricScorer()
    records = run(scorer, [spiky(i) for i in range(2000)])
    assert max(r["score"] for r in records[1000:]) < 0.9           # the usual spikes are normal
    denser = run(scorer, [20.0 if i % 5 == 0 else spiky(i) for i in range(2000, 2030)],
                 start=2000)
    assert max(r["score"] for r in denser) >= 0.9


def test_a_phase_that_is_always_noisier_is_judged_at_its_own_scale():
    # quiet nights (20 +- 0.5), busy noisy days (70 +- 5): the day's noise is no anomaly
    rng = random.Random(14)

    def value(i: int) -> float:
        return 20.0 + rng.gauss(0, 0.5) if (i % DAY) < DAY // 2 else 70.0 + rng.gauss(0, 5.0)

    scorer = MetricScorer()
    records = run(scorer, [value(i) for i in range(6 * DAY + 100)])
    assert max(r["score"] for r in records[3 * DAY:]) < 0.9       # once two days are known
    night = run(scorer, [26.0 + rng.gauss(0, 0.5) for _ in range(20)], start=6 * DAY + 100)
    assert max(r["score"] for r in night) >= 0.9                   # a quiet phase still alarms



def test_a_spike_a_little_higher_than_the_usual_ones_is_no_alarm():
    # a spike of 100 every 50 samples is the normal; a new maximum 4 % above it is not out of
    # range (5 % of the range tolerated), 10 % above is
    def scorer_after_spikes() -> MetricScorer:
        scorer = MetricScorer()
        run(scorer, [100.0 if i % 50 == 0 else 1.0 for i in range(2000)])
        return scorer

    assert scorer_after_spikes().score_record(sample(2000, 104.0), T0)["score"] < 0.9
    assert scorer_after_spikes().score_record(sample(2000, 110.0), T0)["score"] >= 0.9


NYC_TAXI = (Path(__file__).resolve().parents[2] / "shared" / "data" / "nab-dev" / "data"
            / "realKnownCause" / "nyc_taxi.csv")


def nab_alarms(path: Path, scorer: MetricScorer, threshold: float = 0.9) -> list[str]:
    """The timestamps of a NAB file (``timestamp,value``) that ``scorer`` scores as alarms."""
    with path.open() as fh:
        rows = [line.strip().split(",") for line in fh.readlines()[1:]]
    out = []
    for i, (stamp, value) in enumerate(rows):
        t = int(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() * 1000)
        r = scorer.score_record({"event_id": str(i), "event_time": t, "host": path.stem,
                                 "metric": "value", "value": float(value)}, t)
        if r["score"] >= threshold:
            out.append(stamp)
    return out


@pytest.mark.skipif(not NYC_TAXI.is_file(), reason=f"NAB data not found at {NYC_TAXI}")
def test_a_run_of_moderate_surprises_adds_up_to_an_alarm():
    # NYC taxi demand around Christmas keeps departing from its weekly profile, a little at a
    # time: no single sample is rare enough, the accumulated evidence is
    def alarms(scorer: MetricScorer) -> list[str]:
        return nab_alarms(NYC_TAXI, scorer)

    def christmas(stamps: list[str]) -> list[str]:        # NAB's window around Dec 25
        return [s for s in stamps if "2014-12-23 11:30:00" <= s <= "2014-12-27 18:30:00"]

    assert christmas(alarms(MetricScorer()))
    assert not christmas(alarms(MetricScorer(evidence_gain=0.0)))


def quantised_idle(n: int, seed: int = 4) -> list[float]:
    # an idle CPU as EC2 reports it: two values at random, a burst to 1.5 every 300 samples
    rng = random.Random(seed)
    return [1.5 if i % 300 == 150 else rng.choice((0.066, 0.134)) for i in range(n)]


def test_a_blip_to_a_level_never_visited_is_a_novel_context():
    # 0.6 is inside the range and its residual is smaller than the usual bursts', but the
    # series never went there: its three contexts are novel, the residuals alone say little
    values = quantised_idle(2500) + [0.6] + quantised_idle(20, seed=5)
    scores = [r["score"] for r in run(MetricScorer(), values)]
    assert max(scores[2500:]) >= 0.75
    coarse = [r["score"] for r in run(MetricScorer(novelty_levels=1, novelty_mae=1e9), values)]
    assert max(coarse[2500:]) < 0.5                                  # one bin: nothing novel


def test_a_context_that_recurs_stops_being_novel():
    # the same blip every 200 samples: novel at first, known once its contexts were all seen
    values = quantised_idle(1500)
    for i in range(600, 1500, 200):
        values[i] = 0.6
    scorer = MetricScorer(suppress_samples=0)
    scores = [r["score"] for r in run(scorer, values)]
    assert max(scores[600:605]) >= 0.75
    assert max(scores[1400:1405]) < 0.5
    state = scorer.to_state()["series"]["h1/cpu"]
    assert isinstance(state["seen"], str)                            # the bitmap, as base64


GROK_ASG = NYC_TAXI.parents[1] / "realAWSCloudwatch" / "grok_asg_anomaly.csv"


@pytest.mark.skipif(not GROK_ASG.is_file(), reason=f"NAB data not found at {GROK_ASG}")
def test_a_new_oscillation_between_known_values_adds_up_to_novelty():
    # an autoscaling group's CPU starts to oscillate between values it had shown before: its
    # novel contexts come a few at a time, too spread out for the short novelty rate; the
    # slower one adds them up within NAB's window
    def alarms(scorer: MetricScorer) -> list[str]:
        return nab_alarms(GROK_ASG, scorer)

    def window(stamps: list[str]) -> list[str]:           # NAB's first window
        return [s for s in stamps if "2014-01-20 02:05:00" <= s <= "2014-01-20 14:55:00"]

    assert window(alarms(MetricScorer()))
    assert not window(alarms(MetricScorer(novelty_slow_gain=0.0)))
