"""The first alert rule: a score at or above a threshold, with a cooldown per entity.

Alert ids are deterministic (a hash of the rule and the event id), so a replayed event produces
the same alert and the dispatcher and the lake can drop the repeat.
"""

from __future__ import annotations

import hashlib

from agents.features import BoundedDict


def alert_id(rule: str, event_id: str) -> str:
    return hashlib.sha1(f"{rule}:{event_id}".encode()).hexdigest()[:20]


class ScoreThresholdRule:
    """Fire when ``score >= threshold``; then stay quiet for that entity for ``cooldown_ms``
    of event time, so a burst of bad events on one card is one alert, not fifty."""

    def __init__(self, name: str, stream: str, *, threshold: float, severity: str = "warning",
                 cooldown_ms: int = 300_000, max_entities: int = 100_000) -> None:
        self.name = name
        self.stream = stream
        self.threshold = threshold
        self.severity = severity
        self.cooldown_ms = cooldown_ms
        self._last_fired: BoundedDict[str, int] = BoundedDict(max_entities)

    def evaluate(self, record: dict, entity: str, created_at_ms: int) -> dict | None:
        score = record["score"]
        if score < self.threshold:
            return None
        t = record["event_time"]
        last = self._last_fired.get(entity)
        if last is not None and 0 <= t - last < self.cooldown_ms:
            return None
        self._last_fired[entity] = t
        reasons = record.get("reasons") or ([record["reason"]] if record.get("reason") else [])
        summary = (f"{self.stream} {entity}: score {score:.3f} >= {self.threshold:.2f}"
                   + (f" ({', '.join(reasons)})" if reasons else ""))
        return {
            "alert_id": alert_id(self.name, record["event_id"]), "rule": self.name,
            "severity": self.severity, "stream": self.stream, "entity": entity,
            "event_id": record["event_id"], "event_time": t, "value": score,
            "threshold": self.threshold, "summary": summary, "created_at": created_at_ms,
        }
