"""Topic names, in one place. Every arrow of DESIGN.md's data flow is one of these."""

from typing import Literal

Stream = Literal["transactions", "applications", "system-metrics", "labels"]

TRANSACTIONS = "transactions"
APPLICATIONS = "applications"
SYSTEM_METRICS = "system-metrics"
LABELS = "labels"
INPUT_TOPICS: tuple[str, ...] = (TRANSACTIONS, APPLICATIONS, SYSTEM_METRICS, LABELS)

# The field of an input event that producers key it by (README, "Producing events"); a
# metric sample's key is f"{host}/{metric}" (``partition_key``).
_KEY_FIELD = {TRANSACTIONS: "card_id", APPLICATIONS: "applicant_id", LABELS: "key"}


def partition_key(stream: str, event: dict) -> str | None:
    """The key an event of ``stream`` is produced with, from its fields (wire or validated
    form): what the simulator keys its messages by, and what the worker's dead-letter records
    carry, as the gateway's carry the input message's. None when a field is missing."""
    try:
        if stream == SYSTEM_METRICS:
            return f"{event['host']}/{event['metric']}"
        return event[_KEY_FIELD[stream]]
    except KeyError:
        return None


DEAD_LETTER = "dead-letter"

# Internal: validated events travel in small batches (a JSON array per message, all events of
# one message from one input partition, in offset order). Faust's cost is per Kafka message
# (DESIGN.md), so batching here is what lets the scoring agents keep up.
VALIDATED = {stream: f"validated-{stream}" for stream in INPUT_TOPICS}

SCORED_TRANSACTIONS = "scored-transactions"
SCORED_APPLICATIONS = "scored-applications"
METRIC_SAMPLES = "metric-samples"
METRIC_ANOMALIES = "metric-anomalies"
AGGREGATES = "aggregates"
ALERTS = "alerts"
ALERT_DELIVERIES = "alert-deliveries"
MODEL_QUALITY = "model-quality"

OUTPUT_TOPICS: tuple[str, ...] = (
    SCORED_TRANSACTIONS,
    SCORED_APPLICATIONS,
    METRIC_SAMPLES,
    METRIC_ANOMALIES,
    AGGREGATES,
    ALERTS,
    ALERT_DELIVERIES,
    MODEL_QUALITY,
    DEAD_LETTER,
)

# Control: a whole alert rules file (YAML) per message; every worker reads all of it and applies
# the latest valid one (agents/rules.py). Publish with `riskstream alerts publish-rules FILE`.
RULES = "rules"

ALL_TOPICS: tuple[str, ...] = (INPUT_TOPICS + tuple(VALIDATED.values()) + OUTPUT_TOPICS
                               + (RULES,))

# Output topic -> lake / SQL table name.
TABLE_OF_TOPIC = {
    SCORED_TRANSACTIONS: "scored_transactions",
    SCORED_APPLICATIONS: "scored_applications",
    METRIC_SAMPLES: "metric_samples",
    METRIC_ANOMALIES: "metric_anomalies",
    AGGREGATES: "aggregates",
    ALERTS: "alerts",
    ALERT_DELIVERIES: "alert_deliveries",
    MODEL_QUALITY: "model_quality",
    DEAD_LETTER: "dead_letter",
}
