"""Rolling model quality: exact metrics over the last N labelled events."""

from __future__ import annotations

import random

import pytest

from agents.quality import RollingQuality
from pipelines.metrics_exact import average_precision, roc_auc


def test_summary_is_exact_over_the_last_window():
    rng = random.Random(1)
    pairs = [(rng.random(), int(rng.random() < 0.1)) for _ in range(300)]
    q = RollingQuality(window=200, review_at=0.7)
    for s, y in pairs:
        q.update(s, y)
    last = pairs[-200:]
    labels, scores = [y for _, y in last], [s for s, _ in last]
    got = q.summary()
    assert got["n"] == 200 and got["positives"] == sum(labels)
    assert got["roc_auc"] == roc_auc(labels, scores)
    assert got["average_precision"] == average_precision(labels, scores)
    flagged = [y for s, y in last if s >= 0.7]
    assert got["precision_at_review"] == pytest.approx(sum(flagged) / len(flagged))
    assert got["recall_at_review"] == pytest.approx(sum(flagged) / sum(labels))


def test_undefined_metrics_are_none():
    q = RollingQuality(window=10)
    assert q.summary()["roc_auc"] is None
    q.update(0.1, 0)
    s = q.summary()
    assert s["roc_auc"] is s["average_precision"] is s["recall_at_review"] is None
    assert s["precision_at_review"] is None  # nothing flagged
