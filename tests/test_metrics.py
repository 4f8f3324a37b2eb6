"""pipelines/metrics.py: what a batch of observations leaves in a histogram."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from pipelines.metrics import SCORE_BUCKETS, observe_many


def test_observing_a_batch_leaves_what_observing_each_value_does():
    values = [0.0, 0.05, 0.051, 0.5, 0.97, 1.0, 1.5, -0.2, 0.05, math.nan, 0.3]
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("s", "scores", ["stream"], buckets=SCORE_BUCKETS, registry=one)
    by_many = Histogram("s", "scores", ["stream"], buckets=SCORE_BUCKETS, registry=many)
    for v in values:
        by_one.labels("transactions").observe(v)
    observe_many(by_many.labels("transactions"), values[:4])
    observe_many(by_many.labels("transactions"), values[4:])
    observe_many(by_many.labels("transactions"), [])

    def exposition(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines()
                if not line.startswith("s_created")]

    assert exposition(many) == exposition(one)
