-- Alerts per rule and severity over the last 7 days.
SELECT
    rule,
    severity,
    count()                    AS alerts,
    uniqExact(entity)          AS entities,
    min(created_at)            AS first_at,
    max(created_at)            AS last_at
FROM alerts
WHERE created_at >= now() - INTERVAL 7 DAY
GROUP BY rule, severity
ORDER BY alerts DESC, rule, severity
