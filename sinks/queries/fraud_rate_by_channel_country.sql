-- Fraud rate per day, channel and country over 30 days: the share of transactions the model
-- declined (labels are not an output table: this is the model's view, not confirmed fraud).
SELECT
    toDate(event_time)                                   AS day,
    channel,
    country,
    count()                                              AS transactions,
    countIf(decision = 'decline')                        AS declines,
    round(countIf(decision = 'decline') / count(), 4)    AS fraud_rate,
    round(sumIf(amount, decision = 'decline'), 2)        AS declined_amount
FROM scored_transactions
WHERE event_time >= today() - 30
GROUP BY day, channel, country
ORDER BY day, fraud_rate DESC, channel, country
