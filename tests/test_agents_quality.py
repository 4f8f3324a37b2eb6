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


def test_the_worker_publishes_quality_records_and_gauges(tmp_path):
    from prometheus_client import REGISTRY
    from test_agents_fraud_snapshot import _batch, _labels, _pipeline, transactions

    from schemas.outputs import MODEL_QUALITY_RECORD

    pipeline = _pipeline(tmp_path, quality_interval_s=3600)
    events = transactions(600)
    _batch(pipeline, events)
    pipeline.learn_labels(_labels(events[:500]))    # not due yet: nothing published
    assert not [r for t, r in pipeline.outputs.sent if t == "model-quality"]
    records = pipeline.maybe_publish_quality(force=True)
    assert [r for t, r in pipeline.outputs.sent if t == "model-quality"] == records
    (record,) = records                              # applications saw no labels
    assert set(record) == set(MODEL_QUALITY_RECORD.names)
    assert record["stream"] == "transactions" and record["role"] == "champion"
    assert record["n"] == 500 and record["positives"] == sum(e["fraud"] for e in events[:500])
    assert 0.0 <= record["roc_auc"] <= 1.0
    assert REGISTRY.get_sample_value("riskstream_model_roc_auc",
                                     {"stream": "transactions", "role": "champion"}) \
        == record["roc_auc"]
