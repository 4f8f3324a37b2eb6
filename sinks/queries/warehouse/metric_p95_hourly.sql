-- p95 of each host's metrics per hour over the last 24 hours, from the rollup.
SELECT
    hour,
    host,
    metric,
    sum(samples)                                 AS samples,
    round(quantileMerge(0.95)(value_p95), 3)     AS p95,
    round(max(value_max), 3)                     AS max
FROM metric_samples_hourly
WHERE hour >= now() - INTERVAL 24 HOUR
GROUP BY hour, host, metric
ORDER BY hour, host, metric
