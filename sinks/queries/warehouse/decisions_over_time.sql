-- Decisions per hour over the last 2 days, from the hourly rollup (warehouse only: the lake
-- has no rollups). Same answer as ../decisions_over_time.sql, reading a few rows per hour.
SELECT
    hour,
    sumIf(transactions, decision = 'approve')  AS approve,
    sumIf(transactions, decision = 'review')   AS review,
    sumIf(transactions, decision = 'decline')  AS decline,
    sum(transactions)                          AS total
FROM transactions_hourly
WHERE hour >= toStartOfHour(now()) - INTERVAL 48 HOUR
GROUP BY hour
ORDER BY hour
