"""Prometheus Alertmanager, API v2: ``POST {base}/api/v2/alerts`` with a list of alerts.

Alertmanager deduplicates by label set, so the labels are the alert's identity: ``alertname``
(the rule), the incident id, severity and the rule's labels. A resolved notification is the same
label set with ``endsAt`` in the past. Annotations carry the explanation.
"""

from __future__ import annotations

import datetime as dt

import orjson

from sinks.channels.webhook import post_json


def _rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")


def alertmanager_alert(alert: dict) -> dict:
    labels = alert.get("labels") or {}
    if isinstance(labels, str):
        labels = orjson.loads(labels)
    out_labels = {k: str(v) for k, v in labels.items() if k not in ("rule",)}
    out_labels.update({"alertname": alert["rule"], "severity": alert.get("severity", ""),
                       "incident": alert.get("incident_id") or alert["alert_id"]})
    annotations = {k: str(alert[k]) for k in ("summary", "description", "condition", "query")
                   if alert.get(k)}
    if alert.get("value") is not None:
        annotations["value"] = str(alert["value"])
    if alert.get("reasons"):
        annotations["reasons"] = "; ".join(alert["reasons"])
    body = {"labels": out_labels, "annotations": annotations,
            "startsAt": _rfc3339(alert.get("event_time") or alert["created_at"])}
    if alert.get("dashboard_url"):
        body["generatorURL"] = alert["dashboard_url"]
    if alert.get("status") == "resolved":
        body["endsAt"] = _rfc3339(alert.get("event_time") or alert["created_at"])
        body.pop("startsAt")
    return body


class AlertmanagerChannel:
    name = "alertmanager"

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self._url = base_url.rstrip("/") + "/api/v2/alerts"
        self.timeout_s = timeout_s

    def send(self, alert: dict) -> int:
        return post_json(self._url, [alertmanager_alert(alert)], timeout_s=self.timeout_s,
                         what="alertmanager")
