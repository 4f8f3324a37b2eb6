-- The loader's batch log (sinks/loader.py): the offset range of every batch, written
-- before the batch is inserted. After a crash the next loader cuts exactly these batches
-- again, so a retried insert carries the same insert_deduplication_token and ClickHouse
-- drops it if the first attempt had landed. Rows are only needed until the batch's Kafka
-- commit: 30 days is generous.
CREATE TABLE IF NOT EXISTS loader_batches
(
    consumer_group  String,
    topic           String,
    topic_id        String,
    partition       Int32,
    first_offset    Int64,
    last_offset     Int64,
    planned_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (consumer_group, topic, partition, topic_id, first_offset)
TTL toDateTime(planned_at) + toIntervalDay(30);
