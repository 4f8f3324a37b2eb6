-- Hosts with the most metric anomalies over the last 24 hours, and their worst metric.
SELECT
    host,
    count()                        AS anomalies,
    uniqExact(metric)              AS metrics,
    argMax(metric, (score, metric)) AS worst_metric,
    round(max(score), 3)           AS max_score
FROM metric_anomalies
WHERE event_time >= now() - INTERVAL 24 HOUR
GROUP BY host
ORDER BY anomalies DESC, host
LIMIT 20
