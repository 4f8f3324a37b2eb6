"""NAB's scoring on hand-made cases worked out by hand, and the ``eval nab`` command end to end.

The hand cases use one file of 100 rows: probation is ``floor(0.15 * 100) = 15`` rows, and one
window covers rows 40..59 (width 20).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipelines.nab_scoring import (
    FileLabels, Profile, normalised, null_score, optimise_threshold, perfect_score,
    probation_length, scaled_sigmoid, score_file, sweep_thresholds, window_rows,
)

STANDARD = Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
LOW_FN = Profile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0)
ONE = FileLabels("one", n_rows=100, windows=[(40, 59)])
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab-dev"


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def scores_at(*rows: int, n: int = 100, value: float = 1.0) -> list[float]:
    return [value if i in rows else 0.0 for i in range(n)]


def test_probation_is_fifteen_percent_capped_at_750_rows():
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750


def test_scaled_sigmoid_matches_nab_landmarks():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == -1.0


def test_perfect_detector_scores_tp_weight_per_window():
    # first detection on the window's left edge: position -1, credit exactly tp_weight
    assert score_file(ONE, scores_at(40), STANDARD, 0.5).score == pytest.approx(1.0)
    assert perfect_score([ONE], STANDARD) == 1.0


def test_null_detector_pays_fn_weight_per_window():
    assert score_file(ONE, [0.0] * 100, STANDARD, 0.5).score == -1.0
    assert null_score([ONE], STANDARD) == -1.0
    assert null_score([ONE], LOW_FN) == -2.0


def test_late_hit_earns_little_and_only_the_first_detection_counts():
    # row 59 is the right edge: position -(59 - 59 + 1) / 20 = -0.05
    late = (2 * sig(0.25) - 1) / (2 * sig(5) - 1)
    assert score_file(ONE, scores_at(59), STANDARD, 0.5).score == pytest.approx(late)
    # row 50: position -(59 - 50 + 1) / 20 = -0.5; the later detection at 55 adds nothing
    middle = (2 * sig(2.5) - 1) / (2 * sig(5) - 1)
    result = score_file(ONE, scores_at(50, 55), STANDARD, 0.5)
    assert result.score == pytest.approx(middle)
    assert result.tp == 2 and result.first_detections == [50]


def test_false_positives_before_and_after_the_window():
    # before any window: the full fp_weight; the window is missed: -1
    assert score_file(ONE, scores_at(20), STANDARD, 0.5).score == pytest.approx(-1.11)
    # 20 rows after the right edge: position |59 - 79| / (20 - 1), scaled by fp_weight
    after = 0.11 * (2 * sig(-5 * 20 / 19) - 1)
    assert score_file(ONE, scores_at(79), STANDARD, 0.5).score == pytest.approx(-1 + after)
    # right after the window a false alarm costs almost nothing
    just_after = 0.11 * (2 * sig(-5 / 19) - 1)
    assert score_file(ONE, scores_at(60), STANDARD, 0.5).score == pytest.approx(-1 + just_after)
    assert abs(just_after) < 0.015


def test_probationary_rows_are_not_scored():
    assert score_file(ONE, scores_at(5), STANDARD, 0.5).score == -1.0
    # a window inside probation does not count at all
    early = FileLabels("early", n_rows=100, windows=[(2, 8)])
    assert score_file(early, [0.0] * 100, STANDARD, 0.5).score == 0.0


def test_threshold_is_optimised_over_the_corpus():
    # a hit at 0.9 on the left edge, a false alarm at 0.8, another at 0.95
    scores = scores_at(40, value=0.9)
    scores[80], scores[20] = 0.8, 0.95
    sweep = {round(t.threshold, 2): t.score for t in sweep_thresholds([ONE], [scores], STANDARD)}
    assert sweep[1.1] == -1.0                               # nothing detected
    assert sweep[0.95] == pytest.approx(-1.11)              # only the early false alarm
    assert sweep[0.9] == pytest.approx(1.0 - 0.11)          # + the hit
    fp80 = 0.11 * (2 * sig(-5 * 21 / 19) - 1)
    assert sweep[0.8] == pytest.approx(1.0 - 0.11 + fp80)   # + a false alarm after the window
    best = optimise_threshold([ONE], [scores], STANDARD)
    assert best.threshold == 0.9 and best.tp == 1 and best.fp == 1
    assert normalised(best.score, -1.0, 1.0) == pytest.approx(100 * 1.89 / 2)


def test_ties_are_detected_together():
    scores = scores_at(20, 40, value=0.7)
    sweep = sweep_thresholds([ONE], [scores], STANDARD)
    assert [round(t.threshold, 2) for t in sweep] == [1.1, 0.7, 0.0]
    assert sweep[1].score == pytest.approx(1.0 - 0.11)


def test_window_rows_from_timestamps():
    assert window_rows([10, 20, 30, 40, 50], [(20, 40)]) == [(1, 3)]
    assert window_rows([10, 20, 30], [(31, 40)]) == []


@pytest.mark.skipif(not DATA.is_dir(), reason=f"NAB development data not found at {DATA}")
def test_eval_nab_command_on_a_small_subset(tmp_path: Path):
    from pipelines.cli import main

    # two files, one with and one without anomaly windows, in NAB's layout
    subset = tmp_path / "nab"
    picks = ["artificialNoAnomaly/art_noisy.csv", "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv"]
    windows = json.loads((DATA / "labels" / "combined_windows.json").read_text())
    for rel in picks:
        (subset / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (subset / "data" / rel).write_text((DATA / "data" / rel).read_text())
    (subset / "labels").mkdir()
    (subset / "labels" / "combined_windows.json").write_text(
        json.dumps({rel: windows[rel] for rel in picks}))
    out, figures = tmp_path / "results", tmp_path / "figures.json"
    assert main(["eval", "nab", "--data", str(subset), "--out", str(out), "--name", "rs",
                 "--json", str(figures)]) == 0
    result = out / "rs" / "realAWSCloudwatch" / "rs_ec2_cpu_utilization_5f5533.csv"
    lines = result.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score,label"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 4032 and all(0.0 <= float(r[2]) <= 1.0 for r in rows)
    assert {r[3] for r in rows} == {"0", "1"}
    got = json.loads(figures.read_text())
    assert set(got["profiles"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert got["windows"] == 2 and got["rows"] == 8064
    assert -100 <= got["profiles"]["standard"]["normalised"] <= 100
