-- Decisions per hour over the last 2 days.
SELECT
    toStartOfHour(event_time)      AS hour,
    countIf(decision = 'approve')  AS approve,
    countIf(decision = 'review')   AS review,
    countIf(decision = 'decline')  AS decline,
    count()                        AS total
FROM scored_transactions
WHERE event_time >= toStartOfHour(now()) - INTERVAL 48 HOUR
GROUP BY hour
ORDER BY hour
