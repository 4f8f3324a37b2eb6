"""Exact metrics against hand-computed values, and the fraud evaluation end to end (small)."""

from __future__ import annotations

import math
import random

import pytest

from pipelines.metrics_exact import average_precision, card_precision_at_k, mid_ranks, roc_auc


# ------------------------------------------------------------------------- exact metrics

def test_auc_counts_pairs_and_ties_count_half():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs ordered right
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # pos 0.5 ties neg 0.5 (1/2), beats 0.1 (1); pos 0.9 beats both (2): 3.5 / 4
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == 0.875
    assert roc_auc([1, 1, 0], [0.2, 0.2, 0.2]) == 0.5  # all tied: chance
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))  # one class only


def test_auc_equals_the_brute_force_pair_count():
    rng = random.Random(1)
    y = [int(rng.random() < 0.3) for _ in range(300)]
    s = [round(rng.random(), 1) for _ in y]  # many ties
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    pairs = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert roc_auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


def test_average_precision_is_sklearns_step_sum():
    # desc: 0.8 (+) P=1 R=.5; 0.4 (-); 0.35 (+) P=2/3 R=1: AP = .5*1 + .5*2/3
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    # a tie is one threshold: 0.9 (+) P=1 R=.5; {0.5 +, 0.5 -} P=2/3 R=1
    assert average_precision([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(5 / 6)
    assert average_precision([1, 0, 0], [0.1, 0.5, 0.9]) == pytest.approx(1 / 3)
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert average_precision([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5  # all tied: prevalence
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_average_precision_brute_force_over_thresholds():
    rng = random.Random(2)
    y = [int(rng.random() < 0.2) for _ in range(200)]
    s = [round(rng.random(), 2) for _ in y]
    n_pos, ap, prev_recall = sum(y), 0.0, 0.0
    for thr in sorted(set(s), reverse=True):
        tp = sum(1 for v, t in zip(s, y) if v >= thr and t)
        flagged = sum(1 for v in s if v >= thr)
        ap += (tp / n_pos - prev_recall) * (tp / flagged)
        prev_recall = tp / n_pos
    assert average_precision(y, s) == pytest.approx(ap, abs=1e-12)


def test_mid_ranks():
    assert mid_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_card_precision_takes_each_cards_daily_max_and_averages_days():
    days = [0, 0, 0, 0, 0, 1, 1, 1]
    cards = ["a", "a", "b", "c", "d", "a", "b", "c"]
    y = [0, 1, 0, 0, 1, 0, 0, 1]
    s = [0.9, 0.1, 0.8, 0.7, 0.2, 0.1, 0.6, 0.5]
    # day 0: cards a (max .9, compromised), b (.8, no), c (.7), d (.2, yes): top 2 = a, b -> 1/2
    # day 1: b (.6, no), c (.5, yes), a (.1): top 2 = b, c -> 1/2
    assert card_precision_at_k(days, cards, y, s, k=2) == 0.5
    # k=1: day 0 a (yes) -> 1; day 1 b (no) -> 0
    assert card_precision_at_k(days, cards, y, s, k=1) == 0.5
    # k larger than the cards of a day: still divided by k (2 of 4 on day 0, 1 of 4 on day 1)
    assert card_precision_at_k(days, cards, y, s, k=4) == pytest.approx((2 / 4 + 1 / 4) / 2)
