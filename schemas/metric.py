"""The ``system-metrics`` stream: one sample of one metric of one host, keyed ``host/metric``."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .common import EventId, EventTimeMs, Id, Text, WireModel, schema_error

MetricName = Literal[
    "cpu", "memory", "latency_p95_ms", "error_rate", "request_rate", "queue_depth",
]
# Metrics whose value is a percentage, 0..100; the others are counts, rates or durations, >= 0.
PERCENT_METRICS: frozenset[str] = frozenset({"cpu", "memory", "error_rate"})


class Metric(WireModel):
    """A metric sample as producers send it (the wire form).

    The validated form is the same fields with ``event_time`` as int milliseconds, plus
    ``"stream": "system-metrics"``.
    """

    model_config = ConfigDict(
        title="system-metrics",
        json_schema_extra={
            "description": "One sample of one system metric, one JSON object per Kafka message "
                           "on the 'system-metrics' topic, keyed by f'{host}/{metric}'. Unknown "
                           "fields are rejected.",
        },
    )

    event_id: EventId
    event_time: EventTimeMs = Field(
        description="When the sample was taken: epoch milliseconds (UTC) or an ISO-8601 "
                    "date-time with timezone.")
    host: Id = Field(description="Host name; with `metric`, the partition key.")
    service: Text = Field(description="Service running on the host.")
    metric: MetricName = Field(description="What is measured: cpu, memory and error_rate in "
                                           "percent; latency_p95_ms in milliseconds; "
                                           "request_rate per second; queue_depth in items.")
    value: float = Field(description="The sample, finite: 0..100 for cpu, memory and "
                                     "error_rate (percent, not a 0..1 fraction), >= 0 otherwise.")

    @model_validator(mode="after")
    def _check_range(self) -> Metric:
        value = self.value
        if self.metric in PERCENT_METRICS:
            if not 0 <= value <= 100:
                raise schema_error(f"must be a percentage 0..100 for metric '{self.metric}'",
                                   field="value", got=value)
        elif value < 0:
            raise schema_error(f"must be >= 0 for metric '{self.metric}'", field="value",
                               got=value)
        return self
