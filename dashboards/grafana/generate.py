"""Write the Grafana dashboards (dashboards/grafana/dashboards/*.json) from this file.

    python -m dashboards.grafana.generate

The JSON files are what Grafana provisions (provisioning/dashboards/riskstream.yml); this
script is how they are kept consistent: one place for the datasource uids, the panel layout
and the SQL. tests/test_dashboards_grafana.py runs every ClickHouse query of the JSON files
on chDB with the warehouse schema, and checks the files equal this script's output.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = {"type": "prometheus", "uid": "prometheus"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}


class Board:
    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[dict] = []
        self.variables: list[dict] = []
        self._x = self._y = 0

    def _pos(self, w: int, h: int) -> dict:
        if self._x + w > 24:
            self._x, self._y = 0, self._y + h
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        return pos

    def panel(self, title: str, targets: list[dict], *, kind: str = "timeseries",
              unit: str = "short", w: int = 12, h: int = 8, description: str = "",
              options: dict | None = None) -> None:
        datasource = targets[0]["datasource"]
        self.panels.append({
            "id": len(self.panels) + 1, "type": kind, "title": title,
            "description": description, "datasource": datasource,
            "gridPos": self._pos(w, h), "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": options or ({"legend": {"displayMode": "list", "placement": "bottom",
                                               "showLegend": True}}
                                   if kind == "timeseries" else {}),
        })

    def json(self) -> dict:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["riskstream", *self.tags], "timezone": "utc", "schemaVersion": 39,
            "version": 1, "editable": True, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": self.variables}, "annotations": {"list": []},
            "links": [{"title": "riskstream", "type": "dashboards", "tags": ["riskstream"],
                       "asDropdown": True}],
            "panels": self.panels,
        }


def prom(expr: str, legend: str, ref: str = "A") -> dict:
    return {"datasource": PROM, "refId": ref, "expr": expr, "legendFormat": legend}


def sql(text: str, *, table: bool = False, ref: str = "A") -> dict:
    """A ClickHouse panel query (grafana-clickhouse-datasource v4, SQL editor)."""
    return {"datasource": CH, "refId": ref, "editorType": "sql",
            "queryType": "table" if table else "timeseries", "format": 1 if table else 0,
            "rawSql": " ".join(text.split())}


def system_overview() -> Board:
    b = Board("riskstream-system", "riskstream / System Overview",
              "Throughput, rejects, lag and liveness of every stage; hosts' metrics and "
              "anomalies.", ["system"])
    b.panel("Events in per stream", [prom(
        "sum by (stream) (rate(riskstream_events_in_total[1m]))", "{{stream}}")], unit="ops")
    b.panel("Rejected per kind (dead-letter)", [prom(
        "sum by (kind) (rate(riskstream_rejected_total[5m]))", "{{kind}}")], unit="ops")
    b.panel("Consumer lag per topic", [prom(
        "sum by (topic) (riskstream_consumer_lag)", "{{topic}}")], unit="short")
    b.panel("Seconds since each stage's last loop (liveness)", [prom(
        "time() - max by (stage) (riskstream_last_loop_timestamp_seconds)", "{{stage}}")],
        unit="s")
    b.panel("Latency p95 per host (latency_p95_ms samples)", [sql("""
        SELECT $__timeInterval(event_time) AS time, host, quantile(0.95)(value) AS p95_ms
        FROM metric_samples
        WHERE $__timeFilter(event_time) AND metric = 'latency_p95_ms'
        GROUP BY time, host ORDER BY time""")], unit="ms")
    b.panel("Metric anomalies per host", [sql("""
        SELECT $__timeInterval(event_time) AS time, host, count() AS anomalies
        FROM metric_anomalies WHERE $__timeFilter(event_time)
        GROUP BY time, host ORDER BY time""")])
    b.panel("Anomalies per host and metric", [sql("""
        SELECT host, metric, count() AS anomalies, round(max(score), 3) AS max_score,
               argMax(ifNull(reason, ''), score) AS reason
        FROM metric_anomalies WHERE $__timeFilter(event_time)
        GROUP BY host, metric ORDER BY anomalies DESC, host, metric LIMIT 50""", table=True)],
        kind="table", w=24)
    return b


def application_performance() -> Board:
    b = Board("riskstream-performance", "riskstream / Application Performance",
              "Batch latency, scoring throughput, alert delivery and the services' own "
              "metrics.", ["performance"])
    b.panel("Batch time p95 per stage", [prom(
        "histogram_quantile(0.95, sum by (le, stage) (rate(riskstream_batch_seconds_bucket[5m])))",
        "{{stage}}")], unit="s")
    b.panel("Scored per stream", [prom(
        "sum by (stream) (rate(riskstream_scored_total[1m]))", "{{stream}}")], unit="ops")
    b.panel("Alert deliveries per channel and outcome", [prom(
        "sum by (channel, outcome) (rate(riskstream_alert_deliveries_total[5m]))",
        "{{channel}} {{outcome}}")], unit="ops")
    b.panel("Late events per stream", [prom(
        "sum by (stream) (rate(riskstream_late_events_total[5m]))", "{{stream}}")], unit="ops")
    b.panel("Error rate per service", [sql("""
        SELECT $__timeInterval(event_time) AS time, ifNull(service, '') AS service,
               avg(value) AS error_rate
        FROM metric_samples WHERE $__timeFilter(event_time) AND metric = 'error_rate'
        GROUP BY time, service ORDER BY time""")], unit="percent")
    b.panel("Request rate per service", [sql("""
        SELECT $__timeInterval(event_time) AS time, ifNull(service, '') AS service,
               avg(value) AS request_rate
        FROM metric_samples WHERE $__timeFilter(event_time) AND metric = 'request_rate'
        GROUP BY time, service ORDER BY time""")], unit="reqps")
    b.panel("Dead letters per kind", [sql("""
        SELECT $__timeInterval(received_at) AS time, kind, count() AS rejected
        FROM dead_letter WHERE $__timeFilter(received_at)
        GROUP BY time, kind ORDER BY time""")])
    b.panel("Alert delivery latency p95 per channel", [sql("""
        SELECT $__timeInterval(delivered_at) AS time, channel,
               quantile(0.95)(latency_ms) AS p95_ms
        FROM alert_deliveries WHERE $__timeFilter(delivered_at) AND outcome = 'delivered'
        GROUP BY time, channel ORDER BY time""")], unit="ms")
    return b


def business_metrics() -> Board:
    b = Board("riskstream-business", "riskstream / Business Metrics",
              "Fraud (transactions) and applications: volumes, amounts, decisions, scores, "
              "riskiest merchants, model quality.", ["business", "fraud"])
    b.panel("Transactions per decision", [sql("""
        SELECT $__timeInterval(event_time) AS time, decision, count() AS transactions
        FROM scored_transactions WHERE $__timeFilter(event_time)
        GROUP BY time, decision ORDER BY time""")])
    b.panel("Transaction amount (merchant currency)", [sql("""
        SELECT $__timeInterval(event_time) AS time, sum(ifNull(amount, 0)) AS amount
        FROM scored_transactions WHERE $__timeFilter(event_time)
        GROUP BY time ORDER BY time""")])
    b.panel("Decline rate (the model's fraud rate)", [sql("""
        SELECT $__timeInterval(event_time) AS time,
               100 * countIf(decision = 'decline') / count() AS decline_rate
        FROM scored_transactions WHERE $__timeFilter(event_time)
        GROUP BY time ORDER BY time""")], unit="percent")
    b.panel("Transaction score distribution", [sql("""
        SELECT toString(floor(score * 20) / 20) AS score_bin, count() AS transactions
        FROM scored_transactions WHERE $__timeFilter(event_time)
        GROUP BY score_bin ORDER BY score_bin""", table=True)], kind="barchart")
    b.panel("Decisions per second (live, Prometheus)", [prom(
        "sum by (stream, decision) (rate(riskstream_decisions_total[5m]))",
        "{{stream}} {{decision}}")], unit="ops")
    b.panel("Score p95 per stream (live, Prometheus)", [prom(
        "histogram_quantile(0.95, sum by (le, stream) (rate(riskstream_score_bucket[5m])))",
        "{{stream}}")])
    b.panel("Applications per product and decision", [sql("""
        SELECT ifNull(product, '') AS product, decision, count() AS applications,
               round(avg(score), 3) AS avg_score,
               round(sum(ifNull(requested_amount, 0)), 2) AS requested
        FROM scored_applications WHERE $__timeFilter(event_time)
        GROUP BY product, decision ORDER BY product, decision""", table=True)], kind="table")
    b.panel("Applications per decision", [sql("""
        SELECT $__timeInterval(event_time) AS time, decision, count() AS applications
        FROM scored_applications WHERE $__timeFilter(event_time)
        GROUP BY time, decision ORDER BY time""")])
    b.panel("Riskiest merchants", [sql("""
        SELECT ifNull(merchant_id, '') AS merchant, count() AS transactions,
               countIf(decision = 'decline') AS declines, round(avg(score), 3) AS avg_score,
               round(sum(ifNull(amount, 0)), 2) AS amount
        FROM scored_transactions WHERE $__timeFilter(event_time)
        GROUP BY merchant ORDER BY declines DESC, avg_score DESC LIMIT 20""", table=True)],
        kind="table")
    b.panel("Model quality (ROC AUC on delayed labels)", [sql("""
        SELECT $__timeInterval(window_end) AS time,
               concat(stream, ' ', role, ' ', model_version) AS model, avg(roc_auc) AS roc_auc
        FROM model_quality WHERE $__timeFilter(window_end)
        GROUP BY time, model ORDER BY time""")])
    return b


def alerts() -> Board:
    b = Board("riskstream-alerts", "riskstream / Alerts",
              "Alerts by rule, severity and entity. Alert links open this dashboard with "
              "var-rule, var-entity and the alert's window.", ["alerts"])
    b.variables = [
        {"name": "rule", "label": "rule", "type": "query", "datasource": CH,
         "query": "SELECT DISTINCT rule FROM alerts ORDER BY rule", "includeAll": True,
         "allValue": "", "current": {"text": "All", "value": "$__all"}, "refresh": 2},
        {"name": "entity", "label": "entity", "type": "textbox", "query": "",
         "current": {"text": "", "value": ""}},
    ]
    where = ("$__timeFilter(created_at) AND ('${rule}' = '' OR rule = '${rule}') "
             "AND ('${entity}' = '' OR entity = '${entity}')")
    b.panel("Alerts fired per severity", [sql(f"""
        SELECT $__timeInterval(created_at) AS time, severity, count() AS alerts
        FROM alerts WHERE {where} AND ifNull(status, 'firing') = 'firing'
        GROUP BY time, severity ORDER BY time""")])
    b.panel("Alerts by rule and severity", [sql(f"""
        SELECT rule, severity, countIf(ifNull(status, 'firing') = 'firing') AS fired,
               countIf(status = 'resolved') AS resolved, uniqExact(entity) AS entities,
               max(created_at) AS last_at
        FROM alerts WHERE {where}
        GROUP BY rule, severity ORDER BY fired DESC, rule, severity""", table=True)],
        kind="table")
    b.panel("Recent alerts", [sql(f"""
        SELECT created_at, rule, severity, ifNull(status, 'firing') AS status, entity, value,
               threshold, summary, query
        FROM alerts WHERE {where}
        ORDER BY created_at DESC LIMIT 200""", table=True)], kind="table", w=24, h=10)
    b.panel("Deliveries per channel and outcome", [sql("""
        SELECT $__timeInterval(delivered_at) AS time, concat(channel, ' ', outcome) AS delivery,
               count() AS deliveries
        FROM alert_deliveries WHERE $__timeFilter(delivered_at)
        GROUP BY time, delivery ORDER BY time""")])
    b.panel("Alerts fired per rule (live, Prometheus)", [prom(
        "sum by (rule) (increase(riskstream_alerts_total[5m]))", "{{rule}}")])
    return b


BOARDS = {"system-overview": system_overview, "application-performance": application_performance,
          "business-metrics": business_metrics, "alerts": alerts}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(make().json(), indent=2) + "\n"
            for name, make in BOARDS.items()}


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(OUT / name)
