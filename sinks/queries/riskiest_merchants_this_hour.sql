-- Riskiest merchants of the last hour: mean fraud score, declines, amount.
SELECT
    merchant_id,
    count()                        AS transactions,
    round(avg(score), 3)           AS avg_score,
    countIf(decision = 'decline')  AS declines,
    round(sum(amount), 2)          AS amount
FROM scored_transactions
WHERE event_time >= now() - INTERVAL 1 HOUR
GROUP BY merchant_id
HAVING transactions >= 1
ORDER BY avg_score DESC, declines DESC, merchant_id
LIMIT 20
