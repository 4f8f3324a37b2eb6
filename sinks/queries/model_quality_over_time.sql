-- Model quality (on delayed labels) per day, champion against challenger.
SELECT
    toDate(window_end)                   AS day,
    stream,
    role,
    model_version,
    sum(n)                               AS labelled,
    round(avg(roc_auc), 4)               AS roc_auc,
    round(avg(average_precision), 4)     AS average_precision,
    round(avg(recall_at_review), 4)      AS recall_at_review
FROM model_quality
WHERE window_end >= today() - 30
GROUP BY day, stream, role, model_version
ORDER BY day, stream, role, model_version
