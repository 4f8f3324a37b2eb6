"""Online anomaly scoring of system metrics, one state per series (host x metric).

A first detector (the anomaly issue deepens it): per series, River's exponentially weighted
mean and variance; the score is how far a sample lies outside the expected band, mapped to
[0, 1] so one threshold serves every series. Anomalous samples do not update the baseline, so
a long incident does not become the new normal at once.

Scores are 0 for the first ``warmup`` samples of a new series: no alarm storm on first sight.
"""

from __future__ import annotations

import math

from river import stats

from agents.features import BoundedDict

PERCENT_METRICS = frozenset({"cpu", "memory", "error_rate"})


class _Series:
    __slots__ = ("mean", "var", "n", "last_value", "stuck")

    def __init__(self, fading_factor: float) -> None:
        self.mean = stats.EWMean(fading_factor)
        self.var = stats.EWVar(fading_factor)
        self.n = 0
        self.last_value: float | None = None
        self.stuck = 0


class MetricScorer:
    """Score each sample of each series against that series' own recent behaviour."""

    model_version = "metric-ewz-v0"

    def __init__(self, *, fading_factor: float = 0.05, warmup: int = 30, z_alarm: float = 4.0,
                 stuck_after: int = 30, max_series: int = 50_000, anomaly_threshold: float = 0.9
                 ) -> None:
        self.fading_factor = fading_factor
        self.warmup = warmup
        self.z_alarm = z_alarm
        self.stuck_after = stuck_after
        self.max_series = max_series
        self.anomaly_threshold = anomaly_threshold
        self._series: BoundedDict[str, _Series] = BoundedDict(max_series)

    def score_record(self, event: dict, scored_at_ms: int) -> dict:
        key = f"{event['host']}/{event['metric']}"
        s = self._series.get(key) or _Series(self.fading_factor)
        value = float(event["value"])
        mean = s.mean.get() if s.n else value
        std = math.sqrt(max(s.var.get(), 0.0)) if s.n > 1 else 0.0
        # A floor on the spread: a perfectly flat series must not alarm on a 0.1 % wobble.
        spread = max(std, 0.01 * abs(mean), 1e-6)
        z = abs(value - mean) / spread
        s.stuck = s.stuck + 1 if s.last_value == value else 0
        reason = None
        if s.n < self.warmup:
            score = 0.0
        else:
            # z_alarm standard deviations map to the anomaly threshold; the curve saturates at 1.
            score = 1.0 - math.exp(-z / self.z_alarm * -math.log(1.0 - self.anomaly_threshold))
            if event["metric"] in PERCENT_METRICS and not 0.0 <= value <= 100.0:
                score, reason = 1.0, "out_of_range"
            elif score >= self.anomaly_threshold:
                reason = "spike" if z > 2 * self.z_alarm else "level_shift"
            elif s.stuck >= self.stuck_after and std > 0:
                score, reason = max(score, self.anomaly_threshold), "stuck"
        if score < self.anomaly_threshold or s.n < self.warmup:
            s.mean.update(value)
            s.var.update(value)
        s.n += 1
        s.last_value = value
        self._series[key] = s
        band = self.z_alarm * spread
        return {**event, "score": score, "expected": mean, "lower": mean - band,
                "upper": mean + band, "reason": reason, "scored_at": scored_at_ms}
