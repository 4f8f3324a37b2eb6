"""The ``labels`` stream: ground truth for an earlier event, keyed like that event."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from .common import EventId, EventTimeMs, Id, Text, WireModel, schema_error

TargetStream = Literal["transactions", "applications", "system-metrics"]
LabelKind = Literal["chargeback", "confirmed_fraud", "confirmed_incident", "genuine"]


def _no_bool(value: object) -> object:
    # JSON true/false would otherwise pass as 1/0 (bool is an int in Python).
    if type(value) is bool:
        raise schema_error("expected 0 or 1 (an integer)")
    return value


class Label(WireModel):
    """A label as producers send it (the wire form).

    ``label`` must agree with ``kind``: ``genuine`` is 0, the other kinds are 1. The validated
    form is the same fields with ``event_time`` as int milliseconds, plus ``"stream": "labels"``.
    """

    model_config = ConfigDict(
        title="labels",
        json_schema_extra={
            "description": "Ground truth for an earlier event (a chargeback, a confirmed fraud "
                           "or incident, or a confirmation that it was genuine), one JSON "
                           "object per Kafka message on the 'labels' topic, keyed like the "
                           "labelled event. Unknown fields are rejected.",
        },
    )

    event_id: EventId
    event_time: EventTimeMs = Field(
        description="When the label became known: epoch milliseconds (UTC) or an ISO-8601 "
                    "date-time with timezone.")
    target_stream: TargetStream = Field(description="Stream of the labelled event.")
    target_event_id: Id = Field(description="event_id of the labelled event.")
    key: Text = Field(description="Partition key of the labelled event (card_id, applicant_id, "
                                "or f'{host}/{metric}').")
    label: Annotated[Literal[0, 1], BeforeValidator(_no_bool)] = Field(
        description="1: fraud or incident; 0: genuine.")
    kind: LabelKind = Field(description="How the label was established; 'genuine' goes with "
                                        "label 0, every other kind with label 1.")

    @model_validator(mode="after")
    def _check_label_matches_kind(self) -> Label:
        if (self.kind == "genuine") != (self.label == 0):
            expected = 0 if self.kind == "genuine" else 1
            raise schema_error(f"must be {expected} for kind '{self.kind}'", field="label",
                               got=self.label)
        return self
